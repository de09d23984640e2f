//! Request and response bodies of the control plane's API (`/v1/...`), shared by the server
//! and its clients (the CLI now; CI through HTTP next).

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub deployment_id: String,
    pub plan_digest: String,
    pub env: String,
    pub release_id: String,
}

/// One environment as `cutover status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvStatus {
    pub env: String,
    pub current: Option<Release>,
    /// What the proxy serves right now.
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceLine {
    pub name: String,
    pub release: String,
    pub addr: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmRelease {
    pub release: String,
    pub retire_at_ms: u64,
}

/// A deployment with its steps and journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub journal: Vec<JournalEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `bad_request`, `not_found`, `conflict`, `internal`.
    pub code: String,
    pub message: String,
}

/// Plans are returned as is.
pub type PlanBody = Plan;
