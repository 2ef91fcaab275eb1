//! The session service behind the session RPCs: it assembles the sides — native sessions,
//! provider tokens, migration, validation — and is the one place that spans them
//! (`RevokeSession` of a legacy token revokes the token on the provider side and what was
//! migrated from it on the native side).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::migrate::{MigrateRequest, Migrator};
use super::model::{Redacted, Session};
use super::native::{CreateRequest, Created, NativeIssuer, NativeSessions};
use super::providers::ProviderTokens;
use super::revocation::RevokedSids;
use super::validate::Validator;
use super::verdict::{Action, ValidateRequest, Verdict};
use crate::caller::Caller;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, ErrorCode};
use crate::keys::SigningKeys;
use crate::signals::{Signal, Signals};
use crate::store::Store;

/// What `RevokeSession` targets.
#[derive(Clone)]
pub enum RevokeTarget {
    SessionId(String),
    SessionToken(String),
    SessionJwt(String),
    /// Every session of the user but `except`.
    UserId {
        user_id: String,
        except: Option<String>,
    },
    /// A legacy (or external) provider's token: deny-listed until it expires.
    LegacyToken(String),
}

impl std::fmt::Debug for RevokeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokeTarget::SessionId(id) => f.debug_tuple("SessionId").field(id).finish(),
            RevokeTarget::UserId { user_id, except } => f
                .debug_struct("UserId")
                .field("user_id", user_id)
                .field("except", except)
                .finish(),
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

/// A verdict, and the session a migration in passing made of its token, if it made one
/// (with whether that was a replay of an earlier call's).
pub type MigratedInPassing = (Verdict, Option<(Created, bool)>);

/// The session RPCs' service.
pub struct SessionService {
    revoked: Arc<RevokedSids>,
    native: Arc<NativeSessions>,
    providers: Arc<ProviderTokens>,
    validator: Validator,
    migrator: Arc<Migrator>,
    /// What the rollout's guards watch, counted here and in the providers.
    signals: Arc<Signals>,
}

impl SessionService {
    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        signing: Arc<SigningKeys>,
    ) -> Self {
        let revoked = Arc::new(RevokedSids::default());
        let signals = Arc::new(Signals::default());
        let native = Arc::new(NativeSessions::new(
            cfg,
            store.clone(),
            clock.clone(),
            signing,
            revoked.clone(),
        ));
        let providers = Arc::new(ProviderTokens::new(
            cfg,
            store.clone(),
            clock.clone(),
            revoked.clone(),
            signals.clone(),
        ));
        Self {
            validator: Validator::new(
                cfg,
                store.clone(),
                clock.clone(),
                native.clone(),
                providers.clone(),
                signals.clone(),
            ),
            migrator: Arc::new(Migrator::new(
                cfg,
                store,
                clock,
                native.clone(),
                providers.clone(),
            )),
            revoked,
            native,
            providers,
            signals,
        }
    }

    /// The configured providers and their keys' health (the status page).
    pub fn providers(&self) -> Vec<super::providers::ProviderStatus> {
        self.providers.statuses()
    }

    /// The health signals counted by this service (for the rollout's guards).
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The revoked set every replica keeps (native sids and deny-listed provider tokens).
    pub fn revoked(&self) -> &Arc<RevokedSids> {
        &self.revoked
    }

    pub fn issuer(&self) -> &NativeIssuer {
        self.native.issuer()
    }

    /// `ValidateSession`.
    pub async fn validate(&self, req: ValidateRequest) -> Result<Verdict, Error> {
        self.validator.validate(req).await
    }

    /// `ValidateSession` with `auto_migrate` (and the edge's inline migration): the verdict,
    /// and — when it is a valid legacy token its provider's policy says to migrate
    /// ([`Action::Migrate`]) — the new session, made by MigrateSession's own path (single
    /// flight per token, replay window, limits). A migration that fails leaves the verdict as
    /// it is: the token is still valid, the caller proceeds as LEGACY, and the next call tries
    /// again; the failure is logged and counted (`via` names the door).
    ///
    /// Boxed here, for every caller: a future holds the state of every path it may take and
    /// is copied whole each time it moves, so a caller's future holding this one inline would
    /// carry (and copy, on every call) a migration's state even where it never migrates.
    pub fn validate_and_migrate(
        &self,
        req: ValidateRequest,
        via: &'static str,
    ) -> BoxFuture<'_, Result<MigratedInPassing, Error>> {
        Box::pin(self.validate_then_migrate(req, via))
    }

    async fn validate_then_migrate(
        &self,
        req: ValidateRequest,
        via: &'static str,
    ) -> Result<MigratedInPassing, Error> {
        let (token, caller, client) = (req.token.clone(), req.caller.clone(), req.client.clone());
        let verdict = self.validate(req).await?;
        if !(verdict.is_valid() && verdict.action == Action::Migrate) {
            return Ok((verdict, None));
        }
        // Boxed: a migration's future (UserInfo, the replay record, the session's writes) is
        // ~7 KB, and inline it would be part of — and copied with — every validation's.
        let result = Box::pin(self.migrate(MigrateRequest {
            caller: caller.to_string(),
            legacy_token: token,
            provider: verdict.provider.clone(),
            client,
            ..Default::default()
        }))
        .await;
        let outcome = if result.is_ok() { "migrated" } else { "failed" };
        metrics::counter!("sessiongate_auto_migrations_total", "via" => via, "result" => outcome)
            .increment(1);
        match result {
            Ok(migrated) => Ok((verdict, Some(migrated))),
            Err(e) => {
                tracing::warn!(
                    provider = %verdict.provider,
                    reason = e.reason.as_str(),
                    via,
                    "a migration in passing failed; the token stays valid as LEGACY"
                );
                Ok((verdict, None))
            }
        }
    }

    /// `CreateSession` for `caller`: the session, and whether it is a replay of an earlier
    /// call's with the same request id.
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<(Created, bool), Error> {
        self.native.create_once(&caller.name, req).await
    }

    /// `MigrateSession`: the session, and whether it is a replay of an earlier call's.
    pub async fn migrate(&self, req: MigrateRequest) -> Result<(Created, bool), Error> {
        let result = self.migrator.migrate(req).await;
        // A failure is the service's or the provider's, not a bad token or a limit.
        let failed = result.as_ref().is_err_and(|e| {
            matches!(
                e.code,
                ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::FailedPrecondition
            )
        });
        self.signals
            .outcome(Signal::Migrations, Signal::MigrationFailures, failed);
        result
    }

    /// A provider's back-channel logout (`POST /backchannel-logout/<provider>`): its tokens of
    /// the login logged out are REVOKED everywhere, and — by the provider's setting — the
    /// sessions migrated from that identity. Returns how many sessions it revoked.
    pub async fn backchannel_logout(
        &self,
        provider: &str,
        logout_token: &str,
    ) -> Result<u32, Error> {
        self.migrator
            .backchannel_logout(provider, logout_token)
            .await
    }

    /// `ListSessions`: the user's live sessions, the most recently started first.
    pub async fn list_sessions(
        &self,
        user_id: &str,
        caller: &Caller,
    ) -> Result<Vec<Session>, Error> {
        caller.require_authenticated("ListSessions")?;
        self.native.list_user(user_id).await
    }

    /// `RevokeSession`: revokes the target; returns how many sessions (and tokens) this call
    /// revoked (0 if it already was).
    pub async fn revoke(&self, target: RevokeTarget, caller: &Caller) -> Result<u32, Error> {
        match target {
            RevokeTarget::SessionId(id) => self.native.revoke_id(&id).await,
            RevokeTarget::SessionToken(t) => self.native.revoke_token(&t).await,
            RevokeTarget::SessionJwt(jwt) => self.native.revoke_jwt(&jwt).await,
            RevokeTarget::UserId { user_id, except } => {
                caller.require_authenticated("RevokeSession by user_id")?;
                self.native.revoke_user(&user_id, except.as_deref()).await
            }
            // Denied first, so that a migration racing this revocation refuses on its own;
            // then what was made from the token ("one revoke across both providers").
            RevokeTarget::LegacyToken(t) => {
                let revoked = self.providers.revoke(&t).await?;
                let sessions = self.migrator.revoke_made_from(&revoked).await?;
                Ok(u32::from(revoked.denied) + sessions)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
