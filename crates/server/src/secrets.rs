//! The secret store: versions of each environment's secrets, sealed with envelope
//! encryption (`cutover-secrets`) under the master key this control plane was started
//! with, which never sits in the store. A key-check value beside them refuses a wrong key
//! at start ([`open`]).
//!
//! Nothing here returns a value to a client: set and rotate take one in (admins of the
//! environment), list shows names, versions, ages, who set them and which releases pin
//! them. Values leave the store only through [`StoreSecrets`], the provider-facing
//! [`SecretSource`], at provision time, and every such injection is audited with the
//! release, container and deployment. Every set, rotate, revoke, removal and rewrap is
//! audited too; a change the audit log cannot record is undone.
//!
//! Versions count up per secret and are never reused: a removed secret keeps a tombstone
//! with its last version number, so a release pinning `name@3` never gets another value
//! under that number.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use cutover_model::{
    now_ms, InstanceSpec, ProviderError, SecretPin, SecretSource, SecretSourceRef, Spec,
};
use cutover_secrets::secrecy::ExposeSecret;
use cutover_secrets::{Aad, KeyCheck, KeyWrapper, MasterKey, Sealed, SecretValue, SecretsError};
use cutover_store::{Store, TypedTree};

use crate::api::{
    ErrorBody, RevokeSecret, RewrapReport, RewrapSecrets, SecretChanged, SecretLine,
    SecretVersionLine, SecretsQuery, SetSecret,
};
use crate::auth::{Principal, Role};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::{audit, ControlPlane, ServerError};

const SECRETS_TREE: &str = "secrets";
const KEY_CHECK: &str = "secrets_key_check";
/// Test-only hook: the control plane panics right after it decrypted a secret for an
/// injection. Off unless set to `1` in the control plane's environment.
pub const TEST_PANIC_HOOK: &str = "CUTOVER_TEST_PANIC_ON_INJECT";

/// The master key in use (replaced by a rewrap).
#[derive(Default)]
pub struct Keyring {
    master: RwLock<Option<Arc<MasterKey>>>,
}

impl Keyring {
    pub fn new(master: MasterKey) -> Keyring {
        Keyring {
            master: RwLock::new(Some(Arc::new(master))),
        }
    }

    fn get(&self) -> Result<Arc<MasterKey>, ServerError> {
        self.master
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                ServerError::Conflict(
                    "this control plane was started without a secrets master key; restart it with --secrets-key or CUTOVER_SECRETS_KEY".to_string(),
                )
            })
    }

    fn replace(&self, master: MasterKey) {
        *self.master.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(master));
    }
}

/// Check `master` against the store's key check (made on first use). A wrong key is
/// refused before anything is written.
pub fn open(store: &Store, master: &MasterKey) -> Result<(), SecretsError> {
    // A check that cannot be read is never replaced: that would bless any key.
    let check: Option<KeyCheck> = store
        .kv_get(KEY_CHECK)
        .map_err(|_| SecretsError::Malformed("the key check in the store cannot be read"))?;
    match check {
        Some(check) => check.verify(master),
        None => {
            let check = KeyCheck::new(master)?;
            store
                .kv_set(KEY_CHECK, &check)
                .map_err(|_| SecretsError::Malformed("cannot write the key check"))?;
            store
                .flush()
                .map_err(|_| SecretsError::Malformed("cannot flush the key check"))
        }
    }
}

/// A stored secret: its versions (sealed), or a tombstone after removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub env: String,
    pub name: String,
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    pub versions: Vec<StoredVersion>,
    /// The last version number ever given (kept by a removal).
    pub last_version: u64,
    /// Removed (a tombstone keeping `last_version`).
    #[serde(default)]
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub version: u64,
    pub created_at_ms: u64,
    pub created_by: String,
    pub origin: String,
    pub sealed: Sealed,
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at_ms: u64,
    pub by: String,
}

impl SecretRecord {
    /// The newest version that is not revoked.
    pub fn latest(&self) -> Option<&StoredVersion> {
        self.versions.iter().rev().find(|v| v.revoked.is_none())
    }

    fn version(&self, version: u64) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.version == version)
    }
}

fn tree(store: &Store) -> Result<TypedTree<SecretRecord>, ServerError> {
    Ok(store.typed_tree(SECRETS_TREE)?)
}

fn key(env: &str, name: &str) -> String {
    format!("{env}\0{name}")
}

fn check_env_name(env: &str) -> Result<(), ServerError> {
    cutover_model::check_secret_name(env)
        .map_err(|why| ServerError::BadRequest(format!("env: {env:?} is not valid: {why}")))
}

fn check_name(name: &str) -> Result<(), ServerError> {
    cutover_secrets::check_name(name).map_err(|e| ServerError::BadRequest(format!("name: {e}")))
}

fn secrets_error(e: SecretsError) -> ServerError {
    match e {
        SecretsError::Decrypt(_) | SecretsError::WrongMasterKey => {
            ServerError::Conflict(e.to_string())
        }
        SecretsError::Random(_) | SecretsError::KeyFileWrite { .. } => {
            ServerError::Internal(e.to_string())
        }
        other => ServerError::BadRequest(other.to_string()),
    }
}

/// The record of `env/name` (tombstones included).
pub fn record(store: &Store, env: &str, name: &str) -> Result<Option<SecretRecord>, ServerError> {
    Ok(tree(store)?.get(&key(env, name))?)
}

/// Store `value` as the next version of `env/name`. `rotate`: the secret must exist.
/// Audited as `secret.set`/`secret.rotate`/`secret.store` (a spec's env:// or file://);
/// undone when the audit log cannot record it.
#[allow(clippy::too_many_arguments)]
pub fn put_version(
    cp: &ControlPlane,
    actor: &str,
    env: &str,
    name: &str,
    value: &SecretValue,
    origin: &str,
    action: &str,
    max_age: Option<Option<u64>>,
) -> Result<SecretChanged, ServerError> {
    check_env_name(env)?;
    check_name(name)?;
    let master = cp.secrets.get()?;
    let tree = tree(&cp.store)?;
    let store_key = key(env, name);
    let before = tree.get(&store_key)?;
    let live = before.as_ref().filter(|r| !r.removed);
    if action == "secret.rotate" && live.is_none() {
        return Err(ServerError::NotFound(format!(
            "secret {env}/{name} does not exist; store it first with `cutover secret set {env}/{name}`"
        )));
    }
    let version = before.as_ref().map_or(0, |r| r.last_version) + 1;
    let sealed = cutover_secrets::seal(master.as_ref(), &Aad::new(env, name, version), value)
        .map_err(secrets_error)?;
    let mut record = match live {
        Some(r) => r.clone(),
        None => SecretRecord {
            env: env.to_string(),
            name: name.to_string(),
            max_age_ms: None,
            versions: Vec::new(),
            last_version: version - 1,
            removed: false,
        },
    };
    if let Some(max_age) = max_age {
        record.max_age_ms = max_age;
    }
    record.versions.push(StoredVersion {
        version,
        created_at_ms: now_ms(),
        created_by: actor.to_string(),
        origin: origin.to_string(),
        sealed,
        revoked: None,
    });
    record.last_version = version;
    tree.insert(&store_key, &record)?;
    cp.store.flush()?;
    let audited = audit::record(
        &cp.store,
        actor,
        action,
        &format!("{env}/{name}"),
        json!({"version": version, "origin": origin, "max_age_ms": record.max_age_ms}),
    );
    if let Err(e) = audited {
        restore(cp, &tree, &store_key, before.as_ref())?;
        return Err(unaudited(e, &format!("secret {env}/{name} was not stored")));
    }
    cp.store.announce(cutover_store::StoreEvent::Environment {
        env: env.to_string(),
    });
    Ok(SecretChanged {
        env: env.to_string(),
        name: name.to_string(),
        version,
    })
}

fn restore(
    cp: &ControlPlane,
    tree: &TypedTree<SecretRecord>,
    store_key: &str,
    before: Option<&SecretRecord>,
) -> Result<(), ServerError> {
    match before {
        Some(before) => tree.insert(store_key, before)?,
        None => {
            tree.remove(store_key)?;
        }
    }
    cp.store.flush()?;
    Ok(())
}

fn unaudited(e: ServerError, what: &str) -> ServerError {
    match e {
        ServerError::AuditSink(_) => ServerError::AuditSink(what.to_string()),
        other => other,
    }
}

fn live_record(
    tree: &TypedTree<SecretRecord>,
    env: &str,
    name: &str,
) -> Result<SecretRecord, ServerError> {
    tree.get(&key(env, name))?
        .filter(|r| !r.removed)
        .ok_or_else(|| {
            ServerError::NotFound(format!(
                "secret {env}/{name} does not exist; `cutover secret list {env}` lists them"
            ))
        })
}

/// Make `version` of `env/name` unusable (deploys skip it; a rollback that pins it is
/// refused). Audited.
pub fn revoke(
    cp: &ControlPlane,
    actor: &str,
    env: &str,
    name: &str,
    version: u64,
) -> Result<SecretChanged, ServerError> {
    let tree = tree(&cp.store)?;
    let before = live_record(&tree, env, name)?;
    let mut record = before.clone();
    let found = record
        .versions
        .iter_mut()
        .find(|v| v.version == version)
        .ok_or_else(|| {
            ServerError::NotFound(format!(
                "secret {env}/{name} has no version {version}; `cutover secret list {env}` shows its versions"
            ))
        })?;
    if found.revoked.is_none() {
        found.revoked = Some(Revocation {
            at_ms: now_ms(),
            by: actor.to_string(),
        });
    }
    let store_key = key(env, name);
    tree.insert(&store_key, &record)?;
    cp.store.flush()?;
    if let Err(e) = audit::record(
        &cp.store,
        actor,
        "secret.revoke",
        &format!("{env}/{name}"),
        json!({"version": version}),
    ) {
        restore(cp, &tree, &store_key, Some(&before))?;
        return Err(unaudited(
            e,
            &format!("version {version} of {env}/{name} was not revoked"),
        ));
    }
    Ok(SecretChanged {
        env: env.to_string(),
        name: name.to_string(),
        version,
    })
}

/// Remove `env/name` and every version (a tombstone keeps the version count). Audited.
pub fn remove(
    cp: &ControlPlane,
    actor: &str,
    env: &str,
    name: &str,
) -> Result<SecretChanged, ServerError> {
    let tree = tree(&cp.store)?;
    let before = live_record(&tree, env, name)?;
    let tombstone = SecretRecord {
        versions: Vec::new(),
        removed: true,
        max_age_ms: None,
        ..before.clone()
    };
    let store_key = key(env, name);
    tree.insert(&store_key, &tombstone)?;
    cp.store.flush()?;
    if let Err(e) = audit::record(
        &cp.store,
        actor,
        "secret.remove",
        &format!("{env}/{name}"),
        json!({"last_version": before.last_version}),
    ) {
        restore(cp, &tree, &store_key, Some(&before))?;
        return Err(unaudited(
            e,
            &format!("secret {env}/{name} was not removed"),
        ));
    }
    Ok(SecretChanged {
        env: env.to_string(),
        name: name.to_string(),
        version: before.last_version,
    })
}

/// Move every data key to `new`, leaving value ciphertexts as they are; the key check
/// follows. Every record is rewrapped in memory first, so one that does not open changes
/// nothing. Audited.
pub fn rewrap(cp: &ControlPlane, actor: &str, new: MasterKey) -> Result<RewrapReport, ServerError> {
    let old = cp.secrets.get()?;
    let tree = tree(&cp.store)?;
    let all = tree.scan_prefix("")?;
    let mut moved = Vec::with_capacity(all.len());
    let mut versions = 0;
    for (store_key, record) in &all {
        let mut next = record.clone();
        for v in &mut next.versions {
            let aad = Aad::new(&record.env, &record.name, v.version);
            v.sealed = cutover_secrets::rewrap(old.as_ref(), &new, &aad, &v.sealed)
                .map_err(secrets_error)?;
            versions += 1;
        }
        moved.push((store_key.clone(), next));
    }
    let check = KeyCheck::new(&new).map_err(secrets_error)?;
    for (store_key, record) in &moved {
        tree.insert(store_key, record)?;
    }
    cp.store.kv_set(KEY_CHECK, &check)?;
    cp.store.flush()?;
    let key_id = new.key_id();
    cp.secrets.replace(new);
    let report = RewrapReport {
        secrets: moved.iter().filter(|(_, r)| !r.removed).count(),
        versions,
        key_id: key_id.clone(),
    };
    // A rewrap is not undone when it cannot be audited: the old key may be gone already.
    audit::record(
        &cp.store,
        actor,
        "secret.rewrap",
        "secrets",
        json!({"from_key": old.key_id(), "to_key": key_id, "versions": versions}),
    )?;
    Ok(report)
}

/// The value of `env/name@version`: refused when missing, revoked or undecryptable.
pub fn value(
    store: &Store,
    keyring: &Keyring,
    env: &str,
    name: &str,
    version: u64,
) -> Result<SecretValue, ServerError> {
    let record = record(store, env, name)?
        .filter(|r| !r.removed)
        .ok_or_else(|| {
            ServerError::NotFound(format!(
                "secret {env}/{name} does not exist; store it with `cutover secret set {env}/{name}`"
            ))
        })?;
    let stored = record.version(version).ok_or_else(|| {
        ServerError::NotFound(format!(
            "secret {env}/{name} has no version {version}; `cutover secret list {env}` shows its versions"
        ))
    })?;
    if stored.revoked.is_some() {
        return Err(ServerError::Conflict(format!(
            "version {version} of secret {env}/{name} is revoked; deploy with the latest versions (`cutover rotate {env}`)"
        )));
    }
    let master = keyring.get()?;
    cutover_secrets::open(
        master.as_ref(),
        &Aad::new(env, name, version),
        &stored.sealed,
    )
    .map_err(secrets_error)
}

/// Releases of `env` by the secret versions they pin: `(name, version) -> release ids`.
fn pinned_by(
    store: &Store,
    env: &str,
) -> Result<BTreeMap<(String, u64), Vec<String>>, ServerError> {
    let mut out: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for release in store.releases(env)? {
        for mount in release.container.secrets.values() {
            if let Some(pin) = &mount.pin {
                out.entry((pin.name.clone(), pin.version))
                    .or_default()
                    .push(release.id.clone());
            }
        }
    }
    Ok(out)
}

/// Every secret (of `env`, when given): names and versions, never values.
pub fn list(store: &Store, env: Option<&str>) -> Result<Vec<SecretLine>, ServerError> {
    let prefix = env.map(|e| format!("{e}\0")).unwrap_or_default();
    let now = now_ms();
    let mut pins: BTreeMap<String, BTreeMap<(String, u64), Vec<String>>> = BTreeMap::new();
    let mut out = Vec::new();
    for (_, record) in tree(store)?.scan_prefix(&prefix)? {
        if record.removed {
            continue;
        }
        if !pins.contains_key(&record.env) {
            pins.insert(record.env.clone(), pinned_by(store, &record.env)?);
        }
        let used = &pins[&record.env];
        let latest = record.latest();
        let age_ms = latest.map_or(0, |v| now.saturating_sub(v.created_at_ms));
        out.push(SecretLine {
            env: record.env.clone(),
            name: record.name.clone(),
            latest: latest.map(|v| v.version),
            max_age_ms: record.max_age_ms,
            age_ms,
            expired: record.max_age_ms.is_some_and(|max| age_ms > max),
            versions: record
                .versions
                .iter()
                .map(|v| SecretVersionLine {
                    version: v.version,
                    created_at_ms: v.created_at_ms,
                    created_by: v.created_by.clone(),
                    origin: v.origin.clone(),
                    revoked_at_ms: v.revoked.as_ref().map(|r| r.at_ms),
                    revoked_by: v.revoked.as_ref().map(|r| r.by.clone()),
                    used_by: used
                        .get(&(record.name.clone(), v.version))
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect(),
        });
    }
    Ok(out)
}

// ----- age -----

const EXPIRY_NOTICES: &str = "secrets_expiry_notified";

/// What `cutover status` warns about in `env`: each secret whose latest version is older
/// than its `max_age`.
pub fn expired_warnings(store: &Store, env: &str) -> Result<Vec<String>, ServerError> {
    Ok(list(store, Some(env))?
        .into_iter()
        .filter(|s| s.expired)
        .map(|s| {
            format!(
                "secret {}/{} version {} is {} old, past its max age of {}; rotate it: `cutover secret rotate {}/{}` then `cutover rotate {}`",
                s.env,
                s.name,
                s.latest.unwrap_or(0),
                cutover_model::format_duration_ms(s.age_ms),
                cutover_model::format_duration_ms(s.max_age_ms.unwrap_or(0)),
                s.env,
                s.name,
                s.env
            )
        })
        .collect())
}

/// Webhook events for secrets that went past their max age since the last look, each
/// (secret, version) once; remembered in the store.
pub fn due_expiry_events(store: &Store) -> Result<Vec<crate::webhooks::Event>, ServerError> {
    let mut notified: BTreeMap<String, u64> = store.kv_get(EXPIRY_NOTICES)?.unwrap_or_default();
    let mut events = Vec::new();
    for line in list(store, None)? {
        let (true, Some(version)) = (line.expired, line.latest) else {
            continue;
        };
        let key = format!("{}/{}", line.env, line.name);
        if notified.get(&key) == Some(&version) {
            continue;
        }
        notified.insert(key.clone(), version);
        events.push(crate::webhooks::Event {
            event: "secret_expired".to_string(),
            deployment: String::new(),
            env: line.env.clone(),
            release: String::new(),
            reason: Some(format!(
                "secret {key} version {version} is older than its max age of {}; rotate it",
                cutover_model::format_duration_ms(line.max_age_ms.unwrap_or(0))
            )),
        });
    }
    if !events.is_empty() {
        store.kv_set(EXPIRY_NOTICES, &notified)?;
        store.flush()?;
    }
    Ok(events)
}

/// Fire `secret_expired` webhooks now and then hourly: one wake-up an hour.
pub async fn watch_ages(cp: Arc<ControlPlane>) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
    loop {
        let store = cp.store.clone();
        match tokio::task::spawn_blocking(move || due_expiry_events(&store)).await {
            Ok(Ok(events)) => {
                for event in events {
                    cp.webhooks.notify(event);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not check the ages of secrets"),
            Err(e) => tracing::warn!(error = %e, "checking the ages of secrets failed"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

// ----- pinning a spec's references -----

/// Where a spec came from, for errors that point at its `[container.secrets]` entries.
pub struct SpecText<'a> {
    pub text: &'a str,
    pub path: &'a std::path::Path,
}

/// Pin every `[container.secrets]` entry of `spec` to a stored version of `env`:
/// `secret://` to its latest usable version; `env://` (from `caller_env`, what the caller
/// sent) and `file://` are stored as a new version of the entry's name unless the latest
/// holds the same value. With `store == false` (a plan that starts nothing) nothing is
/// written and a new value is shown as the version it would get. Errors name the spec's
/// file, line and field.
pub fn pin_spec(
    cp: &ControlPlane,
    who: &Principal,
    spec: &mut Spec,
    env: &str,
    caller_env: &BTreeMap<String, String>,
    source: Option<&SpecText<'_>>,
    store: bool,
) -> Result<(), ServerError> {
    let at = |name: &str, message: String| -> ServerError {
        match source {
            Some(s) => ServerError::Spec(cutover_spec::secret_error(s.text, s.path, name, message)),
            None => ServerError::BadRequest(format!("container.secrets.{name}: {message}")),
        }
    };
    let names: Vec<String> = spec.container.secrets.keys().cloned().collect();
    for mount_name in names {
        let mount = &spec.container.secrets[&mount_name];
        let source_ref = SecretSourceRef::parse(&mount.source).map_err(|m| at(&mount_name, m))?;
        let pin = match source_ref {
            SecretSourceRef::Store(name) => {
                let record = record(&cp.store, env, &name)?.filter(|r| !r.removed);
                let latest = record.as_ref().and_then(|r| r.latest()).ok_or_else(|| {
                    at(
                        &mount_name,
                        format!(
                            "secret {name} of environment {env} does not exist (or every version is revoked); store it with `cutover secret set {env}/{name}`"
                        ),
                    )
                })?;
                SecretPin {
                    name,
                    version: latest.version,
                }
            }
            SecretSourceRef::Env(var) => {
                let value = caller_env.get(&var).ok_or_else(|| {
                    at(
                        &mount_name,
                        format!("env://{var}: {var} is not set in the environment of the command that planned this; export it, or store the value with `cutover secret set {env}/{mount_name}`"),
                    )
                })?;
                let value = cutover_secrets::secret_value(value.as_bytes().to_vec());
                pin_value(
                    cp,
                    who,
                    env,
                    &mount_name,
                    value,
                    &format!("env://{var}"),
                    store,
                )?
            }
            SecretSourceRef::File(path) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    at(
                        &mount_name,
                        format!(
                            "cannot read {}: {e}; check the file on the control plane's machine",
                            path.display()
                        ),
                    )
                })?;
                let value = cutover_secrets::secret_value(bytes);
                pin_value(
                    cp,
                    who,
                    env,
                    &mount_name,
                    value,
                    &format!("file://{}", path.display()),
                    store,
                )?
            }
        };
        if let Some(mount) = spec.container.secrets.get_mut(&mount_name) {
            mount.pin = Some(pin);
        }
    }
    Ok(())
}

/// Pin a value from the caller or a file: the latest version when it holds the same
/// value, else a new version (stored only when `store`).
fn pin_value(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
    name: &str,
    value: SecretValue,
    origin: &str,
    store: bool,
) -> Result<SecretPin, ServerError> {
    cutover_secrets::check_value(&value)
        .map_err(|e| ServerError::BadRequest(format!("container.secrets.{name}: {e}")))?;
    let existing = record(&cp.store, env, name)?.filter(|r| !r.removed);
    // A spec may add versions only to secrets that specs made: one an admin set is never
    // overwritten by whoever may deploy.
    if existing
        .as_ref()
        .is_some_and(|r| r.versions.iter().any(|v| v.origin == "api"))
    {
        return Err(ServerError::Forbidden(format!(
            "container.secrets.{name}: secret {env}/{name} is managed with `cutover secret set`; a spec's {origin} cannot replace it: reference it as secret://{name}, or give this entry another name"
        )));
    }
    if let Some(latest) = existing.as_ref().and_then(|r| r.latest()) {
        let same = self::value(&cp.store, &cp.secrets, env, name, latest.version)
            .map(|stored| {
                use subtle::ConstantTimeEq;
                bool::from(stored.expose_secret().ct_eq(value.expose_secret()))
            })
            .unwrap_or(false);
        if same {
            return Ok(SecretPin {
                name: name.to_string(),
                version: latest.version,
            });
        }
    }
    if !store {
        let next = record(&cp.store, env, name)?.map_or(0, |r| r.last_version) + 1;
        return Ok(SecretPin {
            name: name.to_string(),
            version: next,
        });
    }
    let changed = put_version(
        cp,
        &who.name,
        env,
        name,
        &value,
        origin,
        "secret.store",
        None,
    )?;
    Ok(SecretPin {
        name: name.to_string(),
        version: changed.version,
    })
}

/// Revoked pins among `pins` (mount name → pin), as `name version N` phrases.
pub fn revoked_pins(
    store: &Store,
    env: &str,
    mounts: &BTreeMap<String, cutover_model::SecretMount>,
) -> Result<Vec<String>, ServerError> {
    let mut out = Vec::new();
    for mount in mounts.values() {
        let Some(pin) = &mount.pin else { continue };
        let usable = record(store, env, &pin.name)?
            .filter(|r| !r.removed)
            .and_then(|r| r.version(pin.version).map(|v| v.revoked.is_none()))
            .unwrap_or(false);
        if !usable {
            out.push(format!("{} version {}", pin.name, pin.version));
        }
    }
    Ok(out)
}

/// `mounts` pinned to the latest usable versions (for a rotation, or a rollback with
/// `--use-latest-secrets`).
pub fn repin_latest(
    store: &Store,
    env: &str,
    mounts: &mut BTreeMap<String, cutover_model::SecretMount>,
) -> Result<(), ServerError> {
    for (mount_name, mount) in mounts.iter_mut() {
        let Some(pin) = &mut mount.pin else { continue };
        let latest = record(store, env, &pin.name)?
            .filter(|r| !r.removed)
            .and_then(|r| r.latest().map(|v| v.version))
            .ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "container.secrets.{mount_name}: secret {env}/{} has no usable version; store one with `cutover secret set {env}/{}`",
                    pin.name, pin.name
                ))
            })?;
        pin.version = latest;
    }
    Ok(())
}

// ----- the provider seam -----

/// The store as the providers' [`SecretSource`]: every value handed out is audited as an
/// injection (release, container, deployment).
pub struct StoreSecrets {
    pub store: Store,
    pub keyring: Arc<Keyring>,
}

#[async_trait]
impl SecretSource for StoreSecrets {
    async fn resolve(
        &self,
        instance: &InstanceSpec,
        mount: &str,
        pin: &SecretPin,
    ) -> Result<SecretValue, ProviderError> {
        let fail = |e: ServerError| ProviderError::permanent(format!("secret {mount}: {e}"));
        let value = value(
            &self.store,
            &self.keyring,
            &instance.env,
            &pin.name,
            pin.version,
        )
        .map_err(fail)?;
        if std::env::var_os(TEST_PANIC_HOOK).is_some_and(|v| v == "1") {
            // Test-only (off unless set): a crash while a value is held, so tests can
            // search the crash output for it.
            panic!("{TEST_PANIC_HOOK}=1: panicking while holding secret {mount} ({value:?})");
        }
        audit::record_async(
            &self.store,
            "control-plane",
            "secret.inject",
            &format!("{}/{}", instance.env, pin.name),
            json!({
                "version": pin.version,
                "as": mount,
                "release": instance.release,
                "container": instance.name,
                "deployment": instance.deployment_id,
            }),
        )
        .await
        .map_err(|e| {
            ProviderError::permanent(format!(
                "secret {mount}: the injection could not be audited ({e}); nothing was injected"
            ))
        })?;
        Ok(value)
    }
}

// ----- handlers -----

type Cp = State<Arc<ControlPlane>>;
type Who = Extension<Principal>;

fn decode_value(text: &str) -> Result<SecretValue, ServerError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| {
            ServerError::BadRequest("value_base64: not base64 (standard alphabet)".to_string())
        })?;
    let value = cutover_secrets::secret_value(bytes);
    cutover_secrets::check_value(&value)
        .map_err(|e| ServerError::BadRequest(format!("value_base64: {e}")))?;
    Ok(value)
}

fn parse_max_age(text: Option<&str>) -> Result<Option<Option<u64>>, ServerError> {
    match text.map(str::trim) {
        None => Ok(None),
        Some("none") | Some("") => Ok(Some(None)),
        Some(text) => humantime::parse_duration(text)
            .map(|d| Some(Some(d.as_millis() as u64)))
            .map_err(|e| {
                ServerError::BadRequest(format!(
                    "max_age: {text:?} is not a duration ({e}); use e.g. 90d or 12h"
                ))
            }),
    }
}

/// Secrets and their versions: names, ages, who set them, which releases pin them; never
/// a value (viewers of the environment).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", params(SecretsQuery),
    responses(
        (status = 200, body = Vec<SecretLine>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub(crate) async fn list_secrets(
    State(cp): Cp,
    Extension(who): Who,
    ApiQuery(query): ApiQuery<SecretsQuery>,
) -> Result<Json<Vec<SecretLine>>, ServerError> {
    if let Some(env) = &query.env {
        who.require(Role::Viewer, Some(env))?;
    }
    let all = list(&cp.store, query.env.as_deref())?;
    Ok(Json(
        all.into_iter()
            .filter(|s| who.can(Role::Viewer, Some(&s.env)))
            .collect(),
    ))
}

async fn store_version(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
    name: &str,
    req: SetSecret,
    action: &'static str,
) -> Result<SecretChanged, ServerError> {
    who.require(Role::Admin, Some(env))?;
    let value = decode_value(&req.value_base64)?;
    let max_age = parse_max_age(req.max_age.as_deref())?;
    put_version(cp, &who.name, env, name, &value, "api", action, max_age)
}

/// Store a new version of a secret (admins of the environment). The value is never
/// returned by any endpoint.
#[utoipa::path(put, path = "/api/v1/secrets/{env}/{name}", tag = "secrets", request_body = SetSecret,
    params(("env" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = SecretChanged),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub(crate) async fn set_secret(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath((env, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SetSecret>,
) -> Result<Json<SecretChanged>, ServerError> {
    Ok(Json(
        store_version(&cp, &who, &env, &name, req, "secret.set").await?,
    ))
}

/// Store a new version of an existing secret (admins of the environment); releases keep
/// their pinned versions until `cutover rotate`.
#[utoipa::path(post, path = "/api/v1/secrets/{env}/{name}/rotate", tag = "secrets", request_body = SetSecret,
    params(("env" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = SecretChanged),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn rotate_secret(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath((env, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SetSecret>,
) -> Result<Json<SecretChanged>, ServerError> {
    Ok(Json(
        store_version(&cp, &who, &env, &name, req, "secret.rotate").await?,
    ))
}

/// Make a version unusable (admins of the environment).
#[utoipa::path(post, path = "/api/v1/secrets/{env}/{name}/revoke", tag = "secrets", request_body = RevokeSecret,
    params(("env" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = SecretChanged),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn revoke_secret(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath((env, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<RevokeSecret>,
) -> Result<Json<SecretChanged>, ServerError> {
    who.require(Role::Admin, Some(&env))?;
    Ok(Json(revoke(&cp, &who.name, &env, &name, req.version)?))
}

/// Remove a secret and all its versions (admins of the environment).
#[utoipa::path(delete, path = "/api/v1/secrets/{env}/{name}", tag = "secrets",
    params(("env" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = SecretChanged),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn remove_secret(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath((env, name)): ApiPath<(String, String)>,
) -> Result<Json<SecretChanged>, ServerError> {
    who.require(Role::Admin, Some(&env))?;
    Ok(Json(remove(&cp, &who.name, &env, &name)?))
}

/// Move every data key to a new master key (admins of all environments). The values'
/// ciphertexts are not touched; restart the control plane with the new key afterwards.
#[utoipa::path(post, path = "/api/v1/secrets/rewrap", tag = "secrets", request_body = RewrapSecrets,
    responses(
        (status = 200, body = RewrapReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
pub(crate) async fn rewrap_secrets(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<RewrapSecrets>,
) -> Result<Json<RewrapReport>, ServerError> {
    who.require(Role::Admin, None)?;
    let new = MasterKey::parse(&req.new_key_base64, "new_key_base64")
        .map_err(|e| ServerError::BadRequest(e.to_string()))?;
    Ok(Json(rewrap(&cp, &who.name, new)?))
}
