//! End-to-end supply chain: every deploy is scanned, signed and verified before anything
//! runs; a failing gate, a planted secret or tampered attestations provision nothing, and
//! the command exits 6 (refused by the supply chain).

use std::path::Path;

use cutover_integration::{repo_root, require_docker, static_hello_binary, AppConfig, Project};

/// A fake AWS key pair planted in an image; it must never be printed anywhere.
const CANARY_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARY0SECRET";

/// A Docker build context around the static example binary, plus `extra` files.
fn context(p: &Project, extra: &[(&str, &str)]) -> String {
    let dir = p.dir.path().join("ctx");
    std::fs::create_dir_all(&dir).expect("context dir");
    std::fs::copy(static_hello_binary(), dir.join("app")).expect("copy binary");
    let mut dockerfile = String::from("FROM scratch\nCOPY app /app\n");
    for (path, text) in extra {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(&file, text).expect("write context file");
        dockerfile.push_str(&format!("COPY {path} /{path}\n"));
    }
    dockerfile.push_str("USER 65534:65534\nENTRYPOINT [\"/app\"]\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
    "context = \"ctx\"".to_string()
}

fn steps(p: &Project, deployment: &str) -> Vec<(String, String, String)> {
    let detail = p
        .cutover(&["status", "--deployment", deployment, "-o", "json"])
        .json();
    detail["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("").to_string(),
                s["state"].as_str().unwrap_or("").to_string(),
                s["output"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn every_deploy_is_scanned_signed_and_verified() {
    if !require_docker() {
        return;
    }
    let p = Project::new("signed");
    p.write_spec(&AppConfig {
        replicas: 1,
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let release = p.current_release();
    let steps = steps(&p, &release);
    let order: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    let pos = |id: &str| {
        order
            .iter()
            .position(|s| *s == id)
            .unwrap_or_else(|| panic!("no {id}: {order:?}"))
    };
    assert!(pos("build") < pos("scan") && pos("scan") < pos("sign") && pos("sign") < pos("verify"));
    assert!(pos("verify") < pos("provision-0"), "{order:?}");
    for id in ["scan", "sign", "verify"] {
        assert_eq!(steps[pos(id)].1, "succeeded", "{id}: {:?}", steps[pos(id)]);
    }
    assert!(
        steps[pos("scan")].2.contains("passed"),
        "{:?}",
        steps[pos("scan")]
    );

    let sbom = p.cutover(&["sbom", &release]);
    sbom.assert_code(0);
    let doc = sbom.json();
    assert_eq!(doc["bomFormat"], "CycloneDX");
    assert!(doc["specVersion"].as_str().unwrap_or("").starts_with("1."));

    let verify = p.cutover(&["verify", &release, "-o", "json"]);
    verify.assert_code(0);
    assert_eq!(verify.json()["verified"], true);
}

#[test]
fn tampered_attestations_refuse_the_rollback_and_provision_nothing() {
    if !require_docker() {
        return;
    }
    let p = Project::new("tamper");
    p.write_spec(&AppConfig {
        replicas: 1,
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let first = p.current_release();
    p.write_spec(&AppConfig {
        replicas: 1,
        version: "v2".into(),
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let second = p.current_release();

    // Edit the first release's signed statements (as an attacker with file access would).
    let history = p.cutover(&["history", "-o", "json"]).json();
    let image = history
        .as_array()
        .expect("history")
        .iter()
        .find(|l| l["release_id"] == first.as_str())
        .and_then(|l| l["image_id"].as_str())
        .expect("image of the first release")
        .to_string();
    let file = p
        .state_dir()
        .join("supply")
        .join(image.trim_start_matches("sha256:"))
        .join("attestations-production.json");
    let mut bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("attestations")).expect("json");
    let payload = bundle["envelopes"][0]["payload"]
        .as_str()
        .expect("payload")
        .to_string();
    let mut bytes = payload.into_bytes();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    bundle["envelopes"][0]["payload"] =
        serde_json::Value::String(String::from_utf8(bytes).expect("ascii"));
    std::fs::write(&file, serde_json::to_vec(&bundle).expect("json"))
        .expect("write tampered bundle");

    let containers_before = p.containers();
    let run = p.cutover(&["rollback"]);
    run.assert_code(6);
    assert!(
        run.stdout.contains("verify"),
        "names the failed step: {}",
        run.stdout
    );
    assert_eq!(p.current_release(), second, "traffic stays where it was");
    let (_, served_by, _) = p.get().expect("still answers");
    assert_eq!(served_by, second);
    assert_eq!(
        p.containers(),
        containers_before,
        "the refused rollback touched instances"
    );
    // And stand-alone verification refuses it too (exit 6).
    p.cutover(&["verify", &first]).assert_code(6);
}

#[test]
fn without_an_advisory_database_the_deploy_fails_closed_and_says_how_to_import() {
    if !require_docker() {
        return;
    }
    let p = Project::new("nodb");
    p.write_spec(&AppConfig {
        replicas: 1,
        gate: Some("allow_missing_advisories = false".to_string()),
        ..AppConfig::default()
    });
    let run = p.cutover(&["deploy"]);
    run.assert_code(6);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("no advisory database imported")
            && said.contains("cutover advisories import osv.zip"),
        "{said}"
    );
    assert!(p.containers().is_empty(), "an unchecked image ran");
}

#[test]
fn a_planted_secret_fails_the_gate_and_is_never_printed() {
    if !require_docker() {
        return;
    }
    let p = Project::new("secret");
    let credentials = format!(
        "[default]\naws_access_key_id = AKIAIOSFODNN7CANARY1\naws_secret_access_key = {CANARY_SECRET}\n"
    );
    let build = context(&p, &[(".aws/credentials", credentials.as_str())]);
    p.write_spec(&AppConfig {
        replicas: 1,
        build: Some(build),
        ..AppConfig::default()
    });
    let run = p.cutover(&["deploy"]);
    run.assert_code(6);
    assert!(run.stdout.contains("secret"), "{}", run.stdout);
    assert!(
        p.containers().is_empty(),
        "an image that failed its gate ran: {:?}",
        p.containers()
    );
    let status = p.cutover(&["status", "-o", "json"]);
    let history = p.cutover(&["history"]);
    let logs = std::fs::read_to_string(p.state_dir().join("serve.log")).unwrap_or_default();
    for (what, text) in [
        ("deploy stdout", &run.stdout),
        ("deploy stderr", &run.stderr),
        ("status", &status.stdout),
        ("history", &history.stdout),
        ("control plane log", &logs),
    ] {
        assert!(!text.contains(CANARY_SECRET), "{what} printed the secret");
        assert!(
            !text.contains("CANARY0SECRET"),
            "{what} printed part of the secret"
        );
    }
}

#[test]
fn a_vulnerable_package_fails_the_gate_unless_a_live_exception_covers_it() {
    if !require_docker() {
        return;
    }
    let p = Project::new("vuln");
    let advisories = repo_root().join("crates/supply/tests/fixtures/osv");
    let import = p.cutover(&["advisories", "import", &advisories.display().to_string()]);
    import.assert_code(0);
    let lock = "version = 3\n\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
    let build = context(&p, &[("srv/Cargo.lock", lock)]);
    let spec = |gate: Option<&str>| AppConfig {
        replicas: 1,
        build: Some(build.clone()),
        gate: gate.map(str::to_string),
        ..AppConfig::default()
    };
    p.write_spec(&spec(None));
    let run = p.cutover(&["deploy"]);
    run.assert_code(6);
    assert!(run.stdout.contains("RUSTSEC-2021-0003"), "{}", run.stdout);
    assert!(p.containers().is_empty());

    // An exception naming the CVE alias covers the RUSTSEC advisory, once the admin pinned
    // the reviewed file in the environment's guardrails (the first deploy's allowed none).
    write_exceptions(p.dir.path(), "2999-01-01");
    p.write_spec(&spec(Some("exceptions = \"exceptions.toml\"")));
    let run = p.cutover(&["deploy"]);
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("environments.production.gate.exceptions"),
        "{}",
        run.stderr
    );
    pin_exceptions(&p);
    p.cutover(&["deploy"]).assert_code(0);
    // Using an exception is on the audit record.
    let audit = p.cutover(&["audit", "export"]);
    audit.assert_code(0);
    let used = audit
        .stdout
        .lines()
        .find(|l| l.contains("exception.use"))
        .unwrap_or_else(|| panic!("no exception.use in the audit log: {}", audit.stdout));
    assert!(
        used.contains("RUSTSEC-2021-0003") && used.contains("CVE-2021-25900"),
        "{used}"
    );

    // Once expired, it covers nothing and says so.
    write_exceptions(p.dir.path(), "2020-01-01");
    pin_exceptions(&p);
    let run = p.cutover(&["deploy"]);
    run.assert_code(6);
    assert!(run.stdout.contains("expired"), "{}", run.stdout);

    // Stand-alone scan with SARIF output, for CI dashboards.
    let sarif = p.dir.path().join("scan.sarif");
    let image = format!("cutover/{}:{}", p.app, p.current_release());
    let scan = p.cutover(&["scan", &image, "--sarif", &sarif.display().to_string()]);
    scan.assert_code(6);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif).expect("sarif written"))
            .expect("sarif json");
    assert_eq!(doc["version"], "2.1.0");
}

/// Set production's guardrails to allow exactly the project's `exceptions.toml` as it is.
fn pin_exceptions(p: &Project) {
    let file = p.dir.path().join("exceptions.toml");
    let out = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("run sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().expect("a digest");
    let rails = p.dir.path().join("guardrails.toml");
    std::fs::write(
        &rails,
        format!("[gate]\nexceptions_sha256 = \"sha256:{hex}\"\n"),
    )
    .expect("write guardrails");
    p.cutover(&[
        "guardrails",
        "set",
        "production",
        &rails.display().to_string(),
    ])
    .assert_code(0);
}

fn write_exceptions(dir: &Path, expires: &str) {
    std::fs::write(
        dir.join("exceptions.toml"),
        format!(
            "[[exception]]\nid = \"CVE-2021-25900\"\npackage = \"smallvec\"\nreason = \"insert_many is never called\"\nowner = \"sre@example.com\"\nexpires = {expires}\n"
        ),
    )
    .expect("write exceptions");
}
