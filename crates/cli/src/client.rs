//! The CLI's client of the control plane (`/api/v1` over the control socket, from
//! `cutover-api`), and starting the control plane in the background when it is not
//! running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use cutover_api::client::{ApiClient, CallError};
use cutover_server::api::Health;

use crate::daemon;

/// Where a project's state and daemons live.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn control_socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }
    pub fn serve_pid(&self) -> PathBuf {
        self.0.join("serve.pid")
    }
    pub fn serve_log(&self) -> PathBuf {
        self.0.join("serve.log")
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
    pub fn proxy_dir(&self) -> PathBuf {
        self.0.join("proxy")
    }
    /// Where cargo builds write (the only part of the state directory a build sees).
    pub fn builds(&self) -> PathBuf {
        self.0.join("builds")
    }
}

/// The client of the project's control plane: `/api/v1` on its socket, as the socket's
/// peer, or as the owner of `CUTOVER_TOKEN` when it is set.
pub fn client(state: &StateDir) -> ApiClient {
    let token = std::env::var("CUTOVER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    ApiClient::unix(state.control_socket()).with_token(token.as_deref())
}

/// Whether a control plane answers on the socket (any answer counts, even a refusal).
async fn answers(client: &ApiClient) -> bool {
    !matches!(
        client.get::<Health>("/api/v1/health").await,
        Err(CallError::Unreachable(_))
    )
}

/// Connect to the project's control plane, starting it in the background when nothing
/// answers. Returns the client and whether it was started now.
///
/// Starting happens under an exclusive lock on `start.lock` in the state directory: of
/// several commands that find no control plane at the same moment, one starts it and the
/// others wait for the lock, then find it answering.
pub async fn connect_or_start(state: &StateDir) -> anyhow::Result<(ApiClient, bool)> {
    let client = client(state);
    if answers(&client).await {
        return Ok((client, false));
    }
    create_state_dir(&state.0)?;
    let lock_path = state.0.join("start.lock");
    let lock = tokio::task::spawn_blocking(move || StartLock::acquire(&lock_path))
        .await
        .context("waiting for the start lock")??;
    if answers(&client).await {
        return Ok((client, false));
    }
    let dir = state.0.to_string_lossy().into_owned();
    let pid = daemon::spawn_detached(&["serve", "--state-dir", &dir], &state.serve_log())?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if answers(&client).await {
            drop(lock);
            return Ok((client, true));
        }
        if !daemon::alive(pid) {
            if answers(&client).await {
                return Ok((client, false));
            }
            anyhow::bail!(
                "the control plane exited at start; the end of its log {}:\n{}",
                state.serve_log().display(),
                daemon::log_tail(&state.serve_log(), 10)
            );
        }
    }
    anyhow::bail!(
        "the control plane did not answer within 30s; see {}",
        state.serve_log().display()
    )
}

/// Create the state directory, readable by its owner only.
pub fn create_state_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))
}

/// Refuse a state directory that other users can enter or that belongs to someone else:
/// it holds the store, the keys and the control socket.
pub fn check_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the state directory {}", dir.display()))?;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    if meta.uid() != me {
        anyhow::bail!(
            "the state directory {} belongs to uid {}, not to this user (uid {me}); run cutover as its owner or choose another --state-dir",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the state directory {} is open to other users (mode {mode:o}); it holds the store, the keys and the control socket: run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
struct StartLock {
    _file: std::fs::File,
}

impl StartLock {
    fn acquire(path: &Path) -> anyhow::Result<StartLock> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the start lock {}", path.display()))?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(StartLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}

/// Absolute form of a path, relative to the working directory.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}
