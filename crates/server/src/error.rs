use std::path::Path;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

use crate::api::ErrorBody;

/// Errors of the control plane. Each maps to an HTTP status and a stable code; the message
/// is for people and carries no internals beyond what helps them act.
///
/// Stable codes: `bad_request` (400), `unauthorized` (401), `forbidden` (403), `not_found`
/// (404), `conflict` (409), `unsupported_media_type` (415), `unavailable` (503),
/// `internal` (500).
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that are not valid (unknown, revoked, expired).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials whose role or environment scope does not allow the action.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Another deployment holds the environment, or a similar conflict.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Spec(#[from] cutover_spec::SpecError),
    #[error(transparent)]
    Plan(#[from] cutover_planner::PlanError),
    #[error(transparent)]
    Store(#[from] cutover_store::StoreError),
    #[error(transparent)]
    Exec(#[from] cutover_executor::ExecError),
    #[error("{0}")]
    Provider(#[from] cutover_model::ProviderError),
}

impl ServerError {
    pub fn io(path: &Path, source: std::io::Error) -> ServerError {
        ServerError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The HTTP status and the stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ServerError::BadRequest(_) | ServerError::Spec(_) | ServerError::Plan(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ServerError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ServerError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ServerError::Store(cutover_store::StoreError::LeaseHeld { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ServerError::Store(cutover_store::StoreError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ServerError::Provider(e) if e.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            code: code.to_string(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"cutover\""),
            );
        }
        response
    }
}
