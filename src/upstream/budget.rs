//! How many UserInfo calls a provider may take now, per replica.

use std::time::Duration;

/// A token bucket: how many upstream calls a provider may take now. Hand-written rather than
/// a rate-limiting crate: one mutex-guarded pair of numbers is all this needs, on a path that
/// already costs an HTTP round trip.
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl TokenBucket {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            state: std::sync::Mutex::new((f64::from(burst.max(1)), std::time::Instant::now())),
        }
    }

    /// Takes one token; `Err(wait)` when there is none, with how long until the next one.
    pub fn take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_says_when_to_come_back() {
        let b = TokenBucket::new(2, 3);
        assert!((0..3).all(|_| b.take().is_ok()));
        let wait = b.take().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
