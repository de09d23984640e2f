//! Fault injection for tests: make actions or undos fail, or "crash" the executor at chosen
//! points. A crash makes [`crate::Executor::run`] return [`crate::ExecError::InjectedCrash`]
//! at once, leaving the journal and the world as a killed process would; the test then
//! calls `run` again like a restarted process. Crash rules fire once.

use std::sync::Mutex;

use cutover_model::ProviderError;

/// Where in a step's life a crash is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before `StepStarted` is journaled.
    BeforeStarted,
    /// After `StepStarted` is flushed, before the action.
    AfterStarted,
    /// After the action's side effects, before `StepSucceeded`.
    AfterAction,
    /// After `UndoStarted` is flushed, before the undo.
    AfterUndoStarted,
    /// After the undo's side effects, before `UndoSucceeded`.
    AfterUndo,
}

impl CrashPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            CrashPoint::BeforeStarted => "before-started",
            CrashPoint::AfterStarted => "after-started",
            CrashPoint::AfterAction => "after-action",
            CrashPoint::AfterUndoStarted => "after-undo-started",
            CrashPoint::AfterUndo => "after-undo",
        }
    }
}

#[derive(Debug, Clone)]
enum Rule {
    /// The action fails with `error` without doing anything, `times` times (None: always).
    FailAction {
        step: String,
        error: ProviderError,
        times: Option<u32>,
    },
    /// The action runs, then reports `error` (partial work left behind).
    FailAfterAction {
        step: String,
        error: ProviderError,
        times: Option<u32>,
    },
    FailUndo {
        step: String,
        error: ProviderError,
        times: Option<u32>,
    },
    Crash {
        step: String,
        point: CrashPoint,
    },
    CrashAfterSeq {
        seq: u64,
    },
}

/// A set of fault rules shared with the executor through `ExecutorConfig::faults`.
#[derive(Debug, Default)]
pub struct FaultInjector {
    rules: Mutex<Vec<Rule>>,
}

impl FaultInjector {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, rule: Rule) -> &Self {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
        self
    }

    /// Every attempt of `step`'s action fails with `error` (nothing is done).
    pub fn fail_action(&self, step: &str, error: ProviderError) -> &Self {
        self.push(Rule::FailAction {
            step: step.to_string(),
            error,
            times: None,
        })
    }

    /// The next `times` attempts of `step`'s action fail with `error`.
    pub fn fail_action_times(&self, step: &str, error: ProviderError, times: u32) -> &Self {
        self.push(Rule::FailAction {
            step: step.to_string(),
            error,
            times: Some(times),
        })
    }

    /// `step`'s action runs, then reports `error`: its partial work must be cleaned up.
    pub fn fail_after_action(&self, step: &str, error: ProviderError) -> &Self {
        self.push(Rule::FailAfterAction {
            step: step.to_string(),
            error,
            times: None,
        })
    }

    /// Every undo (or cleanup) of `step` fails permanently.
    pub fn fail_undo(&self, step: &str) -> &Self {
        self.push(Rule::FailUndo {
            step: step.to_string(),
            error: ProviderError::permanent(format!("injected undo failure of step {step}")),
            times: None,
        })
    }

    /// The next `times` undo attempts of `step` fail with `error`.
    pub fn fail_undo_times(&self, step: &str, error: ProviderError, times: u32) -> &Self {
        self.push(Rule::FailUndo {
            step: step.to_string(),
            error,
            times: Some(times),
        })
    }

    pub fn crash_before(&self, step: &str) -> &Self {
        self.crash_at(step, CrashPoint::BeforeStarted)
    }

    pub fn crash_after_started(&self, step: &str) -> &Self {
        self.crash_at(step, CrashPoint::AfterStarted)
    }

    pub fn crash_after_action(&self, step: &str) -> &Self {
        self.crash_at(step, CrashPoint::AfterAction)
    }

    /// Crash once at `point` of `step`.
    pub fn crash_at(&self, step: &str, point: CrashPoint) -> &Self {
        self.push(Rule::Crash {
            step: step.to_string(),
            point,
        })
    }

    /// Crash once right after the journal entry numbered `seq` is written.
    pub fn crash_after_seq(&self, seq: u64) -> &Self {
        self.push(Rule::CrashAfterSeq { seq })
    }

    /// Remove every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn take_error(
        &self,
        matches: impl Fn(&Rule) -> Option<(ProviderError, Option<u32>)>,
    ) -> Option<ProviderError> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let index = rules.iter().position(|r| matches(r).is_some())?;
        let (error, times) = matches(&rules[index])?;
        match times {
            Some(1) => {
                rules.remove(index);
            }
            Some(n) => match &mut rules[index] {
                Rule::FailAction { times, .. }
                | Rule::FailAfterAction { times, .. }
                | Rule::FailUndo { times, .. } => *times = Some(n.saturating_sub(1)),
                Rule::Crash { .. } | Rule::CrashAfterSeq { .. } => {}
            },
            None => {}
        }
        Some(error)
    }

    pub(crate) fn action_error(&self, step_id: &str) -> Option<ProviderError> {
        self.take_error(|r| match r {
            Rule::FailAction { step, error, times } if step == step_id && times != &Some(0) => {
                Some((error.clone(), *times))
            }
            _ => None,
        })
    }

    pub(crate) fn after_action_error(&self, step_id: &str) -> Option<ProviderError> {
        self.take_error(|r| match r {
            Rule::FailAfterAction { step, error, times }
                if step == step_id && times != &Some(0) =>
            {
                Some((error.clone(), *times))
            }
            _ => None,
        })
    }

    pub(crate) fn undo_error(&self, step_id: &str) -> Option<ProviderError> {
        self.take_error(|r| match r {
            Rule::FailUndo { step, error, times } if step == step_id && times != &Some(0) => {
                Some((error.clone(), *times))
            }
            _ => None,
        })
    }

    pub(crate) fn take_crash(&self, step_id: &str, at: CrashPoint) -> bool {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let found = rules.iter().position(
            |r| matches!(r, Rule::Crash { step, point } if step == step_id && *point == at),
        );
        found.map(|i| rules.remove(i)).is_some()
    }

    pub(crate) fn take_crash_after_seq(&self, at: u64) -> bool {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let found = rules
            .iter()
            .position(|r| matches!(r, Rule::CrashAfterSeq { seq } if *seq == at));
        found.map(|i| rules.remove(i)).is_some()
    }
}
