//! The web UI: server-rendered pages (askama templates from `web/templates/`, CSS and a
//! little JS from `web/static/`, all compiled into the binary) for people: environments,
//! live deployment progress with the plan's DAG, approval gates, history with rollback,
//! login.
//!
//! Every page needs a logged-in session (viewer or more); actions check the role for the
//! environment they touch. Sessions live server-side ([`session`]) and exist only after a
//! login; the login form is guarded by a signed double-submit cookie, every other form
//! carries the session's CSRF token; every POST without the right one is refused with 403. Live
//! updates are server-sent events polled from the store; without JS the page refreshes
//! itself.

pub mod dag;
pub mod guardrails_panel;
pub mod limits;
pub mod pages;
pub mod session;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use crate::api::Decision;
use cutover_model::{format_ms, now_ms};

use crate::auth::{self, Principal, Role};
use crate::{view, ControlPlane, ServerError};
use pages::Chrome;
use session::{LoginCsrf, SecureCookies, Session, Sessions};

const CSS: &str = include_str!("../../../../web/static/cutover.css");
const JS: &str = include_str!("../../../../web/static/cutover.js");

/// How long one live-update stream runs before the browser reconnects (and the session is
/// checked again).
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

type Cp = State<Arc<ControlPlane>>;

/// The UI routes. Merge into the HTTP app: `app.merge(ui::router().with_state(cp))`.
pub fn router() -> Router<Arc<ControlPlane>> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/history", get(history))
        .route("/deployments/{id}", get(deployment))
        .route("/deployments/{id}/approval", post(decide))
        .route("/rollback/{env}", get(rollback_page).post(rollback))
        .route("/ui/deployments/{id}/events", get(events))
        .route("/ui/static/cutover.css", get(css))
        .route("/ui/static/cutover.js", get(js))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

// ----- errors -----

/// Why a page could not be shown.
#[derive(Debug)]
pub enum UiError {
    /// Not logged in: go to the login page, then come back to `next`.
    Login {
        next: String,
    },
    /// A POST without the session's CSRF token.
    Csrf,
    Page {
        status: StatusCode,
        message: String,
    },
}

impl From<ServerError> for UiError {
    fn from(e: ServerError) -> UiError {
        let (status, _) = e.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %e, "ui request failed");
            "Something went wrong on the server; the log of `cutover serve` has the details."
                .to_string()
        } else {
            e.to_string()
        };
        UiError::Page { status, message }
    }
}

impl From<cutover_store::StoreError> for UiError {
    fn from(e: cutover_store::StoreError) -> UiError {
        UiError::from(ServerError::from(e))
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Login { next } => {
                let location = format!("/login?next={}", encode_component(&next));
                redirect(&location)
            }
            UiError::Csrf => error_page(
                StatusCode::FORBIDDEN,
                "The form expired or did not come from this site. Go back, reload the page and try again.",
            ),
            UiError::Page { status, message } => error_page(status, &message),
        }
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let heading = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Not possible right now",
        s if s.is_server_error() => "Server error",
        _ => "Cannot do that",
    };
    let page = pages::ErrorPage {
        chrome: Chrome::default(),
        heading: heading.to_string(),
        message: message.to_string(),
    };
    (status, render(&page)).into_response()
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the page failed; the log of `cutover serve` has the details",
            )
                .into_response()
        }
    }
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// Everything but RFC 3986 unreserved characters and `/` is percent-encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Percent-encode everything but unreserved characters and `/`.
fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// A local path to return to after login; anything else (other hosts, schemes) becomes `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 512
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

// ----- sessions -----

/// A logged-in visitor.
struct Visitor {
    session: Session,
    principal: Principal,
}

impl Visitor {
    fn chrome(&self, section: &'static str) -> Chrome {
        Chrome {
            user: Some(self.principal.name.clone()),
            csrf: self.session.csrf.clone(),
            section,
        }
    }
}

fn current_session(
    cp: &ControlPlane,
    headers: &HeaderMap,
) -> Result<Option<(String, Session)>, ServerError> {
    let Some(id) = session::cookie_id(headers) else {
        return Ok(None);
    };
    Ok(Sessions::open(&cp.store)?
        .get(&id, now_ms())?
        .map(|s| (id, s)))
}

/// The logged-in visitor, or a redirect to the login page.
fn visitor(cp: &ControlPlane, headers: &HeaderMap, uri: &Uri) -> Result<Visitor, UiError> {
    match current_session(cp, headers)? {
        Some((id, session)) => match session.principal.as_ref() {
            Some(logged_in) => match current_principal(&cp.store, logged_in)? {
                Some(principal) => Ok(Visitor { session, principal }),
                None => {
                    // Revoked, expired or removed since login: the session ends here.
                    Sessions::open(&cp.store)?.remove(&id)?;
                    Err(UiError::Login {
                        next: uri.path().to_string(),
                    })
                }
            },
            None => Err(UiError::Login {
                next: uri.path().to_string(),
            }),
        },
        None => Err(UiError::Login {
            next: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".to_string()),
        }),
    }
}

/// The principal of a session as it stands now: a token's or user's current grants, or
/// `None` when the token was revoked or expired or the user removed since login.
fn current_principal(
    store: &cutover_store::Store,
    logged_in: &Principal,
) -> Result<Option<Principal>, ServerError> {
    if logged_in.name.starts_with("token:") {
        let now = now_ms();
        return Ok(auth::list_tokens(store)?
            .into_iter()
            .find(|t| t.principal_name() == logged_in.name)
            .filter(|t| t.revoked_at_ms.is_none() && t.expires_at_ms.is_none_or(|at| at > now))
            .map(|t| Principal {
                name: t.principal_name(),
                person: t.person(),
                grants: vec![auth::Grant {
                    role: t.role,
                    env: t.env,
                }],
                socket_peer: false,
            }));
    }
    Ok(auth::list_users(store)?
        .into_iter()
        .find(|u| u.name == logged_in.name)
        .map(|u| Principal {
            person: u.name.clone(),
            name: u.name,
            grants: u.grants,
            socket_peer: false,
        }))
}

/// A logged-in visitor whose POST carries the session's CSRF token. The token is checked
/// before anything else, so a forged form learns nothing.
fn poster(
    cp: &ControlPlane,
    headers: &HeaderMap,
    uri: &Uri,
    csrf: Option<&str>,
) -> Result<Visitor, UiError> {
    match current_session(cp, headers)? {
        Some((_, session)) if session::csrf_matches(&session, csrf) => visitor(cp, headers, uri),
        _ => Err(UiError::Csrf),
    }
}

// ----- login -----

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(
    State(cp): Cp,
    headers: HeaderMap,
    SecureCookies(secure): SecureCookies,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    match current_session(&cp, &headers) {
        Ok(Some((_, s))) if s.principal.is_some() => return redirect(&next),
        Ok(_) => {}
        Err(e) => return UiError::from(e).into_response(),
    }
    // A form still open in another tab keeps its proof; nothing is stored either way.
    let now = now_ms();
    let key = match session::login_key(&cp.store) {
        Ok(key) => key,
        Err(e) => return UiError::from(e).into_response(),
    };
    match LoginCsrf::from_request(&key, &headers, now) {
        Some(proof) if proof.expires_at_ms > now + session::LOGIN_FORM_TTL_MS / 2 => {
            login_form(&proof, next, None)
        }
        _ => fresh_login_page(&cp, secure, StatusCode::OK, next, None),
    }
}

/// The login page with a new signed CSRF proof in its form and cookie. Stores nothing.
fn fresh_login_page(
    cp: &ControlPlane,
    secure: bool,
    status: StatusCode,
    next: String,
    error: Option<String>,
) -> Response {
    let now = now_ms();
    let issued = session::login_key(&cp.store).and_then(|key| LoginCsrf::issue(&key, now));
    let proof = match issued {
        Ok(proof) => proof,
        Err(e) => return UiError::from(e).into_response(),
    };
    let mut response = login_form(&proof, next, error);
    *response.status_mut() = status;
    session::add_cookie(response.headers_mut(), proof.set_cookie(secure, now));
    response
}

fn login_form(proof: &LoginCsrf, next: String, error: Option<String>) -> Response {
    render(&pages::LoginPage {
        chrome: Chrome {
            user: None,
            csrf: proof.value.clone(),
            section: "",
        },
        next,
        error,
    })
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    next: Option<String>,
}

async fn login(
    State(cp): Cp,
    headers: HeaderMap,
    SecureCookies(secure): SecureCookies,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let key = match session::login_key(&cp.store) {
        Ok(key) => key,
        Err(e) => return UiError::from(e).into_response(),
    };
    // The form must come with this control plane's signed cookie and carry its value.
    let Some(proof) = LoginCsrf::from_request(&key, &headers, now_ms()) else {
        return fresh_login_page(
            &cp,
            secure,
            StatusCode::FORBIDDEN,
            next,
            Some("The login form expired. Please try again.".to_string()),
        );
    };
    if !proof.matches(form.csrf.as_deref()) {
        return UiError::Csrf.into_response();
    }
    let nonempty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let store = cp.store.clone();
    let (token, username, password) = (
        nonempty(&form.token),
        nonempty(&form.username),
        nonempty(&form.password),
    );
    // On the control socket (or in-process) the client is this machine.
    let ip = peer.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |p| p.0 .0.ip());
    let user_key = username.as_deref().map(str::trim);
    if let Err(wait) = cp.login_limits.attempt(ip, user_key) {
        tracing::warn!(%ip, user = user_key.unwrap_or("-"), "ui login throttled");
        let secs = wait.as_secs().max(1);
        let mut response = render_login_error(
            &proof,
            next,
            &format!("Too many login attempts. Wait {secs} s and try again."),
        );
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    // At most a few password checks at once, whatever arrives.
    let permit = cp.login_limits.hashing().await;
    let checked = tokio::task::spawn_blocking(move || match (token, username, password) {
        (Some(token), _, _) => auth::authenticate_bearer(&store, token.trim()),
        (None, Some(user), Some(password)) => {
            auth::authenticate_password(&store, user.trim(), &password)
        }
        _ => Ok(None),
    })
    .await;
    drop(permit);
    let principal = match checked {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return UiError::from(e).into_response(),
        Err(e) => {
            return UiError::from(ServerError::Internal(format!("login check failed: {e}")))
                .into_response()
        }
    };
    let Some(principal) = principal else {
        tracing::info!("ui login refused");
        return render_login_error(&proof, next, "Wrong user name, password or token.");
    };
    if principal.grants.is_empty() {
        return render_login_error(
            &proof,
            next,
            "This account has no role in any environment; ask an admin for one.",
        );
    }
    let sessions = match Sessions::open(&cp.store) {
        Ok(s) => s,
        Err(e) => return UiError::from(e).into_response(),
    };
    // A session with a new id from the server, so an id planted before login is worth
    // nothing; an older session of this browser ends.
    if let Some(old) = session::cookie_id(&headers) {
        let _ = sessions.remove(&old);
    }
    let _ = sessions.purge_expired(now_ms());
    let name = principal.name.clone();
    let (id, _) = match sessions.create(principal, now_ms()) {
        Ok(x) => x,
        Err(e) => return UiError::from(e).into_response(),
    };
    tracing::info!(user = %name, "ui login");
    let mut response = redirect(&next);
    session::add_cookie(response.headers_mut(), session::set_cookie(&id, secure));
    session::add_cookie(response.headers_mut(), LoginCsrf::clear_cookie(secure));
    response
}

fn render_login_error(proof: &LoginCsrf, next: String, message: &str) -> Response {
    let mut response = login_form(proof, next, Some(message.to_string()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(cp): Cp,
    headers: HeaderMap,
    SecureCookies(secure): SecureCookies,
    Form(form): Form<CsrfForm>,
) -> Response {
    let found = match current_session(&cp, &headers) {
        Ok(s) => s,
        Err(e) => return UiError::from(e).into_response(),
    };
    if let Some((id, session)) = found {
        if !session::csrf_matches(&session, form.csrf.as_deref()) {
            return UiError::Csrf.into_response();
        }
        if let Err(e) = Sessions::open(&cp.store).and_then(|s| s.remove(&id)) {
            return UiError::from(e).into_response();
        }
    }
    let mut response = redirect("/login");
    session::add_cookie(response.headers_mut(), session::clear_cookie(secure));
    response
}

/// Remove expired web sessions; at start, hourly and at every login.
pub fn purge_expired_sessions(store: &cutover_store::Store) -> Result<usize, ServerError> {
    Sessions::open(store)?.purge_expired(now_ms())
}

// ----- pages -----

async fn index(State(cp): Cp, headers: HeaderMap, uri: Uri) -> Result<Response, UiError> {
    let v = visitor(&cp, &headers, &uri)?;
    let mut envs = Vec::new();
    for env in cp.store.environments()? {
        if !v.principal.can(Role::Viewer, Some(&env)) {
            continue;
        }
        let current = cp.store.current_release(&env)?;
        let route = cp.providers.traffic.route(&env).await.ok().flatten();
        let latest = cp.store.deployments(Some(&env), 1)?.into_iter().next();
        envs.push(pages::EnvCard {
            current: current.map(|r| pages::CurrentRelease {
                image_short: pages::short_digest(&r.image.id),
                image_id: r.image.id,
                image_tag: r.image.tag,
                at: format_ms(r.created_at_ms),
                by: r.created_by,
                deployment_id: r.deployment_id,
                app: r.app,
                id: r.id,
            }),
            traffic: route
                .map(|r| {
                    let total: u32 = r.backends.iter().map(|b| b.weight).sum::<u32>().max(1);
                    r.backends
                        .iter()
                        .map(|b| pages::TrafficShare {
                            release: b.release.clone(),
                            weight: b.weight * 100 / total,
                            addrs: b.addrs.len(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            warm: cp
                .store
                .retirements(&env)?
                .into_iter()
                .map(|r| pages::WarmLine {
                    release: r.release,
                    until: format_ms(r.due_at_ms),
                })
                .collect(),
            active: cp.store.lease(&env)?.map(|l| l.deployment_id),
            latest: latest.map(|d| {
                let (status, _) = view::status_parts(&d.status);
                pages::LatestLine {
                    class: pages::status_class(status),
                    status: status.to_string(),
                    id: d.id,
                }
            }),
            env,
        });
    }
    Ok(render(&pages::IndexPage {
        chrome: v.chrome("envs"),
        envs,
    }))
}

async fn deployment(
    State(cp): Cp,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, UiError> {
    let v = visitor(&cp, &headers, &uri)?;
    let mut page = pages::deployment_page(&cp, &v.principal, v.chrome(""), &id)?;
    if page.approval.is_some() {
        page.review = Some(crate::approval_view::approval_view(&cp, &id).await?);
    }
    Ok(render(&page))
}

/// Live updates of a deployment page: a `state` event with a [`pages::Snapshot`] whenever
/// something changed, ending after the deployment finished.
async fn events(
    State(cp): Cp,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let v = match visitor(&cp, &headers, &uri) {
        Ok(v) => v,
        Err(UiError::Login { .. }) => {
            return Err(UiError::Page {
                status: StatusCode::UNAUTHORIZED,
                message: "log in again".to_string(),
            })
        }
        Err(e) => return Err(e),
    };
    let live = cp.follow(&id)?;
    let env = live.borrow().env.clone();
    v.principal.require(Role::Viewer, Some(&env))?;
    let deadline = tokio::time::Instant::now() + STREAM_LIFETIME;
    let mut last: Option<String> = None;
    let stream = crate::follow::changes(cp, id, live)
        .filter_map(move |detail| {
            let json = serde_json::to_string(&pages::snapshot_of(&detail)).unwrap_or_default();
            let fresh = last.as_deref() != Some(json.as_str());
            last = Some(json.clone());
            std::future::ready(fresh.then(|| Ok(Event::default().event("state").data(json))))
        })
        .take_until(tokio::time::sleep_until(deadline));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: Option<String>,
    decision: Option<String>,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    plan_digest: String,
    #[serde(default)]
    image_id: String,
    #[serde(default)]
    view_digest: String,
}

async fn decide(
    State(cp): Cp,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<DecisionForm>,
) -> Result<Response, UiError> {
    let v = poster(&cp, &headers, &uri, form.csrf.as_deref())?;
    let record = cp.store.deployment(&id)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "deployment {id} not found; the history lists deployments"
        ))
    })?;
    v.principal.require(Role::Approver, Some(&record.env))?;
    let decision = match form.decision.as_deref() {
        Some("approve") => Decision::Approve,
        Some("reject") => Decision::Reject,
        _ => {
            return Err(
                ServerError::BadRequest("decision: choose approve or reject".to_string()).into(),
            )
        }
    };
    let request = crate::api::ApprovalRequest {
        decision,
        comment: form.comment.trim().to_string(),
        plan_digest: form.plan_digest,
        image_id: form.image_id,
        view_digest: Some(form.view_digest),
    };
    crate::approvals::decide(&cp, &v.principal, &id, &request).await?;
    Ok(redirect(&format!("/deployments/{}", encode_component(&id))))
}

async fn history(State(cp): Cp, headers: HeaderMap, uri: Uri) -> Result<Response, UiError> {
    let v = visitor(&cp, &headers, &uri)?;
    let mut envs = Vec::new();
    for env in cp.store.environments()? {
        if !v.principal.can(Role::Viewer, Some(&env)) {
            continue;
        }
        let current = cp.store.current_release_id(&env)?;
        envs.push(pages::RollbackLine {
            target: rollback_target(&cp, &env, current.as_deref())?,
            can_rollback: v.principal.can(Role::Deployer, Some(&env)),
            current,
            env,
        });
    }
    let mut rows = Vec::new();
    for d in cp.store.deployments(None, 200)? {
        if !v.principal.can(Role::Viewer, Some(&d.env)) {
            continue;
        }
        let image = cp.store.release(&d.env, &d.release_id)?.map(|r| r.image.id);
        let (status, reason) = view::status_parts(&d.status);
        rows.push(pages::HistoryRow {
            class: pages::status_class(status),
            kind: view::kind_label(&d.kind).to_string(),
            image_short: image
                .as_deref()
                .map(pages::short_digest)
                .unwrap_or_default(),
            image,
            id: d.id,
            env: d.env,
            status: status.to_string(),
            reason,
            release: d.release_id,
            by: d.requested_by,
            when: format_ms(d.created_at_ms),
        });
    }
    Ok(render(&pages::HistoryPage {
        chrome: v.chrome("history"),
        envs,
        rows,
    }))
}

/// The release a rollback of `env` goes back to by default: the newest succeeded release
/// other than the current one.
fn rollback_target(
    cp: &ControlPlane,
    env: &str,
    current: Option<&str>,
) -> Result<Option<String>, ServerError> {
    for entry in cp.store.history(env)? {
        if Some(entry.release_id.as_str()) != current
            && entry.outcome == "succeeded"
            && cp.store.release(env, &entry.release_id)?.is_some()
        {
            return Ok(Some(entry.release_id));
        }
    }
    Ok(None)
}

async fn rollback_page(
    State(cp): Cp,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(env): UrlPath<String>,
) -> Result<Response, UiError> {
    let v = visitor(&cp, &headers, &uri)?;
    v.principal.require(Role::Deployer, Some(&env))?;
    let current = cp.store.current_release_id(&env)?;
    let Some(target) = rollback_target(&cp, &env, current.as_deref())? else {
        return Err(ServerError::BadRequest(format!(
            "environment {env} has no earlier release to roll back to"
        ))
        .into());
    };
    let release = cp.store.release(&env, &target)?;
    let warm = cp
        .store
        .retirements(&env)?
        .iter()
        .any(|r| r.release == target);
    Ok(render(&pages::RollbackPage {
        chrome: v.chrome("history"),
        env,
        current,
        target_image: release.map(|r| r.image.id),
        target,
        warm,
    }))
}

#[derive(Deserialize)]
struct RollbackForm {
    csrf: Option<String>,
    confirm: Option<String>,
    release: Option<String>,
}

async fn rollback(
    State(cp): Cp,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(env): UrlPath<String>,
    Form(form): Form<RollbackForm>,
) -> Result<Response, UiError> {
    let v = poster(&cp, &headers, &uri, form.csrf.as_deref())?;
    v.principal.require(Role::Deployer, Some(&env))?;
    if form.confirm.as_deref() != Some(env.as_str()) {
        return Err(ServerError::BadRequest(format!(
            "confirm: the rollback of {env} was not confirmed; use the confirmation page"
        ))
        .into());
    }
    let release = form.release.filter(|r| !r.is_empty());
    let started = crate::deploy::start(&cp, &v.principal, None, Some(&env), Some(&release)).await?;
    Ok(redirect(&format!(
        "/deployments/{}",
        encode_component(&started.deployment_id)
    )))
}

// ----- static files -----

async fn css() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", JS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests;
