//! The gRPC services: the two API services and Envoy's external authorization behind the
//! observation, deadline and caller-key layers, with health and reflection (v1 and v1alpha),
//! every message bounded. `crate::net` serves them on each connection.

use std::sync::Arc;
use std::time::Duration;

use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;

use super::deadline::{Deadline, DeadlineLayer};
use super::ext_authz::{AuthorizationServer, ExtAuthzApi};
use super::layers::{Auth, AuthLayer, Observe, ObserveLayer};
use super::pb::rollout_admin_service_server::RolloutAdminServiceServer;
use super::pb::session_gate_service_server::SessionGateServiceServer;
use super::pb::webhook_admin_service_server::WebhookAdminServiceServer;
use super::rollout::RolloutAdminApi;
use super::session::SessionGateApi;
use super::webhooks::WebhookAdminApi;
use super::{
    EXT_AUTHZ_SERVICE, HEALTH_SERVICE, ROLLOUT_ADMIN_SERVICE, SESSION_GATE_SERVICE,
    WEBHOOK_ADMIN_SERVICE, pb,
};
use crate::auth::CallerKeys;
use crate::edge::Gate;
use crate::flow::FlowService;
use crate::session::SessionService;
use crate::webhooks::Webhooks;

/// The longest a call may take, and the deadline of a call that sets none: work for a caller
/// who has given up stops.
const MAX_CALL: Duration = Duration::from_secs(30);

/// Every gRPC service, as each connection serves it.
pub type GrpcService = Observe<Deadline<Auth<Routes>>>;

/// What the server is built from.
pub struct Services {
    pub sessions: Arc<SessionService>,
    /// Envoy's external authorization.
    pub edge: Arc<Gate>,
    pub flows: Arc<FlowService>,
    pub callers: Arc<CallerKeys>,
    pub webhooks: Arc<Webhooks>,
    /// The largest message read or written, on every service (open ones included).
    pub max_message_bytes: usize,
}

/// The server's health, as load balancers and orchestrators read it.
pub struct Health(HealthReporter);

impl Health {
    /// Readiness off (the whole server and the API service), so that traffic moves elsewhere
    /// before the server stops accepting.
    pub async fn not_serving(&self) {
        self.0
            .set_service_status(SESSION_GATE_SERVICE, ServingStatus::NotServing)
            .await;
        self.0
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
}

/// The gRPC services behind the observation, deadline and caller-key layers, ready to serve
/// on each connection (`crate::net`), and the server's health, SERVING.
pub async fn service(
    services: Services,
) -> Result<(Health, GrpcService), tonic_reflection::server::Error> {
    let max = services.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SessionGateServiceServer<SessionGateApi>>()
        .await;

    // v1 and v1alpha: grpcurl 1.8 (and Postman, evans, Kreya for a long time) speak only
    // v1alpha. Only the public services are advertised.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(super::EXT_AUTHZ_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo & co., so grpcurl can decode error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(SESSION_GATE_SERVICE)
            .with_service_name(ROLLOUT_ADMIN_SERVICE)
            .with_service_name(WEBHOOK_ADMIN_SERVICE)
            .with_service_name(HEALTH_SERVICE)
            .with_service_name(EXT_AUTHZ_SERVICE)
    };
    // The API's message limit on the open services too: tonic's default (4 MiB) would let
    // anyone, without a key, make the server buffer and parse that much per call.
    let health_service = health_service
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // (Reflection's answers are our own descriptors, bounded by us: only what it reads is
    // limited.)
    let reflection_v1 = reflection().build_v1()?.max_decoding_message_size(max);
    let reflection_v1alpha = reflection().build_v1alpha()?.max_decoding_message_size(max);

    let session = SessionGateServiceServer::new(SessionGateApi::new(
        services.sessions,
        services.flows.clone(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let ext_authz = AuthorizationServer::new(ExtAuthzApi::new(services.edge))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = RolloutAdminServiceServer::new(RolloutAdminApi::new(services.flows))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let webhooks = WebhookAdminServiceServer::new(WebhookAdminApi::new(services.webhooks))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(session)
        .add_service(ext_authz)
        .add_service(admin)
        .add_service(webhooks)
        .prepare();
    // Observe outermost, so that rejected and timed-out calls are counted too.
    let service = ServiceBuilder::new()
        .layer(ObserveLayer::default())
        .layer(DeadlineLayer::new(MAX_CALL))
        .layer(AuthLayer::new(services.callers))
        .service(routes);
    Ok((Health(health), service))
}
