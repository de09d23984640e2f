//! Errors of the proxy process.

use std::path::PathBuf;

use thiserror::Error;

/// Why the proxy could not start or had to stop.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("cannot read the routing table {path}")]
    ReadRoutes {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse the routing table {path}; fix or remove the file")]
    ParseRoutes {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the routing table {path}; check free disk space and permissions")]
    WriteRoutes {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind the admin socket {path}; check the state directory permissions")]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another cutover proxy already answers on {path}; stop it before starting a new one")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot write the pid file {path}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the proxy's worker threads")]
    Workers { source: std::io::Error },
    #[error("cannot install the signal handlers")]
    Signals { source: std::io::Error },
}

/// `Display` of an error followed by its sources.
pub(crate) fn error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
