//! `cutover serve`: the control plane process, wired to the embedded default target (the
//! local Docker Engine and the cutover proxy), and the supervisor that keeps the proxy up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use cutover_chain::LocalSupplyChain;
use cutover_docker::{CargoBuilds, DockerProvider, SecretFiles};
use cutover_executor::{ExecutorConfig, FaultInjector};
use cutover_model::{Preflights, Providers, SecretSource};
use cutover_proxy::{AdminClient, ProxyTraffic};
use cutover_secrets::MasterKey;
use cutover_server::door::{DoorOptions, TlsFiles};
use cutover_server::metrics::{ProxyStatLine, ProxyStats};
use cutover_server::secrets::{Keyring, StoreSecrets};
use cutover_server::webhooks::{Delivery, Webhooks};
use cutover_server::{ControlPlane, HttpDoor, Options};
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
    /// TLS and limits of the `http` listener.
    pub door: DoorArgs,
    /// `http://` URLs that get deployment events.
    pub webhooks: Vec<String>,
    /// Files that get a signed checkpoint of the audit chain on every append.
    pub audit_sinks: Vec<std::path::PathBuf>,
    /// The secrets master key file (0600); else `CUTOVER_SECRETS_KEY`, else the default
    /// file ([`default_secrets_key`]), made on first use.
    pub secrets_key: Option<PathBuf>,
}

/// The default secrets master key file of a state directory: outside it, in
/// `$XDG_CONFIG_HOME/cutover/secrets/<16 hex of the state directory's path>.key` (default
/// `~/.config/…`), so a copy of the state directory holds no usable key.
pub fn default_secrets_key(state: &StateDir) -> Result<PathBuf> {
    let dir = cutover_chain::default_passphrase_dir()
        .and_then(|p| p.parent().map(|p| p.join("secrets")))
        .context("cannot tell where to keep the secrets master key: set XDG_CONFIG_HOME or HOME, or give --secrets-key")?;
    Ok(dir.join(format!("{}.key", state_tag(state))))
}

/// 16 hex digits naming a state directory (its absolute path's sha256).
fn state_tag(state: &StateDir) -> String {
    use sha2::{Digest, Sha256};
    let path = std::fs::canonicalize(&state.0).unwrap_or_else(|_| state.0.clone());
    hex::encode(&Sha256::digest(path.to_string_lossy().as_bytes())[..8])
}

/// The master key this control plane seals secrets with.
fn secrets_master_key(state: &StateDir, given: Option<&PathBuf>) -> Result<MasterKey> {
    if let Some(path) = given {
        return MasterKey::from_file(path).context("--secrets-key");
    }
    if let Some(key) = MasterKey::from_env()? {
        return Ok(key);
    }
    let path = default_secrets_key(state)?;
    Ok(MasterKey::load_or_create(&path)?)
}

/// Where secret files are written: `CUTOVER_SECRETS_DIR`, else a directory of this state
/// directory under `/dev/shm` (a tmpfs). Secret injection is off (with a warning) when it
/// is not on a tmpfs.
fn secret_files(state: &StateDir, source: Arc<dyn SecretSource>) -> Option<SecretFiles> {
    let base = std::env::var_os("CUTOVER_SECRETS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/cutover-secrets-{}", state_tag(state))));
    match SecretFiles::new(source, base) {
        Ok(files) => Some(files),
        Err(e) => {
            tracing::warn!(error = %e, "secrets cannot be injected: deployments of specs with [container.secrets] will fail");
            None
        }
    }
}

/// TLS and limits of the `--http` listener (`cutover serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct DoorArgs {
    /// Serve --http over TLS with this PEM certificate chain (leaf first); re-read, with
    /// --tls-key, on SIGHUP. With TLS, --http may bind any address.
    #[arg(
        long,
        env = "CUTOVER_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CUTOVER_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,
    /// Close an --http connection that has not sent a whole request head (or finished its
    /// TLS handshake) within this time, and keep-alive connections idle that long.
    #[arg(
        long,
        env = "CUTOVER_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_parser = parse_timeout,
        value_name = "DURATION"
    )]
    pub header_read_timeout: Duration,
    /// At most this many --http connections at once; further clients wait to be accepted.
    #[arg(
        long,
        env = "CUTOVER_MAX_CONNECTIONS",
        default_value_t = cutover_server::door::DEFAULT_MAX_CONNECTIONS,
        value_parser = parse_max_connections,
        value_name = "N"
    )]
    pub max_connections: usize,
}

impl Default for DoorArgs {
    fn default() -> DoorArgs {
        DoorArgs {
            tls_cert: None,
            tls_key: None,
            header_read_timeout: cutover_server::door::DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: cutover_server::door::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; write a duration such as 10s or 500ms"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err("must be between 10ms and 1h".to_string());
    }
    Ok(d)
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number from 1 to 1000000".to_string()),
    }
}

/// Load the TLS files of `door`, made absolute so a reload reads the same files.
fn load_tls(door: &DoorArgs) -> Result<Option<Arc<TlsFiles>>> {
    let (Some(cert), Some(key)) = (&door.tls_cert, &door.tls_key) else {
        return Ok(None);
    };
    let (cert, key) = (crate::client::absolute(cert), crate::client::absolute(key));
    let files = TlsFiles::load(&cert, &key).context("--tls-cert/--tls-key")?;
    Ok(Some(files))
}

/// Re-read the TLS files on every SIGHUP; a bad file keeps the served pair.
fn reload_on_sighup(tls: Option<Arc<TlsFiles>>) -> Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(tls) = &tls else {
                tracing::info!("SIGHUP: no TLS files to reload");
                continue;
            };
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.cert_path().display(),
                    fingerprint = %tls.fingerprint(),
                    "SIGHUP: TLS certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    fingerprint = %tls.fingerprint(),
                    "SIGHUP: TLS certificate not reloaded; still serving the previous one"
                ),
            }
        }
    }))
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
    let tls = load_tls(&serve.door)?;
    if let Some(addr) = http {
        if !addr.ip().is_loopback() && tls.is_none() && !serve.insecure_http {
            anyhow::bail!(
                "--http {addr} is reachable from other machines and this control plane serves plain HTTP: bearer tokens and passwords would cross the network in the clear; serve TLS with --tls-cert and --tls-key, bind a loopback address (127.0.0.1) behind a TLS proxy, or pass --insecure-http to accept the risk"
            );
        }
    }
    let http = http.map(|addr| HttpDoor {
        addr,
        options: DoorOptions {
            tls: tls.clone(),
            header_read_timeout: serve.door.header_read_timeout,
            max_connections: serve.door.max_connections,
        },
    });
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
    // The secrets master key is checked before anything else changes: a wrong key stops
    // the start with the store as it was.
    let master = secrets_master_key(&state, serve.secrets_key.as_ref())?;
    let store = Store::open(&state.db())?;
    if let Err(e) = cutover_server::secrets::open(&store, &master) {
        drop(store);
        anyhow::bail!("cannot start the control plane: {e}");
    }
    let keyring = Arc::new(Keyring::new(master));
    anchor_audit(&state, &store, &serve.audit_sinks)?;
    cutover_proxy::pidfile::write(&state.serve_pid())
        .with_context(|| format!("cannot write {}", state.serve_pid().display()))?;

    let admin = AdminClient::new(state.proxy_dir().join("proxy.sock"));
    ensure_proxy(&state, &admin).await?;
    let supervisor = tokio::spawn(supervise_proxy(state.clone(), admin.clone()));

    let mut docker = DockerProvider::connect()
        .await?
        .with_cargo_builds(cargo_builds(&state));
    let source: Arc<dyn SecretSource> = Arc::new(StoreSecrets {
        store: store.clone(),
        keyring: keyring.clone(),
    });
    if let Some(files) = secret_files(&state, source) {
        docker = docker.with_secret_files(files);
    }
    match docker.sweep_secret_files().await {
        Ok(swept) if !swept.is_empty() => {
            tracing::info!(containers = ?swept, "removed the secret files of containers that no longer exist")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep secret files"),
    }
    let docker = Arc::new(docker);
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
            secrets: Some(keyring),
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
    let reload = reload_on_sighup(tls)?;
    tracing::info!(state_dir = %state.0.display(), pid = std::process::id(), "control plane listening");
    let result = cutover_server::serve(cp, &state.control_socket(), http).await;
    supervisor.abort();
    signals.abort();
    reload.abort();
    let _ = std::fs::remove_file(state.serve_pid());
    Ok(result?)
}

/// Anchor the store's audit chain to `sinks`, or to the ones remembered from an earlier
/// start (see `cutover_server::anchor`), after comparing their last checkpoints with the
/// chain. A disagreement is logged as an error and shown by `/metrics`
/// (`cutover_audit_anchor_ok 0`) and `cutover audit verify`, but does not stop the control
/// plane: rollbacks must stay possible, and the evidence stays in the sinks.
fn anchor_audit(state: &StateDir, store: &Store, sinks: &[std::path::PathBuf]) -> Result<()> {
    use cutover_server::anchor::{configured_sinks, load_or_create_key, Anchor};
    let absolute = configured_sinks(&state.0, sinks).context("--audit-sink")?;
    if absolute.is_empty() {
        return Ok(());
    }
    let key = load_or_create_key(&state.0.join("keys")).context("--audit-sink")?;
    let key_id = key.key_id().to_string();
    let anchor = Anchor::open(key, &absolute).context("--audit-sink")?;
    let entries = cutover_server::audit::export(store, None)?;
    let problems = anchor.check_at_start(&entries);
    cutover_server::audit::anchor(store, anchor)?;
    tracing::info!(
        sinks = ?absolute,
        key_id = %key_id,
        entries = entries.len(),
        agrees = problems.is_empty(),
        "audit chain anchored"
    );
    Ok(())
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
