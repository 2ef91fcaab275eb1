//! Timed runs: calls counted, good calls' latencies in a histogram.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One timed run.
pub(crate) struct Run {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) hist: Histogram<u64>,
}

impl Run {
    pub(crate) fn new() -> Self {
        Run {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        }
    }

    /// A run measured elsewhere (h2load): its throughput only, no latencies.
    pub(crate) fn throughput(rps: f64, done: u64) -> Self {
        let mut run = Run::new();
        run.ok = done;
        run.elapsed = Duration::from_secs_f64(done as f64 / rps.max(f64::MIN_POSITIVE));
        run
    }

    /// Counts one call that took `took`; only good calls enter the latency histogram.
    pub(crate) fn record(&mut self, good: bool, took: Duration) {
        if good {
            self.ok += 1;
            let _ = self.hist.record((took.as_micros() as u64).max(1));
        } else {
            self.errors += 1;
        }
    }

    /// The workers' runs as one, timed from `start`.
    pub(crate) async fn gather(workers: Vec<tokio::task::JoinHandle<Run>>, start: Instant) -> Run {
        let mut run = Run::new();
        for w in workers {
            let r = w.await.expect("worker");
            run.ok += r.ok;
            run.errors += r.errors;
            let _ = run.hist.add(r.hist);
        }
        run.elapsed = start.elapsed();
        run
    }

    pub(crate) fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    /// The latency at quantile `q` (µs); NaN when the run recorded none.
    pub(crate) fn p(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64
    }
}

/// Calls `call` once per token with `concurrency` calls in flight.
pub(crate) async fn run_tokens<F, Fut>(tokens: Vec<String>, concurrency: usize, call: F) -> Run
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let queue = Arc::new(std::sync::Mutex::new(tokens.into_iter()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let queue = queue.clone();
            let call = call.clone();
            tokio::spawn(async move {
                let mut run = Run::new();
                loop {
                    let Some(token) = queue.lock().expect("lock").next() else {
                        break;
                    };
                    let t0 = Instant::now();
                    let good = call(token).await;
                    run.record(good, t0.elapsed());
                }
                run
            })
        })
        .collect();
    Run::gather(tasks, start).await
}
