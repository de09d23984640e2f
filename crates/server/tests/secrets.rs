//! The secret store through the API (in-process router, fake providers): roles, audit,
//! pinning by deploys, env:// values stored as versions, revocation, rewrap, a wrong
//! master key, tampered ciphertext, and a canary value that no GET route ever returns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tower::ServiceExt;

use cutover_executor::fake::FakeProviders;
use cutover_model::{Action, SecretPin, SecretSource};
use cutover_secrets::secrecy::ExposeSecret;
use cutover_secrets::MasterKey;
use cutover_server::auth::{self, Role};
use cutover_server::http::routes;
use cutover_server::secrets::{self, Keyring, StoreSecrets};
use cutover_server::{guardrails, projects, router, ControlPlane, Options};
use cutover_store::Store;

fn canary(n: u32) -> String {
    format!("CANARY-{n}-{}", "3f9e0b7c5a1d")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

const SPEC: &str = r#"
app = "hello"

[build]
cargo = { manifest = "app/Cargo.toml", bin = "hello" }

[container.secrets]
db = "secret://db-password"
token = { source = "env://IT_TOKEN", path = "/etc/app/token" }

[health]
interval = "5ms"
timeout = "50ms"
deadline = "2s"

[environments.staging]
listen = "127.0.0.1:18290"
replicas = 1
retire_after = "0s"
drain_timeout = "100ms"
"#;

struct Harness {
    dir: tempfile::TempDir,
    cp: Arc<ControlPlane>,
    keyring: Arc<Keyring>,
    app: Router,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        common::write_project(dir.path(), SPEC);
        let store = Store::open(&dir.path().join("db")).unwrap();
        let master = MasterKey::generate().unwrap();
        secrets::open(&store, &master).unwrap();
        let keyring = Arc::new(Keyring::new(master));
        let cp = ControlPlane::with_options(
            store,
            FakeProviders::new().providers(),
            common::executor_config(),
            Options {
                secrets: Some(keyring.clone()),
                ..Options::default()
            },
        );
        let admin = auth::Principal::local("admin");
        projects::add(&cp, &admin, &dir.path().display().to_string(), false).unwrap();
        guardrails::set(&cp, &admin, "staging", "", "guardrails.toml").unwrap();
        let app = router(cp.clone());
        Harness {
            dir,
            cp,
            keyring,
            app,
        }
    }

    fn spec_path(&self) -> String {
        self.dir.path().join("deploy.toml").display().to_string()
    }

    fn token(&self, role: Role, env: Option<&str>, name: &str) -> String {
        common::token(&self.cp.store, role, env, name, name)
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
        let response = self.app.clone().oneshot(request.unwrap()).await.unwrap();
        let status = response.status();
        let body = common::read_body(response.into_body(), Duration::from_secs(2)).await;
        (status, body)
    }

    async fn set(&self, token: &str, target: &str, value: &str) -> (StatusCode, String) {
        self.api(
            Method::PUT,
            &format!("/api/v1/secrets/{target}"),
            token,
            Some(json!({"value_base64": b64(value)})),
        )
        .await
    }

    async fn wait_succeeded(&self, token: &str, id: &str) {
        let path = format!("/api/v1/deployments/{id}");
        common::eventually(
            &format!("deployment {id} did not succeed"),
            Duration::from_secs(10),
            async || {
                let (_, body) = self.api(Method::GET, &path, token, None).await;
                let detail: Value = serde_json::from_str(&body).unwrap();
                match detail["status"] == "succeeded" {
                    true => Ok(()),
                    false => Err(format!("{detail:#}")),
                }
            },
        )
        .await
    }

    async fn page(&self, path: &str, cookie: Option<&str>) -> (StatusCode, String, Option<String>) {
        common::page(&self.app, path, cookie).await
    }

    /// A web UI session of the owner of `token`.
    async fn ui_login(&self, token: &str) -> String {
        common::ui_login(&self.app, token).await
    }

    fn audit_actions(&self) -> Vec<String> {
        cutover_server::audit::export(&self.cp.store, None)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect()
    }
}

fn assert_clean(what: &str, body: &str, value: &str) {
    assert!(!body.contains(value), "{what} shows the value: {body}");
    assert!(
        !body.contains(&b64(value)),
        "{what} shows it base64: {body}"
    );
}

#[tokio::test]
async fn roles_decide_who_sets_and_nobody_reads_a_value() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    let staging_admin = h.token(Role::Admin, Some("staging"), "stage-admin");
    let deployer = h.token(Role::Deployer, None, "ci");
    let viewer = h.token(Role::Viewer, None, "watcher");
    let value = canary(1);

    // A deployer references secrets but cannot set, rotate, revoke or remove them.
    for (method, path, body) in [
        (
            Method::PUT,
            "/api/v1/secrets/staging/db-password",
            Some(json!({"value_base64": b64(&value)})),
        ),
        (
            Method::POST,
            "/api/v1/secrets/staging/db-password/rotate",
            Some(json!({"value_base64": b64(&value)})),
        ),
        (
            Method::POST,
            "/api/v1/secrets/staging/db-password/revoke",
            Some(json!({"version": 1})),
        ),
        (Method::DELETE, "/api/v1/secrets/staging/db-password", None),
        (
            Method::POST,
            "/api/v1/secrets/rewrap",
            Some(json!({"new_key_base64": b64(&"k".repeat(32))})),
        ),
    ] {
        for token in [&deployer, &viewer] {
            let (status, body) = h.api(method.clone(), path, token, body.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        }
    }
    // An admin of staging only manages staging's secrets.
    let (status, body) = h
        .set(&staging_admin, "production/db-password", &value)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = h.set(&staging_admin, "staging/db-password", &value).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_clean("PUT answer", &body, &value);
    let changed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(changed["version"], 1);

    // Bad names and values are refused with the field named.
    let (status, body) = h.set(&admin, "staging/..%2Fetc", &value).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h
        .api(
            Method::PUT,
            "/api/v1/secrets/staging/x",
            &admin,
            Some(json!({"value_base64": "not base64!"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("value_base64"), "{body}");

    // A viewer lists names and versions, never a value; so does everyone else.
    for token in [&viewer, &deployer, &admin] {
        let (status, body) = h.api(Method::GET, "/api/v1/secrets", token, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_clean("the secret list", &body, &value);
        let lines: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(lines[0]["name"], "db-password");
        let by = lines[0]["versions"][0]["created_by"].as_str().unwrap();
        assert!(by.contains("stage-admin"), "{by}");
    }
    let scoped = h.token(Role::Viewer, Some("production"), "prod-viewer");
    let (_, body) = h.api(Method::GET, "/api/v1/secrets", &scoped, None).await;
    assert_eq!(body, "[]", "a viewer of another environment sees none");

    // Rotate, revoke, remove: each audited; the removal keeps the version count.
    let (status, _) = h
        .api(
            Method::POST,
            "/api/v1/secrets/staging/db-password/rotate",
            &admin,
            Some(json!({"value_base64": b64(&canary(2)), "max_age": "1ms"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/secrets/staging/db-password/revoke",
            &admin,
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // max_age is 1ms: wait until the store says so, within a deadline.
    let lines = common::eventually(
        "max_age 1ms never passed",
        Duration::from_secs(5),
        async || {
            let lines = secrets::list(&h.cp.store, Some("staging")).unwrap();
            match lines[0].expired {
                true => Ok(lines),
                false => Err(format!("{:?}", lines[0].versions)),
            }
        },
    )
    .await;
    assert_eq!(lines[0].latest, Some(2));
    assert!(lines[0].versions[0].revoked_at_ms.is_some());
    let (status, _) = h
        .api(
            Method::DELETE,
            "/api/v1/secrets/staging/db-password",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(secrets::list(&h.cp.store, None).unwrap().is_empty());
    let (_, body) = h.set(&admin, "staging/db-password", &canary(3)).await;
    let again: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["version"], 3, "versions are never reused");
    let actions = h.audit_actions();
    for action in [
        "secret.set",
        "secret.rotate",
        "secret.revoke",
        "secret.remove",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
}

#[tokio::test]
async fn deploys_pin_versions_store_env_values_and_no_get_route_shows_a_value() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    let deployer = h.token(Role::Deployer, None, "ci");
    let stored = canary(1);
    let from_env = canary(2);

    // A missing secret: refused naming the spec's file, line and field; nothing started.
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "secret_env": {"IT_TOKEN": from_env}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("deploy.toml:8:6"), "{body}");
    assert!(body.contains("container.secrets.db"), "{body}");
    assert!(h.cp.store.deployments(None, 10).unwrap().is_empty());

    h.set(&admin, "staging/db-password", &stored).await;
    // A missing env var: refused, naming it and its line.
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("deploy.toml:9:9"), "{body}");
    assert!(body.contains("IT_TOKEN is not set"), "{body}");

    let mut seen = Vec::new();
    for id in ["staging-1", "staging-2"] {
        let (status, body) = h
            .api(
                Method::POST,
                "/api/v1/deployments",
                &deployer,
                Some(json!({"spec_path": h.spec_path(), "env": "staging", "secret_env": {"IT_TOKEN": from_env}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        seen.push(body);
        h.wait_succeeded(&admin, id).await;
    }
    // The plan pins versions; the same env value twice is one version.
    let plan = h.cp.store.plan("staging-2").unwrap().unwrap();
    let instance = plan
        .steps
        .iter()
        .find_map(|s| match &s.action {
            Action::Provision { instance } => Some(instance.clone()),
            _ => None,
        })
        .unwrap();
    let pins: Vec<_> = instance
        .container
        .secrets
        .iter()
        .map(|(n, m)| (n.clone(), m.pin.clone().unwrap()))
        .collect();
    assert_eq!(
        pins,
        vec![
            (
                "db".to_string(),
                SecretPin {
                    name: "db-password".into(),
                    version: 1
                }
            ),
            (
                "token".to_string(),
                SecretPin {
                    name: "token".into(),
                    version: 1
                }
            ),
        ]
    );
    let plan_json = serde_json::to_string(&plan).unwrap();
    assert_clean("the saved plan", &plan_json, &stored);
    assert_clean("the saved plan", &plan_json, &from_env);

    // The provider seam hands out the pinned value and audits the injection.
    let source = StoreSecrets {
        store: h.cp.store.clone(),
        keyring: h.keyring.clone(),
    };
    let value = source
        .resolve(
            &instance,
            "db",
            &SecretPin {
                name: "db-password".into(),
                version: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(value.expose_secret(), stored.as_bytes());
    let injected = cutover_server::audit::export(&h.cp.store, None)
        .unwrap()
        .into_iter()
        .find(|e| e.action == "secret.inject")
        .expect("an injection is audited");
    assert_eq!(injected.details["container"], instance.name.as_str());
    assert_eq!(injected.details["release"], "staging-2");
    assert_eq!(injected.details["deployment"], "staging-2");

    // Every GET route, as an admin: never a value.
    let mut checked = 0;
    let image_id =
        h.cp.store
            .current_release("staging")
            .unwrap()
            .unwrap()
            .image
            .id;
    for route in routes().into_iter().filter(|r| r.method == Method::GET) {
        let path = route
            .path
            .replace("{id}", "staging-2")
            .replace("{env}", "staging")
            .replace("{image}", &image_id);
        let (status, body) = h.api(Method::GET, &path, &admin, None).await;
        assert!(status.is_success(), "GET {path}: {status} {body}");
        seen.push(body);
        checked += 1;
    }
    assert!(checked >= 10);
    // Every page of the web UI, as an admin.
    let cookie = h.ui_login(&admin).await;
    for path in [
        "/",
        "/history",
        "/deployments/staging-1",
        "/deployments/staging-2",
        "/rollback/staging",
        "/ui/deployments/staging-2/events",
    ] {
        let (status, body, _) = h.page(path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        seen.push(body);
    }
    for body in &seen {
        assert_clean("an API answer", body, &stored);
        assert_clean("an API answer", body, &from_env);
    }

    // Rotation: a new release of the current image with the latest versions, no build.
    h.api(
        Method::POST,
        "/api/v1/secrets/staging/db-password/rotate",
        &admin,
        Some(json!({"value_base64": b64(&canary(3))})),
    )
    .await;
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "secrets_only": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h.wait_succeeded(&admin, "staging-3").await;
    let rotated = h.cp.store.plan("staging-3").unwrap().unwrap();
    assert!(!rotated
        .steps
        .iter()
        .any(|s| matches!(s.action, Action::Build { .. })));
    let release = h.cp.store.current_release("staging").unwrap().unwrap();
    assert_eq!(release.id, "staging-3");
    assert_eq!(
        release.container.secrets["db"]
            .pin
            .as_ref()
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        release.container.secrets["token"]
            .pin
            .as_ref()
            .unwrap()
            .version,
        1
    );

    // Rolling back to a release that pins a revoked version is refused, naming it.
    h.api(
        Method::POST,
        "/api/v1/secrets/staging/db-password/revoke",
        &admin,
        Some(json!({"version": 1})),
    )
    .await;
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/environments/staging/rollback",
            &deployer,
            Some(json!({"to": "staging-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("db-password version 1"), "{body}");
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/environments/staging/rollback",
            &deployer,
            Some(json!({"to": "staging-2", "use_latest_secrets": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h.wait_succeeded(&admin, "staging-4").await;
    let release = h.cp.store.current_release("staging").unwrap().unwrap();
    assert_eq!(release.id, "staging-4");
    assert_eq!(
        release.container.secrets["db"]
            .pin
            .as_ref()
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn tampered_ciphertext_fails_naming_the_secret_and_never_panics() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    h.set(&admin, "staging/db-password", &canary(1)).await;
    let tree: cutover_store::TypedTree<secrets::SecretRecord> =
        h.cp.store.typed_tree("secrets").unwrap();
    let key = "staging\0db-password";
    let mut record = tree.get(key).unwrap().unwrap();
    let last = record.versions[0].sealed.ciphertext.len() - 1;
    record.versions[0].sealed.ciphertext[last] ^= 0x01;
    tree.insert(key, &record).unwrap();
    let err = secrets::value(&h.cp.store, &h.keyring, "staging", "db-password", 1)
        .expect_err("a tampered value does not open")
        .to_string();
    assert!(err.contains("staging/db-password version 1"), "{err}");
    assert!(!err.contains("CANARY"), "{err}");
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_and_rewrap_moves_every_key() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    h.set(&admin, "staging/a", &canary(1)).await;
    h.set(&admin, "staging/b", &canary(2)).await;
    let before: Vec<_> =
        h.cp.store
            .typed_tree::<secrets::SecretRecord>("secrets")
            .unwrap()
            .values()
            .unwrap();

    let other = MasterKey::generate().unwrap();
    let err = secrets::open(&h.cp.store, &other).unwrap_err().to_string();
    assert!(err.contains("does not match the store"), "{err}");

    let new = MasterKey::generate().unwrap();
    let new_b64 = new.to_base64().to_string();
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/secrets/rewrap",
            &admin,
            Some(json!({"new_key_base64": new_b64})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["versions"], 2);
    let after: Vec<_> =
        h.cp.store
            .typed_tree::<secrets::SecretRecord>("secrets")
            .unwrap()
            .values()
            .unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b.versions[0].sealed.ciphertext,
            a.versions[0].sealed.ciphertext
        );
        assert_ne!(b.versions[0].sealed.data_key, a.versions[0].sealed.data_key);
    }
    let value = secrets::value(&h.cp.store, &h.keyring, "staging", "b", 1).unwrap();
    assert_eq!(value.expose_secret(), canary(2).as_bytes());
    // The store now answers to the new key only.
    secrets::open(&h.cp.store, &MasterKey::parse(&new_b64, "t").unwrap()).unwrap();
    assert!(h.audit_actions().iter().any(|a| a == "secret.rewrap"));
}

#[tokio::test]
async fn a_secret_past_its_max_age_warns_in_status_and_fires_one_webhook_event() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    let (status, body) = h
        .api(
            Method::PUT,
            "/api/v1/secrets/staging/db-password",
            &admin,
            Some(json!({"value_base64": b64(&canary(1)), "max_age": "90d"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(secrets::expired_warnings(&h.cp.store, "staging")
        .unwrap()
        .is_empty());
    assert!(secrets::due_expiry_events(&h.cp.store).unwrap().is_empty());

    // Tighten it: now past.
    h.api(
        Method::PUT,
        "/api/v1/secrets/staging/other",
        &admin,
        Some(json!({"value_base64": b64(&canary(2)), "max_age": "1ms"})),
    )
    .await;
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &admin,
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "secret_env": {"IT_TOKEN": canary(3)}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h.wait_succeeded(&admin, "staging-1").await;
    let (status, body) = h
        .api(Method::GET, "/api/v1/environments/staging", &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let env: Value = serde_json::from_str(&body).unwrap();
    let warnings = env["secret_warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{env:#}");
    assert!(warnings[0]
        .as_str()
        .unwrap()
        .contains("staging/other version 1"));
    let events = secrets::due_expiry_events(&h.cp.store).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "secret_expired");
    assert!(
        events[0].text().contains("staging/other version 1"),
        "{}",
        events[0].text()
    );
    assert!(
        secrets::due_expiry_events(&h.cp.store).unwrap().is_empty(),
        "once per version"
    );
}

#[tokio::test]
async fn file_sources_are_authorised_before_they_are_read() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, None, "ci");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("key"), canary(7)).unwrap();
    std::fs::write(h.dir.path().join("key"), canary(8)).unwrap();
    let spec_with = |path: &std::path::Path| {
        SPEC.replace(
            "token = { source = \"env://IT_TOKEN\", path = \"/etc/app/token\" }",
            &format!("token = \"file://{}\"", path.display()),
        )
    };
    h.set(
        &h.token(Role::Admin, None, "root"),
        "staging/db-password",
        &canary(1),
    )
    .await;

    // A file outside every project root: refused before it is read.
    std::fs::write(
        h.dir.path().join("deploy.toml"),
        spec_with(&outside.path().join("key")),
    )
    .unwrap();
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("container.secrets.token"), "{body}");
    assert_clean("the refusal", &body, &canary(7));
    assert!(secrets::record(&h.cp.store, "staging", "token")
        .unwrap()
        .is_none());

    // Inside the project: stored as a version, pinned.
    std::fs::write(
        h.dir.path().join("deploy.toml"),
        spec_with(&h.dir.path().join("key")),
    )
    .unwrap();
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let record = secrets::record(&h.cp.store, "staging", "token")
        .unwrap()
        .unwrap();
    assert!(record.versions[0].origin.starts_with("file://"));
    let value = secrets::value(&h.cp.store, &h.keyring, "staging", "token", 1).unwrap();
    assert_eq!(value.expose_secret(), canary(8).as_bytes());
}

#[tokio::test]
async fn a_deployer_cannot_overwrite_an_admins_secret_through_an_env_reference() {
    let h = Harness::new();
    let admin = h.token(Role::Admin, None, "root");
    let deployer = h.token(Role::Deployer, None, "ci");
    h.set(&admin, "staging/db-password", &canary(1)).await;
    // The admin's secret is named like the spec's env:// entry.
    h.set(&admin, "staging/token", &canary(2)).await;
    let (status, body) = h
        .api(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            Some(json!({"spec_path": h.spec_path(), "env": "staging", "secret_env": {"IT_TOKEN": canary(9)}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("managed with `cutover secret set`"), "{body}");
    let record = secrets::record(&h.cp.store, "staging", "token")
        .unwrap()
        .unwrap();
    assert_eq!(record.versions.len(), 1, "nothing was stored");
    let value = secrets::value(&h.cp.store, &h.keyring, "staging", "token", 1).unwrap();
    assert_eq!(value.expose_secret(), canary(2).as_bytes());
}
