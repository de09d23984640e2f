mod common;

use std::time::Duration;

use common::*;
use cutover_executor::fake::{self, FakeHealth};
use cutover_executor::{deployment_view, reap_retirements, CrashPoint, ExecError};
use cutover_model::{Action, DeploymentStatus, JournalEvent, ProviderError, StepOutput};
use cutover_store::Lease;

fn far_future() -> u64 {
    cutover_model::now_ms() + 3_600_000
}

#[tokio::test]
async fn first_deploy_succeeds() {
    let h = harness();
    let r1 = h.first_release().await;
    h.assert_route_on("r1");
    assert_eq!(r1.instances.len(), 2);
    assert_eq!(r1.image.tag, "cutover/hello:r1");
    assert!(h.store.retirements(ENV).unwrap().is_empty());
    assert!(h.store.lease(ENV).unwrap().is_none());
    let record = h.store.deployment("r1").unwrap().unwrap();
    assert!(record.finished_at_ms.is_some());
    let history = h.store.history(ENV).unwrap();
    assert_eq!(history[0].outcome, "succeeded");
    let view = deployment_view(&h.store, "r1").unwrap();
    assert!(
        view.steps.iter().all(|s| s.state == "succeeded"),
        "{view:?}"
    );
    assert!(view.steps.iter().all(|s| s.output.is_some()));
}

#[tokio::test]
async fn blue_green_deploy_then_warm_rollback_then_reap() {
    let h = harness();
    h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    assert_eq!(h.fake.world().drains, 1);

    let created_before = h.fake.world().created.len();
    let plan = h.rollback_to_r1();
    h.save(&plan);
    assert_eq!(h.run_to_end("rb3", 0).await, DeploymentStatus::Succeeded);
    h.assert_route_on("r1");
    assert_eq!(
        h.fake.world().created.len(),
        created_before,
        "warm: nothing new"
    );
    assert_eq!(
        h.store.current_release_id(ENV).unwrap().as_deref(),
        Some("r1")
    );
    // r1 is current again: its old retirement is cancelled; r2's instances go.
    let reaped = reap_retirements(&h.store, &h.fake, far_future())
        .await
        .unwrap();
    assert_eq!(reaped, 1);
    assert!(h.fake.instances_of("r2").is_empty());
    assert_eq!(h.fake.instances_of("r1").len(), 2);
    assert!(h.store.retirements(ENV).unwrap().is_empty());
}

#[tokio::test]
async fn cold_rollback_reprovisions_from_the_pinned_image() {
    let h = harness();
    let (r1, _) = h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    // The warm window passes: r1's instances are removed.
    assert_eq!(
        reap_retirements(&h.store, &h.fake, far_future())
            .await
            .unwrap(),
        1
    );
    assert!(h.fake.instances_of("r1").is_empty());

    let r2 = h.store.release(ENV, "r2").unwrap().unwrap();
    let plan = fake::planned_rollback("rb3", ENV, &r1, Some(&r2), &[]);
    h.save(&plan);
    assert_eq!(h.run_to_end("rb3", 0).await, DeploymentStatus::Succeeded);
    h.assert_route_on("r1");
    let world = h.fake.world();
    let r1_instances: Vec<_> = world
        .instances
        .values()
        .filter(|i| i.release == "r1")
        .collect();
    assert_eq!(r1_instances.len(), 2);
    assert!(r1_instances.iter().all(|i| i.image_id == r1.image.id));
    drop(world);
    // The release record is unchanged (immutable).
    assert_eq!(h.store.release(ENV, "r1").unwrap().unwrap(), r1);
}

#[tokio::test]
async fn warm_rollback_fails_when_the_instance_is_gone() {
    let h = harness();
    let (r1, _) = h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    // Planned warm while every instance of r1 runs; one is gone when the rollback runs.
    let plan = h.rollback_to_r1();
    assert!(plan.step("adopt-1").is_some(), "planned warm: {plan:?}");
    h.save(&plan);
    h.fake.world().instances.remove(&r1.instances[1]);
    let status = h.run_to_end("rb3", 0).await;
    match &status {
        DeploymentStatus::RolledBack { reason } => {
            assert!(reason.contains("adopt-1"), "{reason}");
            assert!(reason.contains("cold rollback"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    h.assert_route_on("r2");
    // Undo of adopt does not remove the adopted instance.
    assert!(h.fake.world().instances.contains_key(&r1.instances[0]));
    assert_eq!(
        h.store.current_release_id(ENV).unwrap().as_deref(),
        Some("r2")
    );
}

#[tokio::test]
async fn every_step_kind_failing_unwinds_to_blue() {
    // (step, whether the action does its work before failing)
    let cases = [
        ("build", false),
        ("scan", false),
        ("sign", false),
        ("verify", false),
        ("provision-1", true),
        ("health-check-0", false),
        ("shift-traffic", true),
        ("drain", false),
        ("record", true),
        ("retire", true),
    ];
    for (step, partial) in cases {
        let h = harness();
        h.second_plan().await;
        let error = ProviderError::permanent(format!("injected failure of {step}"));
        if partial {
            h.faults.fail_after_action(step, error);
        } else {
            h.faults.fail_action(step, error);
        }
        let status = h.run_to_end("r2", 0).await;
        h.assert_rolled_back_to_r1(&status, step);
        let view = deployment_view(&h.store, "r2").unwrap();
        let failed = view.steps.iter().find(|s| s.id == step).unwrap();
        assert!(
            failed.state == "failed" || failed.state == "undone",
            "{step}: {}",
            failed.state
        );
    }
}

#[tokio::test]
async fn crash_looping_instance_fails_health_check_at_once() {
    let h = harness();
    h.second_plan().await;
    h.fake
        .set_health(&fake::instance_name("r2", 0), FakeHealth::CrashLoop);
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "health-check-0");
    let DeploymentStatus::RolledBack { reason } = status else {
        unreachable!()
    };
    assert!(reason.contains("crash-looping"), "{reason}");
}

#[tokio::test]
async fn unhealthy_instance_fails_at_the_deadline() {
    let h = harness();
    let r1 = h.first_release().await;
    let mut spec = fake::spec_for(ENV, 2, None);
    spec.health.deadline = Duration::from_millis(30);
    let plan = fake::planned_deploy_of(&spec, "r2", Some(&r1));
    h.save(&plan);
    h.fake
        .set_health("r2", FakeHealth::Unhealthy("status 503".into()));
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "health-check");
    let DeploymentStatus::RolledBack { reason } = status else {
        unreachable!()
    };
    assert!(reason.contains("status 503"), "{reason}");
}

#[tokio::test]
async fn every_action_run_twice_is_idempotent() {
    let baseline = {
        let h = harness_with(1);
        h.second_plan().await;
        h.run_to_end("r2", 0).await;
        let n = h.fake.world().route_changes.len();
        n
    };
    let plan = fake::planned_deploy("r2", ENV, None, 2);
    for step in plan.steps.iter().map(|s| s.id.clone()) {
        for point in [CrashPoint::AfterStarted, CrashPoint::AfterAction] {
            let h = harness_with(1);
            h.second_plan().await;
            h.faults.crash_at(&step, point);
            let err = h.exec.run("r2").await.unwrap_err();
            assert!(err.is_injected_crash(), "{err}");
            assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
            h.assert_deployed_r2();
            assert_eq!(
                h.fake.world().route_changes.len(),
                baseline,
                "{step} {point:?}: one route change per shift"
            );
            assert!(h.fake.world().built.values().all(|n| *n == 1));
            let starts = h
                .store
                .journal("r2")
                .unwrap()
                .iter()
                .filter(|e| matches!(e.event, JournalEvent::DeploymentStarted { .. }))
                .count();
            assert_eq!(starts, 2);
        }
    }
}

#[tokio::test]
async fn every_undo_run_twice_is_idempotent() {
    let plan = fake::planned_deploy("r2", ENV, None, 2);
    // The last step (one at a time, in plan order) fails, so every other step is undone.
    let last = plan.steps.last().expect("steps").id.clone();
    for step in plan.steps.iter().map(|s| s.id.clone()) {
        if step == last {
            continue;
        }
        for point in [CrashPoint::AfterUndoStarted, CrashPoint::AfterUndo] {
            let h = harness_with(1);
            h.second_plan().await;
            h.faults
                .fail_action(&last, ProviderError::permanent("last step failed"));
            h.faults.crash_at(&step, point);
            let err = h.exec.run("r2").await.unwrap_err();
            assert!(err.is_injected_crash(), "{step}: {err}");
            let status = h.run_to_end("r2", 0).await;
            h.assert_rolled_back_to_r1(&status, &last);
        }
    }
}

#[tokio::test]
async fn failed_undo_is_stuck_and_keeps_the_lease() {
    let h = harness();
    h.second_plan().await;
    h.faults
        .fail_action("record", ProviderError::permanent("record failed"));
    h.faults.fail_undo("shift-traffic");
    let status = h.run_to_end("r2", 0).await;
    match &status {
        DeploymentStatus::Stuck { reason } => assert!(reason.contains("shift-traffic"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.store.deployment("r2").unwrap().unwrap().status, status);
    assert_eq!(
        h.store.lease(ENV).unwrap().unwrap().deployment_id,
        "r2",
        "stuck keeps the lease"
    );
    // Green instances stay: traffic may still be on them, so their undo was not run.
    assert_eq!(h.fake.instances_of("r2").len(), 2);
    // Running it again does not change a finished deployment.
    assert_eq!(h.exec.run("r2").await.unwrap(), status);
    // Another deployment of the environment is refused.
    let r1 = h.store.release(ENV, "r1").unwrap().unwrap();
    let plan = fake::planned_deploy("r3", ENV, Some(&r1), 2);
    h.save(&plan);
    let err = h.exec.run("r3").await.unwrap_err();
    assert!(is_lease_held(&err), "{err}");
    assert!(err.to_string().contains("deployment r2"), "{err}");
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let h = harness();
    h.second_plan().await;
    h.faults
        .fail_action_times("provision-0", ProviderError::transient("engine busy"), 2);
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    let attempts: Vec<u32> = h
        .store
        .journal("r2")
        .unwrap()
        .iter()
        .filter_map(|e| match &e.event {
            JournalEvent::StepStarted { step, attempt } if step == "provision-0" => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let view = deployment_view(&h.store, "r2").unwrap();
    assert_eq!(
        view.steps
            .iter()
            .find(|s| s.id == "provision-0")
            .unwrap()
            .attempts,
        3
    );
}

#[tokio::test]
async fn exhausted_retries_unwind() {
    let h = harness();
    h.second_plan().await;
    h.faults
        .fail_action("provision-1", ProviderError::transient("engine busy"));
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "provision-1");
    let DeploymentStatus::RolledBack { reason } = status else {
        unreachable!()
    };
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
}

#[tokio::test]
async fn transient_undo_errors_are_retried() {
    let h = harness();
    h.second_plan().await;
    h.faults
        .fail_action("retire", ProviderError::permanent("retire failed"));
    h.faults
        .fail_undo_times("shift-traffic", ProviderError::transient("proxy busy"), 2);
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "retire");
}

#[tokio::test]
async fn a_second_deployment_is_refused_while_the_lease_is_held() {
    let h = harness();
    h.second_plan().await;
    h.store
        .acquire_lease(
            ENV,
            Lease {
                deployment_id: "d9".into(),
                holder: "bob".into(),
                acquired_at_ms: 1,
            },
        )
        .unwrap();
    let err = h.exec.run("r2").await.unwrap_err();
    assert!(is_lease_held(&err), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("d9") && message.contains("bob"),
        "{message}"
    );
    // Nothing was journaled or changed.
    assert!(h.store.journal("r2").unwrap().is_empty());
    h.assert_route_on("r1");
    h.store.release_lease(ENV, "d9").unwrap();
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    assert!(h.store.lease(ENV).unwrap().is_none());
}

#[tokio::test]
async fn the_lease_is_held_while_running() {
    let h = harness();
    let r1 = h.first_release().await;
    // Slow health checks keep r2 running while r3 tries.
    let mut spec = fake::spec_for(ENV, 2, None);
    spec.health.interval = Duration::from_millis(100);
    let plan = fake::planned_deploy_of(&spec, "r2", Some(&r1));
    h.save(&plan);
    let other = fake::planned_deploy("r3", ENV, Some(&r1), 2);
    h.save(&other);
    let exec = h.exec.clone();
    let running = tokio::spawn(async move { exec.run("r2").await });
    wait_until("r2 to take the lease", Duration::from_secs(10), || {
        h.store
            .lease(ENV)
            .unwrap()
            .is_some_and(|l| l.deployment_id == "r2")
    })
    .await;
    let err = h.exec.run("r3").await.unwrap_err();
    assert!(is_lease_held(&err), "{err}");
    assert_eq!(running.await.unwrap().unwrap(), DeploymentStatus::Succeeded);
    assert!(h.store.lease(ENV).unwrap().is_none());
}

#[tokio::test]
async fn canary_keeps_blue_on_the_remaining_weight_and_unwinds_both_shifts() {
    let h = harness();
    let r1 = h.first_release().await;
    let route = h.route();
    let plan = fake::planned_canary("r2", ENV, Some(&r1), route.as_ref(), 2, &[10, 100]);
    h.save(&plan);
    h.faults.crash_after_action("shift-traffic-0");
    assert!(h.exec.run("r2").await.unwrap_err().is_injected_crash());
    let route = h.route().unwrap();
    let weights: Vec<(String, u32)> = route
        .backends
        .iter()
        .map(|b| (b.release.clone(), b.weight))
        .collect();
    assert_eq!(weights, [("r2".to_string(), 10), ("r1".to_string(), 90)]);
    h.faults
        .fail_action("shift-traffic-1", ProviderError::permanent("proxy refused"));
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "shift-traffic-1");
}

#[tokio::test]
async fn corrupt_journal_is_refused() {
    let h = harness();
    h.second_plan().await;
    h.store
        .append(
            "r2",
            JournalEvent::StepSucceeded {
                step: "record".into(),
                output: StepOutput::Recorded,
                duration_ms: 1,
            },
        )
        .unwrap();
    let err = h.exec.run("r2").await.unwrap_err();
    assert!(
        matches!(err, ExecError::CorruptJournal { seq: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("record"), "{err}");
    let view = deployment_view(&h.store, "r2").unwrap();
    assert!(view.journal_error.is_some());
}

#[tokio::test]
async fn unknown_deployment_is_an_error() {
    let h = harness();
    let err = h.exec.run("nope").await.unwrap_err();
    assert!(matches!(err, ExecError::UnknownDeployment(_)), "{err}");
}

#[tokio::test]
async fn crash_before_unwind_started_resumes_into_the_unwind() {
    let h = harness_with(1);
    h.second_plan().await;
    h.faults
        .fail_action("drain", ProviderError::permanent("drain failed"));
    // Find the StepFailed seq by a dry run of another harness.
    let seq = {
        let dry = harness_with(1);
        dry.second_plan().await;
        dry.faults
            .fail_action("drain", ProviderError::permanent("drain failed"));
        dry.run_to_end("r2", 0).await;
        dry.store
            .journal("r2")
            .unwrap()
            .iter()
            .find(|e| matches!(e.event, JournalEvent::StepFailed { .. }))
            .unwrap()
            .seq
    };
    h.faults.crash_after_seq(seq);
    assert!(h.exec.run("r2").await.unwrap_err().is_injected_crash());
    assert!(matches!(
        h.store.deployment("r2").unwrap().unwrap().status,
        DeploymentStatus::Running
    ));
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "drain");
}

#[tokio::test]
async fn resume_unfinished_finishes_interrupted_deployments() {
    let h = harness();
    h.second_plan().await;
    h.faults.crash_after_started("provision-0");
    assert!(h.exec.run("r2").await.unwrap_err().is_injected_crash());
    assert_eq!(h.store.unfinished().unwrap().len(), 1);
    let results = h.exec.resume_unfinished().await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].1.as_ref().unwrap(), &DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
}

#[tokio::test]
async fn reaper_spares_a_release_that_a_running_rollback_brings_back() {
    let h = harness();
    h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    let plan = h.rollback_to_r1();
    h.save(&plan);
    // The rollback crashes after adopting: it holds the lease, r1 is not current yet.
    h.faults.crash_after_action("adopt-0");
    assert!(h.exec.run("rb3").await.unwrap_err().is_injected_crash());
    assert_eq!(
        reap_retirements(&h.store, &h.fake, far_future())
            .await
            .unwrap(),
        0
    );
    assert_eq!(h.fake.instances_of("r1").len(), 2);
    assert_eq!(h.run_to_end("rb3", 0).await, DeploymentStatus::Succeeded);
    h.assert_route_on("r1");
}

#[tokio::test]
async fn the_reaper_leaves_an_environment_alone_while_any_deployment_holds_it() {
    let h = harness();
    h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    assert_eq!(h.store.retirements(ENV).unwrap().len(), 1, "r1 is due");
    // Another deployment, about some other release, is in progress there.
    h.store
        .acquire_lease(
            ENV,
            Lease {
                deployment_id: "d9".to_string(),
                holder: "carol".to_string(),
                acquired_at_ms: 1,
            },
        )
        .unwrap();
    assert_eq!(
        reap_retirements(&h.store, &h.fake, far_future())
            .await
            .unwrap(),
        0
    );
    assert_eq!(h.fake.instances_of("r1").len(), 2, "r1 stays while d9 runs");
    assert_eq!(h.store.retirements(ENV).unwrap().len(), 1);
    // Once the environment is free, the retirement goes ahead.
    assert!(h.store.release_lease(ENV, "d9").unwrap());
    assert_eq!(
        reap_retirements(&h.store, &h.fake, far_future())
            .await
            .unwrap(),
        1
    );
    assert!(h.fake.instances_of("r1").is_empty());
}

#[tokio::test]
async fn resumable_names_running_and_unwinding_deployments_only() {
    let h = harness();
    for (id, env) in [("a", "e1"), ("b", "e2"), ("c", "e3"), ("d", "e4")] {
        h.save(&fake::deploy_plan(id, env, "r1", None, 1));
    }
    let set = |id: &str, status| h.store.set_status(id, status).unwrap();
    set("b", DeploymentStatus::Running);
    set(
        "c",
        DeploymentStatus::Unwinding {
            reason: "step x failed".to_string(),
        },
    );
    set(
        "d",
        DeploymentStatus::Stuck {
            reason: "undo of y failed".to_string(),
        },
    );
    // `a` is only planned: it waits for its start.
    assert_eq!(
        cutover_executor::resumable(&h.store).unwrap(),
        ["b".to_string(), "c".to_string()]
    );
}

#[tokio::test]
async fn undoing_a_shift_restores_the_route_recorded_in_the_plan() {
    let h = harness();
    let (_, plan) = h.second_plan().await;
    let planned = h.route().expect("r1 serves");
    assert!(plan.steps.iter().any(|s| matches!(
        &s.action,
        Action::ShiftTraffic {
            restore: cutover_model::RestoreRoute::Route { route },
            ..
        } if *route == planned
    )));
    // The live route changes after planning (another weight, say): the plan, not the
    // moment of execution, decides what the undo puts back.
    let mut live = planned.clone();
    live.backends[0].addrs.truncate(1);
    h.fake.world().routes.insert(ENV.to_string(), live);
    h.faults
        .fail_action("drain", ProviderError::permanent("drain refused"));
    let status = h.run_to_end(&plan.deployment_id, 0).await;
    assert!(
        matches!(&status, DeploymentStatus::RolledBack { reason } if reason.contains("drain")),
        "{status:?}"
    );
    assert_eq!(h.route(), Some(planned));
}

#[tokio::test]
async fn a_corrupt_store_entry_fails_its_step_at_once_without_retries() {
    let h = harness();
    h.second_plan().await;
    // The record step (and its cleanup) reads release r2: make its entry undecodable.
    h.store
        .typed_tree::<String>("releases")
        .unwrap()
        .insert(&format!("{ENV}\0r2"), &"not a release".to_string())
        .unwrap();
    let status = h.run_to_end("r2", 0).await;
    // The cleanup cannot read the entry either: a person must restore the store.
    assert!(
        matches!(&status, DeploymentStatus::Stuck { reason }
            if reason.contains("undo of step record") && reason.contains("not valid")),
        "{status:?}"
    );
    let record_events: Vec<JournalEvent> = h
        .store
        .journal("r2")
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| match e {
            JournalEvent::StepStarted { step, .. } | JournalEvent::StepFailed { step, .. } => {
                step == "record"
            }
            _ => false,
        })
        .collect();
    assert_eq!(record_events.len(), 2, "one attempt: {record_events:?}");
    assert!(
        matches!(&record_events[1], JournalEvent::StepFailed { attempt: 1, transient: false, error, .. }
            if error.contains("not valid") && !error.contains("gave up")),
        "{record_events:?}"
    );
}

#[tokio::test]
async fn going_live_and_being_unwound_are_recorded_once_each() {
    let h = harness();
    let (r1, _) = h.second_plan().await;
    // r2 goes live (record), then retire fails: the unwind puts r1 back.
    h.faults
        .fail_action("retire", ProviderError::permanent("retire failed"));
    let status = h.run_to_end("r2", 0).await;
    assert!(
        matches!(status, DeploymentStatus::RolledBack { .. }),
        "{status:?}"
    );
    let changes = h.store.live_changes(Some(ENV)).unwrap();
    let seen: Vec<(Option<&str>, &str, cutover_model::LiveCause)> = changes
        .iter()
        .map(|c| (c.release_id.as_deref(), c.deployment_id.as_str(), c.cause))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("r1"), "r1", cutover_model::LiveCause::Deploy),
            (Some("r2"), "r2", cutover_model::LiveCause::Deploy),
            (Some("r1"), "r2", cutover_model::LiveCause::Undo),
        ]
    );
    // Undoing again (a resumed unwind) records nothing new.
    assert_eq!(h.exec.run("r2").await.unwrap(), status);
    assert_eq!(h.store.live_changes(Some(ENV)).unwrap().len(), 3);
    let r2_image = cutover_model::sha256_digest(b"cutover/hello:r2");
    let path = h.store.image_path(&r2_image).unwrap();
    assert_eq!(path.len(), 1, "{path:?}");
    assert!(path[0].rolled_back(), "{path:?}");
    let r1_path = h.store.image_path(&r1.image.id).unwrap();
    assert_eq!(r1_path.len(), 2, "live, replaced, live again: {r1_path:?}");
    assert_eq!(r1_path[1].ended, cutover_model::LiveEnd::StillLive);
}
