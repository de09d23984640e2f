//! Guardrails through the real binary: an admin sets them with `cutover guardrails set`,
//! and a spec that loosens them is refused with exit code 2 and the list of what it
//! loosened, before anything is planned (no Docker needed: nothing gets that far).

use cutover_integration::{AppConfig, Project};

#[test]
fn a_spec_weaker_than_the_guardrails_exits_2_with_the_list() {
    let p = Project::new("guardrails");
    p.write_spec(&AppConfig::default());
    let rails = p.dir.path().join("production.toml");
    std::fs::write(&rails, "approvals = 1\n\n[gate]\nfail_on = \"high\"\n").unwrap();
    let rails = rails.display().to_string();

    // A bad file names its place; nothing is set.
    let bad = p.dir.path().join("bad.toml");
    std::fs::write(&bad, "approvals = 1\n[gate]\nfail_on = \"never\"\n").unwrap();
    let run = p.cutover(&[
        "guardrails",
        "set",
        "production",
        &bad.display().to_string(),
    ]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("bad.toml:3:11: gate.fail_on:"),
        "{}",
        run.stderr
    );

    p.cutover(&["guardrails", "set", "production", &rails])
        .assert_code(0);
    let shown = p.cutover(&["guardrails", "show", "production", "--output", "json"]);
    shown.assert_code(0);
    let shown = shown.json();
    assert_eq!(shown["current"]["version"], 1, "{shown}");
    assert_eq!(shown["current"]["guardrails"]["approvals"], 1);

    // The spec asks for no approval and fails only on critical findings.
    let run = p.cutover(&["plan"]);
    run.assert_code(2);
    for field in [
        "environments.production.approval",
        "environments.production.gate.fail_on",
    ] {
        assert!(
            run.stderr.contains(field),
            "{field} not listed:\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("required"), "{}", run.stderr);
    let run = p.cutover(&["deploy"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("environments.production.approval"),
        "{}",
        run.stderr
    );
    // Nothing was planned.
    let history = p.cutover(&["history", "--output", "json"]);
    history.assert_code(0);
    assert_eq!(history.json(), serde_json::json!([]));
    // The local admin's plan registered the project (audited), and status shows the
    // guardrails to approvers.
    let projects = p.cutover(&["projects", "list", "--output", "json"]);
    projects.assert_code(0);
    let dir = std::fs::canonicalize(p.dir.path()).unwrap();
    let roots = projects.json();
    assert!(
        roots
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == dir.display().to_string() && r["automatic"] == true),
        "{roots}"
    );
    let status = p.cutover(&["status", "--env", "production"]);
    assert!(
        status.stdout.contains("guardrails version 1"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("fail on high or worse"),
        "{}",
        status.stdout
    );
}
