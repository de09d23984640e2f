//! End-to-end: a release that fails its health check explains itself. The deploy's error,
//! the history and `cutover status` carry the container's state and its last log lines,
//! with the values of its environment redacted.

use cutover_integration::{AppConfig, Project};

#[test]
fn an_unhealthy_release_reports_its_state_and_redacted_logs() {
    let p = Project::new("diagnosis");
    // The app prints its VERSION at start; the value must not reach any output.
    let canary = format!("canary-{}", std::process::id());
    p.write_spec(&AppConfig {
        version: canary.clone(),
        replicas: 1,
        fail_health: true,
        deadline: "10s".into(),
        ..AppConfig::default()
    });
    let run = p.cutover(&["deploy"]);
    run.assert_code(3);
    let deploy_output = format!("{}\n{}", run.stdout, run.stderr);

    let history = p.cutover(&["history", "-o", "json"]);
    history.assert_code(0);
    let reason = history.json()[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("did not become healthy"), "{reason}");
    assert!(reason.contains("container state: running"), "{reason}");
    assert!(reason.contains("last 1 log line:"), "{reason}");
    assert!(
        reason.contains("| hello [redacted] listening on :8080"),
        "{reason}"
    );

    let status = p.cutover(&["status"]);
    status.assert_code(0);
    assert!(
        status.stdout.contains("container state: running")
            && status
                .stdout
                .contains("| hello [redacted] listening on :8080"),
        "status does not show the diagnosis:\n{}",
        status.stdout
    );
    for (what, text) in [
        ("deploy", deploy_output.as_str()),
        ("history", history.stdout.as_str()),
        ("status", status.stdout.as_str()),
        ("status stderr", status.stderr.as_str()),
    ] {
        assert!(
            !text.contains(&canary),
            "{what} leaks an env value:\n{text}"
        );
    }
    assert!(
        deploy_output.contains("listening on :8080"),
        "the deploy's error does not show the log tail:\n{deploy_output}"
    );
}
