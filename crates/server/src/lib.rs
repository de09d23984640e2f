//! The control plane: owns the sled store (one process per database), plans and runs
//! deployments with the executor, resumes unfinished ones at start, retires warm releases
//! when they are due, and answers two APIs:
//!
//! - the local API (`/v1/...`, [`app`]) on a Unix socket (mode 0600): the CLI's channel;
//!   requests there act as the local user with admin rights;
//! - the HTTP API for CI (`/api/v1/...`, bearer tokens, OpenAPI at
//!   `/api/v1/openapi.json`) and `/metrics` ([`http_app`]), on a TCP address when
//!   `cutover serve --http ADDR` asks for it.
//!
//! Routers are built by functions so tests drive them in-process. Authorization lives in
//! [`auth`], approval rules in [`approvals`], the hash-chained audit log in [`audit`].

pub mod api;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod deploy;
mod error;
mod handlers;
pub mod http;
pub mod metrics;
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
use cutover_model::{DeploymentStatus, Providers};
use cutover_store::Store;
use tokio::sync::Notify;

pub use error::ServerError;
pub use handlers::app;
pub use http::http_app;
pub use view::detail;

/// Optional parts of a control plane.
#[derive(Clone)]
pub struct Options {
    /// Directory with strategy overrides (`plans/`), looked up next to the spec too.
    pub plans_dir: Option<PathBuf>,
    pub webhooks: webhooks::Webhooks,
    /// Where proxy counters for `/metrics` come from.
    pub proxy_stats: Option<Arc<dyn metrics::ProxyStats>>,
    /// How often the background watcher looks at deployments.
    pub watch_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plans_dir: None,
            webhooks: webhooks::Webhooks::default(),
            proxy_stats: None,
            watch_interval: Duration::from_millis(250),
        }
    }
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
    watch_interval: Duration,
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
            watch_interval: options.watch_interval,
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

    /// Resume every deployment the journal says is unfinished. Returns their ids.
    pub fn resume_unfinished(self: &Arc<Self>) -> Result<Vec<String>, ServerError> {
        let mut ids = Vec::new();
        for record in self.store.unfinished()? {
            if matches!(record.status, DeploymentStatus::Stuck { .. }) {
                continue;
            }
            self.spawn_run(&record.id);
            ids.push(record.id);
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
        watch::spawn(self.clone(), self.watch_interval)
    }
}

/// Serve the local API on a Unix socket at `socket` (mode 0600) until shutdown is
/// requested. Resumes unfinished deployments first and runs the retirement reaper and the
/// watcher in the background.
pub async fn serve_unix(cp: Arc<ControlPlane>, socket: &Path) -> Result<(), ServerError> {
    serve(cp, socket, None).await
}

/// Like [`serve_unix`], and also serve [`http_app`] on `http` when given.
pub async fn serve(
    cp: Arc<ControlPlane>,
    socket: &Path,
    http: Option<SocketAddr>,
) -> Result<(), ServerError> {
    if socket.exists() {
        std::fs::remove_file(socket).map_err(|e| ServerError::io(socket, e))?;
    }
    let listener =
        tokio::net::UnixListener::bind(socket).map_err(|e| ServerError::io(socket, e))?;
    set_owner_only(socket)?;
    let http_listener = match http {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::io(Path::new(&addr.to_string()), e))?;
            tracing::info!(addr = %l.local_addr().unwrap_or(addr), "HTTP API listening");
            Some(l)
        }
        None => None,
    };
    let resumed = cp.resume_unfinished()?;
    if !resumed.is_empty() {
        tracing::info!(deployments = ?resumed, "resuming unfinished deployments");
    }
    let reaper = {
        let cp = cp.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                if let Err(e) = cp.reap_once().await {
                    tracing::warn!(error = %e, "retiring warm releases failed; will retry");
                }
            }
        })
    };
    let watcher = cp.spawn_watcher();
    let http_task = http_listener.map(|l| {
        let cp = cp.clone();
        tokio::spawn(async move {
            let shutdown_cp = cp.clone();
            if let Err(e) = axum::serve(l, http_app(cp))
                .with_graceful_shutdown(async move { shutdown_cp.shutdown.notified().await })
                .await
            {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        })
    });
    let shutdown_cp = cp.clone();
    let result = axum::serve(listener, app(cp.clone()))
        .with_graceful_shutdown(async move { shutdown_cp.shutdown.notified().await })
        .await
        .map_err(|e| ServerError::io(socket, e));
    reaper.abort();
    watcher.abort();
    if let Some(task) = http_task {
        task.abort();
    }
    let _ = std::fs::remove_file(socket);
    result
}

fn set_owner_only(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::io(path, e))
}
