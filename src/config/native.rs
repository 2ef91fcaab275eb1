//! `[native]`: sessiongate's own sessions — issuer, audiences, lifetimes, signing keys.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Check, Env, Secret, Vars};

const DEFAULT_JWT_TTL_SECONDS: u32 = 300;
const DEFAULT_SESSION_MINUTES: u32 = 60;
const DEFAULT_LEEWAY_SECONDS: u32 = 30;
/// Session length bounds: 5 minutes to one year (366 days).
pub const SESSION_MINUTES_MIN: u32 = 5;
pub const SESSION_MINUTES_MAX: u32 = 527_040;

#[derive(Debug, Clone, Serialize)]
pub struct NativeConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwt_ttl: Duration,
    pub session_duration_minutes: u32,
    pub leeway: Duration,
    /// How long after its `exp` an expired session_jwt may still be exchanged for a fresh one
    /// (while its session is active).
    pub refresh_window: Duration,
    /// No session lives longer than this from `started_at`, however often it is extended.
    pub absolute_lifetime_minutes: u32,
    /// PEM or JWK files, or `env:NAME` secrets; the first signs, all are published.
    pub signing_keys: Vec<KeySource>,
}

/// Where a signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM or JWK file (e.g. a mounted Kubernetes Secret).
    File(PathBuf),
    /// The PEM or JWK text of an environment variable (`env:NAME` in the file).
    Env { var: String, value: Secret },
}

impl Serialize for KeySource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySource::File(p) => s.serialize_str(&p.display().to_string()),
            KeySource::Env { var, .. } => s.serialize_str(&format!("env:{var}")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNative {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    jwt_ttl_seconds: Option<u32>,
    session_duration_minutes: Option<u32>,
    leeway_seconds: Option<u32>,
    refresh_window_seconds: Option<u32>,
    absolute_lifetime_minutes: Option<u32>,
    #[serde(default)]
    pub(super) signing_keys: Vec<String>,
}

/// Whether the native issuer is an http(s) URL — then it publishes OpenID discovery under it
/// (checked at start: a host, no query, no fragment) — rather than a URN.
pub fn is_url_issuer(issuer: &str) -> bool {
    issuer.starts_with("https://") || issuer.starts_with("http://")
}

pub(super) fn build(c: &mut Check, env: Env, vars: &dyn Vars, raw: RawNative) -> NativeConfig {
    let issuer = raw
        .issuer
        .unwrap_or_else(|| format!("urn:sessiongate:{}", env.as_str()));
    if issuer.trim().is_empty() {
        c.fail("native.issuer", "must not be empty");
    }
    // A URL issuer publishes OpenID discovery at `<issuer>/.well-known/openid-configuration`,
    // which needs an issuer without query or fragment (OpenID Connect Discovery, section 3).
    if is_url_issuer(&issuer) {
        match url::Url::parse(&issuer) {
            Ok(u) if u.query().is_none() && u.fragment().is_none() && u.has_host() => {}
            _ => c.fail(
                "native.issuer",
                format!(
                    "`{issuer}` is not usable as an issuer URL (a host, no query, no fragment): \
                     use the URL callers reach sessiongate's HTTP port at, or a URN"
                ),
            ),
        }
    }
    let audiences = raw.audiences.unwrap_or_else(|| vec!["sessiongate".into()]);
    if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
        c.fail("native.audiences", "needs at least one non-empty audience");
    }
    let jwt_ttl = raw.jwt_ttl_seconds.unwrap_or(DEFAULT_JWT_TTL_SECONDS);
    if !(30..=3_600).contains(&jwt_ttl) {
        c.fail(
            "native.jwt_ttl_seconds",
            format!("{jwt_ttl} is out of range 30..=3600 (a session_jwt is meant to be short)"),
        );
    }
    let session_minutes = raw
        .session_duration_minutes
        .unwrap_or(DEFAULT_SESSION_MINUTES);
    c.range(
        "native.session_duration_minutes",
        session_minutes,
        SESSION_MINUTES_MIN..=SESSION_MINUTES_MAX,
    );
    let mut signing_keys = Vec::new();
    for (i, k) in raw.signing_keys.iter().enumerate() {
        match k.strip_prefix("env:") {
            Some(var) => match vars.get(var).filter(|v| !v.trim().is_empty()) {
                Some(value) => signing_keys.push(KeySource::Env {
                    var: var.to_owned(),
                    value: Secret::new(value),
                }),
                None => c.fail(
                    format!("native.signing_keys[{i}]"),
                    format!("environment variable {var} is not set (or empty): it must hold the key's PEM or JWK"),
                ),
            },
            None if k.is_empty() => c.fail(format!("native.signing_keys[{i}]"), "empty path"),
            None => signing_keys.push(KeySource::File(PathBuf::from(k))),
        }
    }
    let leeway = raw.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
    if leeway > 300 {
        c.fail(
            "native.leeway_seconds",
            format!("{leeway} is more than 300"),
        );
    }

    let refresh_window = raw.refresh_window_seconds.unwrap_or(86_400);
    if refresh_window > 2_592_000 {
        c.fail(
            "native.refresh_window_seconds",
            format!("{refresh_window} is more than 2592000 (30 days)"),
        );
    }
    let absolute_lifetime = raw.absolute_lifetime_minutes.unwrap_or(129_600);
    if !(SESSION_MINUTES_MIN..=SESSION_MINUTES_MAX).contains(&absolute_lifetime) {
        c.fail(
            "native.absolute_lifetime_minutes",
            format!(
                "{absolute_lifetime} is out of range {SESSION_MINUTES_MIN}..={SESSION_MINUTES_MAX}"
            ),
        );
    } else if absolute_lifetime < session_minutes {
        c.fail(
            "native.absolute_lifetime_minutes",
            format!("{absolute_lifetime} is shorter than native.session_duration_minutes ({session_minutes})"),
        );
    }

    NativeConfig {
        issuer,
        audiences,
        jwt_ttl: Duration::from_secs(jwt_ttl.into()),
        session_duration_minutes: session_minutes,
        leeway: Duration::from_secs(leeway.into()),
        refresh_window: Duration::from_secs(refresh_window.into()),
        absolute_lifetime_minutes: absolute_lifetime,
        signing_keys,
    }
}
