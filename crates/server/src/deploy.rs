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
    now_ms, DeploymentStatus, Instance, InstanceState, Plan, Release, Spec, Strategy,
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

/// What a deploy request may change about the spec's deploy: a prebuilt image instead of
/// the spec's build, or a build-only plan (and who asked for it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployOptions {
    /// `image` of the request: `HOST[:PORT]/REPO@sha256:<hex>`.
    pub image: Option<String>,
    pub build_only: bool,
    pub invoked_by: Option<String>,
    /// Values of the `env://` secret references, as the caller's environment had them
    /// (the control plane's own environment is not the caller's). Never stored as given:
    /// each is sealed as a new version of its secret.
    pub caller_env: std::collections::BTreeMap<String, String>,
    /// A rollback whose target pins a revoked secret version goes ahead with the latest
    /// versions (as a new release of its image) instead of refusing.
    pub use_latest_secrets: bool,
    /// Rotate: a new release of the current release's image and settings with the latest
    /// secret versions (`cutover rotate`); no build.
    pub secrets_only: bool,
}

impl DeployOptions {
    /// The options of an API request body.
    pub fn of(req: &cutover_api::PlanRequest) -> DeployOptions {
        DeployOptions {
            image: req.image.clone(),
            build_only: req.build_only,
            invoked_by: req.invoked_by.clone(),
            caller_env: req.secret_env.clone(),
            use_latest_secrets: req.use_latest_secrets,
            secrets_only: req.secrets_only,
        }
    }

    /// Checked against the request's other fields; the image parsed.
    fn check(&self, intent: Intent<'_>) -> Result<Option<cutover_model::ImageRef>, ServerError> {
        match intent {
            Intent::Rollback(_) if self.image.is_some() || self.build_only => {
                return Err(ServerError::BadRequest(
                    "rollback: a rollback returns to a recorded release; leave out image and build_only"
                        .to_string(),
                ));
            }
            Intent::Promote(_) if self.image.is_some() || self.build_only => {
                return Err(ServerError::BadRequest(
                    "promote: a promotion deploys the image of the release it names; leave out image and build_only"
                        .to_string(),
                ));
            }
            _ => {}
        }
        if let Some(by) = &self.invoked_by {
            let ok = by.len() <= 512
                && (by.starts_with("https://") || by.starts_with("http://"))
                && !by.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok || !self.build_only {
                return Err(ServerError::BadRequest(
                    "invoked_by: give the CI job's URL (http(s)://…, at most 512 characters) with build_only".to_string(),
                ));
            }
        }
        self.image
            .as_deref()
            .map(|text| {
                cutover_model::ImageRef::parse(text)
                    .map_err(|e| ServerError::BadRequest(format!("image: {e}")))
            })
            .transpose()
    }
}

pub use crate::api::Promote;

/// What a plan or start does.
#[derive(Debug, Clone, Copy)]
pub enum Intent<'a> {
    /// Build and roll out a new release.
    Deploy,
    /// Go back to a release of the environment.
    Rollback(&'a RollbackTo),
    /// Roll out the image of a release of another environment, without a build.
    Promote(&'a Promote),
}

impl<'a> Intent<'a> {
    fn of_rollback(rollback: Option<&'a RollbackTo>) -> Intent<'a> {
        match rollback {
            Some(to) => Intent::Rollback(to),
            None => Intent::Deploy,
        }
    }
}

fn spec_sources(cp: &ControlPlane) -> Result<TypedTree<SpecSource>, ServerError> {
    Ok(cp.store.typed_tree(SPEC_SOURCES_TREE)?)
}

fn starters(cp: &ControlPlane) -> Result<TypedTree<StartedBy>, ServerError> {
    Ok(cp.store.typed_tree(STARTERS_TREE)?)
}

/// The spec source the newest deployment of `env` used, if any.
pub fn remembered_source(cp: &ControlPlane, env: &str) -> Result<Option<SpecSource>, ServerError> {
    Ok(spec_sources(cp)?.get(env)?)
}

/// The principal recorded as the starter of `deployment_id`, if any.
pub fn started_by(
    cp: &ControlPlane,
    deployment_id: &str,
) -> Result<Option<StartedBy>, ServerError> {
    Ok(starters(cp)?.get(deployment_id)?)
}

/// The source to use: the one given, else the remembered one of `env`, else (for a
/// promotion) that of the source environment (a spec names every environment).
fn resolve_source(
    cp: &ControlPlane,
    source: Option<&SpecSource>,
    env: Option<&str>,
    also: Option<&str>,
) -> Result<SpecSource, ServerError> {
    if let Some(source) = source {
        return Ok(source.clone());
    }
    for env in [env, also].into_iter().flatten() {
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
    intent: Intent<'_>,
    allocate: bool,
    options: &DeployOptions,
) -> Result<Plan, ServerError> {
    let rollback = match intent {
        Intent::Rollback(to) => Some(to),
        _ => None,
    };
    let promoted = match intent {
        Intent::Promote(promote) => Some(promoted_release(cp, env, promote)?),
        _ => None,
    };
    // Soak guardrails, before anything is planned (rollbacks are exempt: they restore a
    // release this environment already ran, and must stay the fast way back).
    if rollback.is_none() && !options.build_only {
        crate::guardrails::enforce_soak(cp, env, promoted.as_ref().map(|r| &r.image.id))?;
    }
    if allocate {
        if let Some(lease) = cp.store.lease(env)? {
            return Err(ServerError::Conflict(format!(
                "environment {env} is busy: deployment {} started by {} holds it; wait for it, or run `cutover resume` if it was interrupted",
                lease.deployment_id, lease.holder
            )));
        }
    }
    if let (None, false, Some(preflight)) =
        (rollback, options.secrets_only, &cp.providers.preflight)
    {
        let mut failures = preflight.check(spec, env).await;
        if promoted.is_some() {
            // A promotion builds nothing: its build source need not exist here.
            failures.retain(|f| !f.field.starts_with("build"));
        }
        if !failures.is_empty() {
            let shown: Vec<String> = failures.iter().map(ToString::to_string).collect();
            return Err(ServerError::BadRequest(shown.join("; ")));
        }
    }
    let current = cp.store.current_release(env)?;
    // Everything that can refuse the request runs before a deployment number is taken.
    // A rotation: a new release of the current release's image with the latest secret
    // versions; or a rollback whose target pins a revoked version, when asked.
    let mut rotate: Option<Release> = None;
    if options.secrets_only {
        if promoted.is_some() || rollback.is_some() || options.build_only {
            return Err(ServerError::BadRequest(
                "secrets_only: a rotation is neither a rollback, a promotion nor a build; leave those out".to_string(),
            ));
        }
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
        rotate = Some(source);
    }
    let rollback = match rollback {
        None => None,
        Some(named) => {
            let mut target = rollback_target(cp, env, current.as_ref(), named.as_deref())?;
            // The target's pinned secret versions come back with it, unless one was
            // revoked since: then refuse, naming it, or (asked to) take the latest
            // versions in a new release of the target's image.
            let revoked = crate::secrets::revoked_pins(&cp.store, env, &target.container.secrets)?;
            if revoked.is_empty() {
                let warm: Vec<Instance> = cp
                    .providers
                    .compute
                    .list(&target.app, Some(env))
                    .await?
                    .into_iter()
                    .filter(|i| i.release == target.id && i.state == InstanceState::Running)
                    .collect();
                Some((target, warm))
            } else if options.use_latest_secrets {
                crate::secrets::repin_latest(&cp.store, env, &mut target.container.secrets)?;
                rotate = Some(target);
                None
            } else {
                return Err(ServerError::BadRequest(format!(
                    "release {} pins revoked secret versions ({}); roll back with --use-latest-secrets to use the latest versions, or pick another release",
                    target.id,
                    revoked.join(", ")
                )));
            }
        }
    };
    let seq = if allocate {
        cp.store.next_deployment_seq(env)?
    } else {
        cp.store.peek_deployment_seq(env)?
    };
    let deployment_id = format!("{env}-{seq}");
    let created_at_ms = now_ms();
    let (strategy_name, kind) = match (&rollback, &promoted) {
        (None, _) if rotate.is_some() => (
            "rollback",
            PlanKind::Rotate {
                source: rotate.as_ref().expect("checked just now"),
            },
        ),
        (None, Some(source)) => (spec.strategy.as_str(), PlanKind::Promote { source }),
        (None, None) if options.build_only => (
            spec.strategy.as_str(),
            PlanKind::Build {
                invoked_by: options.invoked_by.as_deref(),
            },
        ),
        (None, None) => (spec.strategy.as_str(), PlanKind::Deploy),
        (Some((target, warm_instances)), _) => (
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

/// The release a promotion to `env` deploys the image of.
fn promoted_release(
    cp: &ControlPlane,
    env: &str,
    promote: &Promote,
) -> Result<Release, ServerError> {
    let from_env = promote.source_env().ok_or_else(|| {
        ServerError::BadRequest(format!(
            "promote.from_env: release id {:?} does not name its environment (like `staging-7`); give the source environment (`--from`)",
            promote.release
        ))
    })?;
    if from_env == env {
        return Err(ServerError::BadRequest(format!(
            "promote: release {} is a release of {env} already; promote it to another environment, or roll back to it with `cutover rollback --env {env} --to {}`",
            promote.release, promote.release
        )));
    }
    cp.store.release(&from_env, &promote.release)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "release {} of environment {from_env} not found; `cutover history --env {from_env}` lists releases",
            promote.release
        ))
    })
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
#[allow(clippy::too_many_arguments)]
fn admitted_spec(
    cp: &ControlPlane,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    intent: Intent<'_>,
    starting: bool,
    image: Option<cutover_model::ImageRef>,
    secrets: Option<&DeployOptions>,
) -> Result<Admission, ServerError> {
    authorize(who, env)?;
    // A promotion reads a release of its source environment: the caller must at least
    // see that environment (and deploy to the target), checked before anything is read.
    let from_env = match intent {
        Intent::Promote(promote) => {
            if env.is_none() {
                return Err(ServerError::BadRequest(
                    "env: name the environment to promote to (`--to`)".to_string(),
                ));
            }
            let from_env = promote.source_env();
            match &from_env {
                Some(from) => who.require(Role::Viewer, Some(from))?,
                None => {
                    return Err(ServerError::BadRequest(format!(
                        "promote.from_env: release id {:?} does not name its environment (like `staging-7`); give the source environment (`--from`)",
                        promote.release
                    )))
                }
            }
            from_env
        }
        _ => None,
    };
    let mut source = resolve_source(cp, source, env, from_env.as_deref())?;
    // A spec sent as text without base_dir and deployed by image: its `[build]` (a source on
    // the sender's machine) is replaced by the image before anything looks at it, lines kept.
    if let (Some(reference), Some(text), None) = (&image, &source.spec, &source.base_dir) {
        source.spec = Some(cutover_spec::with_prebuilt_image(
            text,
            &reference.to_string(),
        ));
    }
    let admitted = crate::projects::admit(cp, who, &source)?;
    let mut spec = crate::projects::load(cp, who, &admitted)?;
    if let Some(reference) = image {
        spec.build = cutover_model::BuildSpec::Image { reference };
    }
    let env = pick_env(&spec, env)?;
    who.require(needed_role(), Some(&env))?;
    let (mut spec, guardrails) = crate::guardrails::enforce(cp, who, spec, &env, starting)?;
    let warnings = crate::plaintext::check_env_values(&spec, &env, &admitted)?;
    // A deploy pins its secrets (a rollback or a rotation uses its release's pins).
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

/// Whether this intent pins the spec's secrets: a deploy (or promotion or build) does; a
/// rollback and a rotation use the pins of a recorded release.
fn pins_spec<'o>(intent: Intent<'_>, options: &'o DeployOptions) -> Option<&'o DeployOptions> {
    let pins = !matches!(intent, Intent::Rollback(_)) && !options.secrets_only;
    pins.then_some(options)
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
    plan_with(
        cp,
        who,
        source,
        env,
        Intent::of_rollback(rollback),
        &DeployOptions::default(),
    )
    .await
}

/// [`plan`] of any intent (a promotion too) with a request's [`DeployOptions`].
pub async fn plan_with(
    cp: &ControlPlane,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    intent: Intent<'_>,
    options: &DeployOptions,
) -> Result<Plan, ServerError> {
    let image = options.check(intent)?;
    let Admission { spec, env, .. } = admitted_spec(
        cp,
        who,
        source,
        env,
        intent,
        false,
        image,
        pins_spec(intent, options),
    )?;
    prepare(cp, &spec, &env, &who.name, intent, false, options).await
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
    start_with(
        cp,
        who,
        source,
        env,
        Intent::of_rollback(rollback),
        &DeployOptions::default(),
    )
    .await
}

/// [`start`] of any intent (a promotion too) with a request's [`DeployOptions`]: one path
/// for every start, with the same order (authorise, admit the spec, guardrails, plan) and
/// audit.
pub async fn start_with(
    cp: &Arc<ControlPlane>,
    who: &Principal,
    source: Option<&SpecSource>,
    env: Option<&str>,
    intent: Intent<'_>,
    options: &DeployOptions,
) -> Result<Started, ServerError> {
    let image = options.check(intent)?;
    let Admission {
        spec,
        env,
        source,
        guardrails,
        warnings,
    } = admitted_spec(
        cp,
        who,
        source,
        env,
        intent,
        true,
        image,
        pins_spec(intent, options),
    )?;
    let plan = prepare(cp, &spec, &env, &who.name, intent, true, options).await?;
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
    let action = plan.kind.label();
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
            "promoted_from": crate::api::PromotedFrom::of(&plan.kind),
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
