//! The API routes and what they do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use cutover_model::{now_ms, Instance, InstanceState, Plan, Release, Spec, Strategy};
use cutover_planner::{PlanInput, PlanKind};
use cutover_store::{DeploymentRecord, Lease};

use crate::api::{
    DeployRequest, EnvStatus, Health, HistoryLine, InstanceLine, Resumed, Started, WarmRelease,
};
use crate::view;
use crate::{ControlPlane, ServerError};

type Cp = State<Arc<ControlPlane>>;

/// The API router. Built by a function so tests call it in-process.
pub fn app(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/plan", post(plan_only))
        .route("/v1/deployments", post(start_deployment))
        .route("/v1/deployments/{id}", get(deployment))
        .route("/v1/status", get(status))
        .route("/v1/history", get(history))
        .route("/v1/resume", post(resume))
        .route("/v1/shutdown", post(shutdown))
        .with_state(cp)
}

async fn health() -> Json<Health> {
    Json(Health {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn plan_only(State(cp): Cp, Json(req): Json<DeployRequest>) -> Result<Json<Plan>, ServerError> {
    let prepared = prepare(&cp, &req, false).await?;
    Ok(Json(prepared))
}

async fn start_deployment(
    State(cp): Cp,
    Json(req): Json<DeployRequest>,
) -> Result<Json<Started>, ServerError> {
    let plan = prepare(&cp, &req, true).await?;
    let lease = Lease {
        deployment_id: plan.deployment_id.clone(),
        holder: plan.requested_by.clone(),
        acquired_at_ms: now_ms(),
    };
    cp.store.acquire_lease(&plan.env, lease)?;
    let record = DeploymentRecord::from_plan(&plan);
    if let Err(e) = cp.store.save_plan(&plan, &record) {
        cp.store.release_lease(&plan.env, &plan.deployment_id)?;
        return Err(e.into());
    }
    cp.spawn_run(&plan.deployment_id);
    Ok(Json(Started {
        deployment_id: plan.deployment_id.clone(),
        plan_digest: plan.digest.clone(),
        env: plan.env.clone(),
        release_id: plan.release_id.clone(),
    }))
}

#[derive(Deserialize)]
struct WaitQuery {
    /// Answer once the journal has more than this many entries (long poll)...
    after: Option<usize>,
    /// ...or after this long (at most 5 s).
    wait_ms: Option<u64>,
}

async fn deployment(
    State(cp): Cp,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<crate::api::DeploymentDetail>, ServerError> {
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(q.wait_ms.unwrap_or(0).min(5000));
    loop {
        let detail = view::detail(&cp.store, &id)?;
        let news = q.after.is_none_or(|after| detail.journal.len() > after);
        if news || detail.finished_at_ms.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(detail));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[derive(Deserialize)]
struct EnvQuery {
    env: Option<String>,
    spec_path: Option<String>,
    limit: Option<usize>,
}

async fn status(State(cp): Cp, Query(q): Query<EnvQuery>) -> Result<Json<Vec<EnvStatus>>, ServerError> {
    let envs = environments(&cp, q.spec_path.as_deref(), q.env.as_deref())?;
    let mut out = Vec::new();
    for env in envs {
        let current = cp.store.current_release(&env)?;
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
            .map(|d| view::detail(&cp.store, &d.id))
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
            current,
            env,
        });
    }
    Ok(Json(out))
}

fn instance_line(i: &Instance) -> InstanceLine {
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

async fn history(State(cp): Cp, Query(q): Query<EnvQuery>) -> Result<Json<Vec<HistoryLine>>, ServerError> {
    let records = cp.store.deployments(q.env.as_deref(), q.limit.unwrap_or(50))?;
    let mut out = Vec::with_capacity(records.len());
    for d in records {
        let image_id = cp.store.release(&d.env, &d.release_id)?.map(|r| r.image.id);
        let (status, reason) = view::status_parts(&d.status);
        out.push(HistoryLine {
            kind: view::kind_label(&d.kind).to_string(),
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
    Ok(Json(out))
}

async fn resume(State(cp): Cp) -> Result<Json<Resumed>, ServerError> {
    Ok(Json(Resumed {
        deployments: cp.resume_unfinished()?,
    }))
}

async fn shutdown(State(cp): Cp) -> Json<Health> {
    cp.request_shutdown();
    health().await
}

/// The environments to report on: the one asked for, else those of the spec, else every
/// environment the store knows.
fn environments(cp: &ControlPlane, spec_path: Option<&str>, env: Option<&str>) -> Result<Vec<String>, ServerError> {
    if let Some(env) = env {
        return Ok(vec![env.to_string()]);
    }
    if let Some(path) = spec_path {
        if let Ok(spec) = cutover_spec::load(Path::new(path)) {
            return Ok(spec.environments.keys().cloned().collect());
        }
    }
    Ok(cp.store.environments()?)
}

fn pick_env(spec: &Spec, env: Option<&str>) -> Result<String, ServerError> {
    match env {
        Some(env) if spec.environments.contains_key(env) => Ok(env.to_string()),
        Some(env) => Err(ServerError::BadRequest(format!(
            "environment {env:?} is not in the spec; it has: {}",
            spec.environments.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        None if spec.environments.len() == 1 => Ok(spec.environments.keys().next().cloned().unwrap_or_default()),
        None => Err(ServerError::BadRequest(format!(
            "the spec has several environments ({}); pick one with --env",
            spec.environments.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Strategy text: `plans/<name>.toml` next to the spec if present, else the built-in copy.
fn load_strategy(spec: &Spec, name: &str, plans_dir: Option<&Path>) -> Result<Strategy, ServerError> {
    let candidates: Vec<PathBuf> = [Some(spec.base_dir.join("plans")), plans_dir.map(Path::to_path_buf)]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(format!("{name}.toml")))
        .collect();
    for file in candidates {
        if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|e| ServerError::io(&file, e))?;
            return Ok(cutover_planner::parse_strategy(&text, &file.display().to_string())?);
        }
    }
    match cutover_planner::builtin_strategy(name) {
        Some(text) => Ok(cutover_planner::parse_strategy(text, &format!("plans/{name}.toml"))?),
        None => Err(ServerError::BadRequest(format!(
            "strategy {name:?} not found: add plans/{name}.toml next to deploy.toml or use blue-green"
        ))),
    }
}

/// Read the spec, look at the world, and plan. `allocate` takes a new deployment number
/// (for a real start); otherwise the plan shows the number the next deployment would get.
async fn prepare(cp: &ControlPlane, req: &DeployRequest, allocate: bool) -> Result<Plan, ServerError> {
    let spec = cutover_spec::load(Path::new(&req.spec_path))?;
    let env = pick_env(&spec, req.env.as_deref())?;
    if let Some(lease) = cp.store.lease(&env)? {
        if allocate {
            return Err(ServerError::Conflict(format!(
                "environment {env} is busy: deployment {} started by {} holds it; wait for it, or run `cutover resume` if it was interrupted",
                lease.deployment_id, lease.holder
            )));
        }
    }
    let current = cp.store.current_release(&env)?;
    // Everything that can refuse the request runs before a deployment number is taken.
    let rollback = match &req.rollback {
        None => None,
        Some(target) => {
            let target = rollback_target(cp, &env, current.as_ref(), target.release.as_deref())?;
            let warm: Vec<Instance> = cp
                .providers
                .compute
                .list(&target.app, Some(&env))
                .await?
                .into_iter()
                .filter(|i| i.release == target.id && i.state == InstanceState::Running)
                .collect();
            Some((target, warm))
        }
    };
    let seq = if allocate {
        cp.store.next_deployment_seq(&env)?
    } else {
        cp.store.peek_deployment_seq(&env)?
    };
    let deployment_id = format!("{env}-{seq}");
    let created_at_ms = now_ms();
    match &rollback {
        None => {
            let strategy = load_strategy(&spec, &spec.strategy, cp.plans_dir.as_deref())?;
            Ok(cutover_planner::plan(&PlanInput {
                spec: &spec,
                env: &env,
                strategy: &strategy,
                deployment_id: &deployment_id,
                requested_by: &req.requested_by,
                created_at_ms,
                current: current.as_ref(),
                kind: PlanKind::Deploy,
            })?)
        }
        Some((target, warm)) => {
            let strategy = load_strategy(&spec, "rollback", cp.plans_dir.as_deref())?;
            Ok(cutover_planner::plan(&PlanInput {
                spec: &spec,
                env: &env,
                strategy: &strategy,
                deployment_id: &deployment_id,
                requested_by: &req.requested_by,
                created_at_ms,
                current: current.as_ref(),
                kind: PlanKind::Rollback {
                    target,
                    warm_instances: warm,
                },
            })?)
        }
    }
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
