//! `[redis]` and `REDIS_URL`: which store, and how long any call to it may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Check, ENV_REDIS_URL, Secret, Vars};

const DEFAULT_COMMAND_TIMEOUT_MS: u32 = 500;
const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 250;
const DEFAULT_RESYNC_SECONDS: u32 = 30;
/// How many events the stream keeps unless `redis.events_max_len` says otherwise.
pub const DEFAULT_EVENTS_MAX_LEN: usize = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    /// `None`: the embedded in-memory store. In cluster mode, comma-separated seed nodes.
    pub redis_url: Option<Secret>,
    /// `redis.cluster`: `redis_url` names the seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Upper bound on any one store call, reconnects included: a down Redis answers
    /// `UNAVAILABLE` within this, never hangs a request.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// How often each replica reloads revocations and rollout overrides in any case: a
    /// message lost on the invalidation channel is caught within this.
    pub resync_every: Duration,
    /// `redis.session_format`: how session records are written (both are always read).
    pub session_format: SessionFormat,
    /// `redis.events_max_len`: about how many events the stream keeps. A webhook receiver
    /// may be down for as many events as this before the oldest undelivered ones are lost.
    pub events_max_len: usize,
}

/// How native session records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionFormat {
    /// A compact binary record (~2.5× smaller than the JSON one).
    #[default]
    Binary,
    /// The JSON record of versions before the binary one: for the first step of a rolling
    /// upgrade from such a version, so that its replicas can read what new ones write.
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    cluster: Option<bool>,
    command_timeout_ms: Option<u32>,
    connect_timeout_ms: Option<u32>,
    resync_seconds: Option<u32>,
    session_format: Option<SessionFormat>,
    events_max_len: Option<usize>,
}

pub(super) fn build(c: &mut Check, vars: &dyn Vars, raw: RawRedis) -> StoreConfig {
    let redis_url = vars.get(ENV_REDIS_URL).filter(|s| !s.is_empty());
    let cluster = raw.cluster.unwrap_or(false);
    if let Some(u) = &redis_url {
        let urls: Vec<&str> = u.split(',').map(str::trim).collect();
        // Never echo the URL: it may carry a password.
        let at = format!("environment variable {ENV_REDIS_URL}");
        if urls.iter().any(|u| {
            !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://")
                || u.starts_with("unix://"))
        }) {
            c.fail_at(
                &at,
                ENV_REDIS_URL,
                "must start with redis://, rediss:// or unix:// (in cluster mode: each comma-separated node)",
            );
        } else if urls.len() > 1 && !cluster {
            c.fail_at(
                &at,
                ENV_REDIS_URL,
                "lists several nodes: set redis.cluster = true for a Redis Cluster (one URL otherwise)",
            );
        }
    }
    let command_timeout_ms = raw.command_timeout_ms.unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS);
    let connect_timeout_ms = raw.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    for (key, v) in [
        ("redis.command_timeout_ms", command_timeout_ms),
        ("redis.connect_timeout_ms", connect_timeout_ms),
    ] {
        c.range(key, v, 10..=30_000);
    }
    let resync_seconds = raw.resync_seconds.unwrap_or(DEFAULT_RESYNC_SECONDS);
    c.range("redis.resync_seconds", resync_seconds, 1..=3_600);
    let events_max_len = raw.events_max_len.unwrap_or(DEFAULT_EVENTS_MAX_LEN);
    c.range("redis.events_max_len", events_max_len, 1_000..=100_000_000);

    StoreConfig {
        redis_url: redis_url.map(Secret::new),
        cluster,
        command_timeout: Duration::from_millis(command_timeout_ms.into()),
        connect_timeout: Duration::from_millis(connect_timeout_ms.into()),
        resync_every: Duration::from_secs(resync_seconds.into()),
        session_format: raw.session_format.unwrap_or_default(),
        events_max_len,
    }
}
