//! `[[clients]]`: the callers' API keys (their SHA-256 only) and scopes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Check;

/// The scopes a caller key can hold, one per RPC family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Validate,
    Migrate,
    Flow,
    Issue,
    Revoke,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Validate => "validate",
            Scope::Migrate => "migrate",
            Scope::Flow => "flow",
            Scope::Issue => "issue",
            Scope::Revoke => "revoke",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientConfig {
    pub name: String,
    /// SHA-256 of the API key; the key itself is never configured.
    #[serde(serialize_with = "hex_serialize")]
    pub key_sha256: [u8; 32],
    pub scopes: BTreeSet<Scope>,
}

fn hex_serialize<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    name: String,
    key_sha256: String,
    scopes: Vec<Scope>,
}

pub(super) fn build(c: &mut Check, raw: Vec<RawClient>) -> Vec<ClientConfig> {
    let mut clients = Vec::new();
    let mut client_names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, cl) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("clients[{i}].{f}");
        if cl.name.is_empty() {
            c.fail(k("name"), "must not be empty");
        } else if !client_names.insert(cl.name.clone()) {
            c.fail(k("name"), format!("`{}` is used twice", cl.name));
        }
        let mut key = [0u8; 32];
        if hex::decode_to_slice(cl.key_sha256.trim(), &mut key).is_err() {
            c.fail(k("key_sha256"), "must be 64 hex characters: the SHA-256 of the API key (`sessiongate apikey` makes one)");
        } else if !hashes.insert(key) {
            c.fail(k("key_sha256"), "the same key is configured twice");
        }
        if cl.scopes.is_empty() {
            c.fail(
                k("scopes"),
                "needs at least one scope: validate, migrate, flow, issue, revoke or admin",
            );
        }
        clients.push(ClientConfig {
            name: cl.name,
            key_sha256: key,
            scopes: cl.scopes.into_iter().collect(),
        });
    }

    clients
}
