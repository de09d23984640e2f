//! A port for a listener the test cannot bind itself: the proxy (in-process or the real
//! `cutover proxy`) binds the `listen` address of a route and has no way to report a port
//! the kernel picked, so the test must name one.
//!
//! The least racy way to name one: ports come from below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), so no `bind(…:0)` and no outgoing connection on this
//! machine is ever handed one by the kernel; each call in a process takes the next port of
//! a sequence that starts at an offset derived from the pid, so tests running at once (in
//! one process or several) ask for different ports; and a port is returned only after
//! binding it once succeeded. What remains is another program choosing the same fixed port
//! between that check and the proxy's bind, which then fails loudly with "address in use".
//!
//! Shared by the proxy tests, the proxy benchmark and the integration harness (included by
//! path, as they are separate crates).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out.
const LOW: u32 = 20_000;
/// Highest port handed out when the ephemeral range cannot be read (Linux's default range
/// starts at 32768).
const DEFAULT_HIGH: u32 = 32_768;

/// First port of the kernel's ephemeral range, if it can be read.
fn ephemeral_start() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A 127.0.0.1 port, free when this returns, that the kernel never hands out by itself.
pub fn reserve_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_start()
        .filter(|start| *start > LOW + 1_000)
        .unwrap_or(DEFAULT_HIGH)
        .min(65_536);
    let span = high - LOW;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free 127.0.0.1 port between {LOW} and {high}: stop what holds them and retry")
}
