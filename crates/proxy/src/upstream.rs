//! The upstream set of one listen address: weighted choice between backends (releases),
//! round-robin over each backend's addresses, and passive health (an address that refused a
//! connection is skipped for about a second).
//!
//! A set is immutable once built except for its atomics; a route change builds a new set and
//! swaps it in, so a request sees one consistent set from start to end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cutover_model::Route;
use http::uri::Authority;
use http::HeaderValue;

use crate::stats::{Counters, Stats};

/// How long an address that refused a connection is skipped.
pub const DOWN_FOR: Duration = Duration::from_millis(1000);

/// Parse an upstream address (`host:port`) into an URI authority.
pub fn parse_upstream_addr(addr: &str) -> Result<Authority, String> {
    let authority: Authority = addr
        .parse()
        .map_err(|_| format!("upstream address `{addr}` is not a `host:port` pair"))?;
    if authority.port_u16().is_none() || authority.as_str().contains('@') {
        return Err(format!(
            "upstream address `{addr}` is not a `host:port` pair"
        ));
    }
    Ok(authority)
}

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 can mean "never marked down".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream address.
#[derive(Debug)]
pub struct Upstream {
    pub authority: Authority,
    down_until_ms: AtomicU64,
}

impl Upstream {
    pub fn is_down(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    pub fn mark_down(&self) {
        self.down_until_ms
            .store(clock_ms() + DOWN_FOR.as_millis() as u64, Ordering::Relaxed);
    }
}

/// The upstreams of one release on one listen address.
#[derive(Debug)]
pub struct BackendSet {
    pub release: HeaderValue,
    pub weight: u32,
    pub addrs: Vec<Upstream>,
    pub counters: Arc<Counters>,
    next: AtomicUsize,
}

impl BackendSet {
    pub fn release_str(&self) -> &str {
        self.release.to_str().unwrap_or("invalid")
    }
}

/// Which upstream to try: (backend index, address index).
pub type Choice = (usize, usize);

/// Everything a listen address serves.
#[derive(Debug)]
pub struct UpstreamSet {
    /// Backends that have at least one address.
    pub backends: Vec<BackendSet>,
    /// How long one attempt may wait for its upstream's answer.
    pub response_timeout: Duration,
    total_weight: u64,
    /// A multiplier coprime with `total_weight`: it visits every weight slot once per cycle
    /// while interleaving the backends.
    stride: u64,
    next: AtomicUsize,
}

const STRIDES: [u64; 4] = [7919, 104_729, 1_299_709, 15_485_863];

impl UpstreamSet {
    /// Build the set for a validated route; counters come from `stats`.
    pub fn build(route: &Route, listen: &str, stats: &Stats) -> Result<Self, String> {
        let mut backends = Vec::with_capacity(route.backends.len());
        for backend in &route.backends {
            if backend.addrs.is_empty() {
                continue;
            }
            let release = HeaderValue::from_str(&backend.release).map_err(|_| {
                format!("release name `{}` is not printable ascii", backend.release)
            })?;
            let addrs = backend
                .addrs
                .iter()
                .map(|a| {
                    parse_upstream_addr(a).map(|authority| Upstream {
                        authority,
                        down_until_ms: AtomicU64::new(0),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            backends.push(BackendSet {
                counters: stats.counters(listen, &backend.release),
                release,
                weight: backend.weight,
                addrs,
                next: AtomicUsize::new(0),
            });
        }
        // Weight 0 everywhere means "equal shares".
        if backends.iter().all(|b| b.weight == 0) {
            for b in &mut backends {
                b.weight = 1;
            }
        }
        let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let stride = STRIDES
            .iter()
            .copied()
            .find(|s| total_weight == 0 || total_weight % s != 0)
            .unwrap_or(1);
        Ok(UpstreamSet {
            backends,
            response_timeout: route.response_timeout,
            total_weight,
            stride,
            next: AtomicUsize::new(0),
        })
    }

    /// The backend serving the `n`th request: over every `total_weight` consecutive requests
    /// each backend is chosen exactly `weight` times.
    pub fn backend_for(&self, n: u64) -> usize {
        if self.backends.len() <= 1 {
            return 0;
        }
        let mut slot = n.wrapping_mul(self.stride) % self.total_weight;
        for (i, backend) in self.backends.iter().enumerate() {
            let w = u64::from(backend.weight);
            if slot < w {
                return i;
            }
            slot -= w;
        }
        0
    }

    /// Pick the upstream for a new request, or `None` when nothing can serve.
    pub fn pick(&self) -> Option<Choice> {
        if self.backends.is_empty() {
            return None;
        }
        let b = if self.backends.len() == 1 {
            0
        } else {
            self.backend_for(self.next.fetch_add(1, Ordering::Relaxed) as u64)
        };
        let backend = &self.backends[b];
        let first = backend.next.fetch_add(1, Ordering::Relaxed);
        let len = backend.addrs.len();
        if len == 1 {
            return Some((b, 0));
        }
        for i in 0..len {
            let a = (first + i) % len;
            if !backend.addrs[a].is_down() {
                return Some((b, a));
            }
        }
        // Every address of the chosen backend is down: prefer a live one elsewhere.
        Some(
            self.retry_choice(&[(b, first % len)])
                .unwrap_or((b, first % len)),
        )
    }

    /// Where to retry after the upstreams in `tried` failed: another live address of the last
    /// backend tried, then of any backend (heaviest first), then addresses marked down.
    pub fn retry_choice(&self, tried: &[Choice]) -> Option<Choice> {
        let &(last_b, _) = tried.last()?;
        let mut order: Vec<usize> = (0..self.backends.len()).filter(|&b| b != last_b).collect();
        order.sort_by_key(|&b| std::cmp::Reverse(self.backends[b].weight));
        order.insert(0, last_b);
        for want_live in [true, false] {
            for &b in &order {
                for (a, upstream) in self.backends[b].addrs.iter().enumerate() {
                    if tried.contains(&(b, a)) {
                        continue;
                    }
                    if want_live && upstream.is_down() {
                        continue;
                    }
                    return Some((b, a));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_model::Backend;

    fn route(backends: &[(&str, u32, usize)]) -> Route {
        Route {
            env: "production".to_owned(),
            listen: "127.0.0.1:8080".to_owned(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (release, weight, n))| Backend {
                    release: (*release).to_owned(),
                    weight: *weight,
                    addrs: (0..*n)
                        .map(|k| format!("127.0.0.1:{}", 9000 + i * 100 + k))
                        .collect(),
                })
                .collect(),
            response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    fn set(backends: &[(&str, u32, usize)]) -> UpstreamSet {
        UpstreamSet::build(&route(backends), "127.0.0.1:8080", &Stats::default()).unwrap()
    }

    #[test]
    fn round_robin_visits_every_address_in_turn() {
        let set = set(&[("a", 100, 3)]);
        let picks: Vec<_> = (0..6).map(|_| set.pick().unwrap()).collect();
        assert_eq!(picks, vec![(0, 0), (0, 1), (0, 2), (0, 0), (0, 1), (0, 2)]);
    }

    #[test]
    fn weighted_choice_gives_each_backend_its_exact_share_per_cycle() {
        let set = set(&[("blue", 90, 1), ("green", 10, 1)]);
        let mut counts = [0u32; 2];
        for _ in 0..1000 {
            counts[set.pick().unwrap().0] += 1;
        }
        assert_eq!(counts, [900, 100]);
        // Shares are interleaved, not served in one block.
        let first_twenty: Vec<_> = (0..20).map(|n| set.backend_for(n)).collect();
        assert!(first_twenty.contains(&1), "{first_twenty:?}");
    }

    #[test]
    fn weighted_choice_handles_uneven_and_zero_weights() {
        let set = set(&[("a", 1, 1), ("b", 2, 1), ("c", 0, 1)]);
        let mut counts = [0u32; 3];
        for n in 0..300 {
            counts[set.backend_for(n)] += 1;
        }
        assert_eq!(counts, [100, 200, 0]);
        let all_zero = self::set(&[("a", 0, 1), ("b", 0, 1)]);
        let mut counts = [0u32; 2];
        for n in 0..10 {
            counts[all_zero.backend_for(n)] += 1;
        }
        assert_eq!(counts, [5, 5]);
    }

    #[test]
    fn backends_without_addresses_are_not_chosen() {
        let set = set(&[("a", 50, 0), ("b", 50, 2)]);
        assert_eq!(set.backends.len(), 1);
        assert_eq!(set.backends[0].release, "b");
        assert!(self::set(&[("a", 50, 0)]).pick().is_none());
    }

    #[test]
    fn an_address_marked_down_is_skipped_until_it_recovers() {
        let set = set(&[("a", 100, 2)]);
        set.backends[0].addrs[0].mark_down();
        for _ in 0..4 {
            assert_eq!(set.pick().unwrap(), (0, 1));
        }
        set.backends[0].addrs[0]
            .down_until_ms
            .store(clock_ms(), Ordering::Relaxed);
        let picks: Vec<_> = (0..2).map(|_| set.pick().unwrap().1).collect();
        assert!(picks.contains(&0));
    }

    #[test]
    fn retry_prefers_the_same_backend_then_others_then_down_addresses() {
        let set = set(&[("blue", 10, 2), ("green", 90, 1)]);
        assert_eq!(set.retry_choice(&[(0, 0)]), Some((0, 1)));
        assert_eq!(set.retry_choice(&[(0, 0), (0, 1)]), Some((1, 0)));
        set.backends[1].addrs[0].mark_down();
        assert_eq!(set.retry_choice(&[(0, 0), (0, 1)]), Some((1, 0)));
        set.backends[0].addrs[1].mark_down();
        assert_eq!(set.retry_choice(&[(0, 0)]), Some((0, 1)));
        assert_eq!(set.retry_choice(&[(0, 0), (0, 1), (1, 0)]), None);
    }
}
