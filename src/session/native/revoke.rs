//! `RevokeSession` on the NEW side: a session by its id, token or JWT, or all of a user's.
//! A revocation deletes the record, leaves a tombstone (so that validation answers REVOKED,
//! not NOT_FOUND) and puts the sid in the revoked set every replica keeps, so that the
//! session's JWTs fail everywhere without a store round trip.

use serde_json::json;

use super::{Lookup, NativeSessions};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::session::claims::VerifiedJwt;
use crate::session::model::{Tombstone, decode, encode};
use crate::session::revocation::RevokedSids;
use crate::session::token::{self, Shape};
use crate::session::verdict::Reason;
use crate::store::event;
use crate::store::keys::Digest;
use crate::store::{Key, Write};

impl NativeSessions {
    /// Revokes the session `id`; returns 1, or 0 if it already was.
    pub async fn revoke_id(&self, id: &str) -> Result<u32, Error> {
        let d = self.digest_of(id).await?.ok_or_else(not_found)?;
        self.revoke_digest(&d, self.clock.now_ms()).await
    }

    /// Revokes the session of an opaque `session_token`.
    pub async fn revoke_token(&self, t: &str) -> Result<u32, Error> {
        if !matches!(token::classify(t), Ok(Shape::NativeOpaque)) {
            return Err(Error::invalid_argument(
                ErrorReason::NotASessionToken,
                "session_token must be a sessiongate session token (sgs_…)",
            ));
        }
        self.revoke_digest(&Digest::of(t.as_bytes()), self.clock.now_ms())
            .await
    }

    /// Revokes the session a `session_jwt` of ours names (expired or not).
    pub async fn revoke_jwt(&self, jwt: &str) -> Result<u32, Error> {
        let verified = self.verify_own_jwt(jwt).map_err(|r| {
            Error::invalid_argument(
                ErrorReason::NotASessionJwt,
                format!(
                    "session_jwt is not a valid session JWT of this deployment ({})",
                    r.as_str()
                ),
            )
        })?;
        self.revoke_id(verified.session_id()).await
    }

    /// Revokes every live session of `user_id` but `except` (which must be one of the
    /// user's: checked before anything is revoked); returns how many.
    pub async fn revoke_user(&self, user_id: &str, except: Option<&str>) -> Result<u32, Error> {
        let user = self.load_user(user_id).await?;
        let key = self.keys.user_sessions(&user.user_id);
        let sids = self.store.set_members(&key).await?;
        if let Some(keep) = except
            && !sids.iter().any(|s| s == keep.as_bytes())
        {
            return Err(Error::invalid_argument(
                ErrorReason::InvalidExcept,
                "except_session_id is not one of this user's sessions: nothing was revoked",
            ));
        }
        let sids = sids
            .into_iter()
            .filter(|s| except.is_none_or(|keep| s != keep.as_bytes()));
        self.revoke_sids(sids, self.clock.now_ms()).await
    }

    /// Verifies a native JWT's signature and claims, accepting it past its expiry (revoking
    /// with an expired JWT is fine: the session may still be alive).
    fn verify_own_jwt(&self, jwt: &str) -> Result<VerifiedJwt, Reason> {
        let Ok(Shape::Jws(jws)) = token::classify(jwt) else {
            return Err(Reason::Malformed);
        };
        let header = token::header(&jws)?;
        let claims = token::payload(&jws)?;
        self.issuer
            .verify(&jws, &header, claims, self.clock.now_secs())
    }

    /// Revokes the session whose token has digest `d`; 1, or 0 if it already was.
    async fn revoke_digest(&self, d: &Digest, now: i64) -> Result<u32, Error> {
        let until = now.div_euclid(1000) + self.revoke_window_secs;
        match self.lookup(d, now).await? {
            Lookup::Active(s, _) | Lookup::Expired(s) => {
                let tombstone = Tombstone {
                    session_id: s.session_id.clone(),
                    user_id: s.user_id.clone(),
                    expires_at_ms: s.expires_at_ms,
                    revoked_at_ms: now,
                };
                let ttl = self.record_ttl(s.expires_at_ms, now);
                // Deny first, then delete: in a Redis Cluster the batch is applied per hash
                // tag, and a revocation cut short must leave the session more revoked, never
                // less (the caller's retry completes it).
                let writes = vec![
                    RevokedSids::write(&self.keys, &s.session_id, until, now.div_euclid(1000)),
                    Write::Delete {
                        key: self.keys.session(d),
                    },
                    Write::Put {
                        key: self.keys.tombstone(d),
                        value: encode(&tombstone)?,
                        ttl: Some(ttl),
                    },
                    Write::SetRemove {
                        key: self.keys.user_sessions(&s.user_id),
                        member: s.session_id.clone().into_bytes(),
                    },
                    event(
                        self.env,
                        now,
                        "session.revoked",
                        json!({"session_id": s.session_id, "user_id": s.user_id}),
                    ),
                ];
                self.store.write(writes).await?;
                self.revoked
                    .announce(&*self.store, &s.session_id, until, now)
                    .await?;
                metrics::counter!("sessiongate_sessions_revoked_total").increment(1);
                Ok(1)
            }
            Lookup::Revoked => {
                // Already revoked. Broadcast again anyway: if the first attempt stored the
                // revocation but failed to publish it, this retry is what reaches the other
                // replicas.
                let stored = self.store.get(&self.keys.tombstone(d)).await?;
                if let Some(t) = stored {
                    let t: Tombstone = decode(&t)?;
                    // And store the sid again: idempotent, and it completes a revocation
                    // whose batch was cut short.
                    self.store
                        .write(vec![RevokedSids::write(
                            &self.keys,
                            &t.session_id,
                            until,
                            now.div_euclid(1000),
                        )])
                        .await?;
                    self.revoked
                        .announce(&*self.store, &t.session_id, until, now)
                        .await?;
                }
                Ok(0)
            }
            Lookup::NotFound => Err(not_found()),
        }
    }

    /// Revokes every session whose id the set `key` lists (a user's, a legacy token's);
    /// returns how many were still live. One that has expired and gone meanwhile is skipped.
    pub(crate) async fn revoke_listed(&self, key: &Key, now: i64) -> Result<u32, Error> {
        let sids = self.store.set_members(key).await?;
        self.revoke_sids(sids, now).await
    }

    async fn revoke_sids(
        &self,
        sids: impl IntoIterator<Item = Vec<u8>>,
        now: i64,
    ) -> Result<u32, Error> {
        let mut revoked = 0;
        for sid in sids {
            let Ok(sid) = String::from_utf8(sid) else {
                continue;
            };
            if let Some(d) = self.digest_of(&sid).await? {
                revoked += match self.revoke_digest(&d, now).await {
                    Ok(n) => n,
                    Err(e) if e.code == ErrorCode::NotFound => 0,
                    Err(e) => return Err(e),
                };
            }
        }
        Ok(revoked)
    }
}

fn not_found() -> Error {
    Error::new(
        ErrorCode::NotFound,
        ErrorReason::SessionNotFound,
        "no such session",
    )
}
