//! A serializable picture of one deployment for `cutover status` and the UI.

use cutover_model::{Action, ImageSource, Plan, StepKind, StepOutput};
use cutover_store::{DeploymentRecord, Store};
use serde::Serialize;

use crate::approval::{self, Vote};
use crate::replay::{replay, Replayed, StepState};
use crate::ExecError;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentView {
    pub record: DeploymentRecord,
    pub strategy: String,
    pub steps: Vec<StepView>,
    /// Times the deployment was started or resumed.
    pub starts: u32,
    pub unwind_reason: Option<String>,
    pub journal_len: usize,
    /// Set when the journal cannot be replayed (the step states are then unknown).
    pub journal_error: Option<String>,
    /// The plan's approval gate, if it has one.
    pub approval: Option<ApprovalView>,
}

/// What people need to decide at an approval gate. Approvers approve the pair
/// (`plan_digest`, `image_id`); decisions naming anything else are listed but not counted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalView {
    /// The approval step's id.
    pub step: String,
    /// The step's state (as in [`StepView::state`]).
    pub state: &'static str,
    /// True while the deployment waits at this gate for people.
    pub waiting: bool,
    pub plan_digest: String,
    /// The image to approve; `None` until the step that builds it has succeeded.
    pub image_id: Option<String>,
    pub image_tag: Option<String>,
    /// Who requested the deployment (their own approval does not count).
    pub requested_by: String,
    /// Distinct approvals needed.
    pub required: u32,
    /// Approvers whose approval counts so far.
    pub approved_by: Vec<String>,
    /// Who rejected the deployment, when a rejection counted.
    pub rejected_by: Option<String>,
    /// Every decision recorded, oldest first, with whether it counts and why not.
    pub votes: Vec<Vote>,
    pub timeout_ms: u64,
    /// When the gate was first reached (unix ms); the timeout counts from here.
    pub started_at_ms: Option<u64>,
    /// When the deployment is rejected if not approved by then (unix ms).
    pub times_out_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    pub id: String,
    pub kind: StepKind,
    pub depends_on: Vec<String>,
    /// `not-started`, `started`, `succeeded`, `failed`, `undo-started`, `undone`,
    /// `undo-failed`.
    pub state: &'static str,
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    /// One line about the step's output, for people.
    pub output: Option<String>,
}

/// One line summarizing a step output.
pub fn summarize(output: &StepOutput) -> String {
    match output {
        StepOutput::None => "nothing to do".to_string(),
        StepOutput::Image(image) => match &image.warning {
            Some(warning) => format!("image {} ({}); warning: {warning}", image.tag, image.id),
            None => format!("image {} ({})", image.tag, image.id),
        },
        StepOutput::Instance(i) => format!("instance {} at {}", i.name, i.addr),
        StepOutput::Healthy { probes } => format!("healthy after {probes} probes"),
        StepOutput::Shifted { previous } => {
            match previous.as_ref().and_then(|r| r.primary_release()) {
                Some(release) => format!("traffic shifted from {release}"),
                None => "traffic shifted (no previous route)".to_string(),
            }
        }
        StepOutput::Drained { in_flight_left } => {
            format!("drained, {in_flight_left} requests left in flight")
        }
        StepOutput::Scanned { summary } => format!("scan passed the gate: {summary}"),
        StepOutput::Signed { key_id } => format!("signed with key {key_id}"),
        StepOutput::Verified { key_ids } => format!("verified, signed by {}", key_ids.join(", ")),
        StepOutput::Approved { by } => format!("approved by {}", by.join(", ")),
        StepOutput::RetireScheduled { at_ms } => {
            format!("retirement at {}", cutover_model::format_ms(*at_ms))
        }
        StepOutput::Recorded => "release recorded as current".to_string(),
    }
}

/// The view of deployment `id`.
pub fn deployment_view(store: &Store, id: &str) -> Result<DeploymentView, ExecError> {
    let record = store
        .deployment(id)?
        .ok_or_else(|| ExecError::UnknownDeployment(id.to_string()))?;
    let plan = store
        .plan(id)?
        .ok_or_else(|| ExecError::UnknownDeployment(id.to_string()))?;
    let journal = store.journal(id)?;
    let replayed = replay(&plan, &journal);
    let approval = match &replayed {
        Ok(r) => approval_view(store, &plan, r)?,
        Err(_) => None,
    };
    let (steps, starts, unwind_reason, journal_error) = match &replayed {
        Ok(r) => {
            let steps = plan
                .steps
                .iter()
                .map(|s| {
                    let rec = r.steps.get(&s.id);
                    StepView {
                        id: s.id.clone(),
                        kind: s.kind,
                        depends_on: s.depends_on.clone(),
                        state: rec.map_or("not-started", |x| x.state.label()),
                        attempts: rec.map_or(0, |x| x.attempts),
                        started_at_ms: rec.and_then(|x| x.started_at_ms),
                        finished_at_ms: rec.and_then(|x| x.finished_at_ms),
                        duration_ms: rec.and_then(|x| x.duration_ms),
                        error: rec.and_then(|x| x.error.clone()),
                        output: rec.and_then(|x| x.output.as_ref()).map(summarize),
                    }
                })
                .collect();
            (steps, r.starts, r.unwind_reason.clone(), None)
        }
        Err(c) => {
            let steps = plan
                .steps
                .iter()
                .map(|s| StepView {
                    id: s.id.clone(),
                    kind: s.kind,
                    depends_on: s.depends_on.clone(),
                    state: StepState::NotStarted.label(),
                    attempts: 0,
                    started_at_ms: None,
                    finished_at_ms: None,
                    duration_ms: None,
                    error: None,
                    output: None,
                })
                .collect();
            (
                steps,
                0,
                None,
                Some(format!("entry {}: {}", c.seq, c.detail)),
            )
        }
    };
    Ok(DeploymentView {
        record,
        strategy: plan.strategy.clone(),
        steps,
        starts,
        unwind_reason,
        journal_len: journal.len(),
        journal_error,
        approval,
    })
}

/// The approval gate of `plan`: the one being waited at, else the first.
fn approval_view(
    store: &Store,
    plan: &Plan,
    replayed: &Replayed,
) -> Result<Option<ApprovalView>, ExecError> {
    let gates: Vec<_> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Approval { image, gate } => Some((s, image, gate)),
            _ => None,
        })
        .collect();
    let is_waiting = |id: &str| {
        replayed.finished.is_none()
            && replayed.unwind_reason.is_none()
            && matches!(replayed.state(id), Some(StepState::Started { .. }))
    };
    let Some((step, source, gate)) = gates
        .iter()
        .find(|(s, _, _)| is_waiting(&s.id))
        .or_else(|| gates.first())
        .copied()
    else {
        return Ok(None);
    };
    let image = match source {
        ImageSource::Pinned { id, tag } => Some((id.clone(), tag.clone())),
        ImageSource::Step { step } => {
            match replayed.steps.get(step).and_then(|r| r.output.as_ref()) {
                Some(StepOutput::Image(image)) => Some((image.id.clone(), image.tag.clone())),
                _ => None,
            }
        }
    };
    let record = replayed.steps.get(&step.id);
    let started_at_ms = record.and_then(|r| r.started_at_ms);
    let timeout_ms = u64::try_from(gate.timeout.as_millis()).unwrap_or(u64::MAX);
    let (approved_by, rejected_by, votes) = match &image {
        Some((image_id, _)) => {
            let tally = approval::tally(plan, image_id, &store.approvals(&plan.deployment_id)?);
            (tally.approved_by, tally.rejected.map(|r| r.by), tally.votes)
        }
        None => (Vec::new(), None, Vec::new()),
    };
    Ok(Some(ApprovalView {
        step: step.id.clone(),
        state: record.map_or("not-started", |r| r.state.label()),
        waiting: is_waiting(&step.id),
        plan_digest: plan.digest.clone(),
        image_id: image.as_ref().map(|(id, _)| id.clone()),
        image_tag: image.map(|(_, tag)| tag),
        requested_by: plan.requested_by.clone(),
        required: approval::required(gate.required) as u32,
        approved_by,
        rejected_by,
        votes,
        timeout_ms,
        started_at_ms,
        times_out_at_ms: started_at_ms.map(|t| t.saturating_add(timeout_ms)),
    }))
}
