//! The Redis store (`REDIS_URL`): what replicas share, and what survives a restart.
//!
//! Standalone: one multiplexed [`ConnectionManager`] carries every command and reconnects on
//! its own. Cluster (`redis.cluster = true`, `REDIS_URL` a comma-separated list of seed
//! nodes): redis-rs' cluster connection routes each command to its slot's master and follows
//! MOVED/ASK. Either way sessiongate starts (and serves JWT validations) while Redis is still
//! down. Every call is bounded by `command_timeout` *including* reconnect attempts, so an
//! outage turns into a fast `UNAVAILABLE` instead of a queue of hanging requests. Pub/sub
//! needs a connection of its own: a background task keeps it subscribed (in a cluster, to any
//! seed node that answers: classic pub/sub reaches every node) and reports each
//! (re)subscription as [`Notice::Resync`], because messages published during an outage are
//! lost.
//!
//! In a cluster a MULTI/EXEC may only touch one slot, so [`Store::write`] runs one
//! transaction per hash-tag group, in the order the batch first names each group (see the
//! trait's contract; the domain orders its batches so that a batch cut short is safe).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, ErrorKind, RedisError, RedisFuture};
use tokio::sync::broadcast;

use super::keys::Keys;
use super::{
    EVENTS_STREAM, GroupRead, Key, Notice, Store, StoreError, StoreKind, StoreResult, StreamEntry,
    Write,
};
use crate::config::Env;
use breaker::{Breakers, slot_number};
use commands::{transaction, ttl_ms, write_key, xadd};

mod breaker;
mod commands;

/// The one reader name of every consumer group: a lease keeps one reader per group at a
/// time, so a new holder finds what the last one left pending under the same name.
const GROUP_READER: &str = "sessiongate";

/// Calls in flight at most; past it, calls fail at once (load shedding) instead of queueing.
const MAX_IN_FLIGHT: usize = 1024;

/// Time bounds for Redis calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Whole call, reconnects included.
    pub command: Duration,
    /// One TCP connect attempt.
    pub connect: Duration,
}

/// One connection handle for either deployment; cheap to clone (both multiplex).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    conn: Conn,
    /// Cluster mode: multi-key batches are split by slot.
    cluster: bool,
    timeouts: Timeouts,
    breakers: Breakers,
    events_max_len: usize,
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
        // A cluster node behind a standalone configuration: say what to change.
        _ if e.code() == Some("MOVED") => StoreError::Unavailable(
            "Redis answered MOVED: REDIS_URL is a Redis Cluster node; set redis.cluster = true"
                .into(),
        ),
        _ => StoreError::Unavailable(e.category().to_owned()),
    }
}

impl RedisStore {
    /// Creates the store without waiting for Redis: the first command connects. `urls` is one
    /// URL, or the seed nodes of a cluster when `cluster` is set.
    pub fn connect(urls: &str, cluster: bool, env: Env, timeouts: Timeouts) -> StoreResult<Self> {
        // The URL may carry a password: never include it in an error.
        let invalid = |_| StoreError::Unavailable("REDIS_URL is not a valid Redis URL".into());
        let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
        let clients = seeds
            .iter()
            .map(|u| redis::Client::open(*u).map_err(invalid))
            .collect::<StoreResult<Vec<_>>>()?;
        let conn = if cluster {
            let client = redis::cluster::ClusterClient::builder(seeds)
                // Few, quick retries (MOVED/ASK and reconnects): the per-call timeout bounds
                // the wait anyway. The defaults wait up to minutes between retries.
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(200)
                .build()
                .map_err(invalid)?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeouts.connect)
                .set_response_timeout(timeouts.command);
            Conn::Cluster(client.get_pending_async_connection_with_config(config))
        } else {
            if clients.len() != 1 {
                return Err(StoreError::Unavailable(
                    "REDIS_URL lists several nodes: set redis.cluster = true for a Redis Cluster"
                        .into(),
                ));
            }
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.command))
                // Few, quick retries: the per-call timeout bounds the wait anyway, and the next
                // call after a failed reconnect starts a fresh one.
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(200));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(clients[0].clone(), config)
                    .map_err(classify)?,
            )
        };
        let channel = Keys::new(env).channel();
        let notices = broadcast::channel(1024).0;
        let subscriber = tokio::spawn(subscribe_forever(
            clients,
            channel.clone(),
            notices.clone(),
            timeouts,
        ));
        Ok(Self {
            conn,
            cluster,
            timeouts,
            breakers: Breakers::new(cluster),
            events_max_len: super::EVENTS_MAX_LEN,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            channel,
            notices,
            subscriber,
        })
    }

    /// Keeps the event stream to about `n` entries (default [`super::EVENTS_MAX_LEN`]).
    pub fn with_events_max_len(mut self, n: usize) -> Self {
        self.events_max_len = n;
        self
    }

    /// Splits keyed items into groups that a cluster can serve in one request (one slot
    /// each), in the order each group first appears; standalone: one group.
    fn by_slot<T>(&self, items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
        if !self.cluster {
            return vec![items];
        }
        let mut groups: Vec<(u16, Vec<T>)> = Vec::new();
        for item in items {
            let slot = slot_number(key(&item));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push(item),
                None => groups.push((slot, vec![item])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
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
            .run("SET", Some(key.as_str()), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(reply.is_some())
    }

    /// One MGET of keys that share a slot (at least one).
    fn mget<'a>(
        &'a self,
        mut keys: impl Iterator<Item = &'a str>,
    ) -> impl Future<Output = StoreResult<Vec<Option<Vec<u8>>>>> + 'a {
        let first = keys.next();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(first).arg(keys.collect::<Vec<_>>());
        self.run("MGET", first, |mut c| async move {
            cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut c).await
        })
    }

    /// Runs one command future with the call bound, in a span named by the operation (never
    /// by the key: key names are digests, but still nobody's business). `key` (the first key
    /// of the call) picks the circuit in a cluster.
    async fn run<T, F>(
        &self,
        op: &'static str,
        key: Option<&str>,
        f: impl FnOnce(Conn) -> F,
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
        let circuit = self.breakers.circuit(key);
        if circuit.is_some_and(|c| self.breakers.is_open(c)) {
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
        if let Some(c) = circuit {
            self.breakers
                .record(c, !matches!(result, Err(StoreError::Unavailable(_))));
        }
        result
    }
}

/// Keeps one pub/sub connection subscribed, forever, with capped exponential backoff; in a
/// cluster it moves on to the next seed node when one does not answer.
async fn subscribe_forever(
    // The one server, or the seed nodes of a cluster (any of them will do).
    nodes: Vec<redis::Client>,
    channel: String,
    notices: broadcast::Sender<Notice>,
    timeouts: Timeouts,
) {
    let mut backoff = Duration::from_millis(50);
    for client in nodes.iter().cycle() {
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

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("PING", None, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn durability_warnings(&self) -> Vec<String> {
        let get = |name: &'static str| async move {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            self.run("CONFIG GET", None, |mut c| async move {
                cmd.query_async::<Vec<String>>(&mut c).await
            })
            .await
            .ok()
            .and_then(|pair| pair.into_iter().nth(1))
        };
        let mut out = Vec::new();
        if get("appendonly").await.as_deref() == Some("no") {
            out.push(
                "Redis runs without AOF (appendonly no): a Redis crash loses the sessions and \
                 revocations written since its last snapshot; run it with appendonly yes \
                 (appendfsync everysec or always)"
                    .to_owned(),
            );
        }
        if let Some(policy) = get("maxmemory-policy").await
            && policy != "noeviction"
        {
            out.push(format!(
                "Redis maxmemory-policy is {policy}: evicting keys logs users out and can \
                 un-revoke sessions; use noeviction"
            ));
        }
        out
    }

    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        self.run("GET", Some(key.as_str()), |mut c| async move {
            c.get(key.as_str()).await
        })
        .await
    }

    async fn get_many(&self, keys: &[Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One MGET per slot: one in standalone, and in a cluster whenever the keys share a
        // hash tag — as the hot lookups' keys do, which then skip the fan-out entirely.
        let one_slot = || {
            let first = slot_number(keys[0].as_str());
            keys.iter().all(|k| slot_number(k.as_str()) == first)
        };
        if !self.cluster || one_slot() {
            return self.mget(keys.iter().map(Key::as_str)).await;
        }
        let groups = self.by_slot(keys.iter().enumerate().collect(), |(_, k)| k.as_str());
        let answers = futures::future::try_join_all(
            groups
                .iter()
                .map(|group| self.mget(group.iter().map(|(_, k)| k.as_str()))),
        )
        .await?;
        let mut out = vec![None; keys.len()];
        for (group, values) in groups.iter().zip(answers) {
            for ((i, _), v) in group.iter().zip(values) {
                out[*i] = v;
            }
        }
        Ok(out)
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

    async fn delete_if_equals(&self, key: &Key, value: &[u8]) -> StoreResult<bool> {
        // Compare and delete in one step: a script runs atomically.
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT).arg(1).arg(key.as_str()).arg(value);
        let deleted: i64 = self
            .run("EVAL", Some(key.as_str()), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn compare_and_swap(&self, key: &Key, expected: &[u8], new: &[u8]) -> StoreResult<bool> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 else return 0 end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(1)
            .arg(key.as_str())
            .arg(expected)
            .arg(new);
        let swapped: i64 = self
            .run("EVAL", Some(key.as_str()), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(swapped == 1)
    }

    async fn write(&self, writes: Vec<Write>) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        // Standalone: one MULTI/EXEC. Cluster: one per slot, in order, stopping at the first
        // failure (the trait's contract).
        for group in self.by_slot(writes, write_key) {
            let pipe = transaction(&group, self.events_max_len);
            self.run(
                "MULTI/EXEC",
                group.first().map(write_key),
                |mut c| async move { pipe.query_async::<()>(&mut c).await },
            )
            .await?;
        }
        Ok(())
    }

    async fn incr(&self, key: &Key, by: u64, ttl: Duration) -> StoreResult<u64> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(key.as_str(), by)
            .cmd("PEXPIRE")
            .arg(key.as_str())
            .arg(ttl_ms(ttl))
            .arg("NX")
            .ignore();
        let (n,): (u64,) = self
            .run("INCR", Some(key.as_str()), |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok(n)
    }

    async fn set_members(&self, key: &Key) -> StoreResult<Vec<Vec<u8>>> {
        self.run("SMEMBERS", Some(key.as_str()), |mut c| async move {
            c.smembers(key.as_str()).await
        })
        .await
    }

    async fn expiring_members(&self, key: &Key, after: i64) -> StoreResult<Vec<(Vec<u8>, i64)>> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key.as_str())
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES");
        let pairs: Vec<(Vec<u8>, f64)> = self
            .run("ZRANGE", Some(key.as_str()), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(pairs.into_iter().map(|(m, s)| (m, s as i64)).collect())
    }

    async fn ttl(&self, key: &Key) -> StoreResult<Option<Option<Duration>>> {
        let ms: i64 = self
            .run("PTTL", Some(key.as_str()), |mut c| async move {
                c.pttl(key.as_str()).await
            })
            .await?;
        Ok(match ms {
            -2 => None,
            -1 => Some(None),
            ms => Some(Some(Duration::from_millis(ms.max(0) as u64))),
        })
    }

    async fn publish(&self, payload: &[u8]) -> StoreResult<()> {
        let channel = self.channel.as_str();
        self.run("PUBLISH", None, |mut c| async move {
            c.publish::<_, _, i64>(channel, payload).await
        })
        .await
        .map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn append_event(&self, event: &serde_json::Value) -> StoreResult<()> {
        let cmd = xadd(event, self.events_max_len);
        self.run("XADD", Some(EVENTS_STREAM), |mut c| async move {
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
            .run("XREVRANGE", Some(EVENTS_STREAM), |mut c| async move {
                cmd.query_async(&mut c).await
            })
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

    async fn group_create(&self, group: &str, from_ms: i64) -> StoreResult<()> {
        // Stream ids begin with the Redis server's time in ms: the group starts just before
        // the first id at or after `from_ms`, i.e. after the last id the millisecond before
        // can hold. (`<ms-1>-0` would hand the group every event but the first of that
        // millisecond: events appended before `from_ms`.)
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(EVENTS_STREAM)
            .arg(group)
            .arg(format!("{}-{}", from_ms.max(1) - 1, u64::MAX))
            .arg("MKSTREAM");
        self.run("XGROUP", Some(EVENTS_STREAM), |mut c| async move {
            match cmd.query_async::<()>(&mut c).await {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn group_read(
        &self,
        group: &str,
        read: GroupRead,
        count: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(GROUP_READER)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(EVENTS_STREAM);
        match read {
            GroupRead::New => cmd.arg(">"),
            GroupRead::PendingAfter(after) => cmd.arg(after),
        };
        let reply: redis::Value = self
            .run("XREADGROUP", Some(EVENTS_STREAM), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        stream_entries(reply)
    }

    async fn group_ack(&self, group: &str, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(EVENTS_STREAM).arg(group).arg(ids);
        self.run("XACK", Some(EVENTS_STREAM), |mut c| async move {
            cmd.query_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn renew_if_equals(&self, key: &Key, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(1)
            .arg(key.as_str())
            .arg(value)
            .arg(ttl_ms(ttl));
        let renewed: i64 = self
            .run("EVAL", Some(key.as_str()), |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(renewed == 1)
    }
}

/// The entries of an XREADGROUP reply on the one event stream: `nil` (nothing new), or
/// `[[stream, [[id, [field, value, …] | nil], …]]]` (`nil` fields: trimmed since read).
fn stream_entries(reply: redis::Value) -> StoreResult<Vec<StreamEntry>> {
    use redis::Value as V;
    let corrupt = |what: &str| StoreError::Corrupt(format!("XREADGROUP reply: {what}"));
    let streams = match reply {
        V::Nil => return Ok(Vec::new()),
        V::Array(a) => a,
        V::Map(m) => m.into_iter().map(|(k, v)| V::Array(vec![k, v])).collect(),
        _ => return Err(corrupt("not an array")),
    };
    let mut out = Vec::new();
    for stream in streams {
        let V::Array(mut pair) = stream else {
            return Err(corrupt("stream is not a pair"));
        };
        let Some(V::Array(entries)) = pair.pop() else {
            return Err(corrupt("no entries"));
        };
        for entry in entries {
            let V::Array(mut parts) = entry else {
                return Err(corrupt("entry is not an array"));
            };
            if parts.len() != 2 {
                return Err(corrupt("entry is not a pair"));
            }
            let fields = parts.pop();
            let id: String = redis::from_redis_value(parts.pop().unwrap_or(V::Nil))
                .map_err(|_| corrupt("id"))?;
            let event = match fields {
                Some(V::Array(f)) => {
                    let mut event = None;
                    for kv in f.chunks(2) {
                        if let [name, value] = kv {
                            let name: String = redis::from_redis_value(name.clone())
                                .map_err(|_| corrupt("field name"))?;
                            if name == "event" {
                                let text: String = redis::from_redis_value(value.clone())
                                    .map_err(|_| corrupt("field value"))?;
                                event = Some(
                                    serde_json::from_str(&text)
                                        .map_err(|e| StoreError::Corrupt(format!("event: {e}")))?,
                                );
                            }
                        }
                    }
                    event
                }
                _ => None,
            };
            out.push(StreamEntry { id, event });
        }
    }
    Ok(out)
}
