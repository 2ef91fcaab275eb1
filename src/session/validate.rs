//! `ValidateSession` for every credential (docs/design.md, "How a verdict is decided"):
//! [`Validator::validate_inner`] is one match on the token's shape, and each arm returns the
//! verdict of the one side that may judge it — a native opaque token (`native`), a JWS routed
//! by its issuer to the native issuer or to one provider (`providers`), or a legacy opaque
//! token asked about at the provider's UserInfo (`providers`).
//!
//! A bad token is a verdict, not an error: everything here returns `Ok(Verdict)` for any
//! token, and `Err` only when the *call* fails — an empty token, or a store that is needed
//! for this answer and is down (`UNAVAILABLE`, never INVALID: an outage must not log users
//! out). Native JWTs need no store at all unless the caller asks for a store check
//! (`max_token_age_seconds`), a sliding extension, or the JWT has expired and may be
//! refreshed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::migrate::Links;
use super::native::NativeSessions;
use super::providers::ProviderTokens;
use super::token::{self, Jws, Shape};
use super::verdict::{Origin, Reason, Source, ValidateRequest, Verdict, View};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, ErrorReason};
use crate::signals::{Signal, Signals};
use crate::store::Store;
use crate::store::keys::Digest;
use crate::telemetry::{MigrationProgress, ValidationCounters};

/// Legacy identities whose migration is remembered in process.
const MIGRATED_ENTRIES: u64 = 100_000;

/// Routes every credential to the side that judges it, and counts the verdicts.
pub struct Validator {
    clock: Arc<dyn Clock>,
    native: Arc<NativeSessions>,
    providers: Arc<ProviderTokens>,
    links: Links,
    /// Legacy identities known to have migrated: `provider \0 sub` → user id.
    migrated: moka::sync::Cache<String, Arc<str>>,
    max_token_bytes: usize,
    progress: MigrationProgress,
    counters: ValidationCounters,
    signals: Arc<Signals>,
}

impl Validator {
    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        native: Arc<NativeSessions>,
        providers: Arc<ProviderTokens>,
        signals: Arc<Signals>,
    ) -> Self {
        Self {
            signals,
            clock,
            native,
            providers,
            links: Links::new(cfg.env, store),
            migrated: moka::sync::Cache::builder()
                .max_capacity(MIGRATED_ENTRIES)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            max_token_bytes: cfg.server.max_token_bytes,
            progress: Default::default(),
            counters: Default::default(),
        }
    }

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
            self.signals.count(if v.origin == Origin::New {
                Signal::ValidNew
            } else {
                Signal::ValidLegacy
            });
        }
        if let Ok(v) = &verdict {
            if v.origin == Origin::New {
                // Expired and revoked credentials are everyday traffic; the rest (a bad
                // signature, an unknown key, a lost session) is what a broken NEW side looks
                // like to the rollout's guards.
                let bad = v
                    .invalid
                    .is_some_and(|r| !matches!(r, Reason::Expired | Reason::Revoked));
                self.signals
                    .outcome(Signal::NewValidations, Signal::NewInvalid, bad);
            }
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
        // Every path that may wait on the store or a provider is boxed (`Box::pin`): a
        // future holds the state of every path it may take, and is copied whole each time it
        // is moved (into its caller's, into the task's box). Inline, those paths made a
        // cached JWT's validation a 2.3 KB future, and an edge check 8.4 KB; boxed, they cost
        // an allocation beside a round trip, only on the paths that make one.
        match token::classify(token) {
            Err(r) => Ok(Verdict::invalid(r, Origin::Unknown, Source::LocalVerify)),
            Ok(Shape::NativeOpaque) => Box::pin(self.native.validate_opaque(token, req)).await,
            Ok(Shape::Jws(jws)) => self.validate_jws(token, jws, req).await,
            // Legacy opaque tokens are checked through the legacy provider's UserInfo; with none
            // configured that accepts them, an unknown shape is malformed.
            Ok(Shape::Other) => match self.providers.opaque() {
                Some(p) if token::upstream_safe(token) => {
                    Box::pin(self.providers.validate_opaque(token, p)).await
                }
                _ => Ok(Verdict::invalid(
                    Reason::Malformed,
                    Origin::Unknown,
                    Source::LocalVerify,
                )),
            },
        }
    }

    /// A JWS: a verification this process made already, else routed by its (unverified)
    /// issuer to exactly one verifier — ours, or one provider's.
    async fn validate_jws(
        &self,
        token: &str,
        jws: Jws<'_>,
        req: &ValidateRequest,
    ) -> Result<Verdict, Error> {
        let now = self.clock.now_secs();
        let digest = Digest::of(token.as_bytes());
        // Ours first: most tokens are.
        if let Some(jwt) = self.native.cached(&digest) {
            return self.native.validate_jwt(jwt, Source::Cache, req).await;
        }
        if let Some(v) = self
            .providers
            .cached(&digest, &jws, req.view == View::Full, now)
        {
            return Ok(v);
        }
        let invalid = |r, origin| Ok(Verdict::invalid(r, origin, Source::LocalVerify));
        let header = match token::header(&jws) {
            Ok(h) => h,
            Err(r) => return invalid(r, Origin::Unknown),
        };
        let claims = match token::payload(&jws) {
            Ok(c) => c,
            Err(r) => return invalid(r, Origin::Unknown),
        };
        let issuer = self.native.issuer();
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if iss == issuer.issuer() => {
                match self.native.verify(&digest, &jws, &header, claims, now) {
                    Ok(jwt) => {
                        self.native
                            .validate_jwt(jwt, Source::LocalVerify, req)
                            .await
                    }
                    Err(r) => invalid(r, Origin::New),
                }
            }
            Some(iss) if issuer.is_other_env(iss) => invalid(Reason::WrongEnv, Origin::New),
            Some(iss) => match self.providers.jwt_issuer(iss).cloned() {
                Some(provider) => {
                    Box::pin(
                        self.providers
                            .validate_jwt(&provider, &digest, &jws, &header, claims, now),
                    )
                    .await
                }
                None => invalid(Reason::UnknownIssuer, Origin::Unknown),
            },
            None => invalid(Reason::UnknownIssuer, Origin::Unknown),
        }
    }

    /// The sessiongate user a legacy identity migrated to, or `""`. A link never changes
    /// once made, so found links are cached in process. A lookup that fails (store down)
    /// leaves the verdict without a user id rather than failing it.
    async fn migrated_user(&self, provider: &str, subject: &str) -> String {
        let id = format!("{provider}\0{subject}");
        if let Some(u) = self.migrated.get(&id) {
            return u.to_string();
        }
        let Some(provider) = self.providers.all().find(|p| p.name() == provider) else {
            return String::new();
        };
        match Box::pin(self.links.migrated_user(provider, subject)).await {
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
}
