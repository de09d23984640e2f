//! Docker provider over bollard: golden images, hardened containers, health probes.
//!
//! [`DockerProvider`] implements the model's [`ImageBuilder`](cutover_model::ImageBuilder),
//! [`Compute`](cutover_model::Compute) and [`HealthProbe`](cutover_model::HealthProbe) for a
//! local Docker Engine, or a remote one named by `DOCKER_HOST`; `Compute::diagnose` reads
//! a container's state, exit code, OOM kill and redacted log tail, and its
//! [`Preflight`](cutover_model::Preflight) checks that the Engine answers and the build
//! source exists.
//!
//! Every call is idempotent and keyed by names and labels the planner chose: `build` returns
//! an existing image whose tag and `cutover.deployment` label match, `provision` adopts an
//! existing container of the same deployment, and removing what is gone succeeds.
//!
//! This is the only crate of cutover that knows bollard; nothing of bollard leaks from its
//! public API.
//!
//! Known limits:
//! - Ports are published on `127.0.0.1` with an ephemeral host port, so instance addresses
//!   are only reachable from the Engine's host (a remote `DOCKER_HOST` needs the proxy to run
//!   there), and an instance the Engine restarts may come back on a different port: read
//!   the address again with `inspect` after a restart.
//! - Each environment's containers join their own network with inter-container
//!   communication off (`network.rs`): instances reach no other container, not even one of
//!   their own environment; everything between them goes through the proxy.
//! - Cargo builds target `x86_64-unknown-linux-gnu` with `+crt-static`; the glibc static
//!   libraries must be installed. They run in a bubblewrap sandbox ([`CargoBuilds`],
//!   `cargo.rs`): bubblewrap must be installed too.

mod cargo;
mod container;
mod context;
mod diagnose;
mod dockerignore;
mod elf;
mod engine_error;
mod image;
mod network;
mod preflight;
mod probe;
pub mod registry;
mod secret_files;
mod user;

use bollard::Docker;
use cutover_model::ProviderError;
use thiserror::Error;

/// Error connecting to the Docker Engine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DockerError {
    /// The Engine did not answer the version handshake.
    #[error("cannot reach the docker engine at {addr}: {reason}; is dockerd running?")]
    Unreachable { addr: String, reason: String },
    /// `DOCKER_HOST` names something bollard cannot connect to.
    #[error("cannot use the docker engine address {addr}: {reason}; set DOCKER_HOST to unix:///path/to/docker.sock or tcp://host:port")]
    BadAddress { addr: String, reason: String },
}

impl From<DockerError> for ProviderError {
    fn from(err: DockerError) -> Self {
        match err {
            DockerError::Unreachable { .. } => ProviderError::transient(err.to_string()),
            DockerError::BadAddress { .. } => ProviderError::permanent(err.to_string()),
        }
    }
}

/// Talks to one Docker Engine. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct DockerProvider {
    docker: Docker,
    addr: String,
    /// Serialises making environment networks (the Engine allows duplicate names).
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
    cargo_builds: CargoBuilds,
    /// Where secret files are written (none: specs with secrets are refused).
    secret_files: Option<secret_files::SecretFiles>,
}

/// Default socket when `DOCKER_HOST` is unset.
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

impl DockerProvider {
    /// Connect to the Engine named by `DOCKER_HOST` (default the local unix socket) and
    /// negotiate the API version down to what the Engine speaks.
    pub async fn connect() -> Result<DockerProvider, DockerError> {
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        DockerProvider::connect_to(host.as_deref().unwrap_or(DEFAULT_SOCKET)).await
    }

    /// Connect to the Engine at `addr` (`unix:///path`, `tcp://host:port`, `http://…`).
    pub async fn connect_to(addr: &str) -> Result<DockerProvider, DockerError> {
        let docker = Docker::connect_with_host(addr).map_err(|e| match e {
            bollard::errors::Error::UnsupportedURISchemeError { .. } => DockerError::BadAddress {
                addr: addr.to_string(),
                reason: engine_error::describe(&e),
            },
            other => DockerError::Unreachable {
                addr: addr.to_string(),
                reason: engine_error::describe(&other),
            },
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Unreachable {
                addr: addr.to_string(),
                reason: engine_error::describe(&e),
            })?;
        Ok(DockerProvider {
            docker,
            addr: addr.to_string(),
            networks: Default::default(),
            cargo_builds: CargoBuilds::default(),
            secret_files: None,
        })
    }

    /// Where cargo builds write and what they must not see (default: sandboxed, under the
    /// user's cache directory).
    pub fn with_cargo_builds(mut self, builds: CargoBuilds) -> DockerProvider {
        self.cargo_builds = builds;
        self
    }

    /// Inject secrets as files kept by `files` (a directory on a tmpfs).
    pub fn with_secret_files(mut self, files: SecretFiles) -> DockerProvider {
        self.secret_files = Some(files);
        self
    }

    /// Remove the secret files of containers that no longer exist (after a crash of the
    /// control plane, or containers removed by hand). Returns the names swept.
    pub async fn sweep_secret_files(&self) -> Result<Vec<String>, ProviderError> {
        let Some(files) = &self.secret_files else {
            return Ok(Vec::new());
        };
        let mut swept = Vec::new();
        for name in files.orphans(&Default::default()) {
            if self.docker_has(&name).await? {
                continue;
            }
            files.remove(&name);
            swept.push(name);
        }
        Ok(swept)
    }

    /// The Engine address this provider talks to (`unix://…` or `tcp://…`).
    pub fn engine_addr(&self) -> &str {
        &self.addr
    }
}

pub use cargo::{CargoBuilds, STATIC_RUSTFLAG, UNSANDBOXED_WARNING};
pub use probe::probe_http;
pub use secret_files::{is_tmpfs, SecretFiles, SecretFilesError};

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absent_socket_is_reported_as_unreachable() {
        let err = DockerProvider::connect_to("unix:///nonexistent/cutover-test.sock")
            .await
            .expect_err("no engine listens there");
        let message = err.to_string();
        assert!(
            message.starts_with(
                "cannot reach the docker engine at unix:///nonexistent/cutover-test.sock: "
            ),
            "{message}"
        );
        assert!(message.ends_with("is dockerd running?"), "{message}");
        assert!(ProviderError::from(err).is_transient());
    }

    #[tokio::test]
    async fn unknown_schemes_are_bad_addresses() {
        let err = DockerProvider::connect_to("ftp://example")
            .await
            .expect_err("ftp is no engine address");
        assert!(matches!(err, DockerError::BadAddress { .. }), "{err}");
        assert!(!ProviderError::from(err).is_transient());
    }
}
