//! The plain-HTTP port: `/metrics` for Prometheus and `/.well-known/jwks.json` for anyone who
//! prefers to verify `session_jwt`s offline with their own JWT library.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// The HTTP routes.
pub fn router(metrics: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
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
