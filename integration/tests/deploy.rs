//! End-to-end: the real `cutover` binary against the local Docker Engine.

use std::time::{Duration, Instant};

use cutover_integration::{
    account, alive, kill, require_docker, wait_for, AppConfig, Load, Project,
};

/// Deploy v1 with one replica, then write `next` as the spec; returns the first release.
fn deployed_once_then(p: &Project, next: AppConfig) -> String {
    p.write_spec(&AppConfig {
        replicas: 1,
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let first = p.current_release();
    p.write_spec(&AppConfig {
        replicas: 1,
        ..next
    });
    first
}

#[test]
fn deploy_redeploy_under_load_then_warm_rollback() {
    if !require_docker() {
        return;
    }
    let p = Project::new("redeploy");
    p.write_spec(&AppConfig::default());
    let run = p.cutover(&["deploy"]);
    run.assert_code(0);
    assert!(run.stdout.contains("succeeded"), "{}", run.stdout);
    let first = p.current_release();
    let (status, release, body) = p.get().expect("first release answers");
    assert_eq!(
        (status, release.as_str(), body.trim()),
        (200, first.as_str(), "hello from v1")
    );
    assert_eq!(p.running_releases(), vec![first.clone(), first.clone()]);

    // Redeploy a changed app while a client hammers the listen address.
    let load = Load::start(&p.url(), 4, Duration::from_secs(120));
    wait_for("load to get going", Duration::from_secs(5), || {
        load.ok_so_far() > 20
    });
    p.write_spec(&AppConfig {
        version: "v2".into(),
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let second = p.current_release();
    assert_ne!(first, second);
    wait_for(
        "responses from the new release",
        Duration::from_secs(5),
        || p.get().map(|r| r.1 == second).unwrap_or(false),
    );
    wait_for(
        "the load to be served by the new release",
        Duration::from_secs(5),
        || load.has_seen(&second),
    );
    let report = load.stop();
    assert_eq!(
        report.failed, 0,
        "failed requests during cutover: {:?}",
        report.failures
    );
    assert!(
        report.ok > 100,
        "too few requests to prove anything: {report:?}"
    );
    assert_eq!(report.releases, vec![first.clone(), second.clone()]);
    let (_, _, body) = p.get().expect("v2 answers");
    assert_eq!(body.trim(), "hello from v2");

    // Blue stays warm: both releases run until retire_after.
    let mut running = p.running_releases();
    running.dedup();
    assert_eq!(running, {
        let mut v = vec![first.clone(), second.clone()];
        v.sort();
        v
    });

    // History names both deploys with their image digests.
    let history = p.cutover(&["history", "-o", "json"]);
    history.assert_code(0);
    let lines = history.json();
    let lines = lines.as_array().expect("history is a list");
    assert_eq!(lines.len(), 2);
    for line in lines {
        assert_eq!(line["status"], "succeeded");
        assert!(
            line["image_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("sha256:"),
            "{line}"
        );
        // The socket's peer, not the name the command claimed (CUTOVER_USER=mallory).
        assert_eq!(line["requested_by"], account().as_str());
    }

    // Warm rollback under load: traffic returns to the first release, no failures.
    let load = Load::start(&p.url(), 4, Duration::from_secs(60));
    wait_for("load to get going", Duration::from_secs(5), || {
        load.ok_so_far() > 20
    });
    let started = Instant::now();
    let run = p.cutover(&["rollback"]);
    run.assert_code(0);
    let took = started.elapsed();
    wait_for(
        "responses from the first release",
        Duration::from_secs(2),
        || p.get().map(|r| r.1 == first).unwrap_or(false),
    );
    let report = load.stop();
    assert_eq!(
        report.failed, 0,
        "failed requests during rollback: {:?}",
        report.failures
    );
    assert_eq!(p.current_release(), first);
    assert!(took < Duration::from_secs(5), "warm rollback took {took:?}");
    // It rebuilt nothing and provisioned nothing: the same containers serve.
    let history = p.cutover(&["history", "-o", "json"]).json();
    assert_eq!(history[0]["kind"], "rollback");
    assert_eq!(history[0]["release_id"].as_str(), Some(first.as_str()));
}

#[test]
fn cold_rollback_reprovisions_from_the_pinned_image() {
    if !require_docker() {
        return;
    }
    let p = Project::new("cold");
    p.write_spec(&AppConfig {
        retire_after: "1s".into(),
        replicas: 1,
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let first = p.current_release();
    p.write_spec(&AppConfig {
        version: "v2".into(),
        retire_after: "1s".into(),
        replicas: 1,
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let second = p.current_release();
    // The reaper retires the first release after retire_after.
    wait_for(
        "the first release to be retired",
        Duration::from_secs(20),
        || !p.containers().iter().any(|c| c.1 == first),
    );
    let run = p.cutover(&["rollback"]);
    run.assert_code(0);
    assert_eq!(p.current_release(), first);
    let (status, release, body) = p.get().expect("rolled back release answers");
    assert_eq!(
        (status, release.as_str(), body.trim()),
        (200, first.as_str(), "hello from v1")
    );
    // Re-provisioned from the pinned image: no build step ran.
    let plan = p.cutover(&["status", "-o", "json"]).json();
    let steps: Vec<String> = plan[0]["latest"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        !steps.iter().any(|k| k == "build"),
        "rollback rebuilt: {steps:?}"
    );
    assert!(steps.iter().any(|k| k == "provision"), "{steps:?}");
    let _ = second;
}

#[test]
fn failing_health_check_rolls_back_automatically() {
    if !require_docker() {
        return;
    }
    let p = Project::new("unhealthy");
    let first = deployed_once_then(
        &p,
        AppConfig {
            version: "v2".into(),
            fail_health: true,
            deadline: "3s".into(),
            ..AppConfig::default()
        },
    );
    let run = p.cutover(&["deploy"]);
    run.assert_code(3);
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    assert_eq!(p.current_release(), first);
    let (_, release, body) = p.get().expect("blue still answers");
    assert_eq!(
        (release.as_str(), body.trim()),
        (first.as_str(), "hello from v1")
    );
    // Green is gone.
    assert_eq!(p.running_releases(), vec![first.clone()]);
    let history = p.cutover(&["history", "-o", "json"]).json();
    assert_eq!(history[0]["status"], "rolled_back");
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("healthz"),
        "{}",
        history[0]
    );
}

#[test]
fn crash_looping_release_rolls_back_fast() {
    if !require_docker() {
        return;
    }
    let p = Project::new("crashloop");
    let first = deployed_once_then(
        &p,
        AppConfig {
            crash: true,
            ..AppConfig::default()
        },
    );
    let started = Instant::now();
    let run = p.cutover(&["deploy"]);
    run.assert_code(3);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.current_release(), first);
    assert_eq!(p.running_releases(), vec![first]);
    assert!(
        !p.containers().iter().any(|c| !c.2),
        "stopped containers left: {:?}",
        p.containers()
    );
}

#[test]
fn sigkill_of_the_control_plane_mid_deploy_loses_no_request_and_resumes() {
    if !require_docker() {
        return;
    }
    let p = Project::new("sigkill");
    p.write_spec(&AppConfig::default());
    p.cutover(&["deploy"]).assert_code(0);
    let mut releases = vec![p.current_release()];
    // Kill the control plane at different points of successive deploys.
    for (round, point) in [
        "build",
        "provision-0",
        "health-check-1",
        "shift-traffic",
        "record",
    ]
    .iter()
    .enumerate()
    {
        let load = Load::start(&p.url(), 3, Duration::from_secs(120));
        wait_for("load to get going", Duration::from_secs(5), || {
            load.ok_so_far() > 10
        });
        p.write_spec(&AppConfig {
            version: format!("v{}", round + 2),
            ..AppConfig::default()
        });
        let started = p.cutover(&["deploy", "--detach"]);
        started.assert_code(0);
        let id = started.stdout.trim().to_string();
        // Wait for the step to start (or finish), then SIGKILL the control plane.
        wait_for(
            &format!("step {point} of {id}"),
            Duration::from_secs(60),
            || {
                let detail = p.cutover(&["status", "--deployment", &id, "-o", "json"]);
                detail.code == 0
                    && detail.json()["steps"]
                        .as_array()
                        .map(|steps| {
                            steps
                                .iter()
                                .any(|s| s["id"] == *point && s["state"] != "not-started")
                        })
                        .unwrap_or(false)
            },
        );
        let pid = p.serve_pid().expect("control plane pid");
        kill(pid, libc::SIGKILL);
        wait_for("the control plane to die", Duration::from_secs(5), || {
            !alive(pid)
        });
        let run = p.cutover(&["resume"]);
        run.assert_code(0);
        let report = load.stop();
        assert_eq!(
            report.failed, 0,
            "round {round} ({point}): failed requests {:?}",
            report.failures
        );
        let new = p.current_release();
        assert_eq!(
            new, id,
            "round {round}: the interrupted deployment finished"
        );
        let (_, release, _) = p.get().expect("answers");
        assert_eq!(release, new);
        // Exactly the replicas of the new release run, plus the warm previous one: no
        // orphan, no duplicate.
        let running = p.running_releases();
        assert_eq!(
            running.iter().filter(|r| **r == new).count(),
            2,
            "{running:?}"
        );
        let previous = releases.last().cloned().expect("a previous release");
        for r in &running {
            assert!(
                r == &new || releases.contains(r),
                "orphan container of {r}: {running:?}"
            );
        }
        assert!(
            p.containers().iter().all(|c| c.2),
            "stopped containers: {:?}",
            p.containers()
        );
        let _ = previous;
        releases.push(new);
    }
}

#[test]
fn sigkill_of_the_proxy_restores_it_with_its_routes() {
    if !require_docker() {
        return;
    }
    let p = Project::new("proxykill");
    p.write_spec(&AppConfig {
        replicas: 1,
        ..AppConfig::default()
    });
    p.cutover(&["deploy"]).assert_code(0);
    let release = p.current_release();
    let pid = p.proxy_pid().expect("proxy pid");
    kill(pid, libc::SIGKILL);
    wait_for("the proxy to die", Duration::from_secs(5), || !alive(pid));
    // The control plane notices and restarts it; routes come back from disk.
    wait_for("traffic to flow again", Duration::from_secs(10), || {
        p.get()
            .map(|r| r.0 == 200 && r.1 == release)
            .unwrap_or(false)
    });
    let new_pid = p.proxy_pid().expect("new proxy pid");
    assert_ne!(new_pid, pid);
}

#[test]
fn a_second_deploy_for_the_same_environment_is_refused() {
    if !require_docker() {
        return;
    }
    let p = Project::new("concurrent");
    p.write_spec(&AppConfig {
        replicas: 1,
        deadline: "30s".into(),
        ..AppConfig::default()
    });
    let first = p.cutover(&["deploy", "--detach"]);
    first.assert_code(0);
    let id = first.stdout.trim().to_string();
    let second = p.cutover(&["deploy"]);
    second.assert_code(5);
    assert!(
        second.stderr.contains(&id),
        "refusal names the holder: {}",
        second.stderr
    );
    assert!(second.stderr.contains(&account()), "{}", second.stderr);
    assert!(!second.stderr.contains("mallory"), "{}", second.stderr);
    // The first one finishes normally.
    p.cutover(&["resume"]);
    wait_for(
        "the first deploy to finish",
        Duration::from_secs(60),
        || {
            p.cutover(&["status", "--deployment", &id, "-o", "json"])
                .json()["status"]
                == "succeeded"
        },
    );
}

#[test]
fn malformed_specs_are_clear_errors_and_create_nothing() {
    if !require_docker() {
        return;
    }
    let p = Project::new("malformed");
    let cases: &[(&str, &str)] = &[
        ("app = \"x\"\n[build\n", "deploy.toml:2"),
        ("app = \"x\"\ncolour = \"blue\"\n", "colour"),
        (
            "app = \"x\"\n[build]\ncargo = { manifest = \"Cargo.toml\", bin = \"x\" }\n[environments.production]\nlisten = \"127.0.0.1:1\"\nreplicas = 0\n",
            "replicas",
        ),
        (
            "app = \"x\"\n[build]\ncargo = { manifest = \"Cargo.toml\", bin = \"x\" }\n[environments.production]\nlisten = \"nowhere\"\n",
            "listen",
        ),
    ];
    for (text, expect) in cases {
        std::fs::write(p.spec_path(), text).expect("write spec");
        for cmd in [&["deploy"][..], &["plan"][..]] {
            let run = p.cutover(cmd);
            run.assert_code(2);
            assert!(
                run.stderr.contains(expect),
                "{cmd:?} on {text:?}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains("deploy.toml:"),
                "names the file and line: {}",
                run.stderr
            );
        }
    }
    assert!(
        !p.state_dir().exists(),
        "a bad spec started or created something"
    );
    assert!(p.containers().is_empty());
}
