//! Supply-chain steps (scan, sign, verify) and the durable approval gate.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cutover_executor::fake::{self, FAKE_KEY_ID};
use cutover_executor::{deployment_view, ApprovalView, Executor, VoteStatus};
use cutover_model::{ApprovalSpec, DeploymentStatus, Plan, ProviderError, StepOutput};
use cutover_store::{Approval, Decision};
use tokio::task::JoinHandle;

/// While d2 waits at its gate: green runs, traffic is still all on blue.
fn assert_green_waits(h: &Harness) {
    h.assert_route_on("r1");
    assert_eq!(h.fake.instances_of("r2").len(), 2, "green runs");
    assert_eq!(
        h.store.current_release_id(ENV).unwrap().as_deref(),
        Some("r1")
    );
}

/// Green was started and, after the unwind, removed again.
fn assert_green_was_removed(h: &Harness) {
    let world = h.fake.world();
    assert_eq!(
        world.created.keys().filter(|n| n.contains("-r2-")).count(),
        2,
        "green was provisioned"
    );
    assert!(
        world.instances.keys().all(|n| !n.contains("-r2-")),
        "and removed"
    );
}

/// Nothing of release r2 was ever provisioned.
fn assert_nothing_provisioned(h: &Harness) {
    let world = h.fake.world();
    assert!(
        world.created.keys().all(|name| !name.contains("-r2-")),
        "{:?}",
        world.created
    );
}

fn reason(status: &DeploymentStatus) -> &str {
    match status {
        DeploymentStatus::RolledBack { reason } => reason,
        other => panic!("expected rolled back, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_gate_unwinds_before_anything_is_provisioned() {
    let h = harness();
    h.second_plan().await;
    h.fake.supply().fail_gate(&[
        "CVE-2024-0001 (critical) in openssl 3.0.1",
        "secret in /app/.env",
    ]);
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "scan");
    let image = cutover_model::sha256_digest(b"cutover/hello:r2");
    assert!(
        reason(&status).contains(&format!(
            "image {image} failed the production gate: CVE-2024-0001 (critical) in openssl 3.0.1; secret in /app/.env"
        )),
        "{status:?}"
    );
    assert_nothing_provisioned(&h);
    let supply = h.fake.supply().state();
    assert!(!supply.signs.contains_key(&image), "not signed");
    assert!(!supply.verifies.contains_key(&image), "not verified");
}

/// r1 then r2 deployed; the advisory database then learns of a flaw in r1's image.
async fn deployed_r2_then_r1_found_vulnerable(h: &Harness) -> (cutover_model::Release, u32) {
    h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    h.fake
        .supply()
        .fail_gate(&["GHSA-4xqq-73wg-5mjp (high) in libfoo 1.2.3"]);
    let r1 = h.store.release(ENV, "r1").unwrap().expect("r1 recorded");
    let verifies = h
        .fake
        .supply()
        .state()
        .verifies
        .get(&r1.image.id)
        .copied()
        .unwrap_or(0);
    (r1, verifies)
}

/// The rollback was refused at its rescan: r2 still serves and is current, r1 never came
/// back, nothing was verified, adopted or started.
fn assert_rollback_refused(
    h: &Harness,
    status: &DeploymentStatus,
    r1: &cutover_model::Release,
    verifies: u32,
) {
    let reason = reason(status);
    assert!(reason.contains("scan"), "names the step: {reason}");
    assert!(
        reason.contains(&format!(
            "image {} failed the production gate: GHSA-4xqq-73wg-5mjp (high) in libfoo 1.2.3",
            r1.image.id
        )),
        "names the advisory: {reason}"
    );
    h.assert_route_on("r2");
    assert_eq!(
        h.store.current_release_id(ENV).unwrap().as_deref(),
        Some("r2")
    );
    let view = deployment_view(&h.store, "rb3").unwrap();
    assert!(
        view.steps
            .iter()
            .filter(|s| s.id != "scan")
            .all(|s| s.state != "succeeded"),
        "nothing after the scan ran: {view:?}"
    );
    let supply = h.fake.supply().state();
    assert_eq!(
        supply.verifies.get(&r1.image.id).copied().unwrap_or(0),
        verifies
    );
    assert!(
        supply.scans.get(&r1.image.id).copied().unwrap_or(0) >= 2,
        "rescanned"
    );
}

#[tokio::test]
async fn a_protected_warm_rollback_to_a_release_now_failing_the_gate_is_refused() {
    let h = harness();
    let (r1, verifies) = deployed_r2_then_r1_found_vulnerable(&h).await;
    let changes = h.fake.world().route_changes.len();
    let plan = fake::planned_protected_rollback(
        "rb3",
        ENV,
        &r1,
        h.store.release(ENV, "r2").unwrap().as_ref(),
        &h.fake.running_instances_of("r1"),
    );
    assert_eq!(plan.steps[0].id, "scan");
    assert!(plan.step("adopt-0").is_some(), "planned warm: {plan:?}");
    h.save(&plan);
    let status = h.run_to_end("rb3", 0).await;
    assert_rollback_refused(&h, &status, &r1, verifies);
    assert_eq!(
        h.fake.world().route_changes.len(),
        changes,
        "traffic untouched"
    );
    // r1's warm instances are left as they were (not adopted, not removed).
    assert_eq!(h.fake.instances_of("r1").len(), 2);
    assert_eq!(h.fake.instances_of("r2").len(), 2);
}

#[tokio::test]
async fn a_protected_cold_rollback_to_a_release_now_failing_the_gate_starts_nothing() {
    let h = harness();
    let (r1, verifies) = deployed_r2_then_r1_found_vulnerable(&h).await;
    let plan = fake::planned_protected_rollback(
        "rb3",
        ENV,
        &r1,
        h.store.release(ENV, "r2").unwrap().as_ref(),
        &[],
    );
    assert!(plan.step("provision-0").is_some(), "planned cold: {plan:?}");
    h.save(&plan);
    let created = h.fake.world().created.clone();
    let changes = h.fake.world().route_changes.len();
    let status = h.run_to_end("rb3", 0).await;
    assert_rollback_refused(&h, &status, &r1, verifies);
    assert_eq!(h.fake.world().created, created, "nothing provisioned");
    assert_eq!(
        h.fake.world().route_changes.len(),
        changes,
        "traffic untouched"
    );
}

#[tokio::test]
async fn a_protected_rollback_to_a_release_still_passing_rescans_and_succeeds() {
    let h = harness();
    h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    let r1 = h.store.release(ENV, "r1").unwrap().expect("r1 recorded");
    let scans = h.fake.supply().state().scans.get(&r1.image.id).copied();
    let plan = fake::planned_protected_rollback(
        "rb3",
        ENV,
        &r1,
        h.store.release(ENV, "r2").unwrap().as_ref(),
        &h.fake.running_instances_of("r1"),
    );
    h.save(&plan);
    assert_eq!(h.run_to_end("rb3", 0).await, DeploymentStatus::Succeeded);
    h.assert_route_on("r1");
    assert_eq!(
        h.fake.supply().state().scans.get(&r1.image.id).copied(),
        Some(scans.unwrap_or(0) + 1)
    );
}

#[tokio::test]
async fn a_refused_verification_unwinds_before_anything_is_provisioned() {
    let h = harness();
    h.second_plan().await;
    h.fake
        .supply()
        .refuse_verify("no attestation is signed by a key trusted in production");
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "verify");
    assert!(
        reason(&status).contains("no attestation is signed by a key trusted in production"),
        "{status:?}"
    );
    assert_nothing_provisioned(&h);
}

#[tokio::test]
async fn a_transient_verification_error_still_fails_closed() {
    let h = harness();
    h.second_plan().await;
    h.faults
        .fail_action("verify", ProviderError::transient("registry timed out"));
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "verify");
    assert_nothing_provisioned(&h);
}

#[tokio::test]
async fn a_failed_signature_unwinds() {
    let h = harness();
    h.second_plan().await;
    h.fake.supply().fail_sign(ProviderError::permanent(
        "the signing key could not be decrypted; check CUTOVER_KEY_PASSPHRASE",
    ));
    let status = h.run_to_end("r2", 0).await;
    h.assert_rolled_back_to_r1(&status, "sign");
    assert!(reason(&status).contains("could not be decrypted"));
    assert_nothing_provisioned(&h);
}

#[tokio::test]
async fn sign_names_the_plan_and_deployment_and_verify_reports_the_key() {
    let h = harness();
    let (_, plan) = h.second_plan().await;
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    let image = cutover_model::sha256_digest(b"cutover/hello:r2");
    let supply = h.fake.supply().state();
    let request = &supply.sign_requests[&image];
    assert_eq!(request.plan_digest, plan.digest);
    assert_eq!(request.deployment_id, "r2");
    assert_eq!(request.env, ENV);
    assert_eq!(supply.scans[&image], 1);
    assert_eq!(supply.signs[&image], 1);
    drop(supply);
    let journal = h.store.journal("r2").unwrap();
    let verified = journal.iter().find_map(|e| match &e.event {
        cutover_model::JournalEvent::StepSucceeded {
            step,
            output: StepOutput::Verified { key_ids },
            ..
        } if step == "verify" => Some(key_ids.clone()),
        _ => None,
    });
    assert_eq!(verified, Some(vec![FAKE_KEY_ID.to_string()]));
    let view = deployment_view(&h.store, "r2").unwrap();
    let scan = view.steps.iter().find(|s| s.id == "scan").unwrap();
    assert!(
        scan.output.as_deref().unwrap().contains("passed"),
        "{scan:?}"
    );
    assert!(view.approval.is_none(), "no approval gate in this plan");
}

#[tokio::test]
async fn without_a_supply_chain_scan_fails_with_a_clear_message() {
    let h = harness();
    h.second_plan().await;
    let mut providers = h.fake.providers();
    providers.supply = None;
    let exec = Executor::new(h.store.clone(), providers, h.exec.config.clone());
    let status = exec.run("r2").await.unwrap();
    h.assert_rolled_back_to_r1(&status, "scan");
    assert!(
        reason(&status).contains("no supply chain configured"),
        "{status:?}"
    );
}

// ----- approvals -----

fn gate(required: u32, timeout: Duration) -> ApprovalSpec {
    ApprovalSpec { required, timeout }
}

/// Deploy r1, save d2 (r2 over r1) with an approval gate and start it in the background.
async fn start_gated(h: &Harness, approval: ApprovalSpec) -> (Plan, JoinHandle<DeploymentStatus>) {
    let r1 = h.first_release().await;
    let plan = fake::planned_deploy_with_approval("r2", ENV, Some(&r1), 2, approval);
    h.save(&plan);
    (plan, spawn_run(&h.exec))
}

fn spawn_run(exec: &Executor) -> JoinHandle<DeploymentStatus> {
    let exec = exec.clone();
    tokio::spawn(async move {
        match exec.run("r2").await {
            Ok(status) => status,
            Err(e) => panic!("run failed: {e}"),
        }
    })
}

/// Wait until d2 waits at its approval gate; returns the gate's view.
async fn waiting_at_gate(h: &Harness) -> ApprovalView {
    let mut gate = None;
    wait_until(
        "r2 to reach its approval gate",
        Duration::from_secs(10),
        || {
            gate = deployment_view(&h.store, "r2")
                .unwrap()
                .approval
                .filter(|a| a.waiting);
            gate.is_some()
        },
    )
    .await;
    gate.expect("waited for it")
}

fn decision(
    gate: &ApprovalView,
    by: &str,
    decision: Decision,
    plan_digest: &str,
    image_id: &str,
) -> Approval {
    Approval {
        deployment_id: "r2".to_string(),
        by: by.to_string(),
        decision,
        plan_digest: plan_digest.to_string(),
        image_id: image_id.to_string(),
        view_digest: String::new(),
        comment: format!("{by} looked at {}", gate.step),
        at_ms: cutover_model::now_ms(),
    }
}

fn approve(h: &Harness, gate: &ApprovalView, by: &str) {
    let image = gate.image_id.clone().expect("image known at the gate");
    h.store
        .add_approval(&decision(
            gate,
            by,
            Decision::Approve,
            &gate.plan_digest,
            &image,
        ))
        .unwrap();
}

/// The run is still going a dozen approval polls later. Checking that nothing happens
/// takes time by nature: this window is what is under test, not a synchronisation.
async fn assert_still_waiting(h: &Harness, run: &JoinHandle<DeploymentStatus>) {
    tokio::time::sleep(APPROVAL_POLL * 12).await;
    assert!(!run.is_finished(), "the gate let the deployment through");
    assert!(waiting_at_gate(h).await.waiting);
}

async fn finish(run: JoinHandle<DeploymentStatus>) -> DeploymentStatus {
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the deployment finishes")
        .expect("the run task does not panic")
}

fn approved_by(h: &Harness) -> Option<Vec<String>> {
    h.store
        .journal("r2")
        .unwrap()
        .iter()
        .find_map(|e| match &e.event {
            cutover_model::JournalEvent::StepSucceeded {
                output: StepOutput::Approved { by },
                ..
            } => Some(by.clone()),
            _ => None,
        })
}

#[tokio::test]
async fn the_gate_waits_and_an_approval_lets_the_deployment_finish() {
    let h = harness();
    let (plan, run) = start_gated(&h, gate(1, Duration::from_secs(600))).await;
    let view = waiting_at_gate(&h).await;
    assert_eq!(view.step, "approval");
    assert_eq!(view.state, "started");
    assert_eq!(view.plan_digest, plan.digest);
    assert_eq!(
        view.image_id.as_deref(),
        Some(cutover_model::sha256_digest(b"cutover/hello:r2").as_str())
    );
    assert_eq!(view.image_tag.as_deref(), Some("cutover/hello:r2"));
    assert_eq!(view.requested_by, "tester");
    assert_eq!(view.required, 1);
    assert!(view.approved_by.is_empty());
    let started = view.started_at_ms.expect("gate started");
    assert_eq!(view.times_out_at_ms, Some(started + 600_000));
    let record = h.store.deployment("r2").unwrap().unwrap();
    assert_eq!(record.status, DeploymentStatus::Running);
    assert_still_waiting(&h, &run).await;
    assert_green_waits(&h);

    approve(&h, &view, "bob");
    assert_eq!(finish(run).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    assert_eq!(approved_by(&h), Some(vec!["bob".to_string()]));
    let after = deployment_view(&h.store, "r2").unwrap().approval.unwrap();
    assert!(!after.waiting);
    assert_eq!(after.state, "succeeded");
    assert_eq!(after.approved_by, ["bob"]);
}

#[tokio::test]
async fn self_approval_and_stale_approvals_do_not_count() {
    let h = harness();
    let (plan, run) = start_gated(&h, gate(1, Duration::from_secs(600))).await;
    let view = waiting_at_gate(&h).await;
    let image = view.image_id.clone().unwrap();
    let other_image = cutover_model::sha256_digest(b"another image");
    for (n, approval) in [
        decision(&view, "tester", Decision::Approve, &plan.digest, &image),
        decision(
            &view,
            "bob",
            Decision::Approve,
            "sha256:an-older-plan",
            &image,
        ),
        decision(
            &view,
            "carol",
            Decision::Approve,
            &plan.digest,
            &other_image,
        ),
        // A stale rejection does not reject either.
        decision(
            &view,
            "dave",
            Decision::Reject,
            "sha256:an-older-plan",
            &image,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // Distinct times, so "oldest first" is this order.
        let mut approval = approval;
        approval.at_ms += n as u64;
        h.store.add_approval(&approval).unwrap();
    }
    assert_still_waiting(&h, &run).await;
    let view = waiting_at_gate(&h).await;
    assert!(view.approved_by.is_empty());
    assert_eq!(view.rejected_by, None);
    let statuses: Vec<(String, VoteStatus)> = view
        .votes
        .iter()
        .map(|v| (v.approval.by.clone(), v.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("tester".to_string(), VoteStatus::Requester),
            ("bob".to_string(), VoteStatus::StalePlan),
            ("carol".to_string(), VoteStatus::StaleImage),
            ("dave".to_string(), VoteStatus::StalePlan),
        ]
    );
    assert!(view.votes.iter().all(|v| v.note.is_some()));
    assert_green_waits(&h);

    // bob approves the current plan and image: that one counts.
    approve(&h, &view, "bob");
    assert_eq!(finish(run).await, DeploymentStatus::Succeeded);
    assert_eq!(approved_by(&h), Some(vec!["bob".to_string()]));
}

#[tokio::test]
async fn a_rejection_rolls_the_deployment_back() {
    let h = harness();
    let (plan, run) = start_gated(&h, gate(2, Duration::from_secs(600))).await;
    let view = waiting_at_gate(&h).await;
    approve(&h, &view, "carol");
    let mut reject = decision(
        &view,
        "bob",
        Decision::Reject,
        &plan.digest,
        view.image_id.as_deref().unwrap(),
    );
    reject.comment = "not during the sale".to_string();
    h.store.add_approval(&reject).unwrap();
    let status = finish(run).await;
    h.assert_rolled_back_to_r1(&status, "approval");
    assert!(
        reason(&status).contains("rejected by bob: not during the sale"),
        "{status:?}"
    );
    assert_green_was_removed(&h);
    let view = deployment_view(&h.store, "r2").unwrap().approval.unwrap();
    assert_eq!(view.rejected_by.as_deref(), Some("bob"));
    assert!(!view.waiting);
}

#[tokio::test]
async fn an_unanswered_gate_times_out_and_rolls_back() {
    let h = harness();
    let (_, run) = start_gated(&h, gate(1, Duration::from_millis(150))).await;
    let status = finish(run).await;
    h.assert_rolled_back_to_r1(&status, "approval");
    assert!(
        reason(&status).contains("approval timed out after 150ms; the deployment was rejected"),
        "{status:?}"
    );
    assert_green_was_removed(&h);
}

#[tokio::test]
async fn a_restart_while_waiting_resumes_the_wait() {
    let h = harness();
    let (_, run) = start_gated(&h, gate(1, Duration::from_secs(600))).await;
    let first = waiting_at_gate(&h).await;
    // The control plane dies while the deployment waits.
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    assert_eq!(
        h.store.lease(ENV).unwrap().map(|l| l.deployment_id),
        Some("r2".to_string()),
        "the lease stays with the waiting deployment"
    );
    let unfinished: Vec<String> = h
        .store
        .unfinished()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(unfinished, ["r2"]);

    // A restarted control plane runs it again: it waits at the same gate, same deadline.
    let run = spawn_run(&h.exec);
    let second = waiting_at_gate(&h).await;
    assert_still_waiting(&h, &run).await;
    assert_eq!(second.times_out_at_ms, first.times_out_at_ms);
    approve(&h, &second, "bob");
    assert_eq!(finish(run).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    let view = deployment_view(&h.store, "r2").unwrap();
    assert_eq!(view.starts, 2);
}

#[tokio::test]
async fn a_restart_does_not_reset_the_timeout() {
    let h = harness();
    let timeout = Duration::from_millis(1000);
    let (_, run) = start_gated(&h, gate(1, timeout)).await;
    waiting_at_gate(&h).await;
    run.abort();
    let _ = run.await;
    // The control plane stays down for 700 ms of the 1 s timeout: the behaviour under test.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let clock = Instant::now();
    let status = finish(spawn_run(&h.exec)).await;
    h.assert_rolled_back_to_r1(&status, "approval");
    assert!(reason(&status).contains("timed out after 1s"), "{status:?}");
    assert!(
        clock.elapsed() < Duration::from_millis(900),
        "the resumed wait kept the first deadline (took {:?})",
        clock.elapsed()
    );
}

#[tokio::test]
async fn two_distinct_approvers_are_needed_when_the_gate_says_so() {
    let h = harness();
    let (_, run) = start_gated(&h, gate(2, Duration::from_secs(600))).await;
    let view = waiting_at_gate(&h).await;
    assert_eq!(view.required, 2);
    approve(&h, &view, "bob");
    assert_still_waiting(&h, &run).await;
    // bob approving again is still one approver.
    approve(&h, &view, "bob");
    assert_still_waiting(&h, &run).await;
    assert_eq!(waiting_at_gate(&h).await.approved_by, ["bob"]);
    approve(&h, &view, "carol");
    assert_eq!(finish(run).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
    assert_eq!(
        approved_by(&h),
        Some(vec!["bob".to_string(), "carol".to_string()])
    );
}

#[tokio::test]
async fn an_approval_given_before_the_gate_is_reached_counts() {
    let h = harness();
    let r1 = h.first_release().await;
    let plan = fake::planned_deploy_with_approval(
        "r2",
        ENV,
        Some(&r1),
        2,
        gate(1, Duration::from_secs(600)),
    );
    h.save(&plan);
    let image = cutover_model::sha256_digest(b"cutover/hello:r2");
    h.store
        .add_approval(&Approval {
            deployment_id: "r2".to_string(),
            by: "bob".to_string(),
            decision: Decision::Approve,
            plan_digest: plan.digest.clone(),
            image_id: image,
            view_digest: String::new(),
            comment: String::new(),
            at_ms: cutover_model::now_ms(),
        })
        .unwrap();
    assert_eq!(h.run_to_end("r2", 0).await, DeploymentStatus::Succeeded);
    h.assert_deployed_r2();
}

#[tokio::test]
async fn resuming_does_not_wait_for_a_deployment_at_its_gate() {
    let h = harness();
    let (_, run) = start_gated(&h, gate(1, Duration::from_secs(600))).await;
    let view = waiting_at_gate(&h).await;
    // Another environment's deployment dies mid-way, then the control plane dies.
    let staging = fake::planned_deploy("sr1", "staging", None, 1);
    h.save(&staging);
    h.faults
        .crash_at("provision-0", cutover_executor::CrashPoint::AfterStarted);
    assert!(h.exec.run("sr1").await.unwrap_err().is_injected_crash());
    run.abort();
    let _ = run.await;

    let exec = h.exec.clone();
    let resumed = tokio::spawn(async move { exec.resume_unfinished().await });
    wait_until(
        "staging to finish while production waits at its gate",
        Duration::from_secs(10),
        || h.store.deployment("sr1").unwrap().unwrap().status == DeploymentStatus::Succeeded,
    )
    .await;
    assert!(waiting_at_gate(&h).await.waiting);
    approve(&h, &view, "bob");
    let results = tokio::time::timeout(Duration::from_secs(10), resumed)
        .await
        .expect("resume finishes")
        .unwrap()
        .unwrap();
    let outcomes: Vec<(String, DeploymentStatus)> = results
        .into_iter()
        .map(|(id, r)| (id, r.expect("resumed run")))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("r2".to_string(), DeploymentStatus::Succeeded),
            ("sr1".to_string(), DeploymentStatus::Succeeded)
        ]
    );
    // Staging's instance is the only extra one.
    assert_eq!(h.fake.instances_of("sr1").len(), 1);
    h.fake.world().instances.retain(|_, i| i.env != "staging");
    h.assert_deployed_r2();
}

#[tokio::test]
async fn an_approval_wakes_the_gate_at_once_without_polling() {
    // Re-reads without an event are at least a second apart: finishing well within that
    // after the approval shows the approval's event woke the gate.
    let h = harness();
    let (_, run) = start_gated(&h, gate(1, Duration::from_secs(600))).await;
    let view = waiting_at_gate(&h).await;
    let journal_before = h.store.journal("r2").unwrap().len();
    // Approvals of another deployment do not let this one through.
    let mut other = decision(
        &view,
        "bob",
        Decision::Approve,
        &view.plan_digest,
        view.image_id.as_deref().unwrap(),
    );
    other.deployment_id = "d-other".to_string();
    h.store.add_approval(&other).unwrap();
    assert_still_waiting(&h, &run).await;
    assert_eq!(h.store.journal("r2").unwrap().len(), journal_before);
    let clock = Instant::now();
    approve(&h, &view, "bob");
    assert_eq!(finish(run).await, DeploymentStatus::Succeeded);
    assert!(
        clock.elapsed() < cutover_executor::actions::MIN_APPROVAL_REREAD * 3 / 4,
        "the gate took {:?} to notice the approval",
        clock.elapsed()
    );
    h.assert_deployed_r2();
}
