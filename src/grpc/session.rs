//! `sessiongate.v1.SessionGateService`: decode, call the domain, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::app::AppState;
use crate::error::Error;

/// The handlers of `SessionGateService`.
pub struct SessionGateApi {
    #[allow(dead_code)] // read by the handlers as they land (native sessions, providers, flows)
    state: Arc<AppState>,
}

impl SessionGateApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl pb::session_gate_service_server::SessionGateService for SessionGateApi {
    async fn validate_session(
        &self,
        _request: Request<pb::ValidateSessionRequest>,
    ) -> Result<Response<pb::ValidateSessionResponse>, Status> {
        Err(Error::unimplemented(
            "ValidateSession is not served by this build yet: native session verification (signing keys, session store records) is missing",
        )
        .into())
    }

    async fn migrate_session(
        &self,
        _request: Request<pb::MigrateSessionRequest>,
    ) -> Result<Response<pb::MigrateSessionResponse>, Status> {
        Err(Error::unimplemented(
            "MigrateSession is not served by this build yet: the legacy provider UserInfo client and identity linking are missing",
        )
        .into())
    }

    async fn resolve_flow(
        &self,
        _request: Request<pb::ResolveFlowRequest>,
    ) -> Result<Response<pb::ResolveFlowResponse>, Status> {
        Err(Error::unimplemented(
            "ResolveFlow is not served by this build yet: the rollout engine (Unleash bucketing, rules, cookie) is missing",
        )
        .into())
    }

    async fn create_session(
        &self,
        _request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        Err(Error::unimplemented(
            "CreateSession is not served by this build yet: signing keys and session minting are missing",
        )
        .into())
    }

    async fn revoke_session(
        &self,
        _request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        Err(Error::unimplemented(
            "RevokeSession is not served by this build yet: session records and the revocation set are missing",
        )
        .into())
    }
}
