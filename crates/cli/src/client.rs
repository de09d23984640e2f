//! The CLI's client of the control plane: JSON over HTTP/1.1 on the control socket, and
//! starting the control plane in the background when it is not running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use cutover_server::api::{ErrorBody, Health};

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
}

/// Errors talking to the control plane.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answers on the socket.
    Unreachable(String),
    /// The control plane answered with an error.
    Api { code: String, message: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "cannot reach the control plane: {e}"),
            CallError::Api { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for CallError {}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.call("GET", path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.call("POST", path, Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| CallError::Unreachable(format!("{}: {e}", self.socket.display())))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| CallError::Unreachable(e.to_string()))?,
            None => Vec::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "cutover")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
                code: "internal".to_string(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
            return Err(CallError::Api {
                code: err.code,
                message: err.message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| CallError::Api {
            code: "decode".to_string(),
            message: format!("cannot read the control plane's answer to {path}: {e}"),
        })
    }
}

/// Connect to the project's control plane, starting it in the background when nothing
/// answers. Returns the client and whether it was started now.
pub async fn connect_or_start(state: &StateDir) -> anyhow::Result<(Client, bool)> {
    let client = Client::new(state.control_socket());
    if client.get::<Health>("/v1/health").await.is_ok() {
        return Ok((client, false));
    }
    let dir = state.0.to_string_lossy().into_owned();
    let pid = daemon::spawn_detached(&["serve", "--state-dir", &dir], &state.serve_log())?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if client.get::<Health>("/v1/health").await.is_ok() {
            return Ok((client, true));
        }
        if !daemon::alive(pid) {
            // Another client may have started one at the same moment.
            if client.get::<Health>("/v1/health").await.is_ok() {
                return Ok((client, false));
            }
            anyhow::bail!(
                "the control plane exited at start; its log {} ends with:\n{}",
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
