//! Caller authentication: API keys with scopes.
//!
//! Callers send `authorization: Bearer <key>`. Only SHA-256 hashes of keys are configured, so
//! a leaked config file leaks no key. Each key carries scopes, one per RPC family. A caller
//! that cannot send a key — a mesh proxy asking Envoy's Check — may instead be configured by
//! its SPIFFE ID, which sessiongate's own sidecar vouches for ([`xfcc`]). In `test`
//! with no keys configured the service runs open for the read-mostly RPCs (with a warning at
//! start); minting sessions (`issue`), revoking them (`revoke`) and rollout administration
//! (`admin`) are never open, and `live` refuses to start without keys at all (see `config`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::caller::Caller;
use crate::config::{ClientConfig, Scopes};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::store::keys::Digest;

mod xfcc;

/// The header in which a sidecar in front of sessiongate names the caller it verified.
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// `caller` for a call that needs one of `need`, if it holds it.
fn allow(caller: &Caller, need: Scopes) -> Result<Caller, Error> {
    caller.require(need, "this call")?;
    Ok(caller.clone())
}

/// The configured callers.
pub struct CallerKeys {
    by_hash: HashMap<[u8; 32], Caller>,
    by_spiffe_id: HashMap<String, Caller>,
}

impl CallerKeys {
    pub fn new(clients: &[ClientConfig]) -> Self {
        let client = |c: &ClientConfig| Caller {
            name: Arc::from(c.name.as_str()),
            authenticated: true,
            scopes: Scopes::of(&c.scopes),
            edge_route: c.edge.clone().map(Arc::new),
        };
        Self {
            by_hash: clients
                .iter()
                .filter_map(|c| Some((c.key_sha256?, client(c))))
                .collect(),
            by_spiffe_id: clients
                .iter()
                .filter_map(|c| Some((c.spiffe_id.clone()?, client(c))))
                .collect(),
        }
    }

    /// Open mode: no callers configured (only possible in `test`).
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty() && self.by_spiffe_id.is_empty()
    }

    /// Checks a call against `scope`: its `authorization` key, else — when callers are
    /// configured by mesh identity — the SPIFFE ID in the last element of
    /// `x-forwarded-client-cert`, which sessiongate's sidecar appended after verifying the
    /// caller's certificate.
    pub fn authorize_call(
        &self,
        authorization: Option<&[u8]>,
        forwarded_cert: Option<&[u8]>,
        need: impl Into<Scopes>,
    ) -> Result<Caller, Error> {
        let need = need.into();
        if authorization.is_none()
            && !self.by_spiffe_id.is_empty()
            && let Some(id) = forwarded_cert.and_then(xfcc::peer_spiffe_id)
        {
            return match self.by_spiffe_id.get(id) {
                Some(client) => allow(client, need),
                None => Err(unauthenticated(
                    "the caller's mesh identity is not a configured client (spiffe_id)",
                )),
            };
        }
        self.authorize(authorization, need)
    }

    /// Checks the `authorization` header value (if any) against `scope`.
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        need: impl Into<Scopes>,
    ) -> Result<Caller, Error> {
        let need = need.into();
        match authorization {
            None => self.authorize_key(None, need),
            Some(header) => {
                let key = bearer(header)
                    .ok_or_else(|| unauthenticated("`authorization` must be `Bearer <key>`"))?;
                self.authorize_key(Some(key), need)
            }
        }
    }

    /// Checks a bare API key (if any) against `scope`: for callers that cannot send it in
    /// `authorization` (a forward-auth proxy passes the user's own there).
    pub fn authorize_key(
        &self,
        key: Option<&[u8]>,
        need: impl Into<Scopes>,
    ) -> Result<Caller, Error> {
        let need = need.into();
        let Some(key) = key else {
            if self.is_open() {
                let anonymous = Caller::anonymous();
                return if anonymous.scopes.meets(need) {
                    Ok(anonymous)
                } else {
                    Err(Error::new(
                        ErrorCode::Unauthenticated,
                        ErrorReason::CallerUnauthenticated,
                        format!(
                            "scope {} is never open: configure a [[clients]] key with that scope and call with `authorization: Bearer <key>`",
                            need.describe()
                        ),
                    ))
                };
            }
            return Err(unauthenticated("missing `authorization: Bearer <key>`"));
        };
        // Looking the hash up leaks, through timing, at most something about the *hash* of
        // the presented key, which does not help to guess a valid key.
        self.by_hash
            .get(Digest::of(key).as_bytes())
            .map(|client| allow(client, need))
            .unwrap_or_else(|| Err(unauthenticated("unknown API key")))
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

/// [`bearer`] of a header already known to be text, without checking its UTF-8 again (at
/// the edge the header is the size of the token, and it was checked as it was decoded).
pub(crate) fn bearer_str(header: &str) -> Option<&str> {
    let key = bearer(header.as_bytes())?;
    // `key` lies inside `header`, cut only next to ASCII bytes (the scheme, spaces): the same
    // range of the `str` is on character boundaries, which `get` checks anyway.
    let start = key.as_ptr() as usize - header.as_ptr() as usize;
    header.get(start..start + key.len())
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
    use crate::caller::OPEN_SCOPES;
    use crate::config::Scope;
    use std::collections::BTreeSet;

    fn keys() -> (CallerKeys, String) {
        let (key, hash) = new_api_key();
        let mut h = [0u8; 32];
        hex::decode_to_slice(hash, &mut h).unwrap();
        let keys = CallerKeys::new(&[ClientConfig {
            name: "checkout".into(),
            key_sha256: Some(h),
            spiffe_id: None,
            scopes: BTreeSet::from([Scope::Validate]),
            edge: None,
        }]);
        (keys, key)
    }

    #[test]
    fn bearer_str_cuts_what_bearer_cuts() {
        for h in [
            "Bearer abc",
            "bearer  abc ",
            "BEARER\tx",
            "Bearer ",
            "Bearer",
            "Basic dTpw",
            "Bearer \u{fc}n\u{ef} ",
            "B\u{eb}arer x",
            "\u{1F600}\u{1F600}",
            "",
        ] {
            let bytes = bearer(h.as_bytes()).map(|k| std::str::from_utf8(k).unwrap());
            assert_eq!(bearer_str(h), bytes, "{h:?}");
        }
        assert_eq!(bearer_str("Bearer \u{fc}n\u{ef} "), Some("\u{fc}n\u{ef}"));
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

    #[test]
    fn a_mesh_identity_is_a_caller_only_when_configured_and_only_without_a_key() {
        let (key, hash) = new_api_key();
        let mut h = [0u8; 32];
        hex::decode_to_slice(hash, &mut h).unwrap();
        let gateway = "spiffe://cluster.local/ns/istio-system/sa/ingress";
        let callers = CallerKeys::new(&[
            ClientConfig {
                name: "checkout".into(),
                key_sha256: Some(h),
                spiffe_id: None,
                scopes: BTreeSet::from([Scope::Validate, Scope::Issue]),
                edge: None,
            },
            ClientConfig {
                name: "ingress".into(),
                key_sha256: None,
                spiffe_id: Some(gateway.into()),
                scopes: BTreeSet::from([Scope::Validate]),
                edge: None,
            },
        ]);
        let xfcc = format!("By=spiffe://cluster.local/ns/sg/sa/sessiongate;Hash=ab;URI={gateway}");
        let c = callers
            .authorize_call(None, Some(xfcc.as_bytes()), Scope::Validate)
            .unwrap();
        assert_eq!(&*c.name, "ingress");
        // Its scopes only.
        let e = callers
            .authorize_call(None, Some(xfcc.as_bytes()), Scope::Issue)
            .unwrap_err();
        assert_eq!(e.reason, ErrorReason::ScopeMissing);
        // Another workload's identity, or a forged element before the sidecar's: refused.
        let other = "By=x;URI=spiffe://cluster.local/ns/prod/sa/batch";
        let e = callers
            .authorize_call(None, Some(other.as_bytes()), Scope::Validate)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated);
        let forged = format!("URI={gateway},By=x;URI=spiffe://cluster.local/ns/prod/sa/batch");
        assert!(
            callers
                .authorize_call(None, Some(forged.as_bytes()), Scope::Validate)
                .is_err()
        );
        // A key, when sent, is what counts.
        let c = callers
            .authorize_call(
                Some(format!("Bearer {key}").as_bytes()),
                Some(xfcc.as_bytes()),
                Scope::Issue,
            )
            .unwrap();
        assert_eq!(&*c.name, "checkout");
        // Without mesh clients, XFCC means nothing.
        let (only_keys, _) = keys();
        assert!(
            only_keys
                .authorize_call(None, Some(xfcc.as_bytes()), Scope::Validate)
                .is_err()
        );
    }
}
