//! A native session's stored form: a compact binary record, read alongside the JSON records
//! earlier versions wrote.
//!
//! Every live session is one record in Redis, so its bytes are paid per session. The record
//! is a protobuf message (prost: the schema can grow field by field, and an older reader
//! skips fields it does not know) behind a one-byte version, with our own ids stored as
//! their 16 UUID bytes and the client's IP address as 4 or 16 bytes. A JSON record starts
//! with `{`, which no binary record does, so both are read — a session written before the
//! upgrade stays valid. Which format is *written* is `redis.session_format`: a rolling
//! upgrade from a version that cannot read binary records first deploys with `json`.

use std::net::IpAddr;

use prost::Message as _;
use serde_json::{Map, Value};

use super::model::{AuthFactor, ClientInfo, Session};
use crate::config::{Env, SessionFormat};
use crate::error::Error;
use crate::ids::{self, IdKind};

/// The first byte of a binary record.
const BINARY_V1: u8 = 1;

/// Encodes `session` in `format`; ids minted in `env` are stored as their UUID alone.
pub(crate) fn encode(session: &Session, env: Env, format: SessionFormat) -> Result<Vec<u8>, Error> {
    match format {
        SessionFormat::Json => super::model::encode(session),
        SessionFormat::Binary => {
            let record = SessionRecord::of(session, env)?;
            let mut out = Vec::with_capacity(1 + record.encoded_len());
            out.push(BINARY_V1);
            record
                .encode(&mut out)
                .map_err(|e| Error::internal(format!("session record: {e}")))?;
            Ok(out)
        }
    }
}

/// Reads a record in either format.
pub(crate) fn decode(bytes: &[u8], env: Env) -> Result<Session, Error> {
    match bytes.split_first() {
        Some((b'{', _)) => super::model::decode(bytes),
        Some((&BINARY_V1, rest)) => SessionRecord::decode(rest)
            .map_err(|e| Error::internal(format!("stored session record: {e}")))?
            .session(env),
        Some((v, _)) => Err(Error::internal(format!(
            "stored session record: unknown format {v:#04x} (written by a newer version?)"
        ))),
        None => Err(Error::internal("stored session record: empty")),
    }
}

/// The binary record. Field numbers are the format: never reuse or renumber one.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionRecord {
    /// The session id's UUID when the id is `session-<env>-<uuid>`…
    #[prost(bytes = "vec", tag = "1")]
    session_uuid: Vec<u8>,
    /// …and the whole id otherwise.
    #[prost(string, tag = "2")]
    session_id: String,
    #[prost(bytes = "vec", tag = "3")]
    user_uuid: Vec<u8>,
    #[prost(string, tag = "4")]
    user_id: String,
    #[prost(int64, tag = "5")]
    started_at_ms: i64,
    #[prost(int64, tag = "6")]
    last_accessed_at_ms: i64,
    #[prost(int64, tag = "7")]
    expires_at_ms: i64,
    #[prost(message, repeated, tag = "8")]
    factors: Vec<FactorRecord>,
    /// 4 or 16 bytes when the address parses…
    #[prost(bytes = "vec", tag = "9")]
    ip: Vec<u8>,
    /// …as given otherwise.
    #[prost(string, tag = "10")]
    ip_text: String,
    #[prost(string, tag = "11")]
    user_agent: String,
    /// The custom claims as a JSON object; empty when there are none.
    #[prost(bytes = "vec", tag = "12")]
    custom_claims: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FactorRecord {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    delivery: String,
    #[prost(int64, optional, tag = "3")]
    last_authenticated_at_ms: Option<i64>,
    #[prost(string, tag = "4")]
    acr: String,
}

impl SessionRecord {
    fn of(s: &Session, env: Env) -> Result<Self, Error> {
        let (session_uuid, session_id) = split_id(IdKind::Session, env, &s.session_id);
        let (user_uuid, user_id) = split_id(IdKind::User, env, &s.user_id);
        let (ip, ip_text) = match s.attributes.ip_address.parse::<IpAddr>() {
            // Only when the address prints back exactly as given (`::ffff:1.2.3.4`, zero
            // padding and the like stay text), so that reading returns what was written.
            Ok(addr) if addr.to_string() == s.attributes.ip_address => (
                match addr {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                },
                String::new(),
            ),
            _ => (Vec::new(), s.attributes.ip_address.clone()),
        };
        Ok(Self {
            session_uuid,
            session_id,
            user_uuid,
            user_id,
            started_at_ms: s.started_at_ms,
            last_accessed_at_ms: s.last_accessed_at_ms,
            expires_at_ms: s.expires_at_ms,
            factors: s
                .factors
                .iter()
                .map(|f| FactorRecord {
                    kind: f.kind.clone(),
                    delivery: f.delivery.clone(),
                    last_authenticated_at_ms: f.last_authenticated_at_ms,
                    acr: f.acr.clone(),
                })
                .collect(),
            ip,
            ip_text,
            user_agent: s.attributes.user_agent.clone(),
            custom_claims: if s.custom_claims.is_empty() {
                Vec::new()
            } else {
                serde_json::to_vec(&s.custom_claims).map_err(Error::internal)?
            },
        })
    }

    fn session(self, env: Env) -> Result<Session, Error> {
        let ip_address = match self.ip.len() {
            0 => self.ip_text,
            4 => {
                IpAddr::from(<[u8; 4]>::try_from(self.ip.as_slice()).expect("4 bytes")).to_string()
            }
            16 => IpAddr::from(<[u8; 16]>::try_from(self.ip.as_slice()).expect("16 bytes"))
                .to_string(),
            n => return Err(corrupt(format_args!("an IP address of {n} bytes"))),
        };
        let custom_claims = if self.custom_claims.is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(&self.custom_claims) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(corrupt(format_args!(
                        "custom claims that are no JSON object"
                    )));
                }
            }
        };
        Ok(Session {
            session_id: join_id(IdKind::Session, env, &self.session_uuid, self.session_id)?,
            user_id: join_id(IdKind::User, env, &self.user_uuid, self.user_id)?,
            started_at_ms: self.started_at_ms,
            last_accessed_at_ms: self.last_accessed_at_ms,
            expires_at_ms: self.expires_at_ms,
            factors: self
                .factors
                .into_iter()
                .map(|f| AuthFactor {
                    kind: f.kind,
                    delivery: f.delivery,
                    last_authenticated_at_ms: f.last_authenticated_at_ms,
                    acr: f.acr,
                })
                .collect(),
            attributes: ClientInfo {
                ip_address,
                user_agent: self.user_agent,
            },
            custom_claims,
        })
    }
}

/// `(uuid bytes, "")` for an id of ours whose UUID prints back as written, `([], id)`
/// otherwise.
fn split_id(kind: IdKind, env: Env, id: &str) -> (Vec<u8>, String) {
    let prefix = ids::prefix(kind, env);
    if let Some(rest) = id.strip_prefix(&prefix)
        && let Ok(u) = uuid::Uuid::try_parse(rest)
        && u.hyphenated().to_string() == rest
    {
        return (u.as_bytes().to_vec(), String::new());
    }
    (Vec::new(), id.to_owned())
}

fn join_id(kind: IdKind, env: Env, uuid: &[u8], id: String) -> Result<String, Error> {
    match uuid.len() {
        0 => Ok(id),
        16 => Ok(format!(
            "{}{}",
            ids::prefix(kind, env),
            uuid::Uuid::from_slice(uuid).expect("16 bytes")
        )),
        n => Err(corrupt(format_args!("an id of {n} bytes"))),
    }
}

fn corrupt(what: std::fmt::Arguments<'_>) -> Error {
    Error::internal(format!("stored session record: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            session_id: ids::new(IdKind::Session, Env::Test),
            user_id: ids::new(IdKind::User, Env::Test),
            started_at_ms: 1_764_460_800_123,
            last_accessed_at_ms: 1_764_460_900_456,
            expires_at_ms: 1_764_547_200_789,
            factors: vec![
                AuthFactor {
                    kind: "passkey".into(),
                    ..Default::default()
                },
                AuthFactor {
                    kind: "otp".into(),
                    delivery: "email".into(),
                    last_authenticated_at_ms: Some(1_764_460_800_000),
                    acr: "urn:example:loa:2".into(),
                },
            ],
            attributes: ClientInfo {
                ip_address: "203.0.113.7".into(),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into(),
            },
            custom_claims: serde_json::json!({"tenant": "acme", "roles": ["a", "b"]})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn every_field_comes_back_in_both_formats() {
        let s = session();
        for format in [SessionFormat::Binary, SessionFormat::Json] {
            let bytes = encode(&s, Env::Test, format).unwrap();
            assert_eq!(decode(&bytes, Env::Test).unwrap(), s, "{format:?}");
        }
        let binary = encode(&s, Env::Test, SessionFormat::Binary).unwrap();
        let json = encode(&s, Env::Test, SessionFormat::Json).unwrap();
        // (The custom claims stay JSON in both.)
        assert!(
            binary.len() * 5 < json.len() * 3,
            "{} vs {}",
            binary.len(),
            json.len()
        );
    }

    #[test]
    fn what_does_not_compress_is_kept_as_written() {
        let mut s = session();
        // A migrated user's id from another env, an id whose UUID is upper case, addresses
        // that would not print back the same, no factors, no claims.
        s.user_id = "user-live-6f1c2a9e-0000-4000-8000-000000000001".into();
        s.session_id = "session-test-6F1C2A9E-0000-4000-8000-000000000001".into();
        s.factors.clear();
        s.custom_claims.clear();
        for ip in ["::ffff:1.2.3.4", "2001:db8::1", "", "unknown", "010.0.0.1"] {
            s.attributes.ip_address = ip.into();
            let bytes = encode(&s, Env::Test, SessionFormat::Binary).unwrap();
            assert_eq!(decode(&bytes, Env::Test).unwrap(), s, "{ip}");
        }
    }

    #[test]
    fn damaged_records_are_errors_not_sessions() {
        let good = encode(&session(), Env::Test, SessionFormat::Binary).unwrap();
        assert!(decode(&[], Env::Test).is_err());
        assert!(decode(&[7, 1, 2], Env::Test).is_err());
        // Every truncation either fails or decodes to something (never panics).
        for n in 0..good.len() {
            let _ = decode(&good[..n], Env::Test);
        }
        // An id field of the wrong length.
        let mut r = SessionRecord::of(&session(), Env::Test).unwrap();
        r.session_uuid.pop();
        let mut bytes = vec![BINARY_V1];
        r.encode(&mut bytes).unwrap();
        assert!(decode(&bytes, Env::Test).is_err());
        // Custom claims that are not an object.
        let mut r = SessionRecord::of(&session(), Env::Test).unwrap();
        r.custom_claims = b"[1]".to_vec();
        let mut bytes = vec![BINARY_V1];
        r.encode(&mut bytes).unwrap();
        assert!(decode(&bytes, Env::Test).is_err());
    }
}
