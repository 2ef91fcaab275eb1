//! `[edge]`: the names of the headers sessiongate sets on requests it lets through at the
//! edge (Envoy's Check, `/auth` forward-auth).

use serde::{Deserialize, Serialize};

use super::Check;

/// The header names the service behind the proxy reads. Every name is lower case; a client's
/// own copy of any of them (and of any `x-sessiongate-*` header) is removed before the
/// request goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeHeaders {
    pub user_id: String,
    pub session_id: String,
    pub origin: String,
    pub provider: String,
    pub subject: String,
    pub session_jwt: String,
    pub flow: String,
}

impl Default for EdgeHeaders {
    fn default() -> Self {
        Self {
            user_id: "x-sessiongate-user-id".into(),
            session_id: "x-sessiongate-session-id".into(),
            origin: "x-sessiongate-origin".into(),
            provider: "x-sessiongate-provider".into(),
            subject: "x-sessiongate-subject".into(),
            session_jwt: "x-sessiongate-session-jwt".into(),
            flow: "x-sessiongate-flow".into(),
        }
    }
}

impl EdgeHeaders {
    /// Every name, with its key under `[edge.headers]`.
    pub fn all(&self) -> [(&'static str, &str); 7] {
        [
            ("user_id", &self.user_id),
            ("session_id", &self.session_id),
            ("origin", &self.origin),
            ("provider", &self.provider),
            ("subject", &self.subject),
            ("session_jwt", &self.session_jwt),
            ("flow", &self.flow),
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EdgeConfig {
    pub headers: EdgeHeaders,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEdge {
    #[serde(default)]
    headers: RawHeaders,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    user_id: Option<String>,
    session_id: Option<String>,
    origin: Option<String>,
    provider: Option<String>,
    subject: Option<String>,
    session_jwt: Option<String>,
    flow: Option<String>,
}

/// Headers that carry something else than identity: a name among them would let the edge
/// overwrite the user's credential, the routing, the framing or the proxy's caller key.
const RESERVED: [&str; 14] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "x-sessiongate-caller",
];

pub(super) fn build(c: &mut Check, raw: RawEdge) -> EdgeConfig {
    let d = EdgeHeaders::default();
    let h = raw.headers;
    let headers = EdgeHeaders {
        user_id: h.user_id.unwrap_or(d.user_id),
        session_id: h.session_id.unwrap_or(d.session_id),
        origin: h.origin.unwrap_or(d.origin),
        provider: h.provider.unwrap_or(d.provider),
        subject: h.subject.unwrap_or(d.subject),
        session_jwt: h.session_jwt.unwrap_or(d.session_jwt),
        flow: h.flow.unwrap_or(d.flow),
    };
    let all = headers.all();
    for (i, (key, name)) in all.iter().enumerate() {
        let key = format!("edge.headers.{key}");
        // Lower case, because Envoy and HTTP/2 carry header names in lower case and a
        // service must find the header under the name written here.
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            c.fail(
                key,
                format!(
                    "`{name}`: a header name of 1 to 64 lower-case letters, digits, `-` or `_`"
                ),
            );
        } else if RESERVED.contains(name) || name.starts_with("proxy-") {
            c.fail(
                key,
                format!("`{name}` carries something else than identity: choose another name"),
            );
        } else if all[..i].iter().any(|(_, n)| n == name) {
            c.fail(
                key,
                format!("`{name}` is already the name of another header"),
            );
        }
    }
    EdgeConfig { headers }
}

/// A caller's own route settings at the edge: what a proxy that cannot set any per route
/// (Istio's `CUSTOM` action) gets. A request that carries settings of its own uses only those.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRoute {
    /// The cookies that may carry the credential, in order.
    #[serde(default)]
    pub cookie: Vec<String>,
    #[serde(default)]
    pub anonymous: bool,
    /// `"inline"`, or absent.
    pub migrate: Option<String>,
}

/// The most cookies a route may read the credential from. A route has one or two (the new
/// session's, a legacy provider's); the bound keeps what one check costs small whatever a
/// proxy sends: each name is looked for in every `Cookie` header.
pub const MAX_ROUTE_COOKIES: usize = 8;

/// The longest cookie name a route may name (browsers keep name and value within 4 KiB).
pub const MAX_COOKIE_NAME_BYTES: usize = 256;

/// Why `names` (a route's cookies, in order, once each) cannot be a route's, if it cannot.
pub fn route_cookies_error(names: &[String]) -> Option<String> {
    if names.len() > MAX_ROUTE_COOKIES {
        return Some(format!(
            "more than {MAX_ROUTE_COOKIES} cookie names: a route reads at most {MAX_ROUTE_COOKIES}"
        ));
    }
    names.iter().find_map(|name| {
        if name.len() > MAX_COOKIE_NAME_BYTES {
            Some(format!(
                "a cookie name of {} bytes: at most {MAX_COOKIE_NAME_BYTES}",
                name.len()
            ))
        } else if !super::is_cookie_name(name) {
            Some(format!("`{name}` is not a cookie name"))
        } else {
            None
        }
    })
}

/// Checks a client's route (`clients[i].edge`) against what the client may do.
pub(super) fn client_route(c: &mut Check, key: &str, r: &ClientRoute, can_migrate: bool) {
    if let Some(why) = route_cookies_error(&r.cookie) {
        c.fail(format!("{key}.cookie"), why);
    }
    match r.migrate.as_deref() {
        None => {}
        Some("inline") if r.cookie.is_empty() => c.fail(
            format!("{key}.migrate"),
            "inline migration needs a cookie for the new session: set cookie",
        ),
        Some("inline") if !can_migrate => c.fail(
            format!("{key}.migrate"),
            "inline migration needs the client's `migrate` scope",
        ),
        Some("inline") => {}
        Some(other) => c.fail(
            format!("{key}.migrate"),
            format!("`{other}`: the only value is \"inline\""),
        ),
    }
}
