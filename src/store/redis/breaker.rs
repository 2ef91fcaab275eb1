//! Circuit breakers in front of Redis: calls fail fast while a node is known to be down or
//! hung, one circuit per cluster slot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failed calls that open the circuit.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit fails calls at once before letting one through again.
const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);

/// Fails calls fast while Redis is known to be down or hung, so that each request does not
/// pay the whole command timeout (and a queue of them does not pile up): after
/// [`BREAKER_THRESHOLD`] consecutive failures it opens for [`BREAKER_COOLDOWN`]; the next call
/// after that is a probe — success closes it, failure opens it again. Recovery after Redis
/// returns therefore takes at most one cooldown.
///
/// Standalone Redis has one circuit. A cluster has one per slot: a dead or hung master must
/// not fail calls that its healthy peers would answer. (16 384 × 16 bytes; keyless calls —
/// PING, PUBLISH — go through no circuit in a cluster.)
pub(super) struct Breakers {
    circuits: Vec<Circuit>,
    epoch: Instant,
    /// When the last "circuit open" warning was logged (ms since `epoch`): one a second.
    warned_at: AtomicU64,
}

#[derive(Default)]
pub(super) struct Circuit {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the circuit is open.
    open_until: AtomicU64,
}

impl Breakers {
    pub(super) fn new(cluster: bool) -> Self {
        let n = if cluster { 16_384 } else { 1 };
        Self {
            circuits: (0..n).map(|_| Circuit::default()).collect(),
            epoch: Instant::now(),
            warned_at: AtomicU64::new(0),
        }
    }

    /// The circuit of a call on `key` (`None`: a keyless call).
    pub(super) fn circuit(&self, key: Option<&str>) -> Option<&Circuit> {
        match (self.circuits.len(), key) {
            (1, _) => self.circuits.first(),
            (_, Some(k)) => self.circuits.get(usize::from(slot_number(k))),
            (_, None) => None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn is_open(&self, c: &Circuit) -> bool {
        use Ordering::Relaxed;
        self.now_ms() < c.open_until.load(Relaxed)
    }

    pub(super) fn record(&self, c: &Circuit, ok: bool) {
        use Ordering::Relaxed;
        if ok {
            if c.failures.swap(0, Relaxed) >= BREAKER_THRESHOLD {
                tracing::debug!("Redis answers again: store circuit closed");
            }
            return;
        }
        let n = c.failures.fetch_add(1, Relaxed) + 1;
        if n >= BREAKER_THRESHOLD {
            let now = self.now_ms();
            if n == BREAKER_THRESHOLD {
                let last = self.warned_at.load(Relaxed);
                if (last == 0 || now >= last + 1000)
                    && self
                        .warned_at
                        .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        failures = n,
                        "Redis keeps failing: store circuit open, calls fail fast"
                    );
                }
            }
            c.open_until
                .store(now + BREAKER_COOLDOWN.as_millis() as u64, Relaxed);
        }
    }
}

/// A key's cluster slot: CRC16/XMODEM of its hash tag (or of the whole key), mod 16 384 —
/// what Redis and redis-rs compute. redis-rs' `Slot` only exposes equality, and the circuit
/// breakers need the number; the CRC is the `crc16` crate redis-rs itself uses.
pub(super) fn slot_number(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16_384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // Known answers from `CLUSTER KEYSLOT` on Redis 7.0 and the cluster spec.
        assert_eq!(slot_number("foo"), 12182);
        assert_eq!(slot_number("somekey"), 11058);
        assert_eq!(slot_number("{user1000}.following"), slot_number("user1000"));
        // An empty tag `{}` hashes the whole key; only the first tag counts.
        assert_eq!(
            slot_number("foo{}{bar}"),
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16_384
        );
        assert_eq!(slot_number("foo{{bar}}zap"), slot_number("{bar"));
        // The same slot redis-rs routes to (its `Slot` exposes only equality).
        for key in [
            "sg:test:{t:ab}:session",
            "revoked",
            "sessiongate:events",
            "{x}y",
        ] {
            let other = if key == "revoked" { "{x}y" } else { "revoked" };
            assert_eq!(
                redis::cluster_routing::Slot::for_key(key)
                    == redis::cluster_routing::Slot::for_key(other),
                slot_number(key) == slot_number(other),
            );
        }
    }
}
