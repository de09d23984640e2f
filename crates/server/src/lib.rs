//! The control plane: owns the sled store (one process per database), plans and runs
//! deployments with the executor, resumes unfinished ones at start, retires warm releases
//! when they are due, and serves one API ([`http::router`]: `/api/v1`, `/metrics`, the web
//! UI) through two doors: the Unix socket `control.sock` (mode 0600; the caller is the
//! socket's peer, proven by the kernel) and, when `cutover serve --http ADDR` asks for it,
//! a TCP listener (bearer tokens, web sessions; TLS and listener limits in [`door`]).
//!
//! The router is built by a function so tests drive it in-process. Authorization lives in
//! [`auth`], approval rules in [`approvals`], the hash-chained audit log in [`audit`].
//! Nothing polls: followers ([`follow`]), the watcher and the metrics are fed by the
//! store's change events.

pub use cutover_api as api;
pub mod anchor;
pub mod approval_view;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod deploy;
pub mod door;
mod error;
pub mod follow;
pub mod guardrails;
pub mod http;
pub mod metrics;
pub mod plaintext;
pub mod projects;
pub mod retention;
pub mod secrets;
pub mod ui;
mod view;
pub mod watch;
pub mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use cutover_executor::{Executor, ExecutorConfig};
use cutover_model::Providers;
use cutover_store::Store;
use tokio::sync::Notify;

pub use error::ServerError;
pub use http::{router, LocalPeer};
pub use view::detail;

/// Optional parts of a control plane.
#[derive(Clone, Default)]
pub struct Options {
    /// Directory with strategy overrides (`plans/`), looked up next to the spec too.
    pub plans_dir: Option<PathBuf>,
    pub webhooks: webhooks::Webhooks,
    /// Where proxy counters for `/metrics` come from.
    pub proxy_stats: Option<Arc<dyn metrics::ProxyStats>>,
    /// The secrets master key (none: secret operations are refused).
    pub secrets: Option<Arc<secrets::Keyring>>,
}

/// Shared state of a running control plane.
pub struct ControlPlane {
    pub store: Store,
    pub providers: Providers,
    executor: Arc<Executor>,
    /// Deployments whose executor task runs in this process.
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    shutdown: Notify,
    /// Directory with built-in strategy overrides (`plans/`), looked up next to the spec too.
    pub plans_dir: Option<PathBuf>,
    pub webhooks: webhooks::Webhooks,
    pub metrics: metrics::Metrics,
    pub proxy_stats: Option<Arc<dyn metrics::ProxyStats>>,
    /// The deployments followed now, each with one publisher.
    pub hub: follow::Hub,
    /// Random id of this control plane process (claims of a dead process are stale).
    pub instance_id: String,
    /// Rate limits of web logins and the bound on password hashing.
    pub login_limits: ui::limits::LoginLimits,
    /// The master key of the secret store.
    pub secrets: Arc<secrets::Keyring>,
}

impl ControlPlane {
    pub fn new(store: Store, providers: Providers, config: ExecutorConfig) -> Arc<ControlPlane> {
        Self::with_options(store, providers, config, Options::default())
    }

    pub fn with_options(
        store: Store,
        providers: Providers,
        config: ExecutorConfig,
        options: Options,
    ) -> Arc<ControlPlane> {
        let executor = Arc::new(Executor::new(store.clone(), providers.clone(), config));
        let metrics = metrics::Metrics::default();
        let mut webhooks = options.webhooks;
        webhooks.failures = metrics.webhook_failures.clone();
        Arc::new(ControlPlane {
            store,
            providers,
            executor,
            running: Mutex::new(HashMap::new()),
            shutdown: Notify::new(),
            plans_dir: options.plans_dir,
            webhooks,
            metrics,
            proxy_stats: options.proxy_stats,
            hub: follow::Hub::default(),
            instance_id: instance_id(),
            login_limits: ui::limits::LoginLimits::default(),
            secrets: options.secrets.unwrap_or_default(),
        })
    }

    /// Run (or resume) a deployment in the background unless it already runs here.
    pub fn spawn_run(self: &Arc<Self>, deployment_id: &str) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|_, handle| !handle.is_finished());
        if running.contains_key(deployment_id) {
            return false;
        }
        let executor = self.executor.clone();
        let id = deployment_id.to_string();
        let span = tracing::info_span!("deployment", deployment = %id);
        let handle = tokio::spawn(
            async move {
                match executor.run(&id).await {
                    Ok(status) => {
                        tracing::info!(status = status.label(), "deployment finished")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "deployment did not finish")
                    }
                }
            }
            .instrument(span),
        );
        running.insert(deployment_id.to_string(), handle);
        true
    }

    /// Stop every executor task of this process (as a crash would; the journal keeps what
    /// they did). For tests and shutdown.
    pub fn abort_runs(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (_, handle) in running.drain() {
            handle.abort();
        }
    }

    /// Resume every deployment the journal says is unfinished (the executor decides which:
    /// [`cutover_executor::resumable`]). Returns their ids.
    pub fn resume_unfinished(self: &Arc<Self>) -> Result<Vec<String>, ServerError> {
        let ids = cutover_executor::resumable(&self.store)?;
        for id in &ids {
            self.spawn_run(id);
        }
        Ok(ids)
    }

    /// Ask the server loop to stop.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
    }

    /// Remove instances of warm releases whose time is up. Skips environments with a
    /// deployment in progress, so a rollback never races the reaper.
    pub async fn reap_once(&self) -> Result<usize, ServerError> {
        Ok(cutover_executor::reap_retirements(
            &self.store,
            self.providers.compute.as_ref(),
            cutover_model::now_ms(),
        )
        .await?)
    }

    /// Start the background watcher (metrics, step logs, webhooks).
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        watch::spawn(self.clone())
    }
}

fn instance_id() -> String {
    cutover_model::random_token_hex(8)
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), cutover_model::now_ms()))
}

/// Serve the router on the Unix socket `socket` (mode 0600) until shutdown is requested.
/// Resumes unfinished deployments first and runs the retirement reaper and the watcher in
/// the background.
pub async fn serve_unix(cp: Arc<ControlPlane>, socket: &Path) -> Result<(), ServerError> {
    serve(cp, socket, None).await
}

/// The TCP door of [`serve`]: where, and how ([`door::DoorOptions`]: TLS, limits).
#[derive(Clone)]
pub struct HttpDoor {
    pub addr: SocketAddr,
    pub options: door::DoorOptions,
}

/// Like [`serve_unix`], and also serve the router on the TCP address of `http` when given.
pub async fn serve(
    cp: Arc<ControlPlane>,
    socket: &Path,
    http: Option<HttpDoor>,
) -> Result<(), ServerError> {
    let listener = bind_owner_only(socket)?;
    let http_listener = match http {
        Some(door) => {
            let addr = door.addr;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::io(Path::new(&addr.to_string()), e))?;
            tracing::info!(
                addr = %l.local_addr().unwrap_or(addr),
                tls = door.options.tls.is_some(),
                max_connections = door.options.max_connections,
                header_read_timeout_ms = door.options.header_read_timeout.as_millis() as u64,
                "HTTP API listening"
            );
            Some((l, door.options))
        }
        None => None,
    };
    let resumed = cp.resume_unfinished()?;
    if !resumed.is_empty() {
        tracing::info!(deployments = ?resumed, "resuming unfinished deployments");
    }
    match http::purge_idempotency_keys(&cp, cutover_model::now_ms()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(keys = n, "expired idempotency keys removed"),
        Err(e) => tracing::warn!(error = %e, "could not remove expired idempotency keys"),
    }
    let reaper = tokio::spawn(reaper(cp.clone()));
    let sessions = tokio::spawn(purge_sessions(cp.clone()));
    let secret_ages = tokio::spawn(secrets::watch_ages(cp.clone()));
    let watcher = cp.spawn_watcher();
    let http_task = http_listener.map(|(l, options)| {
        let cp = cp.clone();
        tokio::spawn(async move {
            let shutdown_cp = cp.clone();
            door::serve_tcp(l, router(cp), options, async move {
                shutdown_cp.shutdown.notified().await
            })
            .await
        })
    });
    let shutdown_cp = cp.clone();
    let app = router(cp.clone()).into_make_service_with_connect_info::<LocalPeer>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown_cp.shutdown.notified().await })
        .await
        .map_err(|e| ServerError::io(socket, e));
    reaper.abort();
    sessions.abort();
    secret_ages.abort();
    watcher.abort();
    if let Some(task) = http_task {
        task.abort();
    }
    let _ = std::fs::remove_file(socket);
    result
}

/// Remove expired web sessions now and then hourly (logins purge too): one wake-up an hour.
async fn purge_sessions(cp: Arc<ControlPlane>) {
    const EVERY: Duration = Duration::from_secs(3600);
    loop {
        let store = cp.store.clone();
        match tokio::task::spawn_blocking(move || ui::purge_expired_sessions(&store)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(sessions = n, "expired web sessions removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not remove expired web sessions"),
            Err(e) => tracing::warn!(error = %e, "removing expired web sessions failed"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Retire warm releases when they are due: sleeps until the earliest due time, or until
/// the store says a retirement may have changed; never more often than once a second.
async fn reaper(cp: Arc<ControlPlane>) {
    const AT_LEAST_EVERY: Duration = Duration::from_secs(3600);
    const AT_MOST_EVERY: Duration = Duration::from_secs(1);
    let mut events = cp.store.subscribe();
    loop {
        if let Err(e) = cp.reap_once().await {
            tracing::warn!(error = %e, "retiring warm releases failed; will retry");
        }
        let now = cutover_model::now_ms();
        let wait = match cp.store.due_retirements(u64::MAX) {
            Ok(all) => all
                .iter()
                .map(|r| Duration::from_millis(r.due_at_ms.saturating_sub(now)))
                .min()
                .unwrap_or(AT_LEAST_EVERY)
                .min(AT_LEAST_EVERY),
            Err(_) => AT_MOST_EVERY,
        }
        .max(AT_MOST_EVERY);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                event = events.recv() => match event {
                    // Retirements are scheduled and deployments end under environment
                    // and deployment events; look again, at most once a second.
                    Ok(cutover_store::StoreEvent::Environment { .. })
                    | Ok(cutover_store::StoreEvent::Deployment { .. })
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        tokio::time::sleep(AT_MOST_EVERY).await;
                        // One look covers every change of that second.
                        while matches!(
                            events.try_recv(),
                            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
                        ) {}
                        break;
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                },
            }
        }
    }
}

/// Bind a Unix socket that only its owner may connect to: created under a umask of 077,
/// so there is no moment at which others could connect.
fn bind_owner_only(socket: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    if socket.exists() {
        std::fs::remove_file(socket).map_err(|e| ServerError::io(socket, e))?;
    }
    // SAFETY: umask only swaps the process's file mode mask; restored right after.
    let old = unsafe { libc::umask(0o077) };
    let bound = tokio::net::UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| ServerError::io(socket, e))?;
    set_owner_only(socket)?;
    Ok(listener)
}

fn set_owner_only(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::io(path, e))
}
