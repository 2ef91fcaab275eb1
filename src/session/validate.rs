//! `ValidateSession` for every credential (docs/design.md, "How a verdict is decided"):
//! `validate_inner` is one match on the token's shape, and each arm returns the verdict of
//! the one path that may judge it — native opaque, a JWS routed by its issuer, or a legacy
//! opaque token asked about at UserInfo.
//!
//! A bad token is a verdict, not an error: everything here returns `Ok(Verdict)` for any
//! token, and `Err` only when the *call* fails — an empty token, or a store that is needed
//! for this answer and is down (`UNAVAILABLE`, never INVALID: an outage must not log users
//! out). Native JWTs need no store at all unless the caller asks for a store check
//! (`max_token_age_seconds`), a sliding extension, or the JWT has expired and may be
//! refreshed.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::model::{ClientInfo, Session};
use super::native::Claims;
use super::providers::{CachedUserInfo, Provider, VerifiedProviderJwt};
use super::service::{
    LegacyIds, Lookup, Minted, ProviderHit, REMINT_AFTER_MS, SessionService, TOUCH_EVERY_MS,
    signed_digest,
};
use super::token::{self, Redacted, Shape};
use super::{Action, NATIVE_PROVIDER, Origin, Reason, Source};
use crate::config::Policy;
use crate::error::{Error, ErrorReason};
use crate::store::keys::Digest;

impl SessionService {
    /// The verdict on a provider's JWT: its policy applied to a verified token, or the
    /// reason it failed, attributed to the provider.
    fn provider_verdict(
        &self,
        provider: &Provider,
        jwt: Result<VerifiedProviderJwt, Reason>,
        source: Source,
        now: i64,
    ) -> Verdict {
        let origin = if provider.is_legacy() {
            Origin::Legacy
        } else {
            Origin::New
        };
        let mut v = Verdict::invalid(Reason::Malformed, origin, source);
        v.provider = provider.name().to_owned();
        let jwt = match jwt {
            // A cache hit must still be inside its lifetime.
            Ok(jwt)
                if jwt
                    .expires_at
                    .is_some_and(|exp| now >= exp + self.leeway_secs) =>
            {
                Err(Reason::Expired)
            }
            other => other,
        };
        match jwt {
            Err(reason) => v.invalid = Some(reason),
            Ok(jwt) => {
                v.subject = jwt.subject.clone();
                v.expires_at_ms = jwt.expires_at.map(|exp| exp * 1000);
                v.claims = Some(Claims::Json(jwt.claims.clone()));
                match (provider.is_legacy(), provider.policy()) {
                    // The all-at-once cutover: legacy tokens, however good, are retired.
                    (true, Policy::Reject) => v.invalid = Some(Reason::LegacyRetired),
                    (true, Policy::Upgrade) => {
                        v.invalid = None;
                        v.action = Action::Migrate;
                    }
                    _ => v.invalid = None,
                }
            }
        }
        v
    }
}

/// A `ValidateSession` call, decoded.
#[derive(Clone, Default)]
pub struct ValidateRequest {
    /// The calling client's configured name (for the migration-progress metric).
    pub caller: std::sync::Arc<str>,
    pub token: String,
    pub max_token_age_seconds: u32,
    pub session_duration_minutes: u32,
    pub client: ClientInfo,
    /// The caller may extend a session by its session_jwt alone (it holds `issue`). Anyone
    /// may extend with the opaque session_token: only its holder has it, while a short JWT
    /// travels through every service of the fleet.
    pub may_extend_by_jwt: bool,
}

impl std::fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateRequest")
            .field("caller", &self.caller)
            .field("token", &Redacted(&self.token))
            .field("max_token_age_seconds", &self.max_token_age_seconds)
            .field("session_duration_minutes", &self.session_duration_minutes)
            .field("may_extend_by_jwt", &self.may_extend_by_jwt)
            .finish_non_exhaustive()
    }
}

/// The answer on one credential.
#[derive(Clone)]
pub struct Verdict {
    /// `None`: VALID.
    pub invalid: Option<Reason>,
    pub origin: Origin,
    pub provider: String,
    pub user_id: String,
    pub subject: String,
    pub session: Option<Session>,
    /// Shared with the verdict cache: converting is the only copy.
    pub claims: Option<Claims>,
    pub expires_at_ms: Option<i64>,
    pub session_jwt: Option<String>,
    pub action: Action,
    pub source: Source,
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verdict")
            .field("invalid", &self.invalid)
            .field("origin", &self.origin)
            .field("provider", &self.provider)
            .field("user_id", &self.user_id)
            .field("subject", &self.subject)
            .field("session", &self.session)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("session_jwt", &self.session_jwt.as_deref().map(Redacted))
            .field("action", &self.action)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Verdict {
    fn invalid(reason: Reason, origin: Origin, source: Source) -> Self {
        Self {
            invalid: Some(reason),
            origin,
            provider: String::new(),
            user_id: String::new(),
            subject: String::new(),
            session: None,
            claims: None,
            expires_at_ms: None,
            session_jwt: None,
            action: Action::None,
            source,
        }
    }

    fn native(session: Session, source: Source) -> Self {
        Self {
            invalid: None,
            origin: Origin::New,
            provider: NATIVE_PROVIDER.into(),
            user_id: session.user_id.clone(),
            subject: session.user_id.clone(),
            expires_at_ms: Some(session.expires_at_ms),
            session: Some(session),
            claims: None,
            session_jwt: None,
            action: Action::None,
            source,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.invalid.is_none()
    }
}

impl SessionService {
    /// Validates any credential this build understands.
    pub async fn validate(&self, req: ValidateRequest) -> Result<Verdict, Error> {
        let mut verdict = self.validate_inner(&req).await;
        // A legacy subject that has migrated already comes back with its sessiongate user.
        if let Ok(v) = &mut verdict
            && v.is_valid()
            && v.origin == Origin::Legacy
            && !v.subject.is_empty()
        {
            v.user_id = self.migrated_user(&v.provider, &v.subject).await;
        }
        if let Ok(v) = &verdict
            && v.is_valid()
        {
            let provider = if v.provider.is_empty() {
                "native"
            } else {
                &v.provider
            };
            self.progress
                .record(&req.caller, provider, v.origin == Origin::New);
        }
        if let Ok(v) = &verdict {
            // Provider names come from the configuration: a small, fixed set.
            self.counters.record(
                if v.provider.is_empty() {
                    "unknown"
                } else {
                    &v.provider
                },
                match v.origin {
                    Origin::New => "NEW",
                    Origin::Legacy => "LEGACY",
                    Origin::Unknown => "UNKNOWN",
                },
                if v.is_valid() { "VALID" } else { "INVALID" },
                v.invalid.map_or("", Reason::as_str),
                v.source.as_str(),
            );
        }
        verdict
    }

    async fn validate_inner(&self, req: &ValidateRequest) -> Result<Verdict, Error> {
        let token = req.token.as_str();
        if token.is_empty() {
            return Err(Error::invalid_argument(
                ErrorReason::TokenRequired,
                "token is empty",
            ));
        }
        // Size first, before any decoding.
        if token.len() > self.max_token_bytes {
            return Ok(Verdict::invalid(
                Reason::TooLarge,
                Origin::Unknown,
                Source::LocalVerify,
            ));
        }
        match token::classify(token) {
            Err(r) => Ok(Verdict::invalid(r, Origin::Unknown, Source::LocalVerify)),
            Ok(Shape::NativeOpaque) => self.validate_opaque(token, req).await,
            Ok(Shape::Jws(jws)) => self.validate_jwt(token, jws, req).await,
            // Legacy opaque tokens are checked through the legacy provider's UserInfo; with none
            // configured that accepts them, an unknown shape is malformed.
            Ok(Shape::Other) => match self.providers.opaque().cloned() {
                Some(p) if token::upstream_safe(token) => {
                    self.validate_legacy_opaque(token, &p).await
                }
                _ => Ok(Verdict::invalid(
                    Reason::Malformed,
                    Origin::Unknown,
                    Source::LocalVerify,
                )),
            },
        }
    }

    /// The sessiongate user a legacy identity migrated to, or `""`. A link never changes
    /// once made, so found links are cached in process — but only once the user record lists
    /// the identity (an index claimed by a migration that then failed, or is still running,
    /// is no link yet). A lookup that fails (store down) leaves the verdict without a user id
    /// rather than failing it.
    async fn migrated_user(&self, provider: &str, subject: &str) -> String {
        let id = format!("{provider}\0{subject}");
        if let Some(u) = self.migrated.get(&id) {
            return u.to_string();
        }
        let Some(provider) = self.providers.all().find(|p| p.name() == provider) else {
            return String::new();
        };
        let linked = async {
            let Some(user_id) = self.linked_user(provider, subject).await? else {
                return Ok(None);
            };
            let Some(record) = self.store.get(&self.keys.user(&user_id)).await? else {
                return Ok(None);
            };
            let user: super::model::User = Self::decode(&record)?;
            let identity = provider.identity(subject);
            let listed = user
                .legacy_identities
                .iter()
                .any(|li| li.same_account(&identity));
            Ok::<_, Error>(listed.then_some(user_id))
        };
        match linked.await {
            Ok(Some(user_id)) => {
                self.migrated.insert(id, Arc::from(user_id.as_str()));
                user_id
            }
            Ok(None) => String::new(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot look up a migrated legacy identity");
                String::new()
            }
        }
    }

    // === Legacy opaque tokens ===

    /// Asks the legacy provider's UserInfo about `token`, with the answer cached in the store
    /// by the token's digest (a UserInfo call costs ~100 ms and counts against the provider's
    /// rate limit; a store round trip ~25 µs). Concurrent validations of one token share one
    /// look-up (single-flight), refusals are cached too, and a token that cannot be one of the
    /// provider's is refused without a call. The cache fails open: with the store down the
    /// provider is asked directly (within its budget).
    async fn validate_legacy_opaque(
        &self,
        token: &str,
        provider: &Provider,
    ) -> Result<Verdict, Error> {
        let now = self.clock.now_secs();
        if !provider.opaque_token_plausible(token) {
            let mut v = Verdict::invalid(Reason::Malformed, Origin::Unknown, Source::LocalVerify);
            v.provider = provider.name().to_owned();
            return Ok(v);
        }
        let digest = Digest::of(token.as_bytes());
        if self.denied(&LegacyIds::new("", None, digest)) {
            let mut v = Verdict::invalid(Reason::Revoked, Origin::Legacy, Source::Cache);
            v.provider = provider.name().to_owned();
            return Ok(v);
        }
        let (cached, source) = self
            .userinfo_flight
            .run(*digest.as_bytes(), || {
                self.userinfo_answer(token, &digest, provider)
            })
            .await?;
        let answer = cached.into_result(provider)?;
        Ok(self.userinfo_verdict(provider, answer, source, now))
    }

    /// The provider's answer about `token`: from the store's cache, else from UserInfo
    /// (then cached).
    async fn userinfo_answer(
        &self,
        token: &str,
        digest: &Digest,
        provider: &Provider,
    ) -> Result<(CachedUserInfo, Source), Error> {
        let key = self.keys.userinfo(digest);
        match self.store.get(&key).await {
            Ok(Some(bytes)) => {
                if let Ok(cached) = serde_json::from_slice::<CachedUserInfo>(&bytes) {
                    return Ok((cached, Source::Cache));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "UserInfo cache unavailable; asking the provider")
            }
        }
        // `Provider::userinfo` returns transient outcomes as errors already.
        let (cached, ttl) = CachedUserInfo::of(provider.userinfo(token).await?)
            .ok_or_else(|| provider.unusable_answer("unavailable"))?;
        if let Ok(bytes) = serde_json::to_vec(&cached) {
            let write = crate::store::Write::Put {
                key,
                value: bytes,
                ttl: Some(ttl),
            };
            if let Err(e) = self.store.write(vec![write]).await {
                tracing::debug!(error = %e, "could not cache the UserInfo answer");
            }
        }
        Ok((cached, Source::Upstream))
    }

    /// A verified provider token, unless it was revoked (by `(iss, jti)` or by the digest of
    /// its signing input): the deny-list is the in-process revoked set, fed like the revoked
    /// sids.
    pub(super) fn not_denied(
        &self,
        provider: &Provider,
        jwt: VerifiedProviderJwt,
        signed: &Digest,
    ) -> Result<VerifiedProviderJwt, Reason> {
        let jti = jwt.claims.get("jti").and_then(Value::as_str);
        if self.denied(&LegacyIds::new(&provider.config.issuer, jti, *signed)) {
            Err(Reason::Revoked)
        } else {
            Ok(jwt)
        }
    }

    fn userinfo_verdict(
        &self,
        provider: &Provider,
        answer: Result<Map<String, Value>, Reason>,
        source: Source,
        now: i64,
    ) -> Verdict {
        let verified = answer.map(|claims| VerifiedProviderJwt {
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            expires_at: None,
            claims: Arc::new(claims),
        });
        self.provider_verdict(provider, verified, source, now)
    }

    // === Opaque session tokens ===

    async fn validate_opaque(&self, token: &str, req: &ValidateRequest) -> Result<Verdict, Error> {
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
            let minutes = super::service::session_minutes(req.session_duration_minutes, 0)?;
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
                .put_if_present(&self.keys.session(d), &Self::encode(&session)?, Some(ttl))
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
        let jwt = self.jwt_for(&session, now)?;
        let mut v = Verdict::native(session, Source::Store);
        v.session_jwt = Some(jwt);
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

    // === JWTs ===

    async fn validate_jwt(
        &self,
        token: &str,
        jws: token::Jws<'_>,
        req: &ValidateRequest,
    ) -> Result<Verdict, Error> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let digest = Digest::of(token.as_bytes());
        if let Some(hit) = self.provider_cache.get(digest.as_bytes()) {
            let jwt = self.not_denied(&hit.provider, hit.jwt.clone(), &hit.signed);
            return Ok(self.provider_verdict(&hit.provider, jwt, Source::Cache, now));
        }
        let (jwt, mut source) = match self.cache.get(digest.as_bytes()) {
            Some(hit) => (hit, Source::Cache),
            None => {
                let header = match token::header(&jws) {
                    Ok(h) => h,
                    Err(r) => return Ok(Verdict::invalid(r, Origin::Unknown, Source::LocalVerify)),
                };
                let claims = match token::payload(&jws) {
                    Ok(c) => c,
                    Err(r) => return Ok(Verdict::invalid(r, Origin::Unknown, Source::LocalVerify)),
                };
                // Route by the (unverified) issuer to exactly one verifier.
                match claims.get("iss").and_then(Value::as_str) {
                    Some(iss) if iss == self.issuer.issuer() => {}
                    Some(iss) if self.issuer.is_other_env(iss) => {
                        return Ok(Verdict::invalid(
                            Reason::WrongEnv,
                            Origin::New,
                            Source::LocalVerify,
                        ));
                    }
                    Some(iss) => {
                        let Some(provider) = self
                            .providers
                            .by_issuer(iss)
                            .filter(|p| p.accepts_jwt())
                            .cloned()
                        else {
                            return Ok(Verdict::invalid(
                                Reason::UnknownIssuer,
                                Origin::Unknown,
                                Source::LocalVerify,
                            ));
                        };
                        return match provider.verify(&jws, &header, claims, now).await {
                            Ok(jwt) => {
                                let signed = signed_digest(&jws);
                                self.provider_cache.insert(
                                    *digest.as_bytes(),
                                    Arc::new(ProviderHit {
                                        provider: provider.clone(),
                                        jwt: jwt.clone(),
                                        signed,
                                    }),
                                );
                                let jwt = self.not_denied(&provider, jwt, &signed);
                                Ok(self.provider_verdict(&provider, jwt, Source::LocalVerify, now))
                            }
                            Err(Ok(reason)) => Ok(self.provider_verdict(
                                &provider,
                                Err(reason),
                                Source::LocalVerify,
                                now,
                            )),
                            Err(Err(e)) => Err(e),
                        };
                    }
                    None => {
                        return Ok(Verdict::invalid(
                            Reason::UnknownIssuer,
                            Origin::Unknown,
                            Source::LocalVerify,
                        ));
                    }
                }
                match self.issuer.verify(&jws, &header, claims, now) {
                    Ok(v) => {
                        let v = Arc::new(v);
                        if !self.issuer.expired(&v, now) {
                            self.cache.insert(*digest.as_bytes(), v.clone());
                        }
                        (v, Source::LocalVerify)
                    }
                    Err(r) => return Ok(Verdict::invalid(r, Origin::New, Source::LocalVerify)),
                }
            }
        };
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
            // The store decides: the session must still be active.
            source = Source::Store;
            return match self.lookup_by_id(jwt.session_id(), now_ms).await? {
                Lookup::Active(session, d) => {
                    let fresh = expired || req.session_duration_minutes > 0;
                    let mut v = self.active(*session, &d, req, now_ms).await?;
                    if !fresh {
                        // Not expired, only re-checked: the caller's JWT stays good.
                        v.session_jwt = None;
                    }
                    v.claims = Some(self.issuer.claims(&jwt));
                    Ok(v)
                }
                Lookup::Expired(_) => Ok(Verdict::invalid(Reason::Expired, Origin::New, source)),
                Lookup::Revoked => Ok(Verdict::invalid(Reason::Revoked, Origin::New, source)),
                // Past its retention the record is gone: for an expired JWT that is EXPIRED.
                Lookup::NotFound if expired => {
                    Ok(Verdict::invalid(Reason::Expired, Origin::New, source))
                }
                Lookup::NotFound => Ok(Verdict::invalid(Reason::NotFound, Origin::New, source)),
            };
        }

        let mut v = Verdict::native(jwt.session(), source);
        v.expires_at_ms = Some(jwt.expires_at * 1000);
        v.claims = Some(self.issuer.claims(&jwt));
        Ok(v)
    }
}
