//! The pages' templates and the data they show, gathered from the store. Templates live in
//! `web/templates/` and are compiled into the binary; askama escapes every value.

use askama::Template;
use serde::Serialize;

use cutover_model::{
    format_ms, now_ms, Action, ImageSource, JournalEntry, JournalEvent, Plan, StepOutput,
};
use cutover_store::Decision;

use crate::api::{DeploymentDetail, DeploymentState, StepLine, StepState};
use crate::auth::{Principal, Role};
use crate::ui::dag::{self, Layout};
use crate::{ControlPlane, ServerError};

/// What every page's frame needs: who is logged in and the session's CSRF token.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    pub user: Option<String>,
    pub csrf: String,
    /// Highlighted navigation entry: `envs`, `history` or empty.
    pub section: &'static str,
}

#[derive(Template)]
#[template(path = "login.html", config = "../../web/askama.toml")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub next: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "error.html", config = "../../web/askama.toml")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub heading: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "index.html", config = "../../web/askama.toml")]
pub struct IndexPage {
    pub chrome: Chrome,
    pub envs: Vec<EnvCard>,
}

pub struct EnvCard {
    pub env: String,
    pub current: Option<CurrentRelease>,
    pub traffic: Vec<TrafficShare>,
    pub warm: Vec<WarmLine>,
    pub active: Option<String>,
    pub latest: Option<LatestLine>,
}

pub struct CurrentRelease {
    pub id: String,
    pub app: String,
    pub image_id: String,
    pub image_short: String,
    pub image_tag: String,
    pub at: String,
    pub by: String,
    pub deployment_id: String,
}

pub struct TrafficShare {
    pub release: String,
    pub weight: u32,
    pub addrs: usize,
}

pub struct WarmLine {
    pub release: String,
    pub until: String,
}

pub struct LatestLine {
    pub id: String,
    pub status: String,
    pub class: &'static str,
}

#[derive(Template)]
#[template(path = "deployment.html", config = "../../web/askama.toml")]
pub struct DeploymentPage {
    pub chrome: Chrome,
    pub d: DeploymentDetail,
    pub status_class: &'static str,
    /// The status for people (`waiting for approval` while at a gate).
    pub status_text: String,
    /// Whether the deployment waits at a gate (as the live updates tell it).
    pub waiting: bool,
    pub finished: bool,
    pub created: String,
    pub finished_at: String,
    pub image_id: Option<String>,
    pub approval: Option<ApprovalBox>,
    /// What approving changes (shown while the deployment waits at its gate); its digest
    /// goes with the approve form.
    pub review: Option<crate::api::ApprovalView>,
    pub dag: Layout,
    pub steps: Vec<StepRow>,
    pub supply: Vec<StepRow>,
    pub other_log: String,
    pub guardrails: super::guardrails_panel::GuardrailsPanel,
}

/// One step as the page and the live updates show it.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub id: String,
    pub kind: String,
    /// Section title for supply-chain steps.
    pub title: String,
    pub class: &'static str,
    pub label: &'static str,
    pub summary: String,
    pub attempts: u32,
    pub started: String,
    pub duration: String,
    pub output: String,
    pub error: String,
    pub log: String,
    #[serde(skip)]
    pub open_log: bool,
}

pub struct ApprovalBox {
    pub plan_digest: String,
    pub image_id: String,
    pub approved: usize,
    pub required: u32,
    pub time_left: String,
    pub deadline: String,
    pub votes: Vec<VoteLine>,
    /// Why the visitor cannot decide here, when they cannot.
    pub cannot_decide: Option<String>,
}

pub struct VoteLine {
    pub by: String,
    pub decision: &'static str,
    pub comment: String,
    pub at: String,
    pub not_counted: Option<&'static str>,
}

/// What the live updates send: the parts of the deployment page that change.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub status: String,
    pub class: &'static str,
    pub reason: Option<String>,
    pub finished: bool,
    pub finished_at: String,
    /// True while the deployment waits at an approval gate (the page reloads when this
    /// changes, to show or hide the approval form).
    pub waiting: bool,
    pub steps: Vec<StepRow>,
}

#[derive(Template)]
#[template(path = "history.html", config = "../../web/askama.toml")]
pub struct HistoryPage {
    pub chrome: Chrome,
    pub envs: Vec<RollbackLine>,
    pub rows: Vec<HistoryRow>,
}

pub struct RollbackLine {
    pub env: String,
    pub current: Option<String>,
    pub target: Option<String>,
    pub can_rollback: bool,
}

pub struct HistoryRow {
    pub id: String,
    pub env: String,
    pub kind: String,
    pub status: String,
    pub class: &'static str,
    pub reason: Option<String>,
    pub release: String,
    pub image: Option<String>,
    pub image_short: String,
    pub by: String,
    pub when: String,
}

#[derive(Template)]
#[template(path = "rollback.html", config = "../../web/askama.toml")]
pub struct RollbackPage {
    pub chrome: Chrome,
    pub env: String,
    pub current: Option<String>,
    pub target: String,
    pub target_image: Option<String>,
    pub warm: bool,
}

/// CSS class of a deployment state.
pub fn status_class(status: DeploymentState) -> &'static str {
    match status {
        DeploymentState::Planned => "pending",
        DeploymentState::Running | DeploymentState::Unwinding => "running",
        DeploymentState::Succeeded => "succeeded",
        DeploymentState::RolledBack => "failed",
        DeploymentState::Stuck => "stuck",
    }
}

/// `sha256:0123456789ab` (the first 12 hex digits) for tight places; the full id goes in a
/// title.
pub fn short_digest(id: &str) -> String {
    match id.split_once(':') {
        Some((algo, hex)) => format!("{algo}:{}", &hex[..hex.len().min(12)]),
        None => id.chars().take(19).collect(),
    }
}

fn time_of_day(ms: u64) -> String {
    let full = format_ms(ms);
    full.get(11..19).map(str::to_string).unwrap_or(full)
}

fn supply_title(kind: &str) -> Option<&'static str> {
    match kind {
        "scan" => Some("Scan verdict"),
        "sign" => Some("Signature"),
        "verify" => Some("Signature verification"),
        _ => None,
    }
}

/// The journal lines of each step, and the lines about the whole deployment.
fn logs(steps: &[StepLine], journal: &[JournalEntry]) -> (Vec<String>, String) {
    let mut per_step = vec![String::new(); steps.len()];
    let mut other = String::new();
    let index = |id: &str| steps.iter().position(|s| s.id == id);
    for entry in journal {
        let at = format_ms(entry.at_ms);
        let at = at.get(11..19).unwrap_or(&at).to_string();
        let (step, line) = match &entry.event {
            JournalEvent::StepStarted { step, attempt } => {
                (Some(step), format!("started (attempt {attempt})"))
            }
            JournalEvent::StepSucceeded {
                step,
                output,
                duration_ms,
            } => (
                Some(step),
                format!(
                    "succeeded in {}: {}",
                    dag::format_duration_ms(*duration_ms),
                    cutover_executor::view::summarize(output)
                ),
            ),
            JournalEvent::StepFailed {
                step,
                attempt,
                error,
                transient,
                ..
            } => (
                Some(step),
                format!(
                    "failed (attempt {attempt}{}): {error}",
                    if *transient { ", will retry" } else { "" }
                ),
            ),
            JournalEvent::UndoStarted { step } => (Some(step), "undo started".to_string()),
            JournalEvent::UndoSucceeded { step } => (Some(step), "undone".to_string()),
            JournalEvent::UndoFailed { step, error } => {
                (Some(step), format!("undo failed: {error}"))
            }
            JournalEvent::DeploymentStarted { resumed } if *resumed > 0 => {
                (None, format!("resumed (restart {resumed})"))
            }
            JournalEvent::DeploymentStarted { .. } => (None, "started".to_string()),
            JournalEvent::UnwindStarted { reason } => (None, format!("unwinding: {reason}")),
            JournalEvent::DeploymentFinished { status } => {
                (None, format!("finished: {}", status.label()))
            }
        };
        let target = match step.and_then(|s| index(s)) {
            Some(i) => &mut per_step[i],
            None => &mut other,
        };
        target.push_str(&at);
        target.push_str("  ");
        target.push_str(&line);
        target.push('\n');
    }
    (per_step, other)
}

/// The rows of the steps table (and the live updates).
pub fn step_rows(d: &DeploymentDetail) -> Vec<StepRow> {
    let (logs, _) = logs(&d.steps, &d.journal);
    d.steps
        .iter()
        .zip(logs)
        .map(|(s, log)| StepRow {
            id: s.id.clone(),
            kind: s.kind.clone(),
            title: supply_title(&s.kind).unwrap_or("").to_string(),
            class: dag::state_class(&s.kind, s.state),
            label: dag::state_label(&s.kind, s.state),
            summary: dag::step_summary(s),
            attempts: s.attempts,
            started: s.started_at_ms.map(time_of_day).unwrap_or_default(),
            duration: s
                .duration_ms
                .map(dag::format_duration_ms)
                .unwrap_or_default(),
            output: s.output.clone().unwrap_or_default(),
            error: s.error.clone().unwrap_or_default(),
            open_log: s.error.is_some(),
            log,
        })
        .collect()
}

/// The image a deployment runs: the one its approval gate names, else the one built or
/// pinned by its plan, once known.
pub fn image_of(plan: Option<&Plan>, journal: &[JournalEntry]) -> Option<String> {
    for entry in journal {
        if let JournalEvent::StepSucceeded {
            output: StepOutput::Image(info),
            ..
        } = &entry.event
        {
            return Some(info.id.clone());
        }
    }
    plan?.steps.iter().find_map(|s| match &s.action {
        Action::Record {
            image: ImageSource::Pinned { id, .. },
            ..
        }
        | Action::Provision {
            instance:
                cutover_model::InstanceSpec {
                    image: ImageSource::Pinned { id, .. },
                    ..
                },
        } => Some(id.clone()),
        _ => None,
    })
}

pub fn snapshot(cp: &ControlPlane, id: &str) -> Result<(DeploymentDetail, Snapshot), ServerError> {
    let d = crate::view::detail(&cp.store, id)?;
    let snapshot = snapshot_of(&d);
    Ok((d, snapshot))
}

/// What the live page shows of a deployment.
pub fn snapshot_of(d: &DeploymentDetail) -> Snapshot {
    let waiting = d.finished_at_ms.is_none()
        && d.steps
            .iter()
            .any(|s| s.kind == "approval" && s.state == StepState::Started);
    Snapshot {
        status: if waiting {
            "waiting for approval".to_string()
        } else {
            d.status.to_string()
        },
        class: if waiting {
            "waiting"
        } else {
            status_class(d.status)
        },
        reason: d.reason.clone(),
        finished: d.finished_at_ms.is_some(),
        finished_at: d.finished_at_ms.map(format_ms).unwrap_or_default(),
        waiting,
        steps: step_rows(d),
    }
}

/// The deployment page for `who`.
pub fn deployment_page(
    cp: &ControlPlane,
    who: &Principal,
    chrome: Chrome,
    id: &str,
) -> Result<DeploymentPage, ServerError> {
    let (d, snap) = snapshot(cp, id)?;
    who.require(Role::Viewer, Some(&d.env))?;
    let plan = cp.store.plan(id)?;
    let view = cutover_executor::deployment_view(&cp.store, id)?;
    let mut image_id = image_of(plan.as_ref(), &d.journal);
    let approval = match view.approval {
        Some(gate) if gate.waiting && snap.waiting => {
            if let Some(id) = &gate.image_id {
                image_id = Some(id.clone());
            }
            let starter = crate::deploy::started_by(cp, id)?;
            let cannot_decide = if !who.can(Role::Approver, Some(&d.env)) {
                Some(format!(
                    "You ({}) need the approver role for {} to decide here.",
                    who.name, d.env
                ))
            } else if who.name == gate.requested_by
                || starter.as_ref().is_some_and(|s| s.principal == who.name)
            {
                Some("You started this deployment, so someone else must approve it.".to_string())
            } else if gate.image_id.is_none() {
                Some("The image is not known yet; wait for the build.".to_string())
            } else {
                None
            };
            let now = now_ms();
            Some(ApprovalBox {
                plan_digest: gate.plan_digest.clone(),
                image_id: gate.image_id.clone().unwrap_or_default(),
                approved: gate.approved_by.len(),
                required: gate.required,
                time_left: match gate.times_out_at_ms {
                    Some(at) if at > now => cutover_executor::approval::format_duration(
                        std::time::Duration::from_millis((at - now) / 1000 * 1000),
                    ),
                    Some(_) => "none".to_string(),
                    None => "unknown".to_string(),
                },
                deadline: gate.times_out_at_ms.map(format_ms).unwrap_or_default(),
                votes: gate
                    .votes
                    .iter()
                    .map(|v| VoteLine {
                        by: v.approval.by.clone(),
                        decision: match v.approval.decision {
                            Decision::Approve => "approved",
                            Decision::Reject => "rejected",
                        },
                        comment: v.approval.comment.clone(),
                        at: format_ms(v.approval.at_ms),
                        not_counted: v.status.explain(),
                    })
                    .collect(),
                cannot_decide,
            })
        }
        _ => None,
    };
    let (_, other_log) = logs(&d.steps, &d.journal);
    let dag = dag::layout(&d.steps);
    let supply = snap
        .steps
        .iter()
        .filter(|s| !s.title.is_empty())
        .cloned()
        .collect();
    Ok(DeploymentPage {
        chrome,
        status_class: snap.class,
        status_text: snap.status.clone(),
        waiting: snap.waiting,
        finished: snap.finished,
        created: format_ms(d.created_at_ms),
        finished_at: if snap.finished_at.is_empty() {
            "not yet".to_string()
        } else {
            snap.finished_at.clone()
        },
        image_id,
        approval,
        review: None,
        dag,
        steps: snap.steps,
        supply,
        other_log,
        guardrails: super::guardrails_panel::panel(cp, &d.env)?,
        d,
    })
}
