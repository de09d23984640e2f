use super::*;

use std::process::Stdio;

/// bubblewrap, or `None` when it is missing and the test is skipped (a panic with
/// `CI=true`).
fn bwrap() -> Option<Isolation> {
    match Isolation::bubblewrap() {
        Ok(isolation) => Some(isolation),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("this test needs bubblewrap and CI=true: {e}")
        }
        Err(e) => {
            eprintln!("skipped: this test needs bubblewrap: {e} (with CI=true this fails)");
            None
        }
    }
}

/// Run `script` with `sh -c` in `sandbox`: exit status success, stdout, stderr.
async fn sh(sandbox: &Sandbox, script: &str) -> (bool, String, String) {
    let out = sandbox
        .command("sh", ["-c", script])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the sandbox");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn base(isolation: Isolation) -> Sandbox {
    Sandbox::new(isolation).env("PATH", "/usr/bin:/bin")
}

#[tokio::test]
async fn runs_as_nobody_in_its_own_pid_namespace_with_only_the_environment_given() {
    let Some(isolation) = bwrap() else { return };
    // A variable of this test process only; the other tests never read it.
    std::env::set_var("CUTOVER_SANDBOX_TEST_CANARY", "canary-d41d8cd9");
    let sandbox = base(isolation).env("ANSWER", "42");
    let (ok, out, err) = sh(&sandbox, "id -u; id -g; env; echo pids: $(ls /proc | grep -c '^[0-9]'); echo init: $(cat /proc/1/comm)").await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "{out}");
    assert_eq!(lines[1], "65534", "{out}");
    assert!(out.contains("ANSWER=42"), "{out}");
    assert!(
        !out.contains("canary-d41d8cd9"),
        "the host environment leaked: {out}"
    );
    assert!(!out.contains("HOME="), "{out}");
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a pid count");
    // bubblewrap as init, the shell and its pipeline: none of the host's processes.
    assert!(
        pids <= 6,
        "the sandbox sees the host's processes ({pids}): {out}"
    );
    assert!(out.contains("init: bwrap"), "{out}");
}

#[tokio::test]
async fn shows_only_what_is_listed_and_hides_what_is_hidden_inside_it() {
    let Some(isolation) = bwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let state = source.join(".state");
    let builds = state.join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    std::fs::write(source.join("main.rs"), "fn main() {}").unwrap();
    std::fs::write(state.join("secret.key"), "private").unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("note"), "not listed").unwrap();

    let sandbox = base(isolation)
        .read_only(&source)
        .hide(&state)
        .writable(&builds)
        .current_dir(&source);
    let script = format!(
        "cat main.rs; echo; ls -A {state}; cat {state}/secret.key; cat {elsewhere}/note; \
         touch main.rs && echo wrote-source; touch {builds}/out && echo wrote-builds; \
         ls /run /var/run /root 2>&1; true",
        state = state.display(),
        elsewhere = elsewhere.display(),
        builds = builds.display(),
    );
    let (_, out, err) = sh(&sandbox, &script).await;
    assert!(out.starts_with("fn main() {}"), "{out}{err}");
    assert!(!out.contains("private"), "the hidden state was read: {out}");
    assert!(err.contains("secret.key: No such file"), "{err}");
    assert!(
        !out.contains("not listed"),
        "an unlisted directory was read: {out}"
    );
    assert!(
        !out.contains("wrote-source"),
        "the read-only source was written: {out}"
    );
    assert!(
        out.contains("wrote-builds"),
        "the writable dir was not writable: {out}{err}"
    );
    assert!(builds.join("out").is_file());
    assert!(!out.contains("docker.sock"), "{out}");
    // Inside the hidden state directory, only the writable builds dir shows.
    assert!(out.lines().any(|l| l == "builds"), "{out}");
}

#[tokio::test]
async fn without_network_a_host_listener_is_unreachable() {
    let Some(isolation) = bwrap() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    let (_, out, _) = sh(&base(isolation.clone()), &format!("bash -c '{probe}' 2>&1")).await;
    assert!(!out.contains("connected"), "{out}");
    // The same probe with the host's network connects: the refusal above is the sandbox's.
    let (_, out, err) = sh(
        &base(isolation).network(true),
        &format!("bash -c '{probe}'"),
    )
    .await;
    assert!(out.contains("connected"), "{out}{err}");
}

#[tokio::test]
async fn unsandboxed_still_clears_the_environment() {
    // As above, a variable no other test reads.
    std::env::set_var("CUTOVER_SANDBOX_TEST_UNSANDBOXED", "leaked");
    let dir = tempfile::tempdir().unwrap();
    let sandbox = base(Isolation::Unsandboxed).current_dir(dir.path());
    let (ok, out, err) = sh(&sandbox, "env; pwd").await;
    assert!(ok, "{err}");
    assert!(!out.contains("leaked"), "{out}");
    assert!(out.contains(&dir.path().display().to_string()), "{out}");
}

#[test]
fn hidden_paths_are_mounted_before_the_paths_listed_below_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let builds = state.join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(Isolation::Bubblewrap("/usr/bin/bwrap".into()))
        .writable(&builds)
        .hide(&state)
        .read_only(dir.path())
        .hide(dir.path().join("gone"))
        .hide(outside.path());
    let args: Vec<String> = sandbox
        .bwrap_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = |flag: &str, path: &Path| {
        let path = std::fs::canonicalize(path).unwrap().display().to_string();
        args.windows(2)
            .position(|w| w[0] == flag && w[1] == path)
            .unwrap_or_else(|| panic!("no {flag} {path} in {args:?}"))
    };
    assert!(at("--ro-bind", dir.path()) < at("--tmpfs", &state));
    assert!(at("--tmpfs", &state) < at("--bind", &builds));
    assert!(args.contains(&"--unshare-net".to_string()));
    assert!(!args.iter().any(|a| a.ends_with("gone")), "{args:?}");
    // Outside every visible path there is nothing to cover (nor to reveal).
    let outside = std::fs::canonicalize(outside.path()).unwrap();
    assert!(
        !args.iter().any(|a| Path::new(a).starts_with(&outside)),
        "{args:?}"
    );
}
