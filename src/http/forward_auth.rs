//! `/auth`: HTTP forward-auth, the contract of nginx `auth_request`, Traefik ForwardAuth,
//! Caddy `forward_auth` and Envoy's HTTP ext_authz — the proxy repeats the user's request
//! headers here and lets the request through on a 2xx. Decided by [`crate::edge::Gate`], as
//! Envoy's gRPC Check is.
//!
//! The user's `Authorization` is the credential being judged, so the proxy's own caller key
//! travels in `x-sessiongate-caller` (scope `validate`). Per-route settings are the query:
//! `/auth?cookie=sg_session&anonymous=true&migrate=inline&flow=login` ([`Route::set`]).
//! Answers: 200 with the identity headers (and `Set-Cookie` for the browser, which the proxy
//! copies to its response); 401 with `WWW-Authenticate`; 503 when a dependency is down
//! (never a 401 that would log the user out); 500 when the proxy's caller key is missing,
//! unknown or short of a scope the route needs, or the query names an unknown setting (the
//! proxy's configuration is wrong, not the user's credential — nginx turns it into a 500
//! too). The client's address, for a flow's address rules, is the last entry of
//! `X-Forwarded-For`: the one the proxy itself appended. This port must not be reachable
//! from outside the cluster.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::CallerKeys;
use crate::caller::Caller;
use crate::config::Scope;
use crate::edge::{Decision, EdgeRequest, Gate, Route};
use crate::error::{Error, ErrorCode};

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
    let route = match route(&caller, query.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return misconfigured(&e),
    };
    let client_ip = client_ip(&headers);
    // Values that are not visible ASCII are no credential of anyone's: skipped.
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| k.as_str() != CALLER_HEADER)
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let req = EdgeRequest {
        headers,
        route,
        client_ip,
    };
    match fa.gate.check(&req, &caller).await {
        Ok(Decision::Allow {
            set, set_cookies, ..
        }) => {
            let mut r = StatusCode::OK.into_response();
            for u in set {
                // Names are checked at start, values come from ids and tokens (visible
                // ASCII); one that is not is left out rather than failing the request.
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(fa.gate.header(u.fact).as_bytes()),
                    HeaderValue::from_str(&u.value),
                ) {
                    r.headers_mut().insert(n, v);
                }
            }
            for c in set_cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
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
        Err(e) => match e.code {
            ErrorCode::Unavailable | ErrorCode::ResourceExhausted => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", e.reason.as_str()),
            )
                .into_response(),
            _ => misconfigured(&e),
        },
    }
}

/// 500 for what the proxy's configuration got wrong, with the fix in the body (nginx logs
/// it; the user sees nginx's own 500 page).
fn misconfigured(e: &Error) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("forward-auth: {}: {}\n", e.reason.as_str(), e.message),
    )
        .into_response()
}

/// The address the proxy appended last to `X-Forwarded-For` (the client as the proxy saw
/// it); `None` when absent or not an address.
fn client_ip(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The route's settings from the query string (else the caller's own).
fn route(caller: &Caller, query: &str) -> Result<Route, Error> {
    let settings: Vec<_> = url::form_urlencoded::parse(query.as_bytes()).collect();
    Route::of(caller, settings.iter().map(|(k, v)| (&**k, &**v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings_come_from_the_query() {
        assert_eq!(route(&Caller::anonymous(), "").unwrap(), Route::default());
        assert_eq!(
            route(
                &Caller::anonymous(),
                "cookie=sg_session&cookie=legacy_at&anonymous=true&migrate=inline&flow=log%20in"
            )
            .unwrap(),
            Route {
                cookies: vec!["sg_session".into(), "legacy_at".into()],
                anonymous: true,
                migrate: true,
                flow: Some("log in".into()),
            }
        );
        assert!(
            route(&Caller::anonymous(), "cookie=")
                .unwrap()
                .cookies
                .is_empty()
        );
        for bad in ["anonymous=1", "x=%ZZ", "cookies=a"] {
            assert!(route(&Caller::anonymous(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_address_the_proxy_appended_last() {
        let h = |vs: &[&'static str]| {
            let mut m = HeaderMap::new();
            for v in vs {
                m.append("x-forwarded-for", HeaderValue::from_static(v));
            }
            client_ip(&m)
        };
        assert_eq!(h(&[]), None);
        assert_eq!(h(&["198.51.100.1"]), "198.51.100.1".parse().ok());
        assert_eq!(
            h(&["10.9.9.9 (forged), 1.2.3.4", "203.0.113.9"]),
            "203.0.113.9".parse().ok()
        );
        assert_eq!(h(&["1.2.3.4, 2001:db8::1"]), "2001:db8::1".parse().ok());
        assert_eq!(h(&["1.2.3.4, junk"]), None);
    }
}
