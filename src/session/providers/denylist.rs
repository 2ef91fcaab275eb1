//! The deny-list of provider tokens: `RevokeSession{legacy_token}` puts a token's ids in the
//! revoked set every replica keeps (the one native sids live in), and every verdict on a
//! provider token — cached or not — and every migration checks it.

use serde_json::{Value, json};

use super::ProviderTokens;
use crate::error::{Error, ErrorReason};
use crate::session::revocation::RevokedSids;
use crate::session::token::{self, Jws, Shape};
use crate::session::verdict::Reason;
use crate::store::Write;
use crate::store::event;
use crate::store::keys::Digest;

/// A provider token revoked by [`ProviderTokens::revoke`].
pub(crate) struct RevokedToken {
    /// The digest of the token as presented (what its UserInfo answer and a migration's
    /// replay record are keyed by).
    pub digest: Digest,
    /// The digest of what its signature covers (what the sessions migrated from it are
    /// indexed by).
    pub signed: Digest,
    /// Whether it was deny-listed now (false: it had expired already).
    pub denied: bool,
}

/// The deny-list ids of a provider token: by `(iss, jti)` when it has a `jti`, and always by
/// `signed`, the digest of what the signature covers — a JWT's `header.payload`, an opaque
/// token whole. Never by a JWT's full bytes: an ECDSA signature `(r, s)` has a twin `(r, n−s)`
/// that verifies as well, and a deny-list keyed by the whole token would let the twin through.
/// `signed` also keys the index of the sessions migrated from the token.
/// (Boxed strings: a cached provider token keeps its ids, so that a hit hashes nothing.)
pub(crate) struct LegacyIds {
    pub signed: Digest,
    by_jti: Option<Box<str>>,
    by_signed: Box<str>,
    /// The login keys a back-channel logout revokes the token by (its user, its OP session),
    /// and when it was issued: a logout revokes what was issued up to it.
    logins: Vec<Box<str>>,
    issued_at: i64,
}

impl LegacyIds {
    pub fn new(iss: &str, jti: Option<&str>, signed: Digest) -> Self {
        Self {
            by_jti: jti.map(|j| {
                format!(
                    "lt:{}",
                    Digest::of(format!("{iss}\0{j}").as_bytes()).to_hex()
                )
                .into_boxed_str()
            }),
            by_signed: format!("lt:{}", signed.to_hex()).into_boxed_str(),
            signed,
            logins: Vec::new(),
            issued_at: 0,
        }
    }

    /// These ids, and the token's login: `sub` and `sid` at `iss`, issued at `issued_at`
    /// (Unix seconds), so that a back-channel logout of either revokes it.
    pub fn with_login(
        mut self,
        iss: &str,
        sub: Option<&str>,
        sid: Option<&str>,
        issued_at: i64,
    ) -> Self {
        self.logins = [("sub", sub), ("sid", sid)]
            .into_iter()
            .filter_map(|(kind, v)| {
                Some(RevokedSids::login_key(
                    iss,
                    kind,
                    v.filter(|v| !v.is_empty())?,
                ))
            })
            .map(String::into_boxed_str)
            .collect();
        self.issued_at = issued_at;
        self
    }

    /// The ids of a verified JWT's claims.
    pub fn of_claims(
        iss: &str,
        claims: &serde_json::Map<String, Value>,
        signed: Digest,
        now: i64,
    ) -> Self {
        let str_of = |k: &str| claims.get(k).and_then(Value::as_str);
        // A token without `iat` counts as issued when it is first judged.
        let iat = claims
            .get("iat")
            .and_then(crate::session::token::numeric_date)
            .unwrap_or(now);
        Self::new(iss, str_of("jti"), signed).with_login(iss, str_of("sub"), str_of("sid"), iat)
    }

    /// The ids of `token` as presented, read unverified (a deny-list hit only ever refuses;
    /// a JWT that verifies later has the same `jti`).
    pub fn of_token(iss: &str, token: &str) -> Self {
        match token::classify(token) {
            Ok(Shape::Jws(jws)) => match token::payload(&jws) {
                Ok(claims) => Self::of_claims(iss, &claims, signed_digest(&jws), i64::MAX),
                Err(_) => Self::new(iss, None, signed_digest(&jws)),
            },
            _ => Self::new("", None, Digest::of(token.as_bytes())),
        }
    }

    /// Every id the token is denied by.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.by_jti.as_deref().into_iter().chain([&*self.by_signed])
    }
}

/// What a JWT's deny-list entry is keyed by: the digest of its signing input.
pub(crate) fn signed_digest(jws: &Jws<'_>) -> Digest {
    Digest::of(jws.signing_input.as_bytes())
}

impl ProviderTokens {
    /// Whether a provider token is on the deny-list: the in-process revoked set that every
    /// replica keeps, fed like the revoked sids.
    pub(crate) fn denied(&self, ids: &LegacyIds) -> bool {
        ids.all().any(|id| self.revoked.contains(id))
            || ids
                .logins
                .iter()
                .any(|k| self.revoked.logged_out(k, ids.issued_at))
    }

    /// Deny-lists a provider's token until it expires (JWT) or for the provider's maximum
    /// token lifetime (opaque). Only a token that verifies (or an opaque one the legacy
    /// provider would be asked about) is accepted, so the set holds nothing arbitrary.
    pub(crate) async fn revoke(&self, token: &str) -> Result<RevokedToken, Error> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let not_ours = |why: &str| {
            Error::invalid_argument(
                ErrorReason::NotAProviderToken,
                format!("legacy_token is not a valid token of a configured provider ({why})"),
            )
        };
        if token.is_empty() || token.len() > self.max_token_bytes {
            return Err(not_ours("empty or too large"));
        }
        let digest = Digest::of(token.as_bytes());
        let (ids, until) = match token::classify(token) {
            Ok(Shape::Jws(jws)) => {
                let header = token::header(&jws).map_err(|r| not_ours(r.as_str()))?;
                let claims = token::payload(&jws).map_err(|r| not_ours(r.as_str()))?;
                let iss = claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let provider = self
                    .providers
                    .by_issuer(&iss)
                    .cloned()
                    .ok_or_else(|| not_ours("unknown issuer"))?;
                let jwt = match provider.verify(&jws, &header, claims, now).await {
                    Ok(jwt) => jwt,
                    // Already expired (the signature checked out): nothing left to deny,
                    // but the sessions migrated from it live on until revoked.
                    Err(Ok(Reason::Expired)) => {
                        return Ok(RevokedToken {
                            digest,
                            signed: signed_digest(&jws),
                            denied: false,
                        });
                    }
                    Err(Ok(r)) => return Err(not_ours(r.as_str())),
                    Err(Err(e)) => return Err(e),
                };
                let jti = jwt.claims.get("jti").and_then(Value::as_str);
                (
                    LegacyIds::new(&iss, jti, signed_digest(&jws)),
                    jwt.expires_at.unwrap_or(now) + self.leeway_secs,
                )
            }
            Ok(Shape::Other) if token::upstream_safe(token) => {
                let provider = self
                    .providers
                    .opaque()
                    .cloned()
                    .ok_or_else(|| not_ours("no provider takes opaque tokens"))?;
                (
                    LegacyIds::new("", None, digest),
                    now + provider.config.max_token_lifetime.as_secs() as i64,
                )
            }
            _ => return Err(not_ours("not a provider token")),
        };
        let mut writes: Vec<Write> = ids
            .all()
            .map(|id| RevokedSids::write(&self.keys, id, until, now))
            .collect();
        // A cached UserInfo answer must not outlive the revocation.
        writes.push(Write::Delete {
            key: self.keys.userinfo(&digest),
        });
        writes.push(event(
            self.env,
            now_ms,
            "legacy_token.revoked",
            json!({"token_fingerprint": digest.fingerprint()}),
        ));
        self.store.write(writes).await?;
        for id in ids.all() {
            self.revoked
                .announce(&*self.store, id, until, now_ms)
                .await?;
        }
        metrics::counter!("sessiongate_legacy_tokens_revoked_total").increment(1);
        Ok(RevokedToken {
            digest,
            signed: ids.signed,
            denied: true,
        })
    }
}
