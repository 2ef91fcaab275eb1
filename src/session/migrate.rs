//! `MigrateSession`: a still-valid legacy access token becomes a native session, without the
//! user logging in again (docs/design.md, "Migration").
//!
//! Provider choice, local verification of JWT legacy tokens first (signature, issuer,
//! audience, allowed client ids — so tokens issued to other clients never reach the
//! provider), the UserInfo call with its status mapping, `sub` agreement, identity linking by
//! `(provider, sub)` claimed atomically across replicas, the new session — and the replay
//! window: one migration per legacy token across replicas (single-flight through a store
//! lock), its outcome sealed under a key derived from the token and replayed to concurrent
//! and repeated calls; linking by a verified email when the provider allows it
//! (`IDENTITY_CONFLICT` when that user already is another subject of the provider); rate
//! limits per caller and per legacy identity.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use serde_json::{Map, Value, json};

use super::model::{AuthFactor, ClientInfo, LegacyIdentity, User};
use super::providers::Provider;
use super::service::{
    Created, LegacyIds, SessionService, check_client, check_custom_claims, session_minutes,
};
use super::token::{self, Redacted, Shape};
use crate::config::Policy;
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::ids::{self, IdKind};
use crate::store::Write;
use crate::store::keys::{Digest, Key, Keys};
use crate::upstream::userinfo::UserInfoOutcome;

/// A `MigrateSession` call, decoded.
#[derive(Clone, Default)]
pub struct MigrateRequest {
    /// The calling client's name (rate limits are per caller).
    pub caller: String,
    pub legacy_token: String,
    pub provider: String,
    pub duration_minutes: u32,
    pub custom_claims: Map<String, Value>,
    pub client: ClientInfo,
}

impl std::fmt::Debug for MigrateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateRequest")
            .field("caller", &self.caller)
            .field("legacy_token", &Redacted(&self.legacy_token))
            .field("provider", &self.provider)
            .field("duration_minutes", &self.duration_minutes)
            .finish_non_exhaustive()
    }
}

/// How long a migration's outcome is replayed.
const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// How long a refusal (401, 429, …) is replayed.
const REPLAY_REFUSAL: Duration = Duration::from_secs(10);
/// A migration's lock outlives its longest allowed work: the provider's UserInfo timeout,
/// plus this for the rest — a JWKS fetch (bounded at 5 s) and the store's round trips. A lock
/// that expired mid-work would let a second migration of the same token start.
const REPLAY_LOCK_MARGIN: Duration = Duration::from_secs(10);
/// How long a concurrent call waits for the migration in progress.
const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// A migration outcome as stored for replays — encrypted, because it holds a session token.
#[derive(Serialize, Deserialize)]
// Built once per migration and serialised at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Done {
        user: User,
        session: super::model::Session,
        session_token: String,
        session_jwt: String,
        user_created: bool,
    },
    Refused {
        code: ErrorCode,
        reason: ErrorReason,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

/// Where and how one legacy token's migration is recorded. The record sits under the
/// token's digest and is sealed with AES-256-GCM under a key derived from the token itself:
/// only a holder of the legacy token can read the session it was exchanged for.
struct Replay {
    record: crate::store::Key,
    lock: crate::store::Key,
    /// This call's lock value: only the owner releases the lock.
    owner: [u8; 16],
    key: LessSafeKey,
}

impl Replay {
    fn new(keys: &crate::store::keys::Keys, token: &str) -> Self {
        let digest = Digest::of(token.as_bytes());
        // Domain-separated from the digest that names the record.
        let derived = Digest::of(format!("sessiongate replay key v1\0{token}").as_bytes());
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, derived.as_bytes()).expect("32-byte key"),
        );
        Self {
            record: keys.replay(&digest),
            lock: keys.replay_lock(&digest),
            owner: rand::random(),
            key,
        }
    }

    /// Releases the lock if this call still holds it.
    async fn release(&self, store: &dyn crate::store::Store) -> Result<(), Error> {
        store.delete_if_equals(&self.lock, &self.owner).await?;
        Ok(())
    }

    async fn read(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<Option<Result<Created, Error>>, Error> {
        let Some(sealed) = store.get(&self.record).await? else {
            return Ok(None);
        };
        if sealed.len() < 12 {
            return Ok(None);
        }
        let (nonce, body) = sealed.split_at(12);
        let mut body = body.to_vec();
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::internal("replay nonce"))?;
        let Ok(plain) = self.key.open_in_place(nonce, Aad::empty(), &mut body) else {
            // Not sealed with this token's key: ignore it rather than trust it.
            return Ok(None);
        };
        // A fixed message: a parser's error quotes the input, and this one holds a session
        // token.
        let outcome: Outcome = serde_json::from_slice(plain).map_err(|_| {
            tracing::error!("a migration replay record does not parse");
            Error::internal("a migration replay record does not parse")
        })?;
        Ok(Some(match outcome {
            Outcome::Done {
                user,
                session,
                session_token,
                session_jwt,
                user_created,
            } => Ok(Created {
                user,
                session,
                session_token,
                session_jwt,
                user_created,
            }),
            Outcome::Refused {
                code,
                reason,
                message,
                retry_after_ms,
            } => {
                let mut e = Error::new(code, reason, message);
                e.retry_after = retry_after_ms.map(Duration::from_millis);
                Err(e)
            }
        }))
    }

    /// Records the outcome (when it is worth replaying) and releases the lock, atomically.
    async fn finish(
        &self,
        store: &dyn crate::store::Store,
        result: &Result<Created, Error>,
    ) -> Result<(), Error> {
        let (outcome, ttl) = match result {
            Ok(c) => (
                Outcome::Done {
                    user: c.user.clone(),
                    session: c.session.clone(),
                    session_token: c.session_token.clone(),
                    session_jwt: c.session_jwt.clone(),
                    user_created: c.user_created,
                },
                REPLAY_WINDOW,
            ),
            // Our own rate limits are about the caller, not the token: never replayed.
            Err(e)
                if e.reason != ErrorReason::RateLimited
                    && matches!(
                        e.code,
                        ErrorCode::Unauthenticated
                            | ErrorCode::ResourceExhausted
                            | ErrorCode::FailedPrecondition
                    ) =>
            {
                (
                    Outcome::Refused {
                        code: e.code,
                        reason: e.reason,
                        message: e.message.clone(),
                        retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
                    },
                    REPLAY_REFUSAL,
                )
            }
            // Transient failures are not replayed: the next call tries again.
            Err(_) => return self.release(store).await,
        };
        let mut body = serde_json::to_vec(&outcome).map_err(Error::internal)?;
        let nonce_bytes: [u8; 12] = rand::random();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::empty(),
                &mut body,
            )
            .map_err(|_| Error::internal("sealing the replay record"))?;
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend(body);
        // The record first: a waiter that finds the lock gone finds the outcome.
        store
            .write(vec![Write::Put {
                key: self.record.clone(),
                value: sealed,
                ttl: Some(ttl),
            }])
            .await?;
        self.release(store).await
    }
}

fn rejected(why: &str) -> Error {
    Error::new(
        ErrorCode::Unauthenticated,
        ErrorReason::LegacyTokenRejected,
        format!("the legacy token was refused: {why}"),
    )
}

impl SessionService {
    /// Migrates, at most once per legacy token within the replay window, across replicas:
    /// the first call (anywhere) does the work; concurrent and repeated calls get its
    /// result, `replayed`. The work runs in its own task, so a caller giving up mid-way
    /// never leaves a half-made migration that a retry cannot find.
    pub async fn migrate(self: &Arc<Self>, req: MigrateRequest) -> Result<(Created, bool), Error> {
        if req.legacy_token.is_empty() {
            return Err(Error::invalid_argument(
                ErrorReason::TokenRequired,
                "legacy_token is empty",
            ));
        }
        if req.legacy_token.len() > self.max_token_bytes {
            return Err(Error::invalid_argument(
                ErrorReason::FieldTooLarge,
                "legacy_token is larger than the token size cap",
            ));
        }
        let provider = self.migration_provider(&req.provider)?;
        // The all-at-once cutover: a retired provider's tokens are valid for nothing, least
        // of all for a new session.
        if provider.policy() == Policy::Reject {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                ErrorReason::LegacyRetired,
                format!(
                    "provider `{}` is retired (policy = \"reject\"): its tokens no longer migrate; sign in again",
                    provider.name()
                ),
            ));
        }
        // The deny-list before anything else — before the replay record, which may hold a
        // session minted before the revocation, and before UserInfo.
        let ids = LegacyIds::of_token(&provider.config.issuer, &req.legacy_token);
        if self.denied(&ids) {
            return Err(rejected("it was revoked"));
        }
        // Nothing that cannot be this provider's token goes further (no replay look-up, no
        // lock, no budget, never upstream): sessiongate's own credentials, strings that could
        // not be a header value, opaque strings of the wrong shape.
        match token::classify(&req.legacy_token) {
            Ok(Shape::Jws(_)) => {}
            Ok(Shape::Other) if provider.opaque_token_plausible(&req.legacy_token) => {}
            _ => return Err(rejected("not a token of this legacy provider")),
        }
        let replay = Replay::new(&self.keys, &req.legacy_token);
        if let Some(done) = replay.read(&*self.store).await? {
            return done.map(|c| (c, true));
        }
        let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            if self
                .store
                .put_if_absent(
                    &replay.lock,
                    &replay.owner,
                    Some(provider.config.userinfo_timeout + REPLAY_LOCK_MARGIN),
                )
                .await?
            {
                // The migration we waited for may have finished between our last look and
                // taking the lock: its outcome stands, not a second migration.
                match replay.read(&*self.store).await {
                    Ok(Some(done)) => {
                        replay.release(&*self.store).await?;
                        return done.map(|c| (c, true));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = replay.release(&*self.store).await;
                        return Err(e);
                    }
                }
            }
            // Another call (on any replica) is migrating this token: wait for its result.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
            if let Some(done) = replay.read(&*self.store).await? {
                return done.map(|c| (c, true));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(
                    ErrorReason::MigrationInProgress,
                    "a migration of this legacy token is still running elsewhere; retry shortly",
                ));
            }
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = this.migrate_once(req, provider, ids).await;
            // Remember the outcome for the replay window (errors that a retry could change —
            // an unavailable dependency — are not remembered), then release the lock.
            if let Err(e) = replay.finish(&*this.store, &result).await {
                tracing::warn!(error = %e, "could not record the migration for replays");
                // Still release the lock, so that a retry need not wait for its TTL.
                let _ = replay.release(&*this.store).await;
            }
            result
        });
        task.await
            .map_err(|e| Error::internal(format!("migration task: {e}")))?
            .map(|c| (c, false))
    }

    /// The migration itself; `migrate` has checked the token's presence, size and shape, the
    /// provider's policy and the deny-list (`ids`).
    async fn migrate_once(
        &self,
        req: MigrateRequest,
        provider: Arc<Provider>,
        ids: LegacyIds,
    ) -> Result<Created, Error> {
        let minutes = session_minutes(req.duration_minutes, self.default_minutes)?;
        check_custom_claims(&req.custom_claims)?;
        check_client(&req.client)?;
        let now = self.clock.now_ms();

        // 1. A JWT is verified locally first: a token of another client or issuer never
        //    reaches the provider (and does not spend its rate limit).
        let jwt_sub = match token::classify(&req.legacy_token) {
            Ok(Shape::Jws(jws)) if provider.accepts_jwt() => {
                let header = token::header(&jws).map_err(|r| rejected(r.as_str()))?;
                let claims = token::payload(&jws).map_err(|r| rejected(r.as_str()))?;
                if claims.get("iss").and_then(Value::as_str)
                    != Some(provider.config.issuer.as_str())
                {
                    return Err(rejected("issued by another issuer"));
                }
                match provider
                    .verify(&jws, &header, claims, now.div_euclid(1000))
                    .await
                {
                    Ok(jwt) => Some(jwt.subject),
                    Err(Ok(reason)) => return Err(rejected(reason.as_str())),
                    Err(Err(e)) => return Err(e),
                }
            }
            Ok(Shape::Jws(_)) => return Err(rejected("this provider does not issue JWTs")),
            Ok(Shape::Other) if provider.accepts_opaque() => None,
            _ => return Err(rejected("not a token of this provider")),
        };

        // Rate limits: per caller, and per legacy identity (a JWT's subject; an opaque token
        // is its own identity until UserInfo names it, and the replay window already bounds
        // one token to one UserInfo call a minute). The caller's budget is for its users'
        // real migrations: it is charged only for a token that checked out — a JWT now, an
        // opaque token once UserInfo vouched for it — so junk cannot spend it. (Junk opaque
        // tokens spend the provider's UserInfo budget instead, which protects the provider.)
        let identity = match &jwt_sub {
            Some(sub) => format!("sub\0{}\0{sub}", provider.name()),
            None => format!(
                "token\0{}",
                Digest::of(req.legacy_token.as_bytes()).to_hex()
            ),
        };
        let per_caller = || {
            self.rate_limit(
                "migrate-caller",
                &req.caller,
                self.migration_limits.per_caller_per_minute,
            )
        };
        let per_identity = self.rate_limit(
            "migrate-identity",
            &identity,
            self.migration_limits.per_identity_per_minute,
        );
        // At once (one round trip of latency). They are also the check that the store is up
        // before the provider is asked: a UserInfo call whose result cannot be stored is
        // wasted (and rate-limited).
        if jwt_sub.is_some() {
            tokio::try_join!(per_caller(), per_identity)?;
        } else {
            per_identity.await?;
        }

        // 2. UserInfo.
        let info = match provider.userinfo(&req.legacy_token).await? {
            UserInfoOutcome::Ok(info) => info,
            UserInfoOutcome::Rejected(status) => {
                return Err(rejected(&format!("UserInfo answered {status}")));
            }
            UserInfoOutcome::Invalid(why) => return Err(provider.unusable_answer(&why)),
            _ => {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    ErrorReason::UserinfoMissingSubject,
                    "the legacy provider's UserInfo answer has no `sub`: the identity cannot be linked",
                ));
            }
        };
        let sub = info
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // UserInfo's `sub` must be the token's (OpenID Connect Core, UserInfo response).
        if jwt_sub.as_ref().is_some_and(|s| *s != sub) {
            return Err(rejected("UserInfo names another subject than the token"));
        }
        if jwt_sub.is_none() {
            per_caller().await?;
        }

        // 3. The user: by (provider, sub), claimed atomically so that concurrent migrations of
        //    one identity on any replica end with one user.
        let (user, user_created, mut writes) =
            self.user_for_identity(&provider, &sub, &info, now).await?;

        // 4. The session.
        let factors = vec![AuthFactor {
            kind: "legacy_migration".into(),
            delivery: provider.name().to_owned(),
            last_authenticated_at_ms: Some(now),
        }];
        let first_session_write = writes.len();
        let (session, session_token) = self.mint_session(
            &user.user_id,
            factors,
            minutes,
            req.custom_claims,
            req.client,
            "migration",
            now,
            &mut writes,
        )?;
        // The legacy token → session index, before the record that makes the session valid:
        // revoking the legacy token must always find what was minted from it.
        writes.insert(
            first_session_write,
            Write::SetAdd {
                key: self.keys.migrated_sessions(&ids.signed),
                member: session.session_id.clone().into_bytes(),
                ttl: Some(self.record_ttl(session.expires_at_ms, now)),
            },
        );
        self.store.write(writes).await?;
        // A revocation of the legacy token that raced this migration (it read the index
        // before our write) is caught here: the session goes the way of the token.
        if self.denied(&ids) {
            self.revoke_sessions_migrated_from(&ids.signed, now).await?;
            return Err(rejected("it was revoked"));
        }
        let session_jwt = self.issuer.mint(&session, now)?;
        metrics::counter!("sessiongate_migrations_total", "provider" => provider.name().to_owned(), "outcome" => if user_created { "user_created" } else { "user_found" })
            .increment(1);
        Ok(Created {
            user,
            session,
            session_token,
            session_jwt,
            user_created,
        })
    }

    /// One more call of `subject` in the current one-minute window of `bucket`; refused past
    /// `limit`, with the time left in the window as retry-after.
    async fn rate_limit(&self, bucket: &str, subject: &str, limit: u32) -> Result<(), Error> {
        let key = self.keys.rate(bucket, &Digest::of(subject.as_bytes()));
        let n = self.store.incr(&key, Duration::from_secs(60)).await?;
        if n <= u64::from(limit) {
            return Ok(());
        }
        let left = self
            .store
            .ttl(&key)
            .await
            .ok()
            .flatten()
            .flatten()
            .unwrap_or(Duration::from_secs(60));
        Err(Error::new(
            ErrorCode::ResourceExhausted,
            ErrorReason::RateLimited,
            format!(
                "more than {limit} migrations a minute for this {}; retry later",
                if bucket.ends_with("caller") {
                    "caller"
                } else {
                    "legacy identity"
                }
            ),
        )
        .with_retry_after(left))
    }

    fn migration_provider(&self, name: &str) -> Result<Arc<Provider>, Error> {
        let legacy: Vec<&Arc<Provider>> = self.providers.all().filter(|p| p.is_legacy()).collect();
        let found = if name.is_empty() {
            match legacy.as_slice() {
                [one] => Some(*one),
                [] => None,
                _ => {
                    return Err(Error::invalid_argument(
                        ErrorReason::ProviderRequired,
                        "several legacy providers are configured: name one in `provider`",
                    ));
                }
            }
        } else {
            legacy.iter().find(|p| p.name() == name).copied()
        };
        found.cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::FailedPrecondition,
                ErrorReason::ProviderNotFound,
                "no such legacy provider is configured",
            )
        })
    }

    /// The user `(provider, sub)` is linked to, if any. Links are keyed by the provider's
    /// issuer. A link written before that is keyed by the provider's name, and it is trusted
    /// only while that name stands for the issuer it stood for when such a link was first read
    /// (the first read records it): a provider re-pointed at another issuer must not inherit
    /// the old issuer's users. A trusted one is re-written under the issuer.
    pub(super) async fn linked_user(
        &self,
        provider: &Provider,
        sub: &str,
    ) -> Result<Option<String>, Error> {
        let utf8 = |id: Vec<u8>| String::from_utf8(id).map_err(Error::internal);
        let index = identity_index(&self.keys, provider, sub);
        let by_name = self.keys.identity_by_name(&Digest::of(
            format!("{}\0{sub}", provider.name()).as_bytes(),
        ));
        // Both indexes in one round trip: this runs on every validation of a legacy subject
        // that has not migrated.
        let mut found = self.store.get_many(&[index.clone(), by_name]).await?;
        let (old, new) = (found.pop().flatten(), found.pop().flatten());
        if let Some(id) = new {
            return utf8(id).map(Some);
        }
        let Some(id) = old else {
            return Ok(None);
        };
        if !self.old_links_trusted(provider).await? {
            return Ok(None);
        }
        let id = utf8(id)?;
        if self
            .store
            .put_if_absent(&index, id.as_bytes(), None)
            .await?
        {
            return Ok(Some(id));
        }
        // Re-indexed (or newly linked) by another call meanwhile: that entry decides.
        self.store.get(&index).await?.map(utf8).transpose()
    }

    /// Whether links made under this provider's name (before links were keyed by issuer) are
    /// its own: the name still stands for the issuer it stood for when such a link was first
    /// read. Asked of the store once per provider and process — the answer cannot change
    /// while this process's configuration does not.
    async fn old_links_trusted(&self, provider: &Provider) -> Result<bool, Error> {
        let decided = provider.old_links_trusted.get_or_try_init(|| async {
            let bound = self
                .keys
                .provider_issuer(&Digest::of(provider.name().as_bytes()));
            let issuer = provider.config.issuer.as_bytes();
            let trusted = self.store.put_if_absent(&bound, issuer, None).await?
                || self.store.get(&bound).await?.as_deref() == Some(issuer);
            if !trusted {
                tracing::warn!(
                    provider = provider.name(),
                    "a link made when this provider name stood for another issuer is ignored"
                );
            }
            Ok::<_, Error>(trusted)
        });
        decided.await.copied()
    }

    /// The user linked to `(provider, sub)`, created (and linked) if there is none yet.
    /// Returns the writes still to make with the session.
    async fn user_for_identity(
        &self,
        provider: &Provider,
        sub: &str,
        info: &Map<String, Value>,
        now: i64,
    ) -> Result<(User, bool, Vec<Write>), Error> {
        let index = identity_index(&self.keys, provider, sub);
        let text = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let email = text("email").trim().to_ascii_lowercase();
        let verified =
            info.get("email_verified").and_then(Value::as_bool) == Some(true) && !email.is_empty();
        // An existing link decides; else, when allowed, a user who owns the same *verified*
        // email; else a new user.
        let linked = self.linked_user(provider, sub).await?;
        let by_email = match (&linked, provider.config.link_verified_email && verified) {
            (None, true) => match self
                .store
                .get(&self.keys.email(&Digest::of(email.as_bytes())))
                .await?
            {
                Some(id) => Some(String::from_utf8(id).map_err(Error::internal)?),
                None => None,
            },
            _ => None,
        };
        let identity = provider.identity(sub);
        // The conflict is checked before the identity is claimed: a user found by email who
        // already is another subject of this provider refuses the link, and the index must
        // never point at a user that refuses it.
        if let Some(uid) = &by_email
            && let Some(bytes) = self.store.get(&self.keys.user(uid)).await?
        {
            let user: User = Self::decode(&bytes)?;
            if conflicts(&user, &identity) {
                return Err(identity_conflict(provider));
            }
        }
        let candidate = by_email
            .clone()
            .unwrap_or_else(|| ids::new(IdKind::User, self.env));
        // The identity index decides: whoever sets it first owns the identity.
        let (user_id, won) = match linked {
            Some(id) => (id, false),
            None => {
                if self
                    .store
                    .put_if_absent(&index, candidate.as_bytes(), None)
                    .await?
                {
                    (candidate, true)
                } else {
                    let id = self.store.get(&index).await?.ok_or_else(|| {
                        Error::unavailable(
                            ErrorReason::StoreUnavailable,
                            "identity index vanished; retry",
                        )
                    })?;
                    (String::from_utf8(id).map_err(Error::internal)?, false)
                }
            }
        };
        if let Some(mut bytes) = self.store.get(&self.keys.user(&user_id)).await? {
            // Linked to an existing user: add the identity to the record by compare-and-swap,
            // so that two identities linked at once (two providers, one email) both stay.
            for _ in 0..8 {
                let mut user: User = Self::decode(&bytes)?;
                if user
                    .legacy_identities
                    .iter()
                    .any(|li| li.same_account(&identity))
                {
                    return Ok((user, false, Vec::new()));
                }
                if conflicts(&user, &identity) {
                    if won {
                        // Lost a race to another subject of the same provider: undo our
                        // claim (only if it is still ours).
                        let _ = self
                            .store
                            .delete_if_equals(&index, user_id.as_bytes())
                            .await;
                    }
                    return Err(identity_conflict(provider));
                }
                user.legacy_identities.push(identity.clone());
                if self
                    .store
                    .compare_and_swap(&self.keys.user(&user_id), &bytes, &Self::encode(&user)?)
                    .await?
                {
                    return Ok((user, false, Vec::new()));
                }
                bytes = self
                    .store
                    .get(&self.keys.user(&user_id))
                    .await?
                    .ok_or_else(|| {
                        Error::unavailable(
                            ErrorReason::StoreUnavailable,
                            "user record vanished; retry",
                        )
                    })?;
            }
            return Err(Error::unavailable(
                ErrorReason::StoreUnavailable,
                "the user record is changing too fast to link this identity; retry",
            ));
        }
        if won && verified {
            // A new user owns their verified email for later links (first owner wins).
            let _ = self
                .store
                .put_if_absent(
                    &self.keys.email(&Digest::of(email.as_bytes())),
                    user_id.as_bytes(),
                    None,
                )
                .await?;
        }
        // New — or the record is not written yet (the winner of a concurrent migration is
        // about to, or crashed in between): write it; only the winner reports a creation.
        let user = User {
            user_id: user_id.clone(),
            email: text("email"),
            email_verified: info
                .get("email_verified")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name: text("name"),
            legacy_identities: vec![identity],
            created_at_ms: now,
        };
        let mut writes = vec![Write::Put {
            key: self.keys.user(&user_id),
            value: Self::encode(&user)?,
            ttl: None,
        }];
        if won {
            writes.push(Write::Event(self.event(
                "user.created",
                json!({"user_id": user_id, "created_via": "migration", "provider": provider.name()}),
            )));
        }
        Ok((user, won, writes))
    }
}

/// Whether linking `identity` to `user` would make one person two subjects of one provider.
fn conflicts(user: &User, identity: &LegacyIdentity) -> bool {
    user.legacy_identities
        .iter()
        .any(|li| li.same_provider(identity) && li.subject != identity.subject)
}

/// Where the user a provider's subject is linked to is found.
fn identity_index(keys: &Keys, provider: &Provider, sub: &str) -> Key {
    keys.identity(&Digest::of(
        format!("{}\0{sub}", provider.config.issuer).as_bytes(),
    ))
}

fn identity_conflict(provider: &Provider) -> Error {
    Error::new(
        ErrorCode::FailedPrecondition,
        ErrorReason::IdentityConflict,
        format!(
            "the verified email belongs to a user already linked to another `{}` account",
            provider.name()
        ),
    )
}
