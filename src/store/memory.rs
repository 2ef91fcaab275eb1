//! The embedded in-memory store: the quick start's default when no `REDIS_URL` is set.
//!
//! It implements the same semantics as the Redis store (the shared behavioural suite checks
//! that), keeps nothing across restarts and shares nothing between replicas, which is why
//! `live` refuses it. Expiry is lazy on read plus a periodic sweep, so memory stays bounded
//! by what is live.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    GroupRead, Key, MEMORY_EVENTS_MAX_LEN, Notice, Store, StoreError, StoreKind, StoreResult,
    StreamEntry, Write,
};
use crate::clock::{Clock as _, SystemClock};
use crate::config::Env;

/// Sweep expired entries after this many writes.
const SWEEP_EVERY: u64 = 1024;

enum Value {
    Bytes(Vec<u8>),
    Set(HashSet<Vec<u8>>),
    Counter(u64),
    /// Member → until (an expiry-ordered set).
    Expiring(HashMap<Vec<u8>, i64>),
}

struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// A consumer group of the event stream: its cursor and what it read but did not
/// acknowledge.
#[derive(Default)]
struct Group {
    last: u64,
    pending: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    map: HashMap<Key, Entry>,
    /// Events by id (1, 2, …), oldest first, with when they were appended (Unix ms).
    events: VecDeque<(u64, serde_json::Value, i64)>,
    last_event: u64,
    groups: HashMap<String, Group>,
    writes: u64,
}

/// Event ids look like Redis stream ids (`<n>-0`).
fn event_id(n: u64) -> String {
    format!("{n}-0")
}

fn parse_event_id(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl State {
    /// The live entry at `key`, dropping it first if it has expired.
    fn live(&mut self, key: &Key, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|e| !e.live(now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn push_event(&mut self, event: serde_json::Value) {
        if self.events.len() == MEMORY_EVENTS_MAX_LEN {
            self.events.pop_front();
        }
        self.last_event += 1;
        let at = SystemClock.now_ms();
        self.events.push_back((self.last_event, event, at));
    }

    fn event(&self, id: u64) -> Option<serde_json::Value> {
        let i = self.events.binary_search_by_key(&id, |(n, _, _)| *n).ok()?;
        Some(self.events[i].1.clone())
    }

    fn wrote(&mut self, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.map.retain(|_, e| e.live(now));
        }
    }

    fn apply(&mut self, w: Write, now: Instant) -> StoreResult<()> {
        match w {
            Write::Put { key, value, ttl } => {
                self.map.insert(
                    key,
                    Entry {
                        value: Value::Bytes(value),
                        expires_at: ttl.map(|t| now + t),
                    },
                );
            }
            Write::Delete { key } => {
                self.map.remove(&key);
            }
            Write::SetAdd { key, member, ttl } => {
                let new_expiry = ttl.map(|t| now + t);
                match self.live(&key, now) {
                    Some(e) => {
                        let Value::Set(set) = &mut e.value else {
                            return Err(wrong_type(&key));
                        };
                        set.insert(member);
                        // Extend only, never shorten (Redis: EXPIRE NX + EXPIRE GT).
                        if let (Some(old), Some(new)) = (e.expires_at, new_expiry)
                            && new > old
                        {
                            e.expires_at = Some(new);
                        }
                    }
                    None => {
                        self.map.insert(
                            key,
                            Entry {
                                value: Value::Set(HashSet::from([member])),
                                expires_at: new_expiry,
                            },
                        );
                    }
                }
            }
            Write::Event(event) => self.push_event(event),
            Write::ExpiringAdd {
                key,
                member,
                until,
                prune_through,
                ttl,
            } => {
                let new_expiry = ttl.map(|t| now + t);
                let entry = match self.live(&key, now) {
                    Some(e) => e,
                    None => self.map.entry(key.clone()).or_insert(Entry {
                        value: Value::Expiring(HashMap::new()),
                        expires_at: new_expiry,
                    }),
                };
                let Value::Expiring(members) = &mut entry.value else {
                    return Err(wrong_type(&key));
                };
                let u = members.entry(member).or_insert(until);
                *u = (*u).max(until);
                members.retain(|_, u| *u > prune_through);
                if let (Some(old), Some(new)) = (entry.expires_at, new_expiry)
                    && new > old
                {
                    entry.expires_at = Some(new);
                }
                if members.is_empty() {
                    self.map.remove(&key);
                }
            }
            Write::ExpiringRemove { key, member } => {
                if let Some(e) = self.live(&key, now) {
                    let Value::Expiring(members) = &mut e.value else {
                        return Err(wrong_type(&key));
                    };
                    members.remove(&member);
                    if members.is_empty() {
                        self.map.remove(&key);
                    }
                }
            }
            Write::SetRemove { key, member } => {
                if let Some(e) = self.live(&key, now) {
                    let Value::Set(set) = &mut e.value else {
                        return Err(wrong_type(&key));
                    };
                    set.remove(&member);
                    if set.is_empty() {
                        self.map.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that `w` can apply without error, so a batch is all-or-nothing.
    fn check(&mut self, w: &Write, now: Instant) -> StoreResult<()> {
        match w {
            Write::SetAdd { key, .. } | Write::SetRemove { key, .. } => match self.live(key, now) {
                Some(Entry {
                    value: Value::Set(_),
                    ..
                })
                | None => Ok(()),
                Some(_) => Err(wrong_type(key)),
            },
            Write::ExpiringAdd { key, .. } | Write::ExpiringRemove { key, .. } => {
                match self.live(key, now) {
                    Some(Entry {
                        value: Value::Expiring(_),
                        ..
                    })
                    | None => Ok(()),
                    Some(_) => Err(wrong_type(key)),
                }
            }
            Write::Put { .. } | Write::Delete { .. } | Write::Event(_) => Ok(()),
        }
    }
}

fn wrong_type(key: &Key) -> StoreError {
    StoreError::Corrupt(format!("{key} holds another type"))
}

/// The embedded store.
pub struct MemoryStore {
    state: Mutex<State>,
    notices: broadcast::Sender<Notice>,
    _env: Env,
}

impl MemoryStore {
    pub fn new(env: Env) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notices: broadcast::channel(1024).0,
            _env: env,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are
        // checked before they apply), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        let now = Instant::now();
        match self.state().live(key, now) {
            None => Ok(None),
            Some(Entry {
                value: Value::Bytes(b),
                ..
            }) => Ok(Some(b.clone())),
            Some(Entry {
                value: Value::Counter(n),
                ..
            }) => Ok(Some(n.to_string().into_bytes())),
            Some(_) => Err(wrong_type(key)),
        }
    }

    async fn get_many(&self, keys: &[Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let now = Instant::now();
        let mut st = self.state();
        // Redis' MGET answers nil for a key of another type; so does this.
        Ok(keys
            .iter()
            .map(|k| match st.live(k, now) {
                Some(Entry {
                    value: Value::Bytes(b),
                    ..
                }) => Some(b.clone()),
                Some(Entry {
                    value: Value::Counter(n),
                    ..
                }) => Some(n.to_string().into_bytes()),
                _ => None,
            })
            .collect())
    }

    async fn put_if_absent(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        let now = Instant::now();
        let mut st = self.state();
        if st.live(key, now).is_some() {
            return Ok(false);
        }
        st.apply(
            Write::Put {
                key: key.clone(),
                value: value.to_vec(),
                ttl,
            },
            now,
        )?;
        st.wrote(now);
        Ok(true)
    }

    async fn put_if_present(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        let now = Instant::now();
        let mut st = self.state();
        match st.live(key, now) {
            None => Ok(false),
            Some(Entry {
                value: Value::Bytes(_),
                ..
            }) => {
                st.apply(
                    Write::Put {
                        key: key.clone(),
                        value: value.to_vec(),
                        ttl,
                    },
                    now,
                )?;
                st.wrote(now);
                Ok(true)
            }
            Some(_) => Err(wrong_type(key)),
        }
    }

    async fn write(&self, writes: Vec<Write>) -> StoreResult<()> {
        let now = Instant::now();
        let mut st = self.state();
        for w in &writes {
            st.check(w, now)?;
        }
        for w in writes {
            st.apply(w, now)?;
        }
        st.wrote(now);
        Ok(())
    }

    async fn delete_if_equals(&self, key: &Key, value: &[u8]) -> StoreResult<bool> {
        let now = Instant::now();
        let mut st = self.state();
        let held = matches!(
            st.live(key, now),
            Some(Entry { value: Value::Bytes(v), .. }) if v.as_slice() == value
        );
        if held {
            st.apply(Write::Delete { key: key.clone() }, now)?;
            st.wrote(now);
        }
        Ok(held)
    }

    async fn compare_and_swap(&self, key: &Key, expected: &[u8], new: &[u8]) -> StoreResult<bool> {
        let now = Instant::now();
        let mut st = self.state();
        let Some(Entry {
            value: Value::Bytes(v),
            ..
        }) = st.live(key, now)
        else {
            return Ok(false);
        };
        if v.as_slice() != expected {
            return Ok(false);
        }
        *v = new.to_vec();
        st.wrote(now);
        Ok(true)
    }

    async fn incr(&self, key: &Key, by: u64, ttl: Duration) -> StoreResult<u64> {
        let now = Instant::now();
        let mut st = self.state();
        let n = match st.live(key, now) {
            Some(Entry {
                value: Value::Counter(n),
                ..
            }) => {
                *n += by;
                *n
            }
            Some(_) => return Err(wrong_type(key)),
            None => {
                st.map.insert(
                    key.clone(),
                    Entry {
                        value: Value::Counter(by),
                        expires_at: Some(now + ttl),
                    },
                );
                by
            }
        };
        st.wrote(now);
        Ok(n)
    }

    async fn set_members(&self, key: &Key) -> StoreResult<Vec<Vec<u8>>> {
        let now = Instant::now();
        match self.state().live(key, now) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Set(s),
                ..
            }) => Ok(s.iter().cloned().collect()),
            Some(_) => Err(wrong_type(key)),
        }
    }

    async fn expiring_members(&self, key: &Key, after: i64) -> StoreResult<Vec<(Vec<u8>, i64)>> {
        let now = Instant::now();
        match self.state().live(key, now) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Expiring(m),
                ..
            }) => Ok(m
                .iter()
                .filter(|(_, u)| **u > after)
                .map(|(k, u)| (k.clone(), *u))
                .collect()),
            Some(_) => Err(wrong_type(key)),
        }
    }

    async fn ttl(&self, key: &Key) -> StoreResult<Option<Option<Duration>>> {
        let now = Instant::now();
        Ok(self
            .state()
            .live(key, now)
            .map(|e| e.expires_at.map(|t| t - now)))
    }

    async fn publish(&self, payload: &[u8]) -> StoreResult<()> {
        // No receiver is not an error: a replica with nothing cached has nothing to drop.
        let _ = self.notices.send(Notice::Message(Arc::from(payload)));
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn append_event(&self, event: &serde_json::Value) -> StoreResult<()> {
        self.state().push_event(event.clone());
        Ok(())
    }

    async fn recent_events(&self, count: usize) -> StoreResult<Vec<serde_json::Value>> {
        let st = self.state();
        let skip = st.events.len().saturating_sub(count);
        Ok(st
            .events
            .iter()
            .skip(skip)
            .map(|(_, e, _)| e.clone())
            .collect())
    }

    async fn group_create(&self, group: &str, from_ms: i64) -> StoreResult<()> {
        let mut st = self.state();
        // The last event appended before `from_ms`.
        let last = st
            .events
            .iter()
            .take_while(|(_, _, at)| *at < from_ms)
            .last()
            .map_or_else(
                || st.events.front().map_or(st.last_event, |(n, _, _)| n - 1),
                |(n, _, _)| *n,
            );
        st.groups.entry(group.to_owned()).or_insert(Group {
            last,
            pending: BTreeSet::new(),
        });
        Ok(())
    }

    async fn group_read(
        &self,
        group: &str,
        read: GroupRead,
        count: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        let mut st = self.state();
        let st = &mut *st;
        let Some(g) = st.groups.get_mut(group) else {
            // As Redis answers (NOGROUP): the group must be created again.
            return Err(StoreError::Unavailable("no such consumer group".into()));
        };
        match read {
            GroupRead::New => {
                let from = st.events.partition_point(|(n, _, _)| *n <= g.last);
                let out: Vec<StreamEntry> = st
                    .events
                    .iter()
                    .skip(from)
                    .take(count)
                    .map(|(n, e, _)| StreamEntry {
                        id: event_id(*n),
                        event: Some(e.clone()),
                    })
                    .collect();
                for e in &out {
                    let n = parse_event_id(&e.id);
                    g.pending.insert(n);
                    g.last = n;
                }
                Ok(out)
            }
            GroupRead::PendingAfter(after) => {
                let after = parse_event_id(&after);
                let ids: Vec<u64> = g.pending.range(after + 1..).take(count).copied().collect();
                Ok(ids
                    .into_iter()
                    .map(|n| StreamEntry {
                        id: event_id(n),
                        event: st.event(n),
                    })
                    .collect())
            }
        }
    }

    async fn group_ack(&self, group: &str, ids: &[String]) -> StoreResult<()> {
        if let Some(g) = self.state().groups.get_mut(group) {
            for id in ids {
                g.pending.remove(&parse_event_id(id));
            }
        }
        Ok(())
    }

    async fn renew_if_equals(&self, key: &Key, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let now = Instant::now();
        let mut st = self.state();
        match st.live(key, now) {
            Some(e) if matches!(&e.value, Value::Bytes(v) if v == value) => {
                e.expires_at = Some(now + ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::Keys;

    // Expiry is checked with tokio's paused clock: no sleeping.
    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_counters_use_fixed_windows() {
        let s = MemoryStore::new(Env::Test);
        let k = Keys::new(Env::Test);
        s.write(vec![Write::Put {
            key: k.session_token("a"),
            value: b"x".to_vec(),
            ttl: Some(Duration::from_secs(10)),
        }])
        .await
        .unwrap();
        assert_eq!(
            s.incr(&k.session_token("c"), 1, Duration::from_secs(5))
                .await
                .unwrap(),
            1
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            s.incr(&k.session_token("c"), 1, Duration::from_secs(5))
                .await
                .unwrap(),
            2
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        // The window did not slide with the second increment.
        assert_eq!(
            s.incr(&k.session_token("c"), 1, Duration::from_secs(5))
                .await
                .unwrap(),
            1
        );
        assert!(s.get(&k.session_token("a")).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(s.get(&k.session_token("a")).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn set_ttl_only_grows() {
        let s = MemoryStore::new(Env::Test);
        let key = Keys::new(Env::Test).user_sessions("u");
        let add = |m: &str, secs| Write::SetAdd {
            key: key.clone(),
            member: m.as_bytes().to_vec(),
            ttl: Some(Duration::from_secs(secs)),
        };
        s.write(vec![add("a", 100)]).await.unwrap();
        s.write(vec![add("b", 10)]).await.unwrap();
        assert_eq!(
            s.ttl(&key).await.unwrap(),
            Some(Some(Duration::from_secs(100)))
        );
        s.write(vec![add("c", 200)]).await.unwrap();
        assert_eq!(
            s.ttl(&key).await.unwrap(),
            Some(Some(Duration::from_secs(200)))
        );
    }
}
