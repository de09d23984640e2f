//! Provider traits: the only way the executor touches the world.
//!
//! Every call is idempotent: it carries (or is keyed by) names and labels decided by the
//! planner, and first looks for its earlier work. Implementations: `cutover-docker` (local
//! or remote Docker + the cutover proxy), later `cutover-aws`, and fakes in tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::ProviderError;
use crate::plan::InstanceSpec;
use crate::release::{ImageInfo, Instance, Route};
use crate::spec::{BuildSpec, GateSpec};

/// Builds golden images.
#[async_trait]
pub trait ImageBuilder: Send + Sync {
    /// Build `source` and tag it `tag` with `labels`. When an image with that tag and the
    /// same `cutover.deployment` label exists, return it instead of building again.
    async fn build(
        &self,
        tag: &str,
        source: &BuildSpec,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<ImageInfo, ProviderError>;

    /// Look an image up by id or tag.
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, ProviderError>;
}

/// Runs instances.
#[async_trait]
pub trait Compute: Send + Sync {
    /// Start the instance named `spec.name` from `image`. When it already exists (an earlier
    /// attempt), make sure it runs and return it; never start a second one.
    async fn provision(
        &self,
        spec: &InstanceSpec,
        image: &ImageInfo,
    ) -> Result<Instance, ProviderError>;

    /// Current state of an instance, `None` when it does not exist.
    async fn inspect(&self, name: &str) -> Result<Option<Instance>, ProviderError>;

    /// Stop and remove an instance. Removing a missing instance succeeds.
    async fn remove(&self, name: &str) -> Result<(), ProviderError>;

    /// All instances cutover made for `app` (and `env`, when given).
    async fn list(&self, app: &str, env: Option<&str>) -> Result<Vec<Instance>, ProviderError>;
}

/// Result of one health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Healthy,
    Unhealthy(String),
}

/// Probes one instance once; the executor applies thresholds, interval and deadline.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    async fn probe(&self, instance: &Instance, path: &str, timeout: Duration) -> Probe;
}

/// What draining found when it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests still in flight on the drained release when the deadline passed (0 = clean).
    pub in_flight_left: u64,
}

/// Moves traffic.
#[async_trait]
pub trait Traffic: Send + Sync {
    /// The route currently served for `env`, if any.
    async fn route(&self, env: &str) -> Result<Option<Route>, ProviderError>;

    /// Serve `route` from now on (atomically); returns the route it replaced.
    async fn set_route(&self, route: &Route) -> Result<Option<Route>, ProviderError>;

    /// Stop serving `env` (undo of a first deployment's shift). Missing routes are fine.
    async fn remove_route(&self, env: &str) -> Result<Option<Route>, ProviderError>;

    /// Wait until no request is in flight on `release` at `listen`, or `timeout` passes.
    async fn drain(
        &self,
        listen: &str,
        release: &str,
        timeout: Duration,
    ) -> Result<DrainReport, ProviderError>;
}

/// What a scan concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    pub passed: bool,
    /// One line for people: package and finding counts, the verdict.
    pub summary: String,
    /// Why the gate failed (empty when it passed).
    pub reasons: Vec<String>,
}

/// Inputs of a signature.
#[derive(Debug, Clone, PartialEq)]
pub struct SignRequest {
    pub app: String,
    pub env: String,
    pub key: Option<std::path::PathBuf>,
    pub spec_digest: String,
    pub plan_digest: String,
    pub deployment_id: String,
    pub source: std::path::PathBuf,
}

/// The supply chain: scan, sign and verify images. Results are kept beside the image
/// (content-addressed by image id), so every call is idempotent.
#[async_trait]
pub trait SupplyChain: Send + Sync {
    /// SBOM + vulnerability and secret scan judged by `gate`.
    async fn scan(
        &self,
        image: &ImageInfo,
        app: &str,
        env: &str,
        gate: &GateSpec,
    ) -> Result<ScanOutcome, ProviderError>;

    /// Sign provenance, SBOM and scan verdict for `image`; returns the key id.
    async fn sign(&self, image: &ImageInfo, request: &SignRequest)
        -> Result<String, ProviderError>;

    /// Verify `image`'s attestations against `trusted_keys` (empty: the local key); fails
    /// closed with a permanent error. Returns the key ids that signed.
    async fn verify(
        &self,
        image: &ImageInfo,
        env: &str,
        trusted_keys: &[std::path::PathBuf],
    ) -> Result<Vec<String>, ProviderError>;
}

/// The set of providers one executor works with.
#[derive(Clone)]
pub struct Providers {
    pub images: Arc<dyn ImageBuilder>,
    pub compute: Arc<dyn Compute>,
    pub health: Arc<dyn HealthProbe>,
    pub traffic: Arc<dyn Traffic>,
    /// Needed by plans with scan, sign or verify steps.
    pub supply: Option<Arc<dyn SupplyChain>>,
}
