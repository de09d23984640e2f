//! Deployment details for the API, from the executor's replay of the journal.

use cutover_model::{DeploymentKind, DeploymentStatus};
use cutover_store::Store;

use crate::api::{ApprovalInfo, DecisionLine, DeploymentDetail, StepLine};
use crate::ServerError;

/// Everything about one deployment: record, steps (replayed from the journal) and journal.
pub fn detail(store: &Store, id: &str) -> Result<DeploymentDetail, ServerError> {
    if store.deployment(id)?.is_none() {
        return Err(ServerError::NotFound(format!(
            "deployment {id} not found; `cutover history` lists deployments"
        )));
    }
    let view = cutover_executor::deployment_view(store, id)?;
    let journal = store.journal(id)?;
    let record = view.record;
    let approval = view.approval.map(|a| ApprovalInfo {
        step: a.step,
        waiting: a.waiting,
        plan_digest: a.plan_digest,
        image_id: a.image_id,
        image_tag: a.image_tag,
        requested_by: a.requested_by,
        required: a.required,
        approved_by: a.approved_by,
        rejected_by: a.rejected_by,
        decisions: a
            .votes
            .into_iter()
            .map(|v| DecisionLine {
                by: v.approval.by,
                decision: match v.approval.decision {
                    cutover_store::Decision::Approve => "approve".to_string(),
                    cutover_store::Decision::Reject => "reject".to_string(),
                },
                comment: v.approval.comment,
                plan_digest: v.approval.plan_digest,
                image_id: v.approval.image_id,
                at_ms: v.approval.at_ms,
                note: v.note.map(str::to_string),
            })
            .collect(),
        times_out_at_ms: a.times_out_at_ms,
    });
    let (status, reason) = status_parts(&record.status);
    Ok(DeploymentDetail {
        kind: kind_label(&record.kind).to_string(),
        id: record.id,
        env: record.env,
        release_id: record.release_id,
        previous_release: record.previous_release,
        plan_digest: record.plan_digest,
        requested_by: record.requested_by,
        created_at_ms: record.created_at_ms,
        finished_at_ms: record.finished_at_ms,
        status,
        reason: reason.or(view.journal_error),
        steps: view
            .steps
            .into_iter()
            .map(|s| StepLine {
                id: s.id,
                kind: s.kind.as_str().to_string(),
                depends_on: s.depends_on,
                state: s.state.to_string(),
                attempts: s.attempts,
                started_at_ms: s.started_at_ms,
                finished_at_ms: s.finished_at_ms,
                duration_ms: s.duration_ms,
                error: s.error,
                output: s.output,
            })
            .collect(),
        journal,
        approval,
    })
}

/// The status label and, for failures, the reason.
pub fn status_parts(status: &DeploymentStatus) -> (String, Option<String>) {
    let reason = match status {
        DeploymentStatus::Unwinding { reason }
        | DeploymentStatus::RolledBack { reason }
        | DeploymentStatus::Stuck { reason } => Some(reason.clone()),
        _ => None,
    };
    (status.label().to_string(), reason)
}

pub fn kind_label(kind: &DeploymentKind) -> &'static str {
    match kind {
        DeploymentKind::Deploy => "deploy",
        DeploymentKind::Rollback { .. } => "rollback",
    }
}
