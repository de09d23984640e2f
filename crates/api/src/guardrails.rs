//! Guardrails: what the control plane requires of every plan of an environment, whatever
//! spec a caller sends; and the project roots specs may be read from.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The guardrails of one environment (as kept by the control plane; the TOML file of
/// `cutover guardrails set` has the same keys, with `container.max_memory` also as text such
/// as `"256MiB"`). A spec may be stricter than its environment's guardrails, never weaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Guardrails {
    /// Distinct approvers every deploy needs (never its starter); 0: no approval required.
    pub approvals: u32,
    /// The listen address the spec must give the environment; `None`: any.
    pub listen: Option<String>,
    /// Absolute directories the build source (context or manifest) and the spec's base
    /// directory must lie in; empty: any registered project root.
    pub build_roots: Vec<String>,
    /// Public keys (PEM) signatures may come from. The spec's `trusted_keys` must be among
    /// them, and verification uses these copies. Empty: the control plane's local key only.
    pub trusted_keys: Vec<String>,
    pub gate: GateFloor,
    pub container: ContainerFloor,
    /// Environments where an image must have been live (the current release, serving
    /// traffic) for `soak_ms`, continuously and without a rollback, before any deploy or
    /// promotion to this environment may run it. Empty: no such requirement.
    #[serde(default)]
    pub requires_success_in: Vec<String>,
    /// How long (milliseconds) the image must have been live in each of
    /// `requires_success_in`; `None` with environments listed: any time live counts.
    #[serde(default)]
    pub soak_ms: Option<u64>,
}

/// The least strict scan gate a spec may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GateFloor {
    /// `none`, `low`, `medium`, `high` or `critical`: the spec's `fail_on` must fail on
    /// findings at least this mild (`low` is the strictest).
    pub fail_on: String,
    /// The spec must fail on secrets.
    pub fail_on_secrets: bool,
    /// `sha256:<hex>` of the one exceptions file allowed; `None`: no exceptions file.
    pub exceptions_sha256: Option<String>,
    /// `sha256:<hex>` of the one secret rules file allowed to replace the built-in rules;
    /// `None`: the built-in rules.
    pub secret_rules_sha256: Option<String>,
    /// Whether a spec may set `gate.allow_missing_advisories = true` (pass without a
    /// current advisory database); `false` forbids it. Default true.
    #[serde(default = "yes")]
    pub allow_missing_advisories: bool,
    /// The spec's `gate.max_advisory_age` may be at most this many milliseconds; `None`:
    /// any the spec allows.
    #[serde(default)]
    pub max_advisory_age_ms: Option<u64>,
    /// The spec must fail on informational advisories (`gate.fail_on_unmaintained`).
    #[serde(default)]
    pub fail_on_unmaintained: bool,
}

fn yes() -> bool {
    true
}

/// The least hardened container a spec may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerFloor {
    /// The container must not run as root.
    pub non_root: bool,
    /// The root filesystem must be read-only.
    pub read_only: bool,
    /// Most memory (bytes) a spec may give an instance.
    pub max_memory_bytes: Option<u64>,
    pub max_cpus: Option<f64>,
    pub max_pids: Option<i64>,
}

/// One version of an environment's guardrails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuardrailsVersion {
    pub env: String,
    /// 1 for the first, N+1 for each change; old versions are kept.
    pub version: u64,
    /// The person who set (or accepted) them.
    pub set_by: String,
    pub set_at_ms: u64,
    /// `set`, `accepted` (a proposal, by an admin) or `accepted-at-first-deploy` (an
    /// admin's first deploy to the environment).
    pub how: String,
    /// `sha256:<hex>` of `text`.
    pub digest: String,
    /// The guardrails file as given (or generated from a proposal).
    pub text: String,
    pub guardrails: Guardrails,
}

/// Guardrails derived from the first spec seen for an environment, waiting for an admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuardrailsProposal {
    pub env: String,
    /// Who sent the spec they come from.
    pub proposed_by: String,
    pub proposed_at_ms: u64,
    pub spec_digest: String,
    pub text: String,
    pub guardrails: Guardrails,
}

/// What `GET /api/v1/guardrails/{env}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuardrailsShow {
    pub env: String,
    /// The current version (or the one asked for); `None` before any was set.
    pub current: Option<GuardrailsVersion>,
    /// The newest version number (the current one).
    pub latest_version: Option<u64>,
    /// A proposal waiting for `cutover guardrails accept`.
    pub proposal: Option<GuardrailsProposal>,
}

/// `PUT /api/v1/guardrails/{env}`: a guardrails file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetGuardrails {
    /// The TOML text.
    pub text: String,
    /// The file name used in error messages, default `guardrails.toml`.
    #[serde(default)]
    pub file: Option<String>,
}

/// Query of `GET /api/v1/guardrails/{env}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsQuery {
    /// A past version instead of the current one.
    #[serde(default)]
    pub version: Option<u64>,
}

/// One setting of a spec that is weaker than its environment's guardrails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuardrailViolation {
    /// Dotted path of the spec's field, e.g. `environments.production.gate.fail_on`.
    pub field: String,
    /// What the spec asks for.
    pub spec: String,
    /// What the guardrails require.
    pub required: String,
}

/// A directory specs may be read from (and whose files they may name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectRoot {
    /// Absolute, canonical (symlinks resolved).
    pub path: String,
    pub added_by: String,
    pub added_at_ms: u64,
    /// Registered by a socket admin's deploy rather than `cutover projects add`.
    #[serde(default)]
    pub automatic: bool,
}

/// `POST /api/v1/projects` and `POST /api/v1/projects/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPath {
    /// An absolute directory on the control plane's machine.
    pub path: String,
}
