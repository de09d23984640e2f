//! HTTP/1.1 over a Unix socket: the one client the CLI (control plane socket) and the
//! control plane (proxy admin socket) use. One connection per request, so a daemon that
//! restarts between two calls is reached again without any pool to repair.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::UnixStream;

/// Why a request over the socket did not get an answer.
#[derive(Debug, Error)]
pub enum UnixHttpError {
    /// The socket is missing or nobody accepts on it.
    #[error("nothing answers on {socket}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke during the exchange.
    #[error("the connection to {socket} broke")]
    Connection {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (a path that is not a valid URI).
    #[error("`{path}` is not a valid request path")]
    BadPath { path: String },
}

/// A client of an HTTP server on a Unix socket.
#[derive(Debug, Clone)]
pub struct UnixHttp {
    socket: PathBuf,
    host: HeaderValue,
}

impl UnixHttp {
    /// `host` is sent as the Host header (a name for logs; the socket decides the peer).
    pub fn new(socket: impl Into<PathBuf>, host: &'static str) -> UnixHttp {
        UnixHttp {
            socket: socket.into(),
            host: HeaderValue::from_static(host),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send a request and return the response with its body still streaming (for event
    /// streams). The connection lives until the body is dropped.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, UnixHttpError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            UnixHttpError::Unreachable {
                socket: self.socket.clone(),
                source,
            }
        })?;
        let broke = |source| UnixHttpError::Connection {
            socket: self.socket.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broke)?;
        // Ends by itself once the response is read and the sender dropped.
        tokio::spawn(connection);
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().map_err(|_| UnixHttpError::BadPath {
            path: path.to_string(),
        })?;
        let h = request.headers_mut();
        h.insert(header::HOST, self.host.clone());
        if has_body {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        sender.send_request(request).await.map_err(broke)
    }

    /// Send a request and read the whole answer.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), UnixHttpError> {
        let response = self.send(method, path, headers, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| UnixHttpError::Connection {
                socket: self.socket.clone(),
                source,
            })?
            .to_bytes();
        Ok((status, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let client = UnixHttp::new(dir.path().join("none.sock"), "test");
        let err = client
            .exchange(Method::GET, "/x", &[], None)
            .await
            .unwrap_err();
        assert!(matches!(err, UnixHttpError::Unreachable { .. }));
        assert!(err.to_string().contains("none.sock"), "{err}");
    }

    #[tokio::test]
    async fn exchanges_a_request_with_a_server_on_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let method = req.method().clone();
                let uri = req.uri().to_string();
                let body = req.into_body().collect().await?.to_bytes();
                let text = format!("{method} {uri} {}", String::from_utf8_lossy(&body));
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
                .unwrap();
        });
        let client = UnixHttp::new(&path, "test");
        let (status, body) = client
            .exchange(Method::POST, "/a?b=c", &[], Some(Bytes::from_static(b"{}")))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"POST /a?b=c {}");
        server.await.unwrap();
    }
}
