//! Crash-recovery property: whatever journal prefix a crash leaves behind (and however many
//! times the process dies while recovering), running again reaches the right end state.
//!
//! A crash "after journal entry k" leaves exactly the journal prefix `0..=k` and the world as
//! it was when entry k was written (plus whatever in-flight actions of concurrent steps had
//! done), which is what a SIGKILL at that point leaves.

mod common;

use common::*;
use cutover_executor::fake;
use cutover_executor::replay;
use cutover_model::{ApprovalSpec, DeploymentStatus, ProviderError};
use cutover_store::{Approval, Decision};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Failures the failing variant injects: (step, does the action act before failing).
const FAILURES: [(&str, bool); 7] = [
    ("scan", false),
    ("verify", false),
    ("provision-1", true),
    ("health-check-0", false),
    ("shift-traffic", true),
    ("record", true),
    ("retire", true),
];

fn check_journal_replays(h: &Harness) {
    let plan = h.store.plan("r2").unwrap().unwrap();
    let journal = h.store.journal("r2").unwrap();
    let state = replay(&plan, &journal).expect("final journal replays");
    assert!(state.finished.is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn deploy_recovers_from_crashes_at_any_journal_prefix(
        crashes in proptest::collection::vec(0u64..30, 1..4),
        parallel in 1usize..5,
    ) {
        let rt = runtime();
        rt.block_on(async {
            let h = harness_with(parallel);
            h.second_plan().await;
            for seq in &crashes {
                h.faults.crash_after_seq(*seq);
            }
            let status = h.run_to_end("r2", crashes.len()).await;
            assert_eq!(status, DeploymentStatus::Succeeded, "crashes at {crashes:?}");
            h.assert_deployed_r2();
            check_journal_replays(&h);
            // The first run writes well over 15 entries, so a crash below that fired.
            let starts = h
                .store
                .journal("r2")
                .unwrap()
                .iter()
                .filter(|e| matches!(e.event, cutover_model::JournalEvent::DeploymentStarted { .. }))
                .count();
            if crashes.iter().any(|s| *s < 15) {
                assert!(starts >= 2, "a crash at {crashes:?} fired");
            }
        });
    }

    #[test]
    fn failing_deploy_recovers_from_crashes_at_any_journal_prefix(
        crashes in proptest::collection::vec(0u64..30, 1..4),
        parallel in 1usize..5,
        failure in 0usize..FAILURES.len(),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let h = harness_with(parallel);
            h.second_plan().await;
            let (step, partial) = FAILURES[failure];
            let error = ProviderError::permanent(format!("injected failure of {step}"));
            if partial {
                h.faults.fail_after_action(step, error);
            } else {
                h.faults.fail_action(step, error);
            }
            for seq in &crashes {
                h.faults.crash_after_seq(*seq);
            }
            let status = h.run_to_end("r2", crashes.len()).await;
            // A crash can interrupt the failing step before its failure is journaled; it
            // then runs again on resume and fails again (the rule is persistent).
            h.assert_rolled_back_to_r1(&status, step);
            check_journal_replays(&h);
        });
    }

    #[test]
    fn gated_deploy_recovers_from_crashes_at_any_journal_prefix(
        crashes in proptest::collection::vec(0u64..40, 1..4),
        parallel in 1usize..5,
        reject in any::<bool>(),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let h = harness_with(parallel);
            let r1 = h.first_release().await;
            let gate = ApprovalSpec { required: 1, timeout: std::time::Duration::from_secs(60) };
            let plan = fake::planned_deploy_with_approval("r2", ENV, Some(&r1), 2, gate);
            h.save(&plan);
            // The decision is already there: the gate passes (or rejects) on its first look.
            h.store.add_approval(&Approval {
                deployment_id: "r2".to_string(),
                by: "bob".to_string(),
                decision: if reject { Decision::Reject } else { Decision::Approve },
                plan_digest: plan.digest.clone(),
                image_id: cutover_model::sha256_digest(b"cutover/hello:r2"),
                view_digest: String::new(),
                comment: "checked".to_string(),
                at_ms: 1,
            }).unwrap();
            for seq in &crashes {
                h.faults.crash_after_seq(*seq);
            }
            let status = h.run_to_end("r2", crashes.len()).await;
            if reject {
                h.assert_rolled_back_to_r1(&status, "approval");
            } else {
                assert_eq!(status, DeploymentStatus::Succeeded, "crashes at {crashes:?}");
                h.assert_deployed_r2();
            }
            check_journal_replays(&h);
        });
    }
}
