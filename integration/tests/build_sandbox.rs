//! End-to-end: an app whose build script attacks the control plane that builds it, deployed
//! with the real `cutover` binary. Its source tree holds the state directory (`.cutover`
//! next to `deploy.toml`, as by default), the control plane has a passphrase in its
//! environment, and the second deploy's build script looks for the local key the first one
//! made. Every attempt must fail, and the deploys succeed.

use std::path::{Path, PathBuf};

use cutover_integration::{repo_root, require_docker, AppConfig, Project};

const CANARY: &str = "canary-0b7d41e9c2";

/// The build script: tries each attack, writes `<what>: GOT …` or `<what>: BLOCKED …` per
/// attempt to `OUT_DIR/findings.txt`, and asks cargo to run it on every build (a file it
/// watches is missing from its view).
const BUILD_RS: &str = r#"
use std::io::Read;

fn main() {
    println!("cargo:rerun-if-changed=@STATE@/keys/local.key");
    let mut lines: Vec<String> = Vec::new();
    let mut note = |what: &str, result: Result<String, String>| match result {
        Ok(got) => lines.push(format!("{what}: GOT {got}")),
        Err(why) => lines.push(format!("{what}: BLOCKED {why}")),
    };
    note("key file", std::fs::read("@STATE@/keys/local.key")
        .map(|b| format!("{} bytes", b.len())).map_err(|e| e.to_string()));
    note("passphrases", std::fs::read_dir("@CONFIG@/cutover/passphrases")
        .map(|d| format!("{} files", d.count())).map_err(|e| e.to_string()));
    note("state directory", std::fs::read_dir("@STATE@")
        .map_err(|e| e.to_string())
        .and_then(|d| {
            let names: Vec<String> = d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "builds").collect();
            if names.is_empty() { Err("empty".to_string()) } else { Ok(names.join(",")) }
        }));
    for (what, path) in [
        ("control socket", "@STATE@/control.sock"),
        ("proxy socket", "@STATE@/proxy/proxy.sock"),
        ("docker socket", "/var/run/docker.sock"),
    ] {
        note(what, std::os::unix::net::UnixStream::connect(path)
            .map(|_| "connected".to_string()).map_err(|e| e.to_string()));
    }
    note("network", std::net::TcpStream::connect_timeout(
            &"@LISTEN@".parse().unwrap(), std::time::Duration::from_secs(2))
        .map(|_| "connected".to_string()).map_err(|e| e.to_string()));
    let leaked: Vec<String> = std::env::vars()
        .filter(|(k, v)| k.starts_with("CUTOVER_") || v.contains("@CANARY@"))
        .map(|(k, _)| k).collect();
    note("environment", if leaked.is_empty() { Err("none".to_string()) } else { Ok(leaked.join(",")) });
    let mut environs = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let mut text = Vec::new();
        if std::fs::File::open(entry.path().join("environ"))
            .and_then(|mut f| f.read_to_end(&mut text)).is_ok()
            && String::from_utf8_lossy(&text).contains("@CANARY@")
        {
            environs += 1;
        }
    }
    note("process environments", if environs == 0 { Err("no canary".to_string()) } else { Ok(format!("{environs} with the canary")) });
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{out}/findings.txt"), lines.join("\n")).expect("write findings");
}
"#;

/// The attacking package in the project directory (next to `deploy.toml` and `.cutover`):
/// the example app's server with the build script above.
fn write_attacker(p: &Project) {
    let dir = p.dir.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"evil\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("examples/hello/src/main.rs"),
        dir.join("src/main.rs"),
    )
    .unwrap();
    let build_rs = BUILD_RS
        .replace("@STATE@", &p.state_dir().display().to_string())
        .replace("@CONFIG@", &p.config.path().display().to_string())
        .replace("@LISTEN@", &p.listen())
        .replace("@CANARY@", CANARY);
    std::fs::write(dir.join("build.rs"), build_rs).unwrap();
}

/// The findings of the build script's latest run, by attempt.
fn findings(p: &Project) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut pending = vec![p.state_dir().join("builds")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n == "findings.txt") {
                files.push(path);
            }
        }
    }
    let modified = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let latest = files
        .iter()
        .max_by_key(|f| modified(f))
        .unwrap_or_else(|| panic!("the build script wrote no findings under the builds directory"));
    std::fs::read_to_string(latest)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(what, result)| (what.to_string(), result.to_string()))
        .collect()
}

#[test]
fn a_build_script_reaches_nothing_of_the_control_plane_that_builds_it() {
    if !require_docker() {
        return;
    }
    let p = Project::new("sandbox");
    write_attacker(&p);
    let config = |version: &str| AppConfig {
        version: version.into(),
        replicas: 1,
        build: Some(
            "cargo = { manifest = \"Cargo.toml\", bin = \"evil\", profile = \"release\" }"
                .to_string(),
        ),
        ..AppConfig::default()
    };
    // As an installed `cutover` runs: the control plane finds cargo on PATH (a rustup
    // proxy), not through the `CARGO` that `cargo test` sets; and it has a passphrase in its
    // environment.
    let deploy = || {
        let out = p
            .command(&["deploy"])
            .env_remove("CARGO")
            .env("CUTOVER_KEY_PASSPHRASE", CANARY)
            .output()
            .expect("run cutover deploy");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "deploy failed: {stderr}");
        stderr
    };
    p.write_spec(&config("v1"));
    deploy();
    assert!(
        p.state_dir().join("keys/local.key").is_file(),
        "the first deploy made no local key"
    );

    // The second build runs with a local key, its passphrase and every socket in place.
    p.write_spec(&config("v2"));
    let progress = deploy();
    assert!(
        progress.contains("build            succeeded"),
        "no build step in the progress: {progress}"
    );
    assert!(
        !progress.contains("without a sandbox"),
        "the build ran unsandboxed: {progress}"
    );
    let found = findings(&p);
    let tried: Vec<&str> = found.iter().map(|(what, _)| what.as_str()).collect();
    assert_eq!(
        tried,
        [
            "key file",
            "passphrases",
            "state directory",
            "control socket",
            "proxy socket",
            "docker socket",
            "network",
            "environment",
            "process environments",
        ],
        "{found:?}"
    );
    for (what, result) in &found {
        assert!(
            result.starts_with("BLOCKED"),
            "the build script reached the {what}: {result}"
        );
    }
    // The app it built serves.
    let (status, _, body) = p.get().expect("the release answers");
    assert_eq!((status, body.trim()), (200, "hello from v2"));
}
