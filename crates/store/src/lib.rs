//! sled-backed state store: plans, deployment records, journals, releases, leases,
//! retirements, approvals and small settings.
//!
//! Every tree holds JSON values under string keys (compound keys join their parts with a
//! NUL byte). Every write that may precede a side effect is flushed to disk before the
//! call returns, so the journal discipline of the executor holds across crashes. One
//! process owns a store at a time: sled locks the database file, and a second opener gets
//! [`StoreError::InUse`] naming the owner's pid.
//!
//! New typed trees (tokens, audit chain) are one call away: see
//! [`Store::typed_tree`].
//!
//! Changes are published: [`Store::subscribe`] hands out a receiver of [`StoreEvent`]s,
//! sent after each write (and its flush) succeeded, so followers wait for a change instead
//! of polling. Writes made directly through a [`TypedTree`] or the `kv_*` settings are not
//! published.

use cutover_model::{
    format_ms, now_ms, DeploymentKind, DeploymentStatus, ErrorClass, JournalEntry, JournalEvent,
    LiveChange, LivePeriod, Plan, ProviderError, Release,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::broadcast;

/// Name of the file holding the pid of the process that owns the store.
const PID_FILE: &str = "cutover.pid";
/// Changes of current releases ([`LiveChange`]), keyed `<env>\0<sequence number>`.
const LIVE_TREE: &str = "live_changes";

/// How many events a subscriber may fall behind before it gets
/// [`broadcast::error::RecvError::Lagged`] (and should re-read what it shows).
pub const EVENT_CAPACITY: usize = 1024;

/// A change made through a [`Store`], published after the write (and its flush) succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A journal entry was appended (and flushed).
    Journal { deployment_id: String, seq: u64 },
    /// A deployment record was created or its status changed.
    Deployment { deployment_id: String },
    /// An approval decision was recorded.
    Approval { deployment_id: String },
    /// Anything else that status pages show changed: releases, current pointer, leases,
    /// retirements, history, the environment list.
    Environment { env: String },
    /// Credentials changed (a token revoked, a user's grants replaced): open streams check
    /// that their caller may still read them.
    Credentials,
}

/// Errors of the state store. Messages say what failed and what to do.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "the state store at {} is in use by another cutover process (pid {}); stop it with `cutover serve --stop` or wait",
        dir.display(),
        pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".to_string())
    )]
    InUse { dir: PathBuf, pid: Option<u32> },

    #[error("could not open the state store at {}; check that the directory is writable", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },

    #[error("state store operation failed: {context}; check disk space and permissions")]
    Db {
        context: String,
        #[source]
        source: sled::Error,
    },

    #[error("the state store entry {tree}/{key} is not valid; restore the store from a backup")]
    Corrupt {
        tree: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("plan {id} already exists with digest {existing}, not {new}; plans are immutable, plan a new deployment instead")]
    PlanExists {
        id: String,
        existing: String,
        new: String,
    },

    #[error("release {id} of environment {env} already exists with different content; releases are immutable, use a new release id")]
    ReleaseExists { env: String, id: String },

    #[error(
        "environment {env} is locked by deployment {} started by {} at {}; wait for it to finish or inspect it with `cutover status {}`",
        holder.deployment_id,
        holder.holder,
        format_ms(holder.acquired_at_ms),
        holder.deployment_id
    )]
    LeaseHeld { env: String, holder: Lease },

    #[error("no {what} {id} in the state store; check the id with `cutover history`")]
    NotFound { what: &'static str, id: String },

    #[error("the approval is not valid: {detail}")]
    InvalidApproval { detail: String },

    #[error("the state store worker for {context} stopped before finishing; retry, and look for a panic in the log")]
    Worker { context: String },
}

impl StoreError {
    /// Whether retrying the same operation may succeed. Only I/O trouble (a full disk, a
    /// lock held by a process that may stop) is transient; corruption, refused writes and
    /// missing entries are permanent, so nothing retries them.
    pub fn class(&self) -> ErrorClass {
        let io = |source: &sled::Error| match source {
            sled::Error::Io(_) => ErrorClass::Transient,
            sled::Error::CollectionNotFound(_)
            | sled::Error::Unsupported(_)
            | sled::Error::ReportableBug(_)
            | sled::Error::Corruption { .. } => ErrorClass::Permanent,
        };
        match self {
            StoreError::InUse { .. } => ErrorClass::Transient,
            StoreError::Open { source, .. } | StoreError::Db { source, .. } => io(source),
            StoreError::Corrupt { .. }
            | StoreError::PlanExists { .. }
            | StoreError::ReleaseExists { .. }
            | StoreError::LeaseHeld { .. }
            | StoreError::NotFound { .. }
            | StoreError::InvalidApproval { .. }
            | StoreError::Worker { .. } => ErrorClass::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// A store error met by a provider call keeps its class: corruption is not retried.
impl From<StoreError> for ProviderError {
    fn from(e: StoreError) -> Self {
        ProviderError {
            class: e.class(),
            message: format!("state store: {e}"),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn db_err(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Db { context, source }
}

/// The durable record of one deployment, kept beside its plan and journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub app: String,
    pub env: String,
    pub kind: DeploymentKind,
    pub plan_digest: String,
    pub release_id: String,
    pub previous_release: Option<String>,
    pub requested_by: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub status: DeploymentStatus,
}

impl DeploymentRecord {
    /// A `Planned` record describing `plan`.
    pub fn from_plan(plan: &Plan) -> Self {
        DeploymentRecord {
            id: plan.deployment_id.clone(),
            app: plan.app.clone(),
            env: plan.env.clone(),
            kind: plan.kind.clone(),
            plan_digest: plan.digest.clone(),
            release_id: plan.release_id.clone(),
            previous_release: plan.previous_release.clone(),
            requested_by: plan.requested_by.clone(),
            created_at_ms: plan.created_at_ms,
            finished_at_ms: None,
            status: DeploymentStatus::Planned,
        }
    }
}

/// One line of an environment's release history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub release_id: String,
    pub deployment_id: String,
    pub kind: DeploymentKind,
    /// `recorded` when the release became current, then the deployment's final status label
    /// (`succeeded`, `rolled_back`, `stuck`).
    pub outcome: String,
    pub at_ms: u64,
    pub by: String,
}

/// The lock one deployment holds on an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub deployment_id: String,
    /// Who started the deployment.
    pub holder: String,
    pub acquired_at_ms: u64,
}

/// Instances of a replaced release, kept warm until `due_at_ms`, then removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    pub env: String,
    pub release: String,
    pub instances: Vec<String>,
    pub due_at_ms: u64,
    /// The deployment that scheduled it.
    pub deployment_id: String,
}

/// What an approver decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Approve,
    Reject,
}

/// One person's decision on a deployment waiting at an approval gate. It names the plan
/// digest and image id it applies to; the executor counts it only when both match the
/// deployment (a decision about another plan or image is stale).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub deployment_id: String,
    /// Who decided (the authenticated user name).
    pub by: String,
    pub decision: Decision,
    /// `sha256:<hex>` of the plan approved.
    pub plan_digest: String,
    /// `sha256:<hex>` of the image approved.
    pub image_id: String,
    /// `sha256:<hex>` of the approval view the decision was made on (empty for decisions
    /// recorded before views were digested).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub view_digest: String,
    pub comment: String,
    pub at_ms: u64,
}

/// What [`TypedTree::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim<T> {
    /// The key was free; the value given is now stored under it.
    Inserted,
    /// The key was taken; this is the value stored under it.
    Existing(T),
}

/// A sled tree whose values are JSON-encoded `T` under string keys.
pub struct TypedTree<T> {
    name: String,
    tree: sled::Tree,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedTree<T> {
    fn clone(&self) -> Self {
        TypedTree {
            name: self.name.clone(),
            tree: self.tree.clone(),
            _value: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> TypedTree<T> {
    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            tree: self.name.clone(),
            key: printable_key(key),
            source,
        })
    }

    fn encode(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("store values serialize to json")
    }

    pub fn get(&self, key: &str) -> Result<Option<T>> {
        match self
            .tree
            .get(key.as_bytes())
            .map_err(db_err(format!("read {}/{key}", self.name)))?
        {
            Some(bytes) => Ok(Some(self.decode(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Insert or replace. Not flushed: call [`Store::flush`] before a side effect.
    pub fn insert(&self, key: &str, value: &T) -> Result<()> {
        self.tree
            .insert(key.as_bytes(), Self::encode(value))
            .map_err(db_err(format!("write {}/{key}", self.name)))?;
        Ok(())
    }

    /// Insert `value` unless the key exists; returns the value now stored (atomic).
    pub fn insert_if_absent(&self, key: &str, value: &T) -> Result<T>
    where
        T: Clone,
    {
        match self.claim(key, value)? {
            Claim::Inserted => Ok(value.clone()),
            Claim::Existing(current) => Ok(current),
        }
    }

    /// Store `value` under `key` only if the key is free, atomically: of several
    /// claimers of one key (threads or tasks), exactly one gets [`Claim::Inserted`]; the
    /// others get the winner's value. Not flushed: call [`Store::flush`] before a side
    /// effect that the claim guards.
    pub fn claim(&self, key: &str, value: &T) -> Result<Claim<T>> {
        let bytes = Self::encode(value);
        loop {
            match self
                .tree
                .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(bytes.clone()))
                .map_err(db_err(format!("claim {}/{key}", self.name)))?
            {
                Ok(()) => return Ok(Claim::Inserted),
                Err(cas) => match cas.current {
                    Some(current) => {
                        return Ok(Claim::Existing(self.decode(key.as_bytes(), &current)?))
                    }
                    // The holder removed it between the two looks: try again.
                    None => continue,
                },
            }
        }
    }

    /// Replace the value under `key` with `new` (`None` removes it) only if the stored
    /// value equals `old` (`None`: the key is absent), atomically. Returns whether it
    /// swapped. Values are compared decoded, so two encodings of one value are equal. Not
    /// flushed.
    pub fn compare_and_swap(&self, key: &str, old: Option<&T>, new: Option<&T>) -> Result<bool>
    where
        T: PartialEq,
    {
        let context = || format!("compare and swap {}/{key}", self.name);
        let new_bytes = new.map(Self::encode);
        loop {
            let current = self.tree.get(key.as_bytes()).map_err(db_err(context()))?;
            let matches = match (&current, old) {
                (None, None) => true,
                (Some(bytes), Some(old)) => self.decode(key.as_bytes(), bytes)? == *old,
                _ => false,
            };
            if !matches {
                return Ok(false);
            }
            match self
                .tree
                .compare_and_swap(key.as_bytes(), current, new_bytes.clone())
                .map_err(db_err(context()))?
            {
                Ok(()) => return Ok(true),
                // Changed between the read and the swap: look again.
                Err(_) => continue,
            }
        }
    }

    pub fn remove(&self, key: &str) -> Result<Option<T>> {
        match self
            .tree
            .remove(key.as_bytes())
            .map_err(db_err(format!("remove {}/{key}", self.name)))?
        {
            Some(bytes) => Ok(Some(self.decode(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (key, bytes) = item.map_err(db_err(format!("scan {}", self.name)))?;
            let value = self.decode(&key, &bytes)?;
            out.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
        Ok(out)
    }

    /// Every value in key order.
    pub fn values(&self) -> Result<Vec<T>> {
        Ok(self.scan_prefix("")?.into_iter().map(|(_, v)| v).collect())
    }
}

fn printable_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

/// Compound key: parts joined by NUL (ids and names never contain it).
fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

fn journal_key(deployment_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(deployment_id.len() + 9);
    k.extend_from_slice(deployment_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Handle on the state store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    plans: TypedTree<Plan>,
    deployments: TypedTree<DeploymentRecord>,
    journal: sled::Tree,
    releases: TypedTree<Release>,
    current: TypedTree<String>,
    history: TypedTree<HistoryEntry>,
    leases: TypedTree<Lease>,
    sequences: sled::Tree,
    retirements: TypedTree<Retirement>,
    approvals: TypedTree<Approval>,
    kv: TypedTree<serde_json::Value>,
    /// Where [`StoreEvent`]s go; shared by every clone.
    events: broadcast::Sender<StoreEvent>,
    /// Set on the handle [`Store::write_async`] lends out: `flush` is left to the caller
    /// and events wait here until it is done.
    deferred: Option<Arc<Mutex<Vec<StoreEvent>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Open (or create) the store in `dir`. Fails with [`StoreError::InUse`] when another
    /// process (or another handle in this one) holds it.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            source: sled::Error::Io(e),
        })?;
        // No background flusher: every write that precedes a side effect is flushed
        // explicitly, and an idle control plane should not wake twice a second for nothing.
        let db = match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                let pid = std::fs::read_to_string(dir.join(PID_FILE))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(StoreError::InUse {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(source) => {
                return Err(StoreError::Open {
                    dir: dir.to_path_buf(),
                    source,
                })
            }
        };
        // Best effort: only used to name the owner in `InUse` errors.
        let _ = std::fs::write(dir.join(PID_FILE), std::process::id().to_string());
        Self::from_db(dir.to_path_buf(), db)
    }

    /// A store that lives in memory/temporary files and vanishes on drop (tests).
    pub fn temporary() -> Result<Store> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|source| StoreError::Open {
                dir: PathBuf::from("<temporary>"),
                source,
            })?;
        Self::from_db(PathBuf::from("<temporary>"), db)
    }

    fn from_db(dir: PathBuf, db: sled::Db) -> Result<Store> {
        let raw = |name: &str| {
            db.open_tree(name)
                .map_err(db_err(format!("open tree {name}")))
        };
        let journal = raw("journal")?;
        let sequences = raw("sequences")?;
        Ok(Store {
            plans: typed(&db, "plans")?,
            deployments: typed(&db, "deployments")?,
            journal,
            releases: typed(&db, "releases")?,
            current: typed(&db, "current")?,
            history: typed(&db, "history")?,
            leases: typed(&db, "leases")?,
            sequences,
            retirements: typed(&db, "retirements")?,
            approvals: typed(&db, "approvals")?,
            kv: typed(&db, "kv")?,
            events: broadcast::channel(EVENT_CAPACITY).0,
            deferred: None,
            dir,
            db,
        })
    }

    /// Directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A typed tree named `name` (created when missing). Trees used by this crate are named
    /// `plans`, `deployments`, `journal`, `releases`, `current`, `history`, `leases`,
    /// `sequences`, `retirements`, `approvals` and `kv`; pick another name.
    pub fn typed_tree<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<TypedTree<T>> {
        typed(&self.db, name)
    }

    /// Subscribe to changes made through this store (and its clones) from now on. A
    /// receiver that falls more than [`EVENT_CAPACITY`] events behind gets
    /// [`broadcast::error::RecvError::Lagged`]; it should then re-read the state it shows.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Announce a change made through a [`TypedTree`] (those writes publish nothing by
    /// themselves), after it was flushed.
    pub fn announce(&self, event: StoreEvent) {
        self.publish(event);
    }

    /// Send `event` to the subscribers, if any (having none is not an error).
    fn publish(&self, event: StoreEvent) {
        match &self.deferred {
            Some(pending) => pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(event),
            None => {
                let _ = self.events.send(event);
            }
        }
    }

    fn publish_env(&self, env: &str) {
        self.publish(StoreEvent::Environment {
            env: env.to_string(),
        });
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<()> {
        if self.deferred.is_some() {
            return Ok(());
        }
        self.db.flush().map_err(db_err("flush to disk"))?;
        Ok(())
    }

    /// Make every write so far durable, on tokio's blocking pool instead of the calling
    /// async worker.
    pub async fn flush_async(&self) -> Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|_| StoreError::Worker {
                context: "flush to disk".to_string(),
            })?
            .map_err(db_err("flush to disk"))?;
        Ok(())
    }

    /// Run `writes` (any store methods) for async callers: they are applied at once, in
    /// memory, on the calling thread, with their flushes deferred; then one flush runs on
    /// tokio's blocking pool while this future waits, and only then are their events
    /// published. The async worker never waits for the disk, and a caller dropped before
    /// the end made its writes (they reach the disk with the next flush) but publishes
    /// nothing. Durable when this returns, like the blocking methods; when `writes` fails,
    /// the writes it made before failing are flushed and announced too.
    pub async fn write_async<R>(&self, writes: impl FnOnce(&Store) -> Result<R>) -> Result<R> {
        let pending = Arc::new(Mutex::new(Vec::new()));
        let deferred = Store {
            deferred: Some(pending.clone()),
            ..self.clone()
        };
        // Writes made before an error are real: flush and announce them either way.
        let out = writes(&deferred);
        self.flush_async().await?;
        let events = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
        for event in events {
            self.publish(event);
        }
        out
    }

    /// Run `work` (store reads and writes, flushes included) on tokio's blocking pool, so
    /// an async worker thread never waits for the disk. Works on current-thread runtimes.
    pub async fn run_blocking<R, F>(&self, context: &str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|_| StoreError::Worker {
                context: context.to_string(),
            })?
    }

    // ----- plans and deployment records -----

    /// Save a plan and its deployment record. Saving the same plan again is a no-op (the
    /// record is kept); a different plan under the same id is refused.
    pub fn save_plan(&self, plan: &Plan, record: &DeploymentRecord) -> Result<()> {
        let stored = self.plans.insert_if_absent(&plan.deployment_id, plan)?;
        if stored.digest != plan.digest || stored != *plan {
            return Err(StoreError::PlanExists {
                id: plan.deployment_id.clone(),
                existing: stored.digest,
                new: plan.digest.clone(),
            });
        }
        self.deployments.insert_if_absent(&record.id, record)?;
        self.flush()?;
        self.publish(StoreEvent::Deployment {
            deployment_id: record.id.clone(),
        });
        Ok(())
    }

    pub fn plan(&self, id: &str) -> Result<Option<Plan>> {
        self.plans.get(id)
    }

    pub fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        self.deployments.get(id)
    }

    /// Deployments (of `env`, when given), newest first, at most `limit`.
    pub fn deployments(&self, env: Option<&str>, limit: usize) -> Result<Vec<DeploymentRecord>> {
        let mut all: Vec<DeploymentRecord> = self
            .deployments
            .values()?
            .into_iter()
            .filter(|r| env.is_none_or(|e| r.env == e))
            .collect();
        all.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        all.truncate(limit);
        Ok(all)
    }

    /// Set a deployment's status (and its finish time when the status is final). Flushed.
    pub fn set_status(&self, id: &str, status: DeploymentStatus) -> Result<DeploymentRecord> {
        let mut record = self.deployment(id)?.ok_or_else(|| StoreError::NotFound {
            what: "deployment",
            id: id.to_string(),
        })?;
        record.finished_at_ms = if status.is_finished() {
            Some(record.finished_at_ms.unwrap_or_else(now_ms))
        } else {
            None
        };
        record.status = status;
        self.deployments.insert(id, &record)?;
        self.flush()?;
        self.publish(StoreEvent::Deployment {
            deployment_id: id.to_string(),
        });
        Ok(record)
    }

    /// Deployments that started and did not finish (`running` or `unwinding`): the ones a
    /// restarted control plane resumes. `planned` ones are not included.
    pub fn unfinished(&self) -> Result<Vec<DeploymentRecord>> {
        let mut out: Vec<DeploymentRecord> = self
            .deployments
            .values()?
            .into_iter()
            .filter(|r| {
                matches!(
                    r.status,
                    DeploymentStatus::Running | DeploymentStatus::Unwinding { .. }
                )
            })
            .collect();
        out.sort_by_key(|r| r.created_at_ms);
        Ok(out)
    }

    // ----- journal -----

    /// Append an event to a deployment's journal; assigns the next sequence number and the
    /// time. Flushed before returning. Sequence numbers are dense without a lock: the entry
    /// takes the key after the last one with a compare-and-swap, and a writer that lost the
    /// key to another tries the next one; no lock is held across the flush.
    pub fn append(&self, deployment_id: &str, event: JournalEvent) -> Result<JournalEntry> {
        let entry = self.append_unflushed(deployment_id, event)?;
        self.flush()?;
        self.publish(StoreEvent::Journal {
            deployment_id: deployment_id.to_string(),
            seq: entry.seq,
        });
        Ok(entry)
    }

    /// [`Store::append`] for async callers: the entry is written at once (in memory, so a
    /// caller that is dropped afterwards writes nothing more), then the flush runs on
    /// tokio's blocking pool while this future waits; the async worker never blocks on
    /// the disk. The entry is durable when this returns.
    pub async fn append_async(
        &self,
        deployment_id: &str,
        event: JournalEvent,
    ) -> Result<JournalEntry> {
        self.write_async(|store| store.append(deployment_id, event))
            .await
    }

    fn append_unflushed(&self, deployment_id: &str, event: JournalEvent) -> Result<JournalEntry> {
        let mut prefix = deployment_id.as_bytes().to_vec();
        prefix.push(0);
        let at_ms = now_ms();
        let entry = loop {
            let seq = match self.journal.scan_prefix(&prefix).next_back() {
                Some(item) => {
                    let (k, _) =
                        item.map_err(db_err(format!("read journal of {deployment_id}")))?;
                    let tail: [u8; 8] =
                        k[k.len() - 8..].try_into().map_err(|_| StoreError::Db {
                            context: format!("journal key of {deployment_id} has a bad encoding"),
                            source: sled::Error::Unsupported(
                                "journal key does not end in an 8-byte sequence number".to_string(),
                            ),
                        })?;
                    u64::from_be_bytes(tail) + 1
                }
                None => 0,
            };
            let entry = JournalEntry {
                seq,
                at_ms,
                event: event.clone(),
            };
            let bytes = serde_json::to_vec(&entry).expect("journal entries serialize to json");
            let taken = self
                .journal
                .compare_and_swap(
                    journal_key(deployment_id, seq),
                    None as Option<&[u8]>,
                    Some(bytes),
                )
                .map_err(db_err(format!("append to journal of {deployment_id}")))?;
            if taken.is_ok() {
                break entry;
            }
        };
        Ok(entry)
    }

    /// The whole journal of a deployment, in order.
    pub fn journal(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        let mut prefix = deployment_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.journal.scan_prefix(&prefix) {
            let (k, bytes) = item.map_err(db_err(format!("read journal of {deployment_id}")))?;
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let entry = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                tree: "journal".to_string(),
                key: printable_key(&k[..prefix.len()]),
                source,
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    // ----- releases -----

    /// Store a release. Storing the same release again is a no-op; different content under
    /// an existing id is refused.
    pub fn put_release(&self, release: &Release) -> Result<()> {
        let stored = self
            .releases
            .insert_if_absent(&key(&[&release.env, &release.id]), release)?;
        if stored != *release {
            return Err(StoreError::ReleaseExists {
                env: release.env.clone(),
                id: release.id.clone(),
            });
        }
        self.flush()?;
        self.publish_env(&release.env);
        Ok(())
    }

    /// Remove a release that never became current (undo of a failed deployment's record).
    pub fn remove_release(&self, env: &str, id: &str) -> Result<()> {
        self.releases.remove(&key(&[env, id]))?;
        self.flush()?;
        self.publish_env(env);
        Ok(())
    }

    pub fn release(&self, env: &str, id: &str) -> Result<Option<Release>> {
        self.releases.get(&key(&[env, id]))
    }

    /// Releases of `env`, newest first.
    pub fn releases(&self, env: &str) -> Result<Vec<Release>> {
        let mut out: Vec<Release> = self
            .releases
            .scan_prefix(&format!("{env}\0"))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        out.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(out)
    }

    /// The release currently serving `env`, if any.
    pub fn current_release(&self, env: &str) -> Result<Option<Release>> {
        match self.current.get(env)? {
            Some(id) => self.release(env, &id),
            None => Ok(None),
        }
    }

    /// Id of the current release of `env` (even if its record is missing).
    pub fn current_release_id(&self, env: &str) -> Result<Option<String>> {
        self.current.get(env)
    }

    /// Make `release_id` current for `env`. Flushed.
    pub fn set_current(&self, env: &str, release_id: &str) -> Result<()> {
        self.current.insert(env, &release_id.to_string())?;
        self.flush()?;
        self.publish_env(env);
        Ok(())
    }

    /// Forget the current release of `env` (undo of a first deployment). Flushed.
    pub fn clear_current(&self, env: &str) -> Result<()> {
        self.current.remove(env)?;
        self.flush()?;
        self.publish_env(env);
        Ok(())
    }

    /// Insert or update the history line of `entry.deployment_id` in `env`. Flushed.
    pub fn record_history(&self, env: &str, entry: &HistoryEntry) -> Result<()> {
        self.history
            .insert(&key(&[env, &entry.deployment_id]), entry)?;
        self.flush()?;
        self.publish_env(env);
        Ok(())
    }

    /// History of `env`, newest first.
    pub fn history(&self, env: &str) -> Result<Vec<HistoryEntry>> {
        let mut out: Vec<HistoryEntry> = self
            .history
            .scan_prefix(&format!("{env}\0"))?
            .into_iter()
            .map(|(_, h)| h)
            .collect();
        out.sort_by(|a, b| {
            b.at_ms
                .cmp(&a.at_ms)
                .then_with(|| b.deployment_id.cmp(&a.deployment_id))
        });
        Ok(out)
    }

    // ----- live changes -----

    /// Record that `change.env`'s current release changed (after [`Store::set_current`] or
    /// [`Store::clear_current`]). Idempotent: when the environment's newest change already
    /// says the same (a re-run of the step after a crash), nothing is written. Flushed.
    pub fn note_live(&self, change: &LiveChange) -> Result<()> {
        let tree = self.typed_tree::<LiveChange>(LIVE_TREE)?;
        let existing = tree.scan_prefix(&format!("{}\0", change.env))?;
        // Keys sort by their sequence number, so the last one is the newest change.
        let count = existing.len();
        let newest = existing.into_iter().map(|(_, c)| c).next_back();
        if newest.is_some_and(|n| {
            n.deployment_id == change.deployment_id
                && n.release_id == change.release_id
                && n.cause == change.cause
        }) {
            return Ok(());
        }
        // One deployment holds the environment at a time, so the count is not raced.
        tree.insert(&format!("{}\0{count:012}", change.env), change)?;
        self.flush()?;
        self.publish_env(&change.env);
        Ok(())
    }

    /// Every recorded change of current releases (of `env`, or of all environments),
    /// oldest first. Changes before this record existed are not in it.
    pub fn live_changes(&self, env: Option<&str>) -> Result<Vec<LiveChange>> {
        let tree = self.typed_tree::<LiveChange>(LIVE_TREE)?;
        let prefix = env.map(|e| format!("{e}\0")).unwrap_or_default();
        let mut out: Vec<LiveChange> = tree
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        // Stable: changes of one environment in the same millisecond keep their order.
        out.sort_by_key(|c| c.at_ms);
        Ok(out)
    }

    /// Where `image_id` has been live: [`cutover_model::image_path`] over every change.
    pub fn image_path(&self, image_id: &str) -> Result<Vec<LivePeriod>> {
        Ok(cutover_model::image_path(
            &self.live_changes(None)?,
            image_id,
        ))
    }

    // ----- leases -----

    /// Take the lease of `env` for `lease.deployment_id`, atomically. Taking it again for
    /// the same deployment returns the existing lease (resume after a crash).
    pub fn acquire_lease(&self, env: &str, lease: Lease) -> Result<Lease> {
        let held = self.leases.insert_if_absent(env, &lease)?;
        if held.deployment_id != lease.deployment_id {
            return Err(StoreError::LeaseHeld {
                env: env.to_string(),
                holder: held,
            });
        }
        self.flush()?;
        self.publish_env(env);
        Ok(held)
    }

    /// Give the lease of `env` back if `deployment_id` holds it; returns whether it did.
    pub fn release_lease(&self, env: &str, deployment_id: &str) -> Result<bool> {
        loop {
            let Some(current) = self
                .leases
                .tree
                .get(env.as_bytes())
                .map_err(db_err(format!("read lease of {env}")))?
            else {
                return Ok(false);
            };
            let lease = self.leases.decode(env.as_bytes(), &current)?;
            if lease.deployment_id != deployment_id {
                return Ok(false);
            }
            let swapped = self
                .leases
                .tree
                .compare_and_swap(env.as_bytes(), Some(current), None as Option<&[u8]>)
                .map_err(db_err(format!("release lease of {env}")))?;
            if swapped.is_ok() {
                self.flush()?;
                self.publish_env(env);
                return Ok(true);
            }
        }
    }

    pub fn lease(&self, env: &str) -> Result<Option<Lease>> {
        self.leases.get(env)
    }

    // ----- sequences -----

    /// Next deployment number of `env`: 1, 2, 3, … Durable and monotonic.
    pub fn next_deployment_seq(&self, env: &str) -> Result<u64> {
        let new = self
            .sequences
            .update_and_fetch(env.as_bytes(), |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(db_err(format!("bump deployment sequence of {env}")))?
            .expect("update_and_fetch always stores a value");
        self.flush()?;
        self.publish_env(env);
        let bytes: [u8; 8] = new.as_ref().try_into().map_err(|_| StoreError::Db {
            context: format!("deployment sequence of {env} has a bad encoding"),
            source: sled::Error::Unsupported("sequence value is not 8 bytes".to_string()),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// The number `next_deployment_seq` would return, without taking it (for dry-run plans).
    pub fn peek_deployment_seq(&self, env: &str) -> Result<u64> {
        let current = self
            .sequences
            .get(env.as_bytes())
            .map_err(db_err(format!("read deployment sequence of {env}")))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(current + 1)
    }

    /// Every environment that has had a deployment, sorted.
    pub fn environments(&self) -> Result<Vec<String>> {
        let mut envs = Vec::new();
        for item in self.sequences.iter() {
            let (key, _) = item.map_err(db_err("list environments".to_string()))?;
            envs.push(String::from_utf8_lossy(&key).into_owned());
        }
        envs.sort();
        Ok(envs)
    }

    // ----- retirements -----

    /// Schedule (or reschedule) the retirement of `retirement.release`. Flushed.
    pub fn schedule_retirement(&self, retirement: &Retirement) -> Result<()> {
        self.retirements
            .insert(&key(&[&retirement.env, &retirement.release]), retirement)?;
        self.flush()?;
        self.publish_env(&retirement.env);
        Ok(())
    }

    /// Drop a pending retirement; returns it if there was one. Flushed.
    pub fn cancel_retirement(&self, env: &str, release: &str) -> Result<Option<Retirement>> {
        let removed = self.retirements.remove(&key(&[env, release]))?;
        self.flush()?;
        if removed.is_some() {
            self.publish_env(env);
        }
        Ok(removed)
    }

    /// Mark a retirement done (its instances are gone). Flushed.
    pub fn complete_retirement(&self, env: &str, release: &str) -> Result<()> {
        self.retirements.remove(&key(&[env, release]))?;
        self.flush()?;
        self.publish_env(env);
        Ok(())
    }

    pub fn retirement(&self, env: &str, release: &str) -> Result<Option<Retirement>> {
        self.retirements.get(&key(&[env, release]))
    }

    /// Pending retirements due at or before `now_ms`, earliest first.
    pub fn due_retirements(&self, now_ms: u64) -> Result<Vec<Retirement>> {
        let mut out: Vec<Retirement> = self
            .retirements
            .values()?
            .into_iter()
            .filter(|r| r.due_at_ms <= now_ms)
            .collect();
        out.sort_by_key(|r| r.due_at_ms);
        Ok(out)
    }

    /// Pending retirements of `env`, earliest first.
    pub fn retirements(&self, env: &str) -> Result<Vec<Retirement>> {
        let mut out: Vec<Retirement> = self
            .retirements
            .scan_prefix(&format!("{env}\0"))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        out.sort_by_key(|r| r.due_at_ms);
        Ok(out)
    }

    // ----- approvals -----

    /// Record `approval`, replacing an earlier one by the same person for the same
    /// deployment (people may change their mind until the gate is passed). Flushed.
    pub fn add_approval(&self, approval: &Approval) -> Result<()> {
        let invalid = |detail: &str| StoreError::InvalidApproval {
            detail: detail.to_string(),
        };
        if approval.deployment_id.is_empty() || approval.deployment_id.contains('\0') {
            return Err(invalid(
                "the deployment id is empty or contains a NUL character; pass the id shown by `cutover status`",
            ));
        }
        if approval.by.trim().is_empty() || approval.by.contains('\0') {
            return Err(invalid(
                "the approver name is empty or contains a NUL character; approve as a named user",
            ));
        }
        self.approvals
            .insert(&key(&[&approval.deployment_id, &approval.by]), approval)?;
        self.flush()?;
        self.publish(StoreEvent::Approval {
            deployment_id: approval.deployment_id.clone(),
        });
        Ok(())
    }

    /// Every approval (or rejection) recorded for `deployment_id`, oldest first.
    pub fn approvals(&self, deployment_id: &str) -> Result<Vec<Approval>> {
        let mut out: Vec<Approval> = self
            .approvals
            .scan_prefix(&format!("{deployment_id}\0"))?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        out.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.by.cmp(&b.by)));
        Ok(out)
    }

    // ----- small settings -----

    pub fn kv_get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.kv.get(name)? {
            Some(value) => {
                serde_json::from_value(value)
                    .map(Some)
                    .map_err(|source| StoreError::Corrupt {
                        tree: "kv".to_string(),
                        key: name.to_string(),
                        source,
                    })
            }
            None => Ok(None),
        }
    }

    /// Set a setting. Flushed.
    pub fn kv_set<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.kv_put(name, value)?;
        self.flush()
    }

    /// Set a setting without flushing: call [`Store::flush`] (outside any lock) before
    /// relying on it.
    pub fn kv_put<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let value = serde_json::to_value(value).expect("settings serialize to json");
        self.kv.insert(name, &value)
    }

    pub fn kv_remove(&self, name: &str) -> Result<()> {
        self.kv.remove(name)?;
        self.flush()
    }
}

fn typed<T: Serialize + DeserializeOwned>(db: &sled::Db, name: &str) -> Result<TypedTree<T>> {
    let tree = db
        .open_tree(name)
        .map_err(db_err(format!("open tree {name}")))?;
    Ok(TypedTree {
        name: name.to_string(),
        tree,
        _value: PhantomData,
    })
}

#[cfg(test)]
mod tests;
