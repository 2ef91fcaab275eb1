//! `sessiongate.v1.RolloutAdminService`: decode, call the domain, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, pb};
use crate::flow::FlowService;

/// The handlers of `RolloutAdminService`.
pub struct RolloutAdminApi {
    flows: Arc<FlowService>,
}

impl RolloutAdminApi {
    pub fn new(flows: Arc<FlowService>) -> Self {
        Self { flows }
    }
}

#[tonic::async_trait]
impl pb::rollout_admin_service_server::RolloutAdminService for RolloutAdminApi {
    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        let r = self.flows.get(&request.into_inner().flow)?;
        Ok(Response::new(pb::GetRolloutResponse {
            rollout: Some(convert::rollout(r)),
        }))
    }

    async fn list_rollouts(
        &self,
        _request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: self
                .flows
                .list()
                .into_iter()
                .map(convert::rollout)
                .collect(),
        }))
    }

    async fn update_rollout(
        &self,
        request: Request<pb::UpdateRolloutRequest>,
    ) -> Result<Response<pb::UpdateRolloutResponse>, Status> {
        let caller = super::caller(&request);
        let update = convert::rollout_update(request.into_inner())?;
        let r = self.flows.update(update, &caller).await?;
        Ok(Response::new(pb::UpdateRolloutResponse {
            rollout: Some(convert::rollout(r)),
        }))
    }
}
