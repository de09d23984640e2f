//! The HTTP API for CI (`/api/v1`, JSON, bearer tokens) and `/metrics`.
//!
//! Every route is declared once in [`routes`] with the least role it needs; the router is
//! built from that table, each route behind the authentication layer, so nothing is
//! reachable without a valid token (401) and a role that allows it somewhere (403).
//! Handlers then check the role against the environment they act on. The OpenAPI document
//! ([`ApiDoc`], served at `/api/v1/openapi.json`) is generated from the handlers'
//! annotations; a test checks that every route of the table is in it.
//!
//! Errors are JSON `{code, message}` with the stable codes of [`ServerError`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};

use cutover_model::now_ms;
use cutover_store::TypedTree;

use crate::api::{
    ApprovalInfo, DecisionLine, DeploymentDetail, EnvStatus, ErrorBody, HistoryLine, InstanceLine,
    Started, StepLine, WarmRelease,
};
use crate::approvals::DecisionBody;
use crate::audit::{AuditEntry, BrokenLink, VerifyReport};
use crate::auth::{CreatedToken, NewToken, Principal, Role, TokenRecord};
use crate::deploy::SpecSource;
use crate::handlers::{env_statuses, history_lines};
use crate::{approvals, audit, auth, deploy, view, ControlPlane, ServerError};

type Cp = State<Arc<ControlPlane>>;

/// The idempotency header of POSTs that start work.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const IDEMPOTENCY_TREE: &str = "idempotency_keys";

// ----- extractors that answer with the API's error format -----

/// `Json` whose rejections are `{code, message}` naming the bad field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ServerError::UnsupportedMediaType(
                    "send the body as JSON with the header Content-Type: application/json"
                        .to_string(),
                ))
            }
            Err(rejection) => {
                let text = rejection.body_text();
                // axum says "Failed to ... target type: <path>: <serde error>"; keep the part
                // that names the field.
                let detail = text
                    .split_once("type: ")
                    .or_else(|| text.split_once("JSON: "))
                    .map_or(text.as_str(), |(_, d)| d);
                Err(ServerError::BadRequest(format!(
                    "invalid request body: {detail}"
                )))
            }
        }
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

// ----- request and response bodies of this API -----

/// What to plan: a spec (by path, or as text with the directory it belongs to) and an
/// environment (may be left out when the spec has exactly one).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Absolute path of `deploy.toml` on the control plane's machine.
    #[serde(default)]
    pub spec_path: Option<String>,
    /// The text of a `deploy.toml` (give `base_dir` with it).
    #[serde(default)]
    pub spec: Option<String>,
    /// Absolute directory on the control plane's machine that relative paths in `spec`
    /// resolve against.
    #[serde(default)]
    pub base_dir: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
}

impl PlanRequest {
    fn source(&self) -> SpecSource {
        SpecSource {
            spec_path: self.spec_path.clone(),
            spec: self.spec.clone(),
            base_dir: self.base_dir.clone(),
        }
    }
}

/// A plan and its text rendering.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanResponse {
    /// The immutable plan (DAG of steps) with its digest.
    #[schema(value_type = Object)]
    pub plan: cutover_model::Plan,
    pub digest: String,
    /// The plan as `cutover plan` prints it.
    pub text: String,
}

/// A rollback: to `to`, or to the previous release. The spec may be left out: the one of
/// the environment's newest deployment is used.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub spec_path: Option<String>,
    #[serde(default)]
    pub spec: Option<String>,
    #[serde(default)]
    pub base_dir: Option<String>,
}

/// A decision at an approval gate; it names the plan digest and image id it approves
/// (see the deployment's `approval` field).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub decision: DecisionBody,
    #[serde(default)]
    pub comment: String,
    pub plan_digest: String,
    pub image_id: String,
}

/// A decision that was recorded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalAccepted {
    pub deployment_id: String,
    pub decision: DecisionBody,
    pub by: String,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this environment.
    pub env: Option<String>,
    /// At most this many (1 to 500, default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries at or after this time (unix ms).
    pub since_ms: Option<u64>,
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

/// Every route of the HTTP API. Nothing is served that is not in this table.
pub fn routes() -> Vec<RouteDef> {
    use Method as M;
    vec![
        route(
            M::GET,
            "/api/v1/openapi.json",
            Role::Viewer,
            get(openapi_json),
        ),
        route(M::POST, "/api/v1/plans", Role::Deployer, post(create_plan)),
        route(
            M::POST,
            "/api/v1/deployments",
            Role::Deployer,
            post(start_deployment),
        ),
        route(
            M::GET,
            "/api/v1/deployments",
            Role::Viewer,
            get(list_deployments),
        ),
        route(
            M::GET,
            "/api/v1/deployments/{id}",
            Role::Viewer,
            get(get_deployment),
        ),
        route(
            M::GET,
            "/api/v1/deployments/{id}/events",
            Role::Viewer,
            get(deployment_events),
        ),
        route(
            M::POST,
            "/api/v1/deployments/{id}/approvals",
            Role::Approver,
            post(decide),
        ),
        route(
            M::GET,
            "/api/v1/environments",
            Role::Viewer,
            get(list_environments),
        ),
        route(
            M::GET,
            "/api/v1/environments/{env}",
            Role::Viewer,
            get(get_environment),
        ),
        route(
            M::POST,
            "/api/v1/environments/{env}/rollback",
            Role::Deployer,
            post(rollback),
        ),
        route(M::GET, "/api/v1/tokens", Role::Admin, get(list_tokens)),
        route(M::POST, "/api/v1/tokens", Role::Admin, post(create_token)),
        route(
            M::POST,
            "/api/v1/tokens/{id}/revoke",
            Role::Admin,
            post(revoke_token),
        ),
        route(M::GET, "/api/v1/audit", Role::Admin, get(audit_export)),
        route(
            M::GET,
            "/api/v1/audit/verify",
            Role::Admin,
            get(audit_verify),
        ),
        route(M::GET, "/metrics", Role::Viewer, get(metrics)),
    ]
}

/// The HTTP application: the API, `/metrics`, and JSON answers for unknown paths.
pub fn http_app(cp: Arc<ControlPlane>) -> Router {
    let mut router: Router<Arc<ControlPlane>> = Router::new();
    for def in routes() {
        let guarded = def.handler.route_layer(middleware::from_fn_with_state(
            (cp.clone(), def.role),
            authenticate,
        ));
        router = router.route(def.path, guarded);
    }
    router
        .merge(crate::ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(cp)
}

async fn not_found() -> ServerError {
    ServerError::NotFound("no such endpoint; see /api/v1/openapi.json".to_string())
}

async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        code: "method_not_allowed".to_string(),
        message: "this endpoint does not take that method; see /api/v1/openapi.json".to_string(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// The authentication layer: a valid bearer token, with a role that allows the route in
/// some environment. Puts the [`Principal`] in the request's extensions.
async fn authenticate(
    State((cp, role)): State<(Arc<ControlPlane>, Role)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ServerError::Unauthorized(
                "missing bearer token: send Authorization: Bearer <token> (an admin creates one with `cutover token create`)"
                    .to_string(),
            )
        })?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| {
            ServerError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".to_string(),
            )
        })?
        .trim();
    let principal = auth::authenticate_bearer(&cp.store, token)?.ok_or_else(|| {
        ServerError::Unauthorized(
            "the token is not valid (unknown, expired or revoked); ask an admin for a new one"
                .to_string(),
        )
    })?;
    if !principal.can_somewhere(role) {
        return Err(ServerError::Forbidden(format!(
            "{} lacks the {role} role this endpoint needs; ask an admin for a token with it",
            principal.name
        )));
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

type Who = Extension<Principal>;

// ----- OpenAPI -----

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cutover API",
        description = "Plan, start, follow, approve and roll back deployments. Every endpoint needs `Authorization: Bearer <token>` (`cutover token create`). Errors are JSON `{code, message}` with stable codes: bad_request, unauthorized, forbidden, not_found, conflict, unsupported_media_type, unavailable, internal."
    ),
    paths(
        openapi_json,
        create_plan,
        start_deployment,
        list_deployments,
        get_deployment,
        deployment_events,
        decide,
        list_environments,
        get_environment,
        rollback,
        list_tokens,
        create_token,
        revoke_token,
        audit_export,
        audit_verify,
        metrics,
    ),
    components(schemas(
        ErrorBody, PlanRequest, PlanResponse, Started, DeploymentDetail, StepLine, ApprovalInfo,
        DecisionLine, HistoryLine, EnvStatus, InstanceLine, WarmRelease, RollbackRequest,
        ApprovalRequest, ApprovalAccepted, DecisionBody, TokenRecord, NewToken, CreatedToken,
        Role, AuditEntry, VerifyReport, BrokenLink
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
    let plan = deploy::plan(&cp, &who, Some(&req.source()), req.env.as_deref(), None).await?;
    Ok(Json(PlanResponse {
        digest: plan.digest.clone(),
        text: cutover_planner::render_text(&plan),
        plan,
    }))
}

/// What an idempotency key maps to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    /// sha256 of the request (method, path, body).
    request: String,
    /// `None` while the first request is being served.
    started: Option<Started>,
    at_ms: u64,
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

/// Run `start` at most once per (principal, key): the same key with the same request
/// returns the first answer; with another request it is refused.
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
    };
    let held = tree.insert_if_absent(&store_key, &mine)?;
    if held.at_ms != mine.at_ms || held.request != digest || held.started.is_some() {
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
    match start.await {
        Ok(started) => {
            tree.insert(
                &store_key,
                &IdempotencyRecord {
                    started: Some(started.clone()),
                    ..mine
                },
            )?;
            cp.store.flush()?;
            Ok((StatusCode::CREATED, Json(started)).into_response())
        }
        Err(e) => {
            // Nothing started: the key may be used again.
            tree.remove(&store_key)?;
            Err(e)
        }
    }
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
    idempotent(
        &cp,
        &who,
        key,
        &fingerprint,
        deploy::start(&cp, &who, Some(&req.source()), req.env.as_deref(), None),
    )
    .await
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

/// Where an event stream is.
struct Follow {
    cp: Arc<ControlPlane>,
    id: String,
    /// Journal entries sent.
    sent: usize,
    /// The detail last sent (status and steps), to send changes only.
    last: Option<String>,
    done: bool,
}

fn sse_json<T: Serialize>(event: &str, value: &T) -> SseEvent {
    SseEvent::default()
        .event(event)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".to_string()))
}

/// Progress of a deployment as server-sent events: `journal` (each journal entry, with its
/// sequence number as the event id; send `Last-Event-ID` to resume), `deployment` (the
/// whole detail whenever it changed) and finally `end` when the deployment finished.
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
    visible_detail(&cp, &who, &id)?;
    let sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |seq| seq.saturating_add(1));
    let start = Follow {
        cp,
        id,
        sent,
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let detail = match view::detail(&st.cp.store, &st.id) {
                Ok(detail) => detail,
                Err(e) => {
                    st.done = true;
                    let body = ErrorBody {
                        code: e.status_and_code().1.to_string(),
                        message: e.to_string(),
                    };
                    return Some((Ok(sse_json("error", &body)), st));
                }
            };
            if let Some(entry) = detail.journal.get(st.sent) {
                st.sent += 1;
                let event = sse_json("journal", entry).id(entry.seq.to_string());
                return Some((Ok(event), st));
            }
            let mut summary = detail.clone();
            summary.journal.clear();
            let text = serde_json::to_string(&summary).unwrap_or_default();
            if st.last.as_deref() != Some(text.as_str()) {
                st.last = Some(text.clone());
                return Some((Ok(SseEvent::default().event("deployment").data(text)), st));
            }
            if detail.finished_at_ms.is_some() {
                st.done = true;
                let end = serde_json::json!({"status": detail.status, "reason": detail.reason});
                return Some((Ok(sse_json("end", &end)), st));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Approve or reject a deployment waiting at an approval gate (needs approver for its
/// environment; not the person or token that started it). Name the plan digest and image
/// id you reviewed (from the deployment's `approval`); if either changed, 409.
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
    approvals::decide(
        &cp,
        &who,
        &id,
        req.decision.into(),
        &req.plan_digest,
        &req.image_id,
        &req.comment,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(ApprovalAccepted {
            deployment_id: id,
            decision: req.decision,
            by: who.name.clone(),
        }),
    ))
}

/// Environments the caller may view, with their current release, traffic and latest
/// deployment.
#[utoipa::path(get, path = "/api/v1/environments", tag = "environments",
    responses(
        (status = 200, body = Vec<EnvStatus>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn list_environments(
    State(cp): Cp,
    Extension(who): Who,
) -> Result<Json<Vec<EnvStatus>>, ServerError> {
    let envs: Vec<String> = cp
        .store
        .environments()?
        .into_iter()
        .filter(|e| who.can(Role::Viewer, Some(e)))
        .collect();
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
    let source = SpecSource {
        spec_path: req.spec_path.clone(),
        spec: req.spec.clone(),
        base_dir: req.base_dir.clone(),
    };
    let given = (source != SpecSource::default()).then_some(&source);
    let to = req.to.clone();
    idempotent(
        &cp,
        &who,
        key,
        &fingerprint,
        deploy::start(&cp, &who, given, Some(&env), Some(&to)),
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
    let created = auth::create_token(&cp.store, &who.name, &req)?;
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
    let record = auth::revoke_token(&cp.store, &who.name, &id)?;
    Ok(Json(record))
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
    Ok(Json(audit::verify(&cp.store)?))
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
