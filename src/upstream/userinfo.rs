//! The legacy provider's OIDC UserInfo endpoint: the one upstream call sessiongate makes on a
//! request path (docs/design.md, "How a verdict is decided" step 5, and "Migration").
//!
//! Bounded in every direction: connect and overall timeouts, no redirects (a redirect would
//! carry the bearer token to wherever it points), a 64 KiB body cap, JSON objects only. Each
//! answer maps to one outcome the callers turn into a verdict or an error.

use std::time::Duration;

use serde_json::{Map, Value};

use super::http::{BodyError, http_client, read_capped};

/// Largest UserInfo body accepted.
pub const MAX_USERINFO_BYTES: usize = 64 * 1024;

/// What a UserInfo call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum UserInfoOutcome {
    /// 200 with a JSON object that has a `sub`.
    Ok(Map<String, Value>),
    /// 401/403: the provider does not accept the token.
    Rejected(u16),
    /// 429, with the provider's `Retry-After` when it gave one.
    RateLimited(Option<Duration>),
    /// 5xx, timeout, connection failure: try again later.
    Unavailable(String),
    /// A JSON object without a `sub`: nothing to link the identity by.
    MissingSubject,
    /// An answer that breaks the protocol (non-JSON, oversize, redirect…).
    Invalid(String),
}

/// The UserInfo client: one HTTP client per process.
#[derive(Clone)]
pub struct UserInfoClient {
    http: reqwest::Client,
}

impl UserInfoClient {
    pub fn new(timeout: Duration, proxy: Option<&crate::config::Secret>) -> Self {
        Self {
            http: http_client(timeout.min(Duration::from_secs(1)), timeout, proxy),
        }
    }

    /// Calls `url` with the bearer `token`. The token goes into the `Authorization` header
    /// only: never into a URL, a log line or an error.
    pub async fn fetch(&self, url: &url::Url, token: &str) -> UserInfoOutcome {
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return UserInfoOutcome::Unavailable("timed out".into()),
            Err(e) if e.is_connect() => {
                return UserInfoOutcome::Unavailable("cannot connect".into());
            }
            Err(_) => return UserInfoOutcome::Unavailable("request failed".into()),
        };
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return UserInfoOutcome::Rejected(status),
            429 => {
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(3600)));
                return UserInfoOutcome::RateLimited(after);
            }
            300..=399 => {
                return UserInfoOutcome::Invalid(format!("redirect (HTTP {status}) refused"));
            }
            500..=599 => return UserInfoOutcome::Unavailable(format!("HTTP {status}")),
            _ => return UserInfoOutcome::Invalid(format!("unexpected HTTP {status}")),
        }
        let json_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json_type {
            return UserInfoOutcome::Invalid("not application/json".into());
        }
        let body = match read_capped(resp, MAX_USERINFO_BYTES).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return UserInfoOutcome::Invalid("body too large".into()),
            Err(BodyError::Failed(e)) if e.is_timeout() => {
                return UserInfoOutcome::Unavailable("timed out".into());
            }
            Err(BodyError::Failed(_)) => {
                return UserInfoOutcome::Unavailable("connection lost".into());
            }
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m))
                if m.get("sub")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()) =>
            {
                UserInfoOutcome::Ok(m)
            }
            Ok(Value::Object(_)) => UserInfoOutcome::MissingSubject,
            _ => UserInfoOutcome::Invalid("not a JSON object".into()),
        }
    }
}
