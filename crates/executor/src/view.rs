//! A serializable picture of one deployment for `cutover status` and the UI.

use cutover_model::{StepKind, StepOutput};
use cutover_store::{DeploymentRecord, Store};
use serde::Serialize;

use crate::replay::{replay, StepState};
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
        StepOutput::Image(image) => format!("image {} ({})", image.tag, image.id),
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
    })
}
