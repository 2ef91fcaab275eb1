//! Caller authentication: API keys with scopes.
//!
//! Callers send `authorization: Bearer <key>`. Only SHA-256 hashes of keys are configured, so
//! a leaked config file leaks no key. Each key carries scopes, one per RPC family. In `test`
//! with no keys configured the service runs open for the read-mostly RPCs (with a warning at
//! start); minting sessions (`issue`), revoking them (`revoke`) and rollout administration
//! (`admin`) are never open, and `live` refuses to start without keys at all (see `config`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::caller::Caller;
use crate::config::{ClientConfig, Scope};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::store::keys::Digest;

/// Scopes that an anonymous caller holds in open mode.
/// Never `revoke`: in open mode anyone could log anyone out (a session id or a user's legacy
/// token is no secret to every service that sees them).
const OPEN_SCOPES: [Scope; 3] = [Scope::Validate, Scope::Migrate, Scope::Flow];

struct Client {
    caller: Caller,
    scopes: BTreeSet<Scope>,
}

/// The configured caller keys.
pub struct CallerKeys {
    by_hash: HashMap<[u8; 32], Client>,
}

impl CallerKeys {
    pub fn new(clients: &[ClientConfig]) -> Self {
        let by_hash = clients
            .iter()
            .map(|c| {
                (
                    c.key_sha256,
                    Client {
                        caller: Caller {
                            name: Arc::from(c.name.as_str()),
                            authenticated: true,
                            can_issue: c.scopes.contains(&Scope::Issue),
                            can_migrate: c.scopes.contains(&Scope::Migrate),
                            can_resolve_flow: c.scopes.contains(&Scope::Flow),
                        },
                        scopes: c.scopes.clone(),
                    },
                )
            })
            .collect();
        Self { by_hash }
    }

    /// Open mode: no keys configured (only possible in `test`).
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Checks the `authorization` header value (if any) against `scope`.
    pub fn authorize(&self, authorization: Option<&[u8]>, scope: Scope) -> Result<Caller, Error> {
        match authorization {
            None => self.authorize_key(None, scope),
            Some(header) => {
                let key = bearer(header)
                    .ok_or_else(|| unauthenticated("`authorization` must be `Bearer <key>`"))?;
                self.authorize_key(Some(key), scope)
            }
        }
    }

    /// Checks a bare API key (if any) against `scope`: for callers that cannot send it in
    /// `authorization` (a forward-auth proxy passes the user's own there).
    pub fn authorize_key(&self, key: Option<&[u8]>, scope: Scope) -> Result<Caller, Error> {
        let Some(key) = key else {
            if self.is_open() {
                return if OPEN_SCOPES.contains(&scope) {
                    Ok(Caller::anonymous())
                } else {
                    Err(Error::new(
                        ErrorCode::Unauthenticated,
                        ErrorReason::CallerUnauthenticated,
                        format!(
                            "scope `{}` is never open: configure a [[clients]] key with that scope and call with `authorization: Bearer <key>`",
                            scope.as_str()
                        ),
                    ))
                };
            }
            return Err(unauthenticated("missing `authorization: Bearer <key>`"));
        };
        // Looking the hash up leaks, through timing, at most something about the *hash* of
        // the presented key, which does not help to guess a valid key.
        let client = self
            .by_hash
            .get(Digest::of(key).as_bytes())
            .ok_or_else(|| unauthenticated("unknown API key"))?;
        if client.scopes.contains(&scope) {
            Ok(client.caller.clone())
        } else {
            Err(Error::new(
                ErrorCode::PermissionDenied,
                ErrorReason::ScopeMissing,
                format!(
                    "client `{}` lacks scope `{}` for this call",
                    client.caller.name,
                    scope.as_str()
                ),
            ))
        }
    }
}

fn unauthenticated(msg: &str) -> Error {
    Error::new(
        ErrorCode::Unauthenticated,
        ErrorReason::CallerUnauthenticated,
        msg,
    )
}

/// The credential of `Bearer <credential>` (scheme case-insensitive, RFC 7235), if not empty.
pub(crate) fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// A new random API key (256 bits, URL-safe) and the SHA-256 hex to configure for it.
pub fn new_api_key() -> (String, String) {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "sgk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = Digest::of(key.as_bytes()).to_hex();
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (CallerKeys, String) {
        let (key, hash) = new_api_key();
        let mut h = [0u8; 32];
        hex::decode_to_slice(hash, &mut h).unwrap();
        let keys = CallerKeys::new(&[ClientConfig {
            name: "checkout".into(),
            key_sha256: h,
            scopes: BTreeSet::from([Scope::Validate]),
        }]);
        (keys, key)
    }

    #[test]
    fn bearer_key_with_scope_passes() {
        let (keys, key) = keys();
        let caller = keys
            .authorize(Some(format!("Bearer {key}").as_bytes()), Scope::Validate)
            .unwrap();
        assert_eq!(&*caller.name, "checkout");
        assert!(caller.authenticated);
        // The scheme is case-insensitive (RFC 9110).
        assert!(
            keys.authorize(Some(format!("bearer {key}").as_bytes()), Scope::Validate)
                .is_ok()
        );
    }

    #[test]
    fn wrong_scope_missing_or_bad_key_are_refused() {
        let (keys, key) = keys();
        let e = keys
            .authorize(Some(format!("Bearer {key}").as_bytes()), Scope::Admin)
            .unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_str()),
            (ErrorCode::PermissionDenied, "SCOPE_MISSING")
        );
        for h in [
            None,
            Some(&b"Bearer nope"[..]),
            Some(b"Basic abc"),
            Some(b"Bearer "),
        ] {
            let e = keys.authorize(h, Scope::Validate).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthenticated, "{h:?}");
            assert_eq!(e.reason, ErrorReason::CallerUnauthenticated);
        }
        // Never echo the presented key.
        let e = keys
            .authorize(Some(b"Bearer secret-123"), Scope::Validate)
            .unwrap_err();
        assert!(!e.message.contains("secret-123"));
    }

    #[test]
    fn open_mode_never_opens_issue_revoke_or_admin() {
        let keys = CallerKeys::new(&[]);
        assert!(keys.is_open());
        for s in OPEN_SCOPES {
            assert!(!keys.authorize(None, s).unwrap().authenticated);
        }
        for s in [Scope::Issue, Scope::Revoke, Scope::Admin] {
            assert_eq!(
                keys.authorize(None, s).unwrap_err().code,
                ErrorCode::Unauthenticated
            );
        }
        assert!(
            Caller::anonymous()
                .require_authenticated("RevokeSession by user")
                .is_err()
        );
    }
}
