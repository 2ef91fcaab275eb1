//! The edge: a proxy (Envoy's ext_authz, nginx `auth_request`, Traefik ForwardAuth) asks
//! whether to let an HTTP request through, and sessiongate answers with the same verdict
//! `ValidateSession` gives — there is no second verdict path. A valid credential passes
//! with identity headers for the service behind the proxy; whatever identity headers the
//! client sent are removed first, so a service can trust them.
//!
//! This room knows HTTP requests as header lists and knows nothing of Envoy's or axum's
//! types: `grpc::ext_authz` and `http` translate to and from it.

use std::sync::Arc;

use crate::caller::Caller;
use crate::error::Error;
use crate::session::{Origin, SessionService, ValidateRequest, Verdict, View, token};

/// Every header sessiongate sets upstream starts with this; a client's copies of any of them
/// are removed.
pub const IDENTITY_PREFIX: &str = "x-sessiongate-";

/// The identity headers.
pub const USER_ID: &str = "x-sessiongate-user-id";
pub const SESSION_ID: &str = "x-sessiongate-session-id";
pub const ORIGIN: &str = "x-sessiongate-origin";
pub const PROVIDER: &str = "x-sessiongate-provider";
pub const SUBJECT: &str = "x-sessiongate-subject";
pub const SESSION_JWT: &str = "x-sessiongate-session-jwt";

/// What a route allows, set per route by the proxy (Envoy's `context_extensions`, the
/// forward-auth URL's query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The cookie that carries the credential on this route, when not `Authorization`.
    pub cookie: Option<String>,
    /// Requests with no credential at all pass (without identity).
    pub anonymous: bool,
}

/// The request a proxy describes: its headers (any case; duplicates as sent) and its route.
pub struct EdgeRequest<'a> {
    pub headers: Vec<(&'a str, &'a str)>,
    pub route: Route,
}

/// The answer to give the proxy.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with `set` (replacing any copy), after removing `remove`.
    Allow {
        set: Vec<(&'static str, String)>,
        remove: Vec<String>,
    },
    /// Answer the client with 401 and this `WWW-Authenticate` (RFC 6750), and why in the
    /// body.
    Deny {
        www_authenticate: String,
        body: String,
    },
}

/// Decides edge requests with the session service.
pub struct Gate {
    sessions: Arc<SessionService>,
}

impl Gate {
    pub fn new(sessions: Arc<SessionService>) -> Self {
        Self { sessions }
    }

    /// The decision on `req`, asked by `caller` (a proxy holding scope `validate`). A store or
    /// provider outage is an error (`UNAVAILABLE`): the proxy's own failure mode decides,
    /// never a 401 that would log a user out.
    pub async fn check(&self, req: &EdgeRequest<'_>, caller: &Caller) -> Result<Decision, Error> {
        let remove = spoofed(&req.headers);
        let Some(token) = credential(&req.headers, &req.route) else {
            return Ok(if req.route.anonymous {
                Decision::Allow {
                    set: Vec::new(),
                    remove,
                }
            } else {
                Decision::Deny {
                    // No credential at all: no error code (RFC 6750 §3.1).
                    www_authenticate: "Bearer".into(),
                    body: "no credential: send `Authorization: Bearer <token>`".into(),
                }
            });
        };
        // An opaque session token is answered from the store, which mints its JWT anyway:
        // pass that on. A JWT needs no more than the BASIC view.
        let view = if token.starts_with(token::NATIVE_TOKEN_PREFIX) {
            View::Full
        } else {
            View::Basic
        };
        let verdict = self
            .sessions
            .validate(ValidateRequest {
                caller: caller.name.clone(),
                token: token.to_owned(),
                view,
                ..Default::default()
            })
            .await?;
        Ok(decide(verdict, remove))
    }
}

fn decide(v: Verdict, remove: Vec<String>) -> Decision {
    if let Some(reason) = v.invalid {
        return Decision::Deny {
            www_authenticate: format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                reason.as_str()
            ),
            body: format!("invalid_token: {}", reason.as_str()),
        };
    }
    let origin = match v.origin {
        Origin::Legacy => "legacy",
        Origin::New | Origin::Unknown => "new",
    };
    let provider = if v.provider.is_empty() {
        crate::session::NATIVE_PROVIDER.to_owned()
    } else {
        v.provider
    };
    let mut set = vec![(ORIGIN, origin.to_owned()), (PROVIDER, provider)];
    for (name, value) in [
        (USER_ID, v.user_id),
        (SESSION_ID, v.session_id),
        (SUBJECT, v.subject),
        (SESSION_JWT, v.session_jwt.unwrap_or_default()),
    ] {
        if !value.is_empty() {
            set.push((name, value));
        }
    }
    Decision::Allow { set, remove }
}

/// The credential: `Authorization: Bearer …`, else the route's cookie. An `Authorization`
/// of another scheme (Basic) is not ours and is passed over.
fn credential<'a>(headers: &[(&'a str, &'a str)], route: &Route) -> Option<&'a str> {
    let named = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| *v)
    };
    // (A sub-slice of a `&str` cut at ASCII bytes: always UTF-8.)
    if let Some(t) = named("authorization")
        .find_map(|v| crate::auth::bearer(v.as_bytes()).and_then(|t| std::str::from_utf8(t).ok()))
    {
        return Some(t);
    }
    let cookie = route.cookie.as_deref()?;
    named("cookie")
        .flat_map(|h| h.split(';'))
        .filter_map(|c| cookie::Cookie::parse(c.trim()).ok())
        .find(|c| c.name() == cookie)
        .and_then(|c| match c.value_raw() {
            Some(v) if !v.is_empty() => Some(v.trim_matches('"')),
            _ => None,
        })
}

/// The client's own `x-sessiongate-*` headers (lower-cased), removed before the request goes
/// on. Those sessiongate sets replace any copy anyway; removing only what was sent keeps the
/// answer small on the common path (none).
fn spoofed(headers: &[(&str, &str)]) -> Vec<String> {
    let mut remove: Vec<String> = Vec::new();
    for (k, _) in headers {
        if k.len() >= IDENTITY_PREFIX.len()
            && k.as_bytes()[..IDENTITY_PREFIX.len()]
                .eq_ignore_ascii_case(IDENTITY_PREFIX.as_bytes())
        {
            let lower = k.to_ascii_lowercase();
            if !remove.contains(&lower) {
                remove.push(lower);
            }
        }
    }
    remove
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(cookie: Option<&str>) -> Route {
        Route {
            cookie: cookie.map(str::to_owned),
            anonymous: false,
        }
    }

    #[test]
    fn the_credential_is_the_bearer_token_else_the_routes_cookie() {
        let h = |v: &[(&'static str, &'static str)]| v.to_vec();
        let none = route(None);
        let sid = route(Some("sid"));
        assert_eq!(
            credential(&h(&[("authorization", "Bearer abc")]), &none),
            Some("abc")
        );
        assert_eq!(
            credential(&h(&[("Authorization", "bearer  abc ")]), &none),
            Some("abc")
        );
        assert_eq!(
            credential(&h(&[("authorization", "Basic dTpw")]), &none),
            None
        );
        assert_eq!(credential(&h(&[("authorization", "Bearer ")]), &none), None);
        assert_eq!(credential(&h(&[("authorization", "Bearer")]), &none), None);
        // The cookie only on a route that names it.
        let c = h(&[("cookie", "a=1; sid=tok; b=2")]);
        assert_eq!(credential(&c, &none), None);
        assert_eq!(credential(&c, &sid), Some("tok"));
        assert_eq!(
            credential(&h(&[("cookie", "a=1"), ("cookie", "sid=t2")]), &sid),
            Some("t2")
        );
        assert_eq!(credential(&h(&[("cookie", "sid=")]), &sid), None);
        assert_eq!(credential(&h(&[("cookie", "xsid=t; sidx=u")]), &sid), None);
        // Bearer wins over the cookie.
        let both = h(&[("cookie", "sid=c"), ("authorization", "Bearer b")]);
        assert_eq!(credential(&both, &sid), Some("b"));
        // Garbage never panics.
        for junk in ["", ";;;", "=", "sid", "\u{1F600}=x", "sid=\u{1F600}"] {
            let _ = credential(&h(&[("cookie", junk), ("authorization", junk)]), &sid);
        }
    }

    #[test]
    fn every_identity_header_the_client_sent_is_removed() {
        let r = spoofed(&[
            ("X-SessionGate-User-Id", "admin"),
            ("x-sessiongate-user-id", "admin"),
            ("x-sessiongate-role", "root"),
            ("x-sessiongat", "short"),
            ("x-other", "kept"),
        ]);
        assert_eq!(r, ["x-sessiongate-user-id", "x-sessiongate-role"]);
        assert!(spoofed(&[("authorization", "Bearer x")]).is_empty());
    }
}
