//! In-process tests of the UI router (`oneshot`): login and sessions, CSRF, role gating,
//! and every page rendered for each deployment state against the fake providers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};

use crate::api::{DeploymentState, StepState};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use cutover_executor::fake::{self, FakeHealth, FakeProviders};
use cutover_executor::ExecutorConfig;
use cutover_model::{json_digest, ApprovalSpec, DeploymentStatus, Plan};
use cutover_store::{DeploymentRecord, Lease, Store};

use crate::auth::{self, Grant, Role};
use crate::ControlPlane;

struct Ui {
    cp: Arc<ControlPlane>,
    app: Router,
    fakes: FakeProviders,
}

fn ui() -> Ui {
    let fakes = FakeProviders::new();
    let cp = ControlPlane::new(
        Store::temporary().unwrap(),
        fakes.providers(),
        ExecutorConfig::default(),
    );
    for (name, role, env) in [
        ("alice", Role::Approver, None),
        ("victor", Role::Viewer, None),
        ("dora", Role::Deployer, Some("prod")),
        ("tester", Role::Admin, None),
    ] {
        auth::add_user(
            &cp.store,
            "test",
            name,
            vec![Grant {
                role,
                env: env.map(str::to_string),
            }],
            "correct horse battery",
        )
        .unwrap();
    }
    Ui {
        app: super::router().with_state(cp.clone()),
        cp,
        fakes,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn cookie(&self) -> Option<String> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Request<Body> {
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", super::encode_component(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(body)).unwrap()
}

/// The value of the first `name="csrf"` input of a page.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// `cutover_session=<id>` from a Set-Cookie value.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// Log in as `user`; returns the cookie and the session's CSRF token.
async fn login(app: &Router, user: &str) -> (String, String) {
    let page = send(app, get("/login", None)).await;
    let anon = cookie_pair(&page.cookie().unwrap());
    let csrf = csrf_of(&page.body);
    let answer = send(
        app,
        post(
            "/login",
            Some(&anon),
            &[
                ("csrf", &csrf),
                ("username", user),
                ("password", "correct horse battery"),
                ("next", "/"),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookie = cookie_pair(&answer.cookie().unwrap());
    assert_ne!(cookie, anon, "login gives a new session id");
    let home = send(app, get("/", Some(&cookie))).await;
    assert_eq!(home.status, StatusCode::OK);
    (cookie.clone(), csrf_of(&home.body))
}

/// Save `plan` as the control plane does (taking a deployment number), without running it.
fn save(cp: &ControlPlane, plan: &Plan) {
    cp.store.next_deployment_seq(&plan.env).unwrap();
    cp.store
        .save_plan(plan, &DeploymentRecord::from_plan(plan))
        .unwrap();
}

fn start(cp: &Arc<ControlPlane>, plan: &Plan) {
    cp.store.next_deployment_seq(&plan.env).unwrap();
    cp.store
        .acquire_lease(
            &plan.env,
            Lease {
                deployment_id: plan.deployment_id.clone(),
                holder: plan.requested_by.clone(),
                acquired_at_ms: cutover_model::now_ms(),
            },
        )
        .unwrap();
    cp.store
        .save_plan(plan, &DeploymentRecord::from_plan(plan))
        .unwrap();
    cp.spawn_run(&plan.deployment_id);
}

async fn wait_for(
    cp: &ControlPlane,
    id: &str,
    what: impl Fn(&crate::api::DeploymentDetail) -> bool,
) {
    for _ in 0..500 {
        let d = crate::view::detail(&cp.store, id).unwrap();
        if what(&d) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("deployment {id} did not reach the expected state");
}

fn approval_gate() -> ApprovalSpec {
    ApprovalSpec {
        required: 1,
        timeout: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn pages_need_login() {
    let ui = ui();
    for path in ["/", "/history", "/deployments/prod-1", "/rollback/prod"] {
        let answer = send(&ui.app, get(path, None)).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert!(answer.location().starts_with("/login?next="), "{path}");
    }
    let events = send(&ui.app, get("/ui/deployments/prod-1/events", None)).await;
    assert_eq!(events.status, StatusCode::UNAUTHORIZED);
    let css = send(&ui.app, get("/ui/static/cutover.css", None)).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.body.contains(".dag"));
}

#[tokio::test]
async fn login_cookie_is_http_only_strict_and_secure_behind_tls() {
    let ui = ui();
    let page = send(&ui.app, get("/login", None)).await;
    let set = page.cookie().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"));
    assert!(!set.contains("Secure"));
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let csrf = csrf_of(&page.body);
    let mut req = post(
        "/login",
        Some(&cookie_pair(&set)),
        &[
            ("csrf", &csrf),
            ("username", "alice"),
            ("password", "correct horse battery"),
            ("next", "https://evil.example/"),
        ],
    );
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let answer = send(&ui.app, req).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "/", "no open redirect after login");
    let set = answer.cookie().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("; Secure")
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_token_are_refused() {
    let ui = ui();
    let page = send(&ui.app, get("/login", None)).await;
    let cookie = cookie_pair(&page.cookie().unwrap());
    let csrf = csrf_of(&page.body);
    let answer = send(
        &ui.app,
        post(
            "/login",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", "wrong password"),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("Wrong user name, password or token."));
    let answer = send(
        &ui.app,
        post(
            "/login",
            Some(&cookie),
            &[("csrf", &csrf), ("token", "cut_nope")],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let still_out = send(&ui.app, get("/", Some(&cookie))).await;
    assert_eq!(still_out.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn token_login_works() {
    let ui = ui();
    let created = auth::create_token(
        &ui.cp.store,
        "test",
        &auth::NewToken {
            role: Role::Viewer,
            env: Some("prod".to_string()),
            name: Some("ci".to_string()),
            owner: None,
            expires_in_ms: None,
        },
    )
    .unwrap();
    let page = send(&ui.app, get("/login", None)).await;
    let cookie = cookie_pair(&page.cookie().unwrap());
    let answer = send(
        &ui.app,
        post(
            "/login",
            Some(&cookie),
            &[("csrf", &csrf_of(&page.body)), ("token", &created.token)],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookie = cookie_pair(&answer.cookie().unwrap());
    let home = send(&ui.app, get("/", Some(&cookie))).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        !home.body.contains(&created.token),
        "tokens are never rendered"
    );
}

#[tokio::test]
async fn posts_without_the_session_csrf_token_are_refused() {
    let ui = ui();
    let (cookie, csrf) = login(&ui.app, "alice").await;
    let forged = "0".repeat(64);
    for (path, form) in [
        ("/logout", vec![]),
        ("/logout", vec![("csrf", forged.as_str())]),
        (
            "/deployments/prod-1/approval",
            vec![("csrf", forged.as_str()), ("decision", "approve")],
        ),
        ("/rollback/prod", vec![("confirm", "prod")]),
    ] {
        let answer = send(&ui.app, post(path, Some(&cookie), &form)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path} {form:?}");
        assert!(answer.body.contains("did not come from this site"));
    }
    // No session at all: refused the same way.
    let answer = send(&ui.app, post("/rollback/prod", None, &[("csrf", &csrf)])).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = send(&ui.app, post("/login", None, &[("csrf", &csrf)])).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // The session survived the forged logouts; a real one ends it.
    let answer = send(&ui.app, post("/logout", Some(&cookie), &[("csrf", &csrf)])).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(answer.cookie().unwrap().contains("Max-Age=0"));
    let after = send(&ui.app, get("/", Some(&cookie))).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn rollback_needs_deployer_role_and_confirmation() {
    let ui = ui();
    let plan = fake::deploy_plan("prod-1", "prod", "r1", None, 1);
    start(&ui.cp, &plan);
    wait_for(&ui.cp, "prod-1", |d| d.status == DeploymentState::Succeeded).await;

    let (viewer, viewer_csrf) = login(&ui.app, "victor").await;
    let page = send(&ui.app, get("/rollback/prod", Some(&viewer))).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let answer = send(
        &ui.app,
        post(
            "/rollback/prod",
            Some(&viewer),
            &[("csrf", &viewer_csrf), ("confirm", "prod")],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.contains("deployer"));
    let history = send(&ui.app, get("/history", Some(&viewer))).await;
    assert!(
        !history.body.contains("/rollback/prod"),
        "no button for viewers"
    );

    let (deployer, deployer_csrf) = login(&ui.app, "dora").await;
    let answer = send(
        &ui.app,
        post(
            "/rollback/prod",
            Some(&deployer),
            &[("csrf", &deployer_csrf)],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.contains("not confirmed"));
    let answer = send(
        &ui.app,
        post(
            "/rollback/staging",
            Some(&deployer),
            &[("csrf", &deployer_csrf), ("confirm", "staging")],
        ),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "dora deploys to prod only"
    );
}

#[tokio::test]
async fn deployment_page_renders_every_state() {
    let ui = ui();
    // succeeded
    let first = fake::deploy_plan("prod-1", "prod", "r1", None, 2);
    start(&ui.cp, &first);
    wait_for(&ui.cp, "prod-1", |d| d.status == DeploymentState::Succeeded).await;
    // rolled back: the new release never gets healthy
    let release = ui.cp.store.current_release("prod").unwrap().unwrap();
    ui.fakes
        .set_health("r2", FakeHealth::Unhealthy("503 from /healthz".to_string()));
    let failing = fake::deploy_plan("prod-2", "prod", "r2", Some(&fake::Blue::of(&release)), 1);
    start(&ui.cp, &failing);
    wait_for(&ui.cp, "prod-2", |d| {
        d.status == DeploymentState::RolledBack
    })
    .await;
    // planned, never started; then stuck
    let planned = fake::deploy_plan("staging-1", "staging", "r1", None, 1);
    save(&ui.cp, &planned);
    let stuck = fake::deploy_plan("qa-1", "qa", "r1", None, 1);
    save(&ui.cp, &stuck);
    ui.cp
        .store
        .set_status(
            "qa-1",
            DeploymentStatus::Stuck {
                reason: "undo of provision-0 failed: <b>engine gone</b>".to_string(),
            },
        )
        .unwrap();

    let (cookie, _) = login(&ui.app, "alice").await;
    for (id, status, must_contain) in [
        ("prod-1", "succeeded", "release recorded as current"),
        ("prod-2", "rolled_back", "503 from /healthz"),
        ("staging-1", "planned", "http-equiv=\"refresh\""),
        ("qa-1", "stuck", "&#60;b&#62;engine gone&#60;/b&#62;"),
    ] {
        let page = send(&ui.app, get(&format!("/deployments/{id}"), Some(&cookie))).await;
        assert_eq!(page.status, StatusCode::OK, "{id}: {}", page.body);
        assert!(
            page.body.contains(&format!(">{status}</span>")),
            "{id} shows {status}"
        );
        assert!(
            page.body.contains(must_contain),
            "{id} shows {must_contain}"
        );
        assert!(page.body.contains("<svg class=\"dag\""), "{id} has its dag");
        assert!(!page.body.contains("<b>engine"), "{id}: text is escaped");
    }
    let succeeded = send(&ui.app, get("/deployments/prod-1", Some(&cookie))).await;
    assert!(succeeded
        .body
        .contains("class=\"node succeeded\" data-base=\"node\" data-step=\"build\""));
    assert!(
        succeeded.body.contains("Scan verdict"),
        "supply-chain steps are summarized"
    );
    assert!(
        !succeeded.body.contains("http-equiv=\"refresh\""),
        "finished pages do not refresh"
    );
    let undone = send(&ui.app, get("/deployments/prod-2", Some(&cookie))).await;
    assert!(undone.body.contains("node undone"));
    assert!(undone.body.contains("node failed"));

    let missing = send(&ui.app, get("/deployments/prod-99", Some(&cookie))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let index = send(&ui.app, get("/", Some(&cookie))).await;
    for env in ["prod", "staging", "qa"] {
        assert!(
            index.body.contains(&format!(">{env}</h2>")),
            "index shows {env}"
        );
    }
    assert!(
        index.body.contains("<strong>r1</strong>"),
        "current release of prod"
    );
    let history = send(&ui.app, get("/history", Some(&cookie))).await;
    for id in ["prod-1", "prod-2", "staging-1", "qa-1"] {
        assert!(
            history.body.contains(&format!("/deployments/{id}\"")),
            "history lists {id}"
        );
    }
}

#[tokio::test]
async fn approval_gate_shows_the_form_and_only_approvers_decide() {
    let ui = ui();
    let plan = fake::deploy_plan_with_approval("prod-1", "prod", "r1", None, 1, approval_gate());
    start(&ui.cp, &plan);
    wait_for(&ui.cp, "prod-1", |d| {
        d.steps
            .iter()
            .any(|s| s.kind == "approval" && s.state == StepState::Started)
    })
    .await;

    // The requester sees the gate but cannot decide.
    let (requester, requester_csrf) = login(&ui.app, "tester").await;
    let page = send(&ui.app, get("/deployments/prod-1", Some(&requester))).await;
    assert!(page.body.contains("Waiting for approval"));
    assert!(page.body.contains("someone else must approve"));
    assert!(!page.body.contains("id=\"approve\""));

    // A viewer may not decide even with a valid form.
    let (viewer, viewer_csrf) = login(&ui.app, "victor").await;
    let page = send(&ui.app, get("/deployments/prod-1", Some(&viewer))).await;
    assert!(page.body.contains("need the approver role"));
    let answer = send(
        &ui.app,
        post(
            "/deployments/prod-1/approval",
            Some(&viewer),
            &[
                ("csrf", &viewer_csrf),
                ("decision", "approve"),
                ("plan_digest", &plan.digest),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    // The requester's own approval is refused by the shared rules.
    let view = cutover_executor::deployment_view(&ui.cp.store, "prod-1").unwrap();
    let image = view.approval.unwrap().image_id.unwrap();
    let answer = send(
        &ui.app,
        post(
            "/deployments/prod-1/approval",
            Some(&requester),
            &[
                ("csrf", &requester_csrf),
                ("decision", "approve"),
                ("plan_digest", &plan.digest),
                ("image_id", &image),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);

    // An approver sees the plan digest and image, and approves.
    let (approver, approver_csrf) = login(&ui.app, "alice").await;
    let page = send(&ui.app, get("/deployments/prod-1", Some(&approver))).await;
    assert!(page.body.contains(&plan.digest) && page.body.contains(&image));
    assert!(page.body.contains("id=\"approve\""));
    assert!(page.body.contains("0 of 1 needed"));
    // With what approving changes, and the digest of that view in the form.
    assert!(page.body.contains("id=\"approval-view\""), "{}", page.body);
    assert!(page.body.contains("First release of prod"));
    let view_digest = csrf_field(&page.body, "view_digest");
    assert!(view_digest.starts_with("sha256:"));
    let answer = send(
        &ui.app,
        post(
            "/deployments/prod-1/approval",
            Some(&approver),
            &[
                ("csrf", &approver_csrf),
                ("decision", "approve"),
                ("plan_digest", &csrf_field(&page.body, "plan_digest")),
                ("image_id", &csrf_field(&page.body, "image_id")),
                ("view_digest", &view_digest),
                ("comment", "looks good <3"),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.location(), "/deployments/prod-1");
    wait_for(&ui.cp, "prod-1", |d| d.status == DeploymentState::Succeeded).await;
}

#[tokio::test]
async fn the_approval_page_shows_the_view_without_values_and_refuses_a_stale_one() {
    const CANARY: &str = "CANARY-5d1f3e8a90b1";
    let ui = ui();
    let mut spec = fake::spec_for("prod", 1, Some(approval_gate()));
    spec.container
        .env
        .insert("DATABASE_PASSWORD".to_string(), CANARY.to_string());
    let plan = fake::planned_deploy_of(&spec, "prod-1", None);
    start(&ui.cp, &plan);
    wait_for(&ui.cp, "prod-1", |d| d.waiting_for_approval()).await;
    let image = cutover_executor::deployment_view(&ui.cp.store, "prod-1")
        .unwrap()
        .approval
        .unwrap()
        .image_id
        .unwrap();
    // The scan of the image used an exception for a secret (as the chain records it).
    ui.fakes.supply().state().evidence.insert(
        image.clone(),
        cutover_model::SupplyEvidence {
            scan: Some(cutover_model::ScanEvidence {
                passed: true,
                fail_on: "high".to_string(),
                fail_on_secrets: true,
                advisory_database: true,
                findings: Some(vec![
                    cutover_model::FindingEvidence::Secret {
                        rule: "aws-access-key-id".to_string(),
                        location: "/etc/app.conf:3 (layer sha256:ab)".to_string(),
                        fingerprint: "f1e2d3c4".to_string(),
                    },
                    cutover_model::FindingEvidence::Vulnerability {
                        severity: "medium".to_string(),
                        id: "RUSTSEC-2099-0001".to_string(),
                        package: "smallvec".to_string(),
                        version: "1.0.0".to_string(),
                        fixed: Some("1.0.1".to_string()),
                    },
                ]),
                exceptions: vec![cutover_model::ExceptionEvidence {
                    finding: "f1e2d3c4".to_string(),
                    exception: "aws-access-key-id".to_string(),
                    reason: "test key, revoked".to_string(),
                    owner: "security-team".to_string(),
                    expires: "2099-12-31".to_string(),
                }],
                ..Default::default()
            }),
            provenance: Some(cutover_model::ProvenanceEvidence {
                builder_id: "https://cutover.dev/builders/cutover-cli/v1".to_string(),
                builder_version: Some("0.1.0".to_string()),
                git_commit: Some("0123456789abcdef".to_string()),
                git_dirty: Some(true),
                ..Default::default()
            }),
        },
    );
    let (approver, csrf) = login(&ui.app, "alice").await;
    let page = send(&ui.app, get("/deployments/prod-1", Some(&approver))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(CANARY), "a value leaked into the page");
    for shown in [
        "DATABASE_PASSWORD",
        "aws-access-key-id",
        "/etc/app.conf:3",
        "f1e2d3c4",
        "RUSTSEC-2099-0001",
        "smallvec",
        "test key, revoked",
        "security-team",
        "2099-12-31",
        "0123456789abcdef",
        "uncommitted changes",
        "fake-key-1",
    ] {
        assert!(page.body.contains(shown), "{shown} missing from the page");
    }
    let digest = csrf_field(&page.body, "view_digest");
    let decide = |view_digest: String| {
        post(
            "/deployments/prod-1/approval",
            Some(&approver),
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("plan_digest", &plan.digest),
                ("image_id", &image),
                ("view_digest", &view_digest),
            ],
        )
    };
    // The view changes under the approver's eyes: the form they hold is refused.
    ui.fakes.supply().state().evidence.remove(&image);
    let answer = send(&ui.app, decide(digest)).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert!(answer.body.contains("review again"), "{}", answer.body);
    assert!(ui.cp.store.approvals("prod-1").unwrap().is_empty());
    // Reviewed again, approved; the decision names the view.
    let page = send(&ui.app, get("/deployments/prod-1", Some(&approver))).await;
    let digest = csrf_field(&page.body, "view_digest");
    let answer = send(&ui.app, decide(digest.clone())).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(
        ui.cp.store.approvals("prod-1").unwrap()[0].view_digest,
        digest
    );
    wait_for(&ui.cp, "prod-1", |d| d.status == DeploymentState::Succeeded).await;
}

/// The value of hidden input `name` of a page.
fn csrf_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html.find(&marker).expect("field present");
    let rest = &html[at + marker.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test]
async fn escapes_what_users_wrote() {
    let ui = ui();
    let mut plan = fake::deploy_plan("prod-1", "prod", "r1", None, 1);
    plan.requested_by = "<script>alert(1)</script>".to_string();
    plan.digest = String::new();
    plan.digest = json_digest(&plan);
    save(&ui.cp, &plan);
    let (cookie, _) = login(&ui.app, "alice").await;
    for path in ["/deployments/prod-1", "/history"] {
        let page = send(&ui.app, get(path, Some(&cookie))).await;
        assert!(!page.body.contains("<script>alert"), "{path}");
        assert!(page.body.contains("&#60;script&#62;"), "{path}");
    }
}

#[tokio::test]
async fn live_updates_stream_until_the_deployment_finishes() {
    let ui = ui();
    let plan = fake::deploy_plan("prod-1", "prod", "r1", None, 1);
    start(&ui.cp, &plan);
    let (cookie, _) = login(&ui.app, "alice").await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        send(&ui.app, get("/ui/deployments/prod-1/events", Some(&cookie))),
    )
    .await
    .expect("the stream ends when the deployment finishes");
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(answer.body.contains("event: state"));
    let last = answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(state["status"], "succeeded");
    assert_eq!(state["finished"], true);
    assert!(state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["class"] == "succeeded"));
}

const SPEC: &str = r#"
app = "hello"

[build]
cargo = { manifest = "app/Cargo.toml", bin = "hello" }

[health]
interval = "5ms"
timeout = "50ms"
deadline = "2s"

[environments.staging]
listen = "127.0.0.1:18190"
replicas = 1
retire_after = "10m"
drain_timeout = "100ms"
"#;

#[tokio::test]
async fn rollback_from_history_after_confirmation() {
    let ui = ui();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    std::fs::write(
        dir.path().join("app/Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("deploy.toml"), SPEC).unwrap();
    let source = crate::deploy::SpecSource {
        spec_path: Some(dir.path().join("deploy.toml").display().to_string()),
        ..Default::default()
    };
    // The project is registered and the environment has guardrails (an admin's doing).
    let admin = auth::Principal::local("admin");
    crate::projects::add(&ui.cp, &admin, &dir.path().display().to_string(), false).unwrap();
    crate::guardrails::set(&ui.cp, &admin, "staging", "", "guardrails.toml").unwrap();
    let ci = auth::Principal {
        name: "ci".to_string(),
        person: "ci".to_string(),
        grants: vec![Grant {
            role: Role::Deployer,
            env: None,
        }],
        socket_peer: false,
    };
    for n in 1..=2 {
        let started = crate::deploy::start(&ui.cp, &ci, Some(&source), Some("staging"), None)
            .await
            .unwrap();
        assert_eq!(started.deployment_id, format!("staging-{n}"));
        wait_for(&ui.cp, &started.deployment_id, |d| {
            d.status == DeploymentState::Succeeded
        })
        .await;
    }
    let first = ui.cp.store.deployment("staging-1").unwrap().unwrap();

    let (cookie, csrf) = login(&ui.app, "tester").await;
    let history = send(&ui.app, get("/history", Some(&cookie))).await;
    assert!(history.body.contains("href=\"/rollback/staging\""));
    assert!(history
        .body
        .contains(&format!("Roll back to {}", first.release_id)));
    let confirm = send(&ui.app, get("/rollback/staging", Some(&cookie))).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(
        confirm.body.contains("still warm"),
        "the blue release is warm"
    );
    let answer = send(
        &ui.app,
        post(
            "/rollback/staging",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("confirm", "staging"),
                ("release", &csrf_field(&confirm.body, "release")),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.location(), "/deployments/staging-3");
    wait_for(&ui.cp, "staging-3", |d| {
        d.status == DeploymentState::Succeeded
    })
    .await;
    let done = crate::view::detail(&ui.cp.store, "staging-3").unwrap();
    assert_eq!(done.kind, "rollback");
    assert_eq!(done.release_id, first.release_id);
    assert_eq!(done.requested_by, "tester");
}

/// A wrong-password login for `user` from `ip`, on a fresh login page.
async fn wrong_login(app: &Router, user: &str, ip: [u8; 4]) -> Answer {
    let page = send(app, get("/login", None)).await;
    let anon = cookie_pair(&page.cookie().unwrap());
    let csrf = csrf_of(&page.body);
    let mut request = post(
        "/login",
        Some(&anon),
        &[("csrf", &csrf), ("username", user), ("password", "guess")],
    );
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            ip, 40000,
        ))));
    send(app, request).await
}

#[tokio::test]
async fn a_login_flood_from_one_address_is_throttled_before_any_password_is_hashed() {
    let ui = ui();
    let mut refused = 0;
    let mut throttled = 0;
    let start = std::time::Instant::now();
    // Forty guesses at forty names from one address.
    for n in 0..40 {
        let answer = wrong_login(&ui.app, &format!("user{n}"), [127, 0, 0, 9]).await;
        match answer.status {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled += 1;
                assert!(answer.headers.get(header::RETRY_AFTER).is_some());
                assert!(
                    answer.body.contains("Too many login attempts"),
                    "{}",
                    answer.body
                );
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    // Only the burst (and what refilled while the flood ran, one a second) was checked at
    // all; the rest cost no password hashing.
    let elapsed = start.elapsed();
    let refilled = (elapsed.as_millis() / super::limits::IP_REFILL.as_millis()) as usize;
    let burst = super::limits::IP_BURST as usize;
    assert!(
        refused >= burst && refused <= burst + refilled,
        "{refused} refused, {throttled} throttled in {elapsed:?}"
    );
    assert_eq!(throttled, 40 - refused);
    assert!(elapsed < std::time::Duration::from_secs(30));
    // Another address still gets its answer.
    let answer = wrong_login(&ui.app, "user0", [127, 0, 0, 10]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn guessing_one_password_from_many_addresses_is_throttled_by_the_user_name() {
    let ui = ui();
    let mut statuses = Vec::new();
    for n in 0..8u8 {
        statuses.push(wrong_login(&ui.app, "tester", [127, 0, 3, n]).await.status);
    }
    let burst = super::limits::USER_BURST as usize;
    assert!(statuses[..burst]
        .iter()
        .all(|s| *s == StatusCode::UNAUTHORIZED));
    assert!(
        statuses[burst..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn approvers_see_the_guardrails_held_for_the_environment() {
    let ui = ui();
    let plan = fake::deploy_plan_with_approval("prod-1", "prod", "r1", None, 1, approval_gate());
    start(&ui.cp, &plan);
    let (approver, _) = login(&ui.app, "alice").await;
    let page = send(&ui.app, get("/deployments/prod-1", Some(&approver))).await;
    assert!(page.body.contains("Guardrails of prod"), "{}", page.body);
    assert!(page.body.contains("has no guardrails"));
    let admin = auth::Principal::local("admin");
    crate::guardrails::set(
        &ui.cp,
        &admin,
        "prod",
        "approvals = 2\n[gate]\nfail_on = \"high\"\n[container]\nmax_memory = \"64MiB\"\n",
        "guardrails.toml",
    )
    .unwrap();
    let page = send(&ui.app, get("/deployments/prod-1", Some(&approver))).await;
    assert!(
        page.body.contains("version 1, set by admin"),
        "{}",
        page.body
    );
    assert!(page.body.contains("2 distinct approver(s)"));
    assert!(page.body.contains("fail on high or worse; fail on secrets"));
    assert!(page.body.contains("64MiB"), "{}", page.body);
}

fn session_count(cp: &ControlPlane) -> usize {
    super::session::Sessions::open(&cp.store)
        .unwrap()
        .count()
        .unwrap()
}

#[tokio::test]
async fn anonymous_login_pages_store_no_sessions() {
    let ui = ui();
    for _ in 0..100 {
        let page = send(&ui.app, get("/login", None)).await;
        assert_eq!(page.status, StatusCode::OK);
        let set = page.cookie().unwrap();
        assert!(set.starts_with("cutover_login="), "{set}");
    }
    assert_eq!(session_count(&ui.cp), 0, "no session before login");
    // A failed login stores nothing either; a good one stores exactly one.
    let page = send(&ui.app, get("/login", None)).await;
    let proof = cookie_pair(&page.cookie().unwrap());
    let csrf = csrf_of(&page.body);
    let wrong = send(
        &ui.app,
        post(
            "/login",
            Some(&proof),
            &[("csrf", &csrf), ("username", "alice"), ("password", "nope")],
        ),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(session_count(&ui.cp), 0);
    let (cookie, _) = login(&ui.app, "alice").await;
    assert!(cookie.starts_with("cutover_session="));
    assert_eq!(session_count(&ui.cp), 1);
}

#[tokio::test]
async fn a_login_with_a_forged_missing_or_unsigned_csrf_cookie_is_refused() {
    let ui = ui();
    let page = send(&ui.app, get("/login", None)).await;
    let set = page.cookie().unwrap();
    let proof = cookie_pair(&set);
    let csrf = csrf_of(&page.body);
    let value = proof.strip_prefix("cutover_login=").unwrap();
    let (nonce, rest) = value.split_once('.').unwrap();
    let (expires, signature) = rest.split_once('.').unwrap();
    assert_eq!(nonce, csrf, "the form carries the cookie's value");
    let forged_nonce = "ab".repeat(32);
    let other_key_proof = {
        let proof = super::session::LoginCsrf::issue(&[9u8; 32], cutover_model::now_ms()).unwrap();
        cookie_pair(
            proof
                .set_cookie(false, cutover_model::now_ms())
                .to_str()
                .unwrap(),
        )
    };
    let cases: Vec<(&str, Option<String>, String)> = vec![
        ("no cookie", None, csrf.clone()),
        (
            "unsigned value (an attacker's own cookie)",
            Some(format!("cutover_login={forged_nonce}")),
            forged_nonce.clone(),
        ),
        (
            "forged value under the real signature",
            Some(format!(
                "cutover_login={forged_nonce}.{expires}.{signature}"
            )),
            forged_nonce.clone(),
        ),
        (
            "a later expiry under the real signature",
            Some(format!(
                "cutover_login={nonce}.{}.{signature}",
                u64::MAX / 2
            )),
            csrf.clone(),
        ),
        (
            "signed with another key",
            Some(other_key_proof.clone()),
            other_key_proof
                .strip_prefix("cutover_login=")
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string(),
        ),
        (
            "the real cookie with another form value",
            Some(proof.clone()),
            forged_nonce.clone(),
        ),
        (
            "a session cookie instead",
            Some(format!("cutover_session={nonce}")),
            csrf.clone(),
        ),
    ];
    for (what, cookie, form_csrf) in cases {
        let answer = send(
            &ui.app,
            post(
                "/login",
                cookie.as_deref(),
                &[
                    ("csrf", &form_csrf),
                    ("username", "alice"),
                    ("password", "correct horse battery"),
                ],
            ),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            answer.body
        );
        assert!(
            answer
                .cookie()
                .is_none_or(|c| !c.starts_with("cutover_session=")),
            "{what}: no session cookie"
        );
    }
    assert_eq!(
        session_count(&ui.cp),
        0,
        "no session made by a refused login"
    );
    // The genuine form still logs in.
    let answer = send(
        &ui.app,
        post(
            "/login",
            Some(&proof),
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", "correct horse battery"),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookies: Vec<String> = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(cookies.iter().any(|c| c.starts_with("cutover_session=")));
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("cutover_login=;") && c.contains("Max-Age=0")),
        "the login proof is dropped after login: {cookies:?}"
    );
}

#[tokio::test]
async fn login_over_the_tls_listener_gets_secure_cookies() {
    let ui = ui();
    let mut req = get("/login", None);
    req.extensions_mut().insert(crate::door::ServedOverTls);
    let page = send(&ui.app, req).await;
    assert!(page.cookie().unwrap().ends_with("; Secure"));
    let mut req = post(
        "/login",
        Some(&cookie_pair(&page.cookie().unwrap())),
        &[
            ("csrf", &csrf_of(&page.body)),
            ("username", "alice"),
            ("password", "correct horse battery"),
        ],
    );
    req.extensions_mut().insert(crate::door::ServedOverTls);
    let answer = send(&ui.app, req).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    for cookie in answer.headers.get_all(header::SET_COOKIE) {
        assert!(cookie.to_str().unwrap().ends_with("; Secure"), "{cookie:?}");
    }
}

#[tokio::test]
async fn an_expired_session_is_refused_and_purged() {
    let ui = ui();
    let sessions = super::session::Sessions::open(&ui.cp.store).unwrap();
    let alice = auth::Principal {
        name: "alice".to_string(),
        person: "alice".to_string(),
        socket_peer: false,
        grants: vec![Grant {
            role: Role::Approver,
            env: None,
        }],
    };
    let now = cutover_model::now_ms();
    let (expired, _) = sessions
        .create(alice.clone(), now - super::session::LOGIN_TTL_MS - 1)
        .unwrap();
    let (also_expired, _) = sessions
        .create(alice.clone(), now - super::session::LOGIN_TTL_MS - 1)
        .unwrap();
    let (live, _) = sessions.create(alice, now).unwrap();
    assert_eq!(session_count(&ui.cp), 3);
    // Presented, the expired one is refused (and removed on the spot).
    let answer = send(
        &ui.app,
        get("/", Some(&format!("cutover_session={expired}"))),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(answer.location().starts_with("/login"));
    assert_eq!(session_count(&ui.cp), 2);
    // Not presented, the other is purged by the sweep `cutover serve` runs at start and
    // hourly.
    assert_eq!(super::purge_expired_sessions(&ui.cp.store).unwrap(), 1);
    assert_eq!(session_count(&ui.cp), 1);
    let answer = send(
        &ui.app,
        get("/", Some(&format!("cutover_session={also_expired}"))),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let answer = send(&ui.app, get("/", Some(&format!("cutover_session={live}")))).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn the_control_plane_purges_expired_sessions_when_it_starts() {
    let ui = ui();
    let sessions = super::session::Sessions::open(&ui.cp.store).unwrap();
    let alice = auth::Principal {
        name: "alice".to_string(),
        person: "alice".to_string(),
        socket_peer: false,
        grants: vec![],
    };
    let long_ago = cutover_model::now_ms() - super::session::LOGIN_TTL_MS - 1;
    for _ in 0..3 {
        sessions.create(alice.clone(), long_ago).unwrap();
    }
    sessions.create(alice, cutover_model::now_ms()).unwrap();
    assert_eq!(session_count(&ui.cp), 4);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let cp = ui.cp.clone();
    let serving = tokio::spawn(async move { crate::serve_unix(cp, &socket).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while session_count(&ui.cp) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired sessions still stored: {}",
            session_count(&ui.cp)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ui.cp.request_shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the control plane stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_approval_page_shows_a_promotions_source_and_the_images_path() {
    let ui = ui();
    let staging = fake::planned_deploy("staging-1", "staging", None, 1);
    start(&ui.cp, &staging);
    wait_for(&ui.cp, "staging-1", |d| {
        d.status == DeploymentState::Succeeded
    })
    .await;
    let source = ui
        .cp
        .store
        .release("staging", "staging-1")
        .unwrap()
        .unwrap();
    let spec = fake::spec_for("prod", 1, Some(approval_gate()));
    let strategy = cutover_planner::parse_strategy(
        cutover_planner::builtin_strategy("blue-green").unwrap(),
        "plans/blue-green.toml",
    )
    .unwrap();
    let plan = cutover_planner::plan(&cutover_planner::PlanInput {
        spec: &spec,
        env: "prod",
        strategy: &strategy,
        deployment_id: "prod-1",
        requested_by: "tester",
        created_at_ms: cutover_model::now_ms(),
        current: None,
        current_route: None,
        kind: cutover_planner::PlanKind::Promote { source: &source },
    })
    .unwrap();
    start(&ui.cp, &plan);
    wait_for(&ui.cp, "prod-1", |d| {
        d.steps
            .iter()
            .any(|s| s.kind == "approval" && s.state == StepState::Started)
    })
    .await;
    let (approver, _) = login(&ui.app, "alice").await;
    let page = send(&ui.app, get("/deployments/prod-1", Some(&approver))).await;
    assert!(
        page.body
            .contains("Promoted from <strong>staging-1</strong> (staging)"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("id=\"promoted-from-line\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"image-path\""), "{}", page.body);
    assert!(
        page.body.contains("staging as staging-1, live from"),
        "{}",
        page.body
    );
    assert!(page.body.contains(&source.image.id));
}
