//! The proxy process: listeners for every route, the admin socket, startup and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cutover_model::Route;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinSet;

use crate::coarse_timer::CoarseTimer;
use crate::error::ProxyError;
use crate::forward::{forward, ListenerShared};
use crate::stats::Stats;
use crate::table::{self, RouteTable, ROUTES_FILE};
use crate::upstream::UpstreamSet;
use crate::workers::{worker_count, Workers};

/// File name of the admin socket inside the state directory.
pub const SOCKET_FILE: &str = "proxy.sock";
/// File name of the pid file inside the state directory.
pub const PID_FILE: &str = "proxy.pid";

/// How long open client connections get to finish when a listener closes.
const CONNECTION_GRACE: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish when the proxy stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a listen address from the saved table may stay busy at startup (a previous
/// proxy process may still be releasing it).
const STARTUP_BIND_PATIENCE: Duration = Duration::from_secs(3);
/// How many times an existing admin socket must answer before startup gives up.
const STALE_SOCKET_CHECKS: u32 = 10;

/// Where the proxy keeps its state.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Holds `routes.json`, `proxy.sock` and `proxy.pid`.
    pub state_dir: PathBuf,
}

impl ProxyConfig {
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join(SOCKET_FILE)
    }

    pub fn routes_path(&self) -> PathBuf {
        self.state_dir.join(ROUTES_FILE)
    }
}

/// Run the proxy until SIGTERM or SIGINT, then stop accepting, let in-flight requests finish
/// briefly and return.
///
/// The admin API and the accept loops run on the caller's runtime (one or two threads are
/// plenty); client connections are served on the proxy's own worker threads, one for every
/// two cores unless `CUTOVER_PROXY_WORKERS` says otherwise.
pub async fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|source| ProxyError::Signals { source })?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| ProxyError::Signals { source })?;
    run_until(config, async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
    .await
}

/// Run the proxy until `shutdown` completes (or this future is dropped, which stops everything
/// at once, like a killed process).
pub async fn run_until(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    let socket_path = config.socket_path();
    let routes = table::load_routes(&config.routes_path())?;
    let admin_listener = bind_admin_socket(&socket_path).await?;

    let workers =
        Workers::start(worker_count()).map_err(|source| ProxyError::Workers { source })?;
    let proxy = Arc::new(Proxy::new(config.clone(), workers));
    proxy.restore(routes).await;

    let pid_path = config.state_dir.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id())).map_err(|source| {
        ProxyError::PidFile {
            path: pid_path.clone(),
            source,
        }
    })?;
    tracing::info!(state_dir = %config.state_dir.display(), "cutover proxy started");

    let mut tasks = JoinSet::new();
    tasks.spawn(crate::admin::serve(proxy.clone(), admin_listener));
    shutdown.await;

    tracing::info!("cutover proxy stopping");
    tasks.abort_all();
    let _ = std::fs::remove_file(&socket_path);
    proxy.stop_all(SHUTDOWN_GRACE).await;
    let _ = std::fs::remove_file(&pid_path);
    Ok(())
}

async fn bind_admin_socket(path: &Path) -> Result<UnixListener, ProxyError> {
    let fail = |source| ProxyError::AdminSocket {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        // A proxy that is just dying may still hold the socket for a moment: only a socket
        // that keeps answering means another proxy is alive.
        let mut answers = 0;
        while std::os::unix::net::UnixStream::connect(path).is_ok() {
            answers += 1;
            if answers == STALE_SOCKET_CHECKS {
                return Err(ProxyError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::remove_file(path).map_err(fail)?;
    }
    // Bind under a temporary name, restrict it, then move it in place: the socket is never
    // reachable under its real name with a looser mode.
    let tmp = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(fail)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(err) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(err));
    }
    Ok(listener)
}

/// Bind a TCP listener the way the proxy serves it.
pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
    config: ProxyConfig,
    state: Mutex<State>,
    pub stats: Arc<Stats>,
    workers: Arc<Workers>,
}

impl Proxy {
    fn new(config: ProxyConfig, workers: Workers) -> Self {
        Proxy {
            config,
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
    async fn restore(&self, routes: Vec<Route>) {
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
        let path = self.config.routes_path();
        let list: Vec<Route> = routes.values().cloned().collect();
        let saved = tokio::task::spawn_blocking(move || table::save_routes(&path, &list)).await;
        match saved {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(AdminFailure::internal(crate::admin::error_text(&err))),
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
    async fn stop_all(&self, grace: Duration) {
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
