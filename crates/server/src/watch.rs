//! The background watcher: follows the store's change events, feeds step durations and
//! deployment counts to the metrics, logs each step's outcome with its deployment and
//! step, and sends webhooks when a deployment fails, rolls back, gets stuck or starts
//! waiting for approval.
//!
//! What exists when it starts is its baseline (read once): no webhook is sent for it
//! again. After that it reads only the deployment an event names, so it costs nothing
//! while nothing happens.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use cutover_model::{DeploymentKind, DeploymentStatus, JournalEvent};
use cutover_store::StoreEvent;

use crate::metrics::DeploymentFacts;
use crate::webhooks::Event;
use crate::{ControlPlane, ServerError};

#[derive(Debug, Default)]
struct Tracked {
    status: String,
    waiting: bool,
    /// Journal entries already looked at.
    seen: usize,
    finished: bool,
    /// Step id → kind label.
    kinds: HashMap<String, &'static str>,
}

/// State of the watcher between events.
#[derive(Default)]
pub struct Watcher {
    tracked: HashMap<String, Tracked>,
}

impl Watcher {
    /// Take what the store holds now as the baseline: counted in the metrics, announced
    /// to nobody.
    pub fn prime(&mut self, cp: &ControlPlane) -> Result<(), ServerError> {
        for record in cp.store.deployments(None, usize::MAX)? {
            self.observe(cp, &record.id, true)?;
        }
        Ok(())
    }

    /// Look at deployment `id` again: new journal entries, status transitions.
    pub fn observe(
        &mut self,
        cp: &ControlPlane,
        id: &str,
        baseline: bool,
    ) -> Result<(), ServerError> {
        let Some(record) = cp.store.deployment(id)? else {
            return Ok(());
        };
        let tracked = self.tracked.entry(record.id.clone()).or_default();
        if tracked.finished {
            return Ok(());
        }
        if tracked.kinds.is_empty() {
            if let Some(plan) = cp.store.plan(&record.id)? {
                tracked.kinds = plan
                    .steps
                    .iter()
                    .map(|s| (s.id.clone(), s.kind.as_str()))
                    .collect();
            }
        }
        let journal = cp.store.journal(&record.id)?;
        if !baseline {
            for entry in journal.iter().skip(tracked.seen) {
                match &entry.event {
                    JournalEvent::StepSucceeded {
                        step, duration_ms, ..
                    } => {
                        let kind = tracked.kinds.get(step).copied().unwrap_or("unknown");
                        cp.metrics.observe_step(kind, *duration_ms);
                        tracing::info!(deployment = %record.id, step = %step, kind, duration_ms, "step succeeded");
                    }
                    JournalEvent::StepFailed {
                        step,
                        duration_ms,
                        error,
                        transient,
                        ..
                    } => {
                        let kind = tracked.kinds.get(step).copied().unwrap_or("unknown");
                        cp.metrics.observe_step(kind, *duration_ms);
                        tracing::warn!(deployment = %record.id, step = %step, kind, duration_ms, transient, error = %error, "step failed");
                    }
                    JournalEvent::UndoFailed { step, error } => {
                        tracing::error!(deployment = %record.id, step = %step, error = %error, "undo failed");
                    }
                    _ => {}
                }
            }
        }
        tracked.seen = journal.len();

        let status = record.status.label().to_string();
        let waiting = matches!(
            record.status,
            DeploymentStatus::Running | DeploymentStatus::Planned
        ) && cutover_executor::deployment_view(&cp.store, &record.id)
            .ok()
            .and_then(|v| v.approval)
            .is_some_and(|a| a.waiting);
        let event = |name: &str, reason: Option<String>| Event {
            event: name.to_string(),
            deployment: record.id.clone(),
            env: record.env.clone(),
            release: record.release_id.clone(),
            reason,
        };
        if !baseline {
            if status != tracked.status {
                match &record.status {
                    DeploymentStatus::Unwinding { reason } => {
                        cp.webhooks.notify(event("failed", Some(reason.clone())))
                    }
                    DeploymentStatus::RolledBack { reason } => cp
                        .webhooks
                        .notify(event("rolled_back", Some(reason.clone()))),
                    DeploymentStatus::Stuck { reason } => {
                        cp.webhooks.notify(event("stuck", Some(reason.clone())))
                    }
                    _ => {}
                }
            }
            if waiting && !tracked.waiting {
                cp.webhooks.notify(event(
                    "waiting_for_approval",
                    Some(format!("requested by {}", record.requested_by)),
                ));
            }
        }
        tracked.status = status;
        tracked.waiting = waiting;
        tracked.finished = record.status.is_finished();
        cp.metrics.set_deployment(
            &record.id,
            DeploymentFacts {
                status: (&record.status).into(),
                rollback: matches!(record.kind, DeploymentKind::Rollback { .. }),
                waiting,
            },
        );
        Ok(())
    }

    /// Look again at every deployment not known to have finished (after missed events).
    fn observe_unfinished(&mut self, cp: &ControlPlane) -> Result<(), ServerError> {
        for record in cp.store.unfinished()? {
            self.observe(cp, &record.id, false)?;
        }
        Ok(())
    }
}

/// Run the watcher until the task is aborted. What the store holds when this returns is
/// the baseline (read before it returns); every change after it is observed.
pub fn spawn(cp: Arc<ControlPlane>) -> tokio::task::JoinHandle<()> {
    // Subscribe before the baseline, so nothing between the two is missed.
    let mut events = cp.store.subscribe();
    let mut watcher = Watcher::default();
    if let Err(e) = watcher.prime(&cp) {
        tracing::warn!(error = %e, "reading the deployments for the watcher failed");
    }
    tokio::spawn(async move {
        loop {
            let result = match events.recv().await {
                Ok(StoreEvent::Journal { deployment_id, .. })
                | Ok(StoreEvent::Deployment { deployment_id })
                | Ok(StoreEvent::Approval { deployment_id }) => {
                    watcher.observe(&cp, &deployment_id, false)
                }
                Ok(StoreEvent::Environment { .. }) | Ok(StoreEvent::Credentials) => Ok(()),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "the watcher fell behind; reading again");
                    watcher.observe_unfinished(&cp)
                }
                Err(RecvError::Closed) => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "watching deployments failed; will look again at the next change");
            }
        }
    })
}
