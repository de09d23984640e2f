//! Rebuilding a deployment's state from its journal through a table of legal transitions.
//!
//! Per step: `NotStarted → Started → Succeeded | Failed`; a `Started` step may be started
//! again (re-run after a crash) and a transiently `Failed` one too (retry). Undo:
//! `Succeeded | Failed → UndoStarted → Undone | UndoFailed` (undo of a failed step cleans up
//! its partial work). Anything else means the journal cannot be trusted.

use std::collections::BTreeMap;

use cutover_model::{DeploymentStatus, JournalEntry, JournalEvent, Plan, StepOutput};

/// State of one step as the journal tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    NotStarted,
    /// Started and not finished: running, or interrupted by a crash.
    Started {
        attempt: u32,
    },
    Succeeded {
        output: StepOutput,
    },
    Failed {
        attempt: u32,
        error: String,
        /// A transient failure is retried (a new `Started` follows).
        transient: bool,
    },
    /// Undo began; `output` is the step's output when it had succeeded, `None` when this
    /// is the cleanup of a failed step.
    UndoStarted {
        output: Option<StepOutput>,
    },
    Undone,
    UndoFailed {
        error: String,
    },
}

impl StepState {
    pub fn label(&self) -> &'static str {
        match self {
            StepState::NotStarted => "not-started",
            StepState::Started { .. } => "started",
            StepState::Succeeded { .. } => "succeeded",
            StepState::Failed { .. } => "failed",
            StepState::UndoStarted { .. } => "undo-started",
            StepState::Undone => "undone",
            StepState::UndoFailed { .. } => "undo-failed",
        }
    }
}

/// A step's state plus what the view shows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub state: StepState,
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// Last error (of the action, or of its undo).
    pub error: Option<String>,
    /// The last output the step produced (kept through undo).
    pub output: Option<StepOutput>,
    /// Journal sequence of the event that finished the forward action (success or
    /// failure); undo runs in reverse of this order.
    pub completed_seq: Option<u64>,
}

impl StepRecord {
    fn new() -> Self {
        StepRecord {
            state: StepState::NotStarted,
            attempts: 0,
            started_at_ms: None,
            finished_at_ms: None,
            duration_ms: None,
            error: None,
            output: None,
            completed_seq: None,
        }
    }
}

/// Everything the journal says about a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// By step id, for every step of the plan.
    pub steps: BTreeMap<String, StepRecord>,
    /// Number of `DeploymentStarted` events (starts plus resumes).
    pub starts: u32,
    /// Set once `UnwindStarted` was journaled.
    pub unwind_reason: Option<String>,
    pub finished: Option<DeploymentStatus>,
}

impl Replayed {
    pub fn state(&self, step: &str) -> Option<&StepState> {
        self.steps.get(step).map(|r| &r.state)
    }
}

/// Why a journal cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub seq: u64,
    pub detail: String,
}

/// The transition table of one step. `None`: illegal.
pub fn step_transition(from: &StepState, event: &JournalEvent) -> Option<StepState> {
    use JournalEvent as E;
    use StepState as S;
    match (from, event) {
        (S::NotStarted | S::Started { .. }, E::StepStarted { attempt, .. }) => {
            Some(S::Started { attempt: *attempt })
        }
        (
            S::Failed {
                transient: true, ..
            },
            E::StepStarted { attempt, .. },
        ) => Some(S::Started { attempt: *attempt }),
        (S::Started { .. }, E::StepSucceeded { output, .. }) => Some(S::Succeeded {
            output: output.clone(),
        }),
        (
            S::Started { .. },
            E::StepFailed {
                attempt,
                error,
                transient,
                ..
            },
        ) => Some(S::Failed {
            attempt: *attempt,
            error: error.clone(),
            transient: *transient,
        }),
        (S::Succeeded { output }, E::UndoStarted { .. }) => Some(S::UndoStarted {
            output: Some(output.clone()),
        }),
        (S::Failed { .. }, E::UndoStarted { .. }) => Some(S::UndoStarted { output: None }),
        (S::UndoStarted { output }, E::UndoStarted { .. }) => Some(S::UndoStarted {
            output: output.clone(),
        }),
        (S::UndoStarted { .. }, E::UndoSucceeded { .. }) => Some(S::Undone),
        (S::UndoStarted { .. }, E::UndoFailed { error, .. }) => Some(S::UndoFailed {
            error: error.clone(),
        }),
        _ => None,
    }
}

fn event_step(event: &JournalEvent) -> Option<&str> {
    match event {
        JournalEvent::StepStarted { step, .. }
        | JournalEvent::StepSucceeded { step, .. }
        | JournalEvent::StepFailed { step, .. }
        | JournalEvent::UndoStarted { step }
        | JournalEvent::UndoSucceeded { step }
        | JournalEvent::UndoFailed { step, .. } => Some(step),
        JournalEvent::DeploymentStarted { .. }
        | JournalEvent::UnwindStarted { .. }
        | JournalEvent::DeploymentFinished { .. } => None,
    }
}

impl Replayed {
    /// The state of `plan` before its first journal entry.
    pub fn new(plan: &Plan) -> Self {
        Replayed {
            steps: plan
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepRecord::new()))
                .collect(),
            starts: 0,
            unwind_reason: None,
            finished: None,
        }
    }

    /// Move the state by one journal entry, through the transition table and the phase
    /// rules (no forward progress after the unwind began, no undo before it, nothing after
    /// the end). This is the only way a step changes state, when replaying and when running
    /// alike. Sequence numbers are not checked here (see [`replay`]): a running executor
    /// applies each step's entries when the step's task reports back.
    pub fn apply(&mut self, entry: &JournalEntry) -> Result<(), Corrupt> {
        let corrupt = |detail: String| Corrupt {
            seq: entry.seq,
            detail,
        };
        if self.finished.is_some() {
            return Err(corrupt("event after the deployment finished".to_string()));
        }
        let unwinding = self.unwind_reason.is_some();
        match &entry.event {
            JournalEvent::DeploymentStarted { .. } => self.starts += 1,
            JournalEvent::UnwindStarted { reason } => {
                if unwinding {
                    return Err(corrupt("unwind started twice".to_string()));
                }
                self.unwind_reason = Some(reason.clone());
            }
            JournalEvent::DeploymentFinished { status } => self.finished = Some(status.clone()),
            event => {
                let step = event_step(event).unwrap_or_default();
                let forward = matches!(
                    event,
                    JournalEvent::StepStarted { .. } | JournalEvent::StepSucceeded { .. }
                );
                let undo = matches!(
                    event,
                    JournalEvent::UndoStarted { .. }
                        | JournalEvent::UndoSucceeded { .. }
                        | JournalEvent::UndoFailed { .. }
                );
                if forward && unwinding {
                    return Err(corrupt(format!(
                        "step {step} made progress after the unwind began"
                    )));
                }
                if undo && !unwinding {
                    return Err(corrupt(format!(
                        "undo of step {step} before the unwind began"
                    )));
                }
                let Some(record) = self.steps.get_mut(step) else {
                    return Err(corrupt(format!("step {step} is not in the plan")));
                };
                let Some(next) = step_transition(&record.state, event) else {
                    return Err(corrupt(format!(
                        "step {step} cannot go from {} on {}",
                        record.state.label(),
                        event_name(event)
                    )));
                };
                apply_details(record, entry);
                record.state = next;
            }
        }
        Ok(())
    }
}

/// Replay `entries` for `plan`. Checks sequence numbers (dense, from 0), then applies each
/// entry with [`Replayed::apply`].
pub fn replay(plan: &Plan, entries: &[JournalEntry]) -> Result<Replayed, Corrupt> {
    let mut out = Replayed::new(plan);
    for (index, entry) in entries.iter().enumerate() {
        if entry.seq != index as u64 {
            return Err(Corrupt {
                seq: entry.seq,
                detail: format!("expected sequence number {index}, found {}", entry.seq),
            });
        }
        out.apply(entry)?;
    }
    Ok(out)
}

fn apply_details(record: &mut StepRecord, entry: &JournalEntry) {
    match &entry.event {
        JournalEvent::StepStarted { .. } => {
            record.attempts += 1;
            record.started_at_ms.get_or_insert(entry.at_ms);
            record.finished_at_ms = None;
        }
        JournalEvent::StepSucceeded {
            output,
            duration_ms,
            ..
        } => {
            record.finished_at_ms = Some(entry.at_ms);
            record.duration_ms = Some(*duration_ms);
            record.output = Some(output.clone());
            record.completed_seq = Some(entry.seq);
            record.error = None;
        }
        JournalEvent::StepFailed {
            error, duration_ms, ..
        } => {
            record.finished_at_ms = Some(entry.at_ms);
            record.duration_ms = Some(*duration_ms);
            record.error = Some(error.clone());
            record.completed_seq = Some(entry.seq);
        }
        JournalEvent::UndoFailed { error, .. } => record.error = Some(error.clone()),
        _ => {}
    }
}

pub fn event_name(event: &JournalEvent) -> &'static str {
    match event {
        JournalEvent::DeploymentStarted { .. } => "deployment-started",
        JournalEvent::StepStarted { .. } => "step-started",
        JournalEvent::StepSucceeded { .. } => "step-succeeded",
        JournalEvent::StepFailed { .. } => "step-failed",
        JournalEvent::UnwindStarted { .. } => "unwind-started",
        JournalEvent::UndoStarted { .. } => "undo-started",
        JournalEvent::UndoSucceeded { .. } => "undo-succeeded",
        JournalEvent::UndoFailed { .. } => "undo-failed",
        JournalEvent::DeploymentFinished { .. } => "deployment-finished",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JournalEvent as E;
    use StepState as S;

    fn started(a: u32) -> E {
        E::StepStarted {
            step: "s".into(),
            attempt: a,
        }
    }
    fn succeeded() -> E {
        E::StepSucceeded {
            step: "s".into(),
            output: StepOutput::None,
            duration_ms: 1,
        }
    }
    fn failed(transient: bool) -> E {
        E::StepFailed {
            step: "s".into(),
            attempt: 1,
            error: "boom".into(),
            transient,
            duration_ms: 1,
        }
    }
    fn undo_started() -> E {
        E::UndoStarted { step: "s".into() }
    }

    #[test]
    fn transition_table() {
        let ok = S::Succeeded {
            output: StepOutput::None,
        };
        let perm = S::Failed {
            attempt: 1,
            error: "boom".into(),
            transient: false,
        };
        let trans = S::Failed {
            attempt: 1,
            error: "boom".into(),
            transient: true,
        };
        let undoing = S::UndoStarted { output: None };
        // (from, event, legal)
        let cases = [
            (S::NotStarted, started(1), true),
            (S::NotStarted, succeeded(), false),
            (S::NotStarted, failed(false), false),
            (S::NotStarted, undo_started(), false),
            (S::Started { attempt: 1 }, started(2), true),
            (S::Started { attempt: 1 }, succeeded(), true),
            (S::Started { attempt: 1 }, failed(true), true),
            (S::Started { attempt: 1 }, undo_started(), false),
            (ok.clone(), started(2), false),
            (ok.clone(), succeeded(), false),
            (ok.clone(), undo_started(), true),
            (perm.clone(), started(2), false),
            (perm.clone(), undo_started(), true),
            (trans.clone(), started(2), true),
            (undoing.clone(), undo_started(), true),
            (undoing.clone(), E::UndoSucceeded { step: "s".into() }, true),
            (
                undoing.clone(),
                E::UndoFailed {
                    step: "s".into(),
                    error: "x".into(),
                },
                true,
            ),
            (undoing, succeeded(), false),
            (S::Undone, undo_started(), false),
            (S::Undone, started(1), false),
            (S::UndoFailed { error: "x".into() }, undo_started(), false),
        ];
        for (from, event, legal) in cases {
            assert_eq!(
                step_transition(&from, &event).is_some(),
                legal,
                "{from:?} on {event:?}"
            );
        }
    }

    fn entry(seq: u64, event: E) -> JournalEntry {
        JournalEntry {
            seq,
            at_ms: 100 + seq,
            event,
        }
    }

    fn one_step_plan() -> Plan {
        let mut plan = crate::fake::deploy_plan("d1", "production", "r1", None, 1);
        plan.steps.truncate(1);
        plan.steps[0].id = "s".to_string();
        plan.steps[0].depends_on.clear();
        plan
    }

    #[test]
    fn apply_moves_a_running_state_exactly_as_replay_does() {
        let plan = one_step_plan();
        let entries = vec![
            entry(0, E::DeploymentStarted { resumed: 0 }),
            entry(1, started(1)),
            entry(2, failed(true)),
            entry(3, started(2)),
            entry(4, succeeded()),
        ];
        let mut running = Replayed::new(&plan);
        for e in &entries {
            running.apply(e).unwrap();
        }
        assert_eq!(running, replay(&plan, &entries).unwrap());
        assert_eq!(
            running.state("s"),
            Some(&S::Succeeded {
                output: StepOutput::None
            })
        );
        assert_eq!(running.steps["s"].attempts, 2);
        assert_eq!(running.steps["s"].completed_seq, Some(4));
    }

    #[test]
    fn apply_refuses_what_the_table_refuses_and_leaves_the_state_alone() {
        let plan = one_step_plan();
        let mut state = Replayed::new(&plan);
        state.apply(&entry(0, started(1))).unwrap();
        state.apply(&entry(1, succeeded())).unwrap();
        let before = state.clone();
        // Started again after success: illegal.
        let err = state.apply(&entry(2, started(2))).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.detail.contains("cannot go from succeeded"), "{err:?}");
        // Undo before the unwind began: illegal too.
        let err = state.apply(&entry(2, undo_started())).unwrap_err();
        assert!(err.detail.contains("before the unwind"), "{err:?}");
        assert_eq!(state, before);
    }
}
