//! The HTTP API in-process: the router built by `router`, driven with `oneshot`, over a
//! store and fake providers. Specs are written to a temporary directory.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use cutover_executor::fake::{FakeHealth, FakeProviders};
use cutover_server::audit::AuditEntry;
use cutover_server::auth::{self, Role};
use cutover_server::http::routes;
use cutover_server::webhooks::{Delivery, Webhooks};
use cutover_server::{guardrails, projects, router, ControlPlane, LocalPeer, Options};
use cutover_store::Store;

const SPEC: &str = r#"
app = "hello"

[build]
cargo = { manifest = "app/Cargo.toml", bin = "hello" }

[health]
interval = "5ms"
timeout = "50ms"
deadline = "2s"

[environments.staging]
listen = "127.0.0.1:18090"
replicas = 1
retire_after = "0s"
drain_timeout = "100ms"

[environments.production]
listen = "127.0.0.1:18091"
replicas = 1
drain_timeout = "100ms"
approval = true
"#;

struct Harness {
    dir: tempfile::TempDir,
    fake: FakeProviders,
    cp: Arc<ControlPlane>,
    app: Router,
}

fn options(webhooks: Webhooks) -> Options {
    Options {
        webhooks,
        ..Options::default()
    }
}

impl Harness {
    fn new() -> Harness {
        Self::with_webhooks(Webhooks::default())
    }

    fn with_webhooks(webhooks: Webhooks) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        common::write_project(dir.path(), SPEC);
        let store = Store::open(&dir.path().join("db")).unwrap();
        let fake = FakeProviders::new();
        let cp = ControlPlane::with_options(
            store,
            fake.providers(),
            common::executor_config(),
            options(webhooks),
        );
        // What an admin does once: register the project and set each environment's
        // guardrails (production requires an approval, as the spec does).
        let admin = auth::Principal::local("admin");
        projects::add(&cp, &admin, &dir.path().display().to_string(), false).unwrap();
        guardrails::set(&cp, &admin, "staging", "", "guardrails.toml").unwrap();
        guardrails::set(
            &cp,
            &admin,
            "production",
            "approvals = 1",
            "guardrails.toml",
        )
        .unwrap();
        let app = router(cp.clone());
        Harness { dir, fake, cp, app }
    }

    fn spec_path(&self) -> String {
        self.dir.path().join("deploy.toml").display().to_string()
    }

    /// A token named `name` that is its own person.
    fn token(&self, role: Role, env: Option<&str>, name: &str) -> String {
        self.token_of(role, env, name, name)
    }

    /// A token named `name` belonging to `owner`.
    fn token_of(&self, role: Role, env: Option<&str>, name: &str, owner: &str) -> String {
        common::token(&self.cp.store, role, env, name, owner)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.raw(method, path, token, body, headers).await;
        (status, common::json(&bytes))
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Vec<u8>) {
        common::send(&self.app, method, path, token, None, body, headers).await
    }

    async fn deploy(&self, token: &str, env: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/v1/deployments",
            Some(token),
            Some(json!({"spec_path": self.spec_path(), "env": env})),
        )
        .await
    }

    /// Poll the deployment until `done` says so (at most 10 s).
    async fn wait_for(&self, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (status, detail) = self
                .call(
                    Method::GET,
                    &format!("/api/v1/deployments/{id}"),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{detail}");
            if done(&detail) {
                return detail;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "deployment {id} did not get there: {detail:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_finished(&self, token: &str, id: &str) -> Value {
        self.wait_for(token, id, |d| !d["finished_at_ms"].is_null())
            .await
    }

    async fn wait_gate(&self, token: &str, id: &str) -> Value {
        self.wait_for(token, id, |d| d["approval"]["waiting"] == json!(true))
            .await
    }

    /// The approval view of `id` as `token` sees it.
    async fn view(&self, token: &str, id: &str) -> Value {
        let (status, view) = self
            .call(
                Method::GET,
                &format!("/api/v1/deployments/{id}/approval-view"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        view
    }

    /// The digest of `id`'s approval view as `token` sees it.
    async fn view_digest(&self, token: &str, id: &str) -> String {
        self.view(token, id).await["view_digest"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A concrete path for a route template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "staging-1")
        .replace("{env}", "staging")
        .replace("{release}", "staging-1")
        .replace("{image}", &format!("sha256:{}", "0".repeat(64)))
}

#[tokio::test]
async fn every_route_refuses_requests_without_a_valid_token() {
    let h = Harness::new();
    let revoked = h.token(Role::Admin, None, "old");
    let id = auth::list_tokens(&h.cp.store).unwrap()[0].id.clone();
    auth::revoke_token(&h.cp.store, "test", &id).unwrap();
    for route in routes() {
        let path = concrete(route.path);
        for token in [None, Some("cut_000000000000_nope"), Some(revoked.as_str())] {
            let (status, body) = h
                .call(route.method.clone(), &path, token, Some(json!({})))
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {path} with {token:?}: {body}",
                route.method
            );
            assert_eq!(body["code"], "unauthorized");
        }
    }
}

#[tokio::test]
async fn every_route_refuses_a_role_that_does_not_allow_it() {
    let h = Harness::new();
    // Make the {id} and {env} of the templates exist.
    let deployer = h.token(Role::Deployer, Some("staging"), "ci");
    let (status, started) = h.deploy(&deployer, "staging").await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    h.wait_finished(&deployer, "staging-1").await;

    let approver_all = h.token(Role::Approver, None, "approver");
    let deployer_all = h.token(Role::Deployer, None, "deployer");
    let viewer_elsewhere = h.token(Role::Viewer, Some("qa"), "viewer");
    let mut checked = 0;
    for route in routes() {
        let path = concrete(route.path);
        // A role that does not include the route's role, in every environment; for
        // viewer routes about one environment, a viewer of another environment.
        let token = match route.role {
            Role::Deployer => &approver_all,
            Role::Approver | Role::Admin => &deployer_all,
            // (An image's path is a listing filtered to the caller's environments.)
            Role::Viewer if route.path.contains("{id}") || route.path.contains("{env}") => {
                &viewer_elsewhere
            }
            Role::Viewer => continue,
        };
        let (status, body) = h
            .call(
                route.method.clone(),
                &path,
                Some(token),
                Some(json!({
                    "spec_path": h.spec_path(), "env": "staging",
                    "decision": "approve", "plan_digest": "x", "image_id": "y",
                    "role": "viewer",
                })),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{} {path}: {body}",
            route.method
        );
        assert_eq!(body["code"], "forbidden");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} routes checked");

    // Environment scope: a deployer of staging cannot deploy to production.
    let (status, body) = h.deploy(&deployer, "production").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap().contains("production"));
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_schema() {
    let h = Harness::new();
    let viewer = h.token(Role::Viewer, None, "v");
    let (status, doc) = h
        .call(Method::GET, "/api/v1/openapi.json", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for route in routes() {
        let method = route.method.as_str().to_lowercase();
        assert!(
            doc["paths"][route.path][&method].is_object(),
            "{} {} is not in the OpenAPI document",
            route.method,
            route.path
        );
    }
    for schema in [
        "Started",
        "DeploymentDetail",
        "ApprovalRequest",
        "ErrorBody",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "admin");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/deployments/staging-1/approvals",
            Some(&admin),
            Some(json!({"decision": "maybe", "plan_digest": "a", "image_id": "b"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("decision"),
        "{body}"
    );

    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/deployments",
            Some(&admin),
            Some(json!({"spec_path": "relative/deploy.toml"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("spec_path"));

    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/deployments",
            Some(&admin),
            Some(json!({"spec_pth": "/x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec_pth"),
        "{body}"
    );

    let (status, body) = h
        .call(
            Method::GET,
            "/api/v1/deployments?limit=-3",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );

    let (status, body) = h
        .call(
            Method::GET,
            "/api/v1/deployments/nope-9",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");

    let (status, body) = h
        .call(Method::GET, "/api/v1/nothing", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_spec_can_be_uploaded_as_text_with_its_base_directory() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({
                "spec": SPEC,
                "base_dir": h.dir.path().display().to_string(),
                "env": "staging",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(body["text"].as_str().unwrap().contains("build"));
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({"spec": SPEC, "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("base_dir"));
}

#[tokio::test]
async fn a_spec_sent_without_base_dir_may_name_no_file_of_the_control_plane() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let plan = |spec: String| {
        let h = &h;
        let deployer = deployer.clone();
        async move {
            h.call(
                Method::POST,
                "/api/v1/plans",
                Some(&deployer),
                Some(json!({"spec": spec, "env": "staging"})),
            )
            .await
        }
    };
    // The build's source would be read on the control plane's machine.
    let (status, body) = plan(SPEC.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("build.cargo.manifest: "), "{message}");
    assert!(message.contains("deploy the image"), "{message}");
    assert!(message.contains("--base-dir"), "{message}");

    // An absolute path is refused the same way whether it exists or not (nothing is read).
    let with_context = |dir: &str| {
        SPEC.replace(
            r#"cargo = { manifest = "app/Cargo.toml", bin = "hello" }"#,
            &format!("context = {dir:?}"),
        )
    };
    let (status, exists) = plan(with_context("/etc")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{exists}");
    let (_, missing) = plan(with_context("/nonexistent-cutover-dir")).await;
    assert_eq!(
        exists["message"].as_str().unwrap().replace("/etc", "DIR"),
        missing["message"]
            .as_str()
            .unwrap()
            .replace("/nonexistent-cutover-dir", "DIR")
    );
    assert!(exists["message"]
        .as_str()
        .unwrap()
        .starts_with("build.context: "));

    // Every other field that names a file is refused by name too.
    let keyed = format!("{SPEC}\n[supply]\nsigning_key = \"/etc/ssh/ssh_host_ed25519_key\"\n");
    let keyed = keyed.replace(
        r#"cargo = { manifest = "app/Cargo.toml", bin = "hello" }"#,
        "",
    );
    let (status, body) = plan(keyed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("build.context: ") || message.starts_with("supply.signing_key: "),
        "{message}"
    );

    // Authorise before reading: a viewer learns nothing about the spec.
    let viewer = h.token(Role::Viewer, None, "look");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/deployments",
            Some(&viewer),
            Some(json!({"spec": SPEC, "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        !body["message"].as_str().unwrap().contains("build"),
        "{body}"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_deployment() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let body = json!({"spec_path": h.spec_path(), "env": "staging"});
    let key = [("idempotency-key", "build-42")];
    let (s1, first) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    let (s2, second) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(s2, StatusCode::CREATED, "{second}");
    assert_eq!(first["deployment_id"], second["deployment_id"]);
    h.wait_finished(&deployer, first["deployment_id"].as_str().unwrap())
        .await;
    let (s3, third) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(body),
            &key,
        )
        .await;
    assert_eq!(s3, StatusCode::CREATED);
    assert_eq!(first["deployment_id"], third["deployment_id"]);
    assert_eq!(h.cp.store.deployments(None, 100).unwrap().len(), 1);
    // The same key with another request is refused.
    let (s4, fourth) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(json!({"spec_path": h.spec_path(), "env": "production"})),
            &key,
        )
        .await;
    assert_eq!(s4, StatusCode::CONFLICT, "{fourth}");
}

#[tokio::test]
async fn approval_gate_rules_deployer_self_approval_stale_and_approve() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, Some("production"), "ci");
    let admin = h.token(Role::Admin, None, "boss");
    let approver = h.token(Role::Approver, Some("production"), "alice");
    let (status, started) = h.deploy(&admin, "production").await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let detail = h.wait_gate(&admin, &id).await;
    let gate = &detail["approval"];
    let plan_digest = gate["plan_digest"].as_str().unwrap().to_string();
    let image_id = gate["image_id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/deployments/{id}/approvals");
    let view = h.view_digest(&approver, &id).await;
    let decision = |plan: &str, image: &str| json!({"decision": "approve", "comment": "lgtm", "plan_digest": plan, "image_id": image, "view_digest": view});

    // Busy: a second deployment of production is refused while this one waits.
    let (status, body) = h.deploy(&deployer, "production").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A deployer cannot approve.
    let (status, body) = h
        .call(
            Method::POST,
            &path,
            Some(&deployer),
            Some(decision(&plan_digest, &image_id)),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The token that started it cannot approve it, admin or not.
    let (status, body) = h
        .call(
            Method::POST,
            &path,
            Some(&admin),
            Some(decision(&plan_digest, &image_id)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("separation of duties"));

    // Stale: another plan digest, or another image.
    for (plan, image) in [
        ("sha256:0000", image_id.as_str()),
        (plan_digest.as_str(), "sha256:1111"),
    ] {
        let (status, body) = h
            .call(
                Method::POST,
                &path,
                Some(&approver),
                Some(decision(plan, image)),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("stale approval"),
            "{body}"
        );
    }

    let (status, body) = h
        .call(
            Method::POST,
            &path,
            Some(&approver),
            Some(decision(&plan_digest, &image_id)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done = h.wait_finished(&admin, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    // Deciding again after the gate passed is refused.
    let (status, _) = h
        .call(
            Method::POST,
            &path,
            Some(&approver),
            Some(decision(&plan_digest, &image_id)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Every state change is in the audit chain, and it verifies.
    let (status, entries) = h
        .call(Method::GET, "/api/v1/audit", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        // The harness's own tokens, project and guardrails are audited too.
        .filter(|a| !["token.create", "project.add", "guardrails.set"].contains(a))
        .collect();
    assert_eq!(actions, ["deploy", "approve"]);
    let (_, report) = h
        .call(Method::GET, "/api/v1/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["broken"], Value::Null, "{report}");
    // deploy and approve, plus the three tokens the test made and the harness's project
    // and two guardrails.
    assert_eq!(report["entries"], 8);
}

#[tokio::test]
async fn a_rejection_rolls_the_deployment_back() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let approver = h.token(Role::Approver, None, "bob");
    let (_, started) = h.deploy(&deployer, "production").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let gate = h.wait_gate(&deployer, &id).await["approval"].clone();
    let (status, body) = h
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/approvals"),
            Some(&approver),
            Some(json!({
                "decision": "reject", "comment": "not today",
                "plan_digest": gate["plan_digest"], "image_id": gate["image_id"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done = h.wait_finished(&deployer, &id).await;
    assert_eq!(done["status"], "rolled_back", "{done:#}");
    assert!(
        done["reason"].as_str().unwrap().contains("not today"),
        "{done:#}"
    );
}

#[tokio::test]
async fn a_gate_survives_a_restart_of_the_control_plane() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let approver = h.token(Role::Approver, None, "carol");
    let (_, started) = h.deploy(&deployer, "production").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let gate = h.wait_gate(&deployer, &id).await["approval"].clone();

    // "Crash": stop the executor task and drop every handle on the store.
    let Harness { dir, fake, cp, app } = h;
    cp.abort_runs();
    drop(app);
    drop(cp);
    let db = dir.path().join("db");
    let start = Instant::now();
    let store = loop {
        match Store::open(&db) {
            Ok(store) => break store,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "store not released: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let cp = ControlPlane::with_options(
        store,
        fake.providers(),
        common::executor_config(),
        options(Webhooks::default()),
    );
    assert_eq!(cp.resume_unfinished().unwrap(), vec![id.clone()]);
    let h = Harness {
        app: router(cp.clone()),
        dir,
        fake,
        cp,
    };
    let again = h.wait_gate(&deployer, &id).await["approval"].clone();
    assert_eq!(again["plan_digest"], gate["plan_digest"]);
    let view = h.view_digest(&approver, &id).await;
    let (status, body) = h
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/approvals"),
            Some(&approver),
            Some(json!({
                "decision": "approve",
                "plan_digest": gate["plan_digest"], "image_id": gate["image_id"],
                "view_digest": view,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done = h.wait_finished(&deployer, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
}

#[tokio::test]
async fn events_stream_the_journal_until_the_end() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let (_, started) = h.deploy(&deployer, "staging").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let (status, body) = h
        .raw(
            Method::GET,
            &format!("/api/v1/deployments/{id}/events"),
            Some(&deployer),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("event: journal"), "{text}");
    assert!(text.contains("event: deployment"), "{text}");
    assert!(text.contains("event: end"), "{text}");
    assert!(text.contains("succeeded"), "{text}");
}

#[tokio::test]
async fn rollback_and_history_and_environments() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, Some("staging"), "ci");
    for n in 1..=2 {
        let (status, body) = h.deploy(&deployer, "staging").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        h.wait_finished(&deployer, &format!("staging-{n}")).await;
    }
    // No spec needed: the environment's last one is reused.
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/environments/staging/rollback",
            Some(&deployer),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done = h.wait_finished(&deployer, "staging-3").await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["kind"], "rollback");

    let (status, lines) = h
        .call(
            Method::GET,
            "/api/v1/deployments?env=staging&limit=2",
            Some(&deployer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lines.as_array().unwrap().len(), 2);
    assert_eq!(lines[0]["deployment_id"], "staging-3");

    let (status, envs) = h
        .call(Method::GET, "/api/v1/environments", Some(&deployer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(envs.as_array().unwrap().len(), 1);
    assert_eq!(envs[0]["env"], "staging");
    let (status, env) = h
        .call(
            Method::GET,
            "/api/v1/environments/staging",
            Some(&deployer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env["current"]["id"], done["release_id"]);
    let (status, _) = h
        .call(
            Method::GET,
            "/api/v1/environments/nowhere",
            Some(&h.token(Role::Viewer, None, "v")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_count_deployments_and_step_durations() {
    let h = Harness::new();
    let watcher = h.cp.spawn_watcher();
    let deployer = h.token(Role::Deployer, None, "ci");
    let (_, started) = h.deploy(&deployer, "staging").await;
    h.wait_finished(&deployer, started["deployment_id"].as_str().unwrap())
        .await;
    // The watcher counts the outcome once it has seen the last events.
    let start = Instant::now();
    let text = loop {
        let (status, body) = h
            .raw(Method::GET, "/metrics", Some(&deployer), None, &[])
            .await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body).unwrap();
        if text.contains("cutover_deployments_total{outcome=\"succeeded\"} 1")
            || start.elapsed() > Duration::from_secs(5)
        {
            break text;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    watcher.abort();
    assert!(
        text.contains("cutover_deployments_total{outcome=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(text.contains("cutover_deployments_stuck 0"), "{text}");
    assert!(
        text.contains("cutover_deployments_waiting_for_approval 0"),
        "{text}"
    );
    assert!(
        text.contains("cutover_step_duration_seconds_count{kind=\"build\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cutover_rollbacks_total{kind=\"automatic\"} 0"),
        "{text}"
    );
}

/// A receiver on 127.0.0.1:0 that answers 500 to the first request and 200 after.
async fn flaky_receiver() -> (
    String,
    Arc<AtomicU32>,
    Arc<std::sync::Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU32::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h2, b2) = (hits.clone(), bodies.clone());
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let hits = h2.clone();
            let bodies = b2.clone();
            async move {
                if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                bodies
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                StatusCode::OK
            }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, hits, bodies, task)
}

#[tokio::test]
async fn webhooks_announce_a_rollback_and_retry_after_a_500() {
    let (url, hits, bodies, receiver) = flaky_receiver().await;
    let hooks = Webhooks::new(
        vec![url],
        Delivery {
            tries: 3,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
        },
    )
    .unwrap();
    let h = Harness::with_webhooks(hooks);
    let watcher = h.cp.spawn_watcher();
    let deployer = h.token(Role::Deployer, None, "ci");
    // Every instance of the new release (named after its deployment) is unhealthy: the
    // deployment rolls back.
    h.fake
        .set_health("staging-1", FakeHealth::Unhealthy("boom".into()));
    let (_, started) = h.deploy(&deployer, "staging").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    assert_eq!(started["release_id"], "staging-1");
    let done = h.wait_finished(&deployer, &id).await;
    assert_eq!(done["status"], "rolled_back", "{done:#}");
    let start = Instant::now();
    while !bodies
        .lock()
        .unwrap()
        .iter()
        .any(|b| b["cutover"]["event"] == "rolled_back")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no rolled_back webhook: {:?}",
            bodies.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    receiver.abort();
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "the first 500 was retried"
    );
    let got = bodies.lock().unwrap().clone();
    let rolled = got
        .iter()
        .find(|b| b["cutover"]["event"] == "rolled_back")
        .unwrap();
    assert_eq!(rolled["cutover"]["deployment"], id.as_str());
    assert!(rolled["text"].as_str().unwrap().contains("rolled back"));
    assert!(!rolled.to_string().contains("cut_"), "no token in webhooks");
}

#[tokio::test]
async fn tampering_with_the_audit_chain_is_reported() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "admin");
    for name in ["a", "b", "c"] {
        let (status, _) = h
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&admin),
                Some(json!({"role": "viewer", "name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, report) = h
        .call(Method::GET, "/api/v1/audit/verify", Some(&admin), None)
        .await;
    // The harness's project and two guardrails, its admin token, then the three tokens
    // made through the API.
    assert_eq!(report["entries"], 7);
    assert_eq!(report["broken"], Value::Null);
    // No secret in the log.
    let (_, entries) = h
        .call(Method::GET, "/api/v1/audit", Some(&admin), None)
        .await;
    assert!(!entries.to_string().contains("cut_"), "{entries}");

    let tree = h.cp.store.typed_tree::<AuditEntry>("audit").unwrap();
    let (key, mut entry) = tree.scan_prefix("").unwrap().remove(1);
    entry.details = json!({"role": "admin"});
    tree.insert(&key, &entry).unwrap();
    let (_, report) = h
        .call(Method::GET, "/api/v1/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["broken"]["seq"], 2, "{report}");

    tree.remove(&key).unwrap();
    let (_, report) = h
        .call(Method::GET, "/api/v1/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["broken"]["seq"], 2, "{report}");
    assert!(report["broken"]["reason"]
        .as_str()
        .unwrap()
        .contains("deleted"));
}

#[tokio::test]
async fn the_control_socket_approves_as_its_peer_and_a_token_sent_there_is_its_owner() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let (_, started) = h.deploy(&deployer, "production").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let gate = h.wait_gate(&deployer, &id).await["approval"].clone();
    let view = h.view_digest(&deployer, &id).await;
    let post = |peer: &str, token: Option<&str>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/v1/deployments/{id}/approvals"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request
            .body(Body::from(
                json!({
                    "decision": "approve",
                    "plan_digest": gate["plan_digest"], "image_id": gate["image_id"],
                    "view_digest": view,
                })
                .to_string(),
            ))
            .unwrap();
        // What the socket's door puts in every request: the peer the kernel names.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(LocalPeer::named(peer)));
        request
    };
    // The CI token that started it cannot approve it through the socket either: sent
    // there, a token is its owner, whoever the peer is.
    let response = h
        .app
        .clone()
        .oneshot(post("dave", Some(&deployer)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Without a token the caller is the socket's peer, with admin rights.
    let response = h.app.clone().oneshot(post("dave", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let done = h.wait_finished(&deployer, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["approval"]["approved_by"], json!(["dave"]));
}

#[tokio::test]
async fn without_a_peer_or_a_token_nothing_is_served() {
    let h = Harness::new();
    let (status, body) = h.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Shutting down is for the socket's peer only, not for an admin token over TCP.
    let admin = h.token(Role::Admin, None, "root");
    let (status, body) = h
        .call(Method::POST, "/api/v1/shutdown", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn an_internal_error_answers_an_id_and_keeps_the_detail_in_the_log() {
    let h = Harness::new();
    let viewer = h.token(Role::Viewer, None, "ci");
    // A deployment record that no longer decodes: the store is corrupt there.
    h.cp.store
        .typed_tree::<String>("deployments")
        .unwrap()
        .insert("staging-9", &"not a deployment record".to_string())
        .unwrap();
    let (status, body) = h
        .call(
            Method::GET,
            "/api/v1/deployments/staging-9",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "internal");
    let id = body["error_id"].as_str().expect("an error id").to_string();
    assert!(id.len() >= 8, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&id), "{message}");
    for internal in ["deployments/", "staging-9", "backup", "store"] {
        assert!(
            !message.contains(internal),
            "{internal:?} leaked: {message}"
        );
    }
}

/// The stored form of a claimed idempotency key, for planting claims a test needs.
fn plant_idempotency_key(h: &Harness, principal: &str, key: &str, record: Value) {
    h.cp.store
        .typed_tree::<Value>("idempotency_keys")
        .unwrap()
        .insert(&format!("{principal}\0{key}"), &record)
        .unwrap();
}

#[tokio::test]
async fn an_idempotency_key_whose_first_request_died_with_its_process_is_released() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let principal = auth::list_tokens(&h.cp.store).unwrap()[0].principal_name();
    let body = json!({"spec_path": h.spec_path(), "env": "staging"});
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            serde_json::to_vec(&("deploy", &body)).unwrap(),
        ))
    };
    // Claimed by a control plane process that is gone, before it started anything.
    plant_idempotency_key(
        &h,
        &principal,
        "build-7",
        json!({"request": digest, "started": null, "at_ms": cutover_model::now_ms(), "owner": "a-dead-process"}),
    );
    let (status, started) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(body.clone()),
            &[("idempotency-key", "build-7")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "the retry runs: {started}");
    // And the key now answers with what it started.
    let (status, again) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(body),
            &[("idempotency-key", "build-7")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["deployment_id"], started["deployment_id"]);
}

#[tokio::test]
async fn an_idempotency_key_expires_after_a_day_and_a_failed_request_frees_it() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let principal = auth::list_tokens(&h.cp.store).unwrap()[0].principal_name();
    // A day-old key of another request: forgotten, so the key may be used again.
    plant_idempotency_key(
        &h,
        &principal,
        "old",
        json!({
            "request": "0000", "at_ms": cutover_model::now_ms() - 25 * 3600 * 1000, "owner": "x",
            "started": {"deployment_id": "staging-1", "plan_digest": "sha256:0", "env": "staging", "release_id": "staging-1"},
        }),
    );
    let body = json!({"spec_path": h.spec_path(), "env": "staging"});
    let (status, started) = h
        .call_with(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some(body),
            &[("idempotency-key", "old")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    h.wait_finished(&deployer, started["deployment_id"].as_str().unwrap())
        .await;
    // A request that fails releases its key at once: the same retry fails the same way
    // instead of being told the key is still being served.
    let bad = json!({"spec_path": h.spec_path(), "env": "nowhere"});
    for _ in 0..2 {
        let (status, body) = h
            .call_with(
                Method::POST,
                "/api/v1/deployments",
                Some(&deployer),
                Some(bad.clone()),
                &[("idempotency-key", "typo")],
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

#[tokio::test]
async fn a_bad_json_field_is_named_by_its_path() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"role": "emperor"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("role: "), "{message}");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&admin),
            Some(json!({"spec_path": h.spec_path(), "rollback": {"to": 7}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("rollback.to: "),
        "{body}"
    );
}

#[tokio::test]
async fn two_tokens_of_one_owner_are_one_person_at_the_gate() {
    let h = Harness::new();
    // Alice starts a deployment with her CI token and tries to approve it with another.
    let deployer = h.token_of(Role::Deployer, None, "ci", "alice");
    let second = h.token_of(Role::Approver, None, "alice-approver", "alice");
    let (_, started) = h.deploy(&deployer, "production").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let gate = h.wait_gate(&deployer, &id).await["approval"].clone();
    let decision = json!({
        "decision": "approve",
        "plan_digest": gate["plan_digest"], "image_id": gate["image_id"],
        "view_digest": h.view_digest(&deployer, &id).await,
    });
    let path = format!("/api/v1/deployments/{id}/approvals");
    let (status, answer) = h
        .call(Method::POST, &path, Some(&second), Some(decision.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("separation of duties"),
        "{answer}"
    );
    // Bob approves; the decision, the gate and the audit name him, with his credential.
    let bob = h.token_of(Role::Approver, None, "bob-laptop", "bob");
    let (status, answer) = h
        .call(Method::POST, &path, Some(&bob), Some(decision))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["by"], "bob");
    let done = h.wait_finished(&deployer, &id).await;
    assert_eq!(done["approval"]["approved_by"], json!(["bob"]), "{done:#}");
    let admin = h.token(Role::Admin, None, "root");
    let (_, audit) = h
        .call(Method::GET, "/api/v1/audit", Some(&admin), None)
        .await;
    let approve = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "approve")
        .expect("an approve entry");
    assert_eq!(approve["actor"], "bob");
    assert!(
        approve["details"]["credential"]
            .as_str()
            .unwrap()
            .starts_with("token:bob-laptop:"),
        "{approve}"
    );
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_is_revoked() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let viewer = h.token(Role::Viewer, None, "watcher");
    let (_, started) = h.deploy(&deployer, "production").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    h.wait_gate(&deployer, &id).await;
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("/api/v1/deployments/{id}/events"))
        .header("authorization", format!("Bearer {viewer}"))
        .body(Body::empty())
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The deployment waits at its gate: the stream stays open, until the token goes.
    let mut reading = tokio::spawn(async move { response.into_body().collect().await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut reading)
            .await
            .is_err(),
        "the stream stays open while the token is valid"
    );
    let token_id = auth::list_tokens(&h.cp.store)
        .unwrap()
        .into_iter()
        .find(|t| t.name.as_deref() == Some("watcher"))
        .unwrap()
        .id;
    auth::revoke_token(&h.cp.store, "admin", &token_id).unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("the stream ended after the revocation")
        .unwrap()
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("event: deployment"), "{text}");
    assert!(
        !text.contains("event: end"),
        "ended by the revocation: {text}"
    );
}

/// Anchor the harness's store to `sinks` (what `cutover serve --audit-sink` does).
fn anchor_to(h: &Harness, sinks: &[std::path::PathBuf]) {
    use cutover_server::anchor::{load_or_create_key, Anchor};
    let key = load_or_create_key(&h.dir.path().join("keys")).unwrap();
    cutover_server::audit::anchor(&h.cp.store, Anchor::open(key, sinks).unwrap()).unwrap();
}

#[tokio::test]
async fn an_unwritable_audit_sink_starts_no_deployment_and_counts_no_approval() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let approver = h.token(Role::Approver, None, "bob");
    let admin = h.token(Role::Admin, None, "root");
    let sink = h.dir.path().join("sink.jsonl");
    anchor_to(&h, std::slice::from_ref(&sink));
    let (status, started) = h.deploy(&deployer, "production").await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let gate = h.wait_gate(&deployer, &id).await["approval"].clone();

    let seen = h.view_digest(&approver, &id).await;

    // The sink fails from now on: every write to /dev/full does (ENOSPC).
    anchor_to(&h, &[std::path::PathBuf::from("/dev/full")]);
    let (status, body) = h
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/approvals"),
            Some(&approver),
            Some(json!({
                "decision": "approve", "comment": "",
                "plan_digest": gate["plan_digest"], "image_id": gate["image_id"],
                "view_digest": seen,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("audit log's sink cannot be written"),
        "{message}"
    );
    assert!(
        !message.contains("/dev/full"),
        "no paths to clients: {message}"
    );
    assert!(
        h.cp.store.approvals(&id).unwrap().is_empty(),
        "the approval does not count"
    );
    let detail = h.wait_gate(&deployer, &id).await;
    assert_eq!(detail["status"], "running", "{detail:#}");

    let (status, body) = h.deploy(&deployer, "staging").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("deployment staging-1 was not started"),
        "{body}"
    );
    let record = h.cp.store.deployment("staging-1").unwrap().unwrap();
    assert!(
        matches!(&record.status, cutover_model::DeploymentStatus::RolledBack { reason } if reason.contains("audit log")),
        "{:?}",
        record.status
    );
    assert!(
        h.cp.store.journal("staging-1").unwrap().is_empty(),
        "no step of it ran"
    );
    assert!(cutover_executor::resumable(&h.cp.store)
        .unwrap()
        .iter()
        .all(|r| r != "staging-1"));

    // Guardrails and project roots the audit log cannot record do not take effect.
    let local = auth::Principal::local("admin");
    let err = guardrails::set(&h.cp, &local, "staging", "approvals = 1", "g.toml").unwrap_err();
    assert!(
        err.to_string()
            .contains("guardrails version 2 of staging was not saved"),
        "{err}"
    );
    let (_, shown) = h
        .call(
            Method::GET,
            "/api/v1/guardrails/staging",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(shown["current"]["version"], 1, "{shown}");
    let elsewhere = h.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let err = projects::add(&h.cp, &local, &elsewhere.display().to_string(), false).unwrap_err();
    assert!(err.to_string().contains("was not registered"), "{err}");
    let (_, roots) = h
        .call(Method::GET, "/api/v1/projects", Some(&admin), None)
        .await;
    assert!(!roots.to_string().contains("elsewhere"), "{roots}");

    let (status, text) = h
        .raw(Method::GET, "/metrics", Some(&deployer), None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("cutover_audit_anchor_ok 0"), "{text}");

    // With a writable sink again, the environment is free (the lease was released) and
    // the checkpoint covers the entries the failed appends left.
    anchor_to(&h, std::slice::from_ref(&sink));
    let (status, body) = h.deploy(&deployer, "staging").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let entries = cutover_server::audit::export(&h.cp.store, None).unwrap();
    let public =
        cutover_signing::PublicKey::from_pem_file(&h.dir.path().join("keys/audit.pub")).unwrap();
    let report = cutover_server::anchor::verify_against(
        &entries,
        &std::fs::read_to_string(&sink).unwrap(),
        &public,
    );
    assert!(report.intact(), "{report:?}");
}

// ----- the approval view -----

const CANARY_ONE: &str = "CANARY-5d1f0a17c3e9";
const CANARY_TWO: &str = "CANARY-5d1f77b0e2d4";

/// The harness's spec with production's instances given `env` (a table body), `replicas`
/// and `memory`.
fn spec_with(env: &str, replicas: u32, memory: &str) -> String {
    SPEC.replace(
        "[environments.production]\nlisten = \"127.0.0.1:18091\"\nreplicas = 1",
        &format!("[environments.production]\nlisten = \"127.0.0.1:18091\"\nreplicas = {replicas}"),
    )
    .replace(
        "[health]",
        &format!("[container]\nmemory = \"{memory}\"\nenv = {{ {env} }}\n\n[health]"),
    )
}

impl Harness {
    fn rewrite_spec(&self, text: &str) {
        std::fs::write(self.dir.path().join("deploy.toml"), text).unwrap();
    }

    /// The raw approval view of `id` as `token` sees it.
    async fn raw_view(&self, token: &str, id: &str) -> (StatusCode, String) {
        let (status, bytes) = self
            .raw(
                Method::GET,
                &format!("/api/v1/deployments/{id}/approval-view"),
                Some(token),
                None,
                &[],
            )
            .await;
        (status, String::from_utf8(bytes).unwrap())
    }

    async fn approve(
        &self,
        token: &str,
        id: &str,
        view_digest: Option<&str>,
    ) -> (StatusCode, Value) {
        let gate = self.wait_gate(token, id).await["approval"].clone();
        let mut body = json!({
            "decision": "approve", "comment": "reviewed",
            "plan_digest": gate["plan_digest"], "image_id": gate["image_id"],
        });
        if let Some(digest) = view_digest {
            body["view_digest"] = json!(digest);
        }
        self.call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/approvals"),
            Some(token),
            Some(body),
        )
        .await
    }
}

#[tokio::test]
async fn the_approval_view_shows_what_changes_by_name_to_viewers_of_the_environment_only() {
    let h = Harness::new();
    h.rewrite_spec(&spec_with(
        &format!("GREETING = \"{CANARY_ONE}\", MODE = \"fast\", OLD = \"x\""),
        1,
        "128MiB",
    ));
    let deployer = h.token(Role::Deployer, None, "ci");
    let approver = h.token(Role::Approver, Some("production"), "alice");
    let viewer = h.token(Role::Viewer, Some("production"), "vera");
    let outsider = h.token(Role::Viewer, Some("staging"), "sam");

    // The first release: every setting is new, variables are listed by name.
    let (_, started) = h.deploy(&deployer, "production").await;
    let first = started["deployment_id"].as_str().unwrap().to_string();
    h.wait_gate(&deployer, &first).await;
    let (status, text) = h.raw_view(&viewer, &first).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!text.contains(CANARY_ONE), "a value leaked: {text}");
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["first_release"], true, "{view:#}");
    assert_eq!(view["running"], Value::Null);
    assert_eq!(
        view["env_vars"]["added"],
        json!(["GREETING", "MODE", "OLD"])
    );
    assert!(view["view_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(view["scan"]["passed"], true, "{view:#}");
    assert_eq!(
        view["provenance"]["signing_key_id"], "fake-key-1",
        "{view:#}"
    );
    assert_eq!(view["provenance"]["build_kind"], "cargo", "{view:#}");
    // A viewer of another environment is refused.
    let (status, text) = h.raw_view(&outsider, &first).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let digest = view["view_digest"].as_str().unwrap().to_string();
    let (status, body) = h.approve(&approver, &first, Some(&digest)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        h.wait_finished(&deployer, &first).await["status"],
        "succeeded"
    );

    // The second: one value changed, one variable added, one removed, more replicas and memory.
    h.rewrite_spec(&spec_with(
        &format!("GREETING = \"{CANARY_TWO}\", MODE = \"fast\", NEW_FLAG = \"{CANARY_ONE}\""),
        2,
        "256MiB",
    ));
    let (_, started) = h.deploy(&deployer, "production").await;
    let second = started["deployment_id"].as_str().unwrap().to_string();
    h.wait_gate(&deployer, &second).await;
    let (status, text) = h.raw_view(&viewer, &second).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for canary in [CANARY_ONE, CANARY_TWO] {
        assert!(!text.contains(canary), "a value leaked: {text}");
    }
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["first_release"], false);
    assert_eq!(view["running"]["release_id"], first.as_str(), "{view:#}");
    assert_eq!(view["env_vars"]["added"], json!(["NEW_FLAG"]));
    assert_eq!(view["env_vars"]["removed"], json!(["OLD"]));
    assert_eq!(view["env_vars"]["changed"], json!(["GREETING"]));
    assert_eq!(view["env_vars"]["unchanged"], 1);
    let change = |name: &str| {
        view["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["setting"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no change of {name}: {view:#}"))
    };
    assert_eq!(change("replicas")["before"], "1");
    assert_eq!(change("replicas")["after"], "2");
    assert_eq!(change("container.memory")["before"], "128 MiB");
    assert_eq!(change("container.memory")["after"], "256 MiB");
    assert!(change("image")["before"]
        .as_str()
        .unwrap()
        .contains("sha256:"));
    // Settings that stay are not listed.
    assert!(view["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["setting"] != "listen" && c["setting"] != "health.path"));
}

#[tokio::test]
async fn an_approval_must_name_the_current_view_and_records_it() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let approver = h.token(Role::Approver, Some("production"), "alice");
    let admin = h.token(Role::Admin, None, "root");
    let (_, started) = h.deploy(&deployer, "production").await;
    let id = started["deployment_id"].as_str().unwrap().to_string();
    let gate = h.wait_gate(&deployer, &id).await["approval"].clone();
    let seen = h.view_digest(&approver, &id).await;

    // Without a view: refused, saying where to review.
    let (status, body) = h.approve(&approver, &id, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("approval-view"),
        "{body}"
    );
    // A made-up digest: refused.
    let (status, body) = h.approve(&approver, &id, Some("sha256:0000")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the deployment changed since you looked; review again"),
        "{body}"
    );
    // The view changes after the approver looked (the supply chain's record of the image
    // now shows an exception): the digest they saw is refused.
    let image = gate["image_id"].as_str().unwrap().to_string();
    h.fake.supply().state().evidence.insert(
        image.clone(),
        cutover_model::SupplyEvidence {
            scan: Some(cutover_model::ScanEvidence {
                passed: true,
                fail_on: "high".to_string(),
                fail_on_secrets: true,
                findings: Some(Vec::new()),
                exceptions: vec![cutover_model::ExceptionEvidence {
                    finding: "GHSA-xxxx in openssl 1.0".to_string(),
                    exception: "GHSA-xxxx".to_string(),
                    reason: "not reachable".to_string(),
                    owner: "sec".to_string(),
                    expires: "2099-12-31".to_string(),
                }],
                ..Default::default()
            }),
            provenance: None,
        },
    );
    let (status, body) = h.approve(&approver, &id, Some(&seen)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("review again"),
        "{body}"
    );
    // Nothing was recorded by any refused attempt.
    let detail = h.wait_gate(&deployer, &id).await;
    assert_eq!(detail["approval"]["decisions"], json!([]), "{detail:#}");
    let (_, audit) = h
        .call(Method::GET, "/api/v1/audit", Some(&admin), None)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "approve"),
        "{audit:#}"
    );

    // The view names the guardrails in force; an admin changing them changes the view.
    let before = h.view(&approver, &id).await;
    assert_eq!(before["guardrails"]["version"], 1, "{before:#}");
    guardrails::set(
        &h.cp,
        &auth::Principal::local("admin"),
        "production",
        "approvals = 1\n[container]\nmax_pids = 512\n",
        "guardrails.toml",
    )
    .unwrap();
    let (status, body) = h
        .approve(
            &approver,
            &id,
            Some(before["view_digest"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Reviewed again: the new view shows the exception, and its digest is accepted.
    let view = h.view(&approver, &id).await;
    assert_eq!(view["guardrails"]["version"], 2, "{view:#}");
    assert_eq!(
        view["scan"]["exceptions"],
        json!([{"finding": "GHSA-xxxx in openssl 1.0", "exception": "GHSA-xxxx", "reason": "not reachable", "owner": "sec", "expires": "2099-12-31"}]),
        "{view:#}"
    );
    let digest = view["view_digest"].as_str().unwrap().to_string();
    assert_ne!(digest, seen);
    let (status, body) = h.approve(&approver, &id, Some(&digest)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done = h.wait_finished(&deployer, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        done["approval"]["decisions"][0]["view_digest"],
        digest.as_str()
    );
    let (_, audit) = h
        .call(Method::GET, "/api/v1/audit", Some(&admin), None)
        .await;
    let approve = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "approve")
        .expect("an approve entry");
    assert_eq!(
        approve["details"]["view_digest"],
        digest.as_str(),
        "{approve}"
    );
    assert_eq!(h.cp.store.approvals(&id).unwrap()[0].view_digest, digest);
}

#[tokio::test]
async fn a_plan_may_name_a_prebuilt_image_by_digest_or_be_build_only() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let image = format!("127.0.0.1:5000/team/hello@sha256:{}", "ab".repeat(32));
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "image": image})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids[..4], ["pull", "scan", "sign", "verify"], "{ids:?}");
    assert!(body["text"].as_str().unwrap().contains(&image));

    // A tag alone is refused naming the field and why; so is a rollback with an image.
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "image": "127.0.0.1:5000/team/hello:v1"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("image: "), "{message}");
    assert!(message.contains("a tag can be moved"), "{message}");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "image": image, "rollback": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Build only: build, scan, sign and verify, nothing else.
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({
                "spec_path": h.spec_path(), "env": "staging", "build_only": true,
                "invoked_by": "https://ci.example/team/hello/jobs/7",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kinds: Vec<&str> = body["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["build", "scan", "sign", "verify"], "{kinds:?}");
    assert_eq!(body["plan"]["kind"]["type"], "build", "{body}");
    // invoked_by is a URL, and only with build_only.
    for bad in [
        json!({"spec_path": h.spec_path(), "env": "staging", "build_only": true, "invoked_by": "not a url"}),
        json!({"spec_path": h.spec_path(), "env": "staging", "invoked_by": "https://ci.example/jobs/7"}),
    ] {
        let (status, body) = h
            .call(Method::POST, "/api/v1/plans", Some(&deployer), Some(bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("invoked_by: "),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_spec_sent_as_text_from_ci_deploys_by_image_without_its_build_source() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    // The CI checkout's deploy.toml: its [build], signing key and trusted keys name files
    // on the CI machine.
    let text = std::fs::read_to_string(h.spec_path()).unwrap().replacen(
        "[environments.staging]\n",
        "[supply]\nsigning_key = \"keys/ci.key\"\n\n[environments.staging]\ntrusted_keys = [\n  \"keys/ci.pub\",\n]\n",
        1,
    );
    assert!(
        text.contains("[build]") && text.contains("keys/ci.pub"),
        "{text}"
    );
    let image = format!("127.0.0.1:5000/team/hello@sha256:{}", "cd".repeat(32));
    // Without an image, the build source would be read here: refused naming the field.
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({"spec": text, "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("build."),
        "{body}"
    );
    // With one, the [build] is the image: pulled, not built, and nothing of it read.
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            Some(&deployer),
            Some(json!({"spec": text, "env": "staging", "image": image})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids[..4], ["pull", "scan", "sign", "verify"], "{ids:?}");
    // Signed by this control plane's own key; trusting what it holds, not the sender's files.
    let sign = &body["plan"]["steps"][2]["action"];
    assert!(sign["key"].is_null(), "{sign}");
    let verify = &body["plan"]["steps"][3]["action"];
    assert_eq!(verify["trusted_keys"], json!([]), "{verify}");
}
