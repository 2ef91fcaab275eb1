//! The session service: its state, minting (`CreateSession`) and revocation
//! (`RevokeSession`: native sessions, and legacy tokens with what was migrated from them).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::model::{AuthFactor, ClientInfo, Session, Tombstone, User};
use super::native::{NativeIssuer, RESERVED_CLAIMS, VerifiedJwt};
use super::providers::{CachedUserInfo, Provider, Providers, VerifiedProviderJwt};
use super::revocation::RevokedSids;
use super::singleflight::SingleFlight;
use super::token::{self, Redacted, Shape};
use crate::caller::Caller;
use crate::clock::Clock;
use crate::config::{Config, Env, SESSION_MINUTES_MAX, SESSION_MINUTES_MIN};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::ids::{self, IdKind};
use crate::keys::SigningKeys;
use crate::store::Invalidation;
use crate::store::keys::{Digest, Keys};
use crate::store::{Store, Write};

/// How long a session record outlives its expiry, so that validation can answer EXPIRED
/// (not NOT_FOUND) for a while.
pub(super) const EXPIRED_RETENTION_MS: i64 = 3_600_000;
/// `last_accessed_at` is written at most this often per session.
pub(super) const TOUCH_EVERY_MS: i64 = 60_000;
/// Custom claims, serialised, at most.
const MAX_CUSTOM_CLAIMS_BYTES: usize = 4096;
/// Verified JWTs kept in process.
const VERDICT_CACHE_ENTRIES: u64 = 100_000;

/// Re-mint a session's JWT once the last one is this old.
pub(super) const REMINT_AFTER_MS: i64 = 60_000;

/// A JWT minted for a session, and the session state it describes.
pub(super) struct Minted {
    pub jwt: String,
    pub minted_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A cached verification of a provider's JWT.
pub(super) struct ProviderHit {
    pub provider: Arc<Provider>,
    pub jwt: VerifiedProviderJwt,
    /// The digest of the token's signing input: what its deny-list entry is keyed by.
    pub signed: Digest,
}

/// Whose session to create.
#[derive(Debug, Clone)]
pub enum Who {
    UserId(String),
    NewUser {
        email: String,
        email_verified: bool,
        name: String,
    },
}

/// A `CreateSession` call, decoded.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub who: Option<Who>,
    pub factors: Vec<AuthFactor>,
    pub duration_minutes: u32,
    pub custom_claims: Map<String, Value>,
    pub client: ClientInfo,
}

/// A minted session and everything the caller gets once.
#[derive(Clone)]
pub struct Created {
    pub user: User,
    pub session: Session,
    pub session_token: String,
    pub session_jwt: String,
    pub user_created: bool,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("user", &self.user)
            .field("session", &self.session)
            .field("session_token", &Redacted(&self.session_token))
            .field("session_jwt", &Redacted(&self.session_jwt))
            .field("user_created", &self.user_created)
            .finish_non_exhaustive()
    }
}

/// What `RevokeSession` targets.
#[derive(Clone)]
pub enum RevokeTarget {
    SessionId(String),
    SessionToken(String),
    SessionJwt(String),
    UserId(String),
    /// A legacy (or external) provider's token: deny-listed until it expires.
    LegacyToken(String),
}

impl std::fmt::Debug for RevokeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokeTarget::SessionId(id) => f.debug_tuple("SessionId").field(id).finish(),
            RevokeTarget::UserId(id) => f.debug_tuple("UserId").field(id).finish(),
            RevokeTarget::SessionToken(t) => {
                f.debug_tuple("SessionToken").field(&Redacted(t)).finish()
            }
            RevokeTarget::SessionJwt(t) => f.debug_tuple("SessionJwt").field(&Redacted(t)).finish(),
            RevokeTarget::LegacyToken(t) => {
                f.debug_tuple("LegacyToken").field(&Redacted(t)).finish()
            }
        }
    }
}

/// The deny-list ids of a provider token: by `(iss, jti)` when it has a `jti`, and always by
/// `signed`, the digest of what the signature covers — a JWT's `header.payload`, an opaque
/// token whole. Never by a JWT's full bytes: an ECDSA signature `(r, s)` has a twin `(r, n−s)`
/// that verifies as well, and a deny-list keyed by the whole token would let the twin through.
/// `signed` also keys the index of the sessions migrated from the token.
pub(super) struct LegacyIds {
    pub signed: Digest,
    by_jti: Option<String>,
    by_signed: String,
}

impl LegacyIds {
    pub fn new(iss: &str, jti: Option<&str>, signed: Digest) -> Self {
        Self {
            by_jti: jti.map(|j| {
                format!(
                    "lt:{}",
                    Digest::of(format!("{iss}\0{j}").as_bytes()).to_hex()
                )
            }),
            by_signed: format!("lt:{}", signed.to_hex()),
            signed,
        }
    }

    /// The ids of `token` as presented, read unverified (a deny-list hit only ever refuses;
    /// a JWT that verifies later has the same `jti`).
    pub fn of_token(iss: &str, token: &str) -> Self {
        match token::classify(token) {
            Ok(Shape::Jws(jws)) => {
                let claims = token::payload(&jws).ok();
                let jti = claims
                    .as_ref()
                    .and_then(|c| c.get("jti"))
                    .and_then(Value::as_str);
                Self::new(iss, jti, signed_digest(&jws))
            }
            _ => Self::new("", None, Digest::of(token.as_bytes())),
        }
    }

    /// Every id the token is denied by.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.by_jti.iter().chain([&self.by_signed])
    }
}

/// What a JWT's deny-list entry is keyed by: the digest of its signing input.
pub(super) fn signed_digest(jws: &token::Jws<'_>) -> Digest {
    Digest::of(jws.signing_input.as_bytes())
}

/// Where a session stands in the store.
pub(super) enum Lookup {
    Active(Box<Session>, Digest),
    Expired(Box<Session>),
    Revoked,
    NotFound,
}

/// The native session service.
pub struct SessionService {
    pub(super) env: Env,
    pub(super) store: Arc<dyn Store>,
    pub(super) keys: Keys,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) issuer: NativeIssuer,
    pub(super) revoked: Arc<RevokedSids>,
    /// Verified native JWTs by token digest. Hits still check expiry, revocation and age:
    /// the cache only saves the signature check and parsing — so it needs no TTL of its
    /// own, and it is a `quick_cache` (S3-FIFO, ~80 bytes of bookkeeping per entry) rather
    /// than moka (~350 bytes per entry, measured by `benches/memory.rs`): at 100 000
    /// entries that difference is 27 MB.
    pub(super) cache: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedJwt>>,
    /// The last JWT minted per session. RSA signing costs ~1 ms, a Redis round trip ~25 µs:
    /// re-minting on every opaque validation would make signing the whole cost of the path.
    /// A JWT minted under [`REMINT_AFTER_MS`] ago for the same session state is handed out
    /// again (it still has most of its lifetime).
    pub(super) minted: moka::sync::Cache<String, Arc<Minted>>,
    /// Configured legacy and external providers, by issuer.
    pub(super) providers: Providers,
    /// Verified provider JWTs by token digest (same rules as `cache`: hits re-check expiry).
    pub(super) provider_cache: moka::sync::Cache<[u8; 32], Arc<ProviderHit>>,
    pub(super) leeway_secs: i64,
    /// Legacy identities known to have migrated: `provider \0 sub` → user id.
    pub(super) migrated: moka::sync::Cache<String, Arc<str>>,
    pub(super) max_token_bytes: usize,
    pub(super) default_minutes: u32,
    pub(super) migration_limits: crate::config::MigrationConfig,
    /// Legacy opaque tokens being looked up, by digest: concurrent validations of one token
    /// make one UserInfo call.
    pub(super) userinfo_flight: SingleFlight<Result<(CachedUserInfo, super::Source), Error>>,
    pub(super) progress: crate::telemetry::MigrationProgress,
    pub(super) counters: crate::telemetry::ValidationCounters,
    revoke_window_secs: i64,
    /// How long after its expiry a session_jwt may still be refreshed.
    pub(super) refresh_window_secs: i64,
    /// No session outlives `started_at` + this.
    pub(super) absolute_lifetime_ms: i64,
}

impl SessionService {
    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        signing: Arc<SigningKeys>,
    ) -> Self {
        let ttl = cfg.native.jwt_ttl;
        Self {
            env: cfg.env,
            keys: Keys::new(cfg.env),
            issuer: NativeIssuer::new(cfg.env, &cfg.native, signing),
            revoked: Arc::new(RevokedSids::default()),
            cache: quick_cache::sync::Cache::new(VERDICT_CACHE_ENTRIES as usize),
            minted: moka::sync::Cache::builder()
                .max_capacity(VERDICT_CACHE_ENTRIES)
                .time_to_live(Duration::from_millis(REMINT_AFTER_MS as u64))
                .build(),
            providers: Providers::start(cfg, store.clone()),
            provider_cache: moka::sync::Cache::builder()
                .max_capacity(VERDICT_CACHE_ENTRIES)
                .time_to_live(Duration::from_secs(300))
                .build(),
            leeway_secs: cfg.native.leeway.as_secs() as i64,
            migrated: moka::sync::Cache::builder()
                .max_capacity(VERDICT_CACHE_ENTRIES)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            migration_limits: cfg.migration.clone(),
            userinfo_flight: SingleFlight::default(),
            progress: Default::default(),
            counters: Default::default(),
            max_token_bytes: cfg.server.max_token_bytes,
            default_minutes: cfg.native.session_duration_minutes,
            // Every JWT minted up to now expires within its TTL (+ leeway): that is how long a
            // revoked sid must be remembered.
            revoke_window_secs: (ttl + cfg.native.leeway).as_secs() as i64,
            refresh_window_secs: cfg.native.refresh_window.as_secs() as i64,
            absolute_lifetime_ms: i64::from(cfg.native.absolute_lifetime_minutes) * 60_000,
            store,
            clock,
        }
    }

    pub fn revoked(&self) -> &Arc<RevokedSids> {
        &self.revoked
    }

    pub fn issuer(&self) -> &NativeIssuer {
        &self.issuer
    }

    /// TTL of a record for a session expiring at `expires_at_ms`.
    pub(super) fn record_ttl(&self, expires_at_ms: i64, now_ms: i64) -> Duration {
        Duration::from_millis((expires_at_ms - now_ms + EXPIRED_RETENTION_MS).max(1) as u64)
    }

    pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(v).map_err(Error::internal)
    }

    pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("stored record: {e}")))
    }

    pub(super) fn event(&self, kind: &str, fields: Value) -> Value {
        let mut e = json!({
            "type": kind,
            "id": uuid::Uuid::new_v4().to_string(),
            "at": humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(self.clock.now_ms().max(0) as u64)
            ).to_string(),
            "env": self.env.as_str(),
        });
        if let (Value::Object(e), Value::Object(f)) = (&mut e, fields) {
            e.extend(f);
        }
        e
    }

    // === CreateSession ===

    /// Mints a session for an existing user or a new one.
    pub async fn create(&self, req: CreateRequest) -> Result<Created, Error> {
        let minutes = session_minutes(req.duration_minutes, self.default_minutes)?;
        check_custom_claims(&req.custom_claims)?;
        check_factors(&req.factors)?;
        check_client(&req.client)?;
        let now = self.clock.now_ms();
        let mut writes = Vec::new();
        let (user, user_created) = match req.who {
            None => {
                return Err(Error::invalid_argument(
                    ErrorReason::WhoRequired,
                    "set either user_id (an existing user) or new_user",
                ));
            }
            Some(Who::UserId(id)) => (self.load_user(&id).await?, false),
            Some(Who::NewUser {
                email,
                email_verified,
                name,
            }) => {
                check_len("new_user.email", &email, 320)?;
                check_len("new_user.name", &name, 256)?;
                let user = User {
                    user_id: ids::new(IdKind::User, self.env),
                    email,
                    email_verified,
                    name,
                    legacy_identities: Vec::new(),
                    created_at_ms: now,
                };
                writes.push(Write::Put {
                    key: self.keys.user(&user.user_id),
                    value: Self::encode(&user)?,
                    ttl: None,
                });
                // A verified email is what a later migration may link by (first owner wins).
                let email = user.email.trim().to_ascii_lowercase();
                if user.email_verified && !email.is_empty() {
                    self.store
                        .put_if_absent(
                            &self.keys.email(&Digest::of(email.as_bytes())),
                            user.user_id.as_bytes(),
                            None,
                        )
                        .await?;
                }
                writes.push(Write::Event(self.event(
                    "user.created",
                    json!({"user_id": user.user_id, "created_via": "create_session"}),
                )));
                (user, true)
            }
        };
        let (session, session_token) = self.mint_session(
            &user.user_id,
            req.factors,
            minutes,
            req.custom_claims,
            req.client,
            "create_session",
            now,
            &mut writes,
        )?;
        self.store.write(writes).await?;
        let session_jwt = self.issuer.mint(&session, now)?;
        metrics::counter!("sessiongate_sessions_created_total", "via" => "create_session")
            .increment(1);
        Ok(Created {
            user,
            session,
            session_token,
            session_jwt,
            user_created,
        })
    }

    async fn load_user(&self, user_id: &str) -> Result<User, Error> {
        let not_found = || {
            Error::new(
                ErrorCode::NotFound,
                ErrorReason::UserNotFound,
                format!(
                    "no user `{}` in env {}",
                    truncate(user_id),
                    self.env.as_str()
                ),
            )
        };
        if !ids::may_be(IdKind::User, self.env, user_id) {
            return Err(not_found());
        }
        match self.store.get(&self.keys.user(user_id)).await? {
            Some(bytes) => Self::decode(&bytes),
            None => Err(not_found()),
        }
    }

    /// Adds the writes that create a session for `user_id` to `writes`; returns the session
    /// and its opaque token (which exists only in the caller's hands from now on: the store
    /// keeps its digest).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mint_session(
        &self,
        user_id: &str,
        factors: Vec<AuthFactor>,
        minutes: u32,
        custom_claims: Map<String, Value>,
        client: ClientInfo,
        created_via: &str,
        now: i64,
        writes: &mut Vec<Write>,
    ) -> Result<(Session, String), Error> {
        let session = Session {
            session_id: ids::new(IdKind::Session, self.env),
            user_id: user_id.to_owned(),
            started_at_ms: now,
            last_accessed_at_ms: now,
            expires_at_ms: (now + i64::from(minutes) * 60_000).min(now + self.absolute_lifetime_ms),
            factors,
            attributes: client,
            custom_claims,
        };
        let token = token::new_native_token();
        let digest = Digest::of(token.as_bytes());
        let ttl = self.record_ttl(session.expires_at_ms, now);
        // The indexes before the record that makes the token valid: in a Redis Cluster the
        // batch is applied per hash tag, and a batch cut short must not leave a valid session
        // that revocation by id or by user cannot find.
        writes.push(Write::Put {
            key: self.keys.session_token(&session.session_id),
            value: digest.to_hex().into_bytes(),
            ttl: Some(ttl),
        });
        writes.push(Write::SetAdd {
            key: self.keys.user_sessions(user_id),
            member: session.session_id.clone().into_bytes(),
            ttl: Some(ttl),
        });
        writes.push(Write::Put {
            key: self.keys.session(&digest),
            value: Self::encode(&session)?,
            ttl: Some(ttl),
        });
        writes.push(Write::Event(self.event(
            "session.created",
            json!({
                "session_id": session.session_id,
                "user_id": user_id,
                "created_via": created_via,
                "expires_at": session.expires_at_ms.div_euclid(1000),
            }),
        )));
        Ok((session, token))
    }

    // === Lookups shared with validation ===

    /// The digest of a session's token, from its id.
    async fn digest_of(&self, session_id: &str) -> Result<Option<Digest>, Error> {
        if !ids::may_be(IdKind::Session, self.env, session_id) {
            return Ok(None);
        }
        let Some(hex) = self.store.get(&self.keys.session_token(session_id)).await? else {
            return Ok(None);
        };
        let mut d = [0u8; 32];
        hex::decode_to_slice(&hex, &mut d)
            .map_err(|e| Error::internal(format!("token index: {e}")))?;
        Ok(Some(Digest::from_bytes(d)))
    }

    /// Where the session with token digest `d` stands, in one round trip.
    pub(super) async fn lookup(&self, d: &Digest, now: i64) -> Result<Lookup, Error> {
        let got = self
            .store
            .get_many(&[self.keys.session(d), self.keys.tombstone(d)])
            .await?;
        Ok(
            match (
                got.first().cloned().flatten(),
                got.get(1).cloned().flatten(),
            ) {
                (Some(rec), _) => {
                    let s: Session = Self::decode(&rec)?;
                    if s.expires_at_ms <= now {
                        Lookup::Expired(Box::new(s))
                    } else {
                        Lookup::Active(Box::new(s), *d)
                    }
                }
                (None, Some(_)) => Lookup::Revoked,
                (None, None) => Lookup::NotFound,
            },
        )
    }

    pub(super) async fn lookup_by_id(&self, session_id: &str, now: i64) -> Result<Lookup, Error> {
        match self.digest_of(session_id).await? {
            Some(d) => self.lookup(&d, now).await,
            None => Ok(Lookup::NotFound),
        }
    }

    // === RevokeSession ===

    /// Revokes the target; returns how many sessions this call revoked (0 if it already was).
    pub async fn revoke(&self, target: RevokeTarget, caller: &Caller) -> Result<u32, Error> {
        let now = self.clock.now_ms();
        let not_found = || {
            Error::new(
                ErrorCode::NotFound,
                ErrorReason::SessionNotFound,
                "no such session",
            )
        };
        match target {
            RevokeTarget::SessionId(id) => {
                let d = self.digest_of(&id).await?.ok_or_else(not_found)?;
                self.revoke_digest(&d, now).await
            }
            RevokeTarget::SessionToken(t) => {
                if !matches!(token::classify(&t), Ok(Shape::NativeOpaque)) {
                    return Err(Error::invalid_argument(
                        ErrorReason::NotASessionToken,
                        "session_token must be a sessiongate session token (sgs_…)",
                    ));
                }
                self.revoke_digest(&Digest::of(t.as_bytes()), now).await
            }
            RevokeTarget::SessionJwt(jwt) => {
                let verified = self.verify_own_jwt(&jwt).map_err(|r| {
                    Error::invalid_argument(
                        ErrorReason::NotASessionJwt,
                        format!(
                            "session_jwt is not a valid session JWT of this deployment ({})",
                            r.as_str()
                        ),
                    )
                })?;
                let d = self
                    .digest_of(verified.session_id())
                    .await?
                    .ok_or_else(not_found)?;
                self.revoke_digest(&d, now).await
            }
            RevokeTarget::LegacyToken(t) => self.revoke_legacy(&t, now).await,
            RevokeTarget::UserId(user_id) => {
                caller.require_authenticated("RevokeSession by user_id")?;
                let user = self.load_user(&user_id).await?;
                self.revoke_listed(&self.keys.user_sessions(&user.user_id), now)
                    .await
            }
        }
    }

    /// Verifies a native JWT's signature and claims, accepting it past its expiry (revoking
    /// with an expired JWT is fine: the session may still be alive).
    fn verify_own_jwt(&self, jwt: &str) -> Result<VerifiedJwt, super::Reason> {
        let Ok(Shape::Jws(jws)) = token::classify(jwt) else {
            return Err(super::Reason::Malformed);
        };
        let header = token::header(&jws)?;
        let claims = token::payload(&jws)?;
        self.issuer
            .verify(&jws, &header, claims, self.clock.now_secs())
    }

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
                    self.revoked_sid_write(&s.session_id, until, now.div_euclid(1000)),
                    Write::Delete {
                        key: self.keys.session(d),
                    },
                    Write::Put {
                        key: self.keys.tombstone(d),
                        value: Self::encode(&tombstone)?,
                        ttl: Some(ttl),
                    },
                    Write::SetRemove {
                        key: self.keys.user_sessions(&s.user_id),
                        member: s.session_id.clone().into_bytes(),
                    },
                    Write::Event(self.event(
                        "session.revoked",
                        json!({"session_id": s.session_id, "user_id": s.user_id}),
                    )),
                ];
                self.store.write(writes).await?;
                self.broadcast(&s.session_id, until, now).await?;
                metrics::counter!("sessiongate_sessions_revoked_total").increment(1);
                Ok(1)
            }
            Lookup::Revoked => {
                // Already revoked. Broadcast again anyway: if the first attempt stored the
                // revocation but failed to publish it, this retry is what reaches the other
                // replicas.
                let stored = self.store.get(&self.keys.tombstone(d)).await?;
                if let Some(t) = stored {
                    let t: Tombstone = Self::decode(&t)?;
                    // And store the sid again: idempotent, and it completes a revocation
                    // whose batch was cut short.
                    self.store
                        .write(vec![self.revoked_sid_write(
                            &t.session_id,
                            until,
                            now.div_euclid(1000),
                        )])
                        .await?;
                    self.broadcast(&t.session_id, until, now).await?;
                }
                Ok(0)
            }
            Lookup::NotFound => Err(Error::new(
                ErrorCode::NotFound,
                ErrorReason::SessionNotFound,
                "no such session",
            )),
        }
    }

    /// Deny-lists a provider's token until it expires (JWT) or for the provider's maximum
    /// token lifetime (opaque). Only a token that verifies (or an opaque one the legacy
    /// provider would be asked about) is accepted, so the set holds nothing arbitrary.
    async fn revoke_legacy(&self, token: &str, now_ms: i64) -> Result<u32, Error> {
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
                    Err(Ok(super::Reason::Expired)) => {
                        return self
                            .revoke_sessions_migrated_from(&signed_digest(&jws), now_ms)
                            .await;
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
        // A cached UserInfo answer must not outlive the revocation, nor a migration's replay
        // record (it holds a session to hand out again).
        writes.push(Write::Delete {
            key: self.keys.userinfo(&digest),
        });
        writes.push(Write::Delete {
            key: self.keys.replay(&digest),
        });
        writes.push(Write::Event(self.event(
            "legacy_token.revoked",
            json!({"token_fingerprint": digest.fingerprint()}),
        )));
        self.store.write(writes).await?;
        for id in ids.all() {
            self.broadcast(id, until, now_ms).await?;
        }
        metrics::counter!("sessiongate_legacy_tokens_revoked_total").increment(1);
        // Denied first, so that a migration racing this revocation refuses on its own; then
        // the sessions already minted from the token ("one revoke across both providers").
        Ok(1 + self
            .revoke_sessions_migrated_from(&ids.signed, now_ms)
            .await?)
    }

    /// Whether a provider token is on the deny-list: the in-process revoked set that every
    /// replica keeps, fed like the revoked sids.
    pub(super) fn denied(&self, ids: &LegacyIds) -> bool {
        ids.all().any(|id| self.revoked.contains(id))
    }

    /// Revokes every session minted by migrating the legacy token whose signed digest is
    /// `signed`; returns how many were still live.
    pub(super) async fn revoke_sessions_migrated_from(
        &self,
        signed: &Digest,
        now: i64,
    ) -> Result<u32, Error> {
        self.revoke_listed(&self.keys.migrated_sessions(signed), now)
            .await
    }

    /// Revokes every session whose id the set `key` lists (a user's, a legacy token's);
    /// returns how many were still live. One that has expired and gone meanwhile is skipped.
    async fn revoke_listed(&self, key: &crate::store::Key, now: i64) -> Result<u32, Error> {
        let mut revoked = 0;
        for sid in self.store.set_members(key).await? {
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

    /// Adds a revoked native sid to the shared set until every JWT naming it has expired.
    fn revoked_sid_write(&self, sid: &str, until: i64, now_secs: i64) -> Write {
        RevokedSids::write(&self.keys, sid, until, now_secs)
    }

    async fn broadcast(&self, sid: &str, until: i64, now_ms: i64) -> Result<(), Error> {
        self.revoked.insert(sid, until, now_ms.div_euclid(1000));
        let msg = serde_json::to_vec(&Invalidation::Revoke {
            sid: sid.to_owned(),
            until,
        })
        .map_err(Error::internal)?;
        self.store.publish(&msg).await?;
        Ok(())
    }
}

// === Input checks ===

fn field_too_large(field: &str, max: usize) -> Error {
    Error::invalid_argument(
        ErrorReason::FieldTooLarge,
        format!("{field} is longer than {max} bytes"),
    )
}

fn check_len(field: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.len() > max {
        Err(field_too_large(field, max))
    } else {
        Ok(())
    }
}

/// The requested session length, or the default; out-of-range values are refused, not
/// clamped (a caller asking for 10 years should hear no).
pub(crate) fn session_minutes(requested: u32, default: u32) -> Result<u32, Error> {
    match requested {
        0 => Ok(default),
        m if (SESSION_MINUTES_MIN..=SESSION_MINUTES_MAX).contains(&m) => Ok(m),
        m => Err(Error::invalid_argument(
            ErrorReason::SessionDurationOutOfRange,
            format!(
                "session_duration_minutes {m} is outside {SESSION_MINUTES_MIN}..={SESSION_MINUTES_MAX}"
            ),
        )),
    }
}

pub(crate) fn check_custom_claims(claims: &Map<String, Value>) -> Result<(), Error> {
    if let Some(k) = claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(Error::invalid_argument(
            ErrorReason::ReservedClaim,
            format!(
                "custom claim `{k}` is reserved; reserved names: {}",
                RESERVED_CLAIMS.join(", ")
            ),
        ));
    }
    let size = serde_json::to_vec(claims)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_CUSTOM_CLAIMS_BYTES {
        return Err(field_too_large(
            "session_custom_claims (as JSON)",
            MAX_CUSTOM_CLAIMS_BYTES,
        ));
    }
    Ok(())
}

pub(crate) fn check_factors(factors: &[AuthFactor]) -> Result<(), Error> {
    if factors.len() > 16 {
        return Err(Error::invalid_argument(
            ErrorReason::FieldTooLarge,
            "at most 16 authentication_factors",
        ));
    }
    for f in factors {
        check_len("authentication_factors.type", &f.kind, 64)?;
        check_len("authentication_factors.delivery", &f.delivery, 128)?;
    }
    Ok(())
}

pub(crate) fn check_client(c: &ClientInfo) -> Result<(), Error> {
    check_len("client.ip_address", &c.ip_address, 64)?;
    check_len("client.user_agent", &c.user_agent, 512)
}

/// At most 64 characters of caller input in a message.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{MigrateRequest, ValidateRequest};

    #[test]
    fn types_that_carry_tokens_print_none_of_them() {
        let secret = "sgs_THE-SECRET-TOKEN";
        let shown = [
            format!("{:?}", RevokeTarget::SessionToken(secret.into())),
            format!("{:?}", RevokeTarget::LegacyToken(secret.into())),
            format!("{:?}", RevokeTarget::SessionJwt(secret.into())),
            format!(
                "{:?}",
                MigrateRequest {
                    legacy_token: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ValidateRequest {
                    token: secret.into(),
                    ..Default::default()
                }
            ),
        ];
        for s in shown {
            assert!(!s.contains("SECRET"), "{s}");
            assert!(s.contains("redacted"), "{s}");
        }
    }
}
