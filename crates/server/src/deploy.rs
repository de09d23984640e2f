//! Planning and starting deployments and rollbacks: shared by the local API (Unix socket),
//! the HTTP API and the web UI. Every start is authorized here against the environment it
//! turns out to target, recorded with the principal that started it, and audited.
//!
//! Where a spec comes from ([`SpecSource`]): a path of a `deploy.toml` on the control
//! plane's machine (`spec_path`, absolute), or the TOML text itself (`spec`) with the
//! directory its relative paths (build context or manifest, strategy overrides in
//! `plans/`) resolve against on the control plane's machine (`base_dir`, absolute). The
//! source of the newest deployment of each environment is remembered, so a rollback may
//! leave it out.
//!
//! Order of every plan and start: the caller's role first (nothing is read before),
//! then where the spec lives ([`crate::projects`]: registered roots), then the spec, then
//! the environment's guardrails ([`crate::guardrails`]), then the planner.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use cutover_model::{
    now_ms, DeploymentKind, DeploymentStatus, Instance, InstanceState, Plan, Release, Spec,
    Strategy,
};
use cutover_planner::{PlanInput, PlanKind};
use cutover_store::{DeploymentRecord, Lease, TypedTree};

use crate::api::Started;
use crate::auth::{Principal, Role};
use crate::{audit, ControlPlane, ServerError};

const SPEC_SOURCES_TREE: &str = "spec_sources";
const STARTERS_TREE: &str = "deployment_starters";

pub use crate::api::SpecSource;

/// Who started a deployment, kept beside it (separation of duties at approval gates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedBy {
    pub principal: String,
    /// The person behind the principal (absent in records from before owners).
    #[serde(default)]
    pub person: Option<String>,
    pub at_ms: u64,
}

/// What to go back to in a rollback: a named release, or the previous one when `None`.
pub type RollbackTo = Option<String>;

/// How a deployment treats `[container.secrets]`.
#[derive(Debug, Clone, Default)]
pub struct SecretOptions {
    /// Values of the `env://` references, as the caller's environment had them (the
    /// control plane's own environment is not the caller's). Never stored as given: each
    /// is sealed as a new version of its secret.
    pub caller_env: std::collections::BTreeMap<String, String>,
    /// A rollback whose target pins a revoked version goes ahead with the latest versions
    /// instead of refusing.
    pub use_latest: bool,
    /// Rotate: a new release of the current release's image and settings with the latest
    /// secret versions (`cutover rotate`); no build, the spec's own container settings unused.
    pub rotate: bool,
}

fn spec_sources(cp: &ControlPlane) -> Result<TypedTree<SpecSource>, ServerError> {
    Ok(cp.store.typed_tree(SPEC_SOURCES_TREE)?)
}

fn starters(cp: &ControlPlane) -> Result<TypedTree<StartedBy>, ServerError> {
    Ok(cp.store.typed_tree(STARTERS_TREE)?)
}

/// The principal recorded as the starter of `deployment_id`, if any.
pub fn started_by(
    cp: &ControlPlane,
    deployment_id: &str,
) -> Result<Option<StartedBy>, ServerError> {
    Ok(starters(cp)?.get(deployment_id)?)
}

/// The source to use: the one given, else (for rollbacks) the remembered one of `env`.
fn resolve_source(
    cp: &ControlPlane,
    source: Option<&SpecSource>,
    env: Option<&str>,
) -> Result<SpecSource, ServerError> {
    if let Some(source) = source {
        return Ok(source.clone());
    }
    if let Some(env) = env {
        if let Some(remembered) = spec_sources(cp)?.get(env)? {
            return Ok(remembered);
        }
    }
    Err(ServerError::BadRequest(
        "spec_path: a spec is required (no earlier deployment of this environment left one to reuse): give spec_path, or spec with base_dir".to_string(),
    ))
}

pub fn pick_env(spec: &Spec, env: Option<&str>) -> Result<String, ServerError> {
    let names = || {
        spec.environments
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    match env {
        Some(env) if spec.environments.contains_key(env) => Ok(env.to_string()),
        Some(env) => Err(ServerError::BadRequest(format!(
            "env: environment {env:?} is not in the spec; it has: {}",
            names()
        ))),
        None if spec.environments.len() == 1 => {
            Ok(spec.environments.keys().next().cloned().unwrap_or_default())
        }
        None => Err(ServerError::BadRequest(format!(
            "env: the spec has several environments ({}); pick one",
            names()
        ))),
    }
}

/// Strategy text: `plans/<name>.toml` next to the spec if present, else the built-in copy.
fn load_strategy(
    spec: &Spec,
    name: &str,
    plans_dir: Option<&Path>,
) -> Result<Strategy, ServerError> {
    let candidates: Vec<PathBuf> = [
        Some(spec.base_dir.join("plans")),
        plans_dir.map(Path::to_path_buf),
    ]
    .into_iter()
    .flatten()
    .map(|dir| dir.join(format!("{name}.toml")))
    .collect();
    for file in candidates {
        if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|e| ServerError::io(&file, e))?;
            return Ok(cutover_planner::parse_strategy(
                &text,
                &file.display().to_string(),
            )?);
        }
    }
    match cutover_planner::builtin_strategy(name) {
        Some(text) => Ok(cutover_planner::parse_strategy(
            text,
            &format!("plans/{name}.toml"),
        )?),
        None => Err(ServerError::BadRequest(format!(
            "strategy {name:?} not found: add plans/{name}.toml next to deploy.toml or use blue-green"
        ))),
    }
}

/// Read the spec, look at the world, and plan. `allocate` takes a new deployment number
/// (for a real start); otherwise the plan shows the number the next deployment would get.
async fn prepare(
    cp: &ControlPlane,
    spec: &Spec,
    env: &str,
    requested_by: &str,
    rollback: Option<&RollbackTo>,
    allocate: bool,
    secrets: &SecretOptions,
) -> Result<Plan, ServerError> {
    if allocate {
        if let Some(lease) = cp.store.lease(env)? {
            return Err(ServerError::Conflict(format!(
                "environment {env} is busy: deployment {} started by {} holds it; wait for it, or run `cutover resume` if it was interrupted",
                lease.deployment_id, lease.holder
            )));
        }
    }
    if let (None, false, Some(preflight)) = (rollback, secrets.rotate, &cp.providers.preflight) {
        let failures = preflight.check(spec, env).await;
        if !failures.is_empty() {
            let shown: Vec<String> = failures.iter().map(ToString::to_string).collect();
            return Err(ServerError::BadRequest(shown.join("; ")));
        }
    }
    let current = cp.store.current_release(env)?;
    // Everything that can refuse the request runs before a deployment number is taken.
    // (target, warm instances, rotate): a rollback, or a rotation (a new release of the
    // target's image with the latest secret versions).
    let rollback = match rollback {
        None if secrets.rotate => {
            let mut source = current.clone().ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "environment {env} has no current release to rotate the secrets of; deploy it first"
                ))
            })?;
            if source.container.secrets.is_empty() {
                return Err(ServerError::BadRequest(format!(
                    "release {} uses no secrets: there is nothing to rotate",
                    source.id
                )));
            }
            crate::secrets::repin_latest(&cp.store, env, &mut source.container.secrets)?;
            Some((source, Vec::new(), true))
        }
        None => None,
        Some(named) => {
            let mut target = rollback_target(cp, env, current.as_ref(), named.as_deref())?;
            // The target's pinned secret versions come back with it, unless one was
            // revoked since: then refuse, naming it, or (asked to) take the latest
            // versions in a new release of the target's image.
            let revoked = crate::secrets::revoked_pins(&cp.store, env, &target.container.secrets)?;
            let repinned = !revoked.is_empty();
            if repinned {
                if !secrets.use_latest {
                    return Err(ServerError::BadRequest(format!(
                        "release {} pins revoked secret versions ({}); roll back with --use-latest-secrets to use the latest versions, or pick another release",
                        target.id,
                        revoked.join(", ")
                    )));
                }
                crate::secrets::repin_latest(&cp.store, env, &mut target.container.secrets)?;
            }
            let warm: Vec<Instance> = if repinned {
                Vec::new()
            } else {
                cp.providers
                    .compute
                    .list(&target.app, Some(env))
                    .await?
                    .into_iter()
                    .filter(|i| i.release == target.id && i.state == InstanceState::Running)
                    .collect()
            };
            Some((target, warm, repinned))
        }
    };
    let seq = if allocate {
        cp.store.next_deployment_seq(env)?
    } else {
        cp.store.peek_deployment_seq(env)?
    };
    let deployment_id = format!("{env}-{seq}");
    let created_at_ms = now_ms();
    let (strategy_name, kind) = match &rollback {
        None => (spec.strategy.as_str(), PlanKind::Deploy),
        Some((source, _, true)) => ("rollback", PlanKind::Rotate { source }),
        Some((target, warm_instances, false)) => (
            "rollback",
            PlanKind::Rollback {
                target,
                warm_instances,
            },
        ),
    };
    let strategy = load_strategy(spec, strategy_name, cp.plans_dir.as_deref())?;
    // The route the shift will replace, read now and recorded in the plan (its undo
    // restores exactly this), so nothing about it is looked up at execution time.
    let current_route = cp.providers.traffic.route(env).await?;
    Ok(cutover_planner::plan(&PlanInput {
        spec,
        env,
        strategy: &strategy,
        deployment_id: &deployment_id,
        requested_by,
        created_at_ms,
        current: current.as_ref(),
        current_route: current_route.as_ref(),
        kind,
    })?)
}

/// The release to go back to: the one named, or the newest succeeded release other than
/// the current one.
fn rollback_target(
    cp: &ControlPlane,
    env: &str,
    current: Option<&Release>,
    named: Option<&str>,
) -> Result<Release, ServerError> {
    if let Some(id) = named {
        return cp.store.release(env, id)?.ok_or_else(|| {
            ServerError::NotFound(format!(
                "release {id} of environment {env} not found; `cutover history --env {env}` lists releases"
            ))
        });
    }
    let current_id = current.map(|r| r.id.as_str());
    for entry in cp.store.history(env)? {
        if Some(entry.release_id.as_str()) != current_id && entry.outcome == "succeeded" {
            if let Some(release) = cp.store.release(env, &entry.release_id)? {
                return Ok(release);
            }
        }
    }
    Err(ServerError::BadRequest(format!(
        "environment {env} has no earlier release to roll back to"
    )))
}

/// The role a deployment kind needs.
fn needed_role() -> Role {
    Role::Deployer
}

/// Authorize `who` before anything is read: the deployer role for `env`, or for every
/// environment when none is named (else 400 asking to name it).
fn authorize(who: &Principal, env: Option<&str>) -> Result<(), ServerError> {
    match env {
        Some(env) => who.require(needed_role(), Some(env)),
        None if who.can(needed_role(), None) => Ok(()),
        None => Err(ServerError::BadRequest(format!(
            "env: {} may deploy only to some environments; name the environment (`--env`, or `env` in the request)",
            who.name
        ))),
    }
}

/// Authorize, check where the spec lives, read it, pick the environment and hold it to the
/// environment's guardrails: the spec to plan, with its (canonical) source.
fn admitted_spec(
    cp: &ControlPlane,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    starting: bool,
    secrets: Option<&SecretOptions>,
) -> Result<Admission, ServerError> {
    authorize(who, env)?;
    let source = resolve_source(cp, source, env)?;
    let admitted = crate::projects::admit(cp, who, &source)?;
    let spec = crate::projects::load(cp, who, &admitted)?;
    let env = pick_env(&spec, env)?;
    who.require(needed_role(), Some(&env))?;
    let (mut spec, guardrails) = crate::guardrails::enforce(cp, who, spec, &env, starting)?;
    let warnings = crate::plaintext::check_env_values(&spec, &env, &admitted)?;
    // A deploy pins its secrets (a rollback uses its target's pins instead).
    if let Some(options) = secrets {
        if !spec.container.secrets.is_empty() {
            let text = match &admitted.text {
                Some(text) => Some(text.clone()),
                None => std::fs::read_to_string(&admitted.file).ok(),
            };
            let located = text.as_deref().map(|text| crate::secrets::SpecText {
                text,
                path: &admitted.file,
            });
            crate::secrets::pin_spec(
                cp,
                who,
                &mut spec,
                &env,
                &options.caller_env,
                located.as_ref(),
                starting,
            )?;
        }
    }
    Ok(Admission {
        spec,
        env,
        source: admitted.source,
        guardrails,
        warnings,
    })
}

/// A spec admitted for planning: the spec (secrets pinned), its environment, its
/// canonical source, the guardrails version in force and warnings for the caller.
struct Admission {
    spec: Spec,
    env: String,
    source: SpecSource,
    guardrails: Option<u64>,
    warnings: Vec<String>,
}

/// Plan without starting anything (what `cutover plan` shows). `env_hint` is the
/// environment asked for (a rollback's environment when no source is given).
pub async fn plan(
    cp: &ControlPlane,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    rollback: Option<&RollbackTo>,
) -> Result<Plan, ServerError> {
    plan_with(cp, who, source, env, rollback, &SecretOptions::default()).await
}

/// [`plan`] with the caller's secret options.
pub async fn plan_with(
    cp: &ControlPlane,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    rollback: Option<&RollbackTo>,
    secrets: &SecretOptions,
) -> Result<Plan, ServerError> {
    let pin = (rollback.is_none() && !secrets.rotate).then_some(secrets);
    let Admission { spec, env, .. } = admitted_spec(cp, who, source, env, false, pin)?;
    prepare(cp, &spec, &env, &who.name, rollback, false, secrets).await
}

/// Plan and start a deployment (or a rollback when `rollback` is `Some`) as `who`; runs it
/// in the background. Refused with 403 when `who` may not deploy to the environment, and
/// 409 when another deployment holds it.
pub async fn start(
    cp: &Arc<ControlPlane>,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    rollback: Option<&RollbackTo>,
) -> Result<Started, ServerError> {
    start_with(cp, who, source, env, rollback, &SecretOptions::default()).await
}

/// [`start`] with the caller's secret options.
pub async fn start_with(
    cp: &Arc<ControlPlane>,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    rollback: Option<&RollbackTo>,
    secrets: &SecretOptions,
) -> Result<Started, ServerError> {
    let pin = (rollback.is_none() && !secrets.rotate).then_some(secrets);
    let Admission {
        spec,
        env,
        source,
        guardrails,
        warnings,
    } = admitted_spec(cp, who, source, env, true, pin)?;
    let plan = prepare(cp, &spec, &env, &who.name, rollback, true, secrets).await?;
    let lease = Lease {
        deployment_id: plan.deployment_id.clone(),
        holder: plan.requested_by.clone(),
        acquired_at_ms: now_ms(),
    };
    let record = DeploymentRecord::from_plan(&plan);
    let starter = StartedBy {
        principal: who.name.clone(),
        person: Some(who.person.clone()),
        at_ms: now_ms(),
    };
    // One durable write, flushed off the async workers: the lease, who started it, the
    // plan and its record, and where its spec came from.
    cp.store
        .write_async(|store| {
            store.acquire_lease(&plan.env, lease)?;
            let saved = store
                .typed_tree::<StartedBy>(STARTERS_TREE)
                .and_then(|t| t.insert(&plan.deployment_id, &starter))
                .and_then(|()| store.save_plan(&plan, &record))
                .and_then(|()| {
                    store
                        .typed_tree::<SpecSource>(SPEC_SOURCES_TREE)?
                        .insert(&plan.env, &source)
                });
            if let Err(e) = saved {
                store.release_lease(&plan.env, &plan.deployment_id)?;
                return Err(e);
            }
            Ok(())
        })
        .await?;
    let action = match &plan.kind {
        DeploymentKind::Deploy => "deploy",
        DeploymentKind::Rollback { .. } => "rollback",
        DeploymentKind::Rotate { .. } => "rotate",
    };
    let audited = audit::record_async(
        &cp.store,
        &who.name,
        action,
        &plan.deployment_id,
        json!({
            "env": plan.env,
            "release_id": plan.release_id,
            "previous_release": plan.previous_release,
            "plan_digest": plan.digest,
            "spec_digest": plan.spec_digest,
            "spec_path": source.spec_path,
            "guardrails_version": guardrails,
        }),
    )
    .await;
    if let Err(e) = audited {
        // Nothing ran yet: the deployment ends before its first step and frees the
        // environment, so an unaudited deployment never runs (nor resumes at restart).
        let id = plan.deployment_id.clone();
        let env = plan.env.clone();
        cp.store
            .write_async(move |store| {
                store.set_status(
                    &id,
                    DeploymentStatus::RolledBack {
                        reason: "not started: the audit log could not record it".to_string(),
                    },
                )?;
                store.release_lease(&env, &id)?;
                Ok(())
            })
            .await?;
        return Err(match e {
            ServerError::AuditSink(_) => {
                ServerError::AuditSink(format!("deployment {} was not started", plan.deployment_id))
            }
            other => other,
        });
    }
    cp.spawn_run(&plan.deployment_id);
    Ok(Started {
        deployment_id: plan.deployment_id.clone(),
        plan_digest: plan.digest.clone(),
        env: plan.env.clone(),
        release_id: plan.release_id.clone(),
        warnings,
    })
}
