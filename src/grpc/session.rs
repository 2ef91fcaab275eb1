//! `sessiongate.v1.SessionGateService`: decode, call the domain, encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{
    client_in, custom_claims_in, factor_in, flow_request, flow_response, migrated_out, session_out,
    user_out, verdict_out, view_in,
};
use super::{caller, pb};
use crate::config::Scope;
use crate::error::{Error, ErrorReason};
use crate::flow::FlowService;
use crate::session::{
    CreateRequest, MigrateRequest, RevokeTarget, SessionService, ValidateRequest, Who,
};

/// The handlers of `SessionGateService`.
pub struct SessionGateApi {
    sessions: Arc<SessionService>,
    flows: Arc<FlowService>,
}

impl SessionGateApi {
    pub fn new(sessions: Arc<SessionService>, flows: Arc<FlowService>) -> Self {
        Self { sessions, flows }
    }
}

#[tonic::async_trait]
impl pb::session_gate_service_server::SessionGateService for SessionGateApi {
    async fn validate_session(
        &self,
        request: Request<pb::ValidateSessionRequest>,
    ) -> Result<Response<pb::ValidateSessionResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let view = view_in(r.view);
        let req = ValidateRequest {
            view,
            may_extend_by_jwt: caller.may(Scope::Issue),
            caller: caller.name.clone(),
            token: r.token,
            max_token_age_seconds: r.max_token_age_seconds,
            session_duration_minutes: r.session_duration_minutes,
            client: client_in(r.client),
        };
        if !r.auto_migrate {
            let verdict = self.sessions.validate(req).await?;
            return Ok(Response::new(verdict_out(verdict, view)));
        }
        caller.require(Scope::Migrate, "auto_migrate")?;
        let (verdict, migrated) = self
            .sessions
            .validate_and_migrate(req, "validate_session")
            .await?;
        let mut out = verdict_out(verdict, view);
        out.migration = migrated.map(|(created, replayed)| migrated_out(created, replayed));
        Ok(Response::new(out))
    }

    async fn migrate_session(
        &self,
        request: Request<pb::MigrateSessionRequest>,
    ) -> Result<Response<pb::MigrateSessionResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let custom_claims = custom_claims_in(r.session_custom_claims)?;
        let (created, replayed) = self
            .sessions
            .migrate(MigrateRequest {
                caller: caller.name.to_string(),
                legacy_token: r.legacy_token,
                provider: r.provider,
                duration_minutes: r.session_duration_minutes,
                custom_claims,
                client: client_in(r.client),
            })
            .await?;
        Ok(Response::new(migrated_out(created, replayed)))
    }

    async fn resolve_flow(
        &self,
        request: Request<pb::ResolveFlowRequest>,
    ) -> Result<Response<pb::ResolveFlowResponse>, Status> {
        let req = flow_request(request.into_inner());
        let decision = self.flows.resolve(&req).await?;
        Ok(Response::new(flow_response(decision)))
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let who = r.who.map(|w| match w {
            pb::create_session_request::Who::UserId(id) => Who::UserId(id),
            pb::create_session_request::Who::NewUser(u) => Who::NewUser {
                email: u.email,
                email_verified: u.email_verified,
                name: u.name,
            },
        });
        let custom_claims = custom_claims_in(r.session_custom_claims)?;
        let (created, replayed) = self
            .sessions
            .create(
                &caller,
                CreateRequest {
                    who,
                    factors: r
                        .authentication_factors
                        .into_iter()
                        .map(factor_in)
                        .collect(),
                    duration_minutes: r.session_duration_minutes,
                    custom_claims,
                    client: client_in(r.client),
                    request_id: (!r.request_id.is_empty()).then_some(r.request_id),
                },
            )
            .await?;
        Ok(Response::new(pb::CreateSessionResponse {
            user_id: created.user.user_id.clone(),
            user: Some(user_out(&created.user)),
            session: Some(session_out(&created.session)),
            session_token: created.session_token,
            session_jwt: created.session_jwt,
            user_created: created.user_created,
            replayed,
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        use pb::revoke_session_request::Target;
        let caller = caller(&request);
        let r = request.into_inner();
        let except = (!r.except_session_id.is_empty()).then_some(r.except_session_id);
        if except.is_some() && !matches!(r.target, Some(Target::UserId(_))) {
            return Err(Error::invalid_argument(
                ErrorReason::InvalidExcept,
                "except_session_id goes with the user_id target only",
            )
            .into());
        }
        let target = match r.target {
            None => {
                return Err(Error::invalid_argument(
                    ErrorReason::TargetRequired,
                    "set one of session_id, session_token, session_jwt, user_id, legacy_token",
                )
                .into());
            }
            Some(Target::LegacyToken(v)) => RevokeTarget::LegacyToken(v),
            Some(Target::SessionId(v)) => RevokeTarget::SessionId(v),
            Some(Target::SessionToken(v)) => RevokeTarget::SessionToken(v),
            Some(Target::SessionJwt(v)) => RevokeTarget::SessionJwt(v),
            Some(Target::UserId(user_id)) => RevokeTarget::UserId { user_id, except },
        };
        let revoked = self.sessions.revoke(target, &caller).await?;
        Ok(Response::new(pb::RevokeSessionResponse { revoked }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller(&request);
        let user_id = request.into_inner().user_id;
        if user_id.is_empty() {
            return Err(Error::invalid_argument(
                ErrorReason::TargetRequired,
                "user_id is required",
            )
            .into());
        }
        let sessions = self.sessions.list_sessions(&user_id, &caller).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(session_out).collect(),
        }))
    }
}
