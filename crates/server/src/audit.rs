//! The audit log: every state-changing action, appended to a hash chain in the store.
//!
//! Entry `n` stores `prev_hash` (the hash of entry `n - 1`, empty for the first) and
//! `hash = sha256(prev_hash || canonical JSON of the entry without its hash)`, where the
//! canonical JSON has object keys sorted. The newest sequence number and hash are also kept
//! as the chain's head, so deleting entries at the end is detected too. [`verify`] walks
//! the chain and reports the first broken link. The chain detects edits and deletions made
//! with store access; to make a full rewrite detectable too, export the log regularly to a
//! system that keeps it (`cutover audit export`), and anchor it: with sinks registered by
//! [`anchor`] (`cutover serve --audit-sink`), every append also writes a signed checkpoint
//! outside the store before it returns ([`crate::anchor`]), and `cutover audit verify
//! --against <sink>` finds deletions and rewrites that the chain alone cannot.
//!
//! Anchored appends fail closed: when a sink cannot be written, [`record`] returns an
//! error after the entry is in the store (the entry is kept; the next checkpoint covers
//! it). Callers decide what that error undoes: see each caller.
//!
//! Details never carry secrets: callers pass ids, names and digests, never tokens or
//! passwords.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use cutover_model::now_ms;
use cutover_store::{Store, TypedTree};

use crate::anchor::Anchor;
use crate::ServerError;

const AUDIT_TREE: &str = "audit";
const HEAD_KEY: &str = "audit.head";

/// Serializes the in-memory part of an append (reading the head, writing the entry and
/// the new head) so seq stays dense; never held across the flush.
static APPEND_LOCK: Mutex<()> = Mutex::new(());

/// The anchors of the stores of this process, by store directory.
static ANCHORS: Mutex<Option<HashMap<PathBuf, Arc<Anchor>>>> = Mutex::new(None);

/// From now on, every append to `store`'s chain also writes a checkpoint to `anchor`'s
/// sinks, whoever appends. Refused for temporary stores, which share one name.
pub fn anchor(store: &Store, anchor: Anchor) -> Result<Arc<Anchor>, ServerError> {
    if store.dir() == std::path::Path::new("<temporary>") {
        return Err(ServerError::Internal(
            "a temporary store cannot be anchored: open the store from a directory".to_string(),
        ));
    }
    let anchor = Arc::new(anchor);
    ANCHORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(store.dir().to_path_buf(), anchor.clone());
    Ok(anchor)
}

/// The anchor of `store`, when it has one.
pub fn anchor_of(store: &Store) -> Option<Arc<Anchor>> {
    ANCHORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()?
        .get(store.dir())
        .cloned()
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    pub at_ms: u64,
    /// Who acted: a user name, a token principal, or the local user.
    pub actor: String,
    /// `deploy`, `rollback`, `approve`, `reject`, `token.create`, `token.revoke`,
    /// `user.add`, …
    pub action: String,
    /// What it acted on: a deployment id, an environment, a token id, a user name.
    pub target: String,
    /// Extra facts (ids, digests, comments); never secrets.
    #[schema(value_type = Object)]
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The newest entry's number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
    /// What the control plane found at start when it compared its audit sinks
    /// (`--audit-sink`) with this chain: a deleted tail, a rewrite, entries no sink saw.
    /// Empty without sinks or when they agree; `cutover audit verify --against <sink>`
    /// checks every checkpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchor: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BrokenLink {
    /// The sequence number where the chain breaks.
    pub seq: u64,
    pub reason: String,
}

fn tree(store: &Store) -> Result<TypedTree<AuditEntry>, ServerError> {
    Ok(store.typed_tree(AUDIT_TREE)?)
}

fn key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Objects with their keys sorted, recursively (whatever map order serde_json uses).
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The hash an entry must carry (what a verifier outside cutover recomputes).
pub fn entry_hash(entry: &AuditEntry) -> String {
    let body = serde_json::json!({
        "seq": entry.seq,
        "at_ms": entry.at_ms,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": canonical(&entry.details),
        "prev_hash": entry.prev_hash,
    });
    let text = serde_json::to_string(&canonical(&body)).expect("json values serialize");
    let mut hasher = Sha256::new();
    hasher.update(entry.prev_hash.as_bytes());
    hasher.update(text.as_bytes());
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Append an entry to the chain (flushed before returning). The flush waits for the disk:
/// from async code call [`record_async`], which runs it off the async workers.
pub fn record(
    store: &Store,
    actor: &str,
    action: &str,
    target: &str,
    details: Value,
) -> Result<(), ServerError> {
    let (seq, hash) = {
        let _guard = APPEND_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let head: Option<Head> = store.kv_get(HEAD_KEY)?;
        let (seq, prev_hash) = match head {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, String::new()),
        };
        let mut entry = AuditEntry {
            seq,
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            details,
            prev_hash,
            hash: String::new(),
        };
        entry.hash = entry_hash(&entry);
        tree(store)?.insert(&key(seq), &entry)?;
        store.kv_put(
            HEAD_KEY,
            &Head {
                seq,
                hash: entry.hash.clone(),
            },
        )?;
        (seq, entry.hash)
    };
    // Outside the lock: one append waiting for the disk does not hold up the next.
    store.flush()?;
    // After the flush, so a checkpoint never names an entry the store could lose.
    if let Some(anchor) = anchor_of(store) {
        anchor.checkpoint(seq, &hash).map_err(|e| {
            tracing::error!(error = %e, actor, action, target, seq, "audit checkpoint not written");
            ServerError::AuditSink("the action was not carried out".to_string())
        })?;
    }
    tracing::info!(actor, action, target, seq, "audit");
    Ok(())
}

/// [`record`] on tokio's blocking pool, so the flush never stalls an async worker.
pub async fn record_async(
    store: &Store,
    actor: &str,
    action: &str,
    target: &str,
    details: Value,
) -> Result<(), ServerError> {
    let (actor, action, target) = (actor.to_string(), action.to_string(), target.to_string());
    let store = store.clone();
    tokio::task::spawn_blocking(move || record(&store, &actor, &action, &target, details))
        .await
        .map_err(|_| {
            ServerError::Store(cutover_store::StoreError::Worker {
                context: "the audit log".to_string(),
            })
        })?
}

/// Entries at or after `since_ms` (all when `None`), oldest first.
pub fn export(store: &Store, since_ms: Option<u64>) -> Result<Vec<AuditEntry>, ServerError> {
    Ok(tree(store)?
        .values()?
        .into_iter()
        .filter(|e| since_ms.is_none_or(|since| e.at_ms >= since))
        .collect())
}

/// Walk the chain from the start; report the first edit or deletion.
pub fn verify(store: &Store) -> Result<VerifyReport, ServerError> {
    let entries = tree(store)?.scan_prefix("")?;
    let head: Option<Head> = store.kv_get(HEAD_KEY)?;
    let mut prev_hash = String::new();
    let mut expected = 1u64;
    let broken = |seq: u64, reason: String, checked: u64| VerifyReport {
        entries: checked,
        broken: Some(BrokenLink { seq, reason }),
        anchor: Vec::new(),
    };
    for (stored_key, entry) in &entries {
        if *stored_key != key(entry.seq) {
            return Ok(broken(
                expected,
                format!(
                    "entry stored under {stored_key} claims sequence number {}: it was moved or edited",
                    entry.seq
                ),
                expected - 1,
            ));
        }
        if entry.seq != expected {
            return Ok(broken(
                expected,
                format!(
                    "entries {expected} to {} are missing: they were deleted",
                    entry.seq - 1
                ),
                expected - 1,
            ));
        }
        if entry.prev_hash != prev_hash {
            return Ok(broken(
                entry.seq,
                "its link to the previous entry does not match: an earlier entry was edited or replaced".to_string(),
                expected - 1,
            ));
        }
        if entry_hash(entry) != entry.hash {
            return Ok(broken(
                entry.seq,
                "its content does not match its hash: it was edited".to_string(),
                expected - 1,
            ));
        }
        prev_hash = entry.hash.clone();
        expected += 1;
    }
    let last = expected - 1;
    match head {
        Some(h) if h.seq > last => Ok(broken(
            last + 1,
            format!(
                "entries {} to {} are missing at the end: they were deleted",
                last + 1,
                h.seq
            ),
            last,
        )),
        Some(h) if h.seq == last && h.hash != prev_hash => Ok(broken(
            last,
            "the newest entry does not match the chain's head: it was edited or replaced"
                .to_string(),
            last,
        )),
        Some(h) if h.seq < last => Ok(broken(
            h.seq + 1,
            "entries after the chain's head exist: they were added outside cutover".to_string(),
            last,
        )),
        None if last > 0 => Ok(broken(
            1,
            "the chain's head is missing: it was deleted".to_string(),
            last,
        )),
        _ => Ok(VerifyReport {
            entries: last,
            broken: None,
            anchor: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Store {
        let store = Store::temporary().unwrap();
        for i in 1..=n {
            record(
                &store,
                "alice",
                "deploy",
                &format!("production-{i}"),
                json!({"z": i, "a": {"y": 1, "b": 2}}),
            )
            .unwrap();
        }
        store
    }

    #[test]
    fn concurrent_appends_keep_one_dense_chain() {
        let store = Store::temporary().unwrap();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        record(&store, "alice", "deploy", &format!("t{t}-{i}"), json!({})).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let report = verify(&store).unwrap();
        assert_eq!(report.entries, 40);
        assert_eq!(report.broken, None);
    }

    // Current-thread runtime, as in the server's tests: the flush runs on the blocking pool.
    #[tokio::test(flavor = "current_thread")]
    async fn async_records_are_durable_and_chained() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..3 {
                record_async(&store, "bob", "approve", &format!("d{i}"), json!({"i": i}))
                    .await
                    .unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let report = verify(&store).unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(report.broken, None);
        assert_eq!(export(&store, None).unwrap()[2].target, "d2");
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let store = chain(5);
        let report = verify(&store).unwrap();
        assert_eq!(report.entries, 5);
        assert_eq!(report.broken, None);
        assert_eq!(export(&store, None).unwrap().len(), 5);
        assert_eq!(export(&store, Some(u64::MAX)).unwrap().len(), 0);
        assert_eq!(verify(&Store::temporary().unwrap()).unwrap().entries, 0);
    }

    #[test]
    fn an_edited_entry_is_found() {
        let store = chain(5);
        let t = tree(&store).unwrap();
        let mut e = t.get(&key(3)).unwrap().unwrap();
        e.details = json!({"z": 99});
        t.insert(&key(3), &e).unwrap();
        let broken = verify(&store).unwrap().broken.unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("edited"), "{}", broken.reason);
    }

    #[test]
    fn an_edited_and_rehashed_entry_breaks_the_next_link() {
        let store = chain(5);
        let t = tree(&store).unwrap();
        let mut e = t.get(&key(2)).unwrap().unwrap();
        e.actor = "mallory".into();
        e.hash = entry_hash(&e);
        t.insert(&key(2), &e).unwrap();
        assert_eq!(verify(&store).unwrap().broken.unwrap().seq, 3);
    }

    #[test]
    fn deletions_are_found_in_the_middle_and_at_the_end() {
        let store = chain(5);
        let t = tree(&store).unwrap();
        t.remove(&key(2)).unwrap();
        let broken = verify(&store).unwrap().broken.unwrap();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("deleted"));

        let store = chain(5);
        tree(&store).unwrap().remove(&key(5)).unwrap();
        let broken = verify(&store).unwrap().broken.unwrap();
        assert_eq!(broken.seq, 5);
        assert!(broken.reason.contains("deleted"));
    }

    #[test]
    fn key_order_of_details_does_not_matter() {
        let a = json!({"b": 1, "a": [ {"d": 1, "c": 2} ]});
        let b = json!({"a": [ {"c": 2, "d": 1} ], "b": 1});
        assert_eq!(
            serde_json::to_string(&canonical(&a)).unwrap(),
            serde_json::to_string(&canonical(&b)).unwrap()
        );
    }
}
