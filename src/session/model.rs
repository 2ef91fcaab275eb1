//! Domain types of native sessions and users, their stored form, and how a secret prints.
//!
//! Records are stored as compact JSON (short field names: every byte is paid per session in
//! Redis). Times are Unix milliseconds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How the user proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuthFactor {
    #[serde(rename = "t")]
    pub kind: String,
    #[serde(rename = "d", default, skip_serializing_if = "String::is_empty")]
    pub delivery: String,
    #[serde(rename = "at", default, skip_serializing_if = "Option::is_none")]
    pub last_authenticated_at_ms: Option<i64>,
    /// The Authentication Context Class Reference the authentication satisfied (OpenID
    /// Connect `acr`), when the one who authenticated the user said.
    #[serde(rename = "acr", default, skip_serializing_if = "String::is_empty")]
    pub acr: String,
}

/// The end user's client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClientInfo {
    #[serde(rename = "ip", default, skip_serializing_if = "String::is_empty")]
    pub ip_address: String,
    #[serde(rename = "ua", default, skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
}

/// A native session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "sid")]
    pub session_id: String,
    #[serde(rename = "uid")]
    pub user_id: String,
    #[serde(rename = "st")]
    pub started_at_ms: i64,
    #[serde(rename = "la")]
    pub last_accessed_at_ms: i64,
    #[serde(rename = "ex")]
    pub expires_at_ms: i64,
    #[serde(rename = "f", default, skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<AuthFactor>,
    #[serde(rename = "a", default)]
    pub attributes: ClientInfo,
    #[serde(rename = "c", default, skip_serializing_if = "Map::is_empty")]
    pub custom_claims: Map<String, Value>,
}

/// The factor MigrateSession puts first in every session it mints; CreateSession refuses it,
/// so that it tells how a session began.
pub const MIGRATION_FACTOR: &str = "legacy_migration";

impl Session {
    /// How the session began: `"migration"` (MigrateSession) or `"native"` (CreateSession).
    pub fn created_via(&self) -> &'static str {
        match self.factors.first() {
            Some(f) if f.kind == MIGRATION_FACTOR => "migration",
            _ => "native",
        }
    }
}

/// A legacy provider's subject linked to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyIdentity {
    #[serde(rename = "p")]
    pub provider: String,
    #[serde(rename = "s")]
    pub subject: String,
    /// The provider's issuer when the link was made. Empty in links written before identities
    /// were keyed by issuer; those are matched by provider name (whose issuer is checked
    /// where the link is found).
    #[serde(rename = "is", default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
}

impl LegacyIdentity {
    /// Whether `self` and `other` are accounts of the same provider (by issuer, or by name
    /// for a link that predates issuers).
    pub fn same_provider(&self, other: &LegacyIdentity) -> bool {
        if self.issuer.is_empty() || other.issuer.is_empty() {
            self.provider == other.provider
        } else {
            self.issuer == other.issuer
        }
    }

    /// Whether `self` and `other` are the same account.
    pub fn same_account(&self, other: &LegacyIdentity) -> bool {
        self.same_provider(other) && self.subject == other.subject
    }
}

/// A sessiongate user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "uid")]
    pub user_id: String,
    #[serde(rename = "em", default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(rename = "ev", default)]
    pub email_verified: bool,
    #[serde(rename = "n", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "li", default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_identities: Vec<LegacyIdentity>,
    #[serde(rename = "ca")]
    pub created_at_ms: i64,
}

/// What is left of a revoked session until its original expiry: enough to answer REVOKED
/// (not NOT_FOUND) and to say whose it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    #[serde(rename = "sid")]
    pub session_id: String,
    #[serde(rename = "uid")]
    pub user_id: String,
    #[serde(rename = "ex")]
    pub expires_at_ms: i64,
    #[serde(rename = "rv")]
    pub revoked_at_ms: i64,
}

/// A record as stored.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, crate::error::Error> {
    serde_json::to_vec(v).map_err(crate::error::Error::internal)
}

/// A stored record, read back.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, crate::error::Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| crate::error::Error::internal(format!("stored record: {e}")))
}

/// Prints a secret as its length only: for the `Debug` of every type that holds a token, so
/// that a `{:?}` in a log line or a panic message can never print one.
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_matched_by_issuer_and_links_from_before_issuers_by_name() {
        let old: LegacyIdentity = serde_json::from_str(r#"{"p":"auth0","s":"u1"}"#).unwrap();
        assert_eq!(old.issuer, "");
        let now = |issuer: &str, sub: &str| LegacyIdentity {
            provider: "auth0".into(),
            subject: sub.into(),
            issuer: issuer.into(),
        };
        assert!(old.same_account(&now("https://a/", "u1")));
        assert!(!old.same_account(&now("https://a/", "u2")));
        assert!(now("https://a/", "u1").same_account(&now("https://a/", "u1")));
        // Same name, another issuer: another provider, whatever the subject.
        assert!(!now("https://a/", "u1").same_provider(&now("https://b/", "u1")));
        assert_eq!(
            serde_json::to_string(&now("https://a/", "u1")).unwrap(),
            r#"{"p":"auth0","s":"u1","is":"https://a/"}"#
        );
    }
}
