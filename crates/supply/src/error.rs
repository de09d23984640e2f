//! The one error type of the crate.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can stop a scan, an import or a gate evaluation. Problems that only lose
/// part of the picture (an oversized file, a malformed advisory) are warnings instead.
#[derive(Debug, Error)]
pub enum SupplyError {
    #[error("cannot read {path}: check that it exists and is readable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an image tarball: {reason}")]
    NotAnImage { path: PathBuf, reason: String },
    #[error("corrupt tar in {what}: {detail}; re-export the image with `docker save`")]
    CorruptTar { what: String, detail: String },
    #[error("layer {layer} decompresses past the limit of {limit} bytes (possible gzip bomb); raise `Limits::max_layer_bytes` if the image is genuine")]
    LayerTooLarge { layer: String, limit: u64 },
    #[error("image has more than {limit} file entries; raise `Limits::max_entries` if the image is genuine")]
    TooManyEntries { limit: u64 },
    #[error("invalid json in {what}: {detail}")]
    Json { what: String, detail: String },
    #[error("advisory database {path}: {detail}")]
    AdvisoryDb { path: PathBuf, detail: String },
    #[error("rule file {path}: {detail}")]
    Rules { path: String, detail: String },
    #[error("exceptions file {path}, line {line}: {detail}")]
    Exceptions {
        path: String,
        line: usize,
        detail: String,
    },
}

impl SupplyError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SupplyError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = SupplyError> = std::result::Result<T, E>;
