//! The API routes and what they do.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use cutover_model::{Instance, InstanceState, Plan};
use cutover_store::Decision;

use crate::api::{
    DeployRequest, EnvStatus, Health, HistoryLine, InstanceLine, LocalActor, LocalDecision,
    LocalNewToken, LocalNewUser, Resumed, Started, UserLine, WarmRelease,
};
use crate::audit::{AuditEntry, VerifyReport};
use crate::auth::{CreatedToken, Grant, Principal, TokenRecord};
use crate::deploy::{RollbackTo, SpecSource};
use crate::view;
use crate::{approvals, audit, auth, deploy, ControlPlane, ServerError};

type Cp = State<Arc<ControlPlane>>;

/// The local API router (Unix socket; every request acts as the local user with admin
/// rights). Built by a function so tests call it in-process.
pub fn app(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/v1/approvals", post(decide))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/users", post(add_user).get(list_users))
        .route("/v1/audit", get(audit_export))
        .route("/v1/audit/verify", get(audit_verify))
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

/// What the shared plan/start functions take from a local request: who asks (the local user,
/// with admin rights on this socket), the spec, and the rollback target if any.
fn local_args(req: &DeployRequest) -> (Principal, SpecSource, Option<RollbackTo>) {
    (
        Principal::local(&req.requested_by),
        SpecSource {
            spec_path: Some(req.spec_path.clone()),
            ..SpecSource::default()
        },
        req.rollback.as_ref().map(|r| r.release.clone()),
    )
}

async fn plan_only(
    State(cp): Cp,
    Json(req): Json<DeployRequest>,
) -> Result<Json<Plan>, ServerError> {
    let (who, source, rollback) = local_args(&req);
    let plan = deploy::plan(
        &cp,
        &who,
        Some(&source),
        req.env.as_deref(),
        rollback.as_ref(),
    )
    .await?;
    Ok(Json(plan))
}

async fn start_deployment(
    State(cp): Cp,
    Json(req): Json<DeployRequest>,
) -> Result<Json<Started>, ServerError> {
    let (who, source, rollback) = local_args(&req);
    let started = deploy::start(
        &cp,
        &who,
        Some(&source),
        req.env.as_deref(),
        rollback.as_ref(),
    )
    .await?;
    Ok(Json(started))
}

async fn decide(State(cp): Cp, Json(req): Json<LocalDecision>) -> Result<Json<()>, ServerError> {
    let decision = match req.decision.as_str() {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        other => {
            return Err(ServerError::BadRequest(format!(
                "decision: {other:?} is not a decision; use approve or reject"
            )))
        }
    };
    approvals::decide(
        &cp,
        &Principal::local(&req.requested_by),
        &req.deployment_id,
        decision,
        &req.plan_digest,
        &req.image_id,
        &req.comment,
    )
    .await?;
    Ok(Json(()))
}

async fn create_token(
    State(cp): Cp,
    Json(req): Json<LocalNewToken>,
) -> Result<Json<CreatedToken>, ServerError> {
    let created = auth::create_token(&cp.store, &req.requested_by, &req.token)?;
    Ok(Json(created))
}

async fn list_tokens(State(cp): Cp) -> Result<Json<Vec<TokenRecord>>, ServerError> {
    Ok(Json(auth::list_tokens(&cp.store)?))
}

async fn revoke_token(
    State(cp): Cp,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<LocalActor>,
) -> Result<Json<TokenRecord>, ServerError> {
    let record = auth::revoke_token(&cp.store, &req.requested_by, &id)?;
    Ok(Json(record))
}

async fn add_user(
    State(cp): Cp,
    Json(req): Json<LocalNewUser>,
) -> Result<Json<UserLine>, ServerError> {
    let user = auth::add_user(
        &cp.store,
        &req.requested_by,
        &req.name,
        vec![Grant {
            role: req.role,
            env: req.env.clone(),
        }],
        &req.password,
    )?;
    audit::record(
        &cp.store,
        &req.requested_by,
        "user.add",
        &user.name,
        serde_json::json!({ "role": req.role, "env": req.env }),
    )?;
    Ok(Json(UserLine {
        name: user.name,
        grants: user.grants,
        created_at_ms: user.created_at_ms,
    }))
}

async fn list_users(State(cp): Cp) -> Result<Json<Vec<UserLine>>, ServerError> {
    Ok(Json(
        auth::list_users(&cp.store)?
            .into_iter()
            .map(|u| UserLine {
                name: u.name,
                grants: u.grants,
                created_at_ms: u.created_at_ms,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    since_ms: Option<u64>,
}

async fn audit_export(
    State(cp): Cp,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ServerError> {
    Ok(Json(audit::export(&cp.store, q.since_ms)?))
}

async fn audit_verify(State(cp): Cp) -> Result<Json<VerifyReport>, ServerError> {
    Ok(Json(audit::verify(&cp.store)?))
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

async fn status(
    State(cp): Cp,
    Query(q): Query<EnvQuery>,
) -> Result<Json<Vec<EnvStatus>>, ServerError> {
    let envs = environments(&cp, q.spec_path.as_deref(), q.env.as_deref())?;
    Ok(Json(env_statuses(&cp, envs).await?))
}

/// The status of each of `envs`.
pub(crate) async fn env_statuses(
    cp: &ControlPlane,
    envs: Vec<String>,
) -> Result<Vec<EnvStatus>, ServerError> {
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
    Ok(out)
}

pub(crate) fn instance_line(i: &Instance) -> InstanceLine {
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

async fn history(
    State(cp): Cp,
    Query(q): Query<EnvQuery>,
) -> Result<Json<Vec<HistoryLine>>, ServerError> {
    let records = cp
        .store
        .deployments(q.env.as_deref(), q.limit.unwrap_or(50))?;
    Ok(Json(history_lines(&cp, records)?))
}

/// History lines of `records`.
pub(crate) fn history_lines(
    cp: &ControlPlane,
    records: Vec<cutover_store::DeploymentRecord>,
) -> Result<Vec<HistoryLine>, ServerError> {
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
    Ok(out)
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
fn environments(
    cp: &ControlPlane,
    spec_path: Option<&str>,
    env: Option<&str>,
) -> Result<Vec<String>, ServerError> {
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
