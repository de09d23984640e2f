use super::*;
use cutover_model::{ContainerSpec, HealthSpec, ImageInfo, PLAN_FORMAT};

fn plan(id: &str, env: &str, digest: &str) -> Plan {
    Plan {
        format: PLAN_FORMAT,
        deployment_id: id.to_string(),
        app: "hello".to_string(),
        env: env.to_string(),
        kind: DeploymentKind::Deploy,
        release_id: format!("{env}-1"),
        previous_release: None,
        strategy: "blue-green".to_string(),
        spec_digest: "sha256:spec".to_string(),
        requested_by: "alice".to_string(),
        created_at_ms: 1_000,
        steps: Vec::new(),
        digest: digest.to_string(),
    }
}

fn release(env: &str, id: &str, at: u64) -> Release {
    Release {
        id: id.to_string(),
        app: "hello".to_string(),
        env: env.to_string(),
        deployment_id: format!("d-{id}"),
        image: ImageInfo {
            id: "sha256:abc".to_string(),
            tag: "cutover/hello:1".to_string(),
        },
        plan_digest: "sha256:plan".to_string(),
        spec_digest: "sha256:spec".to_string(),
        created_by: "alice".to_string(),
        created_at_ms: at,
        replicas: 2,
        container: ContainerSpec::default(),
        health: HealthSpec::default(),
        instances: vec![format!("{id}-0"), format!("{id}-1")],
    }
}

fn lease(id: &str) -> Lease {
    Lease {
        deployment_id: id.to_string(),
        holder: "alice".to_string(),
        acquired_at_ms: 5,
    }
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let p = plan("d1", "prod", "sha256:1");
        store
            .save_plan(&p, &DeploymentRecord::from_plan(&p))
            .unwrap();
        store
            .append("d1", JournalEvent::DeploymentStarted { resumed: 0 })
            .unwrap();
        store.put_release(&release("prod", "r1", 1)).unwrap();
        store.set_current("prod", "r1").unwrap();
        assert_eq!(store.next_deployment_seq("prod").unwrap(), 1);
        store.kv_set("theme", &"dark").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.plan("d1").unwrap().unwrap().digest, "sha256:1");
    assert_eq!(
        store.deployment("d1").unwrap().unwrap().status,
        DeploymentStatus::Planned
    );
    assert_eq!(store.journal("d1").unwrap().len(), 1);
    assert_eq!(store.current_release("prod").unwrap().unwrap().id, "r1");
    assert_eq!(store.next_deployment_seq("prod").unwrap(), 2);
    assert_eq!(
        store.kv_get::<String>("theme").unwrap().as_deref(),
        Some("dark")
    );
}

#[test]
fn second_open_is_refused_with_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    match &err {
        StoreError::InUse { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
        other => panic!("expected InUse, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("in use by another cutover process"),
        "{message}"
    );
    assert!(message.contains("cutover serve --stop"), "{message}");
}

#[test]
fn plans_are_immutable() {
    let store = Store::temporary().unwrap();
    let p = plan("d1", "prod", "sha256:1");
    store
        .save_plan(&p, &DeploymentRecord::from_plan(&p))
        .unwrap();
    // Same plan again: fine.
    store
        .save_plan(&p, &DeploymentRecord::from_plan(&p))
        .unwrap();
    let other = plan("d1", "prod", "sha256:2");
    let err = store
        .save_plan(&other, &DeploymentRecord::from_plan(&other))
        .unwrap_err();
    assert!(matches!(err, StoreError::PlanExists { .. }), "{err:?}");
    assert_eq!(store.plan("d1").unwrap().unwrap().digest, "sha256:1");
}

#[test]
fn releases_are_immutable_and_listed_newest_first() {
    let store = Store::temporary().unwrap();
    store.put_release(&release("prod", "r1", 1)).unwrap();
    store.put_release(&release("prod", "r2", 2)).unwrap();
    store.put_release(&release("prod", "r1", 1)).unwrap();
    let mut changed = release("prod", "r1", 1);
    changed.image.id = "sha256:other".to_string();
    assert!(matches!(
        store.put_release(&changed),
        Err(StoreError::ReleaseExists { .. })
    ));
    store.put_release(&release("staging", "r9", 9)).unwrap();
    let ids: Vec<String> = store
        .releases("prod")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["r2", "r1"]);
    assert!(store.current_release("prod").unwrap().is_none());
    store.set_current("prod", "r2").unwrap();
    assert_eq!(store.current_release("prod").unwrap().unwrap().id, "r2");
    store.clear_current("prod").unwrap();
    assert!(store.current_release_id("prod").unwrap().is_none());
}

#[test]
fn lease_conflicts_name_the_holder() {
    let store = Store::temporary().unwrap();
    store.acquire_lease("prod", lease("d1")).unwrap();
    // Re-entrant for the holder (resume).
    store.acquire_lease("prod", lease("d1")).unwrap();
    let err = store.acquire_lease("prod", lease("d2")).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("deployment d1"), "{message}");
    assert!(message.contains("started by alice"), "{message}");
    // Other environments are independent.
    store.acquire_lease("staging", lease("d2")).unwrap();
    // Only the holder can give it back.
    assert!(!store.release_lease("prod", "d2").unwrap());
    assert!(store.release_lease("prod", "d1").unwrap());
    assert!(store.lease("prod").unwrap().is_none());
    store.acquire_lease("prod", lease("d3")).unwrap();
    assert_eq!(store.lease("prod").unwrap().unwrap().deployment_id, "d3");
}

#[test]
fn concurrent_lease_acquisition_has_one_winner() {
    let store = Store::temporary().unwrap();
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                s.spawn(move || store.acquire_lease("prod", lease(&format!("d{i}"))).is_ok())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(winners, 1);
}

#[test]
fn journal_is_dense_and_per_deployment() {
    let store = Store::temporary().unwrap();
    for i in 0..3 {
        let e = store
            .append("d1", JournalEvent::DeploymentStarted { resumed: i })
            .unwrap();
        assert_eq!(e.seq, u64::from(i));
    }
    // A deployment id that is a prefix of another must not see its entries.
    store
        .append("d", JournalEvent::DeploymentStarted { resumed: 0 })
        .unwrap();
    store
        .append("d10", JournalEvent::DeploymentStarted { resumed: 0 })
        .unwrap();
    let seqs: Vec<u64> = store.journal("d1").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(store.journal("d").unwrap().len(), 1);
    assert_eq!(store.journal("d10").unwrap().len(), 1);
}

#[test]
fn deployments_filter_sort_and_status() {
    let store = Store::temporary().unwrap();
    for (id, env, at) in [("a", "prod", 1), ("b", "staging", 2), ("c", "prod", 3)] {
        let mut p = plan(id, env, "sha256:x");
        p.created_at_ms = at;
        store
            .save_plan(&p, &DeploymentRecord::from_plan(&p))
            .unwrap();
    }
    let ids = |v: Vec<DeploymentRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.deployments(None, 10).unwrap()), ["c", "b", "a"]);
    assert_eq!(
        ids(store.deployments(Some("prod"), 10).unwrap()),
        ["c", "a"]
    );
    assert_eq!(ids(store.deployments(None, 1).unwrap()), ["c"]);
    assert!(store.unfinished().unwrap().is_empty());
    store.set_status("a", DeploymentStatus::Running).unwrap();
    assert_eq!(ids(store.unfinished().unwrap()), ["a"]);
    let done = store.set_status("a", DeploymentStatus::Succeeded).unwrap();
    assert!(done.finished_at_ms.is_some());
    assert!(store.unfinished().unwrap().is_empty());
    assert!(matches!(
        store.set_status("zzz", DeploymentStatus::Running),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn retirements_due_cancel_complete() {
    let store = Store::temporary().unwrap();
    let r = |release: &str, due| Retirement {
        env: "prod".to_string(),
        release: release.to_string(),
        instances: vec![format!("{release}-0")],
        due_at_ms: due,
        deployment_id: "d1".to_string(),
    };
    store.schedule_retirement(&r("r1", 100)).unwrap();
    store.schedule_retirement(&r("r2", 200)).unwrap();
    assert_eq!(store.due_retirements(50).unwrap().len(), 0);
    assert_eq!(store.due_retirements(150).unwrap(), [r("r1", 100)]);
    assert_eq!(store.retirements("prod").unwrap().len(), 2);
    assert_eq!(
        store.cancel_retirement("prod", "r2").unwrap(),
        Some(r("r2", 200))
    );
    store.complete_retirement("prod", "r1").unwrap();
    assert!(store.retirements("prod").unwrap().is_empty());
}

#[test]
fn history_is_upserted_per_deployment() {
    let store = Store::temporary().unwrap();
    let entry = |d: &str, outcome: &str, at| HistoryEntry {
        release_id: "r1".to_string(),
        deployment_id: d.to_string(),
        kind: DeploymentKind::Deploy,
        outcome: outcome.to_string(),
        at_ms: at,
        by: "alice".to_string(),
    };
    store
        .record_history("prod", &entry("d1", "recorded", 1))
        .unwrap();
    store
        .record_history("prod", &entry("d1", "succeeded", 2))
        .unwrap();
    store
        .record_history("prod", &entry("d2", "succeeded", 3))
        .unwrap();
    let h = store.history("prod").unwrap();
    assert_eq!(
        h,
        [entry("d2", "succeeded", 3), entry("d1", "succeeded", 2)]
    );
}

#[test]
fn typed_trees_round_trip() {
    let store = Store::temporary().unwrap();
    let scratch = store.typed_tree::<Vec<String>>("scratch").unwrap();
    scratch.insert("d1", &vec!["bob".to_string()]).unwrap();
    let kept = scratch.insert_if_absent("d1", &vec![]).unwrap();
    assert_eq!(kept, ["bob"]);
    assert_eq!(scratch.scan_prefix("d").unwrap().len(), 1);
    scratch.remove("d1").unwrap();
    assert!(scratch.get("d1").unwrap().is_none());
}

fn approval(deployment: &str, by: &str, decision: Decision, at: u64) -> Approval {
    Approval {
        deployment_id: deployment.to_string(),
        by: by.to_string(),
        decision,
        plan_digest: "sha256:plan".to_string(),
        image_id: "sha256:image".to_string(),
        comment: format!("{by} at {at}"),
        at_ms: at,
    }
}

#[test]
fn approvals_are_per_deployment_oldest_first_one_per_person() {
    let store = Store::temporary().unwrap();
    store
        .add_approval(&approval("d1", "carol", Decision::Approve, 3))
        .unwrap();
    store
        .add_approval(&approval("d1", "bob", Decision::Approve, 1))
        .unwrap();
    store
        .add_approval(&approval("d10", "bob", Decision::Approve, 2))
        .unwrap();
    assert_eq!(
        store.approvals("d1").unwrap(),
        [
            approval("d1", "bob", Decision::Approve, 1),
            approval("d1", "carol", Decision::Approve, 3)
        ]
    );
    // bob changes his mind: the rejection replaces the approval.
    store
        .add_approval(&approval("d1", "bob", Decision::Reject, 4))
        .unwrap();
    assert_eq!(
        store.approvals("d1").unwrap(),
        [
            approval("d1", "carol", Decision::Approve, 3),
            approval("d1", "bob", Decision::Reject, 4)
        ]
    );
    assert_eq!(store.approvals("d10").unwrap().len(), 1);
    assert!(store.approvals("d2").unwrap().is_empty());
}

#[test]
fn approvals_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .add_approval(&approval("d1", "bob", Decision::Approve, 1))
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.approvals("d1").unwrap(),
        [approval("d1", "bob", Decision::Approve, 1)]
    );
}

#[test]
fn malformed_approvals_are_refused() {
    let store = Store::temporary().unwrap();
    for (deployment, by) in [("d1", ""), ("d1", "  "), ("d1", "b\0ob"), ("", "bob")] {
        let err = store
            .add_approval(&approval(deployment, by, Decision::Approve, 1))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidApproval { .. }),
            "{deployment:?} {by:?}: {err}"
        );
    }
    assert!(store.approvals("d1").unwrap().is_empty());
}

#[test]
fn decisions_serialize_kebab_case() {
    assert_eq!(
        serde_json::to_string(&Decision::Approve).unwrap(),
        "\"approve\""
    );
    assert_eq!(
        serde_json::from_str::<Decision>("\"reject\"").unwrap(),
        Decision::Reject
    );
}

/// Every event queued on `rx` right now.
fn drain(rx: &mut broadcast::Receiver<StoreEvent>) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}

fn env_event(env: &str) -> StoreEvent {
    StoreEvent::Environment {
        env: env.to_string(),
    }
}

#[test]
fn every_mutation_publishes_after_it_is_written() {
    let store = Store::temporary().unwrap();
    let mut rx = store.subscribe();
    let p = plan("d1", "prod", "sha256:1");
    store
        .save_plan(&p, &DeploymentRecord::from_plan(&p))
        .unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::Deployment {
            deployment_id: "d1".to_string()
        }]
    );

    for expected_seq in 0..2 {
        let entry = store
            .append("d1", JournalEvent::DeploymentStarted { resumed: 0 })
            .unwrap();
        assert_eq!(entry.seq, expected_seq);
        // The entry is readable by the time its event arrives.
        let events = drain(&mut rx);
        assert_eq!(
            events,
            vec![StoreEvent::Journal {
                deployment_id: "d1".to_string(),
                seq: expected_seq
            }]
        );
        assert_eq!(store.journal("d1").unwrap().len() as u64, expected_seq + 1);
    }

    store.set_status("d1", DeploymentStatus::Running).unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::Deployment {
            deployment_id: "d1".to_string()
        }]
    );

    store
        .add_approval(&approval("d1", "bob", Decision::Approve, 7))
        .unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::Approval {
            deployment_id: "d1".to_string()
        }]
    );

    store.next_deployment_seq("prod").unwrap();
    store.put_release(&release("prod", "r1", 1)).unwrap();
    store.set_current("prod", "r1").unwrap();
    store.clear_current("prod").unwrap();
    store.remove_release("prod", "r1").unwrap();
    store
        .record_history(
            "prod",
            &HistoryEntry {
                release_id: "r1".to_string(),
                deployment_id: "d1".to_string(),
                kind: DeploymentKind::Deploy,
                outcome: "recorded".to_string(),
                at_ms: 1,
                by: "alice".to_string(),
            },
        )
        .unwrap();
    store.acquire_lease("prod", lease("d1")).unwrap();
    store.release_lease("prod", "d1").unwrap();
    let retirement = Retirement {
        env: "prod".to_string(),
        release: "r0".to_string(),
        instances: vec![],
        due_at_ms: 10,
        deployment_id: "d1".to_string(),
    };
    store.schedule_retirement(&retirement).unwrap();
    store.cancel_retirement("prod", "r0").unwrap();
    store.schedule_retirement(&retirement).unwrap();
    store.complete_retirement("prod", "r0").unwrap();
    assert_eq!(drain(&mut rx), vec![env_event("prod"); 12]);
}

#[test]
fn refused_or_empty_writes_publish_nothing() {
    let store = Store::temporary().unwrap();
    let p = plan("d1", "prod", "sha256:1");
    store
        .save_plan(&p, &DeploymentRecord::from_plan(&p))
        .unwrap();
    store.acquire_lease("prod", lease("d1")).unwrap();
    let mut rx = store.subscribe();
    let other = plan("d1", "prod", "sha256:2");
    assert!(store
        .save_plan(&other, &DeploymentRecord::from_plan(&other))
        .is_err());
    assert!(store.acquire_lease("prod", lease("d2")).is_err());
    assert!(!store.release_lease("prod", "d2").unwrap());
    assert!(store
        .cancel_retirement("prod", "nothing")
        .unwrap()
        .is_none());
    assert!(store
        .set_status("missing", DeploymentStatus::Running)
        .is_err());
    assert_eq!(drain(&mut rx), vec![]);
}

#[test]
fn clones_share_one_channel_and_late_subscribers_see_only_new_events() {
    let store = Store::temporary().unwrap();
    let clone = store.clone();
    clone.set_current("prod", "r1").unwrap();
    let mut rx = store.subscribe();
    assert_eq!(drain(&mut rx), vec![]);
    clone.set_current("prod", "r2").unwrap();
    assert_eq!(drain(&mut rx), vec![env_event("prod")]);
}

#[test]
fn a_lagging_subscriber_is_told_it_lagged() {
    let store = Store::temporary().unwrap();
    let mut rx = store.subscribe();
    for _ in 0..EVENT_CAPACITY + 5 {
        store.set_current("prod", "r1").unwrap();
    }
    match rx.try_recv() {
        Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 5),
        other => panic!("expected Lagged, got {other:?}"),
    }
    // After the lag it keeps receiving the newest events.
    assert_eq!(rx.try_recv().unwrap(), env_event("prod"));
}

#[tokio::test]
async fn an_async_subscriber_wakes_on_a_write_from_another_thread() {
    let store = Store::temporary().unwrap();
    let mut rx = store.subscribe();
    let writer = store.clone();
    let handle = std::thread::spawn(move || {
        writer
            .add_approval(&approval("d9", "bob", Decision::Reject, 1))
            .unwrap()
    });
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within the deadline")
        .unwrap();
    handle.join().unwrap();
    assert_eq!(
        event,
        StoreEvent::Approval {
            deployment_id: "d9".to_string()
        }
    );
}
