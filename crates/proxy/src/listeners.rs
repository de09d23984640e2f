//! The running proxy's state: the routing table in memory, one listener per listen address
//! with its accept loop, and the route changes the admin API makes. The process around it
//! (startup, admin socket, shutdown) is `server`; the admin API is `admin`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cutover_model::Route;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinSet;

use crate::coarse_timer::CoarseTimer;
use crate::error::error_text;
use crate::forward::{forward, ListenerShared};
use crate::stats::Stats;
use crate::table::{self, RouteTable};
use crate::upstream::UpstreamSet;
use crate::workers::Workers;

/// How long open client connections get to finish when a listener closes.
const CONNECTION_GRACE: Duration = Duration::from_secs(30);
/// How long a listen address from the saved table may stay busy at startup (a previous
/// proxy process may still be releasing it).
const STARTUP_BIND_PATIENCE: Duration = Duration::from_secs(3);
/// Bind a TCP listener the way the proxy serves it.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// One served listen address.
struct ListenerHandle {
    env: String,
    shared: Arc<ListenerShared>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ListenerHandle {
    fn start(env: &str, shared: Arc<ListenerShared>, listener: TcpListener) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(shared.clone(), listener, stop_rx));
        ListenerHandle {
            env: env.to_owned(),
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Close the listening socket now; open connections finish their requests in the
    /// background (within `grace`) under `retiring`.
    async fn close(mut self, retiring: &mut JoinSet<()>) {
        if let Some(stop) = self.stop.take() {
            let (closed, closed_rx) = oneshot::channel();
            if stop.send(closed).is_ok() {
                let _ = closed_rx.await;
            }
        }
        if let Some(task) = self.task.take() {
            retiring.spawn(async move {
                let _ = task.await;
            });
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn accept_loop(
    shared: Arc<ListenerShared>,
    listener: TcpListener,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(CoarseTimer)
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30));
    let http = Arc::new(http);

    let closed = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listen = %shared.listen, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Hand the connection to a worker thread; it registers there.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(listen = %shared.listen, error = %err, "cannot hand a connection to a worker");
                        continue;
                    }
                };
                let worker = shared.workers.pick().clone();
                let shared = shared.clone();
                let http = http.clone();
                let mut drain = drain_rx.clone();
                connections.spawn_on(async move {
                    let stream = match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => stream,
                        Err(err) => {
                            tracing::warn!(listen = %shared.listen, error = %err, "cannot serve a connection on a worker");
                            return;
                        }
                    };
                    let service = service_fn(move |req| forward(shared.clone(), req));
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = async { let _ = drain.wait_for(|d| *d).await; } => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                }, &worker);
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            closed = &mut stop => break closed.ok(),
        }
    };
    drop(listener);
    if let Some(closed) = closed {
        let _ = closed.send(());
    }
    let _ = drain_tx.send(true);
    let finished = tokio::time::timeout(CONNECTION_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(listen = %shared.listen, "closing connections still open after the grace period");
    }
}

/// Errors of admin operations, with the HTTP status they map to.
#[derive(Debug)]
pub(crate) struct AdminFailure {
    pub status: http::StatusCode,
    pub message: String,
}

impl AdminFailure {
    fn bad_request(message: String) -> Self {
        AdminFailure {
            status: http::StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn conflict(message: String) -> Self {
        AdminFailure {
            status: http::StatusCode::CONFLICT,
            message,
        }
    }

    fn internal(message: String) -> Self {
        AdminFailure {
            status: http::StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }
}

struct State {
    routes: RouteTable,
    /// Keyed by canonical listen address.
    listeners: HashMap<String, ListenerHandle>,
    /// Closed listeners whose connections are still finishing.
    retiring: JoinSet<()>,
}

/// The proxy's shared state; admin calls are serialized by the state lock, requests never
/// take it.
pub(crate) struct Proxy {
    /// Where the routing table is saved.
    routes_path: PathBuf,
    state: Mutex<State>,
    pub stats: Arc<Stats>,
    workers: Arc<Workers>,
}

impl Proxy {
    pub fn new(routes_path: PathBuf, workers: Workers) -> Self {
        Proxy {
            routes_path,
            state: Mutex::new(State {
                routes: RouteTable::new(),
                listeners: HashMap::new(),
                retiring: JoinSet::new(),
            }),
            stats: Arc::new(Stats::default()),
            workers: Arc::new(workers),
        }
    }

    /// Serve the saved table. A route that cannot be served is logged and kept in the table,
    /// so the next `set_route` for its env retries it.
    pub async fn restore(&self, routes: Vec<Route>) {
        let mut state = self.state.lock().await;
        for route in routes {
            let listen = match table::validate_route(&route) {
                Ok(listen) => listen,
                Err(message) => {
                    tracing::error!(env = %route.env, %message, "saved route is invalid; not serving it");
                    continue;
                }
            };
            if let Some(other) = state.listeners.get(&listen) {
                tracing::error!(env = %route.env, other = %other.env, %listen, "saved routes share a listen address; serving only the first");
                continue;
            }
            let addr: SocketAddr = match listen.parse() {
                Ok(addr) => addr,
                Err(_) => continue,
            };
            let deadline = tokio::time::Instant::now() + STARTUP_BIND_PATIENCE;
            let listener = loop {
                match bind_tcp(addr) {
                    Ok(listener) => break Some(listener),
                    Err(err)
                        if err.kind() == std::io::ErrorKind::AddrInUse
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => {
                        tracing::error!(env = %route.env, %listen, error = %err, "cannot listen on the saved address; set the route again to retry");
                        break None;
                    }
                }
            };
            if let Some(listener) = listener {
                match self.shared_for(&route, &listen) {
                    Ok(shared) => {
                        let handle = ListenerHandle::start(&route.env, shared, listener);
                        state.listeners.insert(listen, handle);
                    }
                    Err(message) => {
                        tracing::error!(env = %route.env, %message, "saved route is invalid; not serving it");
                        continue;
                    }
                }
            }
            state.routes.insert(route.env.clone(), route);
        }
    }

    fn shared_for(&self, route: &Route, listen: &str) -> Result<Arc<ListenerShared>, String> {
        let set = UpstreamSet::build(route, listen, &self.stats)?;
        Ok(Arc::new(ListenerShared {
            listen: listen.to_owned(),
            set: ArcSwapOption::from_pointee(set),
            stats: self.stats.clone(),
            workers: self.workers.clone(),
        }))
    }

    pub async fn routes(&self) -> Vec<Route> {
        self.state.lock().await.routes.values().cloned().collect()
    }

    async fn persist(&self, routes: &RouteTable) -> Result<(), AdminFailure> {
        let path = self.routes_path.clone();
        let list: Vec<Route> = routes.values().cloned().collect();
        let saved = tokio::task::spawn_blocking(move || table::save_routes(&path, &list)).await;
        match saved {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(AdminFailure::internal(error_text(&err))),
            Err(err) => Err(AdminFailure::internal(format!(
                "saving the routing table was interrupted: {err}"
            ))),
        }
    }

    /// Serve `route` from now on; returns the route it replaced.
    pub async fn set_route(&self, route: Route) -> Result<Option<Route>, AdminFailure> {
        let listen = table::validate_route(&route).map_err(AdminFailure::bad_request)?;
        let mut state = self.state.lock().await;
        state.reap();
        let previous = state.routes.get(&route.env).cloned();
        if let Some(holder) = state.listeners.get(&listen) {
            if holder.env != route.env {
                return Err(AdminFailure::conflict(format!(
                    "listen address {listen} already serves env `{}`; remove that route first",
                    holder.env
                )));
            }
        }
        let set =
            UpstreamSet::build(&route, &listen, &self.stats).map_err(AdminFailure::bad_request)?;

        // Bind first: a failure leaves everything as it was.
        let new_listener = if state.listeners.contains_key(&listen) {
            None
        } else {
            let addr: SocketAddr = listen
                .parse()
                .map_err(|_| AdminFailure::bad_request(format!("bad listen address {listen}")))?;
            Some(bind_tcp(addr).map_err(|err| {
                AdminFailure::conflict(format!(
                    "cannot listen on {listen}: {err}; free the address or choose another"
                ))
            })?)
        };

        let mut routes = state.routes.clone();
        routes.insert(route.env.clone(), route.clone());
        self.persist(&routes).await?;
        state.routes = routes;

        match new_listener {
            Some(listener) => {
                let shared = Arc::new(ListenerShared {
                    listen: listen.clone(),
                    set: ArcSwapOption::from_pointee(set),
                    stats: self.stats.clone(),
                    workers: self.workers.clone(),
                });
                let handle = ListenerHandle::start(&route.env, shared, listener);
                state.listeners.insert(listen.clone(), handle);
            }
            None => {
                if let Some(handle) = state.listeners.get(&listen) {
                    handle.shared.set.store(Some(Arc::new(set)));
                }
            }
        }

        // The env moved: close its old address.
        if let Some(previous) = &previous {
            if let Ok(old_listen) = table::canonical_listen(&previous.listen) {
                if old_listen != listen {
                    state.close_listener(&old_listen).await;
                }
            }
        }
        Ok(previous)
    }

    /// Stop serving `env`; returns the route it had.
    pub async fn remove_route(&self, env: &str) -> Result<Option<Route>, AdminFailure> {
        let mut state = self.state.lock().await;
        state.reap();
        let Some(previous) = state.routes.get(env).cloned() else {
            return Ok(None);
        };
        let mut routes = state.routes.clone();
        routes.remove(env);
        self.persist(&routes).await?;
        state.routes = routes;
        if let Ok(listen) = table::canonical_listen(&previous.listen) {
            if state.listeners.get(&listen).is_some_and(|h| h.env == env) {
                state.close_listener(&listen).await;
            }
        }
        Ok(Some(previous))
    }

    /// Close every listener and wait up to `grace` for in-flight requests.
    pub async fn stop_all(&self, grace: Duration) {
        let mut state = self.state.lock().await;
        let listens: Vec<String> = state.listeners.keys().cloned().collect();
        for listen in listens {
            state.close_listener(&listen).await;
        }
        let retiring = &mut state.retiring;
        let _ = tokio::time::timeout(grace, async {
            while retiring.join_next().await.is_some() {}
        })
        .await;
        retiring.abort_all();
    }

    /// Number of routes, and the listen addresses of routes not being served (their address
    /// could not be bound at startup).
    pub async fn health(&self) -> (usize, Vec<String>) {
        let state = self.state.lock().await;
        let unbound = state
            .routes
            .values()
            .filter_map(|r| table::canonical_listen(&r.listen).ok())
            .filter(|l| !state.listeners.contains_key(l))
            .collect();
        (state.routes.len(), unbound)
    }
}

impl State {
    async fn close_listener(&mut self, listen: &str) {
        if let Some(handle) = self.listeners.remove(listen) {
            handle.close(&mut self.retiring).await;
        }
    }

    fn reap(&mut self) {
        while self.retiring.try_join_next().is_some() {}
    }
}
