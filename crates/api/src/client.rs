//! [`ApiClient`]: `/api/v1` as typed calls, over the control plane's Unix socket or over
//! HTTPS to a control plane on another machine ([`crate::remote`]). On the socket the
//! control plane knows the caller by its peer credentials; a bearer token, when given, makes
//! the caller act as that token's owner instead. Over HTTPS the token is the only identity.

use std::path::PathBuf;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::remote::{RemoteError, RemoteHttp, UrlError};
use crate::unix::{UnixHttp, UnixHttpError};
use crate::{ErrorBody, ErrorCode};

/// Why a request got no answer, per transport.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error(transparent)]
    Unix(#[from] UnixHttpError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Why a call failed.
#[derive(Debug, Error)]
pub enum CallError {
    /// Nothing answers (not started, or died; or the network or TLS handshake failed).
    #[error("cannot reach the control plane: {0}")]
    Unreachable(#[source] TransportError),
    /// The control plane answered with an error.
    #[error("{}", .0.message)]
    Api(ErrorBody),
    /// The answer was not what this client understands.
    #[error("cannot read the control plane's answer to {what}: {detail}; is it the same version as this cutover")]
    Decode { what: String, detail: String },
}

impl CallError {
    /// The stable code of an error answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Api(body) => Some(body.code),
            _ => None,
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
    pub id: String,
}

/// How the client reaches the control plane.
#[derive(Debug, Clone)]
enum Transport {
    Unix(UnixHttp),
    Remote(RemoteHttp),
}

/// The typed client of `/api/v1`.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: Transport,
    token: Option<HeaderValue>,
}

impl ApiClient {
    pub fn unix(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            http: Transport::Unix(UnixHttp::new(socket, "cutover")),
            token: None,
        }
    }

    /// A client of the control plane at `url` (see [`crate::remote::check_url`]), trusting
    /// only the certificates of `ca` (file name, PEM) when given, else the system's roots.
    pub fn remote(url: &str, ca: Option<(&str, &[u8])>) -> Result<ApiClient, UrlError> {
        Ok(ApiClient {
            http: Transport::Remote(RemoteHttp::new(url, ca)?),
            token: None,
        })
    }

    /// Whether this client talks to a control plane over HTTP(S) rather than the socket.
    pub fn is_remote(&self) -> bool {
        matches!(self.http, Transport::Remote(_))
    }

    /// Where the control plane is: its URL, or its socket.
    pub fn target(&self) -> String {
        match &self.http {
            Transport::Unix(unix) => unix.socket().display().to_string(),
            Transport::Remote(remote) => remote.url().to_string(),
        }
    }

    /// The error of an event stream that ended before its deployment did.
    pub fn stream_ended(&self) -> CallError {
        let detail = "the event stream ended before the deployment did";
        CallError::Unreachable(match &self.http {
            Transport::Unix(unix) => TransportError::Unix(UnixHttpError::Unreachable {
                socket: unix.socket().to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::ConnectionReset, detail),
            }),
            Transport::Remote(remote) => TransportError::Remote(RemoteError {
                url: remote.url().to_string(),
                detail: detail.to_string(),
            }),
        })
    }

    /// Act as the owner of `token` instead of the socket's peer.
    pub fn with_token(mut self, token: Option<&str>) -> ApiClient {
        self.token = token.and_then(|t| {
            let mut value = HeaderValue::from_str(&format!("Bearer {t}")).ok()?;
            // Never shown by Debug.
            value.set_sensitive(true);
            Some(value)
        });
        self
    }

    fn headers(&self, extra: Option<(HeaderName, HeaderValue)>) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers: Vec<_> = self
            .token
            .iter()
            .map(|t| (header::AUTHORIZATION, t.clone()))
            .collect();
        headers.extend(extra);
        headers
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| CallError::Decode {
                what: path.to_string(),
                detail: e.to_string(),
            })?;
        let headers = self.headers(None);
        let (status, answer) = match &self.http {
            Transport::Unix(unix) => unix
                .exchange(method, path, &headers, bytes)
                .await
                .map_err(|e| CallError::Unreachable(e.into()))?,
            Transport::Remote(remote) => {
                let response = remote
                    .send(method, path, &headers, bytes, false)
                    .await
                    .map_err(|e| CallError::Unreachable(e.into()))?;
                let status = response.status();
                let answer = response.bytes().await.map_err(|e| {
                    CallError::Unreachable(RemoteError::from_reqwest(remote.url(), &e).into())
                })?;
                (status, answer)
            }
        };
        if !status.is_success() {
            return Err(CallError::Api(error_body(status.as_u16(), &answer)));
        }
        serde_json::from_slice(&answer).map_err(|e| CallError::Decode {
            what: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// Open an event stream (`text/event-stream`) at `path`, resuming after the event
    /// `last_event_id` when given.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Event, CallError>> + Unpin, CallError> {
        let resume = last_event_id.and_then(|id| {
            HeaderValue::from_str(&id.to_string())
                .ok()
                .map(|v| (HeaderName::from_static("last-event-id"), v))
        });
        let headers = self.headers(resume);
        // Either transport's body as a stream of bytes, its errors already in our terms.
        let bytes: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, CallError>> + Send>> =
            match &self.http {
                Transport::Unix(unix) => {
                    let response = unix
                        .send(Method::GET, path, &headers, None)
                        .await
                        .map_err(|e| CallError::Unreachable(e.into()))?;
                    let status = response.status();
                    if !status.is_success() {
                        let body = response
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        return Err(CallError::Api(error_body(status.as_u16(), &body)));
                    }
                    let socket = unix.socket().to_path_buf();
                    Box::pin(response.into_body().into_data_stream().map(move |item| {
                        item.map_err(|source| {
                            CallError::Unreachable(
                                UnixHttpError::Connection {
                                    socket: socket.clone(),
                                    source,
                                }
                                .into(),
                            )
                        })
                    }))
                }
                Transport::Remote(remote) => {
                    let response = remote
                        .send(Method::GET, path, &headers, None, true)
                        .await
                        .map_err(|e| CallError::Unreachable(e.into()))?;
                    let status = response.status();
                    if !status.is_success() {
                        let body = response.bytes().await.unwrap_or_default();
                        return Err(CallError::Api(error_body(status.as_u16(), &body)));
                    }
                    let url = remote.url().to_string();
                    Box::pin(response.bytes_stream().map(move |item| {
                        item.map_err(|e| {
                            CallError::Unreachable(RemoteError::from_reqwest(&url, &e).into())
                        })
                    }))
                }
            };
        Ok(bytes.eventsource().map(|item| match item {
            Ok(e) => Ok(Event {
                event: e.event,
                data: e.data,
                id: e.id,
            }),
            Err(eventsource_stream::EventStreamError::Transport(error)) => Err(error),
            Err(e) => Err(CallError::Decode {
                what: "an event stream".to_string(),
                detail: e.to_string(),
            }),
        }))
    }
}

/// The error body of an answer, or one made from its status when it has none.
fn error_body(status: u16, body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
        code: match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        },
        message: format!("the control plane answered {status} without an error body"),
        error_id: None,
        violations: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let client = ApiClient::remote("https://cutover.example.com", None)
            .unwrap()
            .with_token(Some("canary-token-93d1"));
        assert!(client.is_remote());
        assert_eq!(client.target(), "https://cutover.example.com");
        assert!(!format!("{client:?}").contains("canary-token-93d1"));
        let socket = ApiClient::unix("/run/x.sock").with_token(Some("canary-token-93d1"));
        assert!(!format!("{socket:?}").contains("canary-token-93d1"));
    }

    #[test]
    fn an_answer_without_an_error_body_keeps_its_status_class() {
        let body = error_body(404, b"<html>");
        assert_eq!(body.code, ErrorCode::NotFound);
        let body = error_body(
            409,
            br#"{"code":"conflict","message":"production is held by production-2"}"#,
        );
        assert_eq!(body.message, "production is held by production-2");
    }
}
