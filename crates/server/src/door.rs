//! The TCP door: how the router is served on `--http`. Plain HTTP/1.1 or TLS (rustls with
//! the ring provider; certificate and key read from PEM files and reloaded on demand, e.g.
//! on SIGHUP, without dropping a connection), with limits that hold whatever a client does:
//!
//! - at most `max_connections` connections at once; past the cap the accept loop waits for a
//!   connection to end, so further clients wait in the kernel's listen backlog (they connect,
//!   but get no answer until a slot frees; once the backlog is full the kernel drops their
//!   SYNs and they retry);
//! - a connection that has not sent a whole request head (or finished its TLS handshake)
//!   within `header_read_timeout` is closed, and so is a keep-alive connection idle that
//!   long;
//! - request bodies of at most [`BODY_LIMIT`] bytes (413 with the API's error body).

use std::future::Future;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::ServerError;

/// Largest request body the API and the UI read.
pub const BODY_LIMIT: usize = 1 << 20;
/// Default time a client has to send a request head (and to finish a TLS handshake).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// In a request's extensions when it came over this control plane's TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct ServedOverTls;

/// How the TCP door serves.
#[derive(Clone)]
pub struct DoorOptions {
    /// Serve TLS with these files; `None`: plain HTTP.
    pub tls: Option<Arc<TlsFiles>>,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for DoorOptions {
    fn default() -> DoorOptions {
        DoorOptions {
            tls: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path} holds no PEM certificate (BEGIN CERTIFICATE)")]
    NoCertificate { path: PathBuf },
    #[error(
        "{path} holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey { path: PathBuf },
    #[error("{path}: the private key cannot be used: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the key {key} does not belong to the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// A certificate chain and key read from PEM files, served to new handshakes; [`reload`]
/// swaps in the files' current contents, or keeps the old pair when they are unusable.
///
/// [`reload`]: TlsFiles::reload
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<Arc<CertifiedKey>>>,
    config: Arc<rustls::ServerConfig>,
}

#[derive(Debug)]
struct CurrentCert(Arc<RwLock<Arc<CertifiedKey>>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// rustls with the *ring* provider: it builds with a C compiler alone (no cmake, unlike
/// aws-lc-rs). Its only lack is post-quantum key exchange, hence the deprecation.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Read `cert` (PEM chain, leaf first) and `key` (PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<TlsFiles>, TlsError> {
        let pair = read_pair(cert, key)?;
        let current = Arc::new(RwLock::new(Arc::new(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCert(current.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current,
            config: Arc::new(config),
        }))
    }

    /// Read the files again; new handshakes get the new pair. On error the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// SHA-256 of the leaf certificate served now (DER), hex.
    pub fn fingerprint(&self) -> String {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .cert
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default()
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    pub fn key_path(&self) -> &Path {
        &self.key
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read_file(cert)?;
    let chain = CertificateDer::pem_reader_iter(BufReader::new(cert_pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_path_buf(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = read_file(key)?;
    let key_der = PrivateKeyDer::from_pem_reader(BufReader::new(key_pem.as_slice())).map_err(
        |e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: key.to_path_buf(),
            },
            e => TlsError::Pem {
                path: key.to_path_buf(),
                message: e.to_string(),
            },
        },
    )?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(_) => Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
    }
}

/// `router` with the body limit: bodies declared larger than [`BODY_LIMIT`] are refused
/// before anything reads them (413 with the API's error body); longer chunked bodies fail
/// the extractor reading them, with the same answer.
pub fn limit_bodies(router: Router) -> Router {
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_declared_large_bodies))
}

async fn refuse_declared_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        let mut response = ServerError::PayloadTooLarge(format!(
            "the request body is larger than {} KiB",
            BODY_LIMIT / 1024
        ))
        .into_response();
        // The unread body is not drained: the connection closes after this answer.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        debug_assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        return response;
    }
    next.run(request).await
}

/// Serve `app` on `listener` with the door's limits until `shutdown` completes; then stop
/// accepting and let open connections finish their requests.
pub async fn serve_tcp(
    listener: TcpListener,
    app: Router,
    options: DoorOptions,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let acceptor = options
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Past the cap, wait here: new clients stay in the listen backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        _ = &mut shutdown => break,
                    }
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let http = http.clone();
        let stopped = stopped.clone();
        let acceptor = acceptor.clone();
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_connection(stream, peer, false, app, http, stopped).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, peer, true, app, http, stopped).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let _ = stop.send(true);
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if tls {
            request.extensions_mut().insert(ServedOverTls);
        }
        app.clone().oneshot(request)
    });
    let connection = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = async { drop(stopped.wait_for(|stop| *stop).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests;
