//! A failed health check explains itself: the step's error carries what the compute
//! provider can tell about the instance (state, exit code, OOM kill, last log lines).

mod common;

use common::*;
use cutover_executor::deployment_view;
use cutover_executor::fake::{self, FakeHealth};
use cutover_model::{DeploymentStatus, Diagnosis};

fn crashed() -> Diagnosis {
    Diagnosis {
        state: "exited".to_string(),
        exit_code: Some(3),
        oom_killed: false,
        error: None,
        restart_count: 1,
        logs: vec![
            "listening on 0.0.0.0:9999".to_string(),
            "fatal: database url [redacted] refused".to_string(),
        ],
    }
}

#[tokio::test]
async fn a_crash_looping_instance_reports_its_diagnosis_in_the_step_error() {
    let h = harness();
    h.second_plan().await;
    let name = fake::instance_name("r2", 0);
    h.fake.set_health(&name, FakeHealth::CrashLoop);
    h.fake.set_diagnosis(&name, crashed());
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "health-check-0");
    let DeploymentStatus::RolledBack { reason } = status else {
        unreachable!()
    };
    assert!(reason.contains("crash-looping"), "{reason}");
    assert!(
        reason.contains("container state: exited, exit code 3"),
        "{reason}"
    );
    assert!(
        reason.contains("| fatal: database url [redacted] refused"),
        "{reason}"
    );
    assert!(!reason.contains("check its logs"), "{reason}");

    // The step's error (what `cutover status` and the UI show) carries it too.
    let view = deployment_view(&h.store, "r2").unwrap();
    let step = view
        .steps
        .iter()
        .find(|s| s.id == "health-check-0")
        .expect("health-check-0 step");
    let error = step
        .error
        .as_deref()
        .expect("the step failed with an error");
    assert!(error.contains("last 2 log lines:"), "{error}");
    assert!(error.contains("| listening on 0.0.0.0:9999"), "{error}");
}

#[tokio::test]
async fn an_oom_kill_is_named() {
    let h = harness();
    h.second_plan().await;
    h.fake.set_health("r2", FakeHealth::CrashLoop);
    h.fake.set_diagnosis(
        "r2",
        Diagnosis {
            state: "exited".to_string(),
            exit_code: Some(137),
            oom_killed: true,
            ..Diagnosis::default()
        },
    );
    let status = h.run_to_end("r2", 0).await;
    let DeploymentStatus::RolledBack { reason } = status else {
        panic!("expected a rollback, got {status:?}")
    };
    assert!(reason.contains("exit code 137"), "{reason}");
    assert!(
        reason.contains("killed for exceeding its memory limit"),
        "{reason}"
    );
    assert!(reason.contains("it wrote no log lines"), "{reason}");
}

#[tokio::test]
async fn without_a_diagnosis_the_error_points_at_the_logs() {
    let h = harness();
    h.second_plan().await;
    h.fake
        .set_health(&fake::instance_name("r2", 0), FakeHealth::CrashLoop);
    let status = h.run_to_end("r2", 0).await;
    let DeploymentStatus::RolledBack { reason } = status else {
        panic!("expected a rollback, got {status:?}")
    };
    assert!(reason.contains("crash-looping"), "{reason}");
    assert!(reason.ends_with("check its logs"), "{reason}");
}
