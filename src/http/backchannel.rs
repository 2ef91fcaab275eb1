//! `POST /backchannel-logout/<provider>`: OpenID Connect Back-Channel Logout 1.0, the
//! provider's side channel to say a user (or one of its sessions) logged out. The body is
//! form-encoded with one `logout_token` (§2.5); the answer is 200 once the logout is taken (a
//! redelivery of the same token too), 400 with an OAuth error body when the token is not a
//! valid logout token (§2.8), 404 for a provider that takes none, 503 when the store is down —
//! so the provider retries instead of the logout being lost.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ErrorCode};
use crate::session::SessionService;

/// The largest body taken: a logout token is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const FORM: &str = "application/x-www-form-urlencoded";

pub async fn logout(
    State(sessions): State<Arc<SessionService>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(FORM));
    if !is_form {
        return bad_request("the body must be application/x-www-form-urlencoded");
    }
    let mut tokens = url::form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v);
    let (Some(token), None) = (tokens.next(), tokens.next()) else {
        return bad_request("send exactly one logout_token");
    };
    match sessions.backchannel_logout(&provider, &token).await {
        Ok(sessions_revoked) => {
            tracing::info!(provider = %provider, sessions_revoked, "back-channel logout taken");
            (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
        }
        Err(e) => error_response(&provider, e),
    }
}

fn error_response(provider: &str, e: Error) -> Response {
    match e.code {
        ErrorCode::InvalidArgument => {
            tracing::warn!(provider, reason = e.reason.as_str(), message = %e.message, "back-channel logout refused");
            bad_request(&e.message)
        }
        ErrorCode::NotFound => (
            StatusCode::NOT_FOUND,
            "no such provider takes back-channel logouts\n",
        )
            .into_response(),
        _ => {
            tracing::warn!(
                provider,
                reason = e.reason.as_str(),
                "back-channel logout not taken: retry"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::RETRY_AFTER, "1"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                "unavailable: retry\n",
            )
                .into_response()
        }
    }
}

fn bad_request(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({"error": "invalid_request", "error_description": why})),
    )
        .into_response()
}
