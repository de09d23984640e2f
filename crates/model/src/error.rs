//! Error classes shared by providers and the executor.

use thiserror::Error;

/// Whether retrying the same call may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Timeouts, connection resets, 5xx from an engine: retried with backoff.
    Transient,
    /// Bad input, missing image, failed build: unwinds at once.
    Permanent,
}

/// An error from a provider call. The message says what failed and what to do, lowercase,
/// without a trailing period, and never contains secret values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub message: String,
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Permanent,
            message: message.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}
