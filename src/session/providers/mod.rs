//! The LEGACY and EXTERNAL side: tokens of the configured providers — `legacy` (being
//! migrated away from) and `external` (a hosted new provider). A provider's JWT is verified
//! against its own keys (`provider`, `validate`), a legacy opaque token is asked about at the
//! provider's UserInfo (`opaque`), and a revoked provider token is deny-listed (`denylist`).
//! Nothing in this folder knows about sessiongate's own sessions or about migration.

mod denylist;
mod logout;
mod opaque;
mod provider;
mod singleflight;
mod validate;

use std::sync::Arc;

pub(crate) use denylist::{LegacyIds, RevokedToken, signed_digest};
pub use logout::BACKCHANNEL_LOGOUT_EVENT;
pub use provider::{Provider, Providers, VerifiedProviderJwt};

use super::revocation::RevokedSids;
use crate::clock::Clock;
use crate::config::{Config, Env};
use crate::store::Store;
use crate::store::keys::Keys;
use opaque::CachedUserInfo;
use singleflight::SingleFlight;
use validate::ProviderHit;

/// Verified provider JWTs kept in process.
const VERDICT_CACHE_ENTRIES: usize = 100_000;

/// The configured providers and what is cached of their tokens.
/// A provider as the status page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderStatus {
    pub name: String,
    pub legacy: bool,
    /// Its key set's age and whether the last refresh failed (`None`: no keys).
    pub keys: Option<(Option<std::time::Duration>, bool)>,
}

pub struct ProviderTokens {
    env: Env,
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn Clock>,
    providers: Providers,
    /// Deny-listed tokens live in the same revoked set as native sids (one set, one feed).
    revoked: Arc<RevokedSids>,
    /// Verified provider JWTs by token digest (hits re-check expiry and the deny-list).
    /// A `quick_cache`, as the native one (see there): moka's bookkeeping alone would be
    /// more than an entry. Entries expire by their own `verified_at`.
    cache: quick_cache::sync::Cache<[u8; 32], Arc<ProviderHit>>,
    /// Legacy opaque tokens being looked up, by digest: concurrent validations of one token
    /// make one UserInfo call.
    userinfo_flight:
        SingleFlight<Result<(CachedUserInfo, super::verdict::Source), crate::error::Error>>,
    leeway_secs: i64,
    max_token_bytes: usize,
}

impl ProviderTokens {
    /// Every configured provider, by name.
    pub fn statuses(&self) -> Vec<ProviderStatus> {
        let mut v: Vec<_> = self
            .providers
            .all()
            .map(|p| ProviderStatus {
                name: p.name().to_owned(),
                legacy: p.config.kind == crate::config::ProviderKind::Legacy,
                keys: p.key_health(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        revoked: Arc<RevokedSids>,
        signals: Arc<crate::signals::Signals>,
    ) -> Self {
        Self {
            env: cfg.env,
            keys: Keys::new(cfg.env),
            providers: Providers::start(cfg, store.clone(), signals),
            revoked,
            cache: quick_cache::sync::Cache::new(VERDICT_CACHE_ENTRIES),
            userinfo_flight: SingleFlight::default(),
            leeway_secs: cfg.native.leeway.as_secs() as i64,
            max_token_bytes: cfg.server.max_token_bytes,
            store,
            clock,
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.all()
    }

    /// The provider that takes opaque tokens, if one does.
    pub fn opaque(&self) -> Option<&Arc<Provider>> {
        self.providers.opaque()
    }

    /// The provider whose JWTs carry `iss`, if it takes JWTs.
    pub fn jwt_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.providers.by_issuer(iss).filter(|p| p.accepts_jwt())
    }
}
