//! `/auth`: HTTP forward-auth, the contract of nginx `auth_request`, Traefik ForwardAuth,
//! Caddy `forward_auth` and Envoy's HTTP ext_authz — the proxy repeats the user's request
//! headers here and lets the request through on a 2xx. Decided by [`crate::edge::Gate`], as
//! Envoy's gRPC Check is.
//!
//! The user's `Authorization` is the credential being judged, so the proxy's own caller key
//! travels in `x-sessiongate-caller` (scope `validate`). Per-route settings are the query:
//! `/auth?cookie=sg_session&anonymous=true`. Answers: 200 with the identity headers; 401
//! with `WWW-Authenticate`; 503 when a dependency is down (never a 401 that would log the
//! user out); 500 when the proxy's caller key is missing or unknown (the proxy's
//! configuration is wrong, not the user's credential — nginx turns it into a 500 too).
//! This port must not be reachable from outside the cluster.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::CallerKeys;
use crate::config::Scope;
use crate::edge::{Decision, EdgeRequest, Gate, Route};
use crate::error::ErrorCode;

/// The header that carries the proxy's caller key.
pub const CALLER_HEADER: &str = "x-sessiongate-caller";

/// What `/auth` needs.
#[derive(Clone)]
pub struct ForwardAuth {
    pub gate: Arc<Gate>,
    pub callers: Arc<CallerKeys>,
}

pub async fn check(
    State(fa): State<ForwardAuth>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let caller = match fa.callers.authorize_key(
        headers.get(CALLER_HEADER).map(HeaderValue::as_bytes),
        Scope::Validate,
    ) {
        Ok(c) => c,
        Err(e) => {
            // Never the key itself: only that it did not do.
            tracing::warn!(
                reason = e.reason.as_str(),
                "forward-auth: the proxy's caller key was refused"
            );
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "forward-auth: the proxy's caller key ({CALLER_HEADER}) was refused: {}\n",
                    e.reason.as_str()
                ),
            )
                .into_response();
        }
    };
    let route = route(query.as_deref().unwrap_or(""));
    // Values that are not visible ASCII are no credential of anyone's: skipped.
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| k.as_str() != CALLER_HEADER)
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    match fa
        .gate
        .check(&EdgeRequest { headers, route }, &caller)
        .await
    {
        Ok(Decision::Allow { set, .. }) => {
            let mut r = StatusCode::OK.into_response();
            for (name, value) in set {
                // Values come from ids and tokens (visible ASCII); one that is not is left out
                // rather than failing the request.
                if let Ok(v) = HeaderValue::from_str(&value) {
                    r.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            r
        }
        Ok(Decision::Deny {
            www_authenticate,
            body,
        }) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, www_authenticate)],
            body + "\n",
        )
            .into_response(),
        Err(e) => {
            let status = match e.code {
                ErrorCode::Unavailable | ErrorCode::ResourceExhausted => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, format!("{}\n", e.reason.as_str())).into_response()
        }
    }
}

/// The route's settings from the query string.
fn route(query: &str) -> Route {
    let mut r = Route::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "cookie" if !v.is_empty() => r.cookie = Some(v.into_owned()),
            "anonymous" => r.anonymous = v == "true",
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings_come_from_the_query() {
        assert_eq!(route(""), Route::default());
        assert_eq!(
            route("cookie=sg_session&anonymous=true"),
            Route {
                cookie: Some("sg_session".into()),
                anonymous: true
            }
        );
        assert!(!route("anonymous=1").anonymous);
        assert_eq!(route("cookie=&x=%ZZ").cookie, None);
    }
}
