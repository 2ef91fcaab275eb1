//! The Redis store (`REDIS_URL`): what replicas share, and what survives a restart.
//!
//! One multiplexed [`ConnectionManager`] carries every command and reconnects on its own;
//! sessiongate starts (and serves JWT validations) while Redis is still down. Every call is
//! bounded by `command_timeout` *including* reconnect attempts, so an outage turns into a fast
//! `UNAVAILABLE` instead of a queue of hanging requests. Pub/sub needs a connection of its
//! own: a background task keeps it subscribed and reports each (re)subscription as
//! [`Notice::Resync`], because messages published during an outage are lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ErrorKind, RedisError};
use tokio::sync::broadcast;

use super::keys::Keys;
use super::{
    EVENTS_MAX_LEN, EVENTS_STREAM, Key, Notice, Store, StoreError, StoreKind, StoreResult, Write,
};
use crate::config::Env;

/// Time bounds for Redis calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Whole call, reconnects included.
    pub command: Duration,
    /// One TCP connect attempt.
    pub connect: Duration,
}

/// Consecutive failed calls that open the circuit.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit fails calls at once before letting one through again.
const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
/// Calls in flight at most; past it, calls fail at once (load shedding) instead of queueing.
const MAX_IN_FLIGHT: usize = 1024;

/// Fails calls fast while Redis is known to be down or hung, so that each request does not
/// pay the whole command timeout (and a queue of them does not pile up): after
/// [`BREAKER_THRESHOLD`] consecutive failures it opens for [`BREAKER_COOLDOWN`]; the next call
/// after that is a probe — success closes it, failure opens it again. Recovery after Redis
/// returns therefore takes at most one cooldown.
#[derive(Default)]
struct Breaker {
    failures: std::sync::atomic::AtomicU32,
    /// Milliseconds since `epoch` until which the circuit is open.
    open_until: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }

    fn is_open(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.now_ms() < self.open_until.load(Relaxed)
    }

    fn record(&self, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if ok {
            if self.failures.swap(0, Relaxed) >= BREAKER_THRESHOLD {
                tracing::info!("Redis answers again: store circuit closed");
            }
            return;
        }
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n >= BREAKER_THRESHOLD {
            if n == BREAKER_THRESHOLD {
                tracing::warn!(
                    failures = n,
                    "Redis keeps failing: store circuit open, calls fail fast"
                );
            }
            self.open_until
                .store(self.now_ms() + BREAKER_COOLDOWN.as_millis() as u64, Relaxed);
        }
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    conn: ConnectionManager,
    timeouts: Timeouts,
    breaker: Breaker,
    in_flight: tokio::sync::Semaphore,
    channel: String,
    notices: broadcast::Sender<Notice>,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Classifies a Redis error: data we cannot read is a bug; everything else (I/O, timeouts,
/// LOADING, READONLY, CLUSTERDOWN, …) means "not available right now".
fn classify(e: RedisError) -> StoreError {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ if e.code() == Some("WRONGTYPE") => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.category().to_owned()),
    }
}

impl RedisStore {
    /// Creates the store without waiting for Redis: the first command connects.
    pub fn connect(url: &str, env: Env, timeouts: Timeouts) -> StoreResult<Self> {
        // The URL may carry a password: never include it in an error.
        let client = redis::Client::open(url)
            .map_err(|_| StoreError::Unavailable("REDIS_URL is not a valid Redis URL".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.command))
            // Few, quick retries: the per-call timeout bounds the wait anyway, and the next
            // call after a failed reconnect starts a fresh one.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(classify)?;
        let channel = Keys::new(env).channel();
        let notices = broadcast::channel(1024).0;
        let subscriber = tokio::spawn(subscribe_forever(
            client,
            channel.clone(),
            notices.clone(),
            timeouts,
        ));
        Ok(Self {
            conn,
            timeouts,
            breaker: Breaker::default(),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            channel,
            notices,
            subscriber,
        })
    }

    /// `SET key value NX|XX [PX ttl]`: true if it was set.
    async fn set_if(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        condition: &str,
    ) -> StoreResult<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key.as_str()).arg(value).arg(condition);
        if let Some(t) = ttl {
            cmd.arg("PX").arg(ttl_ms(t));
        }
        let reply: Option<String> = self
            .run("SET", |mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(reply.is_some())
    }

    /// Runs one command future with the call bound, in a span named by the operation (never
    /// by the key: key names are digests, but still nobody's business).
    async fn run<T, F>(
        &self,
        op: &'static str,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> StoreResult<T>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let span = tracing::debug_span!(
            "redis",
            otel.name = op,
            otel.kind = "client",
            db.system = "redis",
            db.operation = op
        );
        if self.breaker.is_open() {
            metrics::counter!("sessiongate_store_fast_failures_total", "why" => "circuit_open")
                .increment(1);
            return Err(StoreError::Unavailable(
                "Redis failed repeatedly just now (circuit open)".into(),
            ));
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            metrics::counter!("sessiongate_store_fast_failures_total", "why" => "overloaded")
                .increment(1);
            return Err(StoreError::Unavailable(format!(
                "{MAX_IN_FLIGHT} Redis calls already in flight (load shed)"
            )));
        };
        let call = tokio::time::timeout(self.timeouts.command, f(self.conn.clone()));
        let result = match tracing::Instrument::instrument(call, span).await {
            Ok(r) => r.map_err(classify),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.timeouts.command.as_millis()
            ))),
        };
        // Only "unavailable" counts against Redis: a corrupt record is not an outage.
        self.breaker
            .record(!matches!(result, Err(StoreError::Unavailable(_))));
        result
    }
}

/// Keeps one pub/sub connection subscribed, forever, with capped exponential backoff.
async fn subscribe_forever(
    client: redis::Client,
    channel: String,
    notices: broadcast::Sender<Notice>,
    timeouts: Timeouts,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        match tokio::time::timeout(timeouts.connect + timeouts.command, attempt).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                tracing::debug!(channel, "subscribed to the invalidation channel");
                let _ = notices.send(Notice::Resync);
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                    let _ = notices.send(Notice::Message(Arc::from(payload)));
                }
                tracing::warn!(channel, "invalidation channel lost; resubscribing");
            }
            Ok(Err(e)) => tracing::debug!(error = e.category(), "cannot subscribe yet"),
            Err(_) => tracing::debug!("subscribing timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The arguments of an XADD of `event` to the bounded event stream.
fn xadd(event: &serde_json::Value) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(EVENTS_STREAM)
        .arg("MAXLEN")
        .arg("~")
        .arg(EVENTS_MAX_LEN)
        .arg("*")
        .arg("event")
        .arg(event.to_string());
    cmd
}

fn ttl_ms(ttl: Duration) -> u64 {
    // Redis refuses PX 0; a zero TTL means "expire at once", so 1 ms.
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("PING", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        self.run("GET", |mut c| async move { c.get(key.as_str()).await })
            .await
    }

    async fn get_many(&self, keys: &[Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // A pipeline of GETs rather than MGET: the keys need not share a Cluster slot.
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.get(k.as_str());
        }
        self.run("GET pipeline", |mut c| async move {
            pipe.query_async(&mut c).await
        })
        .await
    }

    async fn put_if_absent(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        self.set_if(key, value, ttl, "NX").await
    }

    async fn put_if_present(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        self.set_if(key, value, ttl, "XX").await
    }

    async fn write(&self, writes: Vec<Write>) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in &writes {
            match w {
                Write::Put { key, value, ttl } => {
                    let cmd = pipe.cmd("SET").arg(key.as_str()).arg(value.as_slice());
                    if let Some(t) = ttl {
                        cmd.arg("PX").arg(ttl_ms(*t));
                    }
                    cmd.ignore();
                }
                Write::Delete { key } => {
                    pipe.del(key.as_str()).ignore();
                }
                Write::SetAdd { key, member, ttl } => {
                    pipe.sadd(key.as_str(), member.as_slice()).ignore();
                    if let Some(t) = ttl {
                        // NX sets the TTL of a new set, GT extends an existing one: the set
                        // lives as long as its longest-lived member needs (Redis >= 7.0).
                        let ms = ttl_ms(*t);
                        pipe.cmd("PEXPIRE")
                            .arg(key.as_str())
                            .arg(ms)
                            .arg("NX")
                            .ignore();
                        pipe.cmd("PEXPIRE")
                            .arg(key.as_str())
                            .arg(ms)
                            .arg("GT")
                            .ignore();
                    }
                }
                Write::SetRemove { key, member } => {
                    pipe.srem(key.as_str(), member.as_slice()).ignore();
                }
                Write::Event(event) => {
                    pipe.add_command(xadd(event)).ignore();
                }
            }
        }
        self.run("MULTI/EXEC", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn incr(&self, key: &Key, ttl: Duration) -> StoreResult<u64> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(key.as_str(), 1u64)
            .cmd("PEXPIRE")
            .arg(key.as_str())
            .arg(ttl_ms(ttl))
            .arg("NX")
            .ignore();
        let (n,): (u64,) = self
            .run(
                "INCR",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(n)
    }

    async fn set_members(&self, key: &Key) -> StoreResult<Vec<Vec<u8>>> {
        self.run(
            "SMEMBERS",
            |mut c| async move { c.smembers(key.as_str()).await },
        )
        .await
    }

    async fn ttl(&self, key: &Key) -> StoreResult<Option<Option<Duration>>> {
        let ms: i64 = self
            .run("PTTL", |mut c| async move { c.pttl(key.as_str()).await })
            .await?;
        Ok(match ms {
            -2 => None,
            -1 => Some(None),
            ms => Some(Some(Duration::from_millis(ms.max(0) as u64))),
        })
    }

    async fn publish(&self, payload: &[u8]) -> StoreResult<()> {
        let channel = self.channel.as_str();
        self.run("PUBLISH", |mut c| async move {
            c.publish::<_, _, i64>(channel, payload).await
        })
        .await
        .map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn append_event(&self, event: &serde_json::Value) -> StoreResult<()> {
        let cmd = xadd(event);
        self.run("XADD", |mut c| async move {
            cmd.query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn recent_events(&self, count: usize) -> StoreResult<Vec<serde_json::Value>> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(EVENTS_STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count);
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .run(
                "XREVRANGE",
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (_, fields) in entries.into_iter().rev() {
            for (name, value) in fields {
                if name == "event" {
                    out.push(
                        serde_json::from_str(&value)
                            .map_err(|e| StoreError::Corrupt(format!("event: {e}")))?,
                    );
                }
            }
        }
        Ok(out)
    }
}
