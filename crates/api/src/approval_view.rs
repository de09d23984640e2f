//! The approval view: what an approver sees before deciding, computed by the control plane
//! (`GET /api/v1/deployments/{id}/approval-view`) and shown alike by the API, the web UI
//! and the CLI. An approval names the view's digest; a view that changed since is refused.
//!
//! No value of an environment variable appears here (values can be secrets): variables are
//! compared by the digests of their values and shown by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a deployment changes and where its image came from. `view_digest` is the sha256
/// of the canonical JSON of the rest of the view (with `view_digest` empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub deployment_id: String,
    pub app: String,
    pub env: String,
    /// `deploy` or `rollback`.
    pub kind: String,
    pub release_id: String,
    pub requested_by: String,
    /// True while the deployment waits at its approval gate.
    pub waiting: bool,
    pub plan_digest: String,
    /// The image to approve; `None` until it is built.
    pub image_id: Option<String>,
    pub image_tag: Option<String>,
    /// The release serving the environment when the deployment was planned; `None` when
    /// this is the environment's first release.
    pub running: Option<RunningRelease>,
    pub first_release: bool,
    /// Settings that differ from the running release (every setting on a first release).
    pub changes: Vec<SettingChange>,
    /// Environment variables by name; values are never shown.
    pub env_vars: EnvVarChanges,
    /// The scan verdict of the image for this environment; `None` until it was scanned.
    pub scan: Option<ScanVerdictView>,
    pub provenance: ProvenanceView,
    /// The version of the environment's guardrails in force (what the control plane
    /// requires whatever the spec says); `None` while the environment has none. Covered by
    /// the digest: approving names the guardrails too.
    pub guardrails: Option<GuardrailsInForce>,
    /// A promotion's source release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<crate::PromotedFrom>,
    /// Where the image has been live, oldest first (covered by the digest; it changes
    /// only when a period starts or ends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_path: Vec<ImagePathStep>,
    /// `sha256:<hex>` of the canonical JSON of this view with `view_digest` empty.
    pub view_digest: String,
}

/// One stretch of time the image was the current release of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImagePathStep {
    pub env: String,
    pub release_id: String,
    pub live_from_ms: u64,
    /// `None` while still live.
    pub live_until_ms: Option<u64>,
    /// `still-live`, `replaced` or `rolled-back`.
    pub ended: String,
    /// The deployment that replaced or rolled it back.
    pub ended_by: Option<String>,
    /// The line people read.
    pub summary: String,
}

impl ImagePathStep {
    pub fn of(period: &cutover_model::LivePeriod) -> ImagePathStep {
        use cutover_model::LiveEnd;
        let (ended, ended_by) = match &period.ended {
            LiveEnd::StillLive => ("still-live", None),
            LiveEnd::Replaced { by } => ("replaced", Some(by.clone())),
            LiveEnd::RolledBack { by } => ("rolled-back", Some(by.clone())),
        };
        ImagePathStep {
            env: period.env.clone(),
            release_id: period.release_id.clone(),
            live_from_ms: period.from_ms,
            live_until_ms: period.until_ms,
            ended: ended.to_string(),
            ended_by,
            summary: cutover_model::live::describe_period_fixed(period),
        }
    }
}

/// The release a deployment replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningRelease {
    pub release_id: String,
    pub deployment_id: String,
    pub image_id: String,
    pub image_tag: String,
    pub plan_digest: String,
}

/// One setting that changes: its dotted name, and its value before and after (`None`: not
/// set, or unknown for releases recorded without it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettingChange {
    /// e.g. `image`, `replicas`, `container.memory`, `health.path`, `listen`.
    pub setting: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Environment variables of the instances, by name (compared by the digests of values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvVarChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Names whose value changed.
    pub changed: Vec<String>,
    /// How many keep their value.
    pub unchanged: usize,
}

/// A scan verdict with its findings and every exception it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScanVerdictView {
    pub passed: bool,
    pub reasons: Vec<String>,
    /// Unsuppressed vulnerabilities by severity.
    pub counts: BTreeMap<String, usize>,
    /// Unsuppressed secrets.
    pub secrets: usize,
    pub advisory_database: bool,
    pub fail_on: String,
    pub fail_on_secrets: bool,
    /// Every finding; `None` when the verdict was recorded without them.
    pub findings: Option<Vec<FindingLine>>,
    pub exceptions: Vec<ExceptionLine>,
}

/// A finding: a vulnerability (severity, id, package, version) or a secret (rule,
/// location, fingerprint; never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FindingLine {
    /// `vulnerability` or `secret`.
    pub kind: String,
    pub severity: Option<String>,
    /// Advisory id, or the secret rule's id.
    pub id: String,
    pub package: Option<String>,
    pub version: Option<String>,
    pub fixed: Option<String>,
    pub location: Option<String>,
    pub fingerprint: Option<String>,
}

/// An exception the gate used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExceptionLine {
    /// What it suppressed: advisory id with package and version, or a secret's fingerprint.
    pub finding: String,
    /// The exception's id or fingerprint.
    pub exception: String,
    pub reason: String,
    pub owner: String,
    /// `YYYY-MM-DD`.
    pub expires: String,
}

/// Where the image came from and who vouches for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProvenanceView {
    /// The builder named by the signed provenance.
    pub builder_id: Option<String>,
    /// Its version (cutover's), as signed.
    pub builder_version: Option<String>,
    /// `cargo` or `dockerfile`, from the plan.
    pub build_kind: Option<String>,
    /// The cargo manifest or the Docker context (with its Dockerfile), from the plan.
    pub build_source: Option<String>,
    /// The source directory, as signed.
    pub source_path: Option<String>,
    pub git_commit: Option<String>,
    /// Whether the source had uncommitted changes, when known.
    pub git_dirty: Option<bool>,
    /// The key that signed the image (the sign step's output).
    pub signing_key_id: Option<String>,
    /// The keys the verify step accepted.
    pub verified_key_ids: Vec<String>,
    /// The source repository (git remote `origin`), as signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Who ran the build (a CI job's URL, or the control plane), as signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    /// The registry reference the image and its provenance were pulled from, when it was
    /// built and signed elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_from: Option<String>,
    /// The keys that signed the provenance (CI's, for a pulled image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provenance_key_ids: Vec<String>,
}

/// Which guardrails version an approval view was computed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuardrailsInForce {
    pub version: u64,
    /// `sha256:<hex>` of the guardrails file.
    pub digest: String,
    pub set_by: String,
}
