//! The NEW side: sessiongate's own sessions. An opaque `session_token` (`sgs_…`) names a
//! record in the store; a short `session_jwt` (`jwt`) describes the session and is checked
//! without the store. Creating (`create`), revoking (`revoke`) and judging (`validate`) them
//! all happen here; nothing in this folder knows about providers or migration.

mod create;
pub mod jwt;
mod list;
mod revoke;
mod validate;

use std::sync::Arc;
use std::time::Duration;

pub use create::{CreateRequest, Created, Who};
pub(crate) use create::{check_client, check_custom_claims, session_minutes};
pub use jwt::NativeIssuer;
use validate::Minted;

use super::claims::VerifiedJwt;
use super::model::Session;
use super::record;
use super::revocation::RevokedSids;
use crate::clock::Clock;
use crate::config::{Config, Env, SessionFormat};
use crate::error::Error;
use crate::ids::{self, IdKind};
use crate::keys::SigningKeys;
use crate::store::Store;
use crate::store::keys::{Digest, Keys};

/// How long a session record outlives its expiry, so that validation can answer EXPIRED
/// (not NOT_FOUND) for a while.
const EXPIRED_RETENTION_MS: i64 = 3_600_000;
/// Verified JWTs kept in process.
const VERDICT_CACHE_ENTRIES: u64 = 100_000;
/// Re-mint a session's JWT once the last one is this old.
const REMINT_AFTER_MS: i64 = 60_000;

/// Where a session stands in the store.
enum Lookup {
    Active(Box<Session>, Digest),
    Expired(Box<Session>),
    Revoked,
    NotFound,
}

/// sessiongate's own sessions: their store records, their JWTs and what is cached of both.
pub struct NativeSessions {
    env: Env,
    /// How session records are written.
    format: SessionFormat,
    store: Arc<dyn Store>,
    keys: Keys,
    clock: Arc<dyn Clock>,
    issuer: NativeIssuer,
    /// Revoked sids, shared with the provider side's deny-list (one set, one feed).
    revoked: Arc<RevokedSids>,
    /// Verified native JWTs by token digest. Hits still check expiry, revocation and age:
    /// the cache only saves the signature check and parsing — so it needs no TTL of its
    /// own, and it is a `quick_cache` (S3-FIFO, ~80 bytes of bookkeeping per entry) rather
    /// than moka (~350 bytes per entry, measured by `benches/memory.rs`): at 100 000
    /// entries that difference is 27 MB.
    cache: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedJwt>>,
    /// The last JWT minted per session. RSA signing costs ~1 ms, a Redis round trip ~25 µs:
    /// re-minting on every opaque validation would make signing the whole cost of the path.
    /// A JWT minted under [`REMINT_AFTER_MS`] ago for the same session state is handed out
    /// again (it still has most of its lifetime).
    minted: moka::sync::Cache<String, Arc<Minted>>,
    leeway_secs: i64,
    default_minutes: u32,
    /// Every JWT minted up to now expires within its TTL (+ leeway): that is how long a
    /// revoked sid must be remembered.
    revoke_window_secs: i64,
    /// How long after its expiry a session_jwt may still be refreshed.
    refresh_window_secs: i64,
    /// No session outlives `started_at` + this.
    absolute_lifetime_ms: i64,
}

impl NativeSessions {
    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        signing: Arc<SigningKeys>,
        revoked: Arc<RevokedSids>,
    ) -> Self {
        Self {
            env: cfg.env,
            format: cfg.store.session_format,
            keys: Keys::new(cfg.env),
            issuer: NativeIssuer::new(cfg.env, &cfg.native, signing),
            revoked,
            cache: quick_cache::sync::Cache::new(VERDICT_CACHE_ENTRIES as usize),
            minted: moka::sync::Cache::builder()
                .max_capacity(VERDICT_CACHE_ENTRIES)
                .time_to_live(Duration::from_millis(REMINT_AFTER_MS as u64))
                .build(),
            leeway_secs: cfg.native.leeway.as_secs() as i64,
            default_minutes: cfg.native.session_duration_minutes,
            revoke_window_secs: (cfg.native.jwt_ttl + cfg.native.leeway).as_secs() as i64,
            refresh_window_secs: cfg.native.refresh_window.as_secs() as i64,
            absolute_lifetime_ms: i64::from(cfg.native.absolute_lifetime_minutes) * 60_000,
            store,
            clock,
        }
    }

    pub fn issuer(&self) -> &NativeIssuer {
        &self.issuer
    }

    /// The session length when a call asks for none.
    pub(crate) fn default_minutes(&self) -> u32 {
        self.default_minutes
    }

    /// TTL of a record for a session expiring at `expires_at_ms`.
    pub(crate) fn record_ttl(&self, expires_at_ms: i64, now_ms: i64) -> Duration {
        Duration::from_millis((expires_at_ms - now_ms + EXPIRED_RETENTION_MS).max(1) as u64)
    }

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
    async fn lookup(&self, d: &Digest, now: i64) -> Result<Lookup, Error> {
        let mut got = self
            .store
            .get_many(&[self.keys.session(d), self.keys.tombstone(d)])
            .await?
            .into_iter();
        Ok(match (got.next().flatten(), got.next().flatten()) {
            (Some(rec), _) => {
                let s = record::decode(&rec, self.env)?;
                if s.expires_at_ms <= now {
                    Lookup::Expired(Box::new(s))
                } else {
                    Lookup::Active(Box::new(s), *d)
                }
            }
            (None, Some(_)) => Lookup::Revoked,
            (None, None) => Lookup::NotFound,
        })
    }

    async fn lookup_by_id(&self, session_id: &str, now: i64) -> Result<Lookup, Error> {
        match self.digest_of(session_id).await? {
            Some(d) => self.lookup(&d, now).await,
            None => Ok(Lookup::NotFound),
        }
    }
}
