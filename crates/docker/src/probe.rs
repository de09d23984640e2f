//! One HTTP/1.1 GET per probe over a plain TCP connection: cheap, no client pool, and it
//! sees exactly what a fresh client would.

use std::time::Duration;

use async_trait::async_trait;
use cutover_model::{HealthProbe, Instance, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DockerProvider;

/// Largest response head read before giving up on finding the status line.
const MAX_HEAD: usize = 8 * 1024;

#[async_trait]
impl HealthProbe for DockerProvider {
    async fn probe(&self, instance: &Instance, path: &str, timeout: Duration) -> Probe {
        probe_http(instance, path, timeout).await
    }
}

/// GET `http://<instance.addr><path>` once; 2xx is healthy.
pub async fn probe_http(instance: &Instance, path: &str, timeout: Duration) -> Probe {
    if instance.addr.is_empty() {
        return Probe::Unhealthy(format!(
            "instance {} has no published address (state {:?})",
            instance.name, instance.state
        ));
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    match tokio::time::timeout(timeout, get_status(&instance.addr, &path)).await {
        Err(_) => Probe::Unhealthy(format!(
            "GET {path} on {} timed out after {}ms",
            instance.addr,
            timeout.as_millis()
        )),
        Ok(Err(ProbeError::Connect(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Probe::Unhealthy(format!(
                "connection refused by {} (GET {path})",
                instance.addr
            ))
        }
        Ok(Err(ProbeError::Connect(e))) => Probe::Unhealthy(format!(
            "connecting to {} failed: {e} (GET {path})",
            instance.addr
        )),
        Ok(Err(ProbeError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Probe::Unhealthy(format!(
                "connection reset by {} (GET {path})",
                instance.addr
            ))
        }
        Ok(Err(ProbeError::Io(e))) => {
            Probe::Unhealthy(format!("GET {path} on {} failed: {e}", instance.addr))
        }
        Ok(Err(ProbeError::Closed)) => Probe::Unhealthy(format!(
            "connection closed by {} before any response (GET {path})",
            instance.addr
        )),
        Ok(Err(ProbeError::Malformed(what))) => Probe::Unhealthy(format!(
            "GET {path} on {} got a malformed answer: {what}",
            instance.addr
        )),
        Ok(Ok(code)) if (200..300).contains(&code) => Probe::Healthy,
        Ok(Ok(code)) => Probe::Unhealthy(format!("GET {path} returned {code}")),
    }
}

enum ProbeError {
    Connect(std::io::Error),
    Io(std::io::Error),
    Malformed(String),
    /// Closed before a single byte came back (typical while the app is still starting
    /// behind the engine's port forwarder).
    Closed,
}

async fn get_status(addr: &str, path: &str) -> Result<u16, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: cutover-probe\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            return parse_status_line(&head[..end]);
        }
        if head.len() >= MAX_HEAD {
            return Err(ProbeError::Malformed("status line too long".to_string()));
        }
        let n = stream.read(&mut buf).await.map_err(ProbeError::Io)?;
        if n == 0 {
            return Err(if head.is_empty() {
                ProbeError::Closed
            } else {
                ProbeError::Malformed("connection closed inside the status line".to_string())
            });
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn parse_status_line(line: &[u8]) -> Result<u16, ProbeError> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(ProbeError::Malformed(format!(
            "not an http status line: {:?}",
            line.trim()
        )));
    }
    parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::Malformed(format!("no status code in {:?}", line.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_model::InstanceState;
    use tokio::net::TcpListener;

    fn instance(addr: String) -> Instance {
        Instance {
            name: "i".to_string(),
            id: "c".to_string(),
            app: "hello".to_string(),
            env: "test".to_string(),
            release: "r".to_string(),
            deployment_id: "d".to_string(),
            replica: 0,
            addr,
            image_id: "sha256:x".to_string(),
            state: InstanceState::Running,
            restart_count: 0,
        }
    }

    /// A one-shot server answering `answer` to the first request; returns its address.
    async fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn two_hundreds_are_healthy() {
        let addr = serve_once("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
        let probe = probe_http(&instance(addr), "/healthz", Duration::from_secs(2)).await;
        assert_eq!(probe, Probe::Healthy);
    }

    #[tokio::test]
    async fn other_statuses_are_unhealthy_and_named() {
        let addr = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let probe = probe_http(&instance(addr), "healthz", Duration::from_secs(2)).await;
        assert_eq!(
            probe,
            Probe::Unhealthy("GET /healthz returned 503".to_string())
        );
    }

    #[tokio::test]
    async fn refused_connections_are_unhealthy() {
        // Bind then drop: the port is very likely closed right after.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let probe = probe_http(&instance(addr), "/healthz", Duration::from_secs(2)).await;
        match probe {
            Probe::Unhealthy(why) => assert!(why.starts_with("connection refused"), "{why}"),
            Probe::Healthy => panic!("a closed port is not healthy"),
        }
    }

    #[tokio::test]
    async fn silent_servers_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let probe = probe_http(&instance(addr), "/healthz", Duration::from_millis(100)).await;
        drop(listener);
        match probe {
            Probe::Unhealthy(why) => assert!(why.contains("timed out after 100ms"), "{why}"),
            Probe::Healthy => panic!("a silent server is not healthy"),
        }
    }

    #[tokio::test]
    async fn garbage_answers_and_missing_addresses_are_unhealthy() {
        let addr = serve_once("SSH-2.0-OpenSSH\r\n").await;
        let probe = probe_http(&instance(addr), "/", Duration::from_secs(2)).await;
        assert!(matches!(probe, Probe::Unhealthy(ref why) if why.contains("malformed")));
        let addr = serve_once("").await;
        let probe = probe_http(&instance(addr), "/", Duration::from_secs(2)).await;
        assert!(
            matches!(probe, Probe::Unhealthy(ref why) if why.starts_with("connection closed by"))
        );
        let probe = probe_http(&instance(String::new()), "/", Duration::from_secs(2)).await;
        assert!(matches!(probe, Probe::Unhealthy(ref why) if why.contains("no published address")));
    }
}
