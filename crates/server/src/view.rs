//! Deployment details for the API, from the executor's replay of the journal.

use cutover_model::{DeploymentKind, DeploymentStatus};
use cutover_store::Store;

use cutover_model::{Instance, InstanceState};

use crate::api::{
    ApprovalInfo, Decision, DecisionLine, DeploymentDetail, DeploymentState, EnvStatus,
    HistoryLine, InstanceLine, StepLine, StepState, WarmRelease,
};
use crate::{ControlPlane, ServerError};

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
                    cutover_store::Decision::Approve => Decision::Approve,
                    cutover_store::Decision::Reject => Decision::Reject,
                },
                comment: v.approval.comment,
                plan_digest: v.approval.plan_digest,
                image_id: v.approval.image_id,
                view_digest: Some(v.approval.view_digest).filter(|d| !d.is_empty()),
                at_ms: v.approval.at_ms,
                note: v.note.map(str::to_string),
            })
            .collect(),
        times_out_at_ms: a.times_out_at_ms,
    });
    let (status, reason) = status_parts(&record.status);
    Ok(DeploymentDetail {
        kind: kind_label(&record.kind).to_string(),
        promoted_from: crate::api::PromotedFrom::of(&record.kind),
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
                state: step_state(s.state),
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

/// The status of each of `envs`.
pub async fn env_statuses(
    cp: &ControlPlane,
    envs: Vec<String>,
) -> Result<Vec<EnvStatus>, ServerError> {
    let mut out = Vec::new();
    for env in envs {
        // Clients see environment variables by name and value digest, never values.
        let current = cp
            .store
            .current_release(&env)?
            .map(|r| r.with_env_digests());
        let app = current.as_ref().map(|r| r.app.clone());
        let instances = match &app {
            Some(app) => cp
                .providers
                .compute
                .list(app, Some(&env))
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let latest = cp
            .store
            .deployments(Some(&env), 1)?
            .into_iter()
            .next()
            .map(|d| detail(&cp.store, &d.id))
            .transpose()?;
        out.push(EnvStatus {
            route: cp.providers.traffic.route(&env).await.ok().flatten(),
            active: cp.store.lease(&env)?.map(|l| l.deployment_id),
            latest,
            instances: instances.iter().map(instance_line).collect(),
            warm: cp
                .store
                .retirements(&env)?
                .into_iter()
                .map(|r| WarmRelease {
                    release: r.release,
                    retire_at_ms: r.due_at_ms,
                })
                .collect(),
            guardrails: crate::guardrails::current(cp, &env)?,
            secret_warnings: crate::secrets::expired_warnings(&cp.store, &env)?,
            current,
            env,
        });
    }
    Ok(out)
}

pub fn instance_line(i: &Instance) -> InstanceLine {
    InstanceLine {
        name: i.name.clone(),
        release: i.release.clone(),
        addr: i.addr.clone(),
        state: match &i.state {
            InstanceState::Running => "running".to_string(),
            InstanceState::Restarting => "restarting".to_string(),
            InstanceState::Exited { code } => format!("exited({code})"),
            InstanceState::Other { detail } => detail.clone(),
        },
    }
}

/// History lines of `records`.
pub fn history_lines(
    cp: &ControlPlane,
    records: Vec<cutover_store::DeploymentRecord>,
) -> Result<Vec<HistoryLine>, ServerError> {
    let mut out = Vec::with_capacity(records.len());
    for d in records {
        let image_id = cp.store.release(&d.env, &d.release_id)?.map(|r| r.image.id);
        let (status, reason) = status_parts(&d.status);
        out.push(HistoryLine {
            kind: kind_label(&d.kind).to_string(),
            promoted_from: crate::api::PromotedFrom::of(&d.kind),
            deployment_id: d.id,
            env: d.env,
            release_id: d.release_id,
            image_id,
            requested_by: d.requested_by,
            created_at_ms: d.created_at_ms,
            finished_at_ms: d.finished_at_ms,
            status,
            reason,
        });
    }
    Ok(out)
}

/// The status label and, for failures, the reason.
pub fn status_parts(status: &DeploymentStatus) -> (DeploymentState, Option<String>) {
    let reason = match status {
        DeploymentStatus::Unwinding { reason }
        | DeploymentStatus::RolledBack { reason }
        | DeploymentStatus::Stuck { reason } => Some(reason.clone()),
        _ => None,
    };
    (DeploymentState::from(status), reason)
}

pub fn kind_label(kind: &DeploymentKind) -> &'static str {
    kind.label()
}

/// The API's word for a step state label of the executor's view.
pub fn step_state(label: &str) -> StepState {
    serde_json::from_value(serde_json::Value::from(label)).unwrap_or_else(|_| {
        tracing::error!(
            label,
            "the executor reported a step state the API does not know"
        );
        StepState::NotStarted
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_executor::StepState as S;

    #[test]
    fn every_executor_step_state_has_an_api_state() {
        let output = || cutover_model::StepOutput::None;
        let states = [
            (S::NotStarted, StepState::NotStarted),
            (S::Started { attempt: 1 }, StepState::Started),
            (S::Succeeded { output: output() }, StepState::Succeeded),
            (
                S::Failed {
                    attempt: 1,
                    error: String::new(),
                    transient: false,
                },
                StepState::Failed,
            ),
            (S::UndoStarted { output: None }, StepState::UndoStarted),
            (S::Undone, StepState::Undone),
            (
                S::UndoFailed {
                    error: String::new(),
                },
                StepState::UndoFailed,
            ),
        ];
        for (executor, api) in states {
            assert_eq!(step_state(executor.label()), api);
        }
    }
}
