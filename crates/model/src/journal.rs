//! Journal events: the durable record of a deployment's execution.
//!
//! Discipline (see ARCHITECTURE.md): `StepStarted` is written and flushed before the side
//! effect; `StepSucceeded`/`StepFailed` after it. Undo runs only for succeeded steps, in
//! reverse order. Replaying the journal gives the deployment's state.

use serde::{Deserialize, Serialize};

use crate::plan::StepOutput;
use crate::release::DeploymentStatus;

/// One journaled event, numbered per deployment from 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub event: JournalEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum JournalEvent {
    /// Execution began (or resumed after a crash: `resumed` counts restarts).
    DeploymentStarted {
        resumed: u32,
    },
    StepStarted {
        step: String,
        attempt: u32,
    },
    /// `duration_ms`: time spent in the step's action (provider calls and waits).
    StepSucceeded {
        step: String,
        output: StepOutput,
        duration_ms: u64,
    },
    /// `transient` failures are retried (a new `StepStarted` follows); others unwind.
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
        transient: bool,
        duration_ms: u64,
    },
    UnwindStarted {
        reason: String,
    },
    UndoStarted {
        step: String,
    },
    UndoSucceeded {
        step: String,
    },
    UndoFailed {
        step: String,
        error: String,
    },
    DeploymentFinished {
        status: DeploymentStatus,
    },
}
