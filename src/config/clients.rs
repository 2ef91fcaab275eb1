//! `[[clients]]`: the callers — each known by an API key (its SHA-256 only) or by its mesh
//! identity (a SPIFFE ID its sidecar vouches for) — and their scopes.

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

/// A set of scopes, small enough to copy into every call's [`crate::caller::Caller`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn of<'a>(scopes: impl IntoIterator<Item = &'a Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |bits, s| bits | 1 << *s as u8))
    }

    pub const fn one(scope: Scope) -> Self {
        Self(1 << scope as u8)
    }

    /// This set and `scope` (for "either scope will do").
    pub const fn or(self, scope: Scope) -> Self {
        Self(self.0 | 1 << scope as u8)
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & 1 << scope as u8 != 0
    }

    /// Whether the sets share a scope: a caller holding `self` may make a call that needs any
    /// of `other`.
    pub fn meets(self, other: Scopes) -> bool {
        self.0 & other.0 != 0
    }

    /// The scopes in the set, by name: "`revoke` or `admin`".
    pub fn describe(self) -> String {
        ALL_SCOPES
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| format!("`{}`", s.as_str()))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

impl From<Scope> for Scopes {
    fn from(s: Scope) -> Self {
        Scopes::one(s)
    }
}

const ALL_SCOPES: [Scope; 6] = [
    Scope::Validate,
    Scope::Migrate,
    Scope::Flow,
    Scope::Issue,
    Scope::Revoke,
    Scope::Admin,
];

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
    pub key_sha256: Option<[u8; 32]>,
    /// Or the caller's SPIFFE ID (`spiffe://<trust domain>/ns/<namespace>/sa/<account>`),
    /// for a mesh proxy that cannot send a key (Istio's ext_authz provider).
    pub spiffe_id: Option<String>,
    pub scopes: BTreeSet<Scope>,
    /// Route settings for this caller's edge checks that carry none of their own.
    pub edge: Option<super::edge::ClientRoute>,
}

fn hex_serialize<S: serde::Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&hex::encode(v)),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    name: String,
    key_sha256: Option<String>,
    spiffe_id: Option<String>,
    scopes: Vec<Scope>,
    edge: Option<super::edge::ClientRoute>,
}

/// A file of `[[clients]]` only (`clients_file`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientsFile {
    #[serde(default)]
    clients: Vec<RawClient>,
}

/// The config file's callers and those of `clients_file`, checked as one list (a name, key or
/// SPIFFE ID used in both is refused), each problem reported against the file it is in.
pub(super) fn build(
    c: &mut Check,
    raw: Vec<RawClient>,
    file: Option<&std::path::Path>,
) -> Vec<ClientConfig> {
    let mut seen = Seen::default();
    let mut clients = add(c, &mut seen, raw);
    let Some(path) = file else {
        return clients;
    };
    let origin = path.display().to_string();
    let more = std::fs::read_to_string(path)
        .map_err(|e| {
            super::ConfigError::one(
                &c.origin,
                "clients_file",
                format!("cannot read `{origin}`: {e}"),
            )
        })
        .and_then(|text| super::parse_toml::<RawClientsFile>(&origin, &text));
    match more {
        Ok(more) => {
            // The file's own entries are reported against it, by their place in it.
            let config = std::mem::replace(&mut c.origin, origin);
            clients.extend(add(c, &mut seen, more.clients));
            c.origin = config;
        }
        Err(e) => c.problems.extend(e.problems),
    }
    clients
}

/// What the callers checked so far use, which no other may.
#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    hashes: BTreeSet<[u8; 32]>,
    spiffe_ids: BTreeSet<String>,
}

/// Checks one file's `[[clients]]` against each other and those `seen` before.
fn add(c: &mut Check, seen: &mut Seen, raw: Vec<RawClient>) -> Vec<ClientConfig> {
    let mut clients = Vec::new();
    for (i, cl) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("clients[{i}].{f}");
        if cl.name.is_empty() {
            c.fail(k("name"), "must not be empty");
        } else if !seen.names.insert(cl.name.clone()) {
            c.fail(k("name"), format!("`{}` is used twice", cl.name));
        }
        let mut key = None;
        match (&cl.key_sha256, &cl.spiffe_id) {
            (Some(hash), None) => {
                let mut h = [0u8; 32];
                if hex::decode_to_slice(hash.trim(), &mut h).is_err() {
                    c.fail(k("key_sha256"), "must be 64 hex characters: the SHA-256 of the API key (`sessiongate apikey` makes one)");
                } else if !seen.hashes.insert(h) {
                    c.fail(k("key_sha256"), "the same key is configured twice");
                }
                key = Some(h);
            }
            (None, Some(id)) => {
                // What an XFCC `URI=` value can be, unquoted: no separators, no spaces.
                if !id.starts_with("spiffe://")
                    || id.len() > 2048
                    || id
                        .bytes()
                        .any(|b| !b.is_ascii_graphic() || b",;\"\\".contains(&b))
                {
                    c.fail(k("spiffe_id"), "must be a SPIFFE ID: spiffe://<trust domain>/ns/<namespace>/sa/<service account>");
                } else if !seen.spiffe_ids.insert(id.clone()) {
                    c.fail(k("spiffe_id"), "the same SPIFFE ID is configured twice");
                }
            }
            _ => c.fail(
                k("key_sha256"),
                "set exactly one of key_sha256 (an API key's hash) and spiffe_id (a mesh identity)",
            ),
        }
        if cl.scopes.is_empty() {
            c.fail(
                k("scopes"),
                "needs at least one scope: validate, migrate, flow, issue, revoke or admin",
            );
        }
        let scopes: BTreeSet<Scope> = cl.scopes.into_iter().collect();
        if let Some(route) = &cl.edge {
            super::edge::client_route(c, &k("edge"), route, scopes.contains(&Scope::Migrate));
        }
        clients.push(ClientConfig {
            name: cl.name,
            key_sha256: key,
            spiffe_id: cl.spiffe_id,
            scopes,
            edge: cl.edge,
        });
    }

    clients
}
