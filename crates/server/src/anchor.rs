//! The audit chain anchored outside the store: signed checkpoints in append-only sinks.
//!
//! The chain in the store ([`crate::audit`]) detects edits, but someone who can write the
//! store can delete its newest entries, or rewrite entries and recompute every hash after
//! them, and the chain verifies again. So every audit append also appends a signed
//! [`Checkpoint`] (`seq`, the chain's head hash at that seq, time, key id) as one JSON line to
//! each sink file given to `cutover serve --audit-sink`, fsynced before the append returns.
//! A checkpoint's head hash commits to every entry up to its seq, so
//! [`verify_against`] finds a deleted tail (a checkpoint beyond the chain's end), a rewrite
//! (the chain's hash at a checkpoint's seq differs), entries the sinks never saw (after the
//! last checkpoint), and checkpoints that are forged or signed by another key.
//!
//! The checkpoint key is its own Ed25519 key, `<state>/keys/audit.key`, separate from the
//! release signing key, stored unencrypted with mode 0600 so the control plane can start
//! unattended. Its theft costs little: whoever holds it can append a checkpoint, but the
//! sink's value is that it is append-only somewhere the store's owner cannot rewrite (another
//! machine, a remote syslog, a file with `chattr +a`), so the old checkpoints that contradict
//! a rewritten chain stay. Its public half, `<state>/keys/audit.pub` (`cutover audit key`),
//! lets anyone check a sink without the store.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use cutover_signing::{Algorithm, KeyError, KeyPair, PublicKey};

use crate::audit::AuditEntry;

/// What a checkpoint's signature covers first (domain separation).
pub const CHECKPOINT_FORMAT: &str = "cutover-audit-checkpoint/v1";

/// How much of each sink's end the control plane reads at start to compare with the store.
const TAIL_BYTES: u64 = 64 * 1024;

/// Failures of the key and of the sinks. Sink errors name the sink; they stay in the
/// control plane's log (clients see only that the audit log could not be written).
#[derive(Debug, Error)]
pub enum AnchorError {
    #[error("audit checkpoint key: {0}")]
    Key(#[from] KeyError),
    #[error("cannot create the key directory {path}: {source}")]
    KeyDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit sink {0:?} is not a file path: give a file (on another disk or machine, or append-only with `chattr +a`)")]
    NotAFile(String),
    #[error("cannot open the audit sink {path}: {source}; check that its directory exists and this account may append to it")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot append a checkpoint to the audit sink {path}: {source}; the audited action was refused until the sink is writable again")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}; fix it, or remove it to stop anchoring the audit chain")]
    Remembered { path: PathBuf, detail: String },
    #[error("cannot read the audit sink {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One signed line of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The newest audit entry when it was written.
    pub seq: u64,
    /// That entry's hash: it commits to every entry before it.
    pub head: String,
    pub at_ms: u64,
    /// Hex sha256 of the signing key's SPKI DER (as `cutover audit key` prints).
    pub key_id: String,
    /// Hex Ed25519 signature of [`Checkpoint::message`].
    pub sig: String,
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn message(seq: u64, head: &str, at_ms: u64, key_id: &str) -> Vec<u8> {
        format!("{CHECKPOINT_FORMAT}\nseq {seq}\nhead {head}\nat_ms {at_ms}\nkey_id {key_id}\n")
            .into_bytes()
    }

    pub fn sign(key: &KeyPair, seq: u64, head: &str, at_ms: u64) -> Checkpoint {
        let sig = key.sign(&Self::message(seq, head, at_ms, key.key_id()));
        Checkpoint {
            seq,
            head: head.to_string(),
            at_ms,
            key_id: key.key_id().to_string(),
            sig: hex::encode(sig),
        }
    }

    /// Whether `key` signed exactly this checkpoint.
    pub fn signature_ok(&self, key: &PublicKey) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else {
            return false;
        };
        self.key_id == key.key_id()
            && key.verify(
                &Self::message(self.seq, &self.head, self.at_ms, &self.key_id),
                &sig,
            )
    }
}

/// Where the sinks of the last `cutover serve --audit-sink` are remembered.
pub fn remembered_sinks_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit-sinks.json")
}

/// The sinks to anchor to: `given` (made absolute and remembered in the state directory),
/// or, when none are given, the remembered ones. So a control plane started later without
/// the flag (by any CLI command) keeps anchoring; stopping it means removing the file, and
/// the entries appended meanwhile show as unanchored in `cutover audit verify --against`.
pub fn configured_sinks(state_dir: &Path, given: &[PathBuf]) -> Result<Vec<PathBuf>, AnchorError> {
    let path = remembered_sinks_path(state_dir);
    let bad = |detail: String| AnchorError::Remembered {
        path: path.clone(),
        detail,
    };
    if given.is_empty() {
        return match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a JSON list of sink paths ({e})"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(bad(format!("cannot read it ({e})"))),
        };
    }
    let mut sinks = Vec::new();
    for sink in given {
        let text = sink.to_string_lossy();
        if text.contains("://") {
            return Err(AnchorError::NotAFile(text.into_owned()));
        }
        sinks.push(
            std::path::absolute(sink).map_err(|source| AnchorError::Open {
                path: sink.clone(),
                source,
            })?,
        );
    }
    let staged = state_dir.join(format!("audit-sinks.json.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(&sinks).expect("paths serialize");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&staged, &path))
        .map_err(|e| bad(format!("cannot write it ({e})")))?;
    Ok(sinks)
}

/// `<keys_dir>/audit.pub`.
pub fn public_key_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join("audit.pub")
}

/// The checkpoint key, made on first use: `<keys_dir>/audit.key` (PKCS#8 PEM, 0600) and
/// `<keys_dir>/audit.pub` (PEM). Safe when several processes race to make it: the
/// private key appears under its name complete or not at all.
pub fn load_or_create_key(keys_dir: &Path) -> Result<KeyPair, AnchorError> {
    let private = keys_dir.join("audit.key");
    if !private.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(keys_dir)
            .map_err(|source| AnchorError::KeyDir {
                path: keys_dir.to_path_buf(),
                source,
            })?;
        let fresh = KeyPair::generate(Algorithm::Ed25519);
        let staged = keys_dir.join(format!("audit.key.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&staged);
        fresh.save_private_unencrypted(&staged)?;
        // A hard link fails when the name exists: the first writer wins, the others load it.
        let linked = std::fs::hard_link(&staged, &private);
        let _ = std::fs::remove_file(&staged);
        match linked {
            Ok(()) => tracing::info!(key_id = %fresh.key_id(), "made the audit checkpoint key"),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(AnchorError::Key(KeyError::Write {
                    path: private,
                    source,
                }))
            }
        }
    }
    let key = KeyPair::load_private_unencrypted(&private)?;
    let public = public_key_path(keys_dir);
    let current = std::fs::read_to_string(&public).ok();
    if current.as_deref() != Some(key.public().to_pem().as_str()) {
        // Derived from the private key: a missing or replaced public half is written again.
        let _ = std::fs::remove_file(&public);
        match key.save_public(&public) {
            Ok(()) | Err(KeyError::Exists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(key)
}

struct Sink {
    path: PathBuf,
    file: File,
    /// A write failed part-way: the next line starts on a fresh line.
    torn: bool,
}

struct Sinks {
    /// The highest seq a checkpoint in every sink covers.
    covered: u64,
    sinks: Vec<Sink>,
}

/// The checkpoint key and the open sinks of one store (see [`crate::audit::anchor`]).
pub struct Anchor {
    key: KeyPair,
    paths: Vec<PathBuf>,
    sinks: Mutex<Sinks>,
    /// The last checkpoint was written to every sink.
    writing: AtomicBool,
    /// The sinks agreed with the store at start.
    agreed: AtomicBool,
    /// What [`Anchor::check_at_start`] found.
    disagreements: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("key_id", &self.key.key_id())
            .field("sinks", &self.paths)
            .finish()
    }
}

impl Anchor {
    /// Open every sink for appending (created 0600 when missing).
    pub fn open(key: KeyPair, paths: &[PathBuf]) -> Result<Anchor, AnchorError> {
        let mut sinks = Vec::new();
        for path in paths {
            let text = path.to_string_lossy();
            if text.contains("://") {
                return Err(AnchorError::NotAFile(text.into_owned()));
            }
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| AnchorError::Open {
                    path: path.clone(),
                    source,
                })?;
            sinks.push(Sink {
                path: path.clone(),
                file,
                torn: false,
            });
        }
        Ok(Anchor {
            key,
            paths: paths.to_vec(),
            sinks: Mutex::new(Sinks { covered: 0, sinks }),
            writing: AtomicBool::new(true),
            agreed: AtomicBool::new(true),
            disagreements: Mutex::new(Vec::new()),
        })
    }

    pub fn public(&self) -> &PublicKey {
        self.key.public()
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether the sinks agreed with the store at start and the last checkpoint was written
    /// (the `cutover_audit_anchor_ok` gauge).
    pub fn ok(&self) -> bool {
        self.writing.load(Ordering::Relaxed) && self.agreed.load(Ordering::Relaxed)
    }

    /// Append a checkpoint of `(seq, head)` to every sink and fsync it. Returns at once when
    /// a checkpoint of a later seq is already written (its head covers this one).
    pub fn checkpoint(&self, seq: u64, head: &str) -> Result<(), AnchorError> {
        let mut state = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if state.covered >= seq {
            return Ok(());
        }
        let checkpoint = Checkpoint::sign(&self.key, seq, head, cutover_model::now_ms());
        let mut line = serde_json::to_string(&checkpoint).expect("checkpoints serialize");
        line.push('\n');
        let mut failed = None;
        for sink in &mut state.sinks {
            let text = if sink.torn {
                format!("\n{line}")
            } else {
                line.clone()
            };
            let written = sink
                .file
                .write_all(text.as_bytes())
                .and_then(|()| sink.file.sync_data());
            match written {
                Ok(()) => sink.torn = false,
                Err(source) => {
                    sink.torn = true;
                    failed.get_or_insert(AnchorError::Write {
                        path: sink.path.clone(),
                        source,
                    });
                }
            }
        }
        if let Some(e) = failed {
            self.writing.store(false, Ordering::Relaxed);
            return Err(e);
        }
        state.covered = seq;
        self.writing.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Compare the end of every sink with the store's chain; log each disagreement as an
    /// error and clear [`Anchor::ok`]. Returns the problems found.
    pub fn check_at_start(&self, entries: &[AuditEntry]) -> Vec<String> {
        let mut found = Vec::new();
        for path in &self.paths {
            let tail = match read_tail(path, TAIL_BYTES) {
                Ok(Some(tail)) => tail,
                // Not a regular file (a pipe to a log shipper, a device): nothing to read.
                Ok(None) => continue,
                Err(e) => {
                    found.push(e.to_string());
                    continue;
                }
            };
            let report = verify_against(entries, &tail, self.public());
            if report.checkpoints == 0 && report.problems.iter().all(|p| p.is_unanchored()) {
                // A new sink: the next append anchors the whole chain.
                continue;
            }
            for problem in &report.problems {
                found.push(format!("{}: {problem}", path.display()));
            }
        }
        for problem in &found {
            tracing::error!(problem = %problem, "the audit sink disagrees with the store's audit chain; run `cutover audit verify --against <sink>`");
        }
        if !found.is_empty() {
            self.agreed.store(false, Ordering::Relaxed);
        }
        self.disagreements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&found);
        found
    }

    /// What the comparison at start found (empty: the sinks agreed).
    pub fn disagreements(&self) -> Vec<String> {
        self.disagreements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The last `max` bytes of a regular file, from its first whole line (`None`: not a
/// regular file).
fn read_tail(path: &Path, max: u64) -> Result<Option<String>, AnchorError> {
    let read_err = |source| AnchorError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Ok(None);
    }
    let start = meta.len().saturating_sub(max);
    file.seek(SeekFrom::Start(start)).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).map_err(read_err)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Some(match (start, text.find('\n')) {
        (0, _) => text,
        (_, Some(i)) => text[i + 1..].to_string(),
        (_, None) => String::new(),
    }))
}

/// A disagreement between the chain and its sink. Every one makes verification fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnchorProblem {
    /// The entries themselves do not chain (what the store-only verify also finds).
    ChainBroken { seq: u64, reason: String },
    /// A checkpoint names a seq beyond the chain's end.
    TailDeleted {
        chain_end: u64,
        checkpoint_seq: u64,
        line: usize,
    },
    /// The chain's hash at a checkpoint's seq is not the checkpoint's head.
    Rewritten {
        seq: u64,
        line: usize,
        /// The newest seq a checkpoint still confirms before it (0: none).
        confirmed_before: u64,
    },
    /// Entries after the newest matching checkpoint: no sink saw them.
    Unanchored { from: u64, to: u64 },
    /// A checkpoint under the right key id whose signature does not verify.
    BadSignature { line: usize, seq: u64 },
    /// A checkpoint signed by a key other than the one given.
    UnknownKey { line: usize, key_id: String },
}

impl AnchorProblem {
    fn is_unanchored(&self) -> bool {
        matches!(self, AnchorProblem::Unanchored { .. })
    }
}

impl std::fmt::Display for AnchorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnchorProblem::ChainBroken { seq, reason } => {
                write!(f, "the chain itself breaks at entry {seq}: {reason}")
            }
            AnchorProblem::TailDeleted {
                chain_end,
                checkpoint_seq,
                line,
            } => write!(
                f,
                "tail deleted: the sink's line {line} checkpoints entry {checkpoint_seq}, but the chain ends at entry {chain_end}; entries {} to {checkpoint_seq} were deleted",
                chain_end + 1
            ),
            AnchorProblem::Rewritten {
                seq,
                line,
                confirmed_before,
            } => write!(
                f,
                "rewritten: the chain's hash at entry {seq} differs from the checkpoint on the sink's line {line}; an entry from {} to {seq} was edited or replaced and the hashes after it recomputed",
                confirmed_before + 1
            ),
            AnchorProblem::Unanchored { from, to } => write!(
                f,
                "unanchored: entries {from} to {to} are in no checkpoint; they were appended while no sink was configured or its write failed, or added outside cutover"
            ),
            AnchorProblem::BadSignature { line, seq } => write!(
                f,
                "forged checkpoint: the signature on the sink's line {line} (entry {seq}) does not verify"
            ),
            AnchorProblem::UnknownKey { line, key_id } => write!(
                f,
                "unknown key: the sink's line {line} is signed by key {key_id}, not the audit key given"
            ),
        }
    }
}

/// What [`verify_against`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorReport {
    /// Entries in the chain.
    pub entries: u64,
    /// Checkpoints with a valid signature by the key.
    pub checkpoints: u64,
    /// The newest entry a checkpoint confirms (0: none).
    pub anchored_through: u64,
    /// Disagreements; verification passes only when there are none.
    pub problems: Vec<AnchorProblem>,
    /// Harmless facts: lines that are not checkpoints, entries covered only by a later
    /// checkpoint.
    pub notes: Vec<String>,
}

impl AnchorReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check a chain (`entries`, oldest first, as `GET /api/v1/audit` exports them) against
/// the text of a sink and the audit public key. Pure: no store, no files.
pub fn verify_against(entries: &[AuditEntry], sink: &str, key: &PublicKey) -> AnchorReport {
    let mut problems = Vec::new();
    let mut notes = Vec::new();

    // The chain as given: the store's checks, redone here so nothing is taken on trust.
    let mut prev_hash = String::new();
    for (i, entry) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        let reason = if entry.seq != expected {
            Some(format!(
                "expected entry {expected}, found entry {}",
                entry.seq
            ))
        } else if entry.prev_hash != prev_hash {
            Some("its link to the previous entry does not match".to_string())
        } else if crate::audit::entry_hash(entry) != entry.hash {
            Some("its content does not match its hash".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            problems.push(AnchorProblem::ChainBroken {
                seq: expected,
                reason,
            });
            break;
        }
        prev_hash = entry.hash.clone();
    }
    let chain_end = entries.len() as u64;
    let hash_at = |seq: u64| -> Option<&str> {
        entries
            .get(usize::try_from(seq).ok()?.checked_sub(1)?)
            .map(|e| e.hash.as_str())
    };

    let mut checkpoints = 0u64;
    let mut matched: Vec<u64> = Vec::new();
    let mut mismatched: Vec<(u64, usize)> = Vec::new();
    let mut beyond: Option<(u64, usize)> = None;
    let mut unreadable = Vec::new();
    for (i, text) in sink.lines().enumerate() {
        let line = i + 1;
        if text.trim().is_empty() {
            continue;
        }
        let checkpoint: Checkpoint = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(_) => {
                unreadable.push(line);
                continue;
            }
        };
        if checkpoint.key_id != key.key_id() {
            problems.push(AnchorProblem::UnknownKey {
                line,
                key_id: checkpoint.key_id,
            });
            continue;
        }
        if !checkpoint.signature_ok(key) || checkpoint.seq == 0 {
            problems.push(AnchorProblem::BadSignature {
                line,
                seq: checkpoint.seq,
            });
            continue;
        }
        checkpoints += 1;
        match hash_at(checkpoint.seq) {
            None => {
                if beyond.is_none_or(|(seq, _)| checkpoint.seq > seq) {
                    beyond = Some((checkpoint.seq, line));
                }
            }
            Some(hash) if hash == checkpoint.head => matched.push(checkpoint.seq),
            Some(_) => mismatched.push((checkpoint.seq, line)),
        }
    }
    if !unreadable.is_empty() {
        notes.push(format!(
            "{} line(s) of the sink are not checkpoints (a torn write, or text appended by something else): line {}",
            unreadable.len(),
            unreadable
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some((checkpoint_seq, line)) = beyond {
        problems.push(AnchorProblem::TailDeleted {
            chain_end,
            checkpoint_seq,
            line,
        });
    }
    for (seq, line) in mismatched {
        let confirmed_before = matched.iter().copied().filter(|m| *m < seq).max();
        problems.push(AnchorProblem::Rewritten {
            seq,
            line,
            confirmed_before: confirmed_before.unwrap_or(0),
        });
    }
    // A matching checkpoint confirms the chain up to its seq only when no checkpoint at or
    // before it disagrees (a rewrite followed by new appends can match again later).
    let first_bad = problems
        .iter()
        .filter_map(|p| match p {
            AnchorProblem::Rewritten { seq, .. } => Some(*seq),
            _ => None,
        })
        .min();
    let anchored_through = matched
        .iter()
        .copied()
        .filter(|m| first_bad.is_none_or(|bad| *m < bad))
        .max()
        .unwrap_or(0);
    let newest_match = matched.iter().copied().max().unwrap_or(0);
    if newest_match < chain_end {
        problems.push(AnchorProblem::Unanchored {
            from: newest_match + 1,
            to: chain_end,
        });
    }
    let mut own: Vec<u64> = matched
        .iter()
        .copied()
        .filter(|m| *m <= anchored_through)
        .collect();
    own.sort_unstable();
    own.dedup();
    let covered_only = anchored_through.saturating_sub(own.len() as u64);
    if covered_only > 0 {
        // Ranges of entries without a checkpoint of their own, for an auditor to compare
        // with when sinks were configured or failing (the first few).
        let mut ranges = Vec::new();
        let mut next = 1u64;
        for &seq in own.iter().chain(std::iter::once(&(anchored_through + 1))) {
            if seq > next {
                ranges.push(if seq - 1 == next {
                    next.to_string()
                } else {
                    format!("{next}-{}", seq - 1)
                });
            }
            next = seq + 1;
        }
        let shown = ranges.len().min(10);
        notes.push(format!(
            "{covered_only} entries have no checkpoint of their own ({}{}): appended before a sink was configured, while its write failed, or while a checkpoint of a later entry was being written; the head hash of the next checkpoint commits to them",
            ranges[..shown].join(", "),
            if ranges.len() > shown { ", …" } else { "" }
        ));
    }
    AnchorReport {
        entries: chain_end,
        checkpoints,
        anchored_through,
        problems,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{self, entry_hash};
    use cutover_store::Store;
    use serde_json::json;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        sink: PathBuf,
        public: PublicKey,
    }

    /// A store with `n` audited actions, anchored to one sink file.
    fn anchored(n: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let sink = dir.path().join("sink.jsonl");
        let key = KeyPair::generate(Algorithm::Ed25519);
        let public = key.public().clone();
        audit::anchor(
            &store,
            Anchor::open(key, std::slice::from_ref(&sink)).unwrap(),
        )
        .unwrap();
        for i in 1..=n {
            audit::record(
                &store,
                "alice",
                "deploy",
                &format!("production-{i}"),
                json!({"i": i}),
            )
            .unwrap();
        }
        Fixture {
            _dir: dir,
            store,
            sink,
            public,
        }
    }

    impl Fixture {
        fn entries(&self) -> Vec<AuditEntry> {
            audit::export(&self.store, None).unwrap()
        }
        fn sink_text(&self) -> String {
            std::fs::read_to_string(&self.sink).unwrap()
        }
    }

    /// What someone with write access to the store does after changing entry `from`:
    /// recompute every hash and link after it, so the chain verifies again.
    fn rehash_from(entries: &mut [AuditEntry], from: usize) {
        for i in from..entries.len() {
            entries[i].prev_hash = if i == 0 {
                String::new()
            } else {
                entries[i - 1].hash.clone()
            };
            entries[i].hash = entry_hash(&entries[i]);
        }
    }

    #[test]
    fn an_untouched_chain_matches_its_sink() {
        let f = anchored(5);
        let text = f.sink_text();
        assert_eq!(
            text.lines().count(),
            5,
            "one checkpoint per append:\n{text}"
        );
        let report = verify_against(&f.entries(), &text, &f.public);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.entries, 5);
        assert_eq!(report.checkpoints, 5);
        assert_eq!(report.anchored_through, 5);
        assert!(report.notes.is_empty(), "{:?}", report.notes);
    }

    #[test]
    fn missing_checkpoints_between_good_ones_are_noted_not_failed() {
        let f = anchored(5);
        let text = f.sink_text();
        let lines: Vec<&str> = text.lines().collect();
        let kept = format!("{}\n{}\n", lines[1], lines[4]);
        let report = verify_against(&f.entries(), &kept, &f.public);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.anchored_through, 5);
        assert!(
            report.notes[0].starts_with("3 entries have no checkpoint of their own (1, 3-4)"),
            "{}",
            report.notes[0]
        );
    }

    #[test]
    fn a_deleted_tail_is_found() {
        let f = anchored(5);
        let mut entries = f.entries();
        entries.truncate(3);
        let report = verify_against(&entries, &f.sink_text(), &f.public);
        assert_eq!(
            report.problems,
            vec![AnchorProblem::TailDeleted {
                chain_end: 3,
                checkpoint_seq: 5,
                line: 5
            }]
        );
        assert!(report.problems[0]
            .to_string()
            .contains("entries 4 to 5 were deleted"));
        assert_eq!(report.anchored_through, 3);
    }

    #[test]
    fn a_rewritten_and_rehashed_entry_is_found() {
        let f = anchored(5);
        let mut entries = f.entries();
        entries[2].actor = "mallory".to_string();
        rehash_from(&mut entries, 2);
        // The chain alone cannot tell: every link and hash checks.
        let alone = verify_against(&entries, "", &f.public);
        assert_eq!(
            alone.problems,
            vec![AnchorProblem::Unanchored { from: 1, to: 5 }]
        );
        let report = verify_against(&entries, &f.sink_text(), &f.public);
        let rewritten: Vec<_> = report
            .problems
            .iter()
            .filter(|p| matches!(p, AnchorProblem::Rewritten { .. }))
            .collect();
        assert_eq!(rewritten.len(), 3, "{report:?}");
        assert_eq!(
            rewritten[0],
            &AnchorProblem::Rewritten {
                seq: 3,
                line: 3,
                confirmed_before: 2
            }
        );
        assert!(!report.intact());
        assert_eq!(report.anchored_through, 2);
    }

    #[test]
    fn a_deleted_tail_appended_again_is_a_rewrite() {
        // Delete entries 4 and 5, then let cutover append two new ones: seqs 4 and 5 are
        // back with other hashes, and the sink has both versions.
        let f = anchored(5);
        let mut entries = f.entries();
        entries.truncate(3);
        for i in 0..2 {
            let mut e = entries[2].clone();
            e.seq = 4 + i;
            e.target = format!("innocent-{i}");
            entries.push(e);
        }
        rehash_from(&mut entries, 3);
        let key_text = f.sink_text();
        let report = verify_against(&entries, &key_text, &f.public);
        assert!(report
            .problems
            .iter()
            .any(|p| matches!(p, AnchorProblem::Rewritten { seq: 4, .. })));
    }

    #[test]
    fn entries_no_sink_saw_are_a_gap_but_earlier_ones_are_covered() {
        let f = anchored(0);
        // Three entries before the sink existed (their anchor is dropped for the moment).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for i in 1..=3 {
            audit::record(&store, "bob", "user.add", &format!("u{i}"), json!({})).unwrap();
        }
        let sink = dir.path().join("sink.jsonl");
        let key = KeyPair::generate(Algorithm::Ed25519);
        let public = key.public().clone();
        let anchor = Anchor::open(key, std::slice::from_ref(&sink)).unwrap();
        audit::anchor(&store, anchor).unwrap();
        for i in 4..=5 {
            audit::record(&store, "bob", "user.add", &format!("u{i}"), json!({})).unwrap();
        }
        let mut entries = audit::export(&store, None).unwrap();
        let text = std::fs::read_to_string(&sink).unwrap();
        let report = verify_against(&entries, &text, &public);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.anchored_through, 5);
        assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
        assert!(
            report.notes[0].starts_with("3 entries have no checkpoint of their own (1-3)"),
            "{}",
            report.notes[0]
        );

        // Two more appended where no sink saw them (sink unconfigured, or forged).
        for seq in 6..=7 {
            let mut e = entries[4].clone();
            e.seq = seq;
            entries.push(e);
        }
        rehash_from(&mut entries, 5);
        let report = verify_against(&entries, &text, &public);
        assert_eq!(
            report.problems,
            vec![AnchorProblem::Unanchored { from: 6, to: 7 }]
        );
        drop(f);
    }

    #[test]
    fn a_forged_checkpoint_is_found() {
        let f = anchored(3);
        let mut entries = f.entries();
        entries.truncate(2);
        // The attacker also appends a checkpoint that matches the shortened chain, without
        // the key: a copy of the last good one with a later seq.
        let mut forged: Checkpoint =
            serde_json::from_str(f.sink_text().lines().nth(1).unwrap()).unwrap();
        forged.seq = 3;
        let text = format!(
            "{}{}\n",
            f.sink_text(),
            serde_json::to_string(&forged).unwrap()
        );
        let report = verify_against(&entries, &text, &f.public);
        assert!(report
            .problems
            .contains(&AnchorProblem::BadSignature { line: 4, seq: 3 }));
        // The true checkpoint of entry 3 still shows the deletion.
        assert!(report
            .problems
            .iter()
            .any(|p| matches!(p, AnchorProblem::TailDeleted { .. })));
        // A signature that is not even hex.
        let mut garbled = forged.clone();
        garbled.sig = "zz".to_string();
        assert!(!garbled.signature_ok(&f.public));
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_is_found() {
        let f = anchored(2);
        let other = KeyPair::generate(Algorithm::Ed25519);
        let entries = f.entries();
        let foreign = Checkpoint::sign(&other, 2, &entries[1].hash, 1);
        let text = format!(
            "{}{}\n",
            f.sink_text(),
            serde_json::to_string(&foreign).unwrap()
        );
        let report = verify_against(&entries, &text, &f.public);
        assert_eq!(
            report.problems,
            vec![AnchorProblem::UnknownKey {
                line: 3,
                key_id: other.key_id().to_string()
            }]
        );
        // And verified with the wrong key, every checkpoint is unknown.
        let report = verify_against(&entries, &f.sink_text(), other.public());
        assert_eq!(report.checkpoints, 0);
        assert_eq!(report.problems.len(), 3);
    }

    #[test]
    fn lines_that_are_not_checkpoints_are_noted_not_failed() {
        let f = anchored(2);
        let text = format!("{{\"seq\":1,\"he\n{}garbage\n", f.sink_text());
        let report = verify_against(&f.entries(), &text, &f.public);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.notes.len(), 1);
        assert!(report.notes[0].contains("line 1, 4"), "{}", report.notes[0]);
    }

    #[test]
    fn an_unwritable_sink_fails_the_append_and_undoes_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let key = KeyPair::generate(Algorithm::Ed25519);
        // Every write to /dev/full fails with ENOSPC.
        let anchor = audit::anchor(
            &store,
            Anchor::open(key, &[PathBuf::from("/dev/full")]).unwrap(),
        )
        .unwrap();
        let err = audit::record(&store, "alice", "deploy", "p-1", json!({})).unwrap_err();
        assert!(matches!(err, crate::ServerError::AuditSink(_)), "{err}");
        assert!(!anchor.ok());
        assert_eq!(err.code(), crate::api::ErrorCode::Unavailable);
        let body = err.body();
        assert!(!body.message.contains("/dev/full"), "{}", body.message);
        assert!(body.message.contains("not carried out"), "{}", body.message);

        // A token whose creation cannot be audited does not exist afterwards.
        let new = crate::auth::NewToken {
            role: crate::auth::Role::Admin,
            env: None,
            name: Some("ci".to_string()),
            owner: None,
            expires_in_ms: None,
        };
        let err = crate::auth::create_token(&store, "alice", &new).unwrap_err();
        assert!(err.to_string().contains("no token was created"), "{err}");
        assert!(crate::auth::list_tokens(&store).unwrap().is_empty());
    }

    #[test]
    fn concurrent_appends_are_covered_by_some_checkpoint() {
        let f = anchored(0);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = f.store.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        audit::record(&store, "a", "deploy", &format!("{t}-{i}"), json!({}))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let report = verify_against(&f.entries(), &f.sink_text(), &f.public);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.anchored_through, 40);
    }

    #[test]
    fn the_start_check_finds_a_deleted_tail_and_accepts_a_new_sink() {
        let f = anchored(4);
        let anchor = audit::anchor_of(&f.store).unwrap();
        assert!(anchor.check_at_start(&f.entries()).is_empty());
        let mut entries = f.entries();
        entries.truncate(2);
        let found = anchor.check_at_start(&entries);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("tail deleted"), "{}", found[0]);
        assert!(!anchor.ok());
        assert_eq!(anchor.disagreements(), found);

        let dir = tempfile::tempdir().unwrap();
        let fresh = Anchor::open(
            KeyPair::generate(Algorithm::Ed25519),
            &[dir.path().join("new.jsonl")],
        )
        .unwrap();
        assert!(fresh.check_at_start(&f.entries()).is_empty());
        assert!(fresh.ok());
        // A device is not read (reading /dev/full never ends).
        let device = Anchor::open(
            KeyPair::generate(Algorithm::Ed25519),
            &[PathBuf::from("/dev/full")],
        )
        .unwrap();
        assert!(device.check_at_start(&f.entries()).is_empty());
    }

    #[test]
    fn the_key_is_made_once_with_its_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = load_or_create_key(&keys).unwrap();
        let b = load_or_create_key(&keys).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let public = PublicKey::from_pem_file(&public_key_path(&keys)).unwrap();
        assert_eq!(public.key_id(), a.key_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys.join("audit.key")), 0o600);
        assert_eq!(mode(&keys), 0o700);
        // A replaced public half is written again from the private key.
        std::fs::write(
            public_key_path(&keys),
            KeyPair::generate(Algorithm::Ed25519).public().to_pem(),
        )
        .unwrap();
        load_or_create_key(&keys).unwrap();
        let public = PublicKey::from_pem_file(&public_key_path(&keys)).unwrap();
        assert_eq!(public.key_id(), a.key_id());
    }

    #[test]
    fn given_sinks_are_remembered_for_starts_without_them() {
        let dir = tempfile::tempdir().unwrap();
        assert!(configured_sinks(dir.path(), &[]).unwrap().is_empty());
        let given = vec![dir.path().join("a.jsonl"), PathBuf::from("relative.jsonl")];
        let used = configured_sinks(dir.path(), &given).unwrap();
        assert!(used.iter().all(|p| p.is_absolute()), "{used:?}");
        assert_eq!(configured_sinks(dir.path(), &[]).unwrap(), used);
        // Given ones replace the remembered ones.
        let other = vec![dir.path().join("b.jsonl")];
        assert_eq!(configured_sinks(dir.path(), &other).unwrap(), other);
        assert_eq!(configured_sinks(dir.path(), &[]).unwrap(), other);
        std::fs::write(remembered_sinks_path(dir.path()), "{").unwrap();
        let err = configured_sinks(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            err.contains("audit-sinks.json") && err.contains("remove it"),
            "{err}"
        );
    }

    #[test]
    fn http_sinks_are_refused_with_a_clear_error() {
        let err = Anchor::open(
            KeyPair::generate(Algorithm::Ed25519),
            &[PathBuf::from("http://siem.example/audit")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a file path"), "{err}");
    }
}
