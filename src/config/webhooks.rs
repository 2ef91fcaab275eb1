//! `[[webhooks]]`: where the change events go, which of them, signed with which secrets, and
//! how long a delivery is retried before it becomes a dead letter.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Check, Env, Secret, Vars};

/// The event types a webhook can ask for (what sessiongate appends to its event stream).
pub const EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.migrated",
    "session.created",
    "session.revoked",
    "legacy_token.revoked",
    "rollout.updated",
];

/// The prefix of a Standard Webhooks secret; the rest is the key, base64.
pub const SECRET_PREFIX: &str = "whsec_";

/// One receiver of events.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookConfig {
    /// Names the receiver in metrics, logs, the admin API and the store (its consumer group).
    pub name: String,
    /// Where events are POSTed.
    pub url: ReceiverUrl,
    /// The event types sent; `None`: all of them.
    pub events: Option<BTreeSet<String>>,
    /// The signing keys, decoded; the first is the current one, and every one signs each
    /// delivery so that a receiver can move to a new secret at its own pace.
    pub secrets: Vec<WebhookSecret>,
    /// One delivery attempt's bound, connecting included.
    pub timeout: Duration,
    /// The wait before the first retry; it doubles up to `max_retry`, with jitter.
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// How long after the event a delivery is still retried; then it is a dead letter.
    pub retry_for: Duration,
    /// How long a dead letter is kept for redelivery.
    pub dead_letter_retention: Duration,
    /// Deliveries in flight at once (one per user at most: a user's events go in order).
    pub max_in_flight: usize,
}

impl WebhookConfig {
    /// Whether events of type `kind` go to this receiver.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(kind))
    }
}

/// A signing key from an `env:` reference.
#[derive(Debug, Clone)]
pub struct WebhookSecret {
    pub var: String,
    /// The key bytes, base64 (what follows `whsec_`).
    pub key: Secret,
}

impl WebhookSecret {
    /// The HMAC key.
    pub fn key_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(self.key.expose())
            .expect("checked when the configuration was loaded")
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("env:{}", self.var))
    }
}

/// A receiver's URL, which may carry a credential (a password, a token in the query): shown
/// without them by `Debug` and `Serialize` alike (`check-config`, a logged config).
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiverUrl(url::Url);

impl ReceiverUrl {
    /// The URL to send to.
    pub fn get(&self) -> &url::Url {
        &self.0
    }

    fn shown(&self) -> String {
        let mut shown = self.0.clone();
        if shown.query().is_some() {
            shown.set_query(Some("<redacted>"));
        }
        let _ = shown.set_password(None);
        shown.to_string()
    }
}

impl std::fmt::Debug for ReceiverUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl Serialize for ReceiverUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default)]
    secrets: Vec<String>,
    timeout_seconds: Option<u64>,
    first_retry_ms: Option<u64>,
    max_retry_seconds: Option<u64>,
    retry_for_seconds: Option<u64>,
    dead_letter_days: Option<u64>,
    max_in_flight: Option<usize>,
}

pub(super) fn build(
    c: &mut Check,
    env: Env,
    vars: &dyn Vars,
    raw: Vec<RawWebhook>,
) -> Vec<WebhookConfig> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, w) in raw.into_iter().enumerate() {
        let at = |k: &str| format!("webhooks[{i}].{k}");
        let Some(url) = w.url else {
            c.fail(at("url"), "required: where to POST the events");
            continue;
        };
        let Some(url) = super::providers::url_field(c, env, &at("url"), Some(url)) else {
            continue;
        };
        let name = w.name.unwrap_or_else(|| {
            // Stable while the URL is: the name keys the receiver's place in the stream.
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_str().as_bytes());
            format!("webhook-{}", hex::encode(&d.as_ref()[..4]))
        });
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            c.fail(
                at("name"),
                format!("`{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"),
            );
        } else if !names.insert(name.clone()) {
            c.fail(at("name"), format!("`{name}` names two webhooks"));
        }
        let events = match w.events {
            None => None,
            Some(list) if list.is_empty() => {
                c.fail(
                    at("events"),
                    "empty: name the event types to send, or leave the key out for all",
                );
                None
            }
            Some(list) => {
                for e in &list {
                    if !EVENT_TYPES.contains(&e.as_str()) {
                        c.fail(
                            at("events"),
                            format!(
                                "`{e}` is not an event type; known: {}",
                                EVENT_TYPES.join(", ")
                            ),
                        );
                    }
                }
                Some(list.into_iter().collect())
            }
        };
        let mut secrets = Vec::new();
        if w.secrets.is_empty() {
            c.fail(
                at("secrets"),
                "required: at least one `env:VAR` whose value is a Standard Webhooks secret (`whsec_` and 24 to 64 random bytes in base64, e.g. `echo whsec_$(openssl rand -base64 32)`)",
            );
        }
        for (j, s) in w.secrets.iter().enumerate() {
            let key = at(&format!("secrets[{j}]"));
            let Some(var) = s.strip_prefix("env:") else {
                c.fail(
                    key,
                    "secrets are never written in the file: use `env:VAR` and put the `whsec_…` value in that variable",
                );
                continue;
            };
            let decoded = vars.get(var).and_then(|v| {
                let b64 = v.trim().strip_prefix(SECRET_PREFIX)?.to_owned();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .ok()?;
                (24..=64).contains(&bytes.len()).then_some(b64)
            });
            match decoded {
                Some(b64) => secrets.push(WebhookSecret {
                    var: var.to_owned(),
                    key: Secret::new(b64),
                }),
                None => c.fail(
                    key,
                    format!("environment variable {var} must hold `whsec_` and 24 to 64 random bytes in base64 (e.g. `echo whsec_$(openssl rand -base64 32)`)"),
                ),
            }
        }
        let timeout = w.timeout_seconds.unwrap_or(10);
        c.range(at("timeout_seconds"), timeout, 1..=60);
        let first_retry = w.first_retry_ms.unwrap_or(1_000);
        c.range(at("first_retry_ms"), first_retry, 10..=600_000);
        let max_retry = w.max_retry_seconds.unwrap_or(3_600);
        c.range(at("max_retry_seconds"), max_retry, 1..=86_400);
        let retry_for = w.retry_for_seconds.unwrap_or(86_400);
        c.range(at("retry_for_seconds"), retry_for, 1..=7 * 86_400);
        let dead_days = w.dead_letter_days.unwrap_or(14);
        c.range(at("dead_letter_days"), dead_days, 1..=90);
        let max_in_flight = w.max_in_flight.unwrap_or(16);
        c.range(at("max_in_flight"), max_in_flight, 1..=256);
        out.push(WebhookConfig {
            name,
            url: ReceiverUrl(url),
            events,
            secrets,
            timeout: Duration::from_secs(timeout),
            first_retry: Duration::from_millis(first_retry),
            max_retry: Duration::from_secs(max_retry),
            retry_for: Duration::from_secs(retry_for),
            dead_letter_retention: Duration::from_secs(dead_days * 86_400),
            max_in_flight,
        });
    }
    out
}
