//! Every exit code of `cutover --help`'s table, driven through the real binary. Codes whose
//! scenario another test already runs are asserted there:
//!
//! | code | meaning | driven by |
//! |---|---|---|
//! | 0 | success | `deploy.rs` (every deploy and rollback) |
//! | 1 | error | here: a control plane that cannot start; a bad `--http` |
//! | 2 | bad input | `deploy.rs::malformed_specs_are_clear_errors_and_create_nothing` |
//! | 3 | failed and rolled back | `deploy.rs::failing_health_check_rolls_back_automatically` |
//! | 4 | stuck | here: an undo made to fail with the `CUTOVER_TEST_FAIL_UNDO` hook |
//! | 5 | environment lease held | `deploy.rs::a_second_deploy_for_the_same_environment_is_refused` |
//! | 6 | refused by the supply chain | `supply.rs` (planted secret, vulnerable package, tampered attestations) |

use std::process::Command;

use cutover_integration::{cutover_bin, require_docker, AppConfig, Project};

#[test]
fn the_help_documents_every_exit_code() {
    let out = Command::new(cutover_bin())
        .arg("--help")
        .output()
        .expect("run cutover --help");
    assert!(out.status.success(), "cutover --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    let table = help
        .split("Exit codes:")
        .nth(1)
        .unwrap_or_else(|| panic!("no exit code table in --help:\n{help}"));
    for (code, words) in [
        (0, "success"),
        (1, "error"),
        (2, "bad input"),
        (3, "rolled back"),
        (4, "stuck"),
        (5, "another deployment holds the environment"),
        (6, "supply chain"),
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(words)),
            "exit code {code} ({words}) is not in the table:\n{table}"
        );
    }
}

#[test]
fn a_control_plane_that_cannot_start_exits_1() {
    let p = Project::new("nostate");
    p.write_spec(&AppConfig::default());
    // The state directory would have to be made inside a regular file.
    let blocker = p.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a file").expect("write the blocking file");
    let state = blocker.join("state");
    let state = state.display().to_string();
    let run = p.cutover(&["status", "--state-dir", &state]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("not-a-dir"),
        "the error names the state directory: {}",
        run.stderr
    );
    assert!(
        p.serve_pid().is_none(),
        "no control plane runs: {:?}",
        p.serve_pid()
    );
}

#[test]
fn a_bad_http_address_exits_1_and_says_what_to_use() {
    let p = Project::new("badhttp");
    p.write_spec(&AppConfig::default());
    let run = p.cutover(&["serve", "--http", "nowhere"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("--http") && run.stderr.contains("host:port"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failed_undo_leaves_the_deployment_stuck_and_exits_4() {
    if !require_docker() {
        return;
    }
    let p = Project::new("stuck");
    p.write_spec(&AppConfig {
        replicas: 1,
        fail_health: true,
        deadline: "2s".into(),
        ..AppConfig::default()
    });
    // The control plane started by this command cannot remove the instance it provisioned.
    let run = p.cutover_with_env(&["deploy"], &[("CUTOVER_TEST_FAIL_UNDO", "provision-0")]);
    run.assert_code(4);
    assert!(
        run.stdout.contains("stuck") || run.stderr.contains("stuck"),
        "says the deployment is stuck: {}\n{}",
        run.stdout,
        run.stderr
    );
    let history = p.cutover(&["history", "-o", "json"]).json();
    assert_eq!(history[0]["status"], "stuck", "{}", history[0]);
    // A stuck deployment keeps the environment: the next deploy is refused.
    p.cutover(&["deploy"]).assert_code(5);
}
