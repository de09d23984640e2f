//! Build once in CI, deploy by digest elsewhere, through a real registry (distribution 2.8
//! on 127.0.0.1 with htpasswd auth) and two state directories, each with its own key:
//! CI builds, scans, signs (`cutover build`) and pushes (`cutover push`); the control
//! plane, whose environment trusts only CI's public key, pulls by digest, verifies CI's
//! provenance, scans with its own database, signs its verdict and deploys. Every refusal
//! (content re-pushed under the tag without attestations, attestations copied from another
//! image, altered, removed, or signed by a key the environment does not trust) and every bad
//! input (tag without digest, unreachable registry, wrong credentials, a manifest list
//! without linux/amd64, a digest not in the registry) provisions nothing. Last, CI deploys
//! the same digest over the control plane's HTTPS API with a deployer token, sending its own
//! deploy.toml as the examples in examples/ci do.

use std::path::Path;
use std::time::Duration;

use cutover_docker::registry::{self as reg, RegistryCredentials};
use cutover_docker::DockerProvider;
use cutover_integration::registry::{require_registry, Registry};
use cutover_integration::{require_docker, static_hello_binary, wait_for, AppConfig, Project, Run};
use cutover_model::ImageRef;

/// The registry password: it must never appear in any output, log or argument.
const CANARY_PASSWORD: &str = "canary-R3gistry-pw-5e1f";
const PASSPHRASE: &str = "ci key passphrase for tests";
const REPO: &str = "team/hello";

/// A build context around the static example binary, with an extra file when `marker`.
fn context(p: &Project, marker: Option<&str>) {
    let dir = p.dir.path().join("ctx");
    std::fs::create_dir_all(&dir).expect("context dir");
    std::fs::copy(static_hello_binary(), dir.join("app")).expect("copy binary");
    let mut dockerfile = String::from("FROM scratch\nCOPY app /app\n");
    if let Some(marker) = marker {
        std::fs::write(dir.join("marker.txt"), marker).expect("marker");
        dockerfile.push_str("COPY marker.txt /marker.txt\n");
    }
    dockerfile.push_str("USER 65534:65534\nENTRYPOINT [\"/app\"]\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
}

/// The spec of `config` with `extra` lines added to `[environments.production]`.
fn write_spec(p: &Project, config: &AppConfig, extra: &str) {
    p.write_spec(config);
    let text = std::fs::read_to_string(p.spec_path()).expect("spec");
    let text = text.replacen(
        "drain_timeout = \"5s\"\n",
        &format!("drain_timeout = \"5s\"\n{extra}"),
        1,
    );
    std::fs::write(p.spec_path(), text).expect("write spec");
}

fn write_auth_file(path: &Path, registry: &Registry, password: &str) {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{password}", registry.username));
    std::fs::write(
        path,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.addr
        ),
    )
    .expect("write auth file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Every output of `runs` is free of the canary password.
fn assert_no_canary(runs: &[&Run]) {
    for run in runs {
        assert!(
            !run.stdout.contains(CANARY_PASSWORD) && !run.stderr.contains(CANARY_PASSWORD),
            "the registry password was printed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

/// A refused deployment: exit `code` (3: the pull step failed; 6: verification refused),
/// the message names what, nothing provisioned.
#[track_caller]
fn assert_refused(cp: &Project, run: &Run, code: i32, image: &str, why: &str) {
    run.assert_code(code);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains(image),
        "the error does not name {image}:\n{text}"
    );
    assert!(
        text.contains(why),
        "the error does not say {why:?}:\n{text}"
    );
    assert!(
        cp.containers().is_empty(),
        "something was provisioned: {:?}",
        cp.containers()
    );
}

#[test]
fn ci_builds_signs_and_pushes_and_the_control_plane_deploys_by_digest_trusting_only_ci() {
    if !require_docker() || !require_registry() {
        return;
    }
    let registry = Registry::start("ci", CANARY_PASSWORD);
    let creds = RegistryCredentials::new("ci", CANARY_PASSWORD);
    let registry_env = [
        ("CUTOVER_REGISTRY_USERNAME", "ci"),
        ("CUTOVER_REGISTRY_PASSWORD", CANARY_PASSWORD),
    ];

    // ---- CI: its own state directory and release key.
    let ci = Project::new("reg-ci");
    context(&ci, None);
    let keys = ci.dir.path().join("keys");
    ci.cutover_with_env(
        &[
            "keys",
            "generate",
            "--name",
            "ci",
            "--dir",
            &keys.display().to_string(),
        ],
        &[("CUTOVER_KEY_PASSPHRASE", PASSPHRASE)],
    )
    .assert_code(0);
    let ci_config = AppConfig {
        build: Some("context = \"ctx\"".to_string()),
        replicas: 1,
        ..AppConfig::default()
    };
    write_spec(&ci, &ci_config, "trusted_keys = [\"keys/ci.pub\"]\n");
    let spec = std::fs::read_to_string(ci.spec_path()).unwrap();
    std::fs::write(
        ci.spec_path(),
        spec.replacen(
            "[container]",
            "[supply]\nsigning_key = \"keys/ci.key\"\n\n[container]",
            1,
        ),
    )
    .unwrap();
    let out = ci.dir.path().join("out");
    let ci_env = [
        ("CUTOVER_KEY_PASSPHRASE", PASSPHRASE),
        ("GITHUB_SERVER_URL", "https://github.example"),
        ("GITHUB_REPOSITORY", "team/hello"),
        ("GITHUB_RUN_ID", "4242"),
    ];
    let built = ci.cutover_with_env(&["build", "--out", &out.display().to_string()], &ci_env);
    built.assert_code(0);
    let image_id = built.stdout.trim().to_string();
    assert!(image_id.starts_with("sha256:"), "{}", built.stdout);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("build.json")).unwrap()).unwrap();
    assert_eq!(record["image_id"], image_id.as_str());
    assert_eq!(
        record["builder"],
        "https://github.example/team/hello/actions/runs/4242"
    );
    assert!(out.join("attestations.json").is_file());
    // Nothing was deployed in CI.
    assert!(ci.containers().is_empty(), "{:?}", ci.containers());

    let target = format!("{}/{REPO}:v1", registry.addr);
    let pushed = ci.cutover_with_env(
        &["push", &target, "--build", &out.display().to_string()],
        &registry_env,
    );
    pushed.assert_code(0);
    let reference = pushed.stdout.trim().to_string();
    let good = ImageRef::parse(&reference).expect("push prints a reference by digest");
    assert_eq!(
        registry.tag_digest(REPO, "v1").as_deref(),
        Some(good.digest.as_str())
    );
    assert!(registry.tag_digest(REPO, &good.attestation_tag()).is_some());
    assert_no_canary(&[&built, &pushed]);

    // ---- The control plane: its own state and local key; production trusts CI's key only.
    let cp = Project::new("reg-cp");
    std::fs::copy(keys.join("ci.pub"), cp.dir.path().join("ci.pub")).unwrap();
    let auth_file = cp.config.path().join("registry-auth.json");
    write_auth_file(&auth_file, &registry, CANARY_PASSWORD);
    let auth_path = auth_file.display().to_string();
    let cp_env = [("CUTOVER_REGISTRY_AUTH", auth_path.as_str())];
    let cp_config = AppConfig {
        build: Some(format!("image = \"{reference}\"")),
        replicas: 1,
        ..AppConfig::default()
    };
    let trust_ci = "trusted_keys = [\"ci.pub\"]\n";
    write_spec(&cp, &cp_config, trust_ci);
    let deploy = |image: &str| cp.cutover_with_env(&["deploy", "--image", image], &cp_env);
    let mut runs = Vec::new();

    // The plan pulls instead of building.
    let planned = cp.cutover_with_env(&["plan", "--image", &reference], &cp_env);
    planned.assert_code(0);
    assert!(
        planned.stdout.contains(&format!("pull image {reference}")),
        "{}",
        planned.stdout
    );

    // Bad input: a tag alone (exit 2, nothing planned).
    let tag_only = format!("{}/{REPO}:v1", registry.addr);
    let run = deploy(&tag_only);
    run.assert_code(2);
    assert!(run.stderr.contains("a tag can be moved"), "{}", run.stderr);
    assert!(run.stderr.contains(&tag_only), "{}", run.stderr);
    // …and in the spec: file:line:column and the field.
    write_spec(
        &cp,
        &AppConfig {
            build: Some(format!("image = \"{tag_only}\"")),
            ..cp_config.clone()
        },
        trust_ci,
    );
    let run = cp.cutover_with_env(&["plan"], &cp_env);
    run.assert_code(2);
    assert!(run.stderr.contains("build.image"), "{}", run.stderr);
    assert!(run.stderr.contains("deploy.toml:4:"), "{}", run.stderr);
    write_spec(&cp, &cp_config, trust_ci);

    // An unreachable registry.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = format!("127.0.0.1:{closed}/{REPO}@{}", good.digest);
    let run = deploy(&nowhere);
    assert_refused(&cp, &run, 3, &nowhere, "cannot reach registry");
    runs.push(run);

    // A digest that is not in the registry.
    let missing = format!("{}/{REPO}@sha256:{}", registry.addr, "0".repeat(64));
    let run = deploy(&missing);
    assert_refused(&cp, &run, 3, &missing, "is not in the registry");
    runs.push(run);

    // Wrong credentials (the file is read at each pull).
    write_auth_file(&auth_file, &registry, "not-the-password");
    let run = deploy(&reference);
    assert_refused(&cp, &run, 3, &reference, "refused the credentials");
    runs.push(run);
    write_auth_file(&auth_file, &registry, CANARY_PASSWORD);

    // A manifest list without linux/amd64.
    let index_digest = push_index_without_amd64(&registry, &creds, &good);
    let index_ref = format!("{}/{REPO}@{index_digest}", registry.addr);
    let run = deploy(&index_ref);
    assert_refused(&cp, &run, 3, &index_ref, "without an image for linux/amd64");
    assert!(run.stderr.contains("linux/arm64"), "{}", run.stderr);
    runs.push(run);

    // ---- Attacks.
    // Other content re-pushed under the same tag, without attestations.
    context(&ci, Some("other content"));
    let other_out = ci.dir.path().join("other");
    ci.cutover_with_env(
        &["build", "--out", &other_out.display().to_string()],
        &ci_env,
    )
    .assert_code(0);
    let other: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other_out.join("build.json")).unwrap())
            .unwrap();
    let other_id = other["image_id"].as_str().unwrap().to_string();
    assert_ne!(other_id, image_id);
    let docker = block_on(DockerProvider::connect()).expect("docker");
    let repushed =
        block_on(docker.push_image_to(&other_id, &registry.addr, REPO, "v1", Some(&creds)))
            .expect("push other content");
    assert_eq!(
        registry.tag_digest(REPO, "v1").as_deref(),
        Some(repushed.digest.as_str())
    );
    let repushed_ref = repushed.to_string();
    let run = deploy(&repushed_ref);
    assert_refused(&cp, &run, 3, &repushed_ref, "has no attestations");
    runs.push(run);
    // The same tag still cannot move what the digest names: the original deploys later.

    // CI's attestations copied onto the other image's attestation tag.
    let original = block_on(reg::fetch_attestations(&good, Some(&creds))).expect("fetch");
    block_on(reg::push_attestations(
        &repushed,
        original.clone(),
        Some(&creds),
    ))
    .expect("copy");
    let run = deploy(&repushed_ref);
    assert_refused(&cp, &run, 3, &repushed_ref, "not the pulled image");
    runs.push(run);

    // An attestation altered: one byte of its payload changed (the signature no longer holds).
    let altered = alter_payload(&original);
    block_on(reg::push_attestations(&good, altered, Some(&creds))).expect("alter");
    let run = deploy(&reference);
    assert_refused(&cp, &run, 6, &image_id, "does not verify");
    runs.push(run);

    // The attestations removed.
    let att_digest = registry
        .tag_digest(REPO, &good.attestation_tag())
        .expect("attestation tag");
    registry.delete_manifest(REPO, &att_digest);
    let run = deploy(&reference);
    assert_refused(&cp, &run, 3, &reference, "has no attestations");
    runs.push(run);
    block_on(reg::push_attestations(&good, original, Some(&creds))).expect("restore");

    // An environment that trusts only this control plane's own key (it lists no trusted
    // keys, nor do its guardrails): CI's signature does not count.
    write_spec(&cp, &cp_config, trust_ci);
    let mut text = std::fs::read_to_string(cp.spec_path()).unwrap();
    text.push_str(&format!(
        "\n[environments.local]\nlisten = \"127.0.0.1:{}\"\nreplicas = 1\n\n[environments.local.gate]\nallow_missing_advisories = true\n",
        cutover_integration::reserve_port()
    ));
    std::fs::write(cp.spec_path(), text).unwrap();
    let run = cp.cutover_with_env(&["deploy", "--env", "local"], &cp_env);
    assert_refused(&cp, &run, 6, &image_id, "not trusted for local");
    runs.push(run);

    // ---- The real thing: CI's provenance, this control plane's scan and verdict. Cold: the
    // image leaves the Engine (CI built it on this one) and the control plane's scan cache
    // goes, so the numbers below are those of a first pull and scan.
    write_spec(&cp, &cp_config, trust_ci);
    let removed = std::process::Command::new("docker")
        .args(["rmi", "-f", &image_id])
        .output()
        .unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let image_dir = cp
        .state_dir()
        .join("supply")
        .join(image_id.trim_start_matches("sha256:"));
    for entry in std::fs::read_dir(&image_dir)
        .expect("the image was scanned")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("report-") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let started = std::time::Instant::now();
    let run = cp.cutover_with_env(&["deploy"], &cp_env);
    let took = started.elapsed();
    run.assert_code(0);
    runs.push(run);
    eprintln!(
        "deploy by digest: `cutover deploy` to traffic on green took {} ms",
        took.as_millis()
    );
    wait_for(
        "the proxy to serve the pulled image",
        Duration::from_secs(10),
        || {
            cp.get()
                .is_ok_and(|(status, _, body)| status == 200 && body.contains("v1"))
        },
    );
    let release = cp.current_release();
    let detail = cp
        .cutover(&["status", "--deployment", &release, "-o", "json"])
        .json();
    let steps = detail["steps"].as_array().expect("steps");
    let ids: Vec<&str> = steps.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids[..4], ["pull", "scan", "sign", "verify"], "{ids:?}");
    let container_image = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Image}}", &cp.containers()[0].0])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&container_image.stdout).trim(),
        image_id
    );

    // The chain of custody.
    let verify = cp.cutover_with_env(
        &["verify", &release, "--env", "production", "--key", "ci.pub"],
        &cp_env,
    );
    verify.assert_code(0);
    for expected in [
        "https://github.example/team/hello/actions/runs/4242",
        reference.as_str(),
        "verdict for production",
    ] {
        assert!(
            verify.stdout.contains(expected),
            "{expected} missing:\n{}",
            verify.stdout
        );
    }
    runs.push(verify);

    // Numbers: pull, verify, scan, provision and health of a deploy by digest.
    for (id, line) in steps.iter().map(|s| {
        (
            s["id"].as_str().unwrap_or_default(),
            s["duration_ms"].as_u64().unwrap_or_default(),
        )
    }) {
        eprintln!("deploy by digest: {id} took {line} ms");
    }

    // ---- CI deploys over the control plane's HTTPS API with a deployer token, as the
    // examples in examples/ci do: it sends its own deploy.toml (a context build, its signing
    // key and trusted keys: files of the CI machine, never read here) with the image by
    // digest; the control plane pulls, judges and signs with what it holds itself.
    let cp_text = std::fs::read_to_string(cp.spec_path()).unwrap();
    let ci_text = cp_text
        .replacen(&format!("image = \"{reference}\""), "context = \"ctx\"", 1)
        .replacen(
            "[container]",
            "[supply]\nsigning_key = \"keys/ci.key\"\n\n[container]",
            1,
        );
    assert!(ci_text.contains("context = \"ctx\"") && ci_text.contains("ci.pub"));
    cp.cutover(&["serve", "--stop", "--keep-proxy"])
        .assert_code(0);
    let (serve, tls, ca, port) = cutover_integration::https::serve_https(&cp, &cp_env);
    let token = cp.cutover(&[
        "token",
        "create",
        "--role",
        "deployer",
        "--env",
        "production",
        "--name",
        "ci-job",
        "--owner",
        "ci-job",
        "-o",
        "json",
    ]);
    token.assert_code(0);
    let token = token.json()["token"].as_str().unwrap().to_string();
    // The CLI reads the spec where -f points; here that is the CI checkout's text.
    std::fs::write(cp.spec_path(), &ci_text).unwrap();
    let remote = cp
        .command(&[
            "deploy",
            "--env",
            "production",
            "--image",
            &reference,
            "--output",
            "json",
        ])
        .env("CUTOVER_URL", format!("https://127.0.0.1:{port}"))
        .env("CUTOVER_CA_CERT", &ca)
        .env("CUTOVER_TOKEN", &token)
        .output()
        .unwrap();
    std::fs::write(cp.spec_path(), &cp_text).unwrap();
    let remote = Run::of(remote);
    remote.assert_code(0);
    let outcome = remote.json();
    assert_eq!(outcome["status"], "succeeded", "{}", remote.stdout);
    assert_eq!(outcome["image_id"], image_id.as_str(), "{}", remote.stdout);
    let remote_release = outcome["release_id"].as_str().unwrap().to_string();
    assert_ne!(remote_release, release);
    wait_for(
        "the proxy to serve the release CI deployed over HTTPS",
        Duration::from_secs(10),
        || {
            cp.get()
                .is_ok_and(|(status, served, _)| status == 200 && served == remote_release)
        },
    );
    drop(serve);
    let https_log = std::fs::read_to_string(tls.path().join("serve.log")).unwrap_or_default();
    assert!(
        !https_log.contains(CANARY_PASSWORD) && !https_log.contains(&token),
        "a secret is in the HTTPS control plane's log"
    );
    runs.push(remote);

    // The password went nowhere: outputs, the control plane's log, the containers.
    let refs: Vec<&Run> = runs.iter().collect();
    assert_no_canary(&refs);
    let log = std::fs::read_to_string(cp.state_dir().join("serve.log")).unwrap_or_default();
    assert!(
        !log.contains(CANARY_PASSWORD),
        "the password is in serve.log"
    );
    let inspect = std::process::Command::new("docker")
        .arg("inspect")
        .args(cp.containers().iter().map(|c| c.0.clone()))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(CANARY_PASSWORD));
}

/// Push an OCI index naming the good image's manifest as linux/arm64 only; its digest.
fn push_index_without_amd64(
    registry: &Registry,
    creds: &RegistryCredentials,
    good: &ImageRef,
) -> String {
    // The good manifest's media type (Docker's schema 2, what the Engine pushes).
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": good.digest,
            "size": manifest_size(registry, good),
            "platform": {"os": "linux", "architecture": "arm64"}
        }]
    });
    let body = serde_json::to_vec(&index).unwrap();
    let digest = cutover_model::sha256_digest(&body);
    let client = reg::client_for(&registry.addr);
    let reference: oci_client::Reference =
        format!("{}/{REPO}:multi", registry.addr).parse().unwrap();
    block_on(async {
        let auth = oci_client::secrets::RegistryAuth::Basic(
            creds.username.clone(),
            CANARY_PASSWORD.to_string(),
        );
        client
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .expect("auth");
        client
            .push_manifest_raw(
                &reference,
                body,
                "application/vnd.oci.image.index.v1+json".parse().unwrap(),
            )
            .await
            .expect("push index");
    });
    digest
}

fn manifest_size(registry: &Registry, good: &ImageRef) -> u64 {
    let response = ureq::get(&format!(
        "http://{}/v2/{REPO}/manifests/{}",
        registry.addr, good.digest
    ))
    .header("Authorization", &registry.basic_auth())
    .header(
        "Accept",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    .call()
    .expect("get manifest");
    response
        .into_body()
        .read_to_vec()
        .expect("manifest body")
        .len() as u64
}

/// The envelopes with one byte of the first one's payload changed (the JSON stays valid).
fn alter_payload(envelopes: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut out = envelopes.to_vec();
    let mut envelope: serde_json::Value = serde_json::from_slice(&out[0]).unwrap();
    let engine = base64::engine::general_purpose::STANDARD;
    let mut payload = engine
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8(payload.clone()).unwrap();
    let at = text
        .find("\"production\"")
        .expect("the payload names the environment")
        + 1;
    payload[at] = b'P';
    envelope["payload"] = serde_json::Value::String(engine.encode(&payload));
    out[0] = serde_json::to_vec(&envelope).unwrap();
    out
}
