//! A coarse timer for the proxy's long timeouts: hyper's client-connection timeout (the header
//! read timeout, which also closes keep-alive connections left idle) and each route's upstream
//! response timeout.
//!
//! Both are armed for every request. With tokio's timer each arming takes the timer wheel's
//! lock and, when the new deadline is the earliest one, wakes the runtime's driver through its
//! eventfd: a `write` system call on about every fourth request and an extra `epoll_wait` to
//! go with it. These timeouts are seconds long, so precision is worthless here: a
//! [`CoarseSleep`] only checks the clock when polled, and a sleep that is still pending is put
//! on one process-wide list that a single thread sweeps every [`TICK`], waking the sleeps
//! whose deadline has passed and dropping those nobody waits on any more. A timeout therefore
//! fires between 0 and [`TICK`] late.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often pending sleeps are checked; also the most a timeout fires late.
pub const TICK: Duration = Duration::from_millis(250);

/// A sleep that is waiting: its deadline and whom to wake.
struct Entry {
    deadline: Instant,
    waker: Mutex<Option<Waker>>,
}

impl Entry {
    fn wake(&self) {
        let waker = self.waker.lock().ok().and_then(|mut w| w.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The pending sleeps of the whole process, and the thread that sweeps them.
struct Registry {
    pending: Mutex<Vec<Arc<Entry>>>,
}

impl Registry {
    /// The registry, starting its sweeping thread on first use. `None` if no thread could be
    /// started: sleeps then fall back to tokio's timer.
    fn get() -> Option<&'static Registry> {
        static REGISTRY: OnceLock<Option<&'static Registry>> = OnceLock::new();
        *REGISTRY.get_or_init(|| {
            let registry: &'static Registry = Box::leak(Box::new(Registry {
                pending: Mutex::new(Vec::new()),
            }));
            std::thread::Builder::new()
                .name("cutover-proxy-timer".into())
                .spawn(move || loop {
                    std::thread::sleep(TICK);
                    registry.sweep(Instant::now());
                })
                .ok()
                .map(|_| registry)
        })
    }

    fn add(&self, entry: Arc<Entry>) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.push(entry);
        }
    }

    /// Wake the sleeps due at `now`; forget those whose future was dropped.
    fn sweep(&self, now: Instant) {
        let due: Vec<Arc<Entry>> = match self.pending.lock() {
            Ok(mut pending) => {
                let mut due = Vec::new();
                pending.retain(|entry| {
                    if Arc::strong_count(entry) == 1 {
                        false
                    } else if entry.deadline <= now {
                        due.push(entry.clone());
                        false
                    } else {
                        true
                    }
                });
                due
            }
            Err(_) => return,
        };
        // Woken outside the lock: a waker may run arbitrary code.
        for entry in due {
            entry.wake();
        }
    }
}

/// hyper's timer, backed by the coarse registry.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep::until(deadline))
    }
}

/// Resolves at (or up to [`TICK`] after) its deadline.
pub struct CoarseSleep {
    deadline: Instant,
    /// Registered once the sleep has been polled and found pending.
    entry: Option<Arc<Entry>>,
    /// Used instead when the registry's thread could not be started.
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CoarseSleep {
    pub fn until(deadline: Instant) -> Self {
        CoarseSleep {
            deadline,
            entry: None,
            fallback: None,
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        if let Some(fallback) = &mut this.fallback {
            return fallback.as_mut().poll(cx);
        }
        match &this.entry {
            Some(entry) => {
                if let Ok(mut waker) = entry.waker.lock() {
                    match &mut *waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        // Re-armed if the sweep took the waker between our clock check and now.
                        slot => *slot = Some(cx.waker().clone()),
                    }
                }
            }
            None => match Registry::get() {
                Some(registry) => {
                    let entry = Arc::new(Entry {
                        deadline: this.deadline,
                        waker: Mutex::new(Some(cx.waker().clone())),
                    });
                    registry.add(entry.clone());
                    this.entry = Some(entry);
                }
                None => {
                    let mut sleep = Box::pin(tokio::time::sleep_until(this.deadline.into()));
                    let polled = sleep.as_mut().poll(cx);
                    this.fallback = Some(sleep);
                    return polled;
                }
            },
        }
        // The sweep may have run between the clock check and the registration.
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_fires_no_earlier_than_its_deadline_and_within_a_tick() {
        let start = Instant::now();
        CoarseSleep::until(start + Duration::from_millis(300)).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "woke early: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(300) + TICK + Duration::from_millis(200),
            "woke late: {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_past_deadline_is_ready_at_once() {
        let sleep = CoarseSleep::until(Instant::now());
        tokio::time::timeout(Duration::from_millis(50), sleep)
            .await
            .expect("a due sleep resolves on its first poll");
    }

    #[tokio::test]
    async fn hyper_closes_a_connection_whose_head_does_not_arrive_in_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(CoarseTimer)
                .header_read_timeout(Duration::from_millis(300));
            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
        });
        let start = Instant::now();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A slow client: half a request head, then nothing.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection");
        let waited = start.elapsed();
        assert!(read.is_ok());
        assert!(
            waited >= Duration::from_millis(300),
            "closed early: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(300) + TICK + Duration::from_millis(300),
            "closed late: {waited:?}"
        );
        let served = server.await.unwrap();
        assert!(
            served.is_err(),
            "the connection ends with the header timeout"
        );
    }

    #[test]
    fn the_sweep_wakes_due_sleeps_and_forgets_dropped_ones() {
        let registry = Registry {
            pending: Mutex::new(Vec::new()),
        };
        let now = Instant::now();
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Count(woken.clone())));
        let entry = |deadline| {
            Arc::new(Entry {
                deadline,
                waker: Mutex::new(Some(waker.clone())),
            })
        };
        let due = entry(now - Duration::from_millis(1));
        let later = entry(now + Duration::from_secs(60));
        let dropped = entry(now - Duration::from_millis(1));
        registry.add(due.clone());
        registry.add(later.clone());
        registry.add(dropped);
        registry.sweep(now);
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
        let left = registry.pending.lock().unwrap();
        assert_eq!(left.len(), 1);
        assert!(Arc::ptr_eq(&left[0], &later));
    }
}
