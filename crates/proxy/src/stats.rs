//! Per (listen address, release) counters: requests served, errors the proxy generated, and
//! requests in flight. The hot path only touches atomics; the registry lock is taken when a
//! route is installed and when statistics are read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Counters of one release on one listen address.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    idle: Notify,
}

impl Counters {
    /// Count a request as in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Wait until nothing is in flight or `timeout` passes; returns what is left.
    pub async fn wait_idle(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

/// A request in flight on one release; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Counters>);

impl InFlight {
    pub fn counters(&self) -> &Counters {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One row of `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsEntry {
    pub listen: String,
    pub release: String,
    /// Requests answered (by the upstream or by the proxy).
    pub requests: u64,
    /// 5xx responses the proxy generated itself (no route, upstream unreachable or too slow).
    pub errors: u64,
    pub in_flight: u64,
}

/// All counters, keyed by (canonical listen address, release).
#[derive(Debug, Default)]
pub struct Stats {
    by_key: Mutex<BTreeMap<(String, String), Arc<Counters>>>,
}

impl Stats {
    pub fn counters(&self, listen: &str, release: &str) -> Arc<Counters> {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((listen.to_owned(), release.to_owned()))
            .or_default()
            .clone()
    }

    pub fn get(&self, listen: &str, release: &str) -> Option<Arc<Counters>> {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(listen.to_owned(), release.to_owned())).cloned()
    }

    pub fn snapshot(&self) -> Vec<StatsEntry> {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((listen, release), c)| StatsEntry {
                listen: listen.clone(),
                release: release.clone(),
                requests: c.requests.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                in_flight: c.in_flight(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_request_ends() {
        let stats = Stats::default();
        let counters = stats.counters("127.0.0.1:80", "r1");
        let guard = counters.enter();
        let waiter = {
            let counters = counters.clone();
            tokio::spawn(async move { counters.wait_idle(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(guard);
        assert_eq!(waiter.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn wait_idle_reports_what_is_left_at_the_deadline() {
        let stats = Stats::default();
        let counters = stats.counters("127.0.0.1:80", "r1");
        let _a = counters.enter();
        let _b = counters.enter();
        assert_eq!(counters.wait_idle(Duration::from_millis(30)).await, 2);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].in_flight, 2);
    }
}
