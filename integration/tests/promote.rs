//! Promotion between environments through the real binary on local Docker: a staging
//! release's image goes to production without a build, under production's soak guardrail
//! (`requires_success_in = ["staging"]`, `soak`), which refuses an image that was not live
//! in staging long enough, was never live there, or was rolled back there.

use std::time::{Duration, Instant};

use cutover_integration::{
    get, require_docker, reserve_port, static_hello_binary, wait_for, AppConfig, Project, Run,
};

/// How long production wants an image live in staging. Short, so the test waits little;
/// the test waits until this much time has passed, computed from when staging went live.
const SOAK: Duration = Duration::from_secs(3);

/// A Docker build context around the static example binary with a marker file, so each
/// `marker` gives another image id.
fn context(p: &Project, marker: &str) -> String {
    let dir = p.dir.path().join("ctx");
    std::fs::create_dir_all(&dir).expect("context dir");
    std::fs::copy(static_hello_binary(), dir.join("app")).expect("copy binary");
    std::fs::write(dir.join("marker"), marker).expect("marker");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY app /app\nCOPY marker /marker\nUSER 65534:65534\nENTRYPOINT [\"/app\"]\n",
    )
    .expect("write Dockerfile");
    "context = \"ctx\"".to_string()
}

/// deploy.toml with production (the project's port), staging and dev, one replica each.
fn write_spec(p: &Project, staging: u16, dev: u16, marker: &str) {
    p.write_spec(&AppConfig {
        replicas: 1,
        build: Some(context(p, marker)),
        ..AppConfig::default()
    });
    let mut text = std::fs::read_to_string(p.spec_path()).expect("read spec");
    // dev keeps only its newest release and retires replaced ones at once (for gc).
    for (env, port, extra) in [
        ("staging", staging, "retire_after = \"5m\""),
        ("dev", dev, "retire_after = \"0s\"\nkeep_releases = 1"),
    ] {
        text.push_str(&format!(
            "\n[environments.{env}]\nlisten = \"127.0.0.1:{port}\"\nreplicas = 1\n{extra}\ndrain_timeout = \"5s\"\n\n[environments.{env}.gate]\nallow_missing_advisories = true\n"
        ));
    }
    std::fs::write(p.spec_path(), text).expect("write spec");
}

fn status_of(p: &Project, env: &str) -> serde_json::Value {
    let run = p.cutover(&["status", "--env", env, "-o", "json"]);
    run.assert_code(0);
    run.json()[0].clone()
}

fn image_of(p: &Project, env: &str) -> String {
    status_of(p, env)["current"]["image"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{env} has no current release"))
        .to_string()
}

fn detail(p: &Project, deployment: &str) -> serde_json::Value {
    let run = p.cutover(&["status", "--deployment", deployment, "-o", "json"]);
    run.assert_code(0);
    run.json()
}

#[track_caller]
fn assert_refused(run: &Run, words: &[&str]) {
    run.assert_code(2);
    for w in words {
        assert!(run.stderr.contains(w), "{w:?} not in:\n{}", run.stderr);
    }
}

#[test]
fn promotion_deploys_the_staging_image_only_after_its_soak() {
    if !require_docker() {
        return;
    }
    let p = Project::new("promote");
    let (staging_port, dev_port) = (reserve_port(), reserve_port());
    write_spec(&p, staging_port, dev_port, "one");
    let rails = p.dir.path().join("production-guardrails.toml");
    std::fs::write(
        &rails,
        format!(
            "requires_success_in = [\"staging\"]\nsoak = \"{}s\"\n",
            SOAK.as_secs()
        ),
    )
    .unwrap();
    p.cutover(&[
        "guardrails",
        "set",
        "production",
        &rails.display().to_string(),
    ])
    .assert_code(0);
    let shown = p.cutover(&["guardrails", "show", "production"]);
    assert!(
        shown.stdout.contains("live for 3s in staging"),
        "{}",
        shown.stdout
    );

    let deploying = Instant::now();
    p.cutover(&["deploy", "--env", "staging"]).assert_code(0);
    let deploy_took = deploying.elapsed();
    // staging-1 went live before the deploy command returned.
    let soaked_at = Instant::now() + SOAK;
    let staging_image = image_of(&p, "staging");

    // Too early: refused before anything is planned, saying where the image has been.
    let early = p.cutover(&["promote", "staging-1", "--to", "production"]);
    assert_refused(
        &early,
        &[
            &format!("image {staging_image} may not go to production"),
            "it was live in staging as staging-1 for",
            "still live",
            "more to go",
            "production requires 3s live in staging without a rollback",
        ],
    );
    let history = p.cutover(&["history", "--env", "production", "-o", "json"]);
    assert_eq!(history.json(), serde_json::json!([]), "nothing was planned");

    // A plain deploy to production builds an image that was never live in staging.
    let built = p.cutover(&["deploy", "--env", "production"]);
    assert_refused(
        &built,
        &[
            "a deploy builds a new image, which was never live in staging",
            "cutover promote",
        ],
    );

    // After the soak the promotion runs, without a build, the very same image: it is
    // accepted once the soak has passed (the refusal turns into a plan), and not long after.
    let mut plan = None;
    wait_for("the soak to pass", SOAK + Duration::from_secs(30), || {
        let run = p.cutover(&["promote", "staging-1", "--to", "production", "--plan"]);
        let accepted = run.code == 0;
        if accepted {
            plan = Some(run);
        } else {
            run.assert_code(2);
        }
        accepted
    });
    let plan = plan.expect("the promotion was planned");
    // staging-1 went live before `deploy` returned, so before `soaked_at`; the control
    // plane counts from then, never from later.
    assert!(
        Instant::now() + deploy_took >= soaked_at,
        "accepted before the soak had passed"
    );
    assert!(
        plan.stdout.contains("promoted from staging-1 (staging)"),
        "{}",
        plan.stdout
    );
    let started = Instant::now();
    p.cutover(&["promote", "staging-1", "--to", "production"])
        .assert_code(0);
    let took = started.elapsed();
    let promoted = detail(&p, "production-1");
    assert_eq!(promoted["kind"], "promote", "{promoted}");
    assert_eq!(promoted["promoted_from"]["release"], "staging-1");
    assert_eq!(promoted["promoted_from"]["env"], "staging");
    let steps = promoted["steps"].as_array().expect("steps");
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert!(
        !kinds.contains(&"build"),
        "a promotion builds nothing: {kinds:?}"
    );
    for kind in [
        "scan",
        "sign",
        "verify",
        "provision",
        "health-check",
        "shift-traffic",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    assert!(
        steps.iter().all(|s| s["state"] == "succeeded"),
        "{promoted}"
    );
    assert_eq!(
        image_of(&p, "production"),
        staging_image,
        "the same image id"
    );
    let (code, release, _) = get(&p.url()).expect("production answers");
    assert_eq!((code, release.as_str()), (200, "production-1"));
    let ms = |kind: &str| -> u64 {
        steps
            .iter()
            .filter(|s| s["kind"] == kind)
            .filter_map(|s| s["duration_ms"].as_u64())
            .max()
            .unwrap_or(0)
    };
    eprintln!(
        "promotion: {} from command to exit (traffic on green; the deploy that built it: {}); scan {}ms, sign {}ms, verify {}ms, provision {}ms, health {}ms, shift {}ms",
        cutover_model::format_duration(took),
        cutover_model::format_duration(deploy_took),
        ms("scan"),
        ms("sign"),
        ms("verify"),
        ms("provision"),
        ms("health-check"),
        ms("shift-traffic")
    );
    // `cutover verify` shows where the image has been.
    let verified = p.cutover(&["verify", &staging_image, "--env", "production"]);
    verified.assert_code(0);
    for line in [
        "live in staging as staging-1, live from",
        "live in production as production-1, live from",
    ] {
        assert!(
            verified.stdout.contains(line),
            "{line:?} not in {}",
            verified.stdout
        );
    }
    let history = p.cutover(&["history", "--env", "production"]);
    assert!(
        history.stdout.contains("promoted from staging-1"),
        "{}",
        history.stdout
    );

    // An image that was never live in staging (dev's own build) is refused.
    write_spec(&p, staging_port, dev_port, "two");
    p.cutover(&["deploy", "--env", "dev"]).assert_code(0);
    let never = p.cutover(&["promote", "dev-1", "--to", "production"]);
    assert_refused(
        &never,
        &[
            "it was never live in staging",
            "where it has been: dev as dev-1 for",
        ],
    );

    // An image rolled back in staging is refused, however long it was live.
    write_spec(&p, staging_port, dev_port, "three");
    p.cutover(&["deploy", "--env", "staging"]).assert_code(0);
    let rolled_image = image_of(&p, "staging");
    assert_ne!(rolled_image, staging_image);
    p.cutover(&["rollback", "--env", "staging", "--to", "staging-1"])
        .assert_code(0);
    let rolled = p.cutover(&["promote", "staging-2", "--to", "production"]);
    assert_refused(
        &rolled,
        &[
            &format!("image {rolled_image} may not go to production"),
            "it was rolled back in staging: staging as staging-2 for",
            "rolled back by staging-3",
        ],
    );
    assert_eq!(
        image_of(&p, "production"),
        staging_image,
        "production untouched"
    );

    // Retention: dev keeps one release; dev-1 is pinned, dev-2 is neither.
    let dev1_image = image_of(&p, "dev");
    p.cutover(&["pin", "dev-1"]).assert_code(0);
    write_spec(&p, staging_port, dev_port, "four");
    p.cutover(&["deploy", "--env", "dev"]).assert_code(0);
    let dev2_image = image_of(&p, "dev");
    write_spec(&p, staging_port, dev_port, "five");
    p.cutover(&["deploy", "--env", "dev"]).assert_code(0);
    let dev3_image = image_of(&p, "dev");
    // The reaper removes dev's replaced instances at once (retire_after = 0s).
    wait_for("dev-1 and dev-2 retired", Duration::from_secs(30), || {
        !p.containers()
            .iter()
            .any(|(_, release, _)| release == "dev-1" || release == "dev-2")
    });
    let supply = p.state_dir().join("supply");
    let attestations = |image: &str| supply.join(image.trim_start_matches("sha256:"));
    assert!(
        attestations(&dev2_image).is_dir(),
        "dev-2 was scanned and signed"
    );

    let dry = p.cutover(&["gc", "--dry-run", "-o", "json"]);
    dry.assert_code(0);
    let dry = dry.json();
    assert_eq!(dry["dry_run"], true);
    let removed: Vec<&str> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["image_id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [dev2_image.as_str()], "{dry}");
    assert!(image_exists(&dev2_image), "a dry run removes nothing");

    let run = p.cutover(&["gc"]);
    run.assert_code(0);
    assert!(run.stdout.contains("1 image(s) removed"), "{}", run.stdout);
    assert!(!image_exists(&dev2_image), "dev-2's image is gone");
    assert!(!attestations(&dev2_image).exists(), "with its attestations");
    let report = p.cutover(&["gc", "-o", "json"]).json();
    let kept = |image: &str| -> String {
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["image_id"] == image)
            .map(|k| k["reasons"].to_string())
            .unwrap_or_else(|| panic!("{image} not kept: {report}"))
    };
    assert!(
        kept(&dev1_image).contains("dev/dev-1 pinned by"),
        "{report}"
    );
    assert!(
        kept(&dev3_image).contains("current in dev (dev-3)"),
        "{report}"
    );
    assert!(
        kept(&staging_image).contains("current in production (production-1)"),
        "{report}"
    );
    assert!(
        kept(&rolled_image).contains("instance"),
        "staging-2 is warm: {report}"
    );
    for image in [&dev1_image, &dev3_image, &staging_image, &rolled_image] {
        assert!(image_exists(image), "{image} kept");
    }
    // Unpinned, dev-1 goes too.
    p.cutover(&["unpin", "dev-1"]).assert_code(0);
    p.cutover(&["gc"]).assert_code(0);
    assert!(!image_exists(&dev1_image));
    assert!(image_exists(&dev3_image));
}

fn image_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
