//! The background watcher: follows deployment records and journals, feeds step durations
//! to the metrics, logs each step's outcome with its deployment and step, and sends
//! webhooks when a deployment fails, rolls back, gets stuck or starts waiting for approval.
//!
//! It polls the store (the executor may run in this process or have run before a restart).
//! What exists when it starts is its baseline: no webhook is sent for it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cutover_model::{DeploymentStatus, JournalEvent};

use crate::webhooks::Event;
use crate::{ControlPlane, ServerError};

/// How many of the newest deployments each pass looks at.
const WINDOW: usize = 200;

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

/// State of the watcher between passes.
#[derive(Default)]
pub struct Watcher {
    tracked: HashMap<String, Tracked>,
    primed: bool,
}

impl Watcher {
    /// Look at the store once: observe new journal entries, send webhooks for transitions.
    pub fn pass(&mut self, cp: &ControlPlane) -> Result<(), ServerError> {
        let baseline = !self.primed;
        self.primed = true;
        for record in cp.store.deployments(None, WINDOW)? {
            let tracked = self.tracked.entry(record.id.clone()).or_default();
            if tracked.finished {
                continue;
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
            for entry in journal.iter().skip(tracked.seen) {
                if baseline {
                    break;
                }
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
        }
        Ok(())
    }
}

/// Run the watcher every `interval` until the task is aborted.
pub fn spawn(cp: Arc<ControlPlane>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watcher = Watcher::default();
        loop {
            if let Err(e) = watcher.pass(&cp) {
                tracing::warn!(error = %e, "watching deployments failed; will retry");
            }
            tokio::time::sleep(interval).await;
        }
    })
}
