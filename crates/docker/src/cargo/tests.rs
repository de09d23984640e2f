use super::*;

use std::collections::BTreeMap;
use std::process::Stdio;

/// Whether bubblewrap is here; when it is not, the test is skipped (a panic with `CI=true`).
fn have_bubblewrap() -> bool {
    match Isolation::bubblewrap() {
        Ok(_) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("this test needs bubblewrap and CI=true: {e}")
        }
        Err(e) => {
            eprintln!("skipped: this test needs bubblewrap: {e} (with CI=true this fails)");
            false
        }
    }
}

/// A cargo package in `dir` with `files` (path → content), no dependencies, no lock file.
fn package(dir: &Path, name: &str, files: &[(&str, String)]) -> PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = dir.join("Cargo.toml");
    std::fs::write(
        &manifest,
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n"),
    )
    .unwrap();
    for (path, content) in files {
        std::fs::write(dir.join(path), content).unwrap();
    }
    manifest
}

#[tokio::test]
async fn a_sandboxed_build_of_a_crate_without_dependencies_makes_a_static_binary() {
    if !have_bubblewrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tiny");
    let manifest = package(
        &source,
        "tiny",
        &[(
            "src/main.rs",
            "fn main() { println!(\"tiny\"); }\n".to_string(),
        )],
    );
    // The state directory inside the source tree, as `.cutover` next to deploy.toml is.
    let state = source.join(".cutover");
    std::fs::create_dir_all(&state).unwrap();
    let config = CargoBuilds {
        dir: state.join("builds"),
        hidden: vec![state.clone()],
        unsandboxed: false,
    };
    let built = build_static(&config, &manifest, "tiny", "release")
        .await
        .expect("the sandboxed build");
    assert_eq!(built.warning, None);
    assert_eq!(elf::check_static(&built.binary), Ok(()));
    // Fetching wrote the missing lock file; the output stayed in the build directory.
    assert!(source.join("Cargo.lock").is_file());
    assert!(!source.join("target").exists());
    let out = std::process::Command::new(built_path(&config, &manifest, "tiny"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tiny\n");
}

#[tokio::test]
async fn a_crate_with_a_registry_dependency_is_fetched_then_built_offline() {
    if !have_bubblewrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("withdeps");
    let manifest = package(
        &source,
        "withdeps",
        &[(
            "src/main.rs",
            "fn main() { println!(\"{}\", hex::encode([0xca, 0xfe])); }\n".to_string(),
        )],
    );
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}hex = \"0.4\"\n")).unwrap();
    let config = CargoBuilds {
        dir: dir.path().join("builds"),
        hidden: Vec::new(),
        unsandboxed: false,
    };
    let built = build_static(&config, &manifest, "withdeps", "release")
        .await
        .expect("fetched with the network, built without");
    assert_eq!(elf::check_static(&built.binary), Ok(()));
    let out = std::process::Command::new(built_path(&config, &manifest, "withdeps"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cafe\n");
}

/// Where `build_static` left the binary of `bin`.
fn built_path(config: &CargoBuilds, manifest: &Path, bin: &str) -> PathBuf {
    let manifest = std::fs::canonicalize(manifest).unwrap();
    build_dir(&config.dir, &manifest)
        .unwrap()
        .join("target")
        .join(CARGO_TARGET)
        .join("release")
        .join(bin)
}

/// The build script of the attacking package: it tries to reach everything a build must
/// not reach and writes one line per attempt (`<what>: GOT …` or `<what>: BLOCKED …`) into
/// `OUT_DIR/findings.txt`, which `main.rs` bakes into the binary and prints.
const ATTACK_BUILD_RS: &str = r#"
use std::io::Read;
use std::os::linux::net::SocketAddrExt;

fn main() {
    let mut lines: Vec<String> = Vec::new();
    let mut note = |what: &str, result: Result<String, String>| match result {
        Ok(got) => lines.push(format!("{what}: GOT {got}")),
        Err(why) => lines.push(format!("{what}: BLOCKED {why}")),
    };
    for (what, path) in [
        ("key file", "@KEY@"),
        ("passphrase file", "@PASS@"),
        ("config passphrase file", "@CONFIG_PASS@"),
    ] {
        note(what, std::fs::read_to_string(path).map_err(|e| e.to_string()));
    }
    note("state directory listing", std::fs::read_dir("@STATE@")
        .map_err(|e| e.to_string())
        .and_then(|entries| {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "builds")
                .collect();
            if names.is_empty() { Err("empty".to_string()) } else { Ok(names.join(",")) }
        }));
    for (what, path) in [("control socket", "@CONTROL@"), ("docker socket", "/var/run/docker.sock")] {
        note(what, std::os::unix::net::UnixStream::connect(path)
            .map(|_| "connected".to_string())
            .map_err(|e| e.to_string()));
    }
    note("abstract socket", std::os::unix::net::SocketAddr::from_abstract_name(b"@ABSTRACT@")
        .and_then(|addr| std::os::unix::net::UnixStream::connect_addr(&addr))
        .map(|_| "connected".to_string())
        .map_err(|e| e.to_string()));
    note("network", "@TCP@".parse::<std::net::SocketAddr>()
        .map_err(|e| e.to_string())
        .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
            .map(|_| "connected".to_string())
            .map_err(|e| e.to_string())));
    let leaked: Vec<String> = std::env::vars()
        .filter(|(k, v)| k.starts_with("CUTOVER_") || v.contains("@CANARY@"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    note("environment", if leaked.is_empty() { Err("none".to_string()) } else { Ok(leaked.join(" ")) });
    note("control plane environ", std::fs::File::open("/proc/@PID@/environ")
        .and_then(|mut f| { let mut s = Vec::new(); f.read_to_end(&mut s).map(|_| s) })
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if text.contains("@CANARY@") { Ok("the canary".to_string()) } else { Err("no canary".to_string()) }
        }));
    note("source write", std::fs::write("@SOURCE@/planted", "x")
        .map(|_| "wrote".to_string())
        .map_err(|e| e.to_string()));
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{out}/findings.txt"), lines.join("\n")).expect("write findings");
}
"#;

struct Attack {
    _dir: tempfile::TempDir,
    manifest: PathBuf,
    source: PathBuf,
    state: PathBuf,
    /// Written by the project's rustc wrapper when it reaches the network.
    wrapper_marker: PathBuf,
    _control: std::os::unix::net::UnixListener,
    _abstract: std::os::unix::net::UnixListener,
    _tcp: std::net::TcpListener,
}

const CANARY: &str = "canary-5e1f0c3a9b";

/// The attacking package, its source tree holding the state directory (`.cutover`, with a
/// key, a passphrase and a listening control socket), a passphrase outside the tree, and a
/// TCP and an abstract socket listening on the host.
fn attack() -> Attack {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("evil");
    let state = source.join(".cutover");
    let keys = state.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("local.key"), format!("key {CANARY}")).unwrap();
    std::fs::write(keys.join("local.pass"), format!("pass {CANARY}")).unwrap();
    let config = dir.path().join("config/cutover/passphrases");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("0123"), format!("config {CANARY}")).unwrap();
    let control = std::os::unix::net::UnixListener::bind(state.join("control.sock")).unwrap();
    static ATTACKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = ATTACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let abstract_name = format!("cutover-attack-{}-{n}", std::process::id());
    let abstract_listener = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let build_rs = ATTACK_BUILD_RS
        .replace("@KEY@", &keys.join("local.key").display().to_string())
        .replace("@PASS@", &keys.join("local.pass").display().to_string())
        .replace("@CONFIG_PASS@", &config.join("0123").display().to_string())
        .replace("@STATE@", &state.display().to_string())
        .replace(
            "@CONTROL@",
            &state.join("control.sock").display().to_string(),
        )
        .replace("@ABSTRACT@", &abstract_name)
        .replace("@TCP@", &tcp.local_addr().unwrap().to_string())
        .replace("@CANARY@", CANARY)
        .replace("@PID@", &std::process::id().to_string())
        .replace("@SOURCE@", &source.join("src").display().to_string());
    // A rustc wrapper of the project's cargo configuration: project code cargo runs when
    // it asks rustc about the target, also while fetching (with the network).
    std::fs::create_dir_all(source.join(".cargo")).unwrap();
    std::fs::write(
        source.join(".cargo/config.toml"),
        format!(
            "[build]\nrustc-wrapper = \"{}\"\n",
            source.join("wrapper.sh").display()
        ),
    )
    .unwrap();
    let wrapper = source.join("wrapper.sh");
    // Where the wrapper notes that it connected: the one directory the build may write.
    let marker = build_dir(
        &state.join("builds"),
        &std::fs::canonicalize(&source).unwrap().join("Cargo.toml"),
    )
    .unwrap()
    .join("wrapper-network");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n(exec 3<>/dev/tcp/{}) 2>/dev/null && echo connected >> {}\nexec \"$@\"\n",
            tcp.local_addr().unwrap().to_string().replace(':', "/"),
            marker.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let manifest = package(
        &source,
        "evil",
        &[
            ("build.rs", build_rs),
            (
                "src/main.rs",
                "fn main() { print!(\"{}\", include_str!(concat!(env!(\"OUT_DIR\"), \"/findings.txt\"))); }\n"
                    .to_string(),
            ),
        ],
    );
    Attack {
        _dir: dir,
        manifest,
        source,
        state,
        wrapper_marker: marker,
        _control: control,
        _abstract: abstract_listener,
        _tcp: tcp,
    }
}

/// Build the attacking package and return its findings, by attempt.
async fn findings(attack: &Attack, unsandboxed: bool) -> BTreeMap<String, String> {
    let config = CargoBuilds {
        dir: attack.state.join("builds"),
        hidden: vec![attack.state.clone()],
        unsandboxed,
    };
    build_static(&config, &attack.manifest, "evil", "release")
        .await
        .expect("the attacking package builds");
    let out = std::process::Command::new(built_path(&config, &attack.manifest, "evil"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(what, result)| (what.to_string(), result.to_string()))
        .collect()
}

#[tokio::test]
async fn a_build_script_reaches_no_key_no_socket_no_secret_and_no_network() {
    if !have_bubblewrap() {
        return;
    }
    // What the control plane would have in its environment.
    std::env::set_var("CUTOVER_KEY_PASSPHRASE", CANARY);
    std::env::set_var("CUTOVER_TOKEN", CANARY);
    let attack = attack();
    let found = findings(&attack, false).await;
    eprintln!("what the sandboxed build script found: {found:#?}");
    for what in [
        "key file",
        "passphrase file",
        "config passphrase file",
        "state directory listing",
        "control socket",
        "docker socket",
        "abstract socket",
        "network",
        "environment",
        "control plane environ",
        "source write",
    ] {
        let result = found
            .get(what)
            .unwrap_or_else(|| panic!("the build script did not try {what}: {found:?}"));
        assert!(
            result.starts_with("BLOCKED"),
            "the sandboxed build script reached the {what}: {result}"
        );
        assert!(!result.contains(CANARY), "{what}: {result}");
    }
    assert!(!attack.source.join("src/planted").exists());
    // The project's rustc wrapper ran in the build, never with the network.
    assert!(
        !attack.wrapper_marker.exists(),
        "the project's rustc wrapper reached the network while fetching"
    );
}

#[tokio::test]
async fn without_the_sandbox_the_same_build_script_reads_the_key_and_reaches_the_sockets() {
    // The control for the test above: the attempts are real, only the sandbox stops them.
    let attack = attack();
    let found = findings(&attack, true).await;
    for what in [
        "key file",
        "passphrase file",
        "config passphrase file",
        "state directory listing",
        "control socket",
        "abstract socket",
        "network",
        "source write",
    ] {
        let result = found
            .get(what)
            .unwrap_or_else(|| panic!("the build script did not try {what}: {found:?}"));
        assert!(result.starts_with("GOT"), "{what}: {result}");
    }
    // Unsandboxed, the wrapper ran with the network (the build has it too).
    assert!(attack.wrapper_marker.exists());
    // Unsandboxed builds still get a cleared environment.
    assert!(found["environment"].starts_with("BLOCKED"), "{found:?}");
}

#[test]
fn a_missing_bubblewrap_fails_the_build_with_the_package_to_install() {
    let err = isolation_with(false, || Err(cutover_sandbox::SandboxError::NotInstalled))
        .expect_err("no silent fallback");
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains("apt-get install bubblewrap"),
        "{err}"
    );
    assert_eq!(
        isolation_with(true, || Err(cutover_sandbox::SandboxError::NotInstalled)).unwrap(),
        Isolation::Unsandboxed
    );
}

#[test]
fn the_source_root_is_the_nearest_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let member = dir.path().join("ws/apps/hello");
    std::fs::create_dir_all(&member).unwrap();
    std::fs::write(member.join("Cargo.toml"), "[package]\nname = \"hello\"\n").unwrap();
    assert_eq!(source_root(&member.join("Cargo.toml")), member);
    std::fs::write(
        dir.path().join("ws/Cargo.toml"),
        "[workspace]\nmembers = [\"apps/*\"]\n",
    )
    .unwrap();
    assert_eq!(
        source_root(&member.join("Cargo.toml")),
        dir.path().join("ws")
    );
}

#[test]
fn profile_dirs_follow_cargo() {
    assert_eq!(profile_dir("dev"), "debug");
    assert_eq!(profile_dir("test"), "debug");
    assert_eq!(profile_dir("release"), "release");
    assert_eq!(profile_dir("bench"), "release");
    assert_eq!(profile_dir("dist"), "dist");
}

#[test]
fn static_flag_is_appended_to_existing_flags() {
    assert_eq!(static_rustflags(None, None), STATIC_RUSTFLAG);
    assert_eq!(
        static_rustflags(Some("-C opt-level=2"), None),
        format!("-C opt-level=2 {STATIC_RUSTFLAG}")
    );
    assert_eq!(
        static_rustflags(Some("ignored"), Some("-C\u{1f}debuginfo=0")),
        format!("-C debuginfo=0 {STATIC_RUSTFLAG}")
    );
    assert_eq!(static_rustflags(Some("  "), Some("")), STATIC_RUSTFLAG);
}

#[test]
fn output_tails_keep_the_last_lines() {
    let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
    let tail = tail_of(text.as_bytes());
    assert!(tail.starts_with("line 25"));
    assert!(tail.ends_with("line 39"));
}
