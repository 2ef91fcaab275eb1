//! One webhook's deliverer: at most one replica at a time delivers a webhook's events, the
//! one holding its lease; it reads the event stream through the webhook's consumer group and
//! acknowledges an event only once the receiver took it (or it was buried as a dead letter).
//!
//! What that gives: any replica can deliver, and when the holder dies the next one starts
//! with what it left unacknowledged — at least once, with the same `webhook-id`. Events are
//! delivered in lanes, one per user (or per flow for rollout events): a user's events go out
//! in order, one at a time, and a receiver refusing one user's event holds back only that
//! user. A refused delivery is retried with exponential backoff and jitter until the event
//! is `retry_for` old, then buried (`super::dead`) and the lane moves on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::dead::{self, DeadLetter};
use super::sign::Envelope;
use super::{Endpoint, Shared};
use crate::store::{GroupRead, StreamEntry};

/// How long a lease lasts unless renewed, and how often its holder renews it: a holder that
/// dies is replaced within `LEASE_TTL` (plus one `ACQUIRE_EVERY`).
const LEASE_TTL: Duration = Duration::from_secs(10);
const RENEW_EVERY: Duration = Duration::from_secs(3);
const ACQUIRE_EVERY: Duration = Duration::from_secs(1);
/// How often an idle holder looks for new events.
const POLL: Duration = Duration::from_millis(200);
const READ_BATCH: usize = 100;
/// Events held in lanes at most; past it, reading waits for deliveries to finish.
const READ_AHEAD: usize = 1000;
/// How long a stopping holder lets its deliveries in flight finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Delivers `ep`'s events while this replica holds its lease, competing for it otherwise,
/// until `stop` turns true.
pub(super) async fn run(ep: Arc<Endpoint>, sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let holder = uuid::Uuid::new_v4().to_string();
    let lease = sh.keys.webhook_lease(&ep.cfg.name);
    let name = ep.cfg.name.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        match sh
            .store
            .put_if_absent(&lease, holder.as_bytes(), Some(LEASE_TTL))
            .await
        {
            Ok(true) => {
                tracing::info!(webhook = %name, "delivering this webhook's events (lease taken)");
                metrics::gauge!("sessiongate_webhook_lease_held", "webhook" => name.clone())
                    .set(1.0);
                let mut h = Holder {
                    ep: ep.clone(),
                    sh: &sh,
                    holder: &holder,
                    lanes: Lanes::default(),
                    to_ack: Vec::new(),
                };
                let stopped = h.deliver(&mut stop).await;
                metrics::gauge!("sessiongate_webhook_lease_held", "webhook" => name.clone())
                    .set(0.0);
                metrics::gauge!("sessiongate_webhook_backlog", "webhook" => name.clone()).set(0.0);
                // Hand over at once rather than after the TTL (only if still ours).
                let _ = sh.store.delete_if_equals(&lease, holder.as_bytes()).await;
                if stopped {
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(webhook = %name, error = %e, "cannot reach the store to take the lease")
            }
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(ACQUIRE_EVERY) => {}
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone, which also means stop).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// An event waiting for delivery.
struct Pending {
    /// Its stream id, to acknowledge.
    id: String,
    envelope: Envelope,
    event: Value,
    /// When it happened (Unix ms): retries stop `retry_for` after it.
    at_ms: i64,
    attempts: u32,
    due: Instant,
    in_flight: bool,
}

/// Events by lane, each lane in stream order.
#[derive(Default)]
struct Lanes {
    lanes: HashMap<String, VecDeque<Pending>>,
    /// The stream ids held, so that an entry read twice is held once.
    ids: HashSet<String>,
}

/// A stream id's order (`<ms>-<seq>`).
fn stream_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl Lanes {
    /// Queues `p` in stream order within its lane (an entry read late — the pending list
    /// read again — still goes before the user's later events), never ahead of a head in
    /// flight. False if it is held already.
    fn push(&mut self, lane: String, p: Pending) -> bool {
        if !self.ids.insert(p.id.clone()) {
            return false;
        }
        let q = self.lanes.entry(lane).or_default();
        let key = stream_order(&p.id);
        let first = usize::from(q.front().is_some_and(|h| h.in_flight));
        let at = (first..q.len())
            .find(|&i| stream_order(&q[i].id) > key)
            .unwrap_or(q.len());
        q.insert(at, p);
        true
    }

    fn holds(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// How many events the lanes hold.
    fn held(&self) -> usize {
        self.ids.len()
    }

    fn head(&mut self, lane: &str) -> Option<&mut Pending> {
        self.lanes.get_mut(lane).and_then(VecDeque::front_mut)
    }

    fn pop(&mut self, lane: &str) -> Option<Pending> {
        let q = self.lanes.get_mut(lane)?;
        let p = q.pop_front();
        if q.is_empty() {
            self.lanes.remove(lane);
        }
        if let Some(p) = &p {
            self.ids.remove(&p.id);
        }
        p
    }

    /// The lanes whose head may be attempted now, at most `room` of them, marked in flight.
    fn start(&mut self, now: Instant, room: usize) -> Vec<(String, Envelope)> {
        let mut out = Vec::new();
        for (lane, q) in &mut self.lanes {
            if out.len() >= room {
                break;
            }
            if let Some(p) = q.front_mut()
                && !p.in_flight
                && p.due <= now
            {
                p.in_flight = true;
                out.push((lane.clone(), p.envelope.clone()));
            }
        }
        out
    }

    /// When the next waiting head is due.
    fn next_due(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter_map(VecDeque::front)
            .filter(|p| !p.in_flight)
            .map(|p| p.due)
            .min()
    }
}

/// The lane of an event: its user, else its flow, else its own.
fn lane_of(event: &Value, id: &str) -> String {
    for (field, tag) in [("user_id", "u:"), ("flow", "f:")] {
        if let Some(v) = event.get(field).and_then(Value::as_str) {
            return format!("{tag}{v}");
        }
    }
    format!("e:{id}")
}

/// The replica holding the lease, delivering.
struct Holder<'a> {
    ep: Arc<Endpoint>,
    sh: &'a Shared,
    holder: &'a str,
    lanes: Lanes,
    /// Stream ids to acknowledge (kept until an acknowledgement succeeds).
    to_ack: Vec<String>,
}

type Attempt = (String, Result<(), String>);

impl Holder<'_> {
    /// Delivers until the lease is lost (false) or `stop` turns true (true).
    async fn deliver(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let ep = self.ep.clone();
        let store = &*self.sh.store;
        let group = &ep.group;
        let name = ep.cfg.name.as_str();
        let lease = self.sh.keys.webhook_lease(name);
        if let Err(e) = store.group_create(group, ep.since_ms).await {
            tracing::warn!(webhook = %name, error = %e, "cannot create the webhook's consumer group");
            return false;
        }
        // What the last holder read but did not acknowledge comes first, then what is new.
        let mut pending_after = Some("0".to_owned());
        let mut inflight: JoinSet<Attempt> = JoinSet::new();
        let mut lanes_of: HashMap<tokio::task::Id, String> = HashMap::new();
        let start = Instant::now();
        let (mut lease_until, mut renew_at, mut read_at) =
            (start + LEASE_TTL, start + RENEW_EVERY, start);
        loop {
            let now = Instant::now();
            if now >= renew_at {
                match store
                    .renew_if_equals(&lease, self.holder.as_bytes(), LEASE_TTL)
                    .await
                {
                    Ok(true) => {
                        lease_until = now + LEASE_TTL;
                        renew_at = now + RENEW_EVERY;
                    }
                    Ok(false) => {
                        tracing::warn!(webhook = %name, "lost the webhook's lease; another replica delivers");
                        inflight.abort_all();
                        return false;
                    }
                    Err(_) => renew_at = now + Duration::from_millis(500),
                }
                // Unable to prove the lease is still ours before it would run out: stop, so
                // that two replicas never deliver at once for long.
                if Instant::now() + Duration::from_secs(1) >= lease_until {
                    tracing::warn!(webhook = %name, "cannot renew the webhook's lease; pausing delivery");
                    inflight.abort_all();
                    return false;
                }
            }
            if now >= read_at && self.lanes.held() < READ_AHEAD {
                let read = match &pending_after {
                    Some(after) => GroupRead::PendingAfter(after.clone()),
                    None => GroupRead::New,
                };
                match store.group_read(group, read, READ_BATCH).await {
                    Ok(entries) => {
                        let full = entries.len() == READ_BATCH;
                        let was_pending = pending_after.is_some();
                        if was_pending {
                            pending_after = entries.last().map(|e| e.id.clone());
                        }
                        for e in entries {
                            self.admit(e);
                        }
                        read_at = if full || was_pending { now } else { now + POLL };
                    }
                    Err(e) => {
                        // The group may be gone (a Redis that lost its data): make it again.
                        tracing::debug!(webhook = %name, error = %e, "cannot read the event stream");
                        let _ = store.group_create(group, ep.since_ms).await;
                        // A read that timed out may still have run (Redis answered late): its
                        // entries are pending for us, so read the pending list again.
                        pending_after = Some("0".to_owned());
                        read_at = now + POLL * 5;
                    }
                }
                metrics::gauge!("sessiongate_webhook_backlog", "webhook" => name.to_owned())
                    .set(self.lanes.held() as f64);
            }
            self.flush_acks().await;
            let room = self.ep.cfg.max_in_flight.saturating_sub(inflight.len());
            for (lane, envelope) in self.lanes.start(now, room) {
                let ep = self.ep.clone();
                let now_s = self.sh.clock.now_ms().div_euclid(1000);
                let lane_for_task = lane.clone();
                let handle = inflight.spawn(async move {
                    let r = super::send::attempt(
                        &ep.client,
                        ep.cfg.url.get(),
                        &ep.signer,
                        &envelope,
                        now_s,
                    )
                    .await;
                    (lane_for_task, r)
                });
                lanes_of.insert(handle.id(), lane);
            }
            let mut wake = (now + POLL).min(renew_at);
            if let Some(due) = self.lanes.next_due() {
                wake = wake.min(due.max(now + Duration::from_millis(1)));
            }
            tokio::select! {
                _ = stopped(stop) => {
                    // Let what is in flight finish, so a restart does not resend it.
                    let _ = tokio::time::timeout(STOP_GRACE, async {
                        while let Some(joined) = inflight.join_next_with_id().await {
                            self.settle(joined, &mut lanes_of).await;
                        }
                    })
                    .await;
                    inflight.abort_all();
                    self.flush_acks().await;
                    return true;
                }
                Some(joined) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                    self.settle(joined, &mut lanes_of).await;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Takes a read entry into its lane, or acknowledges it at once if it is not for this
    /// webhook.
    fn admit(&mut self, e: StreamEntry) {
        // Read again (the pending list after a failed read): held or delivered already.
        if self.lanes.holds(&e.id) || self.to_ack.contains(&e.id) {
            return;
        }
        let name = self.ep.cfg.name.as_str();
        let Some(event) = e.event else {
            // Trimmed from the (bounded) stream before it could be delivered.
            tracing::warn!(webhook = %name, stream_id = %e.id, "an event was trimmed from the stream before delivery");
            metrics::counter!("sessiongate_webhook_deliveries_total", "webhook" => name.to_owned(), "result" => "trimmed").increment(1);
            self.to_ack.push(e.id);
            return;
        };
        let Some(envelope) = Envelope::of(&event).filter(|env| self.ep.cfg.wants(&env.kind)) else {
            self.to_ack.push(e.id);
            return;
        };
        let at_ms = event
            .get("at")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(|| self.sh.clock.now_ms(), |d| d.as_millis() as i64);
        let lane = lane_of(&event, &envelope.id);
        self.lanes.push(
            lane,
            Pending {
                id: e.id,
                envelope,
                event,
                at_ms,
                attempts: 0,
                due: Instant::now(),
                in_flight: false,
            },
        );
    }

    /// Records how an attempt went: delivered, retried later, or buried.
    async fn settle(
        &mut self,
        joined: Result<(tokio::task::Id, Attempt), tokio::task::JoinError>,
        lanes_of: &mut HashMap<tokio::task::Id, String>,
    ) {
        let (lane, result) = match joined {
            Ok((id, (lane, result))) => {
                lanes_of.remove(&id);
                (lane, result)
            }
            Err(e) => match lanes_of.remove(&e.id()) {
                Some(lane) => (lane, Err("the delivery task failed".to_owned())),
                None => return,
            },
        };
        let ep = self.ep.clone();
        let name = ep.cfg.name.clone();
        let cfg = &ep.cfg;
        let now_ms = self.sh.clock.now_ms();
        let Some(head) = self.lanes.head(&lane) else {
            return;
        };
        head.in_flight = false;
        head.attempts += 1;
        match result {
            Ok(()) => {
                metrics::counter!("sessiongate_webhook_deliveries_total", "webhook" => name.clone(), "result" => "delivered").increment(1);
                metrics::histogram!("sessiongate_webhook_delivery_lag_seconds", "webhook" => name)
                    .record((now_ms - head.at_ms).max(0) as f64 / 1000.0);
                if let Some(p) = self.lanes.pop(&lane) {
                    self.to_ack.push(p.id);
                }
            }
            Err(why) => {
                metrics::counter!("sessiongate_webhook_deliveries_total", "webhook" => name.clone(), "result" => "failed").increment(1);
                let delay = backoff(cfg.first_retry, cfg.max_retry, head.attempts);
                let age = Duration::from_millis((now_ms - head.at_ms).max(0) as u64);
                if age + delay <= cfg.retry_for {
                    tracing::debug!(webhook = %name, event_id = %head.envelope.id, attempts = head.attempts, error = %why, retry_in_ms = delay.as_millis() as u64, "delivery refused; retrying");
                    head.due = Instant::now() + delay;
                    return;
                }
                let letter = DeadLetter {
                    event_id: head.envelope.id.clone(),
                    event_type: head.envelope.kind.clone(),
                    event: head.event.clone(),
                    attempts: head.attempts,
                    last_error: why,
                    dead_at_ms: now_ms,
                };
                let buried = match dead::bury(
                    &self.sh.keys,
                    &name,
                    &letter,
                    cfg.dead_letter_retention,
                    now_ms,
                ) {
                    Ok(writes) => self.sh.store.write(writes).await,
                    Err(e) => Err(e),
                };
                match buried {
                    Ok(()) => {
                        tracing::warn!(webhook = %name, event_id = %letter.event_id, event_type = %letter.event_type, attempts = letter.attempts, error = %letter.last_error, "gave up delivering an event: dead letter");
                        metrics::counter!("sessiongate_webhook_deliveries_total", "webhook" => name, "result" => "dead_lettered").increment(1);
                        if let Some(p) = self.lanes.pop(&lane) {
                            self.to_ack.push(p.id);
                        }
                    }
                    Err(e) => {
                        // Not acknowledged, not lost: try it again shortly (delivered or
                        // buried then).
                        tracing::warn!(webhook = %name, error = %e, "cannot store a dead letter; retrying the delivery");
                        if let Some(head) = self.lanes.head(&lane) {
                            head.due = Instant::now() + Duration::from_secs(1);
                        }
                    }
                }
            }
        }
    }

    async fn flush_acks(&mut self) {
        if self.to_ack.is_empty() {
            return;
        }
        if self
            .sh
            .store
            .group_ack(&self.ep.group, &self.to_ack)
            .await
            .is_ok()
        {
            self.to_ack.clear();
        }
    }
}

/// The wait before attempt `attempts + 1`: `first` doubled per attempt up to `max`, with
/// jitter (between half and all of it), so that receivers coming back are not hit by every
/// retry at once.
fn backoff(first: Duration, max: Duration, attempts: u32) -> Duration {
    let exp = first.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let full = exp.min(max);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempts in 1..40 {
            let full = (first * 2u32.pow((attempts - 1).min(20))).min(max);
            for _ in 0..50 {
                let d = backoff(first, max, attempts);
                assert!(d >= full / 2 && d <= full, "attempt {attempts}: {d:?}");
            }
        }
    }

    /// An event waiting in a lane, due `now`.
    fn pending(id: &str, now: Instant) -> Pending {
        Pending {
            id: id.into(),
            envelope: Envelope {
                id: id.into(),
                kind: "session.created".into(),
                body: Vec::new(),
            },
            event: Value::Null,
            at_ms: 0,
            attempts: 0,
            due: now,
            in_flight: false,
        }
    }

    #[test]
    fn lanes_deliver_a_users_events_one_at_a_time_in_order() {
        let mut l = Lanes::default();
        let now = Instant::now();
        let p = |id: &str| pending(id, now);
        l.push("u:a".into(), p("a1"));
        l.push("u:a".into(), p("a2"));
        l.push("u:b".into(), p("b1"));
        let mut started: Vec<_> = l.start(now, 10).into_iter().map(|(_, e)| e.id).collect();
        started.sort();
        assert_eq!(started, ["a1", "b1"]);
        // Nothing more until a head settles; a2 waits behind a1.
        assert!(l.start(now, 10).is_empty());
        assert_eq!(l.pop("u:a").unwrap().id, "a1");
        assert_eq!(
            l.start(now, 10)
                .into_iter()
                .map(|(_, e)| e.id)
                .collect::<Vec<_>>(),
            ["a2"]
        );
        // `room` bounds what starts.
        l.pop("u:a");
        l.pop("u:b");
        assert_eq!(l.held(), 0);
        l.push("u:c".into(), p("c1"));
        l.push("u:d".into(), p("d1"));
        assert_eq!(l.start(now, 1).len(), 1);
    }

    #[test]
    fn an_entry_read_again_is_held_once_and_a_late_one_keeps_stream_order() {
        let mut l = Lanes::default();
        let now = Instant::now();
        let p = |id: &str| pending(id, now);
        assert!(l.push("u:a".into(), p("1700000000005-0")));
        assert!(l.push("u:a".into(), p("1700000000007-0")));
        assert!(!l.push("u:a".into(), p("1700000000007-0")), "held already");
        assert_eq!(l.held(), 2);
        // The head goes out; an older entry read late queues behind it, before the newer one.
        assert_eq!(l.start(now, 1).len(), 1);
        assert!(l.push("u:a".into(), p("1700000000003-0")));
        let order: Vec<_> = l.lanes["u:a"].iter().map(|p| p.id.clone()).collect();
        assert_eq!(
            order,
            ["1700000000005-0", "1700000000003-0", "1700000000007-0"]
        );
        assert_eq!(l.pop("u:a").unwrap().id, "1700000000005-0");
        assert!(!l.holds("1700000000005-0"));
        assert!(
            l.push("u:a".into(), p("1700000000005-0")),
            "gone, so held anew"
        );
    }

    #[test]
    fn events_lane_by_user_then_flow_then_alone() {
        assert_eq!(
            lane_of(&serde_json::json!({"user_id": "usr_1"}), "e"),
            "u:usr_1"
        );
        assert_eq!(
            lane_of(&serde_json::json!({"flow": "login"}), "e"),
            "f:login"
        );
        assert_eq!(lane_of(&serde_json::json!({}), "e1"), "e:e1");
    }
}
