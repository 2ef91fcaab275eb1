//! The verdict on a native credential: an opaque token is looked up in the store; a JWT that
//! verified (or that the cache holds) is judged on its claims, and goes to the store only
//! when the caller asks for a check or an extension, or it has expired and may be refreshed.

use std::sync::Arc;

use super::{Lookup, NativeSessions, REMINT_AFTER_MS};
use crate::error::{Error, ErrorReason};
use crate::session::claims::VerifiedJwt;
use crate::session::model::Session;
use crate::session::record;
use crate::session::token::{Header, Jws};
use crate::session::verdict::{Origin, Reason, Source, ValidateRequest, Verdict, View};
use crate::store::keys::Digest;

/// `last_accessed_at` is written at most this often per session.
const TOUCH_EVERY_MS: i64 = 60_000;

/// A JWT minted for a session, and the session state it describes.
pub(super) struct Minted {
    jwt: String,
    minted_at_ms: i64,
    expires_at_ms: i64,
}

impl NativeSessions {
    /// The verification of the JWT with digest `digest`, if this process made it already.
    pub(crate) fn cached(&self, digest: &Digest) -> Option<Arc<VerifiedJwt>> {
        self.cache.get(digest.as_bytes())
    }

    /// Verifies a JWT routed here by its `iss`, and keeps it for the next time unless it
    /// has expired.
    pub(crate) fn verify(
        &self,
        digest: &Digest,
        jws: &Jws<'_>,
        header: &Header,
        claims: serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> Result<Arc<VerifiedJwt>, Reason> {
        let v = Arc::new(self.issuer.verify(jws, header, claims, now)?);
        if !self.issuer.expired(&v, now) {
            self.cache.insert(*digest.as_bytes(), v.clone());
        }
        Ok(v)
    }

    /// The verdict on a verified native JWT; `source`: how it was verified.
    pub(crate) async fn validate_jwt(
        &self,
        jwt: Arc<VerifiedJwt>,
        source: Source,
        req: &ValidateRequest,
    ) -> Result<Verdict, Error> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        if self.revoked.contains(jwt.session_id()) {
            return Ok(Verdict::invalid(Reason::Revoked, Origin::New, source));
        }

        let expired = self.issuer.expired(&jwt, now);
        // An expired JWT is exchanged for a fresh one only within the refresh window: a JWT
        // copied long ago (a log, a leaked backup) must not revive its session for ever.
        if expired
            && now
                >= jwt
                    .expires_at
                    .saturating_add(self.leeway_secs)
                    .saturating_add(self.refresh_window_secs)
        {
            return Ok(Verdict::invalid(Reason::Expired, Origin::New, source));
        }
        if req.session_duration_minutes > 0 && !req.may_extend_by_jwt {
            return Err(Error::new(
                crate::error::ErrorCode::PermissionDenied,
                ErrorReason::ScopeMissing,
                "extending a session by its session_jwt needs a caller key with scope `issue`; extend it with its session_token instead",
            ));
        }
        let too_old = req.max_token_age_seconds > 0
            && now - jwt.issued_at > i64::from(req.max_token_age_seconds);
        if expired || too_old || req.session_duration_minutes > 0 {
            // Boxed: the store's round trip is rare on this path, and inline its state would
            // be part of — and copied with — every cached JWT's validation future.
            return Box::pin(self.by_store(&jwt, expired, req, now_ms)).await;
        }

        // The JWT's own expiry, not its session's. The BASIC view builds no session (a cache
        // hit's only allocations are then the ids).
        let expires_at_ms = jwt.expires_at * 1000;
        Ok(match req.view {
            View::Basic => {
                Verdict::native_basic(jwt.user_id(), jwt.session_id(), expires_at_ms, source)
            }
            View::Full => {
                let mut v = Verdict::native(jwt.session(), View::Full, source);
                v.claims = Some(self.issuer.claims(&jwt));
                v.expires_at_ms = Some(expires_at_ms);
                v
            }
        })
    }

    /// The verdict on a verified native JWT that the store decides (expired and within its
    /// refresh window, too old for the caller, or to be extended): its session must still be
    /// active.
    async fn by_store(
        &self,
        jwt: &Arc<VerifiedJwt>,
        expired: bool,
        req: &ValidateRequest,
        now_ms: i64,
    ) -> Result<Verdict, Error> {
        let source = Source::Store;
        match self.lookup_by_id(jwt.session_id(), now_ms).await? {
            Lookup::Active(session, d) => {
                let fresh = expired || req.session_duration_minutes > 0;
                let mut v = self.active(*session, &d, req, now_ms).await?;
                if !fresh {
                    // Not expired, only re-checked: the caller's JWT stays good.
                    v.session_jwt = None;
                }
                if req.view == View::Full {
                    v.claims = Some(self.issuer.claims(jwt));
                }
                Ok(v)
            }
            Lookup::Expired(_) => Ok(Verdict::invalid(Reason::Expired, Origin::New, source)),
            Lookup::Revoked => Ok(Verdict::invalid(Reason::Revoked, Origin::New, source)),
            // Past its retention the record is gone: for an expired JWT that is EXPIRED.
            Lookup::NotFound if expired => {
                Ok(Verdict::invalid(Reason::Expired, Origin::New, source))
            }
            Lookup::NotFound => Ok(Verdict::invalid(Reason::NotFound, Origin::New, source)),
        }
    }

    /// The verdict on an opaque `session_token`: the store decides.
    pub(crate) async fn validate_opaque(
        &self,
        token: &str,
        req: &ValidateRequest,
    ) -> Result<Verdict, Error> {
        let now = self.clock.now_ms();
        let digest = Digest::of(token.as_bytes());
        match self.lookup(&digest, now).await? {
            // The in-process revoked set too: a revocation acknowledged just before Redis
            // lost its last second of writes (AOF everysec) stays effective here.
            Lookup::Active(session, _) if self.revoked.contains(&session.session_id) => Ok(
                Verdict::invalid(Reason::Revoked, Origin::New, Source::Cache),
            ),
            Lookup::Active(session, d) => self.active(*session, &d, req, now).await,
            Lookup::Expired(_) => Ok(Verdict::invalid(
                Reason::Expired,
                Origin::New,
                Source::Store,
            )),
            Lookup::Revoked => Ok(Verdict::invalid(
                Reason::Revoked,
                Origin::New,
                Source::Store,
            )),
            Lookup::NotFound => Ok(Verdict::invalid(
                Reason::NotFound,
                Origin::Unknown,
                Source::Store,
            )),
        }
    }

    /// A session found active in the store: touch it (at most once a minute), extend it if
    /// asked, and hand out a fresh JWT.
    async fn active(
        &self,
        mut session: Session,
        d: &Digest,
        req: &ValidateRequest,
        now: i64,
    ) -> Result<Verdict, Error> {
        let mut extended = false;
        // However it was extended, a session ends at its absolute lifetime.
        let end_of_life = session
            .started_at_ms
            .saturating_add(self.absolute_lifetime_ms);
        if now >= end_of_life {
            return Ok(Verdict::invalid(
                Reason::Expired,
                Origin::New,
                Source::Store,
            ));
        }
        if req.session_duration_minutes > 0 {
            let minutes = super::session_minutes(req.session_duration_minutes, 0)?;
            let until = (now + i64::from(minutes) * 60_000).min(end_of_life);
            if until > session.expires_at_ms {
                session.expires_at_ms = until;
                extended = true;
            }
        }
        let touch = now - session.last_accessed_at_ms >= TOUCH_EVERY_MS;
        if touch {
            session.last_accessed_at_ms = now;
        }
        if extended || touch {
            let ttl = self.record_ttl(session.expires_at_ms, now);
            if extended {
                // The indexes first, as creation does: a record that outlives its indexes
                // would be a session that revocation by id or by user cannot find.
                self.store
                    .write(vec![
                        crate::store::Write::Put {
                            key: self.keys.session_token(&session.session_id),
                            value: d.to_hex().into_bytes(),
                            ttl: Some(ttl),
                        },
                        crate::store::Write::SetAdd {
                            key: self.keys.user_sessions(&session.user_id),
                            member: session.session_id.clone().into_bytes(),
                            ttl: Some(ttl),
                        },
                    ])
                    .await?;
            }
            // XX: a revocation that deleted the record meanwhile wins; we must not bring the
            // session back.
            let written = self
                .store
                .put_if_present(
                    &self.keys.session(d),
                    &record::encode(&session, self.env, self.format)?,
                    Some(ttl),
                )
                .await;
            match written {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(Verdict::invalid(
                        Reason::Revoked,
                        Origin::New,
                        Source::Store,
                    ));
                }
                // Only the explicit extension must be durable; a lost `last_accessed_at`
                // update is not worth failing a validation for.
                Err(e) if extended => return Err(e.into()),
                Err(e) => tracing::debug!(error = %e, "could not record last_accessed_at"),
            }
        }
        // A fresh JWT is part of the FULL view only (minting is the costliest step here).
        let jwt = match req.view {
            View::Full => Some(self.jwt_for(&session, now)?),
            View::Basic => None,
        };
        let mut v = Verdict::native(session, req.view, Source::Store);
        v.session_jwt = jwt;
        Ok(v)
    }

    /// A JWT for `session`: the one minted for it less than a minute ago if the session's
    /// expiry has not changed since, else a new one.
    fn jwt_for(&self, session: &Session, now: i64) -> Result<String, Error> {
        if let Some(m) = self.minted.get(&session.session_id)
            && now - m.minted_at_ms < REMINT_AFTER_MS
            && m.expires_at_ms == session.expires_at_ms
        {
            return Ok(m.jwt.clone());
        }
        let jwt = self.issuer.mint(session, now)?;
        self.minted.insert(
            session.session_id.clone(),
            Arc::new(Minted {
                jwt: jwt.clone(),
                minted_at_ms: now,
                expires_at_ms: session.expires_at_ms,
            }),
        );
        Ok(jwt)
    }
}
