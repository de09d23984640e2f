//! The proxy process: startup (saved routes, admin socket, pid file) and shutdown. The
//! routes it serves live in `listeners`.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinSet;

use crate::error::ProxyError;
use crate::listeners::Proxy;
use crate::table::{self, ROUTES_FILE};
use crate::workers::{worker_count, Workers};

/// File name of the admin socket inside the state directory.
pub const SOCKET_FILE: &str = "proxy.sock";
/// File name of the pid file inside the state directory.
pub const PID_FILE: &str = "proxy.pid";

/// How long in-flight requests get to finish when the proxy stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
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
    let proxy = Arc::new(Proxy::new(config.routes_path(), workers));
    proxy.restore(routes).await;

    let pid_path = config.state_dir.join(PID_FILE);
    crate::pidfile::write(&pid_path).map_err(|source| ProxyError::PidFile {
        path: pid_path.clone(),
        source,
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
