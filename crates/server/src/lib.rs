//! The control plane: owns the sled store (one process per database), plans and runs
//! deployments with the executor, resumes unfinished ones at start, retires warm releases
//! when they are due, and answers the API.
//!
//! Today the API is served on a Unix socket (mode 0600) that only the local user can reach;
//! the CLI is its client. The HTTP API for CI, auth and the web UI are layered on the same
//! [`app`] router next. The router is built by a function so tests drive it in-process.

pub mod api;
mod error;
mod handlers;
mod view;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_executor::{Executor, ExecutorConfig};
use cutover_model::{DeploymentStatus, Providers};
use cutover_store::Store;
use tokio::sync::Notify;

pub use error::ServerError;
pub use handlers::app;

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
}

impl ControlPlane {
    pub fn new(store: Store, providers: Providers, config: ExecutorConfig) -> Arc<ControlPlane> {
        let executor = Arc::new(Executor::new(store.clone(), providers.clone(), config));
        Arc::new(ControlPlane {
            store,
            providers,
            executor,
            running: Mutex::new(HashMap::new()),
            shutdown: Notify::new(),
            plans_dir: None,
        })
    }

    /// Run (or resume) a deployment in the background unless it already runs here.
    pub fn spawn_run(self: &Arc<Self>, deployment_id: &str) -> bool {
        let mut running = self.running.lock().expect("running map lock");
        running.retain(|_, handle| !handle.is_finished());
        if running.contains_key(deployment_id) {
            return false;
        }
        let executor = self.executor.clone();
        let id = deployment_id.to_string();
        let handle = tokio::spawn(async move {
            match executor.run(&id).await {
                Ok(status) => tracing::info!(deployment = %id, status = status.label(), "deployment finished"),
                Err(e) => tracing::error!(deployment = %id, error = %e, "deployment did not finish"),
            }
        });
        running.insert(deployment_id.to_string(), handle);
        true
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
}

/// Serve the API on a Unix socket at `socket` (mode 0600) until shutdown is requested.
/// Resumes unfinished deployments first and runs the retirement reaper in the background.
pub async fn serve_unix(cp: Arc<ControlPlane>, socket: &Path) -> Result<(), ServerError> {
    if socket.exists() {
        std::fs::remove_file(socket).map_err(|e| ServerError::io(socket, e))?;
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| ServerError::io(socket, e))?;
    set_owner_only(socket)?;
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
    let shutdown_cp = cp.clone();
    let result = axum::serve(listener, app(cp.clone()))
        .with_graceful_shutdown(async move { shutdown_cp.shutdown.notified().await })
        .await
        .map_err(|e| ServerError::io(socket, e));
    reaper.abort();
    let _ = std::fs::remove_file(socket);
    result
}

fn set_owner_only(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::io(path, e))
}
