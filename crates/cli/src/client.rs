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

/// How to reach a control plane on another machine: `--url`/`CUTOVER_URL`, the token from
/// `--token-file` or `CUTOVER_TOKEN`, trust from `--ca-cert`/`CUTOVER_CA_CERT`.
pub struct RemoteArgs<'a> {
    pub url: &'a str,
    pub token_file: Option<&'a Path>,
    pub ca_cert: Option<&'a Path>,
    /// `CUTOVER_TOKEN`, when set.
    pub env_token: Option<String>,
}

/// The client of a remote control plane. Fails at once, saying how to give one, without a
/// token: over the network the token is the only identity.
pub fn remote_client(args: RemoteArgs<'_>) -> anyhow::Result<ApiClient> {
    cutover_api::remote::check_url(args.url)?;
    let token = match args.token_file {
        Some(file) => read_token_file(file)?,
        None => args
            .env_token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no token for the control plane at {}: put it in a file readable only by you and pass --token-file FILE, or set CUTOVER_TOKEN (`cutover token create` makes one)",
                    args.url.trim_end_matches('/')
                )
            })?,
    };
    let ca = match args.ca_cert {
        Some(file) => Some((
            file.display().to_string(),
            std::fs::read(file)
                .with_context(|| format!("cannot read the CA certificate {}", file.display()))?,
        )),
        None => None,
    };
    let client = ApiClient::remote(
        args.url,
        ca.as_ref()
            .map(|(name, pem)| (name.as_str(), pem.as_slice())),
    )?;
    Ok(client.with_token(Some(&token)))
}

/// The token in `file`: refused when other users may read the file (or it is not a
/// regular file), so a token is never kept where others can take it.
pub fn read_token_file(file: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut opened = std::fs::File::open(file)
        .with_context(|| format!("cannot open the token file {}", file.display()))?;
    let meta = opened
        .metadata()
        .with_context(|| format!("cannot read the token file {}", file.display()))?;
    if !meta.is_file() {
        anyhow::bail!("the token file {} is not a regular file", file.display());
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the token file {} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    let mut text = String::new();
    opened
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the token file {}", file.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", file.display());
    }
    if token.lines().count() > 1 {
        anyhow::bail!(
            "the token file {} holds more than one line; it holds the token alone",
            file.display()
        );
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_file(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let file = dir.join("token");
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn a_private_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = token_file(dir.path(), 0o600, "cut_abc123\n");
        assert_eq!(read_token_file(&file).unwrap(), "cut_abc123");
        let file = token_file(dir.path(), 0o400, "cut_abc123");
        assert_eq!(read_token_file(&file).unwrap(), "cut_abc123");
    }

    #[test]
    fn a_token_file_others_can_read_is_refused_without_showing_the_token() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let file = token_file(dir.path(), mode, "canary-token-7f3a");
            let err = read_token_file(&file).unwrap_err().to_string();
            assert!(err.contains("readable by other users"), "{mode:o}: {err}");
            assert!(err.contains("chmod 600"), "{err}");
            assert!(!err.contains("canary-token-7f3a"), "{err}");
        }
    }

    #[test]
    fn an_empty_or_missing_token_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = token_file(dir.path(), 0o600, " \n");
        assert!(read_token_file(&file)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        let missing = dir.path().join("nope");
        let err = read_token_file(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(
            read_token_file(dir.path()).is_err(),
            "a directory is no token file"
        );
    }

    #[test]
    fn a_url_without_a_token_fails_at_once_saying_how_to_give_one() {
        let err = remote_client(RemoteArgs {
            url: "https://cutover.example.com",
            token_file: None,
            ca_cert: None,
            env_token: None,
        })
        .expect_err("refused")
        .to_string();
        assert!(err.contains("--token-file"), "{err}");
        assert!(err.contains("CUTOVER_TOKEN"), "{err}");
    }

    #[test]
    fn plain_http_to_the_network_is_refused_before_any_token_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let file = token_file(dir.path(), 0o600, "canary-token-7f3a");
        let err = remote_client(RemoteArgs {
            url: "http://192.0.2.10:8080",
            token_file: Some(&file),
            ca_cert: None,
            env_token: None,
        })
        .expect_err("refused")
        .to_string();
        assert!(err.contains("in the clear"), "{err}");
        assert!(!err.contains("canary-token-7f3a"), "{err}");
    }
}
