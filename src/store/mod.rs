//! The shared store: sessions, tombstones, users, revocations, replay records, cached
//! upstream answers, flow overrides, events and the invalidation channel (docs/design.md,
//! "Storage", lists every key).
//!
//! Two implementations behave the same (one behavioural test suite runs against both):
//! [`redis::RedisStore`] when `REDIS_URL` is set, [`memory::MemoryStore`] otherwise.
//!
//! The trait is a handful of primitives with exact semantics rather than one method per
//! domain operation, so domain logic lives once (in `session/`, `flow/`) and the backends
//! stay small. Keys are a [`Key`] type that only [`keys`] can build, so a raw token can never
//! become part of a key name.
//!
//! Failure role: every call fails closed with [`StoreError::Unavailable`] within the
//! configured command timeout. Callers decide what that means (the JWT verdict cache fails
//! open; opaque lookups and revocations answer `UNAVAILABLE`).

mod events;
pub mod keys;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub(crate) use events::event;
pub use keys::Key;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time. Safe to retry.
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this build cannot read (a bug or a foreign writer).
    #[error("the session store returned unexpected data: {0}")]
    Corrupt(String),
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => crate::error::Error::unavailable(
                crate::error::ErrorReason::StoreUnavailable,
                "the session store is unavailable; retry shortly",
            ),
            StoreError::Corrupt(detail) => crate::error::Error::internal(detail),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set `key` to `value`; `ttl` `None` keeps it until deleted.
    Put {
        key: Key,
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    /// Delete `key` (any type).
    Delete { key: Key },
    /// Add `member` to the set at `key`; `ttl` (if any) becomes the set's TTL, extended only
    /// (a set holding a long-lived member keeps its longer TTL).
    SetAdd {
        key: Key,
        member: Vec<u8>,
        ttl: Option<Duration>,
    },
    /// Remove `member` from the set at `key`.
    SetRemove { key: Key, member: Vec<u8> },
    /// Adds `member` to the expiry-ordered set `key` until `until` (Unix seconds; only ever
    /// raised), and drops every member whose `until` is at or before `prune_through`: the set
    /// holds only what still matters, pruned on every write.
    ExpiringAdd {
        key: Key,
        member: Vec<u8>,
        until: i64,
        prune_through: i64,
        ttl: Option<Duration>,
    },
    /// Removes `member` from the expiry-ordered set `key`.
    ExpiringRemove { key: Key, member: Vec<u8> },
    /// Append an event (a JSON object) to the event stream, with the batch.
    Event(serde_json::Value),
}

/// One entry of the event stream, as a consumer group reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// The stream's id of the entry (ordered; opaque otherwise).
    pub id: String,
    /// The event; `None` when the stream was trimmed past it before the group acknowledged
    /// it (Redis keeps the id in the group's pending list, not the entry).
    pub event: Option<serde_json::Value>,
}

/// Which entries a consumer group read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRead {
    /// Entries no one in the group has read yet; reading them makes them pending.
    New,
    /// Entries read but not yet acknowledged, after this id (`"0"`: from the first).
    PendingAfter(String),
}

/// What arrives on the invalidation channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A payload some replica published (domain-encoded).
    Message(Arc<[u8]>),
    /// The subscription was re-established after an outage: messages may have been missed,
    /// so in-process state fed by the channel must be resynchronised from the store.
    Resync,
}

/// A message on the invalidation channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Invalidation {
    /// Session `sid` was revoked; remember it until `until` (Unix seconds).
    Revoke { sid: String, until: i64 },
    /// An admin changed flow `flow`'s overrides: reload them (handled by `flow::service`).
    Rollout { flow: String },
}

/// When a listener next reloads what the invalidation channel feeds it: on a timer (a
/// message lost without a `Resync` — a publish that failed, a partition — is caught within
/// `every`), at once after a `Resync`, and after a failed reload again and again with backoff
/// until one succeeds (a reload that failed once must not wait for the next reconnect).
pub struct ResyncSchedule {
    every: Duration,
    retry: Duration,
    due: tokio::time::Instant,
}

impl ResyncSchedule {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    const MAX_RETRY: Duration = Duration::from_secs(5);

    pub fn new(every: Duration) -> Self {
        Self {
            every,
            retry: Self::FIRST_RETRY,
            due: tokio::time::Instant::now() + every,
        }
    }

    /// When the next reload is due.
    pub fn due(&self) -> tokio::time::Instant {
        self.due
    }

    /// Messages may have been lost: reload now.
    pub fn now(&mut self) {
        self.due = tokio::time::Instant::now();
    }

    pub fn succeeded(&mut self) {
        self.retry = Self::FIRST_RETRY;
        self.due = tokio::time::Instant::now() + self.every;
    }

    pub fn failed(&mut self) {
        self.due = tokio::time::Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(Self::MAX_RETRY);
    }
}

/// Which backend is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

/// The store primitives. All calls are bounded in time.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn kind(&self) -> StoreKind;

    /// Round trip to the backend.
    async fn ping(&self) -> StoreResult<()>;

    /// What about the backend's own configuration puts acknowledged writes at risk (no AOF,
    /// an evicting memory policy), in words for the log. Empty when nothing does or it
    /// cannot be read (managed Redis often hides CONFIG).
    async fn durability_warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// The value at `key`, or `None` if absent or expired.
    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>>;

    /// The values at `keys`, in order, in one round trip.
    async fn get_many(&self, keys: &[Key]) -> StoreResult<Vec<Option<Vec<u8>>>>;

    /// Set `key` only if it does not exist; `true` if this call set it. The primitive behind
    /// locks, single-flight and "create exactly once" across replicas.
    async fn put_if_absent(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<bool>;

    /// Overwrite `key` only if it exists; `true` if this call wrote it. Updates of records
    /// that a concurrent delete (a revocation) must be able to win against.
    async fn put_if_present(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<bool>;

    /// Apply `writes` atomically: every reader sees all of them or none — on one Redis server
    /// and in the embedded store. In a Redis Cluster a transaction cannot span slots, so
    /// atomicity holds per hash tag: the writes are grouped by slot and the groups applied in
    /// the order the batch first names them, stopping at the first failure (which is
    /// returned). Callers therefore order a batch so that a prefix of it is safe: what makes a
    /// credential valid goes last, what revokes one goes first.
    async fn write(&self, writes: Vec<Write>) -> StoreResult<()>;

    /// Deletes `key` only if it holds `value` (a lock released by its owner only, never by a
    /// call that lost it to expiry and a new owner). True if it was deleted.
    async fn delete_if_equals(&self, key: &Key, value: &[u8]) -> StoreResult<bool>;

    /// Replaces `key`'s value with `new` only if it still holds `expected` (its TTL is kept):
    /// a read-modify-write that loses no concurrent change. True if it was replaced.
    async fn compare_and_swap(&self, key: &Key, expected: &[u8], new: &[u8]) -> StoreResult<bool>;

    /// Add `by` to the counter at `key` and return the new value; a new counter expires after
    /// `ttl` (fixed window: later increments do not extend it). For rate limits and the
    /// counts the fleet shares (the rollout guards' windows). `get` reads it as decimal text.
    async fn incr(&self, key: &Key, by: u64, ttl: Duration) -> StoreResult<u64>;

    /// The members of the set at `key` (empty if absent).
    async fn set_members(&self, key: &Key) -> StoreResult<Vec<Vec<u8>>>;

    /// The members of the expiry-ordered set `key` whose `until` is after `after`, with it.
    async fn expiring_members(&self, key: &Key, after: i64) -> StoreResult<Vec<(Vec<u8>, i64)>>;

    /// Remaining time to live of `key`: `None` if absent, `Some(None)` if it never expires.
    async fn ttl(&self, key: &Key) -> StoreResult<Option<Option<Duration>>>;

    /// Publish on the invalidation channel, to every replica (this one included).
    async fn publish(&self, payload: &[u8]) -> StoreResult<()>;

    /// Receive what is published on the invalidation channel from now on.
    fn subscribe(&self) -> broadcast::Receiver<Notice>;

    /// Append one event (a JSON object) to the event stream; the stream is bounded.
    async fn append_event(&self, event: &serde_json::Value) -> StoreResult<()>;

    /// The newest `count` events, oldest first.
    async fn recent_events(&self, count: usize) -> StoreResult<Vec<serde_json::Value>>;

    /// Creates the consumer group `group` on the event stream, reading the events appended
    /// from `from_ms` (Unix ms, wall clock) on — not from whenever the group happens to be
    /// created, which may be later — and nothing if it exists. A group's readers share one
    /// cursor and one pending list, so each event goes to one of them. Callers keep one
    /// reader per group at a time (a lease), which is why the reader has no name of its own.
    async fn group_create(&self, group: &str, from_ms: i64) -> StoreResult<()>;

    /// Up to `count` entries of `group`, in stream order.
    async fn group_read(
        &self,
        group: &str,
        read: GroupRead,
        count: usize,
    ) -> StoreResult<Vec<StreamEntry>>;

    /// Acknowledges `ids` in `group`: they leave its pending list for good.
    async fn group_ack(&self, group: &str, ids: &[String]) -> StoreResult<()>;

    /// Resets `key`'s time to live to `ttl` only if it holds `value` (a lease renewed by its
    /// holder only). True if it was renewed.
    async fn renew_if_equals(&self, key: &Key, value: &[u8], ttl: Duration) -> StoreResult<bool>;
}

/// The event stream's name in Redis (contract).
pub const EVENTS_STREAM: &str = "sessiongate:events";
/// How many events the stream keeps (approximately, in Redis) unless `redis.events_max_len`
/// says otherwise.
pub const EVENTS_MAX_LEN: usize = crate::config::DEFAULT_EVENTS_MAX_LEN;
/// How many events the embedded store keeps.
pub const MEMORY_EVENTS_MAX_LEN: usize = 10_000;

/// Builds the configured store: Redis when `REDIS_URL` is set, else the embedded one.
pub fn from_config(
    env: crate::config::Env,
    cfg: &crate::config::StoreConfig,
) -> StoreResult<Arc<dyn Store>> {
    Ok(match &cfg.redis_url {
        Some(url) => Arc::new(
            redis::RedisStore::connect(
                url.expose(),
                cfg.cluster,
                env,
                redis::Timeouts {
                    command: cfg.command_timeout,
                    connect: cfg.connect_timeout,
                },
            )?
            .with_events_max_len(cfg.events_max_len),
        ),
        None => Arc::new(memory::MemoryStore::new(env)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_resync_is_retried_with_backoff_then_the_timer_resumes() {
        const EVERY: Duration = Duration::from_secs(30);
        let start = tokio::time::Instant::now();
        let mut s = ResyncSchedule::new(EVERY);
        assert_eq!(s.due() - start, EVERY);
        s.now();
        assert_eq!(s.due(), start);
        let waits: Vec<_> = (0..8)
            .map(|_| {
                s.failed();
                s.due() - start
            })
            .collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(waits[7], ResyncSchedule::MAX_RETRY);
        s.succeeded();
        assert_eq!(s.due() - start, EVERY);
        s.failed();
        assert_eq!(
            s.due() - start,
            Duration::from_millis(100),
            "backoff starts over"
        );
    }
}
