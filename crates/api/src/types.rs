use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use cutover_model::{DeploymentStatus, JournalEntry, Plan, Release, Route};

// ----- states and codes -----

/// Where a deployment is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Planned,
    Running,
    /// A step failed; succeeded steps are being undone.
    Unwinding,
    Succeeded,
    /// Every step was undone: traffic stayed on, or went back to, the previous release.
    RolledBack,
    /// An undo failed: a human must look (`cutover status`), then `cutover resume`.
    Stuck,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Planned => "planned",
            DeploymentState::Running => "running",
            DeploymentState::Unwinding => "unwinding",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Stuck => "stuck",
        }
    }

    /// Whether the deployment has ended (nothing more will happen without a human).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded | DeploymentState::RolledBack | DeploymentState::Stuck
        )
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&DeploymentStatus> for DeploymentState {
    fn from(status: &DeploymentStatus) -> Self {
        match status {
            DeploymentStatus::Planned => DeploymentState::Planned,
            DeploymentStatus::Running => DeploymentState::Running,
            DeploymentStatus::Unwinding { .. } => DeploymentState::Unwinding,
            DeploymentStatus::Succeeded => DeploymentState::Succeeded,
            DeploymentStatus::RolledBack { .. } => DeploymentState::RolledBack,
            DeploymentStatus::Stuck { .. } => DeploymentState::Stuck,
        }
    }
}

/// Where one step of a plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    NotStarted,
    /// Running, or interrupted by a crash (it runs again on resume).
    Started,
    Succeeded,
    Failed,
    UndoStarted,
    Undone,
    UndoFailed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::NotStarted => "not-started",
            StepState::Started => "started",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::UndoStarted => "undo-started",
            StepState::Undone => "undone",
            StepState::UndoFailed => "undo-failed",
        }
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision at an approval gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// The stable code of every error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
    /// The spec is weaker than its environment's guardrails (422); the body lists each
    /// loosened setting in `violations`.
    GuardrailViolation,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::GuardrailViolation => "guardrail_violation",
        }
    }

    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::GuardrailViolation => 422,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer: a stable code and a message for people. Internal errors carry only
/// an id, which names the control plane's log line with the detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// For `internal`: the id of the log line that has the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
    /// For `guardrail_violation`: each setting the spec tried to loosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<crate::GuardrailViolation>,
}

// ----- access -----

/// A role. `Deployer` and `Approver` are siblings: neither includes the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Deployer,
    Approver,
    Admin,
}

impl Role {
    /// Whether holding `self` allows what `needed` allows.
    pub fn includes(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Admin, _) => true,
            (_, Role::Viewer) => true,
            (held, needed) => held == needed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use viewer, deployer, approver or admin"
            )),
        }
    }
}

/// One role in one environment (`env: Some`) or in every environment (`env: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub role: Role,
    pub env: Option<String>,
}

/// A stored API token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenRecord {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    pub env: Option<String>,
    /// `sha256:<hex>` of the whole token.
    pub hash: String,
    pub created_at_ms: u64,
    pub created_by: String,
    pub expires_at_ms: Option<u64>,
    pub last_used_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
    /// The person the token belongs to: separation of duties and approval counts go by
    /// this, never by the token. (Tokens made before owners existed are their own.)
    #[serde(default)]
    pub owner: Option<String>,
}

impl TokenRecord {
    /// Who acts when this token is used.
    pub fn person(&self) -> String {
        self.owner.clone().unwrap_or_else(|| self.principal_name())
    }

    /// The principal name requests with this token act as.
    pub fn principal_name(&self) -> String {
        match &self.name {
            Some(name) => format!("token:{name}:{}", self.id),
            None => format!("token:{}", self.id),
        }
    }
}

/// A token to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    pub env: Option<String>,
    pub name: Option<String>,
    /// The person it belongs to (a user or account name); the creator when left out.
    #[serde(default)]
    pub owner: Option<String>,
    /// Lifetime in milliseconds; none means it never expires.
    pub expires_in_ms: Option<u64>,
}

/// A freshly created token: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: String,
    pub record: TokenRecord,
}

/// A user to add. The password travels only in this body (over the 0600 socket or TLS).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub env: Option<String>,
    pub password: String,
}

/// A user as listed (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserLine {
    pub name: String,
    pub grants: Vec<Grant>,
    pub created_at_ms: u64,
}

// ----- deployments -----

/// What to plan or start: a spec (by path, or as text with the directory it belongs to)
/// and an environment (may be left out when the spec has exactly one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Absolute path of `deploy.toml` on the control plane's machine.
    #[serde(default)]
    pub spec_path: Option<String>,
    /// The text of a `deploy.toml`: with `base_dir` when it names files; without, it may
    /// name no file of the control plane's machine (a prebuilt image), else 400 naming the
    /// field.
    #[serde(default)]
    pub spec: Option<String>,
    /// Absolute directory on the control plane's machine that relative paths in `spec`
    /// resolve against.
    #[serde(default)]
    pub base_dir: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    /// Plan a rollback instead of a deploy: to `to`, or to the previous release.
    #[serde(default)]
    pub rollback: Option<RollbackTo>,
    /// Values of the spec's `env://` secret references, from the caller's environment;
    /// each is stored as a new secret version (never echoed, never kept as sent).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_env: std::collections::BTreeMap<String, String>,
    /// Rotate secrets: a new release of the current release's image with the latest
    /// secret versions; nothing is built (`cutover rotate`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secrets_only: bool,
    /// A rollback whose target pins a revoked secret version: start a new release of its
    /// image with the latest versions instead of refusing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_latest_secrets: bool,
    /// Deploy this prebuilt image (`HOST[:PORT]/REPO@sha256:<64 hex>`, a digest is
    /// required) instead of the spec's build: it is pulled, verified and scanned here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Build (or pull), scan, sign and verify only (`cutover build`): nothing is deployed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub build_only: bool,
    /// With `build_only`: the CI job asking for the build (its URL), recorded in the
    /// provenance as who ran the build. Default: the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    /// Plan a promotion instead of a deploy: the image of `release` (of another
    /// environment) rolled out to `env`, without a build.
    #[serde(default)]
    pub promote: Option<Promote>,
}

/// What a promotion deploys: the image of a release of another environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// The release whose image is promoted, e.g. `staging-7`.
    pub release: String,
    /// Its environment; by default the release id's prefix (`staging` of `staging-7`).
    #[serde(default)]
    pub from_env: Option<String>,
}

impl Promote {
    /// The source environment: `from_env`, else the release id without its `-<number>`.
    pub fn source_env(&self) -> Option<String> {
        if let Some(env) = &self.from_env {
            return Some(env.clone());
        }
        let (env, seq) = self.release.rsplit_once('-')?;
        (!env.is_empty() && !seq.is_empty() && seq.chars().all(|c| c.is_ascii_digit()))
            .then(|| env.to_string())
    }
}

impl PlanRequest {
    /// Where its spec comes from.
    pub fn source(&self) -> SpecSource {
        SpecSource::of(&self.spec_path, &self.spec, &self.base_dir)
    }
}

/// Where the spec of a deployment comes from: `spec_path`, or `spec` with `base_dir`.
/// Remembered per environment, so a rollback may leave it out.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecSource {
    /// Absolute path of `deploy.toml` on the control plane's machine.
    #[serde(default)]
    pub spec_path: Option<String>,
    /// The text of a `deploy.toml`.
    #[serde(default)]
    pub spec: Option<String>,
    /// With `spec`: absolute directory on the control plane's machine that the spec's
    /// relative paths resolve against (as if `deploy.toml` lived there).
    #[serde(default)]
    pub base_dir: Option<String>,
}

impl SpecSource {
    fn of(spec_path: &Option<String>, spec: &Option<String>, base_dir: &Option<String>) -> Self {
        SpecSource {
            spec_path: spec_path.clone(),
            spec: spec.clone(),
            base_dir: base_dir.clone(),
        }
    }
}

/// The target of a planned rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackTo {
    /// The release to go back to; the previous one when left out.
    #[serde(default)]
    pub to: Option<String>,
}

/// A plan and its text rendering.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanResponse {
    /// The immutable plan (DAG of steps) with its digest. Each `container.env` value is
    /// shown as `sha256:<hex>` of the value; `digest` is of the plan as saved, values included.
    #[schema(value_type = Object)]
    pub plan: Plan,
    pub digest: String,
    /// The plan as `cutover plan` prints it.
    pub text: String,
}

/// A rollback: to `to`, or to the previous release. The spec may be left out: the one of
/// the environment's newest deployment is used.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub to: Option<String>,
    /// When the target pins a revoked secret version: start a new release of its image
    /// with the latest versions instead of refusing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_latest_secrets: bool,
    #[serde(default)]
    pub spec_path: Option<String>,
    #[serde(default)]
    pub spec: Option<String>,
    #[serde(default)]
    pub base_dir: Option<String>,
}

impl RollbackRequest {
    /// Where its spec comes from (all `None`: the environment's remembered one).
    pub fn source(&self) -> SpecSource {
        SpecSource::of(&self.spec_path, &self.spec, &self.base_dir)
    }
}

/// A deployment accepted for execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub deployment_id: String,
    pub plan_digest: String,
    pub env: String,
    pub release_id: String,
    /// Things the caller should fix that did not stop the deployment (e.g. a value of
    /// `container.env` that looks like a secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A decision at an approval gate; it names the plan digest and image id it approves
/// (see the deployment's `approval` field) and the digest of the approval view it was made
/// on (`GET /api/v1/deployments/{id}/approval-view`). An approval without `view_digest`, or
/// with one of a view that has changed since, is refused; so is a rejection whose
/// `view_digest`, when given, does not match.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub decision: Decision,
    #[serde(default)]
    pub comment: String,
    pub plan_digest: String,
    pub image_id: String,
    #[serde(default)]
    pub view_digest: Option<String>,
}

/// A decision that was recorded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalAccepted {
    pub deployment_id: String,
    pub decision: Decision,
    pub by: String,
}

/// Deployments that were resumed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Resumed {
    pub deployments: Vec<String>,
}

/// The control plane answering.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub pid: u32,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this environment.
    pub env: Option<String>,
    /// At most this many (1 to 500, default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvironmentsQuery {
    /// Only these environments, comma-separated (they are listed even before their first
    /// deployment).
    pub names: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries at or after this time (unix ms).
    pub since_ms: Option<u64>,
}

/// One environment as `cutover status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvStatus {
    pub env: String,
    /// The current release; each `container.env` value is shown as `sha256:<hex>` of it.
    #[schema(value_type = Option<Object>)]
    pub current: Option<Release>,
    /// What the proxy serves right now.
    #[schema(value_type = Option<Object>)]
    pub route: Option<Route>,
    /// The deployment holding the environment's lease, if any.
    pub active: Option<String>,
    /// The newest deployment (running or finished).
    pub latest: Option<DeploymentDetail>,
    /// Instances cutover manages in this environment: name, release, state.
    pub instances: Vec<InstanceLine>,
    /// Releases kept warm and when they are retired (unix ms).
    pub warm: Vec<WarmRelease>,
    /// The guardrails in force (what approvers rely on), if any were set.
    #[serde(default)]
    pub guardrails: Option<crate::GuardrailsVersion>,
    /// Secrets of the environment past their max age: rotate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceLine {
    pub name: String,
    pub release: String,
    pub addr: String,
    /// `running`, `restarting`, `exited(<code>)`, or the engine's own word.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WarmRelease {
    pub release: String,
    pub retire_at_ms: u64,
}

/// A deployment with its steps and journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDetail {
    pub id: String,
    pub env: String,
    pub kind: String,
    pub release_id: String,
    pub previous_release: Option<String>,
    pub plan_digest: String,
    pub requested_by: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub status: DeploymentState,
    /// Why it rolled back or is stuck.
    pub reason: Option<String>,
    pub steps: Vec<StepLine>,
    #[schema(value_type = Vec<Object>)]
    pub journal: Vec<JournalEntry>,
    /// The approval gate, when the plan has one: what to approve and who did.
    #[serde(default)]
    pub approval: Option<ApprovalInfo>,
    /// A promotion's source: the release whose image it deploys, e.g. `staging-7`.
    #[serde(default)]
    pub promoted_from: Option<PromotedFrom>,
}

/// Where a promotion's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromotedFrom {
    pub release: String,
    pub env: String,
}

impl PromotedFrom {
    /// The source of a deployment of `kind`, when it is a promotion.
    pub fn of(kind: &cutover_model::DeploymentKind) -> Option<PromotedFrom> {
        kind.promoted_from().map(|(release, env)| PromotedFrom {
            release: release.to_string(),
            env: env.to_string(),
        })
    }
}

impl DeploymentDetail {
    /// The first step that failed (its kind tells what refused the deployment).
    pub fn failed_step(&self) -> Option<&StepLine> {
        self.steps
            .iter()
            .filter(|s| s.error.is_some() && s.state != StepState::Succeeded)
            .min_by_key(|s| s.finished_at_ms.unwrap_or(u64::MAX))
    }

    /// Whether the deployment waits at its approval gate now.
    pub fn waiting_for_approval(&self) -> bool {
        self.approval.as_ref().is_some_and(|a| a.waiting)
    }
}

/// An approval gate as clients see it. Approve the pair (`plan_digest`, `image_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalInfo {
    pub step: String,
    /// True while the deployment waits at this gate.
    pub waiting: bool,
    pub plan_digest: String,
    /// `None` until the image is built.
    pub image_id: Option<String>,
    pub image_tag: Option<String>,
    pub requested_by: String,
    pub required: u32,
    pub approved_by: Vec<String>,
    pub rejected_by: Option<String>,
    /// Every decision: who, what, which digests, whether it counts.
    pub decisions: Vec<DecisionLine>,
    pub times_out_at_ms: Option<u64>,
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DecisionLine {
    pub by: String,
    pub decision: Decision,
    pub comment: String,
    pub plan_digest: String,
    pub image_id: String,
    /// The digest of the approval view the decision was made on, when it named one.
    #[serde(default)]
    pub view_digest: Option<String>,
    pub at_ms: u64,
    /// Why it does not count (stale, the requester's own), or `None` when it counts.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepLine {
    pub id: String,
    pub kind: String,
    pub depends_on: Vec<String>,
    pub state: StepState,
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// One line about what the step produced.
    pub output: Option<String>,
}

/// One line of `cutover history`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryLine {
    pub deployment_id: String,
    pub env: String,
    pub kind: String,
    pub release_id: String,
    pub image_id: Option<String>,
    pub requested_by: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub status: DeploymentState,
    pub reason: Option<String>,
    /// A promotion's source release.
    #[serde(default)]
    pub promoted_from: Option<PromotedFrom>,
}

/// Names of the server-sent events of `GET /api/v1/deployments/{id}/events`.
pub mod events {
    /// One journal entry (its `seq` is the event id; send `Last-Event-ID` to resume).
    pub const JOURNAL: &str = "journal";
    /// The whole detail without its journal, whenever it changed.
    pub const DEPLOYMENT: &str = "deployment";
    /// The deployment finished: `{status, reason}`; the stream ends.
    pub const END: &str = "end";
    /// The stream cannot go on: an [`super::ErrorBody`].
    pub const ERROR: &str = "error";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_as_the_labels_clients_match() {
        assert_eq!(
            serde_json::to_value(DeploymentState::RolledBack).unwrap(),
            "rolled_back"
        );
        assert_eq!(
            serde_json::to_value(StepState::UndoFailed).unwrap(),
            "undo-failed"
        );
        for s in [
            StepState::NotStarted,
            StepState::Started,
            StepState::Succeeded,
            StepState::Failed,
            StepState::UndoStarted,
            StepState::Undone,
            StepState::UndoFailed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::Internal,
            ErrorCode::Conflict,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }

    #[test]
    fn deployment_states_follow_the_model() {
        let reason = || "x".to_string();
        assert_eq!(
            DeploymentState::from(&DeploymentStatus::Stuck { reason: reason() }),
            DeploymentState::Stuck
        );
        assert!(
            DeploymentState::from(&DeploymentStatus::RolledBack { reason: reason() }).is_finished()
        );
        assert!(
            !DeploymentState::from(&DeploymentStatus::Unwinding { reason: reason() }).is_finished()
        );
        for status in [
            DeploymentStatus::Planned,
            DeploymentStatus::Running,
            DeploymentStatus::Succeeded,
        ] {
            assert_eq!(DeploymentState::from(&status).as_str(), status.label());
        }
    }

    #[test]
    fn an_error_body_without_an_id_reads_back() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"not_found","message":"no such deployment"}"#).unwrap();
        assert_eq!(body.code, ErrorCode::NotFound);
        assert_eq!(body.error_id, None);
        assert_eq!(body.code.status(), 404);
    }
}
