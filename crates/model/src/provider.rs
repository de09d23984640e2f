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
use crate::spec::{BuildSpec, GateSpec, Spec};

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

    /// Pull `reference` (by digest) from its registry, tag it `tag`, and fetch the
    /// attestations stored next to it. When the image is already here, only the
    /// attestations are fetched again. Builders without a registry refuse.
    async fn pull(
        &self,
        reference: &crate::ImageRef,
        _tag: &str,
    ) -> Result<PulledImage, ProviderError> {
        Err(ProviderError::permanent(format!(
            "this image builder cannot pull {reference}; deploy it with the Docker provider"
        )))
    }

    /// The local images cutover built for `app` (by their `cutover.app` label). A provider
    /// that keeps no local images lists none.
    async fn list_images(&self, _app: &str) -> Result<Vec<LocalImage>, ProviderError> {
        Ok(Vec::new())
    }

    /// Remove a local image cutover built, by id (all its tags). Never forced: an image a
    /// container still uses is refused with a permanent error. A missing image is fine.
    async fn remove_image(&self, id: &str) -> Result<(), ProviderError> {
        Err(ProviderError::permanent(format!(
            "this image provider cannot remove images, so {id} stays"
        )))
    }
}

/// An image pulled from a registry, with the attestations stored next to it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    pub image: ImageInfo,
    /// The DSSE envelopes found under the image's attestation tag, JSON each.
    pub attestations: Vec<Vec<u8>>,
}

/// A local image cutover built (what retention looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// `sha256:<hex>`.
    pub id: String,
    pub tags: Vec<String>,
    /// Bytes on disk (layers shared with other images included).
    pub size_bytes: u64,
    /// Its `cutover.env` and `cutover.release` labels, when present.
    pub env: Option<String>,
    pub release: Option<String>,
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

    /// What is known about why an instance is unwell: its state, exit code, OOM kill and
    /// last log lines, with the values of its environment redacted. `None` when the
    /// provider cannot tell (the default) or the instance is gone.
    async fn diagnose(&self, _instance: &Instance) -> Option<Diagnosis> {
        None
    }
}

/// Lines of log a [`Diagnosis`] keeps.
pub const DIAGNOSIS_LOG_LINES: usize = 20;

/// Why an instance is unwell, as its provider sees it. Log lines are already redacted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnosis {
    /// The provider's word for the state (`running`, `exited`, `restarting`, …).
    pub state: String,
    /// Exit code of the last run, when it exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// The provider's own error about the instance (e.g. a failed start), if any.
    pub error: Option<String>,
    /// Restarts the provider made.
    pub restart_count: u32,
    /// The last lines the instance wrote (stdout and stderr), oldest first, at most
    /// [`DIAGNOSIS_LOG_LINES`].
    pub logs: Vec<String>,
}

impl Diagnosis {
    /// A few lines for people: state line, then the log tail, each indented.
    pub fn render(&self) -> String {
        let mut state = format!("container state: {}", self.state);
        if let Some(code) = self.exit_code {
            state.push_str(&format!(", exit code {code}"));
        }
        if self.oom_killed {
            state.push_str(", killed for exceeding its memory limit (raise container.memory)");
        }
        if self.restart_count > 0 {
            state.push_str(&format!(", restarted {} times", self.restart_count));
        }
        if let Some(error) = self.error.as_deref().filter(|e| !e.is_empty()) {
            state.push_str(&format!(", error: {error}"));
        }
        let mut out = state;
        if self.logs.is_empty() {
            out.push_str("\n  it wrote no log lines");
        } else {
            let lines = if self.logs.len() == 1 {
                "line"
            } else {
                "lines"
            };
            out.push_str(&format!("\n  last {} log {lines}:", self.logs.len()));
            for line in &self.logs {
                out.push_str("\n    | ");
                out.push_str(line);
            }
        }
        out
    }
}

/// Where providers get secret values at provision time: the control plane's store, which
/// audits every call as an injection. Values come back zeroizing and redacted.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The value of `pin` (a stored secret of `instance.env`) for the instance's secret
    /// `mount` (the name the app sees). Fails, naming the secret, when it is missing,
    /// revoked or does not decrypt.
    async fn resolve(
        &self,
        instance: &InstanceSpec,
        mount: &str,
        pin: &crate::spec::SecretPin,
    ) -> Result<secrecy::SecretSlice<u8>, ProviderError>;
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
    /// The CI job (URL) that asked for the build; `None`: the control plane itself.
    pub invoked_by: Option<String>,
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

    /// Keep the attestations pulled with `image` from `reference` (DSSE envelopes, JSON
    /// each) as its provenance signed elsewhere; refuses statements about another image.
    /// Supply chains that keep nothing refuse pulled images.
    async fn import(
        &self,
        image: &ImageInfo,
        reference: &crate::ImageRef,
        _envelopes: &[Vec<u8>],
    ) -> Result<(), ProviderError> {
        Err(ProviderError::permanent(format!(
            "this control plane cannot import the attestations of {reference} (image {}); deploy it from a control plane with the local supply chain",
            image.id
        )))
    }

    /// What was recorded about `image` for `env` (the scan verdict with its findings and
    /// used exceptions, the signed provenance), read back without scanning again. Empty when
    /// nothing was recorded (the default, for supply chains that keep nothing).
    async fn evidence(
        &self,
        _image: &ImageInfo,
        _env: &str,
    ) -> Result<crate::evidence::SupplyEvidence, ProviderError> {
        Ok(crate::evidence::SupplyEvidence::default())
    }
}

/// One check that failed before a deployment was planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightFailure {
    /// The dotted spec field the check is about, e.g. `environments.production.listen`.
    pub field: String,
    /// What is wrong and what to do, e.g. `127.0.0.1:8080 is in use by another process;
    /// free it or choose another address`.
    pub message: String,
}

impl std::fmt::Display for PreflightFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks of the world that a deployment of `env` needs, made before anything is built:
/// the listen address, the engine, the build source. Cheap and side-effect free.
#[async_trait]
pub trait Preflight: Send + Sync {
    /// Every failed check (empty: ready to deploy).
    async fn check(&self, spec: &Spec, env: &str) -> Vec<PreflightFailure>;
}

/// Several preflights run one after the other; their failures are concatenated.
pub struct Preflights(pub Vec<Arc<dyn Preflight>>);

#[async_trait]
impl Preflight for Preflights {
    async fn check(&self, spec: &Spec, env: &str) -> Vec<PreflightFailure> {
        let mut failures = Vec::new();
        for check in &self.0 {
            failures.extend(check.check(spec, env).await);
        }
        failures
    }
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
    /// Checks made before a deployment is planned (none: no checks).
    pub preflight: Option<Arc<dyn Preflight>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnosis_renders_state_then_logs() {
        let d = Diagnosis {
            state: "exited".to_string(),
            exit_code: Some(3),
            oom_killed: true,
            error: Some("port is already allocated".to_string()),
            restart_count: 2,
            logs: vec!["one".to_string(), "two".to_string()],
        };
        assert_eq!(
            d.render(),
            "container state: exited, exit code 3, killed for exceeding its memory limit (raise container.memory), restarted 2 times, error: port is already allocated\n  last 2 log lines:\n    | one\n    | two"
        );
        let one = Diagnosis {
            state: "exited".to_string(),
            logs: vec!["bye".to_string()],
            ..Diagnosis::default()
        };
        assert_eq!(
            one.render(),
            "container state: exited\n  last 1 log line:\n    | bye"
        );
        let quiet = Diagnosis {
            state: "running".to_string(),
            ..Diagnosis::default()
        };
        assert_eq!(
            quiet.render(),
            "container state: running\n  it wrote no log lines"
        );
    }

    struct Fails(&'static str);

    #[async_trait]
    impl Preflight for Fails {
        async fn check(&self, _spec: &Spec, env: &str) -> Vec<PreflightFailure> {
            vec![PreflightFailure {
                field: format!("environments.{env}.listen"),
                message: self.0.to_string(),
            }]
        }
    }

    struct Passes;

    #[async_trait]
    impl Preflight for Passes {
        async fn check(&self, _spec: &Spec, _env: &str) -> Vec<PreflightFailure> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn preflights_collect_every_failure_in_order() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "app": "hello", "strategy": "blue-green", "base_dir": "/srv/hello",
            "build": {"kind": "cargo", "manifest": "/srv/hello/Cargo.toml", "bin": "hello", "profile": "release"},
            "container": serde_json::to_value(crate::ContainerSpec::default()).unwrap(),
            "health": serde_json::to_value(crate::HealthSpec::default()).unwrap(),
            "supply": {"signing_key": null},
            "environments": {},
        }))
        .expect("a spec");
        let all = Preflights(vec![
            Arc::new(Fails("first")),
            Arc::new(Passes),
            Arc::new(Fails("second")),
        ]);
        let failures = all.check(&spec, "production").await;
        let shown: Vec<String> = failures.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "environments.production.listen: first",
                "environments.production.listen: second"
            ]
        );
        assert!(Preflights(vec![Arc::new(Passes)])
            .check(&spec, "production")
            .await
            .is_empty());
    }
}
