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
            warning: None,
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
        view_digest: String::new(),
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

#[test]
fn claims_say_who_inserted() {
    let store = Store::temporary().unwrap();
    let tree = store.typed_tree::<String>("claims").unwrap();
    assert_eq!(
        tree.claim("k", &"first".to_string()).unwrap(),
        Claim::Inserted
    );
    assert_eq!(
        tree.claim("k", &"second".to_string()).unwrap(),
        Claim::Existing("first".to_string())
    );
    assert_eq!(tree.get("k").unwrap().as_deref(), Some("first"));
}

#[test]
fn concurrent_claimers_have_exactly_one_winner() {
    let store = Store::temporary().unwrap();
    let tree = store.typed_tree::<u32>("claims").unwrap();
    for round in 0..20 {
        let key = format!("key-{round}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8u32)
            .map(|i| {
                let tree = tree.clone();
                let key = key.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (i, tree.claim(&key, &i).unwrap())
                })
            })
            .collect();
        let results: Vec<(u32, Claim<u32>)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<u32> = results
            .iter()
            .filter(|(_, c)| *c == Claim::Inserted)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0];
        assert_eq!(tree.get(&key).unwrap(), Some(winner));
        for (i, claim) in results {
            if i != winner {
                assert_eq!(claim, Claim::Existing(winner), "round {round}");
            }
        }
    }
}

#[test]
fn compare_and_swap_releases_and_replaces_only_what_it_names() {
    let store = Store::temporary().unwrap();
    let tree = store.typed_tree::<String>("claims").unwrap();
    let a = "a".to_string();
    let b = "b".to_string();
    // Absent: only `old: None` matches.
    assert!(!tree.compare_and_swap("k", Some(&a), Some(&b)).unwrap());
    assert_eq!(tree.get("k").unwrap(), None);
    assert!(tree.compare_and_swap("k", None, Some(&a)).unwrap());
    // Present: a stale `old` changes nothing.
    assert!(!tree.compare_and_swap("k", None, Some(&b)).unwrap());
    assert!(!tree.compare_and_swap("k", Some(&b), None).unwrap());
    assert_eq!(tree.get("k").unwrap(), Some(a.clone()));
    assert!(tree.compare_and_swap("k", Some(&a), Some(&b)).unwrap());
    assert_eq!(tree.get("k").unwrap(), Some(b.clone()));
    // Releasing a claim frees the key for the next claimer.
    assert!(tree.compare_and_swap("k", Some(&b), None).unwrap());
    assert_eq!(tree.get("k").unwrap(), None);
    assert_eq!(tree.claim("k", &a).unwrap(), Claim::Inserted);
}

#[test]
fn compare_and_swap_compares_values_not_bytes() {
    let store = Store::temporary().unwrap();
    let tree = store.typed_tree::<serde_json::Value>("claims").unwrap();
    // Stored with spaces and another key order than serde_json writes.
    tree.tree
        .insert("k", br#"{ "b": 1,  "a": 2 }"#.to_vec())
        .unwrap();
    let old = serde_json::json!({"a": 2, "b": 1});
    assert!(tree
        .compare_and_swap("k", Some(&old), Some(&serde_json::json!(3)))
        .unwrap());
    assert_eq!(tree.get("k").unwrap(), Some(serde_json::json!(3)));
}

#[test]
fn concurrent_appends_stay_dense() {
    let store = Store::temporary().unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        store
                            .append("d1", JournalEvent::DeploymentStarted { resumed: i })
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..100).collect::<Vec<u64>>());
    let stored: Vec<u64> = store.journal("d1").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(stored, seqs);
}

// A current-thread runtime: `block_in_place` would panic here, `spawn_blocking` does not.
#[tokio::test(flavor = "current_thread")]
async fn async_writes_run_off_the_runtime_and_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut rx = store.subscribe();
        let entry = store
            .append_async("d1", JournalEvent::DeploymentStarted { resumed: 0 })
            .await
            .unwrap();
        assert_eq!(entry.seq, 0);
        assert_eq!(
            rx.recv().await.unwrap(),
            StoreEvent::Journal {
                deployment_id: "d1".to_string(),
                seq: 0
            }
        );
        store
            .run_blocking("set current", |s| s.set_current("prod", "r1"))
            .await
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.journal("d1").unwrap().len(), 1);
    assert_eq!(
        store.current_release_id("prod").unwrap().as_deref(),
        Some("r1")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_blocking_write_is_an_error_not_a_panic() {
    let store = Store::temporary().unwrap();
    let err = store
        .run_blocking::<(), _>("a test write", |_| panic!("boom"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Worker { .. }), "{err:?}");
    assert!(!err.is_transient());
}

#[test]
fn only_io_errors_are_transient() {
    let io = || sled::Error::Io(std::io::Error::other("disk full"));
    let transient = [
        StoreError::Db {
            context: "write".to_string(),
            source: io(),
        },
        StoreError::Open {
            dir: PathBuf::from("/x"),
            source: io(),
        },
        StoreError::InUse {
            dir: PathBuf::from("/x"),
            pid: Some(1),
        },
    ];
    for e in &transient {
        assert!(e.is_transient(), "{e:?}");
        assert_eq!(
            ProviderError::from(clone_err(e)).class,
            ErrorClass::Transient
        );
    }
    let permanent = [
        StoreError::Db {
            context: "read".to_string(),
            source: sled::Error::Corruption { at: None, bt: () },
        },
        StoreError::Db {
            context: "read".to_string(),
            source: sled::Error::Unsupported("bad".to_string()),
        },
        StoreError::Db {
            context: "read".to_string(),
            source: sled::Error::ReportableBug("bug".to_string()),
        },
        StoreError::Corrupt {
            tree: "plans".to_string(),
            key: "d1".to_string(),
            source: serde_json::from_slice::<u8>(b"{").unwrap_err(),
        },
        StoreError::NotFound {
            what: "deployment",
            id: "d1".to_string(),
        },
        StoreError::LeaseHeld {
            env: "prod".to_string(),
            holder: lease("d1"),
        },
    ];
    for e in &permanent {
        assert!(!e.is_transient(), "{e:?}");
        let provider = ProviderError::from(clone_err(e));
        assert_eq!(provider.class, ErrorClass::Permanent);
        assert!(provider.message.starts_with("state store: "), "{provider}");
    }
}

/// StoreError is not Clone (it holds sources); rebuild the few kinds the test uses.
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Db { context, source } => StoreError::Db {
            context: context.clone(),
            source: source.clone(),
        },
        StoreError::Open { dir, source } => StoreError::Open {
            dir: dir.clone(),
            source: source.clone(),
        },
        StoreError::InUse { dir, pid } => StoreError::InUse {
            dir: dir.clone(),
            pid: *pid,
        },
        StoreError::Corrupt { tree, key, .. } => StoreError::Corrupt {
            tree: tree.clone(),
            key: key.clone(),
            source: serde_json::from_slice::<u8>(b"{").unwrap_err(),
        },
        StoreError::NotFound { what, id } => StoreError::NotFound {
            what,
            id: id.clone(),
        },
        StoreError::LeaseHeld { env, holder } => StoreError::LeaseHeld {
            env: env.clone(),
            holder: holder.clone(),
        },
        other => panic!("clone_err does not handle {other:?}"),
    }
}

#[test]
fn a_corrupt_value_reads_as_a_permanent_error() {
    let store = Store::temporary().unwrap();
    store
        .deployments
        .tree
        .insert("d1", b"not json".to_vec())
        .unwrap();
    let err = store.deployment("d1").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "current_thread")]
async fn write_async_publishes_after_its_flush_and_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut rx = store.subscribe();
        let mut inside = store.subscribe();
        let seq = store
            .write_async(|s| {
                s.set_current("prod", "r1")?;
                let entry = s.append("d1", JournalEvent::DeploymentStarted { resumed: 0 })?;
                // Written, not yet announced: the flush has not happened.
                assert!(matches!(
                    inside.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty)
                ));
                assert_eq!(s.journal("d1")?.len(), 1);
                Ok(entry.seq)
            })
            .await
            .unwrap();
        assert_eq!(seq, 0);
        assert_eq!(
            drain(&mut rx),
            vec![
                env_event("prod"),
                StoreEvent::Journal {
                    deployment_id: "d1".to_string(),
                    seq: 0
                }
            ]
        );
        // The handle lent to the closure was the only deferred one.
        store.set_current("prod", "r2").unwrap();
        assert_eq!(drain(&mut rx), vec![env_event("prod")]);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.journal("d1").unwrap().len(), 1);
    assert_eq!(
        store.current_release_id("prod").unwrap().as_deref(),
        Some("r2")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_write_async_still_announces_the_writes_it_made() {
    let store = Store::temporary().unwrap();
    let mut rx = store.subscribe();
    let err = store
        .write_async(|s| {
            s.set_current("prod", "r1")?;
            s.set_status("missing", DeploymentStatus::Running)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(drain(&mut rx), vec![env_event("prod")]);
    assert_eq!(
        store.current_release_id("prod").unwrap().as_deref(),
        Some("r1")
    );
}

#[test]
fn live_changes_are_recorded_once_and_give_image_paths() {
    use cutover_model::{LiveCause, LiveChange, LiveEnd};
    let store = Store::temporary().unwrap();
    let change = |env: &str, release: &str, image: &str, deployment: &str, cause, at| LiveChange {
        env: env.to_string(),
        release_id: Some(release.to_string()),
        image_id: Some(image.to_string()),
        deployment_id: deployment.to_string(),
        cause,
        at_ms: at,
    };
    store
        .note_live(&change(
            "staging",
            "staging-1",
            "sha256:a",
            "staging-1",
            LiveCause::Deploy,
            10,
        ))
        .unwrap();
    // A re-run of the same record step (later clock) writes nothing.
    store
        .note_live(&change(
            "staging",
            "staging-1",
            "sha256:a",
            "staging-1",
            LiveCause::Deploy,
            20,
        ))
        .unwrap();
    assert_eq!(store.live_changes(Some("staging")).unwrap().len(), 1);
    store
        .note_live(&change(
            "production",
            "production-1",
            "sha256:a",
            "production-1",
            LiveCause::Promote,
            30,
        ))
        .unwrap();
    store
        .note_live(&change(
            "staging",
            "staging-2",
            "sha256:b",
            "staging-2",
            LiveCause::Deploy,
            40,
        ))
        .unwrap();
    let path = store.image_path("sha256:a").unwrap();
    let summary: Vec<(&str, u64, Option<u64>)> = path
        .iter()
        .map(|p| (p.env.as_str(), p.from_ms, p.until_ms))
        .collect();
    assert_eq!(
        summary,
        [("staging", 10, Some(40)), ("production", 30, None)]
    );
    assert_eq!(
        path[0].ended,
        LiveEnd::Replaced {
            by: "staging-2".to_string()
        }
    );
    assert_eq!(store.live_changes(None).unwrap().len(), 3);
    // Going live and being unwound in the same millisecond: both kept, in order.
    store
        .note_live(&change(
            "staging",
            "staging-3",
            "sha256:c",
            "staging-3",
            LiveCause::Deploy,
            50,
        ))
        .unwrap();
    store
        .note_live(&change(
            "staging",
            "staging-2",
            "sha256:b",
            "staging-3",
            LiveCause::Undo,
            50,
        ))
        .unwrap();
    let staging = store.live_changes(Some("staging")).unwrap();
    let causes: Vec<LiveCause> = staging.iter().map(|c| c.cause).collect();
    assert_eq!(
        causes,
        [
            LiveCause::Deploy,
            LiveCause::Deploy,
            LiveCause::Deploy,
            LiveCause::Undo
        ]
    );
    let c_path = store.image_path("sha256:c").unwrap();
    assert_eq!(c_path.len(), 1);
    assert!(c_path[0].rolled_back(), "{c_path:?}");
}
