//! Runs saved plans: journaling, bounded concurrency, retries, crash recovery and unwind.
//!
//! [`Executor::run`] starts or resumes a deployment from its journal. The journal is
//! replayed through a table of legal transitions ([`replay`]); steps whose dependencies
//! succeeded run concurrently (at most `max_parallel`). For each step `StepStarted` is
//! flushed before the action and `StepSucceeded`/`StepFailed` written after it; a step
//! found `Started` on resume is run again (actions are idempotent). A permanent failure (or
//! exhausted retries) unwinds: running steps finish, failed steps clean up their partial
//! work, then succeeded steps are undone in reverse completion order. A failed undo leaves
//! the deployment `Stuck`, holding the environment lease.
//!
//! The run's view of each step moves only through the replay transition table
//! ([`Replayed::apply`]): every journal entry it writes is applied to its state as a replay
//! would apply it. Store writes go through [`Store::append_async`] and
//! [`Store::write_async`], so an async worker never waits for a flush. [`resumable`] is the
//! one place that decides which deployments a restarted control plane runs again.

pub mod actions;
pub mod approval;
pub mod fake;
pub mod faults;
pub mod replay;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_model::{
    now_ms, Compute, DeploymentStatus, JournalEntry, JournalEvent, Plan, ProviderError, Providers,
    Step, StepOutput,
};
use cutover_store::{HistoryEntry, Lease, Store, StoreError};
use thiserror::Error;
use tokio::task::JoinSet;

pub use approval::{Tally, Vote, VoteStatus};
pub use faults::{CrashPoint, FaultInjector};
pub use replay::{replay, Replayed, StepRecord, StepState};
pub use view::{deployment_view, ApprovalView, DeploymentView, StepView};

/// Errors that stop [`Executor::run`] before the deployment reached a final status. The
/// deployment stays resumable (run it again) unless the journal is corrupt.
#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("no deployment {0} in the state store; check the id with `cutover history`")]
    UnknownDeployment(String),

    #[error("the journal of deployment {deployment} is corrupt at entry {seq}: {detail}; do not resume it, inspect it with `cutover status {deployment}`")]
    CorruptJournal {
        deployment: String,
        seq: u64,
        detail: String,
    },

    #[error("the plan of deployment {deployment} is invalid: {detail}; plan the deployment again")]
    InvalidPlan { deployment: String, detail: String },

    #[error("injected crash {} step {step}", point.as_str())]
    InjectedCrash { step: String, point: CrashPoint },

    #[error("injected crash after journal entry {seq}")]
    InjectedCrashAfterSeq { seq: u64 },

    #[error("a step task of deployment {deployment} stopped unexpectedly; resume the deployment")]
    TaskFailed { deployment: String },

    #[error("{context}")]
    Provider {
        context: String,
        #[source]
        source: ProviderError,
    },
}

impl ExecError {
    /// Whether this is an injected crash (tests).
    pub fn is_injected_crash(&self) -> bool {
        matches!(
            self,
            ExecError::InjectedCrash { .. } | ExecError::InjectedCrashAfterSeq { .. }
        )
    }
}

/// Retries of transient provider errors.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Wait before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped at `max_delay`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        cutover_model::Backoff::new(self.base_delay, self.max_delay).delay_after(attempt)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Steps run at once, at least 1; default 4.
    pub max_parallel: usize,
    pub retry: RetryPolicy,
    pub faults: Option<Arc<FaultInjector>>,
    /// The longest a step waiting at an approval gate sleeps without reading the approvals
    /// again when no event arrives; at least [`actions::MIN_APPROVAL_REREAD`] (one second),
    /// default 30s. A decision recorded in the store wakes the gate at once.
    pub approval_poll: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_parallel: 4,
            retry: RetryPolicy::default(),
            faults: None,
            approval_poll: Duration::from_secs(30),
        }
    }
}

/// Runs deployments saved in a [`Store`] against a set of [`Providers`].
#[derive(Clone)]
pub struct Executor {
    pub store: Store,
    pub providers: Providers,
    pub config: ExecutorConfig,
}

/// Everything one run shares with its step tasks.
pub(crate) struct Ctx {
    pub store: Store,
    pub providers: Providers,
    pub config: ExecutorConfig,
    pub plan: Arc<Plan>,
}

/// How a step's task ended, with every journal entry it wrote, in order: the run applies
/// them to its state through the transition table, as a replay would.
struct StepResult {
    succeeded: bool,
    entries: Vec<JournalEntry>,
}

const JOURNAL_WRITE_ATTEMPTS: u32 = 8;
/// Waits between journal write attempts: 100 ms, doubling, at most 1.6 s.
const JOURNAL_WRITE_BACKOFF: cutover_model::Backoff =
    cutover_model::Backoff::new(Duration::from_millis(100), Duration::from_millis(1600));

impl Ctx {
    fn id(&self) -> &str {
        &self.plan.deployment_id
    }

    /// Append to the journal (durable on return, written off the async workers), retrying
    /// transient store errors; the write is never skipped (after the last attempt, or at a
    /// permanent error, the run stops, resumable).
    async fn journal(&self, event: JournalEvent) -> Result<JournalEntry, ExecError> {
        let mut attempt = 1;
        let entry = loop {
            match self.store.append_async(self.id(), event.clone()).await {
                Ok(entry) => break entry,
                Err(e) if attempt >= JOURNAL_WRITE_ATTEMPTS || !e.is_transient() => {
                    return Err(e.into())
                }
                Err(e) => {
                    tracing::warn!(deployment = self.id(), error = %e, attempt, "journal write failed, retrying");
                    tokio::time::sleep(JOURNAL_WRITE_BACKOFF.delay_after(attempt)).await;
                    attempt += 1;
                }
            }
        };
        if let Some(f) = &self.config.faults {
            if f.take_crash_after_seq(entry.seq) {
                return Err(ExecError::InjectedCrashAfterSeq { seq: entry.seq });
            }
        }
        Ok(entry)
    }

    /// Append `event` and move `state` by it through the transition table.
    async fn journal_into(
        &self,
        state: &mut Replayed,
        event: JournalEvent,
    ) -> Result<JournalEntry, ExecError> {
        let entry = self.journal(event).await?;
        self.apply(state, &entry)?;
        Ok(entry)
    }

    /// Move `state` by `entry`; an illegal transition means the run and its journal
    /// disagree, which is reported like a corrupt journal.
    fn apply(&self, state: &mut Replayed, entry: &JournalEntry) -> Result<(), ExecError> {
        state.apply(entry).map_err(|c| ExecError::CorruptJournal {
            deployment: self.id().to_string(),
            seq: c.seq,
            detail: c.detail,
        })
    }

    /// Run store writes without blocking the async worker on their flush
    /// ([`Store::write_async`]).
    async fn store_write<R>(
        &self,
        work: impl FnOnce(&Store) -> Result<R, StoreError>,
    ) -> Result<R, ExecError> {
        Ok(self.store.write_async(work).await?)
    }

    fn crash(&self, step: &str, point: CrashPoint) -> Result<(), ExecError> {
        match &self.config.faults {
            Some(f) if f.take_crash(step, point) => Err(ExecError::InjectedCrash {
                step: step.to_string(),
                point,
            }),
            _ => Ok(()),
        }
    }

    /// Run one step to success or final failure, retrying transient errors.
    async fn execute_step(
        self: Arc<Self>,
        step: Step,
        outputs: HashMap<String, StepOutput>,
        mut attempt: u32,
    ) -> Result<StepResult, ExecError> {
        let retry = &self.config.retry;
        let mut entries = Vec::new();
        loop {
            self.crash(&step.id, CrashPoint::BeforeStarted)?;
            entries.push(
                self.journal(JournalEvent::StepStarted {
                    step: step.id.clone(),
                    attempt,
                })
                .await?,
            );
            self.crash(&step.id, CrashPoint::AfterStarted)?;
            let clock = Instant::now();
            let faults = self.config.faults.as_ref();
            let result = match faults.and_then(|f| f.action_error(&step.id)) {
                Some(e) => Err(e),
                None => {
                    let r = actions::perform(&self, &step, &outputs).await;
                    match (r, faults.and_then(|f| f.after_action_error(&step.id))) {
                        (Ok(_), Some(e)) => Err(e),
                        (r, _) => r,
                    }
                }
            };
            let duration_ms = clock.elapsed().as_millis() as u64;
            match result {
                Ok(output) => {
                    self.crash(&step.id, CrashPoint::AfterAction)?;
                    entries.push(
                        self.journal(JournalEvent::StepSucceeded {
                            step: step.id.clone(),
                            output,
                            duration_ms,
                        })
                        .await?,
                    );
                    return Ok(StepResult {
                        succeeded: true,
                        entries,
                    });
                }
                Err(e) if e.is_transient() && attempt < retry.max_attempts.max(1) => {
                    tracing::info!(deployment = self.id(), step = step.id, attempt, error = %e, "transient failure, retrying");
                    entries.push(
                        self.journal(JournalEvent::StepFailed {
                            step: step.id.clone(),
                            attempt,
                            error: e.message.clone(),
                            transient: true,
                            duration_ms,
                        })
                        .await?,
                    );
                    tokio::time::sleep(retry.delay_after(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    let error = if e.is_transient() {
                        format!("{} (gave up after {attempt} attempts)", e.message)
                    } else {
                        e.message.clone()
                    };
                    entries.push(
                        self.journal(JournalEvent::StepFailed {
                            step: step.id.clone(),
                            attempt,
                            error,
                            transient: false,
                            duration_ms,
                        })
                        .await?,
                    );
                    return Ok(StepResult {
                        succeeded: false,
                        entries,
                    });
                }
            }
        }
    }

    /// Undo (or clean up) one step, retrying transient errors.
    async fn undo_step(&self, step: &Step, output: Option<&StepOutput>) -> Result<(), String> {
        let retry = &self.config.retry;
        let mut attempt = 1;
        loop {
            let injected = self
                .config
                .faults
                .as_ref()
                .and_then(|f| f.undo_error(&step.id));
            let result = match injected {
                Some(e) => Err(e),
                None => actions::undo(self, step, output).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt < retry.max_attempts.max(1) => {
                    tokio::time::sleep(retry.delay_after(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.message),
            }
        }
    }
}

impl Executor {
    pub fn new(store: Store, providers: Providers, config: ExecutorConfig) -> Self {
        Executor {
            store,
            providers,
            config,
        }
    }

    /// Resume every deployment [`resumable`] names, all at once (one waiting at an approval
    /// gate must not hold up the others). Returns each deployment's id with its outcome,
    /// oldest deployment first.
    pub async fn resume_unfinished(
        &self,
    ) -> Result<Vec<(String, Result<DeploymentStatus, ExecError>)>, ExecError> {
        let records = resumable(&self.store)?;
        let mut tasks = JoinSet::new();
        for (index, id) in records.iter().enumerate() {
            let exec = self.clone();
            let id = id.clone();
            tasks.spawn(async move { (index, exec.run(&id).await) });
        }
        let mut results: Vec<Option<Result<DeploymentStatus, ExecError>>> =
            records.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                Err(e) => tracing::error!(error = %e, "a resumed deployment's task stopped"),
            }
        }
        Ok(records
            .into_iter()
            .zip(results)
            .map(|(id, result)| {
                let result = result.unwrap_or_else(|| {
                    Err(ExecError::TaskFailed {
                        deployment: id.clone(),
                    })
                });
                (id, result)
            })
            .collect())
    }

    /// Start or resume the saved deployment `deployment_id` and drive it to a final status.
    pub async fn run(&self, deployment_id: &str) -> Result<DeploymentStatus, ExecError> {
        let plan = self
            .store
            .plan(deployment_id)?
            .ok_or_else(|| ExecError::UnknownDeployment(deployment_id.to_string()))?;
        if self.store.deployment(deployment_id)?.is_none() {
            return Err(ExecError::UnknownDeployment(deployment_id.to_string()));
        }
        validate_plan(&plan)?;
        let journal = self.store.journal(deployment_id)?;
        let mut state = replay(&plan, &journal).map_err(|c| ExecError::CorruptJournal {
            deployment: deployment_id.to_string(),
            seq: c.seq,
            detail: c.detail,
        })?;
        let ctx = Arc::new(Ctx {
            store: self.store.clone(),
            providers: self.providers.clone(),
            config: self.config.clone(),
            plan: Arc::new(plan),
        });
        if let Some(status) = state.finished.clone() {
            // Finished in the journal; make sure the record and lease agree (a crash may
            // have come between the last journal write and them).
            settle(&ctx, &status).await?;
            return Ok(status);
        }
        let (env, lease) = (
            ctx.plan.env.clone(),
            Lease {
                deployment_id: deployment_id.to_string(),
                holder: ctx.plan.requested_by.clone(),
                acquired_at_ms: now_ms(),
            },
        );
        ctx.store_write(move |store| store.acquire_lease(&env, lease))
            .await?;
        let resumed = state.starts;
        ctx.journal_into(&mut state, JournalEvent::DeploymentStarted { resumed })
            .await?;

        let reason = match (&state.unwind_reason, first_failure(&ctx.plan, &state)) {
            (Some(reason), _) => Some(reason.clone()),
            (None, Some(reason)) => Some(reason),
            (None, None) => {
                let id = deployment_id.to_string();
                ctx.store_write(move |store| store.set_status(&id, DeploymentStatus::Running))
                    .await?;
                forward(&ctx, &mut state).await?
            }
        };
        let status = match reason {
            None => DeploymentStatus::Succeeded,
            Some(reason) => unwind(&ctx, &mut state, reason).await?,
        };
        ctx.journal_into(
            &mut state,
            JournalEvent::DeploymentFinished {
                status: status.clone(),
            },
        )
        .await?;
        settle(&ctx, &status).await?;
        Ok(status)
    }
}

/// The deployments a (re)started control plane must run again, oldest first: those that
/// started and did not finish (`running` or `unwinding`). `planned` ones wait for their
/// start, `stuck` ones for a person (`cutover resume`). The one place that decides what
/// is resumed; run each with [`Executor::run`] (or all with
/// [`Executor::resume_unfinished`]).
pub fn resumable(store: &Store) -> Result<Vec<String>, ExecError> {
    Ok(store
        .unfinished()?
        .into_iter()
        .filter(|r| {
            matches!(
                r.status,
                DeploymentStatus::Running | DeploymentStatus::Unwinding { .. }
            )
        })
        .map(|r| r.id)
        .collect())
}

fn validate_plan(plan: &Plan) -> Result<(), ExecError> {
    let invalid = |detail: String| ExecError::InvalidPlan {
        deployment: plan.deployment_id.clone(),
        detail,
    };
    let mut seen = HashSet::new();
    for step in &plan.steps {
        for dep in &step.depends_on {
            if !seen.contains(dep.as_str()) {
                return Err(invalid(format!(
                    "step {} depends on {dep}, which is not an earlier step",
                    step.id
                )));
            }
        }
        if !seen.insert(step.id.as_str()) {
            return Err(invalid(format!("step id {} is used twice", step.id)));
        }
    }
    Ok(())
}

/// A permanent failure already in the journal (a crash came before the unwind began).
fn first_failure(plan: &Plan, state: &Replayed) -> Option<String> {
    plan.steps.iter().find_map(|s| match state.state(&s.id) {
        Some(StepState::Failed {
            error,
            transient: false,
            ..
        }) => Some(failure_reason(&s.id, error)),
        _ => None,
    })
}

fn failure_reason(step: &str, error: &str) -> String {
    format!("step {step} failed: {error}")
}

/// Record the final status in the deployment record and history; release the lease
/// unless stuck. Idempotent. Runs off the async workers (every write is flushed).
async fn settle(ctx: &Ctx, status: &DeploymentStatus) -> Result<(), ExecError> {
    let plan = ctx.plan.clone();
    let status = status.clone();
    ctx.store_write(move |store| {
        let record = store.deployment(&plan.deployment_id)?;
        let record = match record {
            Some(r) if r.status == status => Some(r),
            _ => Some(store.set_status(&plan.deployment_id, status.clone())?),
        };
        store.record_history(
            &plan.env,
            &HistoryEntry {
                release_id: plan.release_id.clone(),
                deployment_id: plan.deployment_id.clone(),
                kind: plan.kind.clone(),
                outcome: status.label().to_string(),
                at_ms: record.and_then(|r| r.finished_at_ms).unwrap_or_else(now_ms),
                by: plan.requested_by.clone(),
            },
        )?;
        if !matches!(status, DeploymentStatus::Stuck { .. }) {
            store.release_lease(&plan.env, &plan.deployment_id)?;
        }
        Ok(())
    })
    .await
}

/// Run steps forward until all succeeded (`None`) or one failed for good (`Some(reason)`).
async fn forward(ctx: &Arc<Ctx>, state: &mut Replayed) -> Result<Option<String>, ExecError> {
    let plan = ctx.plan.clone();
    let limit = ctx.config.max_parallel.max(1);
    let mut tasks: JoinSet<(String, Result<StepResult, ExecError>)> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut failure: Option<String> = None;
    loop {
        if failure.is_none() {
            for step in &plan.steps {
                if tasks.len() >= limit {
                    break;
                }
                if running.contains(&step.id) {
                    continue;
                }
                let attempt = match state.state(&step.id) {
                    Some(StepState::NotStarted) => 1,
                    Some(StepState::Started { attempt }) => attempt + 1,
                    Some(StepState::Failed {
                        attempt,
                        transient: true,
                        ..
                    }) => attempt + 1,
                    _ => continue,
                };
                let ready = step
                    .depends_on
                    .iter()
                    .all(|d| matches!(state.state(d), Some(StepState::Succeeded { .. })));
                if !ready {
                    continue;
                }
                let outputs: HashMap<String, StepOutput> = state
                    .steps
                    .iter()
                    .filter_map(|(id, r)| match &r.state {
                        StepState::Succeeded { output } => Some((id.clone(), output.clone())),
                        _ => None,
                    })
                    .collect();
                running.insert(step.id.clone());
                let task_ctx = ctx.clone();
                let task_step = step.clone();
                tasks.spawn(async move {
                    let id = task_step.id.clone();
                    (id, task_ctx.execute_step(task_step, outputs, attempt).await)
                });
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (step_id, result) = joined.map_err(|_| ExecError::TaskFailed {
            deployment: plan.deployment_id.clone(),
        })?;
        running.remove(&step_id);
        // Any error (a crash, an unwritable journal) stops everything at once; dropping
        // the JoinSet aborts the other tasks, as a dying process would.
        let result = result?;
        for entry in &result.entries {
            ctx.apply(state, entry)?;
        }
        if !result.succeeded && failure.is_none() {
            if let Some(StepState::Failed { error, .. }) = state.state(&step_id) {
                failure = Some(failure_reason(&step_id, error));
            }
        }
    }
    if failure.is_none() {
        let stalled: Vec<&str> = plan
            .steps
            .iter()
            .filter(|s| !matches!(state.state(&s.id), Some(StepState::Succeeded { .. })))
            .map(|s| s.id.as_str())
            .collect();
        if !stalled.is_empty() {
            return Err(ExecError::InvalidPlan {
                deployment: plan.deployment_id.clone(),
                detail: format!("steps {} never became ready", stalled.join(", ")),
            });
        }
    }
    Ok(failure)
}

/// Clean up failed steps and undo succeeded ones, newest first.
async fn unwind(
    ctx: &Arc<Ctx>,
    state: &mut Replayed,
    reason: String,
) -> Result<DeploymentStatus, ExecError> {
    let plan = ctx.plan.clone();
    if state.unwind_reason.is_none() {
        ctx.journal_into(
            state,
            JournalEvent::UnwindStarted {
                reason: reason.clone(),
            },
        )
        .await?;
    }
    let (id, unwinding) = (
        plan.deployment_id.clone(),
        DeploymentStatus::Unwinding {
            reason: reason.clone(),
        },
    );
    ctx.store_write(move |store| store.set_status(&id, unwinding))
        .await?;
    // Steps interrupted by a crash (or waiting for a retry) will not run again: they are
    // failed, and their partial work is cleaned up below.
    for step in &plan.steps {
        let pending = match state.state(&step.id) {
            Some(StepState::Started { attempt }) => Some(*attempt),
            Some(StepState::Failed {
                attempt,
                transient: true,
                ..
            }) => Some(*attempt),
            _ => None,
        };
        if let Some(attempt) = pending {
            let error = "interrupted by the unwind; its partial work is cleaned up".to_string();
            ctx.journal_into(
                state,
                JournalEvent::StepFailed {
                    step: step.id.clone(),
                    attempt,
                    error,
                    transient: false,
                    duration_ms: 0,
                },
            )
            .await?;
        }
    }
    if let Some((id, error)) = state.steps.iter().find_map(|(id, r)| match &r.state {
        StepState::UndoFailed { error } => Some((id.clone(), error.clone())),
        _ => None,
    }) {
        return Ok(stuck(&id, &error));
    }
    let mut order: Vec<(u64, &Step)> = plan
        .steps
        .iter()
        .filter_map(|s| {
            let record = state.steps.get(&s.id)?;
            let todo = match &record.state {
                StepState::Succeeded { .. } => true,
                StepState::Failed { .. } => actions::leaves_partial_work(&s.action),
                StepState::UndoStarted { .. } => true,
                _ => false,
            };
            todo.then_some((record.completed_seq.unwrap_or(0), s))
        })
        .collect();
    order.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    for (_, step) in order {
        let output = match state.state(&step.id) {
            Some(StepState::Succeeded { output }) => Some(output.clone()),
            Some(StepState::UndoStarted { output }) => output.clone(),
            _ => None,
        };
        if !matches!(state.state(&step.id), Some(StepState::UndoStarted { .. })) {
            ctx.journal_into(
                state,
                JournalEvent::UndoStarted {
                    step: step.id.clone(),
                },
            )
            .await?;
        }
        ctx.crash(&step.id, CrashPoint::AfterUndoStarted)?;
        match ctx.undo_step(step, output.as_ref()).await {
            Ok(()) => {
                ctx.crash(&step.id, CrashPoint::AfterUndo)?;
                ctx.journal_into(
                    state,
                    JournalEvent::UndoSucceeded {
                        step: step.id.clone(),
                    },
                )
                .await?;
            }
            Err(error) => {
                ctx.journal_into(
                    state,
                    JournalEvent::UndoFailed {
                        step: step.id.clone(),
                        error: error.clone(),
                    },
                )
                .await?;
                return Ok(stuck(&step.id, &error));
            }
        }
    }
    Ok(DeploymentStatus::RolledBack { reason })
}

fn stuck(step: &str, error: &str) -> DeploymentStatus {
    DeploymentStatus::Stuck {
        reason: format!(
            "undo of step {step} failed: {error}; the environment is left half-changed and locked, fix it by hand and then release the lease"
        ),
    }
}

/// Remove the instances of retirements that are due, unless their release became current
/// again (a rollback went back to it: the retirement is cancelled) or their environment
/// has a deployment in progress (its lease is held: running, unwinding or stuck; left for
/// later, so a rollback never races the reaper). Returns how many retirements were
/// completed. A
/// provider failure leaves that retirement for next time; the first such error is returned
/// only when nothing could be completed.
pub async fn reap_retirements(
    store: &Store,
    compute: &dyn Compute,
    now_ms: u64,
) -> Result<usize, ExecError> {
    let mut completed = 0;
    let mut first_error = None;
    for retirement in store.due_retirements(now_ms)? {
        if store.current_release_id(&retirement.env)?.as_deref()
            == Some(retirement.release.as_str())
        {
            store
                .write_async(|s| s.cancel_retirement(&retirement.env, &retirement.release))
                .await?;
            continue;
        }
        // A deployment holds the environment (it may be a warm rollback to this release,
        // or an unwind putting it back): touch nothing there until the lease is released.
        if let Some(lease) = store.lease(&retirement.env)? {
            tracing::debug!(
                env = retirement.env,
                release = retirement.release,
                holder = lease.deployment_id,
                "retirement due, left for later: a deployment holds the environment"
            );
            continue;
        }
        let mut failed = false;
        for name in &retirement.instances {
            if let Err(e) = compute.remove(name).await {
                tracing::warn!(instance = name, error = %e, "could not remove a retired instance; will retry");
                failed = true;
                first_error.get_or_insert(ExecError::Provider {
                    context: format!(
                        "could not remove instance {name} of retired release {}",
                        retirement.release
                    ),
                    source: e,
                });
            }
        }
        if !failed {
            store
                .write_async(|s| s.complete_retirement(&retirement.env, &retirement.release))
                .await?;
            completed += 1;
        }
    }
    match first_error {
        Some(e) if completed == 0 => Err(e),
        _ => Ok(completed),
    }
}
