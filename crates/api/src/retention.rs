//! Retention: pinned releases and `cutover gc`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A release kept by `cutover gc` whatever its age (`cutover pin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pin {
    pub env: String,
    pub release: String,
    /// The release's image id when it was pinned.
    pub image_id: String,
    pub by: String,
    pub at_ms: u64,
}

/// `POST /api/v1/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Report what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `cutover gc` did (or, dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    pub dry_run: bool,
    /// Every image kept, with why.
    pub kept: Vec<GcKept>,
    /// Every image removed (or that would be).
    pub removed: Vec<GcRemoved>,
    /// Images that should have gone but could not be removed.
    pub failed: Vec<GcFailed>,
    /// Bytes freed (dry run: that would be): images and their attestation directories.
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcKept {
    pub image_id: String,
    pub app: String,
    pub tags: Vec<String>,
    /// Why it stays: `current in production (production-4)`, `pinned by alice`, …
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcRemoved {
    pub image_id: String,
    pub app: String,
    pub tags: Vec<String>,
    /// The releases that ran it.
    pub releases: Vec<String>,
    /// The image's size on disk (layers shared with other images included).
    pub image_bytes: u64,
    /// Its scan reports and attestations under `supply/`.
    pub attestation_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcFailed {
    pub image_id: String,
    pub error: String,
}
