//! The CLI against a remote control plane: `cutover serve --http 127.0.0.1:PORT` with a
//! self-signed TLS certificate, and the CLI with `CUTOVER_URL=https://…`, `CUTOVER_CA_CERT`
//! and a deployer token deploys (the spec's text with `--base-dir`), waits for the outcome,
//! deploys again and rolls back, with `--output json` for scripts; a viewer token is
//! refused and starts nothing; a token cannot be given in argv; an untrusted certificate
//! fails saying what to do; a deploy waits at its approval gate over the event stream,
//! through a restart of the control plane, while another person approves remotely. The token never shows in any output. Needs Docker.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cutover_integration::https::{self_signed, serve_https, serve_on, write_private, Serve};
use cutover_integration::{
    repo_root, require_docker, reserve_port, wait_for, AppConfig, Project, Run,
};

/// A token made over the control socket (the local admin).
fn token(p: &Project, role: &str, name: &str) -> String {
    let run = p.cutover(&[
        "token",
        "create",
        "--role",
        role,
        "--env",
        "production",
        "--name",
        name,
        "--owner",
        name,
        "-o",
        "json",
    ]);
    run.assert_code(0);
    run.json()["token"].as_str().unwrap().to_string()
}

/// Start `cutover serve --http 127.0.0.1:PORT` over TLS (a self-signed certificate) for
/// project `p`, and register the project's directories as the local admin: (the process,
/// the directory holding certificate, key and log, the certificate, the port).
fn start_serve(p: &Project) -> (Serve, tempfile::TempDir, PathBuf, u16) {
    let (serve, secrets, cert, port) = serve_https(p, &[]);

    // The local admin registers the project (the spec's directory and the app's source,
    // which the spec names by absolute path).
    let hello = repo_root().join("examples/hello");
    for dir in [p.dir.path(), hello.as_path()] {
        p.cutover(&["projects", "add", &dir.display().to_string()])
            .assert_code(0);
    }

    (serve, secrets, cert, port)
}

struct Remote<'a> {
    p: &'a Project,
    url: String,
    ca: PathBuf,
    /// Every output seen, searched for the token at the end.
    seen: std::cell::RefCell<String>,
}

impl Remote<'_> {
    /// `cutover <args>` against the remote control plane, the token from `token_env` (as
    /// `CUTOVER_TOKEN`) or `--token-file`.
    fn run(&self, args: &[&str], token: Token<'_>) -> Run {
        let mut cmd = self.p.command(args);
        cmd.env("CUTOVER_URL", &self.url)
            .env("CUTOVER_CA_CERT", &self.ca);
        match token {
            Token::File(file) => {
                cmd.arg("--token-file").arg(file);
            }
            Token::Env(value) => {
                cmd.env("CUTOVER_TOKEN", value);
            }
        }
        let run = Run::of(cmd.output().expect("run cutover"));
        self.seen
            .borrow_mut()
            .push_str(&format!("{}\n{}\n", run.stdout, run.stderr));
        run
    }
}

#[derive(Clone, Copy)]
enum Token<'a> {
    File(&'a Path),
    Env(&'a str),
}

#[test]
fn deploy_and_roll_back_over_https_with_a_deployer_token_and_refuse_a_viewer() {
    if !require_docker() {
        return;
    }
    let p = Project::new("remote");
    p.write_spec(&AppConfig {
        replicas: 1,
        ..AppConfig::default()
    });
    let (serve, secrets, cert, port) = start_serve(&p);
    let deployer = token(&p, "deployer", "ci");
    let viewer = token(&p, "viewer", "dashboard");
    let deployer_file = secrets.path().join("deployer.token");
    write_private(&deployer_file, &deployer);
    let log_path = secrets.path().join("serve.log");
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let remote = Remote {
        p: &p,
        url: format!("https://127.0.0.1:{port}"),
        ca: cert.clone(),
        seen: Default::default(),
    };
    let base_dir = p.dir.path().display().to_string();
    let deploy_args = [
        "deploy",
        "--env",
        "production",
        "--base-dir",
        base_dir.as_str(),
        "--output",
        "json",
    ];

    // A viewer token is refused, and nothing is started.
    let refused = remote.run(&deploy_args, Token::Env(&viewer));
    refused.assert_code(1);
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "forbidden", "{}", refused.stdout);
    assert_eq!(error["exit_code"], 1);
    assert!(
        refused.stderr.contains("error: ") && refused.stderr.contains("deployer"),
        "{}",
        refused.stderr
    );
    let history = remote.run(&["history", "--output", "json"], Token::Env(&viewer));
    history.assert_code(0);
    assert_eq!(history.json(), serde_json::json!([]), "nothing was started");

    // A spec sent without --base-dir names files of the control plane: refused, exit 2.
    let no_base = remote.run(
        &["deploy", "--env", "production"],
        Token::File(&deployer_file),
    );
    no_base.assert_code(2);
    assert!(
        no_base.stderr.contains("build.cargo.manifest") && no_base.stderr.contains("--base-dir"),
        "{}",
        no_base.stderr
    );

    // The first spec sent for the environment proposes its guardrails; the admin accepts.
    let proposed = remote.run(&deploy_args, Token::File(&deployer_file));
    proposed.assert_code(1);
    assert!(
        proposed.stderr.contains("no guardrails yet"),
        "{}",
        proposed.stderr
    );
    p.cutover(&["guardrails", "accept", "production"])
        .assert_code(0);

    // The deployer deploys and the CLI waits for the outcome.
    let started = std::time::Instant::now();
    let first = remote.run(&deploy_args, Token::File(&deployer_file));
    first.assert_code(0);
    let first = first.json();
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["env"], "production");
    assert_eq!(first["exit_code"], 0);
    assert!(first["plan_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(first["image_id"].as_str().unwrap().starts_with("sha256:"));
    let first_release = first["release_id"].as_str().unwrap().to_string();
    eprintln!("remote deploy (build included): {:?}", started.elapsed());
    assert_eq!(p.get().unwrap().1, first_release);

    // A second release, in text: progress on stderr, the outcome on stdout.
    p.write_spec(&AppConfig {
        replicas: 1,
        version: "v2".into(),
        ..AppConfig::default()
    });
    let second = remote.run(
        &["deploy", "--env", "production", "--base-dir", &base_dir],
        Token::File(&deployer_file),
    );
    second.assert_code(0);
    assert!(second.stderr.contains("shift"), "{}", second.stderr);
    let (_, on_second, body) = p.get().unwrap();
    assert_ne!(on_second, first_release);
    assert!(body.contains("v2"), "{body}");

    // Roll back over HTTPS: traffic is back on the first release.
    let back = remote.run(
        &[
            "rollback",
            "--env",
            "production",
            "--base-dir",
            &base_dir,
            "-o",
            "json",
        ],
        Token::File(&deployer_file),
    );
    back.assert_code(0);
    let back = back.json();
    assert_eq!(back["kind"], "rollback", "{back}");
    assert_eq!(back["status"], "succeeded");
    assert_eq!(p.get().unwrap().1, first_release);
    let status = remote.run(
        &["status", "--env", "production", "-o", "json"],
        Token::Env(&viewer),
    );
    status.assert_code(0);
    assert_eq!(status.json()[0]["current"]["id"], first_release.as_str());

    // There is no flag for a token in argv.
    let argv = remote.run(
        &["status", "--token", &deployer],
        Token::File(&deployer_file),
    );
    argv.assert_code(2);
    assert!(
        argv.stderr.contains("unexpected argument '--token'"),
        "{}",
        argv.stderr
    );

    // A certificate signed by another CA: a clear refusal, no request made.
    let (other_ca, _) = self_signed();
    let other = secrets.path().join("other-ca.pem");
    std::fs::write(&other, other_ca).unwrap();
    let mut untrusted = p.command(&["status"]);
    untrusted
        .env("CUTOVER_URL", &remote.url)
        .env("CUTOVER_CA_CERT", &other)
        .env("CUTOVER_TOKEN", &deployer);
    let out = untrusted.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&remote.url)
            && stderr.contains("not trusted")
            && stderr.contains("--ca-cert"),
        "{stderr}"
    );
    assert!(!stderr.contains(&deployer), "{stderr}");

    // The token never shows: not in any output, not in the control plane's log.
    let seen = remote.seen.borrow();
    assert!(!seen.contains(&deployer), "the deployer token was printed");
    assert!(!seen.contains(&viewer), "the viewer token was printed");
    let log = log_text();
    assert!(!log.contains(&deployer) && !log.contains(&viewer));
    drop(serve);
}

#[test]
fn a_deploy_waits_at_its_gate_through_a_restart_and_an_approver_approves_over_https() {
    if !require_docker() {
        return;
    }
    let p = Project::new("remote-approve");
    p.write_spec(&AppConfig {
        replicas: 1,
        ..AppConfig::default()
    });
    let spec = std::fs::read_to_string(p.spec_path()).unwrap();
    assert!(spec.contains("drain_timeout = \"5s\"\n"));
    std::fs::write(
        p.spec_path(),
        spec.replace(
            "drain_timeout = \"5s\"\n",
            "drain_timeout = \"5s\"\napproval = true\n",
        ),
    )
    .unwrap();
    let (serve, secrets, cert, port) = start_serve(&p);
    // Two people: the deployer (ci) and an approver (alice).
    let deployer = token(&p, "deployer", "ci");
    let approver = token(&p, "approver", "alice");
    let deployer_file = secrets.path().join("deployer.token");
    write_private(&deployer_file, &deployer);
    let remote = Remote {
        p: &p,
        url: format!("https://127.0.0.1:{port}"),
        ca: cert,
        seen: Default::default(),
    };
    let base_dir = p.dir.path().display().to_string();
    let args = [
        "deploy",
        "--env",
        "production",
        "--base-dir",
        base_dir.as_str(),
        "-o",
        "json",
    ];
    // The first spec proposes the guardrails (approval included); the admin accepts them.
    remote
        .run(&args, Token::File(&deployer_file))
        .assert_code(1);
    p.cutover(&["guardrails", "accept", "production"])
        .assert_code(0);

    // The deploy waits at the gate over the HTTPS event stream.
    // Killed if the test fails before it ends.
    let follower_log = secrets.path().join("follower.log");
    let mut waiting = Serve(
        p.command(&args)
            .env("CUTOVER_URL", &remote.url)
            .env("CUTOVER_CA_CERT", &remote.ca)
            .arg("--token-file")
            .arg(&deployer_file)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&follower_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut id = String::new();
    wait_for(
        "the deployment to wait for approval",
        Duration::from_secs(120),
        || {
            let status = remote.run(
                &["status", "--env", "production", "-o", "json"],
                Token::Env(&approver),
            );
            status.assert_code(0);
            let latest = &status.json()[0]["latest"];
            id = latest["id"].as_str().unwrap_or_default().to_string();
            latest["approval"]["waiting"] == true
        },
    );
    // The control plane dies while the CLI follows; a new one resumes the deployment at its
    // gate, and the CLI reconnects to its event stream.
    drop(serve);
    let serve = serve_on(&p, secrets.path(), port, &[]);

    // The deployer cannot approve their own deployment; the approver can, remotely.
    let own = remote.run(&["approve", &id], Token::File(&deployer_file));
    assert_ne!(own.code, 0, "{}", own.stderr);
    assert!(own.stderr.contains("approver"), "{}", own.stderr);
    let approved = remote.run(&["approve", &id, "--comment", "ok"], Token::Env(&approver));
    approved.assert_code(0);
    assert!(
        approved.stderr.contains("view sha256:"),
        "{}",
        approved.stderr
    );

    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut waiting.0.stdout.take().unwrap(), &mut stdout).unwrap();
    let code = waiting.0.wait().unwrap().code();
    let progress = std::fs::read_to_string(&follower_log).unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{progress}");
    assert!(progress.contains("reconnecting"), "{progress}");
    let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["deployment_id"], id.as_str());
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(p.get().unwrap().1, outcome["release_id"].as_str().unwrap());
    let seen = remote.seen.borrow();
    assert!(!seen.contains(&deployer) && !seen.contains(&approver));
    drop(serve);
}

#[test]
fn a_url_never_starts_or_looks_for_a_local_control_plane() {
    // No Docker needed: nothing may be started.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy.toml"), "app = \"x\"\n").unwrap();
    let closed = format!("https://127.0.0.1:{}", reserve_port());
    for args in [
        &["status", "-o", "json"][..],
        &["secret", "list", "-o", "json"],
    ] {
        let out = std::process::Command::new(cutover_integration::cutover_bin())
            .args(args)
            .current_dir(dir.path())
            .env("CUTOVER_URL", &closed)
            .env("CUTOVER_TOKEN", "canary-token-5e1f")
            .env_remove("CUTOVER_STATE_DIR")
            .env_remove("CUTOVER_TOKEN_FILE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let error: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(error["error"]["code"], "unreachable", "{args:?}: {stdout}");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&closed));
        assert!(
            !dir.path().join(".cutover").exists(),
            "{args:?}: a state directory was made: something local was started"
        );
        assert!(!stdout.contains("canary-token-5e1f"));
    }
}
