//! `cutover serve`: the control plane process, wired to the embedded default target (the
//! local Docker Engine and the cutover proxy), and the supervisor that keeps the proxy up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use cutover_chain::LocalSupplyChain;
use cutover_docker::{CargoBuilds, DockerProvider};
use cutover_executor::{ExecutorConfig, FaultInjector};
use cutover_model::{Preflights, Providers};
use cutover_proxy::{AdminClient, ProxyTraffic};
use cutover_server::metrics::{ProxyStatLine, ProxyStats};
use cutover_server::webhooks::{Delivery, Webhooks};
use cutover_server::{ControlPlane, Options};
use cutover_store::Store;

use crate::client::StateDir;
use crate::daemon;

/// What `cutover serve` listens on besides its Unix socket, and where it sends webhooks.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// `host:port` of the HTTP API for CI and `/metrics` (none: no HTTP listener).
    pub http: Option<String>,
    /// Serve `http` in the clear even when it is not a loopback address.
    pub insecure_http: bool,
    /// `http://` URLs that get deployment events.
    pub webhooks: Vec<String>,
}

/// Proxy counters for `/metrics`, from the proxy's admin API.
struct ProxyAdminStats(AdminClient);

#[async_trait::async_trait]
impl ProxyStats for ProxyAdminStats {
    async fn stats(&self) -> Result<Vec<ProxyStatLine>, String> {
        let entries = self.0.stats().await.map_err(|e| e.to_string())?;
        Ok(entries
            .into_iter()
            .map(|e| ProxyStatLine {
                listen: e.listen,
                release: e.release,
                requests: e.requests,
                errors: e.errors,
                in_flight: e.in_flight,
            })
            .collect())
    }
}

/// Run the control plane in the foreground until `cutover serve --stop` or a signal.
pub async fn run(state: StateDir, serve: ServeOptions) -> Result<()> {
    let http: Option<std::net::SocketAddr> = match &serve.http {
        Some(addr) => Some(addr.parse().with_context(|| {
            format!("--http {addr:?} is not an address: use host:port, e.g. 127.0.0.1:8700")
        })?),
        None => None,
    };
    if let Some(addr) = http {
        if !addr.ip().is_loopback() && !serve.insecure_http {
            anyhow::bail!(
                "--http {addr} is reachable from other machines and this control plane serves plain HTTP: bearer tokens and passwords would cross the network in the clear; bind a loopback address (127.0.0.1) behind a TLS proxy, or pass --insecure-http to accept the risk"
            );
        }
    }
    let webhooks: Vec<String> = serve
        .webhooks
        .iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let webhooks = Webhooks::new(webhooks, Delivery::default())
        .map_err(anyhow::Error::msg)
        .context("--webhook")?;
    crate::client::create_state_dir(&state.0)?;
    crate::client::check_private(&state.0)?;
    let store = Store::open(&state.db())?;
    cutover_proxy::pidfile::write(&state.serve_pid())
        .with_context(|| format!("cannot write {}", state.serve_pid().display()))?;

    let admin = AdminClient::new(state.proxy_dir().join("proxy.sock"));
    ensure_proxy(&state, &admin).await?;
    let supervisor = tokio::spawn(supervise_proxy(state.clone(), admin.clone()));

    let docker = Arc::new(
        DockerProvider::connect()
            .await?
            .with_cargo_builds(cargo_builds(&state)),
    );
    let audit = store.clone();
    let providers = Providers {
        images: docker.clone(),
        compute: docker.clone(),
        health: docker.clone(),
        traffic: Arc::new(ProxyTraffic::new(admin.clone())),
        supply: Some(Arc::new(LocalSupplyChain::new(
            docker.clone(),
            &state.0,
            Some(Arc::new(move |image: &str, details| {
                cutover_server::audit::record(&audit, "gate", "exception.use", image, details)
                    .map_err(|e| e.to_string())
            })),
        ))),
        preflight: Some(Arc::new(Preflights(vec![
            docker,
            Arc::new(ProxyTraffic::new(admin.clone())),
        ]))),
    };
    let cp = ControlPlane::with_options(
        store,
        providers,
        ExecutorConfig {
            faults: test_fail_undo(),
            ..ExecutorConfig::default()
        },
        Options {
            webhooks,
            proxy_stats: Some(Arc::new(ProxyAdminStats(admin))),
            ..Options::default()
        },
    );
    let signals = {
        let cp = cp.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            cp.request_shutdown();
        })
    };
    tracing::info!(state_dir = %state.0.display(), pid = std::process::id(), "control plane listening");
    let result = cutover_server::serve(cp, &state.control_socket(), http).await;
    supervisor.abort();
    signals.abort();
    let _ = std::fs::remove_file(state.serve_pid());
    Ok(result?)
}

/// Cargo builds of this control plane: under `<state>/builds/`, with the state directory
/// and the local keys' passphrases hidden from them, in the bubblewrap sandbox unless `CUTOVER_UNSANDBOXED_BUILDS=1` (read
/// here only; for development machines without bubblewrap, and loud about it).
fn cargo_builds(state: &StateDir) -> CargoBuilds {
    let unsandboxed = std::env::var("CUTOVER_UNSANDBOXED_BUILDS").is_ok_and(|v| v == "1");
    if unsandboxed {
        tracing::warn!("CUTOVER_UNSANDBOXED_BUILDS=1: cargo builds run without a sandbox, as this user, and can read the keys and reach the sockets of this control plane");
    }
    // The passphrases too, should the source tree hold the home directory.
    let hidden = std::iter::once(state.0.clone())
        .chain(cutover_chain::default_passphrase_dir())
        .collect();
    CargoBuilds {
        dir: state.builds(),
        hidden,
        unsandboxed,
    }
}

/// Test-only hook, off unless set: `CUTOVER_TEST_FAIL_UNDO=<step id>[,<step id>…]` makes
/// every undo of those steps fail, so the integration tests can drive a deployment to
/// `stuck` (exit code 4) through the real binary. Nothing else reads it.
fn test_fail_undo() -> Option<Arc<FaultInjector>> {
    let steps = std::env::var("CUTOVER_TEST_FAIL_UNDO").ok()?;
    let faults = FaultInjector::new();
    for step in steps.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        faults.fail_undo(step);
    }
    tracing::warn!(steps = %steps, "CUTOVER_TEST_FAIL_UNDO is set: undos of these steps fail");
    Some(Arc::new(faults))
}

/// Make sure a proxy answers on the admin socket, starting one if needed.
async fn ensure_proxy(state: &StateDir, admin: &AdminClient) -> Result<()> {
    if admin.health().await.is_ok() {
        return Ok(());
    }
    start_proxy(state, admin).await
}

async fn start_proxy(state: &StateDir, admin: &AdminClient) -> Result<()> {
    let dir = state.proxy_dir();
    // A proxy that lives but does not answer is killed before a new one takes its socket.
    daemon::terminate(&dir.join("proxy.pid"), Duration::from_secs(2)).await;
    let dir_arg = dir.to_string_lossy().into_owned();
    let pid = daemon::spawn_detached(&["proxy", "--state-dir", &dir_arg], &dir.join("proxy.log"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if admin.health().await.is_ok() {
            tracing::info!(pid, "proxy started");
            return Ok(());
        }
        if !daemon::alive(pid) {
            anyhow::bail!(
                "the proxy exited at start; its log {} ends with:\n{}",
                dir.join("proxy.log").display(),
                daemon::log_tail(&dir.join("proxy.log"), 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!(
        "the proxy did not answer within 10s; see {}",
        dir.join("proxy.log").display()
    )
}

/// Restart the proxy (it restores its routes from disk) when it is gone: wakes when its
/// process exits (a pidfd), and every 10 s to check that it still answers.
async fn supervise_proxy(state: StateDir, admin: AdminClient) {
    const CHECK_EVERY: Duration = Duration::from_secs(10);
    loop {
        match daemon::read_pid(&state.proxy_dir().join("proxy.pid")) {
            Some(pid) => {
                daemon::wait_exit(pid, CHECK_EVERY).await;
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
        if admin.health().await.is_ok() {
            continue;
        }
        tracing::warn!("the proxy does not answer; restarting it");
        if let Err(e) = start_proxy(&state, &admin).await {
            tracing::error!(error = %e, "restarting the proxy failed; retrying");
        }
    }
}
