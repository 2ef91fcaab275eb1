//! The edge: a proxy (Envoy's ext_authz, nginx `auth_request`, Traefik ForwardAuth) asks
//! whether to let an HTTP request through, and sessiongate answers with the same verdict
//! `ValidateSession` gives — there is no second verdict path. A valid credential passes
//! with identity headers for the service behind the proxy; whatever identity headers the
//! client sent are removed first, so a service can trust them.
//!
//! Per route, the proxy may also ask for what a service would otherwise call sessiongate for:
//! a login flow's decision (`ResolveFlow`, its cookie back to the browser) and the inline
//! migration of a legacy token (`MigrateSession`, the new session's cookie back to the
//! browser), so a rolling deployment and the move to NEW happen at the edge with no code.
//!
//! This room knows HTTP requests as header lists and knows nothing of Envoy's or axum's
//! types: `grpc::ext_authz` and `http` translate to and from it.

mod request;

use std::net::IpAddr;
use std::sync::Arc;

use crate::caller::Caller;
use crate::config::{EdgeHeaders, Scope};
use crate::error::{Error, ErrorReason};
use crate::flow::{self, FlowService};
use crate::session::model::ClientInfo;
use crate::session::{
    Created, MigratedInPassing, NATIVE_PROVIDER, Origin, SessionService, ValidateRequest, Verdict,
    View, token,
};

/// Every header sessiongate sets upstream by default starts with this; a client's copies of
/// any such header are removed, whether or not it is one sessiongate sets today.
pub const IDENTITY_PREFIX: &str = "x-sessiongate-";

/// A fact passed upstream, as a header (named in `[edge.headers]`) and, for Envoy, as
/// dynamic metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    UserId,
    SessionId,
    Origin,
    Provider,
    Subject,
    SessionJwt,
    Flow,
}

impl Fact {
    /// Every fact, in declaration order (`fact as usize` indexes it).
    pub const ALL: [Fact; 7] = [
        Fact::UserId,
        Fact::SessionId,
        Fact::Origin,
        Fact::Provider,
        Fact::Subject,
        Fact::SessionJwt,
        Fact::Flow,
    ];

    /// Its key in Envoy's dynamic metadata (for RBAC and rate limits); none for the session
    /// JWT: a credential has no place in metadata that access logs may print.
    pub fn metadata_key(self) -> Option<&'static str> {
        Some(match self {
            Fact::UserId => "user_id",
            Fact::SessionId => "session_id",
            Fact::Origin => "origin",
            Fact::Provider => "provider",
            Fact::Subject => "subject",
            Fact::Flow => "flow",
            Fact::SessionJwt => return None,
        })
    }

    fn header(self, names: &EdgeHeaders) -> &str {
        match self {
            Fact::UserId => &names.user_id,
            Fact::SessionId => &names.session_id,
            Fact::Origin => &names.origin,
            Fact::Provider => &names.provider,
            Fact::Subject => &names.subject,
            Fact::SessionJwt => &names.session_jwt,
            Fact::Flow => &names.flow,
        }
    }
}

/// What a route asks for, set per route by the proxy (Envoy's `context_extensions`, the
/// forward-auth URL's query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The cookies that may carry the credential when `Authorization` does not, in order.
    /// A session migrated inline is set in the first.
    pub cookies: Vec<String>,
    /// Requests with no credential at all pass (without identity).
    pub anonymous: bool,
    /// A legacy token the migration policy wants moved is migrated here and now.
    pub migrate: bool,
    /// A login route: this flow's decision goes upstream. Everyone passes a login route — a
    /// missing or failed credential is why one signs in.
    pub flow: Option<String>,
}

impl Route {
    /// Applies one setting: `cookie` (names, comma-separated), `anonymous` (`true`/`false`),
    /// `migrate` (`inline`), `flow` (a flow name). Anything else is refused: a misspelt
    /// setting must fail loudly, never quietly leave a route without what it asked for.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let bad = |why: String| Error::invalid_argument(ErrorReason::InvalidRouteSetting, why);
        let flag = |v: &str| match v {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            _ => Err(bad(format!("{key}: `true` or `false`, not `{v}`"))),
        };
        match key {
            "cookie" => self.add_cookies(value).map_err(bad)?,
            "anonymous" => self.anonymous = flag(value)?,
            "migrate" => match value {
                "inline" => self.migrate = true,
                "" => self.migrate = false,
                _ => return Err(bad(format!("migrate: `inline` or nothing, not `{value}`"))),
            },
            "flow" if value.is_empty() => self.flow = None,
            "flow" if value.len() > 256 => return Err(bad("flow: at most 256 bytes".into())),
            "flow" => self.flow = Some(value.to_owned()),
            _ => {
                return Err(bad(format!(
                    "unknown setting `{key}`: the settings are cookie, anonymous, migrate and flow"
                )));
            }
        }
        Ok(())
    }

    /// The route of a check from `caller` that carries `settings` (`(key, value)`, keys
    /// without the `sessiongate.` prefix): those settings if there are any, else the caller's
    /// own (`[[clients]] edge`), else none.
    pub fn of<'a>(
        caller: &Caller,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Route, Error> {
        let mut route = Route::default();
        let mut any = false;
        for (k, v) in settings {
            route.set(k, v)?;
            any = true;
        }
        if !any && let Some(own) = &caller.edge_route {
            route = Route {
                cookies: own.cookie.clone(),
                anonymous: own.anonymous,
                migrate: own.migrate.is_some(),
                flow: None,
            };
        }
        // Settings come one at a time, in any order: what they must be together is checked
        // once they are all in.
        if route.migrate && route.cookies.is_empty() {
            return Err(Error::invalid_argument(
                ErrorReason::InvalidRouteSetting,
                "migrate=inline needs a cookie for the new session: name one with `cookie`",
            ));
        }
        Ok(route)
    }

    /// Adds cookie names from a setting's value (`sg_session,legacy_at`), in order.
    fn add_cookies(&mut self, list: &str) -> Result<(), String> {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if self.cookies.iter().any(|c| c == name) {
                continue;
            }
            self.cookies.push(name.to_owned());
            // Checked as each name comes: a list of thousands is refused at the ninth
            // distinct name, before its duplicates are looked for (a quadratic search).
            if let Some(why) = crate::config::route_cookies_error(&self.cookies) {
                return Err(format!("cookie: {why}"));
            }
        }
        Ok(())
    }
}

/// The request a proxy describes: its headers (any case; duplicates as sent), its route and
/// the client's address as the proxy saw it (for the flow's address rules), when known.
pub struct EdgeRequest<'a> {
    pub headers: Vec<(&'a str, &'a str)>,
    pub route: Route,
    pub client_ip: Option<IpAddr>,
}

/// One fact to pass upstream, in the header [`Gate::header`] names.
#[derive(Debug, PartialEq, Eq)]
pub struct Upstream {
    pub fact: Fact,
    pub value: String,
}

/// The answer to give the proxy.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with `set` (replacing any copy), after removing `remove`;
    /// `set_cookies` go back to the client with the response (`Set-Cookie` values).
    Allow {
        set: Vec<Upstream>,
        remove: Vec<String>,
        set_cookies: Vec<String>,
    },
    /// Answer the client with 401 and this `WWW-Authenticate` (RFC 6750), and why in the
    /// body.
    Deny {
        www_authenticate: String,
        body: String,
    },
}

/// Decides edge requests with the session and flow services.
pub struct Gate {
    sessions: Arc<SessionService>,
    flows: Arc<FlowService>,
    names: EdgeHeaders,
}

impl Gate {
    pub fn new(sessions: Arc<SessionService>, flows: Arc<FlowService>, names: EdgeHeaders) -> Self {
        Self {
            sessions,
            flows,
            names,
        }
    }

    /// The header that carries `fact` upstream.
    pub fn header(&self, fact: Fact) -> &str {
        fact.header(&self.names)
    }

    /// The decision on `req`, asked by `caller` (a proxy holding scope `validate`, and
    /// `migrate` or `flow` for routes that ask for them). A store or provider outage is an
    /// error (`UNAVAILABLE`): the proxy's own failure mode decides, never a 401 that would log
    /// a user out.
    pub async fn check(&self, req: &EdgeRequest<'_>, caller: &Caller) -> Result<Decision, Error> {
        let route = &req.route;
        // Checked before any credential is looked at, so that a proxy configured beyond its
        // key's scopes fails on its first request, not on the first legacy user's.
        if route.migrate {
            caller.require(Scope::Migrate, "a route that migrates inline")?;
        }
        if route.flow.is_some() {
            caller.require(Scope::Flow, "a route with a login flow")?;
        }
        let mut allow = Allow::default();
        let mut user_id = None;
        match request::credential(&req.headers, &route.cookies) {
            None if !(route.anonymous || route.flow.is_some()) => {
                return Ok(Decision::Deny {
                    // No credential at all: no error code (RFC 6750 §3.1).
                    www_authenticate: "Bearer".into(),
                    body: "no credential: send `Authorization: Bearer <token>`".into(),
                });
            }
            None => {}
            Some(token) => {
                // Inline migration puts the new session in the route's first cookie.
                let migrate_into = route.cookies.first().filter(|_| route.migrate);
                let (verdict, migrated) = self
                    .validate(token, req, caller, migrate_into.is_some())
                    .await?;
                match verdict.invalid {
                    Some(reason) if route.flow.is_none() => return Ok(deny(reason.as_str())),
                    Some(_) => {}
                    None => {
                        user_id = Some(match (migrated, migrate_into) {
                            (Some((created, _replayed)), Some(cookie)) => {
                                allow.migrated(created, cookie)
                            }
                            _ => allow.identity(verdict),
                        });
                    }
                }
            }
        }
        if let Some(flow) = &route.flow {
            self.resolve_flow(flow, user_id, req, &mut allow).await?;
        }
        Ok(Decision::Allow {
            set: allow.set,
            remove: request::spoofed(&req.headers, &self.names),
            set_cookies: allow.set_cookies,
        })
    }

    /// The verdict on `token` and, when `migrate` and the token is a legacy one to migrate,
    /// the new session (a failed migration passes the request as LEGACY: see
    /// `SessionService::validate_and_migrate`).
    async fn validate(
        &self,
        token: &str,
        req: &EdgeRequest<'_>,
        caller: &Caller,
        migrate: bool,
    ) -> Result<MigratedInPassing, Error> {
        // An opaque session token is answered from the store, which mints its JWT anyway:
        // pass that on. A JWT needs no more than the BASIC view.
        let view = if token.starts_with(token::NATIVE_TOKEN_PREFIX) {
            View::Full
        } else {
            View::Basic
        };
        let mut v = ValidateRequest {
            caller: caller.name.clone(),
            token: token.to_owned(),
            view,
            ..Default::default()
        };
        if !migrate {
            return Ok((self.sessions.validate(v).await?, None));
        }
        let user_agent = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
            .map_or("", |(_, v)| v);
        v.client = ClientInfo {
            ip_address: req.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            user_agent: user_agent.chars().take(256).collect(),
        };
        self.sessions.validate_and_migrate(v, "edge").await
    }

    async fn resolve_flow(
        &self,
        flow: &str,
        user_id: Option<String>,
        req: &EdgeRequest<'_>,
        allow: &mut Allow,
    ) -> Result<(), Error> {
        let flow_cookie = self
            .flows
            .cookie_name(flow)
            .and_then(|name| request::cookie(&req.headers, name))
            .map(str::to_owned);
        let d = self
            .flows
            .resolve(&flow::Request {
                flow: flow.to_owned(),
                user_id,
                flow_cookie,
                ip: req.client_ip,
                ..Default::default()
            })
            .await?;
        let value = match d.flow {
            flow::Flow::New => "new",
            flow::Flow::Legacy => "legacy",
        };
        allow.push(Fact::Flow, value.to_owned());
        if let Some(c) = d.set_cookie {
            allow.set_cookies.push(c.header_value);
        }
        Ok(())
    }
}

/// An allowing decision being built.
#[derive(Default)]
struct Allow {
    set: Vec<Upstream>,
    set_cookies: Vec<String>,
}

impl Allow {
    fn push(&mut self, fact: Fact, value: String) {
        if !value.is_empty() {
            self.set.push(Upstream { fact, value });
        }
    }

    /// The identity of a VALID verdict; returns its user.
    fn identity(&mut self, v: Verdict) -> String {
        let origin = match v.origin {
            Origin::Legacy => "legacy",
            Origin::New | Origin::Unknown => "new",
        };
        let provider = if v.provider.is_empty() {
            NATIVE_PROVIDER.to_owned()
        } else {
            v.provider
        };
        self.push(Fact::Origin, origin.to_owned());
        self.push(Fact::Provider, provider);
        self.push(Fact::UserId, v.user_id.clone());
        self.push(Fact::SessionId, v.session_id);
        // A native session's subject is its user: said once.
        if v.subject != v.user_id {
            self.push(Fact::Subject, v.subject);
        }
        self.push(Fact::SessionJwt, v.session_jwt.unwrap_or_default());
        v.user_id
    }

    /// The identity of a session just migrated to, and its token in `cookie` for the browser;
    /// returns its user.
    fn migrated(&mut self, c: Created, cookie: &str) -> String {
        self.push(Fact::Origin, "new".to_owned());
        self.push(Fact::Provider, NATIVE_PROVIDER.to_owned());
        self.push(Fact::UserId, c.session.user_id.clone());
        self.push(Fact::SessionId, c.session.session_id.clone());
        self.push(Fact::SessionJwt, c.session_jwt);
        self.set_cookies.push(session_cookie(
            cookie,
            &c.session_token,
            c.session.expires_at_ms,
        ));
        c.session.user_id
    }
}

/// The `Set-Cookie` value that hands a browser its new session: HttpOnly (no script reads
/// it), Secure, `SameSite=Lax` (sent on top-level navigation, not on cross-site
/// sub-requests), host-only and for the whole site, until the session expires.
fn session_cookie(name: &str, token: &str, expires_at_ms: i64) -> String {
    let mut c = cookie::Cookie::new(name.to_owned(), token.to_owned());
    c.set_path("/");
    c.set_secure(true);
    c.set_http_only(true);
    c.set_same_site(cookie::SameSite::Lax);
    if let Ok(at) = time::OffsetDateTime::from_unix_timestamp(expires_at_ms.div_euclid(1000)) {
        c.set_expires(at);
    }
    c.to_string()
}

fn deny(reason: &str) -> Decision {
    Decision::Deny {
        www_authenticate: format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
        body: format!("invalid_token: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings_are_known_or_refused() {
        let mut r = Route::default();
        for (k, v) in [
            ("cookie", "a,b"),
            ("anonymous", "true"),
            ("migrate", "inline"),
            ("flow", "login"),
        ] {
            r.set(k, v).unwrap();
        }
        assert_eq!(
            r,
            Route {
                cookies: vec!["a".into(), "b".into()],
                anonymous: true,
                migrate: true,
                flow: Some("login".into()),
            }
        );
        for (k, v) in [
            ("cookies", "a"),
            ("anonymous", "1"),
            ("anonymous", "TRUE"),
            ("migrate", "yes"),
            ("flow", &"f".repeat(257)),
            ("cookie", "sg; Domain=evil.example"),
            ("cookie", "a=b"),
            ("", ""),
        ] {
            let e = Route::default().set(k, v).unwrap_err();
            assert_eq!(e.reason, ErrorReason::InvalidRouteSetting, "{k}={v}");
        }
    }

    #[test]
    fn a_route_reads_a_few_cookies_of_bounded_names() {
        use crate::config::{MAX_COOKIE_NAME_BYTES, MAX_ROUTE_COOKIES};
        let names = |n: usize| {
            (0..n)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut r = Route::default();
        r.set("cookie", &names(MAX_ROUTE_COOKIES)).unwrap();
        assert_eq!(r.cookies.len(), MAX_ROUTE_COOKIES);
        // One more, in the same setting or in another (a query repeats `cookie=`).
        r.set("cookie", "c0,c1").unwrap();
        let e = r.set("cookie", "one_more").unwrap_err();
        assert_eq!(e.reason, ErrorReason::InvalidRouteSetting);
        assert!(e.message.contains("at most 8"), "{}", e.message);
        for bad in [
            names(MAX_ROUTE_COOKIES + 1),
            // What a proxy could send within the message limit: refused at the ninth name.
            names(9_000),
            "a".repeat(MAX_COOKIE_NAME_BYTES + 1),
        ] {
            let e = Route::default().set("cookie", &bad).unwrap_err();
            assert_eq!(e.reason, ErrorReason::InvalidRouteSetting);
        }
        // Repeats are one name, however many.
        let mut r = Route::default();
        r.set("cookie", &vec!["sg"; 10_000].join(",")).unwrap();
        assert_eq!(r.cookies, ["sg"]);
        let longest = "a".repeat(MAX_COOKIE_NAME_BYTES);
        Route::default().set("cookie", &longest).unwrap();
    }

    #[test]
    fn route_cookies_keep_their_order_once_each() {
        let mut r = Route::default();
        r.add_cookies(" sg_session , legacy_at,,sg_session")
            .unwrap();
        r.add_cookies("legacy_at,other").unwrap();
        assert_eq!(r.cookies, ["sg_session", "legacy_at", "other"]);
    }

    #[test]
    fn a_session_cookie_is_http_only_secure_lax_and_expires_with_the_session() {
        let c = session_cookie("__Host-sg_session", "sgs_abc", 1_800_000_000_000);
        assert_eq!(
            c,
            "__Host-sg_session=sgs_abc; HttpOnly; SameSite=Lax; Secure; Path=/; \
             Expires=Fri, 15 Jan 2027 08:00:00 GMT"
        );
    }
}
