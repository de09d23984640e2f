//! Shared vocabulary of cutover: the spec, strategies and plans, journal events, releases,
//! routes, provider traits and error classes, and the shared helpers (backoff, duration
//! rendering, random tokens). No I/O lives here beyond asking the OS for random bytes.

pub mod backoff;
pub mod duration;
pub mod error;
pub mod evidence;
pub mod image_ref;
pub mod journal;
pub mod live;
pub mod plan;
pub mod provider;
pub mod random;
pub mod release;
pub mod spec;

pub use backoff::Backoff;
pub use duration::{format_duration, format_duration_exact, format_duration_ms};
pub use error::{ErrorClass, ProviderError};
pub use evidence::{
    ExceptionEvidence, FindingEvidence, ProvenanceEvidence, ScanEvidence, SupplyEvidence,
};
pub use image_ref::{attestation_tag, ImageRef, ImageRefError};
pub use journal::{JournalEntry, JournalEvent};
pub use live::{image_path, live_periods, LiveCause, LiveChange, LiveEnd, LivePeriod};
pub use plan::RestoreRoute;
pub use plan::{
    Action, DeploymentKind, ImageSource, InstanceSpec, Plan, Step, StepKind, StepOutput, Strategy,
    StrategyStep, PLAN_FORMAT,
};
pub use provider::{
    Compute, Diagnosis, DrainReport, HealthProbe, ImageBuilder, LocalImage, Preflight,
    PreflightFailure, Preflights, Probe, Providers, PulledImage, ScanOutcome, SecretSource,
    SignRequest, SupplyChain, Traffic, DIAGNOSIS_LOG_LINES,
};
pub use random::{random_bytes, random_token_hex, RandomError};
pub use release::{Backend, DeploymentStatus, ImageInfo, Instance, InstanceState, Release, Route};
pub use spec::check_secret_name;
pub use spec::{
    ApprovalSpec, BuildSpec, ContainerSpec, EnvironmentSpec, GateSpec, HealthSpec, SecretMount,
    SecretPin, SecretSourceRef, Spec, SupplySpec, SECRETS_DIR,
};

use sha2::{Digest, Sha256};

/// Label keys put on everything cutover creates.
pub mod labels {
    pub const MANAGED: &str = "cutover.managed";
    pub const APP: &str = "cutover.app";
    pub const ENV: &str = "cutover.env";
    pub const RELEASE: &str = "cutover.release";
    pub const DEPLOYMENT: &str = "cutover.deployment";
    /// `<deployment id>@<plan created at ms>`: unique to one plan even when a state
    /// directory is wiped and deployment numbers start again. Providers key idempotency on it.
    pub const PLAN: &str = "cutover.plan";
    pub const STEP: &str = "cutover.step";
    pub const REPLICA: &str = "cutover.replica";
}

/// The response header naming the release that served a request.
pub const RELEASE_HEADER: &str = "x-cutover-release";

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of the JSON encoding of `value`. Deterministic for cutover's types: structs
/// serialize fields in declaration order and every map is a `BTreeMap`.
pub fn json_digest<T: serde::Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("cutover types serialize to json");
    sha256_digest(&bytes)
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 rendering of a unix-ms timestamp, for people.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
