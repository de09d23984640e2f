//! The audit chain anchored outside the store, attacked the way someone with write access
//! to the state directory would: the control plane runs with `CUTOVER_AUDIT_SINK` (what
//! `--audit-sink` reads), audited actions are taken through the CLI, the control plane is
//! stopped, and the sled store is edited directly. The store-only `cutover audit verify`
//! still says intact; `cutover audit verify --against <sink>` does not.

use std::path::{Path, PathBuf};

use cutover_integration::{require_docker, AppConfig, Project};
use cutover_server::audit::{entry_hash, AuditEntry};
use cutover_store::Store;

/// A project whose control plane checkpoints to a sink in its own directory (standing in
/// for another disk), with four audited actions: three tokens created, one revoked.
/// `CUTOVER_AUDIT_SINK` is what `--audit-sink` reads.
fn audited_project(name: &str) -> (Project, PathBuf) {
    let p = Project::new(name);
    p.write_spec(&AppConfig::default());
    let sink_dir = p.dir.path().join("elsewhere");
    std::fs::create_dir(&sink_dir).unwrap();
    let sink = sink_dir.join("cutover-audit.jsonl");
    let mut first = None;
    for n in ["ci-1", "ci-2", "ci-3"] {
        let run = with_sink(
            &p,
            &sink,
            &[
                "token", "create", "--role", "viewer", "--name", n, "-o", "json",
            ],
        );
        run.assert_code(0);
        first.get_or_insert(run.json()["record"]["id"].as_str().unwrap().to_string());
    }
    // A control plane started later without the flag (here by the CLI, in the background)
    // keeps the sink it was given before.
    stop(&p);
    p.cutover(&["token", "revoke", first.as_deref().unwrap()])
        .assert_code(0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sink).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the sink is created 0600");
    let lines = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(
        lines.lines().count(),
        4,
        "one checkpoint per audited action:\n{lines}"
    );
    let run = with_sink(
        &p,
        &sink,
        &["audit", "verify", "--against", sink.to_str().unwrap()],
    );
    run.assert_code(0);
    assert!(
        run.stdout.contains("audit log anchored: 4 entries"),
        "{}",
        run.stdout
    );
    stop(&p);
    (p, sink)
}

fn with_sink(p: &Project, sink: &Path, args: &[&str]) -> cutover_integration::Run {
    p.cutover_with_env(args, &[("CUTOVER_AUDIT_SINK", sink.to_str().unwrap())])
}

fn stop(p: &Project) {
    p.cutover(&["serve", "--stop"]).assert_code(0);
}

/// Open the stopped control plane's store, as an attacker with file access would.
fn open_store(p: &Project) -> Store {
    Store::open(&p.state_dir().join("db")).expect("open the stopped control plane's store")
}

fn audit_tree(store: &Store) -> cutover_store::TypedTree<AuditEntry> {
    store.typed_tree("audit").unwrap()
}

/// Point the chain's head at `entry`, the way the control plane stores it.
fn rewrite_head(store: &Store, entry: &AuditEntry) {
    store
        .kv_put(
            "audit.head",
            &serde_json::json!({ "seq": entry.seq, "hash": entry.hash }),
        )
        .unwrap();
    store.flush().unwrap();
}

/// The chain alone says intact (the old weakness: the attacker also removed the remembered
/// sink, so the control plane runs without one); the sink says otherwise, through the
/// control plane's check at start and through `--against`.
fn assert_only_the_sink_notices(p: &Project, sink: &Path, expect: &[&str]) {
    let remembered = p.state_dir().join("audit-sinks.json");
    let saved = std::fs::read(&remembered).expect("the sink is remembered");
    std::fs::remove_file(&remembered).unwrap();
    let run = p.cutover(&["audit", "verify"]);
    run.assert_code(0);
    assert!(run.stdout.contains("audit log intact"), "{}", run.stdout);
    stop(p);
    std::fs::write(&remembered, saved).unwrap();

    // Started without the flag: the remembered sink anchors it again.
    let run = p.cutover(&["audit", "verify"]);
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr
            .contains("the control plane's audit sink disagrees with it"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(expect[0]), "{}", run.stderr);

    let run = with_sink(
        p,
        sink,
        &["audit", "verify", "--against", sink.to_str().unwrap()],
    );
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("audit log does NOT match its sink"),
        "{}",
        run.stderr
    );
    for text in expect {
        assert!(
            run.stderr.contains(text),
            "want {text:?} in:\n{}",
            run.stderr
        );
    }
    // The restarted control plane compared the sink with the store and said so.
    let log = std::fs::read_to_string(p.state_dir().join("serve.log")).unwrap();
    assert!(
        log.contains("the audit sink disagrees with the store"),
        "serve.log:\n{log}"
    );
}

#[test]
fn a_deleted_tail_passes_the_chain_but_not_the_sink() {
    if !require_docker() {
        return;
    }
    let (p, sink) = audited_project("audit-tail");
    {
        let store = open_store(&p);
        let tree = audit_tree(&store);
        // Delete entries 3 and 4 (the newest token and the revocation), then make the
        // head name entry 2.
        tree.remove(&format!("{:020}", 3)).unwrap();
        tree.remove(&format!("{:020}", 4)).unwrap();
        let second = tree.get(&format!("{:020}", 2)).unwrap().unwrap();
        rewrite_head(&store, &second);
    }
    assert_only_the_sink_notices(
        &p,
        &sink,
        &[
            "tail deleted",
            "the chain ends at entry 2",
            "entries 3 to 4 were deleted",
        ],
    );
    // The public key verifies the sink by itself too (`--key`), as on another machine.
    let key = p.dir.path().join("audit.pub");
    let out = with_sink(&p, &sink, &["audit", "key"]);
    out.assert_code(0);
    std::fs::write(&key, &out.stdout).unwrap();
    let run = with_sink(
        &p,
        &sink,
        &[
            "audit",
            "verify",
            "--against",
            sink.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("tail deleted"), "{}", run.stderr);
}

#[test]
fn a_rewritten_entry_with_recomputed_hashes_passes_the_chain_but_not_the_sink() {
    if !require_docker() {
        return;
    }
    let (p, sink) = audited_project("audit-rewrite");
    {
        let store = open_store(&p);
        let tree = audit_tree(&store);
        let mut entries: Vec<AuditEntry> = tree.values().unwrap();
        // Entry 2 is said to have been done by someone else; every hash after it is
        // recomputed, and the head follows.
        entries[1].actor = "mallory".to_string();
        for i in 1..entries.len() {
            entries[i].prev_hash = entries[i - 1].hash.clone();
            entries[i].hash = entry_hash(&entries[i]);
            tree.insert(&format!("{:020}", entries[i].seq), &entries[i])
                .unwrap();
        }
        rewrite_head(&store, entries.last().unwrap());
    }
    assert_only_the_sink_notices(
        &p,
        &sink,
        &[
            "rewritten: the chain's hash at entry 2 differs",
            "an entry from 2 to 2",
        ],
    );
}

#[test]
fn an_unwritable_sink_refuses_the_audited_action() {
    if !require_docker() {
        return;
    }
    let p = Project::new("audit-full");
    p.write_spec(&AppConfig::default());
    // Every write to /dev/full fails (ENOSPC), as a full or vanished sink would.
    let full = Path::new("/dev/full");
    let run = with_sink(
        &p,
        full,
        &["token", "create", "--role", "viewer", "--name", "ci"],
    );
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("the audit log's sink cannot be written: no token was created"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("cut_"),
        "no token is printed: {}",
        run.stdout
    );
    let list = with_sink(&p, full, &["token", "list", "-o", "json"]);
    list.assert_code(0);
    assert_eq!(
        list.json().as_array().map(Vec::len),
        Some(0),
        "{}",
        list.stdout
    );
    let log = std::fs::read_to_string(p.state_dir().join("serve.log")).unwrap();
    assert!(
        log.contains("cannot append a checkpoint to the audit sink /dev/full"),
        "the log names the sink:\n{log}"
    );
}
