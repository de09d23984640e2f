//! The control plane's side of the admin API: [`AdminClient`] and [`ProxyTraffic`], the
//! [`Traffic`] provider backed by the cutover proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_api::unix::{UnixHttp, UnixHttpError};
use cutover_model::{DrainReport, ProviderError, Route, Traffic};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::api::{DrainRequest, DrainResponse, ErrorBody, Health, RouteChange, StatsEntry};

/// Time allowed for an admin call other than drain.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a drain call waits beyond the drain timeout itself.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// Why an admin call failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The socket is missing or nobody answers on it.
    #[error("cannot reach the cutover proxy at {socket}")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The connection broke during the call.
    #[error("the connection to the cutover proxy at {socket} broke")]
    Connection {
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("the cutover proxy at {socket} did not answer within {after:?}")]
    Timeout { socket: PathBuf, after: Duration },
    /// The proxy refused the request (4xx): retrying the same call will not help.
    #[error("the cutover proxy refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The proxy failed to carry out the request (5xx).
    #[error("the cutover proxy failed ({status}): {message}")]
    Failed { status: u16, message: String },
    /// The answer was not what this client understands (version mismatch?).
    #[error("cannot decode the cutover proxy's answer to {what}; is the proxy the same version as the control plane")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl AdminError {
    /// Whether retrying the call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AdminError::Unreachable { .. }
                | AdminError::Connection { .. }
                | AdminError::Timeout { .. }
                | AdminError::Failed { .. }
        )
    }
}

/// A client of one proxy's admin socket. Cheap to clone; each call opens a fresh connection,
/// so a restarted proxy is picked up without any reconnect logic.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        AdminClient {
            socket: socket_path.into(),
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub async fn health(&self) -> Result<Health, AdminError> {
        self.call(Method::GET, "/health", None, CALL_TIMEOUT, "health")
            .await
    }

    pub async fn routes(&self) -> Result<Vec<Route>, AdminError> {
        self.call(Method::GET, "/routes", None, CALL_TIMEOUT, "routes")
            .await
    }

    /// Serve `route` from now on; returns the route it replaced. The proxy has saved the new
    /// table when this returns.
    pub async fn set_route(&self, route: &Route) -> Result<Option<Route>, AdminError> {
        let body = serde_json::to_vec(route).map_err(|source| AdminError::Decode {
            what: "set_route",
            source,
        })?;
        let path = format!("/routes/{}", route.env);
        let change: RouteChange = self
            .call(Method::PUT, &path, Some(body), CALL_TIMEOUT, "set_route")
            .await?;
        Ok(change.previous)
    }

    /// Stop serving `env`; returns the route it had.
    pub async fn remove_route(&self, env: &str) -> Result<Option<Route>, AdminError> {
        let path = format!("/routes/{env}");
        let change: RouteChange = self
            .call(Method::DELETE, &path, None, CALL_TIMEOUT, "remove_route")
            .await?;
        Ok(change.previous)
    }

    /// Wait until no request is in flight on `release` at `listen`, or `timeout` passes;
    /// returns how many were still in flight.
    pub async fn drain(
        &self,
        listen: &str,
        release: &str,
        timeout: Duration,
    ) -> Result<u64, AdminError> {
        let request = DrainRequest {
            listen: listen.to_owned(),
            release: release.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let body = serde_json::to_vec(&request).map_err(|source| AdminError::Decode {
            what: "drain",
            source,
        })?;
        let answer: DrainResponse = self
            .call(
                Method::POST,
                "/drain",
                Some(body),
                timeout.saturating_add(DRAIN_MARGIN),
                "drain",
            )
            .await?;
        Ok(answer.in_flight_left)
    }

    pub async fn stats(&self) -> Result<Vec<StatsEntry>, AdminError> {
        self.call(Method::GET, "/stats", None, CALL_TIMEOUT, "stats")
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        what: &'static str,
    ) -> Result<T, AdminError> {
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AdminError::Timeout {
                socket: self.socket.clone(),
                after: timeout,
            })??;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            let status = status.as_u16();
            return Err(if status < 500 {
                AdminError::Rejected { status, message }
            } else {
                AdminError::Failed { status, message }
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| AdminError::Decode { what, source })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let http = UnixHttp::new(&self.socket, "cutover-proxy");
        http.exchange(
            method,
            path,
            &[],
            Some(Bytes::from(body.unwrap_or_default())),
        )
        .await
        .map_err(|e| match e {
            UnixHttpError::Unreachable { socket, source } => {
                AdminError::Unreachable { socket, source }
            }
            UnixHttpError::Connection { socket, source } => {
                AdminError::Connection { socket, source }
            }
            UnixHttpError::BadPath { path } => AdminError::Rejected {
                status: 400,
                message: format!("`{path}` is not a valid admin path; env names must be url-safe"),
            },
        })
    }
}

/// [`Traffic`] through the cutover proxy's admin socket.
#[derive(Debug, Clone)]
pub struct ProxyTraffic {
    admin: AdminClient,
}

impl ProxyTraffic {
    pub fn new(admin: AdminClient) -> Self {
        ProxyTraffic { admin }
    }

    pub fn admin(&self) -> &AdminClient {
        &self.admin
    }

    fn provider_error(&self, err: AdminError) -> ProviderError {
        let mut message = crate::error::error_text(&err);
        if matches!(err, AdminError::Unreachable { .. }) {
            message.push_str("; it is restarted by the control plane");
        }
        if err.is_transient() {
            ProviderError::transient(message)
        } else {
            ProviderError::permanent(message)
        }
    }
}

#[async_trait]
impl Traffic for ProxyTraffic {
    async fn route(&self, env: &str) -> Result<Option<Route>, ProviderError> {
        let routes = self
            .admin
            .routes()
            .await
            .map_err(|e| self.provider_error(e))?;
        Ok(routes.into_iter().find(|r| r.env == env))
    }

    async fn set_route(&self, route: &Route) -> Result<Option<Route>, ProviderError> {
        self.admin
            .set_route(route)
            .await
            .map_err(|e| self.provider_error(e))
    }

    async fn remove_route(&self, env: &str) -> Result<Option<Route>, ProviderError> {
        self.admin
            .remove_route(env)
            .await
            .map_err(|e| self.provider_error(e))
    }

    async fn drain(
        &self,
        listen: &str,
        release: &str,
        timeout: Duration,
    ) -> Result<DrainReport, ProviderError> {
        let in_flight_left = self
            .admin
            .drain(listen, release, timeout)
            .await
            .map_err(|e| self.provider_error(e))?;
        Ok(DrainReport { in_flight_left })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absent_proxy_is_a_transient_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let traffic = ProxyTraffic::new(AdminClient::new(&socket));
        let err = traffic.route("production").await.unwrap_err();
        assert!(err.is_transient());
        assert!(
            err.message.starts_with(&format!(
                "cannot reach the cutover proxy at {}: ",
                socket.display()
            )),
            "{}",
            err.message
        );
        assert!(err
            .message
            .ends_with("it is restarted by the control plane"));
    }

    #[test]
    fn refusals_are_permanent_and_failures_transient() {
        let traffic = ProxyTraffic::new(AdminClient::new("/nonexistent/proxy.sock"));
        let refused = traffic.provider_error(AdminError::Rejected {
            status: 409,
            message: "cannot listen on 127.0.0.1:80".to_owned(),
        });
        assert!(!refused.is_transient());
        assert!(refused.message.contains("cannot listen on 127.0.0.1:80"));
        let failed = traffic.provider_error(AdminError::Failed {
            status: 500,
            message: "cannot write the routing table".to_owned(),
        });
        assert!(failed.is_transient());
    }
}
