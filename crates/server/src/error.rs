use std::path::Path;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

use crate::api::{ErrorBody, ErrorCode, GuardrailViolation};

/// Errors of the control plane. Each maps to an HTTP status and a stable code; the message
/// is for people and carries no internals beyond what helps them act.
///
/// Stable codes: `bad_request` (400), `unauthorized` (401), `forbidden` (403), `not_found`
/// (404), `conflict` (409), `unsupported_media_type` (415), `unavailable` (503),
/// `guardrail_violation` (422), `internal` (500).
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
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// The spec is weaker than its environment's guardrails: each loosened setting.
    #[error("{message}")]
    Guardrails {
        message: String,
        violations: Vec<GuardrailViolation>,
    },
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

    /// The stable code of this error (its HTTP status is [`ErrorCode::status`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            ServerError::BadRequest(_) | ServerError::Spec(_) | ServerError::Plan(_) => {
                ErrorCode::BadRequest
            }
            ServerError::Unauthorized(_) => ErrorCode::Unauthorized,
            ServerError::Forbidden(_) => ErrorCode::Forbidden,
            ServerError::NotFound(_) => ErrorCode::NotFound,
            ServerError::Conflict(_) => ErrorCode::Conflict,
            ServerError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ServerError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ServerError::Guardrails { .. } => ErrorCode::GuardrailViolation,
            ServerError::Store(cutover_store::StoreError::LeaseHeld { .. }) => ErrorCode::Conflict,
            ServerError::Store(cutover_store::StoreError::NotFound { .. }) => ErrorCode::NotFound,
            ServerError::Provider(e) if e.is_transient() => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The HTTP status and the stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let code = self.code();
        (
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code.as_str(),
        )
    }

    /// The body clients see. Server-side failures say only that they happened, with an id
    /// that names the log line carrying the detail: store errors, paths and provider
    /// internals stay in the log.
    pub fn body(&self) -> ErrorBody {
        let code = self.code();
        if code.status() < 500 {
            return ErrorBody {
                code,
                message: self.to_string(),
                error_id: None,
                violations: match self {
                    ServerError::Guardrails { violations, .. } => violations.clone(),
                    _ => Vec::new(),
                },
            };
        }
        let id = error_id();
        tracing::error!(error_id = %id, error = %self, "request failed");
        ErrorBody {
            code,
            message: match code {
                ErrorCode::Unavailable => format!(
                    "a component the control plane needs is unavailable; retry in a moment (error id {id})"
                ),
                _ => format!(
                    "internal error (id {id}); the control plane's log has the detail under that id"
                ),
            },
            error_id: Some(id),
            violations: Vec::new(),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let body = self.body();
        let status =
            StatusCode::from_u16(body.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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

/// A short random id for an internal error, shared by its answer and its log line.
fn error_id() -> String {
    // Still unique enough to find the line without randomness: the time.
    cutover_model::random_token_hex(6).unwrap_or_else(|_| format!("t{}", cutover_model::now_ms()))
}
