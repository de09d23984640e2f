//! Promotion and the soak guardrail through the router in-process, on fake providers:
//! who may promote what, the 422 of an image that did not soak, a promotion that runs
//! no build and serves the same image, and pins and gc.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};

use cutover_executor::fake::FakeProviders;
use cutover_server::auth::{self, Role};
use cutover_server::{guardrails, projects, router, ControlPlane};
use cutover_store::Store;

const SPEC: &str = r#"
app = "hello"

[build]
cargo = { manifest = "app/Cargo.toml", bin = "hello" }

[container]
memory = "64MiB"
cpus = 0.5
pids_limit = 64

[health]
interval = "5ms"
timeout = "50ms"
deadline = "2s"

[environments.staging]
listen = "127.0.0.1:18390"
replicas = 1
retire_after = "0s"
drain_timeout = "100ms"
keep_releases = 1

[environments.production]
listen = "127.0.0.1:18391"
replicas = 1
drain_timeout = "100ms"
"#;

struct Harness {
    dir: tempfile::TempDir,
    cp: Arc<ControlPlane>,
    app: Router,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        common::write_project(&project, SPEC);
        let store = Store::open(&dir.path().join("state/db")).unwrap();
        let cp = ControlPlane::new(
            store,
            FakeProviders::new().providers(),
            common::executor_config(),
        );
        let admin = auth::Principal::local("admin");
        projects::add(&cp, &admin, &project.display().to_string(), false).unwrap();
        let app = router(cp.clone());
        Harness { dir, cp, app }
    }

    fn spec_path(&self) -> String {
        self.dir
            .path()
            .join("project/deploy.toml")
            .display()
            .to_string()
    }

    fn set(&self, env: &str, text: &str) {
        guardrails::set(
            &self.cp,
            &auth::Principal::local("admin"),
            env,
            text,
            "guardrails.toml",
        )
        .unwrap();
    }

    /// Through the HTTP door with `token`, or the socket's as the admin peer (`None`).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let peer = token.is_none().then_some("admin");
        let (status, bytes) = common::send(&self.app, method, path, token, peer, body, &[]).await;
        (status, common::json(&bytes))
    }

    /// Start a deployment (`extra` merged into the body) and wait until it finished.
    async fn run(&self, token: Option<&str>, env: &str, extra: Value) -> (StatusCode, Value) {
        let mut body = json!({"spec_path": self.spec_path(), "env": env});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, started) = self
            .call(Method::POST, "/api/v1/deployments", token, Some(body))
            .await;
        if status != StatusCode::CREATED {
            return (status, started);
        }
        let id = started["deployment_id"].as_str().unwrap().to_string();
        (status, self.wait_finished(&id).await)
    }

    async fn wait_finished(&self, id: &str) -> Value {
        let path = format!("/api/v1/deployments/{id}");
        common::eventually(
            &format!("{id} did not finish"),
            Duration::from_secs(10),
            async || {
                let (status, detail) = self.call(Method::GET, &path, None, None).await;
                assert_eq!(status, StatusCode::OK, "{detail}");
                match detail["finished_at_ms"].is_null() {
                    false => Ok(detail),
                    true => Err(format!("{detail:#}")),
                }
            },
        )
        .await
    }

    fn image_of(&self, env: &str) -> String {
        self.cp
            .store
            .current_release(env)
            .unwrap()
            .unwrap_or_else(|| panic!("{env} has no release"))
            .image
            .id
    }
}

fn promote(release: &str) -> Value {
    json!({"promote": {"release": release}})
}

#[tokio::test]
async fn a_promotion_runs_no_build_serves_the_same_image_and_waits_for_the_soak() {
    let h = Harness::new();
    let (_, staged) = h.run(None, "staging", json!({})).await;
    assert_eq!(staged["status"], "succeeded", "{staged:#}");
    // An environment cannot require soaking in itself.
    let err = guardrails::set(
        &h.cp,
        &auth::Principal::local("admin"),
        "production",
        "requires_success_in = [\"production\"]\n",
        "p.toml",
    )
    .unwrap_err();
    assert!(err.to_string().contains("itself"), "{err}");
    // Production takes only images that were live in staging for an hour.
    h.set(
        "production",
        "requires_success_in = [\"staging\"]\nsoak = \"1h\"\n",
    );

    let (status, body) = h.run(None, "production", promote("staging-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "guardrail_violation");
    let message = body["message"].as_str().unwrap();
    let image = h.image_of("staging");
    for words in [
        format!("image {image} may not go to production"),
        "it was live in staging as staging-1 for".to_string(),
        "more to go".to_string(),
        "production requires 1h live in staging without a rollback".to_string(),
    ] {
        assert!(message.contains(&words), "{words:?} not in {message}");
    }
    assert_eq!(body["violations"][0]["field"], "requires_success_in");
    // So is a plan, and a deploy that would build a new image.
    let (status, _) = h
        .call(
            Method::POST,
            "/api/v1/plans",
            None,
            Some(json!({"spec_path": h.spec_path(), "env": "production", "promote": {"release": "staging-1"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = h.run(None, "production", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("a deploy builds a new image, which was never live in staging"),
        "{body}"
    );
    assert!(h
        .cp
        .store
        .deployments(Some("production"), 10)
        .unwrap()
        .is_empty());

    // With the soak met (any time live), the promotion runs without a build.
    h.set(
        "production",
        "requires_success_in = [\"staging\"]\nsoak = \"0s\"\n",
    );
    let (status, done) = h.run(None, "production", promote("staging-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["kind"], "promote");
    assert_eq!(
        done["promoted_from"],
        json!({"release": "staging-1", "env": "staging"})
    );
    let kinds: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"build"), "{kinds:?}");
    assert_eq!(&kinds[..3], ["scan", "sign", "verify"]);
    assert_eq!(
        h.image_of("production"),
        image,
        "the very image of staging-1"
    );
    // The history and the audit log say where it came from.
    let (_, history) = h
        .call(
            Method::GET,
            "/api/v1/deployments?env=production",
            None,
            None,
        )
        .await;
    assert_eq!(
        history[0]["promoted_from"]["release"], "staging-1",
        "{history}"
    );
    let audited = cutover_server::audit::export(&h.cp.store, None).unwrap();
    let entry = audited
        .iter()
        .find(|e| e.action == "promote")
        .expect("audited");
    assert_eq!(entry.details["promoted_from"]["release"], "staging-1");
    // Its image's path: live in staging, then in production.
    let path = h.cp.store.image_path(&image).unwrap();
    let envs: Vec<&str> = path.iter().map(|p| p.env.as_str()).collect();
    assert_eq!(envs, ["staging", "production"]);
}

#[tokio::test]
async fn an_image_rolled_back_in_staging_or_never_there_is_refused() {
    let h = Harness::new();
    h.run(None, "staging", json!({})).await;
    h.run(None, "staging", json!({})).await;
    let (_, back) = h
        .run(None, "staging", json!({"rollback": {"to": "staging-1"}}))
        .await;
    assert_eq!(back["status"], "succeeded", "{back:#}");
    h.set(
        "production",
        "requires_success_in = [\"staging\"]\nsoak = \"0s\"\n",
    );
    let (status, body) = h.run(None, "production", promote("staging-2")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("it was rolled back in staging: staging as staging-2 for"),
        "{message}"
    );
    assert!(message.contains("rolled back by staging-3"), "{message}");
    // staging-1, live again, passes.
    let (_, done) = h.run(None, "production", promote("staging-1")).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    // A release of the target itself is not promoted (a rollback goes back to it).
    let (status, body) = h.run(None, "production", promote("production-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("is a release of production already"));
    // An unknown release is 404.
    let (status, _) = h.run(None, "production", promote("staging-99")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn promoting_needs_deployer_on_the_target_and_sight_of_the_source() {
    let h = Harness::new();
    h.run(None, "staging", json!({})).await;
    h.run(None, "production", json!({})).await;
    // Deployer of production who may not see staging: refused before anything is read.
    let blind = common::token(
        &h.cp.store,
        Role::Deployer,
        Some("production"),
        "blind",
        "blind",
    );
    let (status, body) = h
        .run(Some(&blind), "production", promote("staging-1"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Deployer of staging may not promote to production.
    let staging_only = common::token(
        &h.cp.store,
        Role::Deployer,
        Some("staging"),
        "stager",
        "stager",
    );
    let (status, body) = h
        .run(Some(&staging_only), "production", promote("staging-1"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        h.cp.store
            .deployments(Some("production"), 10)
            .unwrap()
            .len(),
        1
    );
    // Rollback and promotion at once is a bad request.
    let (status, _) = h
        .run(
            None,
            "production",
            json!({"promote": {"release": "staging-1"}, "rollback": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn gc_keeps_current_warm_recent_and_pinned_images_and_removes_the_rest() {
    let h = Harness::new();
    for _ in 0..4 {
        let (_, done) = h.run(None, "staging", json!({})).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    // staging keeps one release; staging-4 is current. Pin staging-1.
    let (status, pin) = h
        .call(
            Method::POST,
            "/api/v1/environments/staging/releases/staging-1/pin",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pin}");
    // A viewer may not pin, nor collect garbage.
    let viewer = common::token(&h.cp.store, Role::Viewer, None, "viewer", "viewer");
    let (status, _) = h
        .call(
            Method::POST,
            "/api/v1/environments/staging/releases/staging-2/pin",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let deployer = common::token(&h.cp.store, Role::Deployer, None, "ci", "ci");
    let (status, _) = h
        .call(Method::POST, "/api/v1/gc", Some(&deployer), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "gc is for admins");

    // The reaper removes retired instances (retire_after = 0s): until only staging-4's
    // instance is left, so no instance keeps the older images.
    common::eventually(
        "retired instances stay",
        Duration::from_secs(10),
        async || {
            h.cp.reap_once().await.unwrap();
            let instances = h.cp.providers.compute.list("hello", None).await.unwrap();
            let left: Vec<&str> = instances.iter().map(|i| i.release.as_str()).collect();
            match left.iter().all(|r| *r == "staging-4") {
                true => Ok(()),
                false => Err(format!("{left:?}")),
            }
        },
    )
    .await;
    let release_image = |id: &str| h.cp.store.release("staging", id).unwrap().unwrap().image.id;
    let (status, dry) = h
        .call(
            Method::POST,
            "/api/v1/gc",
            None,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    let removed = |report: &Value| -> Vec<String> {
        let mut ids: Vec<String> = report["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["image_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let mut expected = vec![release_image("staging-2"), release_image("staging-3")];
    expected.sort();
    assert_eq!(removed(&dry), expected, "{dry:#}");
    assert!(h
        .cp
        .providers
        .images
        .inspect_image(&release_image("staging-2"))
        .await
        .unwrap()
        .is_some());
    let (_, report) = h
        .call(Method::POST, "/api/v1/gc", None, Some(json!({})))
        .await;
    assert_eq!(removed(&report), expected, "{report:#}");
    assert_eq!(
        report["bytes_freed"],
        2 * cutover_executor::fake::FAKE_IMAGE_BYTES
    );
    for gone in ["staging-2", "staging-3"] {
        assert!(h
            .cp
            .providers
            .images
            .inspect_image(&release_image(gone))
            .await
            .unwrap()
            .is_none());
    }
    let reasons = |id: &str| -> String {
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["image_id"] == release_image(id))
            .map(|k| k["reasons"].to_string())
            .unwrap_or_default()
    };
    assert!(
        reasons("staging-1").contains("staging/staging-1 pinned by admin"),
        "{report:#}"
    );
    assert!(
        reasons("staging-4").contains("current in staging (staging-4)"),
        "{report:#}"
    );
    assert!(reasons("staging-4").contains("one of the last 1 releases of staging"));
    assert!(reasons("staging-4").contains("instance"), "{report:#}");
    let actions: Vec<String> = cutover_server::audit::export(&h.cp.store, None)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"pin".to_string()) && actions.contains(&"gc".to_string()));
    // Unpinned, staging-1 goes at the next run.
    let (status, _) = h
        .call(
            Method::DELETE,
            "/api/v1/environments/staging/releases/staging-1/pin",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, report) = h
        .call(Method::POST, "/api/v1/gc", None, Some(json!({})))
        .await;
    assert_eq!(removed(&report), vec![release_image("staging-1")]);
}
