//! Secrets end to end, with the real binary against Docker: a canary value is stored with
//! `cutover secret set`, deployed as a file, read by the app (`/secret-digest`), and then
//! searched for, raw and base64, everywhere it must not be: every file of the state
//! directory (logs, the sled database with the journal, the proxy's routes.json), every
//! CLI output (status, history, plan, secret list, audit export), `docker inspect` of every
//! container, the arguments of every cutover process, and the crash output of a forced
//! panic. Rotation under load, rollback to the old value, revocation, a wrong master key
//! and bad references are driven too.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use cutover_integration::{get, require_docker, wait_for, AppConfig, Load, Project, Run};

/// Built at run time so no source file holds the whole value.
fn canary(n: u32) -> String {
    format!("CANARY-{n}-{}-{}", "5e1c7a9d2b", std::process::id())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// `[container.secrets]` appended to the usual spec: the app reads /run/secrets/app-secret.
fn write_spec(p: &Project, secrets: &str) {
    p.write_spec(&AppConfig {
        replicas: 1,
        retire_after: "5m".into(),
        ..AppConfig::default()
    });
    let mut text = std::fs::read_to_string(p.spec_path()).unwrap();
    text.push_str(&format!("\n[container.secrets]\n{secrets}\n"));
    std::fs::write(p.spec_path(), text).unwrap();
}

/// `cutover <args>` with `input` on stdin.
fn with_stdin(p: &Project, args: &[&str], input: &str) -> Run {
    let mut child = p
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cutover");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Run::of(child.wait_with_output().unwrap())
}

fn digest_served(p: &Project) -> String {
    let url = format!("http://127.0.0.1:{}/secret-digest", p.port);
    let (status, _, body) = get(&url).expect("the app answers /secret-digest");
    assert_eq!(status, 200, "{body}");
    body.trim().to_string()
}

/// Every form of `value` a leak could take.
fn forms(value: &str) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        value.as_bytes().to_vec(),
        b64.encode(value).into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(value)
            .into_bytes(),
        b64.encode(format!("{value}\n")).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn assert_clean(what: &str, bytes: &[u8], value: &str) {
    for form in forms(value) {
        assert!(
            !contains(bytes, &form),
            "{what} holds the secret value (as {:?})",
            String::from_utf8_lossy(&form)
        );
    }
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_under(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// Search everything outside the container for `value`.
fn assert_nowhere(p: &Project, value: &str) {
    let mut files = Vec::new();
    files_under(&p.state_dir(), &mut files);
    files_under(p.config.path(), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("serve.log")),
        "the control plane's log was searched"
    );
    assert!(
        files.iter().any(|f| f.ends_with("routes.json")),
        "the proxy's routes were searched"
    );
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("/db/")),
        "the sled database was searched"
    );
    for file in &files {
        // Cargo build outputs are the app's code, not ours to search.
        if file.to_string_lossy().contains("/builds/") {
            continue;
        }
        let bytes = std::fs::read(file).unwrap_or_default();
        assert_clean(&file.display().to_string(), &bytes, value);
    }
    for args in [
        vec!["status", "-o", "json"],
        vec!["history", "-o", "json"],
        vec!["plan", "-o", "json"],
        vec!["plan"],
        vec!["secret", "list", "-o", "json"],
        vec!["secret", "list"],
        vec!["audit", "export"],
    ] {
        let run = p.cutover(&args);
        assert_clean(
            &format!("cutover {args:?} stdout"),
            run.stdout.as_bytes(),
            value,
        );
        assert_clean(
            &format!("cutover {args:?} stderr"),
            run.stderr.as_bytes(),
            value,
        );
    }
    for (name, _, _) in p.containers() {
        let out = Command::new("docker")
            .args(["inspect", &name])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_clean(&format!("docker inspect {name}"), &out.stdout, value);
    }
    for pid in [p.serve_pid(), p.proxy_pid()].into_iter().flatten() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.is_empty(), "process {pid} runs");
        assert_clean(&format!("/proc/{pid}/cmdline"), &cmdline, value);
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert_clean(&format!("/proc/{pid}/environ"), &environ, value);
    }
}

#[test]
fn a_canary_secret_reaches_only_its_container_and_rotates_as_a_release() {
    if !require_docker() {
        return;
    }
    let p = Project::new("secrets");
    let first = canary(1);

    // Bad references: named by file, line and field; nothing provisioned.
    write_spec(&p, "app-secret = \"secret://db-password\"");
    let run = p.cutover(&["deploy"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("deploy.toml:") && run.stderr.contains("container.secrets.app-secret"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("cutover secret set production/db-password"),
        "{}",
        run.stderr
    );
    write_spec(&p, "app-secret = \"env://IT_MISSING_VAR\"");
    let run = p.cutover(&["deploy"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("IT_MISSING_VAR is not set"),
        "{}",
        run.stderr
    );
    write_spec(&p, "app-secret = \"vault://x\"");
    let run = p.cutover(&["deploy"]);
    run.assert_code(2);
    assert!(run.stderr.contains("unknown scheme"), "{}", run.stderr);
    assert!(p.containers().is_empty(), "nothing was provisioned");

    // Set from stdin (never argv), deploy, and the app reads it.
    let set = with_stdin(&p, &["secret", "set", "production/db-password"], &first);
    set.assert_code(0);
    assert!(set.stdout.contains("version 1"), "{}", set.stdout);
    write_spec(&p, "app-secret = \"secret://db-password\"");
    p.cutover(&["deploy"]).assert_code(0);
    let release1 = p.current_release();
    assert_eq!(
        digest_served(&p),
        format!("sha256:{}", sha256_hex(first.as_bytes()))
    );
    let listed = p.cutover(&["secret", "list", "production", "-o", "json"]);
    listed.assert_code(0);
    let lines = listed.json();
    assert_eq!(lines[0]["name"], "db-password");
    assert_eq!(lines[0]["versions"][0]["used_by"][0], release1.as_str());

    // The file in the container: read-only bind mount, mode 0400, of the app's user.
    let container = p.containers().into_iter().find(|c| c.2).unwrap().0;
    let inspect = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .HostConfig.Binds}}",
            &container,
        ])
        .output()
        .unwrap();
    let binds = String::from_utf8_lossy(&inspect.stdout);
    assert!(binds.contains(":/run/secrets/app-secret:ro"), "{binds}");
    let host_file = binds
        .trim()
        .trim_start_matches("[\"")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert!(host_file.starts_with("/dev/shm/"), "{host_file}");
    let meta = std::fs::metadata(&host_file).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    let dir = Path::new(&host_file).parent().unwrap();
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    assert_nowhere(&p, &first);

    // Rotation under load: zero failed requests, the new release sees the new value.
    let second = canary(2);
    with_stdin(&p, &["secret", "rotate", "production/db-password"], &second).assert_code(0);
    let load = Load::start(&p.url(), 4, Duration::from_secs(120));
    wait_for("load to get going", Duration::from_secs(10), || {
        load.ok_so_far() > 20
    });
    let rotate_started = std::time::Instant::now();
    let rotated = p.cutover(&["rotate"]);
    rotated.assert_code(0);
    let rotate_took = rotate_started.elapsed();
    let release2 = p.current_release();
    assert_ne!(release1, release2);
    wait_for("the new release to serve", Duration::from_secs(10), || {
        load.has_seen(&release2)
    });
    let report = load.stop();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    eprintln!(
        "rotation under load: `cutover rotate` took {rotate_took:?}; {} requests, {} failed",
        report.ok, report.failed
    );
    assert_eq!(
        digest_served(&p),
        format!("sha256:{}", sha256_hex(second.as_bytes()))
    );

    // Rollback restores the old release with its pinned (old) value.
    p.cutover(&["rollback"]).assert_code(0);
    assert_eq!(p.current_release(), release1);
    assert_eq!(
        digest_served(&p),
        format!("sha256:{}", sha256_hex(first.as_bytes()))
    );
    p.cutover(&["rollback", "--to", &release2]).assert_code(0);

    // A revoked version is refused, naming it, unless the latest versions are asked for.
    p.cutover(&[
        "secret",
        "revoke",
        "production/db-password",
        "--version",
        "1",
    ])
    .assert_code(0);
    let refused = p.cutover(&["rollback", "--to", &release1]);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("db-password version 1")
            && refused.stderr.contains("--use-latest-secrets"),
        "{}",
        refused.stderr
    );
    assert_eq!(p.current_release(), release2);
    p.cutover(&["rollback", "--to", &release1, "--use-latest-secrets"])
        .assert_code(0);
    let release3 = p.current_release();
    assert!(
        release3 != release1 && release3 != release2,
        "a new release: {release3}"
    );
    assert_eq!(
        digest_served(&p),
        format!("sha256:{}", sha256_hex(second.as_bytes()))
    );
    assert_nowhere(&p, &first);
    assert_nowhere(&p, &second);

    // The audit chain has every set, rotate, revoke and injection.
    let audit = p.cutover(&["audit", "export"]);
    audit.assert_code(0);
    for action in [
        "secret.set",
        "secret.rotate",
        "secret.revoke",
        "secret.inject",
    ] {
        assert!(
            audit.stdout.contains(action),
            "no {action} in the audit log"
        );
    }

    // A wrong master key: the control plane refuses to start and changes nothing.
    p.cutover(&["serve", "--stop", "--keep-proxy"])
        .assert_code(0);
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let run = p.cutover_with_env(&["status"], &[("CUTOVER_SECRETS_KEY", &wrong)]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("master key does not match the store"),
        "{}",
        run.stderr
    );
    // Started again with the right key, everything is as it was.
    assert_eq!(p.current_release(), release3);
    let after = p.cutover(&["secret", "list", "-o", "json"]);
    after.assert_code(0);
    assert_eq!(after.json()[0]["latest"], 2);

    // Rewrap to a new master key (made by the CLI, installed as the default key file):
    // values untouched, the restarted control plane opens them with the new key.
    let rewrapped = p.cutover(&["secret", "rewrap"]);
    rewrapped.assert_code(0);
    assert!(
        rewrapped
            .stdout
            .contains("rewrapped 2 versions of 1 secrets"),
        "{}",
        rewrapped.stdout
    );
    p.cutover(&["serve", "--stop", "--keep-proxy"])
        .assert_code(0);
    p.cutover(&["rotate"]).assert_code(0);
    assert_eq!(
        digest_served(&p),
        format!("sha256:{}", sha256_hex(second.as_bytes()))
    );

    // Crash output after a forced panic while a value is held holds no value.
    p.cutover(&["serve", "--stop", "--keep-proxy"])
        .assert_code(0);
    let started = p.cutover_with_env(
        &["rotate", "--detach"],
        &[("CUTOVER_TEST_PANIC_ON_INJECT", "1")],
    );
    started.assert_code(0);
    let log = p.state_dir().join("serve.log");
    wait_for("the forced panic", Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("CUTOVER_TEST_PANIC_ON_INJECT=1: panicking")
    });
    assert_nowhere(&p, &second);
}
