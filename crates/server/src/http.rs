//! The control plane's one API (`/api/v1`, JSON), `/metrics`, and the web UI's routes, as
//! one router with two doors in front of it:
//!
//! - the Unix socket (`control.sock`, 0600): the caller is the socket's peer, proven by the
//!   kernel ([`LocalPeer`], from `SO_PEERCRED`), with admin rights; a bearer token sent
//!   there makes it act as the token's owner instead;
//! - the TCP listener (`--http`): a bearer token (CI) or a web session (the UI's own routes).
//!
//! Every API route is declared once in [`routes`] with the least role it needs; the router
//! is built from that table with each route behind the authentication layer, so nothing of
//! the API is reachable without a proven caller (401) whose role allows it somewhere (403).
//! Handlers then check the role against the environment they act on. The web UI's pages
//! ([`crate::ui::router`]) are merged beside the table and authenticate with sessions.
//! The OpenAPI document ([`ApiDoc`], at `/api/v1/openapi.json`) is generated from the
//! handlers' annotations and the schemas of `cutover-api`; a test checks every route of
//! the table is in it.
//!
//! Errors are [`ErrorBody`] with the stable codes of [`crate::api::ErrorCode`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::serve::IncomingStream;
use axum::{Extension, Json, Router};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::UnixListener;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use cutover_model::now_ms;
use cutover_store::{Claim, TypedTree};

use crate::api::{
    events, ApprovalAccepted, ApprovalInfo, ApprovalRequest, AuditQuery, ContainerFloor,
    CreatedToken, Decision, DecisionLine, DeploymentDetail, DeploymentState, EnvStatus,
    EnvironmentsQuery, ErrorBody, ErrorCode, GateFloor, GcFailed, GcKept, GcRemoved, GcReport,
    GcRequest, Grant, GuardrailViolation, Guardrails, GuardrailsProposal, GuardrailsShow,
    GuardrailsVersion, Health, HistoryLine, HistoryQuery, InstanceLine, NewToken, NewUser, Pin,
    PlanRequest, PlanResponse, ProjectPath, ProjectRoot, Promote, PromotedFrom, Resumed, Role,
    RollbackRequest, RollbackTo, SetGuardrails, SpecSource, Started, StepLine, StepState,
    TokenRecord, UserLine, WarmRelease,
};
use crate::api::{
    ApprovalView, EnvVarChanges, ExceptionLine, FindingLine, GuardrailsInForce, ImagePathStep,
    ProvenanceView, RunningRelease, ScanVerdictView, SettingChange,
};
use crate::audit::{AuditEntry, BrokenLink, VerifyReport};
use crate::auth::Principal;
use crate::view::{env_statuses, history_lines};
use crate::{approval_view, approvals, audit, auth, deploy, view, ControlPlane, ServerError};

type Cp = State<Arc<ControlPlane>>;

/// The idempotency header of POSTs that start work.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const IDEMPOTENCY_TREE: &str = "idempotency_keys";
/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;

// ----- the doors -----

/// The peer of a connection on the control socket, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPeer {
    pub uid: Option<u32>,
    /// The account name of `uid` (`uid-<n>` when it has none).
    pub name: String,
}

impl LocalPeer {
    /// A peer with this account name (tests that drive the router in-process).
    pub fn named(name: &str) -> LocalPeer {
        LocalPeer {
            uid: None,
            name: name.to_string(),
        }
    }

    fn of_uid(uid: Option<u32>) -> LocalPeer {
        let name = match uid {
            Some(uid) => account_name(uid).unwrap_or_else(|| format!("uid-{uid}")),
            None => "unknown-peer".to_string(),
        };
        LocalPeer { uid, name }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for LocalPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        LocalPeer::of_uid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// The account name of `uid` from the system's user database.
fn account_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: getpwuid_r writes only into `pwd` and `buf` (whose length it is told) and
    // sets `result` to null or to `pwd`; both outlive the call, and `pw_name` points into
    // `buf`, read before `buf` is dropped.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// The authentication layer: a bearer token, else the socket's peer. Puts the
/// [`Principal`] in the request's extensions.
async fn authenticate(
    State((cp, role)): State<(Arc<ControlPlane>, Role)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let principal = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => bearer_principal(&cp, value)?,
        None => match request.extensions().get::<ConnectInfo<LocalPeer>>() {
            Some(ConnectInfo(peer)) => Principal::local(&peer.name),
            None => {
                return Err(ServerError::Unauthorized(
                    "missing bearer token: send Authorization: Bearer <token> (an admin creates one with `cutover token create`)"
                        .to_string(),
                ))
            }
        },
    };
    if !principal.can_somewhere(role) {
        return Err(ServerError::Forbidden(format!(
            "{} lacks the {role} role this endpoint needs; ask an admin for a token with it",
            principal.name
        )));
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer_of(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))?;
    Some(token.trim())
}

fn bearer_principal(cp: &ControlPlane, value: &HeaderValue) -> Result<Principal, ServerError> {
    let token = bearer_of(value).ok_or_else(|| {
        ServerError::Unauthorized("the Authorization header must be `Bearer <token>`".to_string())
    })?;
    auth::authenticate_bearer(&cp.store, token)?.ok_or_else(|| {
        ServerError::Unauthorized(
            "the token is not valid (unknown, expired or revoked); ask an admin for a new one"
                .to_string(),
        )
    })
}

type Who = Extension<Principal>;

// ----- extractors that answer with the API's error format -----

/// `Json` whose rejections are [`ErrorBody`]s naming the bad field by its path.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !json {
            return Err(ServerError::UnsupportedMediaType(
                "send the body as JSON with the header Content-Type: application/json".to_string(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServerError::PayloadTooLarge("the request body is too large".to_string())
            } else {
                ServerError::BadRequest("could not read the request body".to_string())
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                ServerError::BadRequest(format!("{field}: {}", e.into_inner()))
            })
    }
}

/// `Query` with the API's error format.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| {
                let text = e.body_text();
                let detail = text
                    .split_once("string: ")
                    .map_or(text.as_str(), |(_, d)| d);
                ServerError::BadRequest(format!("invalid query string: {detail}"))
            })
    }
}

/// `Path` with the API's error format.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| {
                ServerError::BadRequest(format!("invalid path: {}", e.body_text()))
            })
    }
}

// ----- the route table -----

/// One route: method, path (axum syntax, same as the OpenAPI path), the least role it
/// needs somewhere, and its handler.
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    pub role: Role,
    pub handler: MethodRouter<Arc<ControlPlane>>,
}

fn route(
    method: Method,
    path: &'static str,
    role: Role,
    handler: MethodRouter<Arc<ControlPlane>>,
) -> RouteDef {
    RouteDef {
        method,
        path,
        role,
        handler,
    }
}

/// Every route of the API. Nothing of the API is served that is not in this table.
pub fn routes() -> Vec<RouteDef> {
    use Method as M;
    use Role::{Admin, Approver, Deployer, Viewer};
    vec![
        route(M::GET, "/api/v1/health", Viewer, get(health)),
        route(M::GET, "/api/v1/openapi.json", Viewer, get(openapi_json)),
        route(M::POST, "/api/v1/plans", Deployer, post(create_plan)),
        route(
            M::POST,
            "/api/v1/deployments",
            Deployer,
            post(start_deployment),
        ),
        route(M::GET, "/api/v1/deployments", Viewer, get(list_deployments)),
        route(
            M::GET,
            "/api/v1/deployments/{id}",
            Viewer,
            get(get_deployment),
        ),
        route(
            M::GET,
            "/api/v1/deployments/{id}/events",
            Viewer,
            get(deployment_events),
        ),
        route(
            M::GET,
            "/api/v1/deployments/{id}/approval-view",
            Viewer,
            get(get_approval_view),
        ),
        route(
            M::POST,
            "/api/v1/deployments/{id}/approvals",
            Approver,
            post(decide),
        ),
        route(M::POST, "/api/v1/resume", Admin, post(resume)),
        route(
            M::GET,
            "/api/v1/environments",
            Viewer,
            get(list_environments),
        ),
        route(
            M::GET,
            "/api/v1/environments/{env}",
            Viewer,
            get(get_environment),
        ),
        route(
            M::POST,
            "/api/v1/environments/{env}/rollback",
            Deployer,
            post(rollback),
        ),
        route(M::GET, "/api/v1/tokens", Admin, get(list_tokens)),
        route(M::POST, "/api/v1/tokens", Admin, post(create_token)),
        route(
            M::POST,
            "/api/v1/tokens/{id}/revoke",
            Admin,
            post(revoke_token),
        ),
        route(M::GET, "/api/v1/users", Admin, get(list_users)),
        route(M::POST, "/api/v1/users", Admin, post(add_user)),
        route(M::GET, "/api/v1/audit", Admin, get(audit_export)),
        route(M::GET, "/api/v1/audit/verify", Admin, get(audit_verify)),
        route(
            M::GET,
            "/api/v1/guardrails/{env}",
            Viewer,
            get(crate::guardrails::show_guardrails),
        ),
        route(
            M::PUT,
            "/api/v1/guardrails/{env}",
            Admin,
            put(crate::guardrails::set_guardrails),
        ),
        route(
            M::POST,
            "/api/v1/guardrails/{env}/accept",
            Admin,
            post(crate::guardrails::accept_guardrails),
        ),
        route(
            M::GET,
            "/api/v1/projects",
            Admin,
            get(crate::projects::list_projects),
        ),
        route(
            M::POST,
            "/api/v1/projects",
            Admin,
            post(crate::projects::add_project),
        ),
        route(
            M::POST,
            "/api/v1/projects/remove",
            Admin,
            post(crate::projects::remove_project),
        ),
        route(
            M::POST,
            "/api/v1/environments/{env}/releases/{release}/pin",
            Deployer,
            post(crate::retention::pin_release),
        ),
        route(
            M::DELETE,
            "/api/v1/environments/{env}/releases/{release}/pin",
            Deployer,
            delete(crate::retention::unpin_release),
        ),
        route(
            M::GET,
            "/api/v1/pins",
            Viewer,
            get(crate::retention::get_pins),
        ),
        route(
            M::GET,
            "/api/v1/images/{image}/path",
            Viewer,
            get(crate::retention::image_path),
        ),
        route(M::POST, "/api/v1/gc", Admin, post(crate::retention::run_gc)),
        route(
            M::GET,
            "/api/v1/secrets",
            Viewer,
            get(crate::secrets::list_secrets),
        ),
        route(
            M::PUT,
            "/api/v1/secrets/{env}/{name}",
            Admin,
            put(crate::secrets::set_secret),
        ),
        route(
            M::DELETE,
            "/api/v1/secrets/{env}/{name}",
            Admin,
            delete(crate::secrets::remove_secret),
        ),
        route(
            M::POST,
            "/api/v1/secrets/{env}/{name}/rotate",
            Admin,
            post(crate::secrets::rotate_secret),
        ),
        route(
            M::POST,
            "/api/v1/secrets/{env}/{name}/revoke",
            Admin,
            post(crate::secrets::revoke_secret),
        ),
        route(
            M::POST,
            "/api/v1/secrets/rewrap",
            Admin,
            post(crate::secrets::rewrap_secrets),
        ),
        route(M::POST, "/api/v1/shutdown", Admin, post(shutdown)),
        route(M::GET, "/metrics", Viewer, get(metrics)),
    ]
}

/// The control plane's router: the API table, `/metrics`, the web UI, and JSON answers
/// for unknown paths. Both doors serve it.
pub fn router(cp: Arc<ControlPlane>) -> Router {
    let mut router: Router<Arc<ControlPlane>> = Router::new();
    for def in routes() {
        let guarded = def.handler.route_layer(middleware::from_fn_with_state(
            (cp.clone(), def.role),
            authenticate,
        ));
        router = router.route(def.path, guarded);
    }
    crate::door::limit_bodies(
        router
            .merge(crate::ui::router())
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(cp),
    )
}

async fn not_found() -> ServerError {
    ServerError::NotFound("no such endpoint; see /api/v1/openapi.json".to_string())
}

async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        code: ErrorCode::MethodNotAllowed,
        message: "this endpoint does not take that method; see /api/v1/openapi.json".to_string(),
        error_id: None,
        violations: Vec::new(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

// ----- idempotency -----

/// What an idempotency key maps to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdempotencyRecord {
    /// sha256 of the request (what it does and its body).
    request: String,
    /// `None` while the first request is being served.
    started: Option<Started>,
    at_ms: u64,
    /// The control plane process serving it (a claim of a process that died is stale).
    owner: String,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ServerError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).unwrap_or("");
    if key.is_empty() || key.len() > 255 || key.contains('\0') {
        return Err(ServerError::BadRequest(
            "Idempotency-Key: must be 1 to 255 visible ASCII characters".to_string(),
        ));
    }
    Ok(Some(key.to_string()))
}

/// Releases a claim whose request did not finish (an error, or the client went away and
/// the handler was dropped), so that a retry runs.
struct ClaimGuard {
    tree: TypedTree<IdempotencyRecord>,
    key: String,
    claim: Option<IdempotencyRecord>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            if let Err(e) = self.tree.compare_and_swap(&self.key, Some(&claim), None) {
                tracing::warn!(error = %e, "could not release an idempotency key; it expires in 24h");
            }
        }
    }
}

/// Drop remembered keys older than [`IDEMPOTENCY_TTL_MS`]. Returns how many.
pub fn purge_idempotency_keys(cp: &ControlPlane, now: u64) -> Result<usize, ServerError> {
    let tree: TypedTree<IdempotencyRecord> = cp.store.typed_tree(IDEMPOTENCY_TREE)?;
    let mut purged = 0;
    for (key, record) in tree.scan_prefix("")? {
        if now.saturating_sub(record.at_ms) >= IDEMPOTENCY_TTL_MS
            && tree.compare_and_swap(&key, Some(&record), None)?
        {
            purged += 1;
        }
    }
    Ok(purged)
}

/// Run `start` at most once per (principal, key) within [`IDEMPOTENCY_TTL_MS`]: the same
/// key with the same request returns the first answer; with another request it is
/// refused. The key is claimed atomically; a claim whose request failed, was abandoned, or
/// whose control plane died is released, so the retry runs.
async fn idempotent<F>(
    cp: &ControlPlane,
    who: &Principal,
    key: Option<String>,
    request: &[u8],
    start: F,
) -> Result<Response, ServerError>
where
    F: std::future::Future<Output = Result<Started, ServerError>>,
{
    let Some(key) = key else {
        return Ok((StatusCode::CREATED, Json(start.await?)).into_response());
    };
    let tree: TypedTree<IdempotencyRecord> = cp.store.typed_tree(IDEMPOTENCY_TREE)?;
    let store_key = format!("{}\0{key}", who.name);
    let digest = hex::encode(Sha256::digest(request));
    let mine = IdempotencyRecord {
        request: digest.clone(),
        started: None,
        at_ms: now_ms(),
        owner: cp.instance_id.clone(),
    };
    loop {
        let held = match tree.claim(&store_key, &mine)? {
            Claim::Inserted => break,
            Claim::Existing(held) => held,
        };
        let expired = mine.at_ms.saturating_sub(held.at_ms) >= IDEMPOTENCY_TTL_MS;
        let abandoned = held.started.is_none() && held.owner != cp.instance_id;
        if expired || abandoned {
            // Take it over; if someone else did first, look again.
            if tree.compare_and_swap(&store_key, Some(&held), Some(&mine))? {
                break;
            }
            continue;
        }
        if held.request != digest {
            return Err(ServerError::Conflict(
                "Idempotency-Key: this key was used for a different request; use a new key for a new request".to_string(),
            ));
        }
        return match held.started {
            Some(started) => {
                let mut response = (StatusCode::CREATED, Json(started)).into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                Ok(response)
            }
            None => Err(ServerError::Conflict(
                "Idempotency-Key: a request with this key is still being served; retry in a moment"
                    .to_string(),
            )),
        };
    }
    let mut guard = ClaimGuard {
        tree: tree.clone(),
        key: store_key.clone(),
        claim: Some(mine.clone()),
    };
    let started = start.await?;
    let done = IdempotencyRecord {
        started: Some(started.clone()),
        ..mine.clone()
    };
    if tree.compare_and_swap(&store_key, Some(&mine), Some(&done))? {
        guard.claim = None;
        cp.store.flush()?;
    }
    Ok((StatusCode::CREATED, Json(started)).into_response())
}

// ----- OpenAPI -----

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cutover API",
        description = "Plan, start, follow, approve and roll back deployments. Over TCP every endpoint needs `Authorization: Bearer <token>` (`cutover token create`); on the control socket the caller is the socket's peer. Errors are JSON `{code, message, error_id?}` with stable codes: bad_request, unauthorized, forbidden, not_found, method_not_allowed, conflict, payload_too_large, unsupported_media_type, guardrail_violation (422, with `violations`: each setting a spec tried to loosen), unavailable, internal (internal errors carry only an id that names the log line with the detail)."
    ),
    paths(
        health,
        openapi_json,
        create_plan,
        start_deployment,
        list_deployments,
        get_deployment,
        deployment_events,
        get_approval_view,
        decide,
        resume,
        list_environments,
        get_environment,
        rollback,
        list_tokens,
        create_token,
        revoke_token,
        list_users,
        add_user,
        audit_export,
        audit_verify,
        crate::guardrails::show_guardrails,
        crate::guardrails::set_guardrails,
        crate::guardrails::accept_guardrails,
        crate::projects::list_projects,
        crate::projects::add_project,
        crate::projects::remove_project,
        crate::retention::pin_release,
        crate::retention::unpin_release,
        crate::retention::get_pins,
        crate::retention::image_path,
        crate::retention::run_gc,
        crate::secrets::list_secrets,
        crate::secrets::set_secret,
        crate::secrets::remove_secret,
        crate::secrets::rotate_secret,
        crate::secrets::revoke_secret,
        crate::secrets::rewrap_secrets,
        shutdown,
        metrics,
    ),
    components(schemas(
        ErrorBody, PlanRequest, PlanResponse, Started, DeploymentDetail, StepLine, ApprovalInfo,
        DecisionLine, HistoryLine, EnvStatus, InstanceLine, WarmRelease, RollbackRequest,
        ApprovalRequest, ApprovalAccepted, Decision, TokenRecord, NewToken, CreatedToken,
        Role, Grant, NewUser, UserLine, AuditEntry, VerifyReport, BrokenLink, DeploymentState,
        StepState, ErrorCode, RollbackTo, Resumed, Health, Guardrails, GateFloor,
        ContainerFloor, GuardrailsVersion, GuardrailsProposal, GuardrailsShow, SetGuardrails,
        GuardrailViolation, ProjectRoot, ProjectPath,
        ApprovalView, RunningRelease, SettingChange, EnvVarChanges, ScanVerdictView, FindingLine,
        ExceptionLine, ProvenanceView, GuardrailsInForce, Promote, PromotedFrom, Pin, GcRequest,
        GcReport, GcKept, GcRemoved, GcFailed, ImagePathStep,
        crate::api::SecretLine, crate::api::SecretVersionLine, crate::api::SetSecret,
        crate::api::RevokeSecret, crate::api::SecretChanged, crate::api::RewrapSecrets,
        crate::api::RewrapReport
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cut_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn openapi_json(Extension(_who): Who) -> Response {
    Json(ApiDoc::openapi()).into_response()
}

// ----- handlers -----

/// Plan a deployment without starting it (needs deployer for the environment).
#[utoipa::path(post, path = "/api/v1/plans", tag = "deployments", request_body = PlanRequest,
    responses(
        (status = 200, body = PlanResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
async fn create_plan(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<PlanRequest>,
) -> Result<Json<PlanResponse>, ServerError> {
    let rollback = req.rollback.as_ref().map(|r| r.to.clone());
    let plan = deploy::plan_with(
        &cp,
        &who,
        Some(&req.source()),
        req.env.as_deref(),
        intent_of(&req, rollback.as_ref())?,
        &deploy::DeployOptions::of(&req),
    )
    .await?;
    // Clients see environment variables by name and value digest, never values.
    Ok(Json(PlanResponse {
        digest: plan.digest.clone(),
        text: cutover_planner::render_text(&plan),
        plan: plan.with_env_digests(),
    }))
}

/// Plan and start a deployment (needs deployer for the environment). Send an
/// `Idempotency-Key` header to make retries safe: the same key with the same body returns
/// the deployment the first request started.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body = PlanRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key and body, same deployment")),
    responses(
        (status = 201, body = Started),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
async fn start_deployment(
    State(cp): Cp,
    Extension(who): Who,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PlanRequest>,
) -> Result<Response, ServerError> {
    let key = idempotency_key(&headers)?;
    let fingerprint = serde_json::to_vec(&("deploy", &req)).unwrap_or_default();
    let rollback = req.rollback.as_ref().map(|r| r.to.clone());
    let intent = intent_of(&req, rollback.as_ref())?;
    idempotent(
        &cp,
        &who,
        key,
        &fingerprint,
        deploy::start_with(
            &cp,
            &who,
            Some(&req.source()),
            req.env.as_deref(),
            intent,
            &deploy::DeployOptions::of(&req),
        ),
    )
    .await
}

/// What a plan request asks for: a deploy, a rollback or a promotion (not two at once).
fn intent_of<'a>(
    req: &'a PlanRequest,
    rollback: Option<&'a deploy::RollbackTo>,
) -> Result<deploy::Intent<'a>, ServerError> {
    match (rollback, &req.promote) {
        (Some(_), Some(_)) => Err(ServerError::BadRequest(
            "promote: a request is a rollback or a promotion, not both; leave out `rollback` or `promote`".to_string(),
        )),
        (None, Some(promote)) => Ok(deploy::Intent::Promote(promote)),
        (Some(to), None) => Ok(deploy::Intent::Rollback(to)),
        (None, None) => Ok(deploy::Intent::Deploy),
    }
}

/// Deployments newest first, limited to the environments the caller may view.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(HistoryQuery),
    responses(
        (status = 200, body = Vec<HistoryLine>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
async fn list_deployments(
    State(cp): Cp,
    Extension(who): Who,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<HistoryLine>>, ServerError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ServerError::BadRequest(
            "limit: must be between 1 and 500".to_string(),
        ));
    }
    if let Some(env) = &q.env {
        who.require(Role::Viewer, Some(env))?;
    }
    let records: Vec<_> = cp
        .store
        .deployments(q.env.as_deref(), usize::MAX)?
        .into_iter()
        .filter(|d| who.can(Role::Viewer, Some(&d.env)))
        .take(limit as usize)
        .collect();
    Ok(Json(history_lines(&cp, records)?))
}

/// The deployment `id` with the environment check for `role`.
fn visible_detail(
    cp: &ControlPlane,
    who: &Principal,
    id: &str,
) -> Result<DeploymentDetail, ServerError> {
    let record = cp.store.deployment(id)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "deployment {id} not found; GET /api/v1/deployments lists deployments"
        ))
    })?;
    who.require(Role::Viewer, Some(&record.env))?;
    view::detail(&cp.store, id)
}

/// One deployment: status, steps, journal and approval gate.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "Deployment id, e.g. production-3")),
    responses(
        (status = 200, body = DeploymentDetail),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_deployment(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeploymentDetail>, ServerError> {
    Ok(Json(visible_detail(&cp, &who, &id)?))
}

fn sse_json<T: Serialize>(event: &str, value: &T) -> SseEvent {
    SseEvent::default()
        .event(event)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".to_string()))
}

/// What the event stream sends for one new state of the deployment: the journal entries
/// not sent yet, the detail (without journal) when it changed, `end` once it finished.
fn stream_events(
    detail: &DeploymentDetail,
    sent: &mut usize,
    last: &mut Option<String>,
) -> Vec<SseEvent> {
    let mut out: Vec<SseEvent> = detail
        .journal
        .iter()
        .skip(*sent)
        .map(|entry| sse_json(events::JOURNAL, entry).id(entry.seq.to_string()))
        .collect();
    *sent = (*sent).max(detail.journal.len());
    let summary = DeploymentDetail {
        journal: Vec::new(),
        ..detail.clone()
    };
    let text = serde_json::to_string(&summary).unwrap_or_default();
    if last.as_deref() != Some(text.as_str()) {
        out.push(
            SseEvent::default()
                .event(events::DEPLOYMENT)
                .data(text.clone()),
        );
        *last = Some(text);
    }
    if detail.finished_at_ms.is_some() {
        let end = serde_json::json!({"status": detail.status, "reason": detail.reason});
        out.push(sse_json(events::END, &end));
    }
    out
}

/// Progress of a deployment as server-sent events: `journal` (each journal entry, with its
/// sequence number as the event id; send `Last-Event-ID` to resume), `deployment` (the
/// whole detail without its journal whenever it changed) and finally `end` when the
/// deployment finished. Driven by the store's change events: nothing is sent, and nothing
/// wakes, while the deployment does not change (but a keep-alive comment every 15 s).
#[utoipa::path(get, path = "/api/v1/deployments/{id}/events", tag = "deployments",
    params(
        ("id" = String, Path, description = "Deployment id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this journal entry"),
    ),
    responses(
        (status = 200, description = "text/event-stream of journal, deployment and end events", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn deployment_events(
    State(cp): Cp,
    Extension(who): Who,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ServerError> {
    let record = cp.store.deployment(&id)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "deployment {id} not found; GET /api/v1/deployments lists deployments"
        ))
    })?;
    who.require(Role::Viewer, Some(&record.env))?;
    let mut sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |seq| seq.saturating_add(1));
    let mut last = None;
    let live = cp.follow(&id)?;
    let revoked = access_ends(cp.clone(), bearer_token(&headers));
    let stream = crate::follow::changes(cp, id, live)
        .flat_map(move |detail| {
            futures_util::stream::iter(stream_events(&detail, &mut sent, &mut last))
        })
        .map(Ok)
        .take_until(revoked);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The bearer token of a request, if it has one.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    bearer_of(headers.get(header::AUTHORIZATION)?).map(str::to_string)
}

/// Resolves when `token` stops being valid: revoked (the store announces credential
/// changes) or expired (its expiry time). Never, for callers without a token (the socket's
/// peer).
async fn access_ends(cp: Arc<ControlPlane>, token: Option<String>) {
    let Some(token) = token else {
        return std::future::pending().await;
    };
    let mut events = cp.store.subscribe();
    let expires = auth::token_expiry(&cp.store, &token).ok().flatten();
    let expiry = async {
        match expires {
            Some(at_ms) => {
                let wait = at_ms.saturating_sub(now_ms());
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = &mut expiry => return,
            event = events.recv() => match event {
                Ok(cutover_store::StoreEvent::Credentials)
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if !matches!(auth::authenticate_bearer(&cp.store, &token), Ok(Some(_))) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// What approving deployment `id` approves: the settings that change from the running
/// release (environment variables by name only), the image's scan verdict with its
/// findings and used exceptions, its provenance, and the view's digest that an approval
/// names (needs viewer for the deployment's environment).
#[utoipa::path(get, path = "/api/v1/deployments/{id}/approval-view", tag = "approvals",
    params(("id" = String, Path, description = "Deployment id, e.g. production-3")),
    responses(
        (status = 200, body = ApprovalView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_approval_view(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ApprovalView>, ServerError> {
    let record = cp.store.deployment(&id)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "deployment {id} not found; GET /api/v1/deployments lists deployments"
        ))
    })?;
    who.require(Role::Viewer, Some(&record.env))?;
    Ok(Json(approval_view::approval_view(&cp, &id).await?))
}

/// Approve or reject a deployment waiting at an approval gate (needs approver for its
/// environment; not the person or token that started it). Name the plan digest and image
/// id you reviewed (from the deployment's `approval`) and the `view_digest` of the approval
/// view you reviewed (`GET /api/v1/deployments/{id}/approval-view`; required to approve);
/// if any changed, 409.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/approvals", tag = "approvals",
    params(("id" = String, Path, description = "Deployment id")),
    request_body = ApprovalRequest,
    responses(
        (status = 201, body = ApprovalAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "not waiting, self-approval or stale approval", body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
async fn decide(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ApprovalRequest>,
) -> Result<(StatusCode, Json<ApprovalAccepted>), ServerError> {
    approvals::decide(&cp, &who, &id, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApprovalAccepted {
            deployment_id: id,
            decision: req.decision,
            by: who.person.clone(),
        }),
    ))
}

/// Environments the caller may view, with their current release, traffic and latest
/// deployment.
#[utoipa::path(get, path = "/api/v1/environments", tag = "environments", params(EnvironmentsQuery),
    responses(
        (status = 200, body = Vec<EnvStatus>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn list_environments(
    State(cp): Cp,
    Extension(who): Who,
    ApiQuery(q): ApiQuery<EnvironmentsQuery>,
) -> Result<Json<Vec<EnvStatus>>, ServerError> {
    let envs: Vec<String> = match &q.names {
        Some(names) => {
            let names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            for name in &names {
                who.require(Role::Viewer, Some(name))?;
            }
            names
        }
        None => cp
            .store
            .environments()?
            .into_iter()
            .filter(|e| who.can(Role::Viewer, Some(e)))
            .collect(),
    };
    Ok(Json(env_statuses(&cp, envs).await?))
}

fn known_env(cp: &ControlPlane, env: &str) -> Result<(), ServerError> {
    if cp.store.environments()?.iter().any(|e| e == env) {
        Ok(())
    } else {
        Err(ServerError::NotFound(format!(
            "environment {env} has no deployments; GET /api/v1/environments lists environments"
        )))
    }
}

/// One environment.
#[utoipa::path(get, path = "/api/v1/environments/{env}", tag = "environments",
    params(("env" = String, Path, description = "Environment name")),
    responses(
        (status = 200, body = EnvStatus),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_environment(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<EnvStatus>, ServerError> {
    who.require(Role::Viewer, Some(&env))?;
    known_env(&cp, &env)?;
    let mut statuses = env_statuses(&cp, vec![env.clone()]).await?;
    statuses
        .pop()
        .map(Json)
        .ok_or_else(|| ServerError::NotFound(format!("environment {env} not found")))
}

/// Roll an environment back to the previous release (or `to`), never rebuilding (needs
/// deployer for the environment). Takes an `Idempotency-Key` like starting a deployment.
#[utoipa::path(post, path = "/api/v1/environments/{env}/rollback", tag = "environments",
    params(
        ("env" = String, Path, description = "Environment name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe"),
    ),
    request_body = RollbackRequest,
    responses(
        (status = 201, body = Started),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
async fn rollback(
    State(cp): Cp,
    Extension(who): Who,
    headers: HeaderMap,
    ApiPath(env): ApiPath<String>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<Response, ServerError> {
    who.require(Role::Deployer, Some(&env))?;
    known_env(&cp, &env)?;
    let key = idempotency_key(&headers)?;
    let fingerprint = serde_json::to_vec(&("rollback", &env, &req)).unwrap_or_default();
    let source = req.source();
    let given = (source != SpecSource::default()).then_some(&source);
    let to = req.to.clone();
    idempotent(
        &cp,
        &who,
        key,
        &fingerprint,
        deploy::start_with(
            &cp,
            &who,
            given,
            Some(&env),
            deploy::Intent::Rollback(&to),
            &deploy::DeployOptions {
                use_latest_secrets: req.use_latest_secrets,
                ..Default::default()
            },
        ),
    )
    .await
}

/// API tokens (never their secrets). Admin for all environments.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "admin",
    responses(
        (status = 200, body = Vec<TokenRecord>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn list_tokens(
    State(cp): Cp,
    Extension(who): Who,
) -> Result<Json<Vec<TokenRecord>>, ServerError> {
    who.require(Role::Admin, None)?;
    Ok(Json(auth::list_tokens(&cp.store)?))
}

/// Create a token; the answer is the only time its secret is shown. Admin for all
/// environments.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "admin", request_body = NewToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
async fn create_token(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ServerError> {
    who.require(Role::Admin, None)?;
    let created = auth::create_token(&cp.store, &who.person, &req)?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revoke a token. Admin for all environments.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "Token id (12 hex digits)")),
    responses(
        (status = 200, body = TokenRecord),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn revoke_token(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TokenRecord>, ServerError> {
    who.require(Role::Admin, None)?;
    let record = auth::revoke_token(&cp.store, &who.person, &id)?;
    Ok(Json(record))
}

/// Users who log in to the web UI (never their password hashes). Admin for all
/// environments.
#[utoipa::path(get, path = "/api/v1/users", tag = "admin",
    responses(
        (status = 200, body = Vec<UserLine>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn list_users(
    State(cp): Cp,
    Extension(who): Who,
) -> Result<Json<Vec<UserLine>>, ServerError> {
    who.require(Role::Admin, None)?;
    Ok(Json(
        auth::list_users(&cp.store)?
            .into_iter()
            .map(UserLine::from)
            .collect(),
    ))
}

/// Add a user with one role (in one environment, or all). Admin for all environments.
#[utoipa::path(post, path = "/api/v1/users", tag = "admin", request_body = NewUser,
    responses(
        (status = 201, body = UserLine),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
async fn add_user(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserLine>), ServerError> {
    who.require(Role::Admin, None)?;
    let user = auth::add_user(
        &cp.store,
        &who.name,
        &req.name,
        vec![Grant {
            role: req.role,
            env: req.env.clone(),
        }],
        &req.password,
    )?;
    // The user is saved before the audit append: when the sink cannot be written the error
    // says so, and adding the user again once it can records it.
    audit::record_async(
        &cp.store,
        &who.name,
        "user.add",
        &user.name,
        serde_json::json!({ "role": req.role, "env": req.env }),
    )
    .await
    .map_err(|e| match e {
        ServerError::AuditSink(_) => ServerError::AuditSink(format!(
            "user {} is saved, but not in the audit log's sink; add the user again once the sink is writable",
            user.name
        )),
        other => other,
    })?;
    Ok((StatusCode::CREATED, Json(UserLine::from(user))))
}

/// The control plane answering: its pid and version.
#[utoipa::path(get, path = "/api/v1/health", tag = "meta",
    responses(
        (status = 200, body = Health),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn health(Extension(_who): Who) -> Json<Health> {
    Json(Health {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Resume every deployment a crash interrupted (they also resume when the control plane
/// starts). Admin for all environments.
#[utoipa::path(post, path = "/api/v1/resume", tag = "deployments",
    responses(
        (status = 200, body = Resumed),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn resume(State(cp): Cp, Extension(who): Who) -> Result<Json<Resumed>, ServerError> {
    who.require(Role::Admin, None)?;
    Ok(Json(Resumed {
        deployments: cp.resume_unfinished()?,
    }))
}

/// Stop the control plane (deployments resume at its next start; traffic is not
/// affected). Only on the control socket.
#[utoipa::path(post, path = "/api/v1/shutdown", tag = "admin",
    responses(
        (status = 200, body = Health),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn shutdown(
    State(cp): Cp,
    Extension(who): Who,
    peer: Option<Extension<ConnectInfo<LocalPeer>>>,
) -> Result<Json<Health>, ServerError> {
    who.require(Role::Admin, None)?;
    if peer.is_none() {
        return Err(ServerError::Forbidden(
            "the control plane stops only from its own machine: run `cutover serve --stop` there"
                .to_string(),
        ));
    }
    cp.request_shutdown();
    Ok(health(Extension(who)).await)
}

/// The audit log, oldest first. Admin for all environments.
#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", params(AuditQuery),
    responses(
        (status = 200, body = Vec<AuditEntry>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
async fn audit_export(
    State(cp): Cp,
    Extension(who): Who,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ServerError> {
    who.require(Role::Admin, None)?;
    Ok(Json(audit::export(&cp.store, q.since_ms)?))
}

/// Check the audit chain; reports the first broken link. Admin for all environments.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "admin",
    responses(
        (status = 200, body = VerifyReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn audit_verify(
    State(cp): Cp,
    Extension(who): Who,
) -> Result<Json<VerifyReport>, ServerError> {
    who.require(Role::Admin, None)?;
    let mut report = audit::verify(&cp.store)?;
    if let Some(anchor) = audit::anchor_of(&cp.store) {
        report.anchor = anchor.disagreements();
    }
    Ok(Json(report))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn metrics(State(cp): Cp, Extension(_who): Who) -> Result<Response, ServerError> {
    let text = crate::metrics::render(&cp).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_executor::fake::FakeProviders;
    use cutover_executor::ExecutorConfig;
    use cutover_store::Store;

    #[tokio::test]
    async fn a_request_dropped_while_served_releases_its_idempotency_key() {
        let cp = ControlPlane::new(
            Store::temporary().unwrap(),
            FakeProviders::new().providers(),
            ExecutorConfig::default(),
        );
        let who = Principal::local("alice");
        let tree: TypedTree<IdempotencyRecord> = cp.store.typed_tree(IDEMPOTENCY_TREE).unwrap();
        let held = tree.clone();
        let start = async move {
            // Running means the key is claimed; then the client goes away.
            assert!(held.get("alice\0k").unwrap().is_some());
            std::future::pending::<Result<Started, ServerError>>().await
        };
        let served = idempotent(&cp, &who, Some("k".to_string()), b"request", start);
        let outcome = tokio::time::timeout(std::time::Duration::from_millis(50), served).await;
        assert!(outcome.is_err(), "the request was still being served");
        assert!(
            tree.get("alice\0k").unwrap().is_none(),
            "dropping the request released its key"
        );
    }
}
