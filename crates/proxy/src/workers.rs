//! The data plane's worker threads: single-threaded tokio runtimes, one for every two cores
//! by default (see [`worker_count`]). Accepted
//! connections are handed to the workers in turn; a connection, its requests and the pooled
//! upstream connections they use all live on one thread, so a request never wakes another
//! thread. The admin API and the accept loops stay on the caller's runtime.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Environment variable overriding the number of worker threads.
pub const WORKERS_ENV: &str = "CUTOVER_PROXY_WORKERS";

/// Worker threads to start: `CUTOVER_PROXY_WORKERS`, or half the available cores (at least
/// one).
///
/// The proxy shares its host with the containers it routes to (that is the Docker target's
/// shape), so by default it leaves them half the cores. Measured on a 2-core host with the
/// upstream and the load generator on the same machine (`cargo bench -p cutover-proxy`), one
/// worker beat two on both counts: 0.91x-0.93x nginx's requests/s against 0.82x-0.91x, and a
/// p99 of 1.05-1.17 ms against 3.7 ms, because two busy workers plus the upstream and the
/// client oversubscribe two cores and the scheduler then delays a worker by up to 8 ms.
pub fn worker_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    parse_worker_count(std::env::var(WORKERS_ENV).ok().as_deref(), cores)
}

fn parse_worker_count(setting: Option<&str>, cores: usize) -> usize {
    setting
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or((cores / 2).max(1))
        .min(64)
}

/// Running worker threads; dropping this stops them (their open connections end).
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("cutover-proxy-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = handle_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            let handle = handle_rx.recv().map_err(|_| {
                std::io::Error::other("a proxy worker thread exited before it started")
            })??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// The worker for the next connection (round-robin).
    pub fn pick(&self) -> &Handle {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[n % self.handles.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_half_the_cores_to_the_upstreams() {
        assert_eq!(parse_worker_count(None, 1), 1);
        assert_eq!(parse_worker_count(None, 2), 1);
        assert_eq!(parse_worker_count(None, 8), 4);
        assert_eq!(parse_worker_count(Some(" 3 "), 2), 3);
        assert_eq!(parse_worker_count(Some("0"), 8), 4);
        assert_eq!(parse_worker_count(Some("lots"), 8), 4);
        assert_eq!(parse_worker_count(Some("1000"), 8), 64);
    }

    #[test]
    fn workers_run_tasks_on_their_own_threads_in_turn() {
        let workers = Workers::start(2).unwrap();
        let names: Vec<String> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.pick().spawn(async move {
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    let _ = tx.send(name);
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(
            names,
            vec![
                "cutover-proxy-0",
                "cutover-proxy-1",
                "cutover-proxy-0",
                "cutover-proxy-1"
            ]
        );
    }
}
