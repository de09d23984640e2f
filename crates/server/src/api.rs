//! Request and response bodies of the control plane's APIs: the local API (`/v1/...`, the
//! CLI's) and the HTTP API for CI (`/api/v1/...`), shared by the server and its clients.

use serde::{Deserialize, Serialize};

use cutover_model::{JournalEntry, Plan, Release, Route};

/// What to plan or start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Absolute path of `deploy.toml` on the control plane's machine.
    pub spec_path: String,
    /// Environment; may be omitted when the spec has exactly one.
    pub env: Option<String>,
    /// Who asks (user name or token subject), recorded in the plan and history.
    pub requested_by: String,
    /// Present for a rollback: go back to this release, or to the previous one when `None`.
    #[serde(default)]
    pub rollback: Option<RollbackTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackTarget {
    pub release: Option<String>,
}

/// A deployment accepted for execution.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Started {
    pub deployment_id: String,
    pub plan_digest: String,
    pub env: String,
    pub release_id: String,
}

/// One environment as `cutover status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvStatus {
    pub env: String,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceLine {
    pub name: String,
    pub release: String,
    pub addr: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WarmRelease {
    pub release: String,
    pub retire_at_ms: u64,
}

/// A deployment with its steps and journal.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// `running`, `succeeded`, `rolled_back`, `stuck`, ...
    pub status: String,
    /// Why it rolled back or is stuck.
    pub reason: Option<String>,
    pub steps: Vec<StepLine>,
    #[schema(value_type = Vec<Object>)]
    pub journal: Vec<JournalEntry>,
    /// The approval gate, when the plan has one: what to approve and who did.
    #[serde(default)]
    pub approval: Option<ApprovalInfo>,
}

/// An approval gate as clients see it. Approve the pair (`plan_digest`, `image_id`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionLine {
    pub by: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub comment: String,
    pub plan_digest: String,
    pub image_id: String,
    pub at_ms: u64,
    /// Why it does not count (stale, the requester's own), or `None` when it counts.
    pub note: Option<String>,
}

/// `POST /v1/approvals` (local API): decide as the local user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDecision {
    pub deployment_id: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub plan_digest: String,
    pub image_id: String,
    #[serde(default)]
    pub comment: String,
    pub requested_by: String,
}

/// `POST /v1/tokens` (local API).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalNewToken {
    pub token: crate::auth::NewToken,
    pub requested_by: String,
}

/// `POST /v1/users` (local API). The password travels only over the 0600 Unix socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalNewUser {
    pub name: String,
    pub role: crate::auth::Role,
    pub env: Option<String>,
    pub password: String,
    pub requested_by: String,
}

/// A user as listed (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserLine {
    pub name: String,
    pub grants: Vec<crate::auth::Grant>,
    pub created_at_ms: u64,
}

/// `POST /v1/tokens/{id}/revoke` (local API).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalActor {
    pub requested_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepLine {
    pub id: String,
    pub kind: String,
    pub depends_on: Vec<String>,
    /// `not-started`, `started`, `succeeded`, `failed`, `undo-started`, `undone`, `undo-failed`.
    pub state: String,
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// One line about what the step produced.
    pub output: Option<String>,
}

/// One line of `cutover history`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryLine {
    pub deployment_id: String,
    pub env: String,
    pub kind: String,
    pub release_id: String,
    pub image_id: Option<String>,
    pub requested_by: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub status: String,
    pub reason: Option<String>,
}

/// `POST /v1/resume` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resumed {
    pub deployments: Vec<String>,
}

/// `GET /v1/health` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    pub version: String,
}

/// Every error answer: a stable code and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `not_found`, `conflict`, `internal`.
    pub code: String,
    pub message: String,
}

/// Plans are returned as is.
pub type PlanBody = Plan;
