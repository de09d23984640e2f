//! The data-plane proxy of cutover: a long-lived process that serves each environment's listen
//! address, spreads requests over the current release's upstreams, swaps releases atomically,
//! drains the old one, and keeps its routing table on disk so it outlives the control plane.
//!
//! - [`run`] is the process (`cutover proxy --state-dir DIR`).
//! - [`AdminClient`] and [`ProxyTraffic`] are what the control plane uses to steer it.
//!
//! Map of the crate: `coarse_timer` (the cheap timer behind connection and response
//! timeouts), `upstream` (weighted choice, round-robin, passive health), `forward`
//! (the request path and retries), `workers` (single-threaded runtimes, one per two cores,
//! serving connections), `stats` (in-flight counters and drain), `table` (the
//! persisted routing table), `listeners` (the routes being served, their listeners and
//! accept loops, route changes), `server` (the process: startup, admin socket, shutdown),
//! `admin` (the admin API on the Unix socket), `client` (its client side), `error` (errors
//! and their rendering). Imports go one way: `server` → `admin` → `listeners` →
//! `forward` → `pool`.
//!
//! A request with a body is resent elsewhere only while no byte of it reached an upstream
//! (connection refused, pooled connection closed); it is never buffered for a replay.
//!
//! Deliberately absent: TLS, HTTP/2, websocket upgrades.

mod admin;
pub mod api;
mod client;
mod coarse_timer;
mod error;
mod forward;
mod listeners;
pub mod pidfile;
mod pool;
mod preflight;
mod server;
mod stats;
pub mod table;
mod upstream;
mod workers;

pub use api::{DrainRequest, DrainResponse, Health, RouteChange, StatsEntry};
pub use client::{AdminClient, AdminError, ProxyTraffic};
pub use error::ProxyError;
pub use server::{run, run_until, ProxyConfig, PID_FILE, SOCKET_FILE};
pub use table::ROUTES_FILE;
pub use workers::WORKERS_ENV;
