//! `sessiongate.v1.RolloutAdminService`: decode, call the domain, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::app::AppState;
use crate::error::Error;

/// The handlers of `RolloutAdminService`.
pub struct RolloutAdminApi {
    #[allow(dead_code)] // read by the handlers once the rollout engine lands
    state: Arc<AppState>,
}

impl RolloutAdminApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

const MISSING: &str = "RolloutAdminService is not served by this build yet: the rollout engine and its stored overrides are missing";

#[tonic::async_trait]
impl pb::rollout_admin_service_server::RolloutAdminService for RolloutAdminApi {
    async fn get_rollout(
        &self,
        _request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        Err(Error::unimplemented(MISSING).into())
    }

    async fn list_rollouts(
        &self,
        _request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        Err(Error::unimplemented(MISSING).into())
    }

    async fn update_rollout(
        &self,
        _request: Request<pb::UpdateRolloutRequest>,
    ) -> Result<Response<pb::UpdateRolloutResponse>, Status> {
        Err(Error::unimplemented(MISSING).into())
    }
}
