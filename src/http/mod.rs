//! The plain-HTTP port: `/metrics` for Prometheus, `/.well-known/jwks.json` for anyone who
//! prefers to verify `session_jwt`s offline with their own JWT library (and
//! `/.well-known/openid-configuration`, to find it by discovery), `/auth` for
//! proxies that speak HTTP forward-auth, `/backchannel-logout/<provider>` for providers'
//! OpenID Connect back-channel logouts, and `/status`, a page for people.

mod backchannel;
mod discovery;
mod forward_auth;
mod status;

pub use discovery::Discovery;
pub use forward_auth::{CALLER_HEADER, ForwardAuth};
pub use status::StatusPage;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

use crate::keys::SigningKeys;
use crate::session::SessionService;

/// The HTTP routes.
pub fn router(
    metrics: PrometheusHandle,
    signing: Arc<SigningKeys>,
    forward_auth: ForwardAuth,
    sessions: Arc<SessionService>,
    status: StatusPage,
    discovery: Discovery,
) -> Router {
    let jwks = get(move || {
        let signing = signing.clone();
        async move {
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/jwk-set+json"),
                    // Verifiers may cache it; a rotation publishes the new key well before
                    // it signs (see keys::signing).
                    (header::CACHE_CONTROL, "public, max-age=300"),
                ],
                signing.jwks_json().to_owned(),
            )
        }
    });
    let openid = get(discovery::document).with_state(discovery.clone());
    let mut well_known = Router::new()
        .route("/.well-known/openid-configuration", openid.clone())
        .route("/.well-known/jwks.json", jwks.clone());
    if let Some(path) = discovery.issuer_path() {
        well_known = well_known
            .route(&format!("{path}/.well-known/openid-configuration"), openid)
            .route(&format!("{path}/.well-known/jwks.json"), jwks);
    }
    well_known
        .route("/status", get(status::page).with_state(status))
        .route("/auth", any(forward_auth::check).with_state(forward_auth))
        .route(
            "/backchannel-logout/{provider}",
            post(backchannel::logout)
                .with_state(sessions)
                .layer(DefaultBodyLimit::max(backchannel::MAX_BODY_BYTES)),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    crate::telemetry::collect_process();
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
}
