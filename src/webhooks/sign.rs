//! What a receiver gets: the Standard Webhooks envelope of an event and its signature.
//!
//! The body is `{"type", "timestamp", "data"}` (the specification's recommended shape): the
//! event's type, when it happened, and its facts — ids, never token material. The headers
//! are `webhook-id` (the event's id: a retried or redelivered event keeps it, so receivers
//! deduplicate on it), `webhook-timestamp` (this attempt, Unix seconds) and
//! `webhook-signature`: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` for each
//! configured secret, space-separated, the current one first.

use aws_lc_rs::hmac;
use base64::Engine;
use serde_json::{Map, Value};

use crate::config::WebhookSecret;

/// The keys a webhook signs with.
pub struct Signer {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    pub fn new(secrets: &[WebhookSecret]) -> Self {
        Self::from_keys(secrets.iter().map(WebhookSecret::key_bytes))
    }

    fn from_keys(keys: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k))
                .collect(),
        }
    }

    /// The `webhook-signature` header of `body` sent as message `id` at `timestamp`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signed = Vec::with_capacity(id.len() + body.len() + 24);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.to_string().as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        self.keys
            .iter()
            .map(|k| {
                let tag = hmac::sign(k, &signed);
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A delivery's id and body, built once per event (the body is the same on every attempt;
/// only the timestamp and signature change).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub kind: String,
    pub body: Vec<u8>,
}

impl Envelope {
    /// The envelope of a stored event (`{"type", "id", "at", …facts}`); `None` for an event
    /// without a type or an id, which no receiver could make sense of.
    pub fn of(event: &Value) -> Option<Self> {
        let Value::Object(fields) = event else {
            return None;
        };
        let kind = fields.get("type")?.as_str()?.to_owned();
        let id = fields.get("id")?.as_str()?.to_owned();
        let timestamp = fields.get("at").cloned().unwrap_or(Value::Null);
        let data: Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "type" | "at"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body = serde_json::json!({
            "type": kind,
            "timestamp": timestamp,
            "data": data,
        });
        Some(Self {
            id,
            kind,
            body: body.to_string().into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_libraries_verify() {
        // The specification's reference libraries' test vector.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let s = Signer::from_keys([key]);
        assert_eq!(
            s.signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_secret_signs_the_current_first() {
        let s = Signer::from_keys([vec![1u8; 32], vec![2u8; 32]]);
        let sig = s.signature("id", 1, b"{}");
        let parts: Vec<_> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            Signer::from_keys([vec![1u8; 32]]).signature("id", 1, b"{}")
        );
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        // Any change to the id, the time or the body changes every signature.
        assert_ne!(s.signature("id2", 1, b"{}"), sig);
        assert_ne!(s.signature("id", 2, b"{}"), sig);
        assert_ne!(s.signature("id", 1, b"{ }"), sig);
        assert_eq!(format!("{s:?}"), "Signer(2 keys)");
    }

    #[test]
    fn the_envelope_keeps_facts_and_moves_the_type_and_time_out() {
        let e = Envelope::of(&serde_json::json!({
            "type": "user.created", "id": "e1", "at": "2026-11-30T00:00:00.000Z",
            "env": "test", "user_id": "usr_1"
        }))
        .unwrap();
        assert_eq!(e.id, "e1");
        assert_eq!(e.kind, "user.created");
        let body: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "user.created", "timestamp": "2026-11-30T00:00:00.000Z",
                "data": {"id": "e1", "env": "test", "user_id": "usr_1"}
            })
        );
        assert_eq!(Envelope::of(&serde_json::json!({"id": "x"})), None);
        assert_eq!(Envelope::of(&serde_json::json!("x")), None);
    }
}
