//! One issuer's verification keys, fetched from its JWKS URL and kept fresh (docs/reliability.md,
//! J1–J5).
//!
//! - Fetches are bounded: connect and overall timeouts, no redirects, a body cap, a key cap.
//! - Start-up never waits for an issuer: a background task fetches at once and retries with
//!   backoff; until the first set arrives that issuer's tokens get `KEYS_UNAVAILABLE`.
//! - Every ~10 minutes (with jitter) the set is refreshed; a failed refresh keeps the last
//!   good set (stale-if-error), so an issuer outage does not log anyone out.
//! - A token with an unknown `kid` (a rotation) triggers at most one refresh per issuer per
//!   30 s, single-flight: a flood of random kids cannot turn into a flood of fetches. While
//!   the issuer fails, those refreshes back off from 1 s up to 30 s, and an unknown kid is
//!   `KEYS_UNAVAILABLE` (it may be a rotation we cannot see), not INVALID.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::jwks::{Alg, KeySet, VerifyKey, parse_set};
use crate::store::{Key, Store};
use crate::upstream::http::fetch_capped;

/// How long a shared JWKS document is kept in the store (the last-good copy a restarted
/// replica can start from).
const SHARED_TTL: Duration = Duration::from_secs(24 * 3600);

/// A JWKS document as replicas share it in the store.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedJwks {
    fetched_at_ms: i64,
    jwks: String,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Largest JWKS document accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Periodic refresh interval (before jitter).
const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// At most one unknown-kid refresh per issuer per this.
const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);

/// Result of a key lookup.
pub enum KeyLookup {
    Found(Arc<VerifyKey>),
    /// Keys are loaded but none has this kid.
    Unknown,
    /// No key set has ever been loaded.
    NotLoaded,
}

/// One issuer's keys.
/// Where an issuer publishes its keys.
#[derive(Debug, Clone)]
pub enum KeysAt {
    /// A configured JWKS URL.
    Url(url::Url),
    /// Discovered from `<issuer>/.well-known/openid-configuration` (OIDC Discovery 1.0).
    Discover { issuer: String, allow_http: bool },
}

/// Endpoints learned from discovery.
#[derive(Default)]
struct Discovered {
    jwks: Option<url::Url>,
    userinfo: Option<url::Url>,
}

/// Largest discovery document accepted.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

pub struct IssuerKeys {
    provider: String,
    source: KeysAt,
    discovered: RwLock<Discovered>,
    allowed: Vec<Alg>,
    http: reqwest::Client,
    set: RwLock<Option<Arc<KeySet>>>,
    /// When (wall-clock ms) the current set was fetched from the issuer, by us or by the
    /// replica that shared it.
    loaded_at: RwLock<Option<i64>>,
    /// The store and key under which replicas share the fetched document.
    shared: Option<(Arc<dyn Store>, Key)>,
    /// When (ms since `epoch`) a request last caused a fetch: the cooldown counts from
    /// there, not from the periodic refreshes, so a rotation right after start-up is seen at
    /// once.
    last_on_demand_ms: AtomicI64,
    /// Whether the latest refresh attempt (periodic or on demand) failed: then a kid missing
    /// from the last good set may be a rotation we could not see, not a forgery.
    last_refresh_failed: AtomicBool,
    /// Consecutive failed on-demand refreshes (their cooldown backs off).
    on_demand_failures: std::sync::atomic::AtomicU32,
    single_flight: tokio::sync::Mutex<()>,
    epoch: Instant,
}

impl IssuerKeys {
    pub fn new(provider: &str, source: KeysAt, allowed: Vec<Alg>, http: reqwest::Client) -> Self {
        Self {
            provider: provider.to_owned(),
            source,
            discovered: RwLock::new(Discovered::default()),
            allowed,
            http,
            set: RwLock::new(None),
            loaded_at: RwLock::new(None),
            shared: None,
            last_on_demand_ms: AtomicI64::new(i64::MIN / 2),
            last_refresh_failed: AtomicBool::new(false),
            on_demand_failures: std::sync::atomic::AtomicU32::new(0),
            single_flight: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    pub fn get(&self, kid: &str) -> KeyLookup {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        match &*set {
            None => KeyLookup::NotLoaded,
            Some(s) => s
                .keys
                .get(kid)
                .cloned()
                .map_or(KeyLookup::Unknown, KeyLookup::Found),
        }
    }

    /// Refreshes the set: from the copy another replica shared in the store when that is
    /// newer than ours and younger than `shared_max_age`, else from the issuer — sharing what
    /// it got.
    pub async fn refresh(&self, shared_max_age: Duration) -> Result<usize, String> {
        let result = async {
            if let Some((set, fetched_at_ms)) = self.shared_copy(shared_max_age).await {
                return Ok::<_, String>((set, fetched_at_ms, "shared"));
            }
            let url = self.jwks_url().await?;
            let body = tracing::Instrument::instrument(
                fetch_capped(&self.http, &url, "application/jwk-set+json, application/json", MAX_BODY_BYTES),
                tracing::debug_span!("jwks.fetch", otel.kind = "client", provider = %self.provider),
            )
            .await?;
            let (set, rejected) = parse_set(&body, &self.allowed)?;
            for r in rejected {
                metrics::counter!("sessiongate_jwks_keys_rejected_total", "provider" => self.provider.clone(), "reason" => r.as_str())
                    .increment(1);
            }
            let now = wall_ms();
            // Shared before it is used here: a replica that sees our keys can find them in
            // the store too.
            self.share(&body, now).await;
            Ok((set, now, "issuer"))
        }
        .await;
        self.last_refresh_failed
            .store(result.is_err(), Ordering::Relaxed);
        match result {
            Ok((set, fetched_at_ms, from)) => {
                let n = set.keys.len();
                *self.set.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
                *self.loaded_at.write().unwrap_or_else(|p| p.into_inner()) = Some(fetched_at_ms);
                metrics::counter!("sessiongate_jwks_refreshes_total", "provider" => self.provider.clone(), "outcome" => "ok", "from" => from).increment(1);
                tracing::debug!(provider = self.provider, keys = n, from, "JWKS refreshed");
                Ok(n)
            }
            Err(e) => {
                metrics::counter!("sessiongate_jwks_refreshes_total", "provider" => self.provider.clone(), "outcome" => "error", "from" => "issuer").increment(1);
                tracing::warn!(provider = self.provider, error = %e, "JWKS refresh failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// The set another replica fetched, if it is newer than ours and younger than the refresh
    /// interval. The store failing is not an error: the issuer is asked instead.
    async fn shared_copy(&self, max_age: Duration) -> Option<(KeySet, i64)> {
        let (store, key) = self.shared.as_ref()?;
        let bytes = store.get(key).await.ok()??;
        let doc: SharedJwks = serde_json::from_slice(&bytes).ok()?;
        let ours = *self.loaded_at.read().unwrap_or_else(|p| p.into_inner());
        let fresh = wall_ms() - doc.fetched_at_ms < max_age.as_millis() as i64;
        if !fresh || ours.is_some_and(|t| t >= doc.fetched_at_ms) {
            return None;
        }
        let (set, _) = parse_set(doc.jwks.as_bytes(), &self.allowed).ok()?;
        Some((set, doc.fetched_at_ms))
    }

    async fn share(&self, body: &[u8], fetched_at_ms: i64) {
        let Some((store, key)) = &self.shared else {
            return;
        };
        let Ok(jwks) = std::str::from_utf8(body) else {
            return;
        };
        let doc = SharedJwks {
            fetched_at_ms,
            jwks: jwks.to_owned(),
        };
        let Ok(value) = serde_json::to_vec(&doc) else {
            return;
        };
        let write = crate::store::Write::Put {
            key: key.clone(),
            value,
            ttl: Some(SHARED_TTL),
        };
        if let Err(e) = store.write(vec![write]).await {
            tracing::debug!(provider = self.provider, error = %e, "could not share the JWKS");
        }
    }

    /// Whether the latest refresh failed (the issuer is down or answers garbage): an unknown
    /// kid cannot be told apart from a rotation then.
    pub fn refresh_failing(&self) -> bool {
        self.last_refresh_failed.load(Ordering::Relaxed)
    }

    /// A refresh on behalf of a request with an unknown kid: single-flight, and at most once
    /// per cooldown — 30 s after a successful one; after failed ones 1 s, 2 s, 4 s … up to
    /// 30 s, so that a rotation is seen within seconds of a short issuer outage ending while
    /// a long outage still costs the issuer one fetch per 30 s. Returns once the refresh
    /// (this one or a concurrent one) is done, or at once when the cooldown forbids one.
    pub async fn refresh_on_demand(&self) {
        if !self.on_demand_allowed() {
            // No new fetch; but if one is running (for the same new kid, most likely), its
            // result is worth waiting for — as long as the caller's deadline allows.
            self.wait_for_fetch().await;
            return;
        }
        let _flight = self.single_flight.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        if !self.on_demand_allowed() {
            return;
        }
        self.last_on_demand_ms
            .store(self.now_ms(), Ordering::Relaxed);
        // A replica that met the same new kid moments ago shared the rotated set; else ask
        // the issuer.
        let ok = self.refresh(UNKNOWN_KID_COOLDOWN).await.is_ok();
        if ok {
            self.on_demand_failures.store(0, Ordering::Relaxed);
        } else {
            self.on_demand_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the cooldown since the last on-demand refresh has passed.
    fn on_demand_allowed(&self) -> bool {
        let failures = self.on_demand_failures.load(Ordering::Relaxed);
        let cooldown = if failures == 0 {
            UNKNOWN_KID_COOLDOWN
        } else {
            (Duration::from_secs(1) * 2u32.saturating_pow(failures - 1)).min(UNKNOWN_KID_COOLDOWN)
        };
        self.now_ms() - self.last_on_demand_ms.load(Ordering::Relaxed)
            >= cooldown.as_millis() as i64
    }

    /// The JWKS URL: configured, or discovered (once; the discovery is redone only while it
    /// has not succeeded).
    async fn jwks_url(&self) -> Result<url::Url, String> {
        let (issuer, allow_http) = match &self.source {
            KeysAt::Url(u) => return Ok(u.clone()),
            KeysAt::Discover { issuer, allow_http } => (issuer, *allow_http),
        };
        if let Some(u) = &self
            .discovered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .jwks
        {
            return Ok(u.clone());
        }
        let well_known = url::Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .map_err(|e| format!("discovery URL: {e}"))?;
        let body = fetch_capped(
            &self.http,
            &well_known,
            "application/json",
            MAX_DISCOVERY_BYTES,
        )
        .await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| "discovery document is not JSON".to_owned())?;
        // OIDC Discovery §4.3: the document must name exactly the issuer it was fetched for.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
            return Err("the discovery document names another issuer".into());
        }
        let endpoint = |name: &str| -> Result<Option<url::Url>, String> {
            let Some(v) = doc.get(name).and_then(|v| v.as_str()) else {
                return Ok(None);
            };
            let u = url::Url::parse(v).map_err(|_| format!("`{name}` is not a URL"))?;
            // On the issuer's own host: a document that points the keys (or the bearer
            // tokens UserInfo receives) at another host is refused. An issuer whose endpoints
            // really live elsewhere is configured with jwks_url / userinfo_url explicitly.
            if u.host_str() != well_known.host_str() {
                return Err(format!(
                    "`{name}` is not on the issuer's host; set it explicitly (jwks_url / userinfo_url) if that is intended"
                ));
            }
            match u.scheme() {
                "https" => Ok(Some(u)),
                "http" if allow_http => Ok(Some(u)),
                _ => Err(format!("`{name}` must be https")),
            }
        };
        let jwks = endpoint("jwks_uri")?.ok_or("the discovery document has no jwks_uri")?;
        let userinfo = endpoint("userinfo_endpoint")?;
        let mut d = self.discovered.write().unwrap_or_else(|p| p.into_inner());
        d.jwks = Some(jwks.clone());
        d.userinfo = userinfo;
        tracing::info!(provider = self.provider, "issuer endpoints discovered");
        Ok(jwks)
    }

    /// The UserInfo endpoint learned from discovery, if any yet.
    pub fn discovered_userinfo(&self) -> Option<url::Url> {
        self.discovered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .userinfo
            .clone()
    }

    /// Waits for a fetch in progress (the start-up one, say) to finish; returns at once when
    /// none is.
    pub async fn wait_for_fetch(&self) {
        let _flight = self.single_flight.lock().await;
    }

    /// How old the current set is (`None`: never loaded).
    pub fn age(&self) -> Option<Duration> {
        self.loaded_at
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| Duration::from_millis((wall_ms() - t).max(0) as u64))
    }

    /// Shares fetched documents through `store` (so replicas and restarts do not all ask the
    /// issuer), under `key`.
    pub fn with_shared_store(mut self, store: Arc<dyn Store>, key: Key) -> Self {
        self.shared = Some((store, key));
        self
    }

    /// Fetches at once (retrying with backoff until the first set arrives), then every
    /// ~10 minutes with jitter.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let ok = {
                    let _flight = this.single_flight.lock().await;
                    this.refresh(REFRESH_EVERY).await.is_ok()
                };
                let loaded = matches!(this.get(""), KeyLookup::Found(_) | KeyLookup::Unknown);
                let wait = if loaded && ok {
                    backoff = Duration::from_millis(500);
                    // ±10 % jitter so replicas started together do not refresh together.
                    let jitter = rand::random_range(0.9..1.1);
                    REFRESH_EVERY.mul_f64(jitter)
                } else {
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    w
                };
                if let Some(age) = this.age() {
                    metrics::gauge!("sessiongate_jwks_age_seconds", "provider" => this.provider.clone()).set(age.as_secs_f64());
                }
                tokio::time::sleep(wait).await;
            }
        })
    }
}
