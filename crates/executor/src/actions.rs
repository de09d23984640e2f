//! What each step kind does, and how it is undone. Every function is idempotent: running
//! it again after a crash finds its earlier work instead of doing it twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cutover_model::{
    now_ms, Action, ApprovalSpec, Backend, DeploymentKind, ImageInfo, ImageSource, Instance,
    InstanceState, JournalEvent, LiveCause, LiveChange, Probe, ProviderError, Release, Route,
    SignRequest, Step, StepOutput, SupplyChain,
};
use cutover_store::{HistoryEntry, Retirement, StoreError, StoreEvent};
use tokio::sync::broadcast;

use crate::{approval, Ctx};

/// Tree holding the route a shift found before it changed anything, keyed by the step's
/// idempotency key. Written (and flushed) before `set_route`, so a re-run after a crash
/// still knows what to put back.
pub(crate) const SHIFT_PREVIOUS_TREE: &str = "executor_shift_previous";

/// A store error keeps its class: I/O trouble is retried, corruption is not.
fn store_error(e: StoreError) -> ProviderError {
    e.into()
}

fn instance_output<'a>(
    outputs: &'a HashMap<String, StepOutput>,
    step: &str,
) -> Result<&'a Instance, ProviderError> {
    match outputs.get(step) {
        Some(StepOutput::Instance(instance)) => Ok(instance),
        _ => Err(ProviderError::permanent(format!(
            "the plan is inconsistent: step {step} has no instance output; plan the deployment again"
        ))),
    }
}

async fn resolve_image(
    ctx: &Ctx,
    source: &ImageSource,
    outputs: &HashMap<String, StepOutput>,
    lookup: bool,
) -> Result<ImageInfo, ProviderError> {
    match source {
        ImageSource::Step { step } => match outputs.get(step) {
            Some(StepOutput::Image(image)) => Ok(image.clone()),
            _ => Err(ProviderError::permanent(format!(
                "the plan is inconsistent: step {step} has no image output; plan the deployment again"
            ))),
        },
        ImageSource::Pinned { id, tag } if lookup => {
            match ctx.providers.images.inspect_image(id).await? {
                Some(image) => Ok(image),
                None => Err(ProviderError::permanent(format!(
                    "pinned image {id} ({tag}) no longer exists; rebuild it or pick another release"
                ))),
            }
        }
        ImageSource::Pinned { id, tag } => Ok(ImageInfo {
            id: id.clone(),
            tag: tag.clone(),
            warning: None,
        }),
    }
}

/// Run `step`'s action once.
pub(crate) async fn perform(
    ctx: &Ctx,
    step: &Step,
    outputs: &HashMap<String, StepOutput>,
) -> Result<StepOutput, ProviderError> {
    let plan = &ctx.plan;
    let p = &ctx.providers;
    match &step.action {
        Action::Build {
            tag,
            source,
            labels,
        } => Ok(StepOutput::Image(p.images.build(tag, source, labels).await?)),
        Action::Pull { reference, tag } => {
            let supply = supply(ctx)?;
            let pulled = p.images.pull(reference, tag).await?;
            supply
                .import(&pulled.image, reference, &pulled.attestations)
                .await?;
            Ok(StepOutput::Image(pulled.image))
        }
        Action::Scan {
            image,
            app,
            env,
            gate,
        } => {
            let supply = supply(ctx)?;
            let image = resolve_image(ctx, image, outputs, true).await?;
            let outcome = supply.scan(&image, app, env, gate).await?;
            if outcome.passed {
                Ok(StepOutput::Scanned {
                    summary: outcome.summary,
                })
            } else {
                let reasons = if outcome.reasons.is_empty() {
                    outcome.summary
                } else {
                    outcome.reasons.join("; ")
                };
                Err(ProviderError::permanent(format!(
                    "image {} failed the {env} gate: {reasons}",
                    image.id
                )))
            }
        }
        Action::Sign {
            image,
            app,
            env,
            key,
            spec_digest,
            source,
            invoked_by,
        } => {
            let supply = supply(ctx)?;
            let image = resolve_image(ctx, image, outputs, true).await?;
            let request = SignRequest {
                app: app.clone(),
                env: env.clone(),
                key: key.clone(),
                spec_digest: spec_digest.clone(),
                plan_digest: plan.digest.clone(),
                deployment_id: plan.deployment_id.clone(),
                source: source.clone(),
                invoked_by: invoked_by.clone(),
            };
            let key_id = supply.sign(&image, &request).await?;
            Ok(StepOutput::Signed { key_id })
        }
        Action::Verify {
            image,
            env,
            trusted_keys,
        } => {
            let supply = supply(ctx)?;
            let image = resolve_image(ctx, image, outputs, true).await?;
            // Verification fails closed: whatever went wrong, nothing runs unverified.
            match supply.verify(&image, env, trusted_keys).await {
                Ok(key_ids) => Ok(StepOutput::Verified { key_ids }),
                Err(e) => Err(ProviderError::permanent(e.message)),
            }
        }
        Action::Approval { image, gate } => {
            let image = resolve_image(ctx, image, outputs, false).await?;
            wait_for_approval(ctx, step, &image, gate).await
        }
        Action::Provision { instance } => {
            let image = resolve_image(ctx, &instance.image, outputs, true).await?;
            Ok(StepOutput::Instance(
                p.compute.provision(instance, &image).await?,
            ))
        }
        Action::Adopt { name, release } => match p.compute.inspect(name).await? {
            Some(instance) if instance.state == InstanceState::Running => {
                Ok(StepOutput::Instance(instance))
            }
            Some(instance) => Err(ProviderError::permanent(format!(
                "instance {name} of release {release} is not running (state {:?}); plan a cold rollback instead",
                instance.state
            ))),
            None => Err(ProviderError::permanent(format!(
                "instance {name} of release {release} no longer exists; plan a cold rollback instead"
            ))),
        },
        Action::HealthCheck {
            instance_step,
            health,
        } => {
            let instance = instance_output(outputs, instance_step)?;
            health_check(ctx, instance, health).await
        }
        Action::ShiftTraffic {
            listen,
            release,
            instance_steps,
            weight,
            response_timeout,
            restore,
        } => {
            let mut addrs = Vec::new();
            for s in instance_steps {
                addrs.push(instance_output(outputs, s)?.addr.clone());
            }
            let previous = match restore.recorded() {
                Some(recorded) => recorded.cloned(),
                None => shift_previous(ctx, step).await?,
            };
            let mut backends = vec![Backend {
                release: release.clone(),
                addrs,
                weight: u32::from((*weight).min(100)),
            }];
            if *weight < 100 {
                if let Some(prev) = &previous {
                    let primary = prev
                        .backends
                        .iter()
                        .filter(|b| b.release != *release)
                        .max_by_key(|b| b.weight);
                    if let Some(b) = primary {
                        backends.push(Backend {
                            release: b.release.clone(),
                            addrs: b.addrs.clone(),
                            weight: 100 - u32::from(*weight),
                        });
                    }
                }
            }
            let route = Route {
                env: plan.env.clone(),
                listen: listen.clone(),
                backends,
                response_timeout: *response_timeout,
            };
            p.traffic.set_route(&route).await?;
            Ok(StepOutput::Shifted { previous })
        }
        Action::Drain {
            listen,
            release,
            timeout,
        } => match release {
            Some(release) => {
                let report = p.traffic.drain(listen, release, *timeout).await?;
                Ok(StepOutput::Drained {
                    in_flight_left: report.in_flight_left,
                })
            }
            None => Ok(StepOutput::Drained { in_flight_left: 0 }),
        },
        Action::Retire {
            release,
            instances,
            after,
        } => {
            let Some(release) = release.clone() else {
                return Ok(StepOutput::None);
            };
            let (plan, instances, after) = (plan.clone(), instances.clone(), *after);
            ctx.store
                .write_async(move |store| {
                    if let Some(existing) = store.retirement(&plan.env, &release)? {
                        if existing.deployment_id == plan.deployment_id {
                            return Ok(StepOutput::RetireScheduled {
                                at_ms: existing.due_at_ms,
                            });
                        }
                    }
                    let due = now_ms().saturating_add(after.as_millis() as u64);
                    store.schedule_retirement(&Retirement {
                        env: plan.env.clone(),
                        release,
                        instances,
                        due_at_ms: due,
                        deployment_id: plan.deployment_id.clone(),
                    })?;
                    Ok(StepOutput::RetireScheduled { at_ms: due })
                })
                .await
                .map_err(store_error)
        }
        Action::Record {
            release,
            image,
            instance_steps,
            container,
            health,
            replicas,
        } => {
            let mut instances = Vec::new();
            for s in instance_steps {
                instances.push(instance_output(outputs, s)?.name.clone());
            }
            let image = resolve_image(ctx, image, outputs, false).await?;
            let (plan, release) = (plan.clone(), release.clone());
            let (container, health, replicas) = (container.clone(), health.clone(), *replicas);
            ctx.store
                .write_async(move |store| {
                    let image_id = image.id.clone();
                    if store.release(&plan.env, &release)?.is_none() {
                        store.put_release(&Release {
                            id: release.clone(),
                            app: plan.app.clone(),
                            env: plan.env.clone(),
                            deployment_id: plan.deployment_id.clone(),
                            image,
                            plan_digest: plan.digest.clone(),
                            spec_digest: plan.spec_digest.clone(),
                            created_by: plan.requested_by.clone(),
                            created_at_ms: now_ms(),
                            replicas,
                            container,
                            health,
                            instances,
                        })?;
                    }
                    store.set_current(&plan.env, &release)?;
                    // When it went live: what soak guardrails and image paths read.
                    store.note_live(&LiveChange {
                        env: plan.env.clone(),
                        release_id: Some(release.clone()),
                        image_id: Some(image_id),
                        deployment_id: plan.deployment_id.clone(),
                        cause: match plan.kind {
                            // A rotation is a new release of the same image: a deploy.
                            DeploymentKind::Deploy
                            | DeploymentKind::Build
                            | DeploymentKind::Rotate { .. } => LiveCause::Deploy,
                            DeploymentKind::Promote { .. } => LiveCause::Promote,
                            DeploymentKind::Rollback { .. } => LiveCause::Rollback,
                        },
                        at_ms: now_ms(),
                    })?;
                    store.record_history(
                        &plan.env,
                        &HistoryEntry {
                            release_id: release.clone(),
                            deployment_id: plan.deployment_id.clone(),
                            kind: plan.kind.clone(),
                            outcome: "recorded".to_string(),
                            at_ms: now_ms(),
                            by: plan.requested_by.clone(),
                        },
                    )
                })
                .await
                .map_err(store_error)?;
            Ok(StepOutput::Recorded)
        }
    }
}

fn supply(ctx: &Ctx) -> Result<&dyn SupplyChain, ProviderError> {
    ctx.providers.supply.as_deref().ok_or_else(|| {
        ProviderError::permanent(
            "the control plane has no supply chain configured, so it cannot scan, sign or verify images; configure one or plan without supply-chain steps",
        )
    })
}

/// When approval step `step` first started (unix ms): the timeout counts from there, so a
/// restart of the control plane does not reset it.
fn first_started_ms(ctx: &Ctx, step: &Step) -> Result<u64, ProviderError> {
    let journal = ctx
        .store
        .journal(&ctx.plan.deployment_id)
        .map_err(store_error)?;
    Ok(journal
        .iter()
        .find_map(|e| match &e.event {
            JournalEvent::StepStarted { step: s, .. } if *s == step.id => Some(e.at_ms),
            _ => None,
        })
        .unwrap_or_else(now_ms))
}

/// The shortest time the approval gate waits between two reads of the store when no
/// event arrives.
pub const MIN_APPROVAL_REREAD: Duration = Duration::from_secs(1);

/// Wait until enough valid approvals name this plan and image, a valid rejection arrives,
/// or the gate times out. The gate reads the approvals when it starts, then again on each
/// [`StoreEvent::Approval`] for its deployment (or when its receiver lagged); between
/// events it sleeps, waking at most every `approval_poll` (at least a second) as a safety
/// net.
async fn wait_for_approval(
    ctx: &Ctx,
    step: &Step,
    image: &ImageInfo,
    gate: &ApprovalSpec,
) -> Result<StepOutput, ProviderError> {
    let plan = &ctx.plan;
    // Subscribed before the first read, so a decision recorded in between is not missed.
    let mut events = ctx.store.subscribe();
    let needed = approval::required(gate.required);
    let timeout_ms = u64::try_from(gate.timeout.as_millis()).unwrap_or(u64::MAX);
    let deadline = first_started_ms(ctx, step)?.saturating_add(timeout_ms);
    let reread = ctx.config.approval_poll.max(MIN_APPROVAL_REREAD);
    let mut logged = false;
    loop {
        match ctx.store.approvals(&plan.deployment_id) {
            Ok(approvals) => {
                let tally = approval::tally(plan, &image.id, &approvals);
                if let Some(rejection) = tally.rejected {
                    let comment = rejection.comment.trim();
                    return Err(ProviderError::permanent(if comment.is_empty() {
                        format!("rejected by {}", rejection.by)
                    } else {
                        format!("rejected by {}: {comment}", rejection.by)
                    }));
                }
                if tally.approved_by.len() >= needed {
                    return Ok(StepOutput::Approved {
                        by: tally.approved_by,
                    });
                }
            }
            // The wait goes on; a store that stays broken shows up everywhere else.
            Err(e) => {
                tracing::warn!(deployment = plan.deployment_id, error = %e, "could not read approvals, will try again")
            }
        }
        let now = now_ms();
        if now >= deadline {
            return Err(ProviderError::permanent(format!(
                "approval timed out after {}; the deployment was rejected",
                approval::format_duration(gate.timeout)
            )));
        }
        if !logged {
            tracing::info!(
                deployment = plan.deployment_id,
                step = step.id,
                image = image.id,
                plan_digest = plan.digest,
                needed,
                "waiting for approval"
            );
            logged = true;
        }
        let wake = tokio::time::Instant::now() + reread.min(Duration::from_millis(deadline - now));
        wait_for_decision(&mut events, &plan.deployment_id, wake).await;
    }
}

/// Sleep until an approval of `deployment_id` is recorded, the receiver lagged (some
/// events were lost, so the caller must look), or `wake`.
async fn wait_for_decision(
    events: &mut broadcast::Receiver<StoreEvent>,
    deployment_id: &str,
    wake: tokio::time::Instant,
) {
    loop {
        match tokio::time::timeout_at(wake, events.recv()).await {
            Ok(Ok(StoreEvent::Approval { deployment_id: id })) if id == deployment_id => return,
            Ok(Ok(_)) => continue,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return,
            // No sender left: nothing more will arrive; sleep out the time.
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                tokio::time::sleep_until(wake).await;
                return;
            }
            Err(_elapsed) => return,
        }
    }
}

/// The route before this shift, for plans saved before the planner recorded it: read
/// once, persisted, and reused by re-runs.
async fn shift_previous(ctx: &Ctx, step: &Step) -> Result<Option<Route>, ProviderError> {
    let tree = ctx
        .store
        .typed_tree::<Option<Route>>(SHIFT_PREVIOUS_TREE)
        .map_err(store_error)?;
    if let Some(previous) = tree.get(&step.idempotency_key).map_err(store_error)? {
        return Ok(previous);
    }
    let current = ctx.providers.traffic.route(&ctx.plan.env).await?;
    let stored = tree
        .insert_if_absent(&step.idempotency_key, &current)
        .map_err(store_error)?;
    ctx.store.flush_async().await.map_err(store_error)?;
    Ok(stored)
}

async fn health_check(
    ctx: &Ctx,
    instance: &Instance,
    health: &cutover_model::HealthSpec,
) -> Result<StepOutput, ProviderError> {
    let start = Instant::now();
    let mut healthy = 0u32;
    let mut unhealthy = 0u32;
    let mut answered = false;
    let mut probes = 0u32;
    let mut last_reason = "no probe answered yet".to_string();
    let name = &instance.name;
    let mut last_seen = instance.clone();
    loop {
        if start.elapsed() > health.deadline {
            return Err(explained(
                ctx,
                &last_seen,
                format!(
                    "instance {name} did not become healthy within {}ms: {last_reason}",
                    health.deadline.as_millis()
                ),
            )
            .await);
        }
        let current = match ctx.providers.compute.inspect(name).await? {
            Some(current) => current,
            None => {
                return Err(ProviderError::permanent(format!(
                    "instance {name} disappeared during its health check; check the host"
                )))
            }
        };
        last_seen = current.clone();
        let crash_looping = matches!(
            current.state,
            InstanceState::Exited { .. } | InstanceState::Restarting
        ) || current.restart_count > 0;
        if crash_looping {
            return Err(explained(
                ctx,
                &current,
                format!(
                    "instance {name} is crash-looping (restarted {} times, state {:?})",
                    current.restart_count, current.state
                ),
            )
            .await);
        }
        probes += 1;
        match ctx
            .providers
            .health
            .probe(&current, &health.path, health.timeout)
            .await
        {
            Probe::Healthy => {
                answered = true;
                unhealthy = 0;
                healthy += 1;
                if healthy >= health.healthy_threshold.max(1) {
                    return Ok(StepOutput::Healthy { probes });
                }
            }
            Probe::Unhealthy(reason) => {
                healthy = 0;
                last_reason = reason;
                if answered {
                    unhealthy += 1;
                    if unhealthy >= health.unhealthy_threshold.max(1) {
                        return Err(explained(
                            ctx,
                            &current,
                            format!(
                                "instance {name} became unhealthy ({unhealthy} failed probes in a row): {last_reason}"
                            ),
                        )
                        .await);
                    }
                }
            }
        }
        tokio::time::sleep(health.interval.max(Duration::from_millis(1))).await;
    }
}

/// A failed health check's error: `message`, then what the provider can tell about the
/// instance (state, exit code, OOM kill, last log lines), else a pointer to its logs.
async fn explained(ctx: &Ctx, instance: &Instance, message: String) -> ProviderError {
    match ctx.providers.compute.diagnose(instance).await {
        Some(diagnosis) => ProviderError::permanent(format!("{message}\n  {}", diagnosis.render())),
        None => ProviderError::permanent(format!("{message}; check its logs")),
    }
}

/// Whether a failed step of this action may have left partial work to clean up.
pub(crate) fn leaves_partial_work(action: &Action) -> bool {
    matches!(
        action,
        Action::Provision { .. }
            | Action::ShiftTraffic { .. }
            | Action::Retire { .. }
            | Action::Record { .. }
    )
}

/// Undo `step` (when `output` is its output) or clean up after its failure (`None`).
pub(crate) async fn undo(
    ctx: &Ctx,
    step: &Step,
    output: Option<&StepOutput>,
) -> Result<(), ProviderError> {
    let plan = &ctx.plan;
    let p = &ctx.providers;
    match &step.action {
        // Scan results and attestations are facts about an image, kept beside it; an
        // approval is a fact about the plan. None of them is undone.
        Action::Build { .. }
        | Action::Pull { .. }
        | Action::Scan { .. }
        | Action::Sign { .. }
        | Action::Verify { .. }
        | Action::Approval { .. }
        | Action::Adopt { .. }
        | Action::HealthCheck { .. }
        | Action::Drain { .. } => Ok(()),
        Action::Provision { instance } => p.compute.remove(&instance.name).await,
        Action::ShiftTraffic { restore, .. } => {
            let previous = match (restore.recorded(), output) {
                // Planned: put back the route the environment had when it was planned.
                (Some(recorded), _) => Some(recorded.cloned()),
                (None, Some(StepOutput::Shifted { previous })) => Some(previous.clone()),
                (None, _) => ctx
                    .store
                    .typed_tree::<Option<Route>>(SHIFT_PREVIOUS_TREE)
                    .map_err(store_error)?
                    .get(&step.idempotency_key)
                    .map_err(store_error)?,
            };
            match previous {
                // The shift never read the route, so it never changed it.
                None => Ok(()),
                Some(Some(route)) => p.traffic.set_route(&route).await.map(|_| ()),
                Some(None) => p.traffic.remove_route(&plan.env).await.map(|_| ()),
            }
        }
        Action::Retire { release, .. } => {
            let Some(release) = release else {
                return Ok(());
            };
            ctx.store
                .write_async(|store| {
                    let mine = store
                        .retirement(&plan.env, release)?
                        .is_some_and(|r| r.deployment_id == plan.deployment_id);
                    if mine {
                        store.cancel_retirement(&plan.env, release)?;
                    }
                    Ok(())
                })
                .await
                .map_err(store_error)
        }
        Action::Record { release, .. } => ctx
            .store
            .write_async(|store| {
                let current = store.current_release_id(&plan.env)?;
                if current.as_deref() == Some(release.as_str()) {
                    match &plan.previous_release {
                        Some(previous) => store.set_current(&plan.env, previous)?,
                        None => store.clear_current(&plan.env)?,
                    }
                }
                // Noted even when a re-run finds the current pointer already restored:
                // `note_live` skips a change it has.
                let recorded_live = store
                    .live_changes(Some(&plan.env))?
                    .last()
                    .is_some_and(|c| c.deployment_id == plan.deployment_id);
                if recorded_live {
                    let previous = match &plan.previous_release {
                        Some(previous) => store.release(&plan.env, previous)?,
                        None => None,
                    };
                    store.note_live(&LiveChange {
                        env: plan.env.clone(),
                        release_id: previous.as_ref().map(|r| r.id.clone()),
                        image_id: previous.map(|r| r.image.id),
                        deployment_id: plan.deployment_id.clone(),
                        cause: LiveCause::Undo,
                        at_ms: now_ms(),
                    })?;
                }
                if plan.kind.creates_release() {
                    let created_here = store
                        .release(&plan.env, release)?
                        .is_some_and(|r| r.deployment_id == plan.deployment_id);
                    if created_here {
                        store.remove_release(&plan.env, release)?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(store_error),
    }
}
