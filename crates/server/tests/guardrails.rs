//! Guardrails and project roots, attacked through the router in-process (the HTTP door
//! with tokens, the socket's door with its peer and with a token sent there).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};

use cutover_executor::fake::FakeProviders;
use cutover_server::auth::{self, Role};
use cutover_server::{guardrails, projects, router, ControlPlane};
use cutover_signing::{Algorithm, KeyPair};
use cutover_store::Store;

/// The spec the project keeps: production gated, scanned strictly, signed by key A.
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
listen = "127.0.0.1:18290"
replicas = 1
retire_after = "0s"
drain_timeout = "100ms"

[environments.production]
listen = "127.0.0.1:18291"
replicas = 1
drain_timeout = "100ms"
approval = true
trusted_keys = ["keys/a.pem"]

[environments.production.gate]
fail_on = "high"
"#;

/// Everything an attacker would loosen at once.
const WEAK: &str = r#"
app = "hello"

[build]
cargo = { manifest = "app/Cargo.toml", bin = "hello" }

[container]
memory = "1g"
cpus = 0.5
pids_limit = 64
read_only = false

[environments.production]
listen = "127.0.0.1:18299"
replicas = 1
trusted_keys = ["keys/b.pem"]

[environments.production.gate]
fail_on = "none"
fail_on_secrets = false
"#;

const WEAK_FIELDS: [&str; 7] = [
    "environments.production.approval",
    "environments.production.gate.fail_on",
    "environments.production.gate.fail_on_secrets",
    "environments.production.trusted_keys[0]",
    "environments.production.listen",
    "container.read_only",
    "container.memory",
];

struct Harness {
    dir: tempfile::TempDir,
    cp: Arc<ControlPlane>,
    app: Router,
    key_a: String,
}

impl Harness {
    /// A project at `<tmp>/project` (registered), a directory `<tmp>/outside` (not), the
    /// keys A (trusted) and B (not) in the project. No guardrails yet.
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        common::write_project(&project, SPEC);
        std::fs::create_dir_all(project.join("keys")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let a = KeyPair::generate(Algorithm::Ed25519);
        a.save_public(&project.join("keys/a.pem")).unwrap();
        KeyPair::generate(Algorithm::Ed25519)
            .save_public(&project.join("keys/b.pem"))
            .unwrap();
        let store = Store::open(&dir.path().join("state/db")).unwrap();
        let cp = ControlPlane::new(
            store,
            FakeProviders::new().providers(),
            common::executor_config(),
        );
        let admin = auth::Principal::local("admin");
        projects::add(&cp, &admin, &project.display().to_string(), false).unwrap();
        let app = router(cp.clone());
        Harness {
            key_a: a.public().to_pem(),
            dir,
            cp,
            app,
        }
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    fn spec_path(&self) -> String {
        self.project().join("deploy.toml").display().to_string()
    }

    /// Production's guardrails: what the project's spec asks for, held by the control plane.
    fn strict_production(&self) -> String {
        format!(
            "approvals = 1\nlisten = \"127.0.0.1:18291\"\ntrusted_keys = ['''\n{}''']\n\n[gate]\nfail_on = \"high\"\nfail_on_secrets = true\n\n[container]\nnon_root = true\nread_only = true\nmax_memory = \"128MiB\"\nmax_cpus = 1.0\nmax_pids = 128\n",
            self.key_a
        )
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

    fn token(&self, role: Role, env: Option<&str>, name: &str) -> String {
        common::token(&self.cp.store, role, env, name, name)
    }

    /// A request through the HTTP door (`peer: None`) or the socket's (`Some(peer)`).
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        peer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = common::send(&self.app, method, path, token, peer, body, &[]).await;
        (status, common::json(&bytes))
    }

    async fn http(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.send(method, path, Some(token), None, Some(body)).await
    }

    fn weak_body(&self) -> Value {
        json!({"spec": WEAK, "base_dir": self.project().display().to_string(), "env": "production"})
    }

    /// Nothing was planned or started: no deployment record, the lease free.
    fn nothing_planned(&self) {
        assert!(self.cp.store.deployments(None, 10).unwrap().is_empty());
        assert!(self.cp.store.lease("production").unwrap().is_none());
        assert!(self.cp.store.lease("staging").unwrap().is_none());
    }

    fn audit_actions(&self) -> Vec<(String, Value)> {
        cutover_server::audit::export(&self.cp.store, None)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.details))
            .collect()
    }
}

fn fields(body: &Value) -> Vec<String> {
    body["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations in {body}"))
        .iter()
        .map(|v| v["field"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_weakened_spec_is_refused_through_the_http_api_with_each_loosened_field() {
    let h = Harness::new();
    h.set("production", &h.strict_production());
    let deployer = h.token(Role::Deployer, Some("production"), "ci");
    for path in ["/api/v1/deployments", "/api/v1/plans"] {
        let (status, body) = h.http(Method::POST, path, &deployer, h.weak_body()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(body["code"], "guardrail_violation");
        assert_eq!(fields(&body), WEAK_FIELDS, "{body:#}");
        // Each entry says what the spec asked and what is required; so does the message.
        let memory = &body["violations"][6];
        assert_eq!(memory["spec"], "1073741824 bytes");
        assert_eq!(memory["required"], "at most 134217728 bytes");
        let message = body["message"].as_str().unwrap();
        for field in WEAK_FIELDS {
            assert!(message.contains(field), "{message}");
        }
    }
    h.nothing_planned();
    // One loosened setting alone is enough to be refused.
    let one = SPEC.replace("fail_on = \"high\"", "fail_on = \"critical\"");
    let (status, body) = h
        .http(
            Method::POST,
            "/api/v1/deployments",
            &deployer,
            json!({"spec": one, "base_dir": h.project().display().to_string(), "env": "production"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["environments.production.gate.fail_on"]);
    // Root is refused before the guardrails are even looked at: the spec itself forbids it.
    let root = SPEC.replace("pids_limit = 64", "pids_limit = 64\nuser = \"0:0\"");
    let (status, body) = h
        .http(
            Method::POST,
            "/api/v1/plans",
            &deployer,
            json!({"spec": root, "base_dir": h.project().display().to_string(), "env": "production"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("container.user"),
        "{body}"
    );
    h.nothing_planned();
}

#[tokio::test]
async fn a_weakened_spec_is_refused_through_the_socket_with_a_token_and_as_its_admin() {
    let h = Harness::new();
    h.set("production", &h.strict_production());
    let deployer = h.token(Role::Deployer, Some("production"), "ci");
    // A token sent on the socket makes the caller its owner.
    let (status, body) = h
        .send(
            Method::POST,
            "/api/v1/deployments",
            Some(&deployer),
            Some("root"),
            Some(h.weak_body()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), WEAK_FIELDS);
    // Guardrails bind admins too: only changing them (audited) loosens them.
    let (status, body) = h
        .send(
            Method::POST,
            "/api/v1/deployments",
            None,
            Some("root"),
            Some(h.weak_body()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    h.nothing_planned();
}

#[tokio::test]
async fn a_stricter_spec_passes_and_versions_are_kept_and_audited() {
    let h = Harness::new();
    h.set("production", &h.strict_production());
    let deployer = h.token(Role::Deployer, Some("production"), "ci");
    let stricter = SPEC
        .replace("fail_on = \"high\"", "fail_on = \"low\"")
        .replace("memory = \"64MiB\"", "memory = \"32MiB\"");
    let (status, body) = h
        .http(
            Method::POST,
            "/api/v1/plans",
            &deployer,
            json!({"spec": stricter, "base_dir": h.project().display().to_string(), "env": "production"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The verify step trusts the guardrails' copy of key A, not the spec's file.
    let verify = body["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "verify")
        .unwrap()
        .clone();
    let keys = verify["action"]["trusted_keys"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{verify:#}"));
    assert_eq!(keys.len(), 1);
    let held = keys[0].as_str().unwrap();
    assert!(
        held.starts_with(&h.dir.path().join("state/guardrails").display().to_string()),
        "{held}"
    );
    assert_eq!(std::fs::read_to_string(held).unwrap(), h.key_a);

    // A deployer cannot change the guardrails; an admin's change is version 2.
    let (status, body) = h
        .http(
            Method::PUT,
            "/api/v1/guardrails/production",
            &deployer,
            json!({"text": "approvals = 0"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let admin = h.token(Role::Admin, None, "boss");
    let (status, body) = h
        .http(
            Method::PUT,
            "/api/v1/guardrails/production",
            &admin,
            json!({"text": "approvals = 2\n[gate]\nfail_on = \"medium\"\n"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["set_by"], "boss");
    let (_, shown) = h
        .send(
            Method::GET,
            "/api/v1/guardrails/production",
            Some(&deployer),
            None,
            None,
        )
        .await;
    assert_eq!(shown["current"]["version"], 2, "{shown}");
    assert_eq!(shown["current"]["guardrails"]["approvals"], 2);
    let (_, old) = h
        .send(
            Method::GET,
            "/api/v1/guardrails/production?version=1",
            Some(&deployer),
            None,
            None,
        )
        .await;
    assert_eq!(old["current"]["version"], 1, "{old}");
    assert_eq!(old["current"]["guardrails"]["gate"]["fail_on"], "high");
    assert_eq!(old["latest_version"], 2);
    // A bad file is refused naming its line, column and field; nothing is saved.
    let (status, body) = h
        .http(
            Method::PUT,
            "/api/v1/guardrails/production",
            &admin,
            json!({"text": "approvals = 1\n[gate]\nfail_on = \"never\"\n", "file": "prod.toml"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("prod.toml:3:11: gate.fail_on:"),
        "{body}"
    );
    assert_eq!(
        guardrails::current(&h.cp, "production")
            .unwrap()
            .unwrap()
            .version,
        2
    );
    // Both sets are in the audit log with who and the digest.
    let sets: Vec<Value> = h
        .audit_actions()
        .into_iter()
        .filter(|(a, _)| a == "guardrails.set")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert_eq!(sets[1]["person"], "boss");
    assert_eq!(sets[1]["version"], 2);
    assert!(sets[1]["digest"].as_str().unwrap().starts_with("sha256:"));
    // Status shows approvers the guardrails in force.
    let (_, envs) = h
        .send(
            Method::GET,
            "/api/v1/environments?names=production",
            Some(&deployer),
            None,
            None,
        )
        .await;
    assert_eq!(envs[0]["guardrails"]["version"], 2, "{envs}");
}

#[tokio::test]
async fn without_guardrails_a_deployer_is_refused_until_an_admin_accepts_the_proposal() {
    let h = Harness::new();
    let deployer = h.token(Role::Deployer, Some("staging"), "ci");
    let body = json!({"spec_path": h.spec_path(), "env": "staging"});
    let (status, answer) = h
        .http(Method::POST, "/api/v1/deployments", &deployer, body.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("cutover guardrails accept staging"),
        "{answer}"
    );
    h.nothing_planned();
    let (_, shown) = h
        .send(
            Method::GET,
            "/api/v1/guardrails/staging",
            Some(&deployer),
            None,
            None,
        )
        .await;
    assert!(shown["current"].is_null(), "{shown}");
    assert_eq!(shown["proposal"]["proposed_by"], "ci");
    assert_eq!(shown["proposal"]["guardrails"]["listen"], "127.0.0.1:18290");
    // Only an admin accepts.
    let (status, _) = h
        .http(
            Method::POST,
            "/api/v1/guardrails/staging/accept",
            &deployer,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let admin = h.token(Role::Admin, None, "boss");
    let (status, accepted) = h
        .http(
            Method::POST,
            "/api/v1/guardrails/staging/accept",
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["version"], 1);
    assert_eq!(accepted["how"], "accepted");
    let (status, started) = h
        .http(Method::POST, "/api/v1/deployments", &deployer, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    // The deploy's audit entry names the guardrails it met.
    assert!(h
        .audit_actions()
        .iter()
        .any(|(a, d)| a == "deploy" && d["guardrails_version"] == 1));
    assert!(h
        .audit_actions()
        .iter()
        .any(|(a, d)| a == "guardrails.propose" && d["person"] == "ci"));
}

#[tokio::test]
async fn the_socket_admins_first_deploy_registers_its_project_and_accepts_its_guardrails() {
    let h = Harness::new();
    // A project nobody registered: the socket's own admin may deploy it.
    let other = h.dir.path().join("other");
    std::fs::create_dir_all(other.join("app")).unwrap();
    std::fs::copy(
        h.project().join("app/Cargo.toml"),
        other.join("app/Cargo.toml"),
    )
    .unwrap();
    let spec = SPEC.replace("trusted_keys = [\"keys/a.pem\"]\n", "");
    std::fs::write(other.join("deploy.toml"), &spec).unwrap();
    let body =
        json!({"spec_path": other.join("deploy.toml").display().to_string(), "env": "staging"});
    let (status, started) = h
        .send(
            Method::POST,
            "/api/v1/deployments",
            None,
            Some("root"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let audit = h.audit_actions();
    assert!(
        audit
            .iter()
            .any(|(a, d)| a == "project.add" && d["automatic"] == true),
        "{audit:?}"
    );
    assert!(audit
        .iter()
        .any(|(a, d)| a == "guardrails.accept" && d["how"] == "accepted-at-first-deploy"));
    let v = guardrails::current(&h.cp, "staging").unwrap().unwrap();
    assert_eq!(v.set_by, "root");
    // A token never registers anything, even an admin's.
    let third = h.dir.path().join("third");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::write(third.join("deploy.toml"), &spec).unwrap();
    let admin = h.token(Role::Admin, None, "boss");
    let (status, body) = h
        .http(
            Method::POST,
            "/api/v1/plans",
            &admin,
            json!({"spec_path": third.join("deploy.toml").display().to_string(), "env": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// Status and code of asking to plan `spec_path` for `env` with `token`.
async fn probe(
    h: &Harness,
    token: &str,
    spec_path: &Path,
    env: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({"spec_path": spec_path.display().to_string()});
    if let Some(env) = env {
        body["env"] = json!(env);
    }
    h.http(Method::POST, "/api/v1/plans", token, body).await
}

#[tokio::test]
async fn path_probing_learns_nothing_and_escapes_from_a_root_are_refused() {
    let h = Harness::new();
    h.set("staging", "");
    let staging = h.token(Role::Deployer, Some("staging"), "ci");
    let existing = h.dir.path().join("outside/deploy.toml");
    std::fs::write(&existing, SPEC).unwrap();
    std::fs::create_dir_all(h.dir.path().join("outside/keys")).unwrap();
    std::fs::copy(
        h.project().join("keys/a.pem"),
        h.dir.path().join("outside/keys/a.pem"),
    )
    .unwrap();
    let missing = h.dir.path().join("outside/nothing-here.toml");
    // Another environment: refused on the role before anything is read; an existing and a
    // missing file get the same answer.
    let (s1, b1) = probe(&h, &staging, &existing, Some("production")).await;
    let (s2, b2) = probe(&h, &staging, &missing, Some("production")).await;
    assert_eq!(
        (s1, s2),
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        "{b1} {b2}"
    );
    assert_eq!(b1["message"], b2["message"]);
    // No environment named with a token for one: name it.
    let (s, b) = probe(&h, &staging, &missing, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["message"].as_str().unwrap().starts_with("env:"), "{b}");
    // Its own environment, but a path outside every project root: same answer, existing
    // or not, and the answer names no file's content or existence.
    let (s1, b1) = probe(&h, &staging, &existing, Some("staging")).await;
    let (s2, b2) = probe(&h, &staging, &missing, Some("staging")).await;
    assert_eq!(
        (s1, s2),
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        "{b1} {b2}"
    );
    let strip = |b: &Value, p: &Path| {
        b["message"]
            .as_str()
            .unwrap()
            .replace(&p.display().to_string(), "P")
    };
    assert_eq!(strip(&b1, &existing), strip(&b2, &missing));
    assert!(!strip(&b2, &missing).contains("No such file"), "{b2}");
    // `..` out of the registered root.
    let dotdot = h.project().join("../outside/deploy.toml");
    let (s, b) = probe(&h, &staging, &dotdot, Some("staging")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // A symbolic link in the root that leads out of it.
    std::os::unix::fs::symlink(h.dir.path().join("outside"), h.project().join("link")).unwrap();
    let (s, b) = probe(
        &h,
        &staging,
        &h.project().join("link/deploy.toml"),
        Some("staging"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("symbolic link"),
        "{b}"
    );
    // The spec's own relative paths cannot leave the root, lexically or through links.
    std::fs::create_dir_all(h.dir.path().join("outside/app")).unwrap();
    std::fs::copy(
        h.project().join("app/Cargo.toml"),
        h.dir.path().join("outside/app/Cargo.toml"),
    )
    .unwrap();
    let escaping = SPEC.replace("app/Cargo.toml", "../outside/app/Cargo.toml");
    let base = h.project().display().to_string();
    let (s, b) = h
        .http(
            Method::POST,
            "/api/v1/plans",
            &staging,
            json!({"spec": escaping, "base_dir": base, "env": "staging"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .starts_with("build.cargo.manifest:"),
        "{b}"
    );
    let linked = SPEC.replace("app/Cargo.toml", "link/app/Cargo.toml");
    let (s, b) = h
        .http(
            Method::POST,
            "/api/v1/plans",
            &staging,
            json!({"spec": linked, "base_dir": base, "env": "staging"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("symbolic link"),
        "{b}"
    );
    // An absolute path outside every root: refused before the parser looks for it, the
    // same whether it exists or not.
    let mut answers = Vec::new();
    for named in [existing.clone(), missing.clone()] {
        let spec = SPEC.replace("app/Cargo.toml", &named.display().to_string());
        let (s, b) = h
            .http(
                Method::POST,
                "/api/v1/plans",
                &staging,
                json!({"spec": spec, "base_dir": base, "env": "staging"}),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        answers.push(strip(&b, &named));
    }
    assert_eq!(answers[0], answers[1]);
    // A base directory outside the roots is refused like a spec path.
    let (s, b) = h
        .http(
            Method::POST,
            "/api/v1/plans",
            &staging,
            json!({"spec": SPEC, "base_dir": h.dir.path().join("outside").display().to_string(), "env": "staging"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    h.nothing_planned();
    // Projects are an admin's to manage, and audited.
    let (status, _) = h
        .http(
            Method::POST,
            "/api/v1/projects",
            &staging,
            json!({"path": h.dir.path().join("outside").display().to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let admin = h.token(Role::Admin, None, "boss");
    let (status, added) = h
        .http(
            Method::POST,
            "/api/v1/projects",
            &admin,
            json!({"path": h.dir.path().join("outside/../outside").display().to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    let canonical = std::fs::canonicalize(h.dir.path().join("outside")).unwrap();
    assert_eq!(added["path"], canonical.display().to_string());
    let (s, b) = probe(&h, &staging, &existing, Some("staging")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (status, _) = h
        .http(
            Method::POST,
            "/api/v1/projects/remove",
            &admin,
            json!({"path": canonical.display().to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (s, _) = probe(&h, &staging, &existing, Some("staging")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let actions: Vec<String> = h.audit_actions().into_iter().map(|(a, _)| a).collect();
    assert!(
        actions.contains(&"project.remove".to_string()),
        "{actions:?}"
    );
}

#[tokio::test]
async fn the_advisory_floor_refuses_opting_out_or_older_databases() {
    let h = Harness::new();
    let rails = h.strict_production().replace(
        "fail_on_secrets = true\n",
        "fail_on_secrets = true\nallow_missing_advisories = false\nmax_advisory_age = \"3d\"\nfail_on_unmaintained = true\n",
    );
    h.set("production", &rails);
    let deployer = h.token(Role::Deployer, Some("production"), "ci");
    let plan = |spec: String| json!({"spec": spec, "base_dir": h.project().display().to_string(), "env": "production"});
    // Opting out of the advisory database, with the default 7-day age and no
    // unmaintained check: each is a loosened field.
    let loose = SPEC.replace(
        "fail_on = \"high\"",
        "fail_on = \"high\"\nallow_missing_advisories = true",
    );
    let (status, body) = h
        .http(Method::POST, "/api/v1/deployments", &deployer, plan(loose))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        [
            "environments.production.gate.allow_missing_advisories",
            "environments.production.gate.max_advisory_age",
            "environments.production.gate.fail_on_unmaintained",
        ],
        "{body:#}"
    );
    assert_eq!(body["violations"][1]["required"], "at most 72h");
    h.nothing_planned();
    // Meeting the floor passes.
    let strict = SPEC.replace(
        "fail_on = \"high\"",
        "fail_on = \"high\"\nmax_advisory_age = \"2d\"\nfail_on_unmaintained = true",
    );
    let (status, body) = h
        .http(Method::POST, "/api/v1/plans", &deployer, plan(strict))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The floor reads back from its rendering, and a bad age names its line.
    let parsed = guardrails::parse(&rails, Path::new("g.toml")).unwrap();
    assert!(!parsed.gate.allow_missing_advisories);
    assert_eq!(parsed.gate.max_advisory_age_ms, Some(3 * 24 * 3600 * 1000));
    let again = guardrails::parse(&guardrails::render(&parsed), Path::new("g.toml")).unwrap();
    assert_eq!(again, parsed);
    let err = guardrails::parse(
        "approvals = 1\n[gate]\nmax_advisory_age = \"soon\"\n",
        Path::new("g.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("g.toml:3:") && err.contains("gate.max_advisory_age"),
        "{err}"
    );
    // Guardrails written before these keys existed allow what they allowed.
    let old = guardrails::parse("approvals = 1\n", Path::new("g.toml")).unwrap();
    assert!(old.gate.allow_missing_advisories);
    assert_eq!(old.gate.max_advisory_age_ms, None);
}
