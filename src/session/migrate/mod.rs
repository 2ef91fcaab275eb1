//! `MigrateSession`: a still-valid legacy access token becomes a native session, without the
//! user logging in again (docs/design.md, "Migration").
//!
//! Provider choice, local verification of JWT legacy tokens first (signature, issuer,
//! audience, allowed client ids — so tokens issued to other clients never reach the
//! provider), the UserInfo call with its status mapping, `sub` agreement, identity linking
//! (`link`), the new session (minted as `CreateSession` mints), the replay window
//! (`session::replay`) and rate limits per caller and per legacy identity.

mod link;
mod proof;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub(crate) use link::Links;

use super::model::{AuthFactor, ClientInfo, MIGRATION_FACTOR, Redacted};
use super::native::{Created, NativeSessions, check_client, check_custom_claims, session_minutes};
use super::providers::{LegacyIds, Provider, ProviderTokens, RevokedToken};
use super::replay::Replay;
use super::token::{self, Shape};
use crate::config::{Config, LogoutRevokes, MigrationConfig, Policy};
use crate::error::{Error, ErrorCode, ErrorReason};
use crate::store::keys::{Digest, Keys};
use crate::store::{Store, Write};
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

fn rejected(why: &str) -> Error {
    Error::new(
        ErrorCode::Unauthenticated,
        ErrorReason::LegacyTokenRejected,
        format!("the legacy token was refused: {why}"),
    )
}

/// Migrates legacy tokens to native sessions.
pub struct Migrator {
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn crate::clock::Clock>,
    native: Arc<NativeSessions>,
    providers: Arc<ProviderTokens>,
    links: Links,
    limits: MigrationConfig,
    max_token_bytes: usize,
}

impl Migrator {
    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn crate::clock::Clock>,
        native: Arc<NativeSessions>,
        providers: Arc<ProviderTokens>,
    ) -> Self {
        Self {
            keys: Keys::new(cfg.env),
            links: Links::new(cfg.env, store.clone()),
            limits: cfg.migration.clone(),
            max_token_bytes: cfg.server.max_token_bytes,
            store,
            clock,
            native,
            providers,
        }
    }

    /// After `RevokeSession{legacy_token}`: what was made from the token goes with it — the
    /// sessions migrated from it, and the replay record that would hand one out again.
    /// Returns how many sessions were still live.
    pub async fn revoke_made_from(&self, token: &RevokedToken) -> Result<u32, Error> {
        self.store
            .write(vec![Write::Delete {
                key: self.keys.replay(&token.digest),
            }])
            .await?;
        self.revoke_sessions_migrated_from(&token.signed).await
    }

    /// A back-channel logout from a provider: its tokens of that login are revoked (see
    /// `ProviderTokens::backchannel_logout`), and, when the provider's setting says `all`, the
    /// sessions migrated from that identity that started before the logout. Returns how many
    /// sessions that revoked.
    pub async fn backchannel_logout(&self, provider: &str, token: &str) -> Result<u32, Error> {
        let logout = self.providers.backchannel_logout(provider, token).await?;
        let (true, LogoutRevokes::All, Some(sub)) = (logout.fresh, logout.revokes, &logout.sub)
        else {
            return Ok(0);
        };
        let Some(user_id) = self.links.migrated_user(&logout.provider, sub).await? else {
            return Ok(0);
        };
        let mut revoked = 0;
        for s in self.native.list_user(&user_id).await? {
            let from_here = s.created_via() == "migration"
                && s.factors
                    .first()
                    .is_some_and(|f| f.delivery == logout.provider.name());
            // A session started after the logout is a new login's, not the one logged out.
            if from_here && s.started_at_ms.div_euclid(1000) <= logout.at {
                revoked += self.native.revoke_id(&s.session_id).await?;
            }
        }
        Ok(revoked)
    }

    /// Revokes every session minted by migrating the legacy token whose signed digest is
    /// `signed`; returns how many were still live.
    async fn revoke_sessions_migrated_from(&self, signed: &Digest) -> Result<u32, Error> {
        self.native
            .revoke_listed(&self.keys.migrated_sessions(signed), self.clock.now_ms())
            .await
    }

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
        if self.providers.denied(&ids) {
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
        let work_limit = provider.config.userinfo_timeout;
        let this = self.clone();
        Replay::migration(&self.keys, &req.legacy_token)
            .run(self.store.clone(), work_limit, async move {
                this.migrate_once(req, provider, ids).await
            })
            .await
    }

    /// The migration itself; `migrate` has checked the token's presence, size and shape, the
    /// provider's policy and the deny-list (`ids`).
    async fn migrate_once(
        &self,
        req: MigrateRequest,
        provider: Arc<Provider>,
        ids: LegacyIds,
    ) -> Result<Created, Error> {
        let minutes = session_minutes(req.duration_minutes, self.native.default_minutes())?;
        check_custom_claims(&req.custom_claims)?;
        check_client(&req.client)?;
        let now = self.clock.now_ms();

        // 1. A JWT is verified locally first: a token of another client or issuer never
        //    reaches the provider (and does not spend its rate limit).
        let jwt = match token::classify(&req.legacy_token) {
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
                    Ok(jwt) => Some(jwt),
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
        let identity = match &jwt {
            Some(jwt) => format!("sub\0{}\0{}", provider.name(), jwt.subject),
            None => format!(
                "token\0{}",
                Digest::of(req.legacy_token.as_bytes()).to_hex()
            ),
        };
        let per_caller = || {
            self.rate_limit(
                "migrate-caller",
                &req.caller,
                self.limits.per_caller_per_minute,
            )
        };
        let per_identity = self.rate_limit(
            "migrate-identity",
            &identity,
            self.limits.per_identity_per_minute,
        );
        // At once (one round trip of latency). They are also the check that the store is up
        // before the provider is asked: a UserInfo call whose result cannot be stored is
        // wasted (and rate-limited).
        if jwt.is_some() {
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
        if jwt.as_ref().is_some_and(|j| j.subject != sub) {
            return Err(rejected("UserInfo names another subject than the token"));
        }
        if jwt.is_none() {
            per_caller().await?;
        }

        // 3. The user: by (provider, sub), claimed atomically so that concurrent migrations of
        //    one identity on any replica end with one user.
        let (user, user_created, mut writes) = self
            .links
            .user_for_identity(&provider, &sub, &info, now)
            .await?;

        // 4. The session: the migration itself, then what the legacy login proved (from the
        //    verified JWT, else from UserInfo's answer), so that a step-up rule does not send
        //    the user through MFA again because the provider changed.
        let mut factors = vec![AuthFactor {
            kind: MIGRATION_FACTOR.into(),
            delivery: provider.name().to_owned(),
            last_authenticated_at_ms: Some(now),
            ..Default::default()
        }];
        let proven_by = jwt.as_ref().map_or(&info, |j| &*j.claims);
        factors.extend(proof::factors(proven_by, provider.name(), now));
        let first_session_write = writes.len();
        let (session, session_token) = self.native.mint_session(
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
                ttl: Some(self.native.record_ttl(session.expires_at_ms, now)),
            },
        );
        self.store.write(writes).await?;
        // A revocation of the legacy token that raced this migration (it read the index
        // before our write) is caught here: the session goes the way of the token.
        if self.providers.denied(&ids) {
            self.revoke_sessions_migrated_from(&ids.signed).await?;
            return Err(rejected("it was revoked"));
        }
        metrics::counter!("sessiongate_migrations_total", "provider" => provider.name().to_owned(), "outcome" => if user_created { "user_created" } else { "user_found" })
            .increment(1);
        self.native
            .hand_out(user, session, session_token, user_created, now)
    }

    /// One more call of `subject` in the current one-minute window of `bucket`; refused past
    /// `limit`, with the time left in the window as retry-after.
    async fn rate_limit(&self, bucket: &str, subject: &str, limit: u32) -> Result<(), Error> {
        let key = self.keys.rate(bucket, &Digest::of(subject.as_bytes()));
        let n = self.store.incr(&key, 1, Duration::from_secs(60)).await?;
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
}
