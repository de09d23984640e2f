//! [`ApiClient`]: `/api/v1` as typed calls, over the control plane's Unix socket. On the
//! socket the control plane knows the caller by its peer credentials; a bearer token, when
//! given, makes the caller act as that token's owner instead.

use std::path::PathBuf;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::unix::{UnixHttp, UnixHttpError};
use crate::{ErrorBody, ErrorCode};

/// Why a call failed.
#[derive(Debug, Error)]
pub enum CallError {
    /// Nothing answers (not started, or died).
    #[error("cannot reach the control plane: {0}")]
    Unreachable(#[source] UnixHttpError),
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

/// The typed client of `/api/v1`.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: UnixHttp,
    token: Option<HeaderValue>,
}

impl ApiClient {
    pub fn unix(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            http: UnixHttp::new(socket, "cutover"),
            token: None,
        }
    }

    /// Act as the owner of `token` instead of the socket's peer.
    pub fn with_token(mut self, token: Option<&str>) -> ApiClient {
        self.token = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
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
        let (status, answer) = self
            .http
            .exchange(method, path, &self.headers(None), bytes)
            .await
            .map_err(CallError::Unreachable)?;
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
        let response = self
            .http
            .send(Method::GET, path, &self.headers(resume), None)
            .await
            .map_err(CallError::Unreachable)?;
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
        let socket = self.http.socket().to_path_buf();
        Ok(response
            .into_body()
            .into_data_stream()
            .eventsource()
            .map(move |item| match item {
                Ok(e) => Ok(Event {
                    event: e.event,
                    data: e.data,
                    id: e.id,
                }),
                Err(eventsource_stream::EventStreamError::Transport(source)) => {
                    Err(CallError::Unreachable(UnixHttpError::Connection {
                        socket: socket.clone(),
                        source,
                    }))
                }
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
