//! One computation per key at a time, in process: concurrent callers asking about the same
//! token wait for the first one's answer instead of each asking the provider.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct SingleFlight<V> {
    inflight: Mutex<HashMap<[u8; 32], Arc<OnceCell<V>>>>,
}

impl<V> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> SingleFlight<V> {
    /// Runs `work` for `key` unless a call for it is already running, whose result is then
    /// shared. A leader that is cancelled hands over: the next waiter runs `work` itself
    /// (`OnceCell` semantics), so a caller giving up never strands the others.
    pub async fn run<F, Fut>(&self, key: [u8; 32], work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let v = cell.get_or_init(work).await.clone();
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_later_ones_run_again() {
        let sf = Arc::new(SingleFlight::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (sf, runs, gate) = (sf.clone(), runs.clone(), gate.clone());
                tokio::spawn(async move {
                    sf.run([1; 32], || async move {
                        gate.notified().await;
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
                })
            })
            .collect();
        // Every caller is waiting on the one run before it is let go.
        while sf
            .inflight
            .lock()
            .unwrap()
            .get(&[1; 32])
            .map_or(0, Arc::strong_count)
            < 21
        {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for c in calls {
            assert_eq!(c.await.unwrap(), 1);
        }
        assert!(sf.inflight.lock().unwrap().is_empty());
        assert_eq!(sf.run([1; 32], || async { 7 }).await, 7);
    }
}
