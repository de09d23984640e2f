//! Environment variable values never reach a client: a canary value set in the spec's
//! `container.env` is deployed with the fake providers, then every GET route of the API
//! (as an admin), the plan and start responses, the event streams and every page of the
//! web UI are searched for it. Names and `sha256:` digests of values are what clients see.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use cutover_executor::fake::FakeProviders;
use cutover_model::{sha256_digest, Action};
use cutover_server::auth::{self, Role};
use cutover_server::http::routes;
use cutover_server::{guardrails, projects, router, ControlPlane, Options};
use cutover_store::Store;

/// Built at run time so no source file holds the whole value.
fn canary() -> String {
    format!("CANARY-{}", "b7e4c1d09a6f")
}

fn spec(canary: &str) -> String {
    format!(
        r#"
app = "hello"

[build]
cargo = {{ manifest = "app/Cargo.toml", bin = "hello" }}

[container]
env = {{ GREETING_TEXT = "{canary}", LOG_LEVEL = "info" }}

[health]
interval = "5ms"
timeout = "50ms"
deadline = "2s"

[environments.staging]
listen = "127.0.0.1:18190"
replicas = 1
retire_after = "0s"
drain_timeout = "100ms"

[environments.production]
listen = "127.0.0.1:18191"
replicas = 1
drain_timeout = "100ms"
approval = true
"#
    )
}

struct Harness {
    dir: tempfile::TempDir,
    cp: Arc<ControlPlane>,
    app: Router,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        common::write_project(dir.path(), &spec(&canary()));
        let store = Store::open(&dir.path().join("db")).unwrap();
        let fake = FakeProviders::new();
        let cp = ControlPlane::with_options(
            store,
            fake.providers(),
            common::executor_config(),
            Options::default(),
        );
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
        Harness { dir, cp, app }
    }

    fn spec_path(&self) -> String {
        self.dir.path().join("deploy.toml").display().to_string()
    }

    fn token(&self, role: Role, name: &str) -> String {
        common::token(&self.cp.store, role, None, name, name)
    }

    /// Sends a request and reads its body ([`common::read_body`]).
    async fn send(&self, request: Request<Body>, patience: Duration) -> (StatusCode, String) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (
            status,
            common::read_body(response.into_body(), patience).await,
        )
    }

    async fn api(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap(), Duration::from_secs(5)).await
    }

    async fn page(&self, path: &str, cookie: Option<&str>) -> (StatusCode, String, Option<String>) {
        common::page(&self.app, path, cookie).await
    }

    /// A web UI session of the owner of `token`.
    async fn ui_login(&self, token: &str) -> String {
        common::ui_login(&self.app, token).await
    }

    async fn detail(&self, token: &str, id: &str) -> Value {
        let (status, body) = self
            .api(
                Method::GET,
                &format!("/api/v1/deployments/{id}"),
                token,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn wait_for(&self, token: &str, id: &str, done: impl Fn(&Value) -> bool) {
        common::eventually(
            &format!("deployment {id} did not get there"),
            Duration::from_secs(10),
            async || {
                let detail = self.detail(token, id).await;
                match done(&detail) {
                    true => Ok(()),
                    false => Err(format!("{detail:#}")),
                }
            },
        )
        .await
    }
}

#[tokio::test]
async fn no_route_and_no_page_shows_an_env_value_only_its_name_and_digest() {
    let canary = canary();
    let digest = sha256_digest(canary.as_bytes());
    let h = Harness::new();
    let admin = h.token(Role::Admin, "root-admin");
    let deployer = h.token(Role::Deployer, "ci");
    // Every answer a client received, by what was asked.
    let mut seen: Vec<(String, StatusCode, String)> = Vec::new();

    // The plan: in its JSON every container's env value is a digest, so is its text.
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/plans",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let planned: Value = serde_json::from_str(&body).unwrap();
    let mut containers = 0;
    for step in planned["plan"]["steps"].as_array().unwrap() {
        let container = match step["action"]["type"].as_str().unwrap() {
            "provision" => &step["action"]["instance"]["container"],
            "record" => &step["action"]["container"],
            _ => continue,
        };
        assert_eq!(container["env"]["GREETING_TEXT"], digest.as_str());
        assert_eq!(
            container["env"]["LOG_LEVEL"],
            sha256_digest(b"info").as_str()
        );
        containers += 1;
    }
    assert_eq!(containers, 2, "a provision and a record step: {planned:#}");
    assert!(planned["text"]
        .as_str()
        .unwrap()
        .contains(&format!("GREETING_TEXT={digest}")));
    seen.push(("POST /api/v1/plans".into(), status, body));

    // Deploy staging twice (the second has a previous release to compare with) and
    // production, which waits at its approval gate.
    for (env, id) in [
        ("staging", "staging-1"),
        ("staging", "staging-2"),
        ("production", "production-1"),
    ] {
        let (status, body) = h
            .api(
                Method::POST,
                "/api/v1/deployments",
                &deployer,
                Some(json!({"spec_path": h.spec_path(), "env": env})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        seen.push((format!("POST /api/v1/deployments ({env})"), status, body));
        if env == "staging" {
            h.wait_for(&admin, id, |d| d["status"] == "succeeded").await;
        } else {
            h.wait_for(&admin, id, |d| d["approval"]["waiting"] == json!(true))
                .await;
        }
    }
    // The value is still what the container gets: the saved plan keeps it.
    let saved = h.cp.store.plan("staging-2").unwrap().unwrap();
    assert!(saved.steps.iter().any(|s| matches!(&s.action,
        Action::Provision { instance } if instance.container.env["GREETING_TEXT"] == canary)));

    // Every GET route of the table, as an admin, for each deployment and environment.
    let mut get_routes = 0;
    for route in routes().into_iter().filter(|r| r.method == Method::GET) {
        get_routes += 1;
        for (id, env) in [("staging-2", "staging"), ("production-1", "production")] {
            let image =
                h.cp.store
                    .release("staging", "staging-2")
                    .unwrap()
                    .map(|r| r.image.id)
                    .unwrap_or_default();
            let path = route
                .path
                .replace("{id}", id)
                .replace("{env}", env)
                .replace("{image}", &image);
            let (status, body) = h.api(Method::GET, &path, &admin, None).await;
            assert!(status.is_success(), "GET {path}: {status} {body}");
            seen.push((format!("GET {path}"), status, body));
            if !route.path.contains('{') {
                break;
            }
        }
    }
    assert!(get_routes >= 10, "the route table has its GET routes");

    // The environments show the current release's env by name and digest.
    let (_, envs) = h
        .api(Method::GET, "/api/v1/environments/staging", &admin, None)
        .await;
    let envs: Value = serde_json::from_str(&envs).unwrap();
    assert_eq!(
        envs["current"]["container"]["env"]["GREETING_TEXT"],
        digest.as_str(),
        "{envs:#}"
    );

    // Every page of the web UI, as an admin.
    let cookie = h.ui_login(&admin).await;
    for path in [
        "/",
        "/history",
        "/deployments/staging-2",
        "/deployments/production-1",
        "/rollback/staging",
        "/ui/deployments/staging-2/events",
        "/ui/deployments/production-1/events",
    ] {
        let (status, body, _) = h.page(path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        seen.push((format!("UI {path}"), status, body));
    }
    let (_, approval_page, _) = h.page("/deployments/production-1", Some(&cookie)).await;
    assert!(
        approval_page.contains("GREETING_TEXT"),
        "the approval page names the variable: {approval_page}"
    );

    for (what, status, body) in &seen {
        assert!(
            !body.contains(&canary),
            "{what} ({status}) shows the env value"
        );
    }
    let with_digest = seen.iter().filter(|(_, _, b)| b.contains(&digest)).count();
    assert!(
        with_digest >= 3,
        "the plan, the environments and the environment show the digest"
    );
    eprintln!(
        "{} answers searched ({get_routes} GET routes), {with_digest} show the digest",
        seen.len()
    );
}
