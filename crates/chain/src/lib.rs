//! The local supply chain: scans images exported from Docker with `cutover-supply`, signs
//! attestations with `cutover-signing`, and verifies them before anything runs.
//!
//! Everything is kept beside the image, content-addressed by its id, under
//! `<state>/supply/<hex>/`: `report-<key>.json` (the scan report, keyed by the digests of
//! the image, the secret rules, the exceptions and the advisory database, all by content),
//! `sbom.cdx.json`, and per environment `verdict-<env>.json` and `attestations-<env>.json`.
//! The advisory database imported with `cutover advisories import` is
//! `<state>/advisories.json`, and the record of its import (content digest, time)
//! `<state>/advisories-import.json`: the gate fails without a database, or with one
//! imported longer ago than `gate.max_advisory_age`, unless `gate.allow_missing_advisories`.
//!
//! Without a signing key in the spec, a local key is made on first use under
//! `<state>/keys/` (`local.key`, encrypted, and `local.pub`) and trusted by environments
//! that list no `trusted_keys`: it proves images were scanned and signed by this control
//! plane. Its passphrase is kept apart from it, outside the state directory, in
//! `$XDG_CONFIG_HOME/cutover/passphrases/<key id>` (default `~/.config/…`; directories
//! 0700, file 0600): a copy of the state directory (a backup, a build context, a build
//! that could read it) holds no usable key. A `local.pass` left beside the key by earlier
//! versions is moved there on first use. Protected environments should list their own
//! keys.
//!
//! Where images come from is an [`ImageExport`] (the Docker Engine's `docker save` in
//! production, a tarball on disk in tests); where gate exceptions are audited is an
//! [`ExceptionAudit`] (the control plane's audit chain).

mod docker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use zeroize::Zeroizing;

use cutover_model::{
    now_ms, ExceptionEvidence, FindingEvidence, GateSpec, ImageInfo, ImageRef, ProvenanceEvidence,
    ProviderError, ScanEvidence, ScanOutcome, SignRequest, SupplyChain, SupplyEvidence,
};
use cutover_signing::{
    verify_bundle, AttestInputs, AttestationBundle, KeyPair, ProvenanceInputs, PublicKey,
    SourceInfo, VerifyPolicy, DEFAULT_BUILDER_ID, PROVENANCE_PREDICATE, SCAN_VERDICT_PREDICATE,
};
use cutover_supply::{
    AdvisoryDb, Date, Exceptions, GatePolicy, ImportReport, Limits, RuleSet, ScanReport, Severity,
    Verdict,
};

/// Paths of the supply-chain state under a state directory, and where the local key's
/// passphrase is kept (outside it).
#[derive(Debug, Clone)]
pub struct SupplyPaths {
    pub root: PathBuf,
    /// Directory of local keys' passphrases, one file per key id; `None` when neither
    /// `XDG_CONFIG_HOME` nor `HOME` names a place for it.
    pub passphrases: Option<PathBuf>,
}

impl SupplyPaths {
    /// The paths under `state_dir`, with passphrases in [`default_passphrase_dir`].
    pub fn new(state_dir: &Path) -> SupplyPaths {
        SupplyPaths {
            root: state_dir.to_path_buf(),
            passphrases: default_passphrase_dir(),
        }
    }
    /// The same paths with local keys' passphrases kept in `dir`.
    pub fn with_passphrases(mut self, dir: impl Into<PathBuf>) -> SupplyPaths {
        self.passphrases = Some(dir.into());
        self
    }
    pub fn advisories(&self) -> PathBuf {
        self.root.join("advisories.json")
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn image_dir(&self, image_id: &str) -> PathBuf {
        self.root
            .join("supply")
            .join(image_id.trim_start_matches("sha256:"))
    }
    pub fn sbom(&self, image_id: &str) -> PathBuf {
        self.image_dir(image_id).join("sbom.cdx.json")
    }
    /// The record of the advisory database's import: its digest and when.
    pub fn advisories_import(&self) -> PathBuf {
        self.root.join("advisories-import.json")
    }
    /// The signed attestations of `image_id` for environment `env`.
    pub fn attestations(&self, image_id: &str, env: &str) -> PathBuf {
        self.image_dir(image_id)
            .join(format!("attestations-{env}.json"))
    }
    /// The provenance of `image_id` signed elsewhere (e.g. by CI) and imported when the
    /// image was pulled from a registry: the attestation bundle as it was stored there.
    pub fn imported_provenance(&self, image_id: &str) -> PathBuf {
        self.image_dir(image_id).join("provenance-imported.json")
    }
    /// Where an imported image came from: `{reference, manifest_digest}`.
    pub fn origin(&self, image_id: &str) -> PathBuf {
        self.image_dir(image_id).join("origin.json")
    }
    pub fn verdict(&self, image_id: &str, env: &str) -> PathBuf {
        self.image_dir(image_id).join(format!("verdict-{env}.json"))
    }
}

/// Where the supply chain gets an image's filesystem from: a tarball in the `docker save`
/// layout.
#[async_trait]
pub trait ImageExport: Send + Sync {
    /// Write the `docker save` tarball of `image` to `dest` (complete or not at all).
    async fn export(&self, image: &ImageInfo, dest: &Path) -> Result<(), ProviderError>;
}

/// Where a gate's use of a reviewed exception is recorded (the control plane's audit
/// chain). `details` names the environment, app, finding and exception.
pub trait ExceptionAudit: Send + Sync {
    /// Record that the gate of an environment used an exception for `image_id`.
    fn record(&self, image_id: &str, details: serde_json::Value) -> Result<(), String>;
}

impl<F> ExceptionAudit for F
where
    F: Fn(&str, serde_json::Value) -> Result<(), String> + Send + Sync,
{
    fn record(&self, image_id: &str, details: serde_json::Value) -> Result<(), String> {
        self(image_id, details)
    }
}

/// [`SupplyChain`] over an [`ImageExport`] and files in the state directory.
pub struct LocalSupplyChain {
    images: Arc<dyn ImageExport>,
    paths: SupplyPaths,
    /// Audit records of exceptions used by a gate (none for stand-alone scans).
    audit: Option<Arc<dyn ExceptionAudit>>,
}

impl LocalSupplyChain {
    pub fn new(
        images: Arc<dyn ImageExport>,
        state_dir: &Path,
        audit: Option<Arc<dyn ExceptionAudit>>,
    ) -> LocalSupplyChain {
        LocalSupplyChain {
            images,
            paths: SupplyPaths::new(state_dir),
            audit,
        }
    }

    /// Keep the local key's passphrase in `dir` instead of the default place.
    pub fn with_passphrase_dir(mut self, dir: impl Into<PathBuf>) -> LocalSupplyChain {
        self.paths = self.paths.with_passphrases(dir);
        self
    }

    /// Where this supply chain keeps its files.
    pub fn paths(&self) -> &SupplyPaths {
        &self.paths
    }

    /// The scan report of `image` for the current advisory database and the gate's rules
    /// and exceptions, from the cache or by exporting and scanning the image; with the state
    /// of the advisory database it was matched against (`None`: none imported).
    pub async fn report(
        &self,
        image: &ImageInfo,
        gate: &GateSpec,
    ) -> Result<(ScanReport, Option<AdvisoryState>), ProviderError> {
        let db = advisory_state(&self.paths)?;
        let key = scan_key(image, gate, db.as_ref())?;
        let dir = self.paths.image_dir(&image.id);
        let cached = dir.join(format!("report-{}.json", &key[7..31]));
        if let Ok(text) = std::fs::read_to_string(&cached) {
            if let Ok(report) = serde_json::from_str::<ScanReport>(&text) {
                return Ok((report, db));
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let tar = dir.join("image.tar");
        self.images.export(image, &tar).await?;
        let rules = gate.secret_rules.clone();
        let (paths, scan_tar) = (self.paths.clone(), tar.clone());
        let scanned =
            tokio::task::spawn_blocking(move || scan_tarball(&paths, &scan_tar, rules.as_deref()))
                .await
                .map_err(|e| ProviderError::transient(format!("the scan task failed: {e}")))?;
        let _ = std::fs::remove_file(&tar);
        let (report, used) = scanned?;
        if used.as_ref().map(|d| &d.digest) != db.as_ref().map(|d| &d.digest) {
            return Err(ProviderError::transient(
                "the advisory database changed during the scan; scan again",
            ));
        }
        write_json(&cached, &serde_json::to_value(&report).unwrap_or_default())?;
        let sbom = cutover_supply::sbom(&report.image, &report.packages);
        write_json(&self.paths.sbom(&image.id), &sbom)?;
        Ok((report, db))
    }
}

/// Version of what goes into a cached report: a scanner that reads images differently
/// must not reuse old reports.
const SCAN_CACHE_VERSION: &str = concat!("cutover-scan-cache/2 ", env!("CARGO_PKG_VERSION"));

/// The cache key of a scan report: the digests of the image, the secret rules and the
/// exceptions (by content; `builtin`/`none` when absent), and the advisory database.
pub fn scan_key(
    image: &ImageInfo,
    gate: &GateSpec,
    db: Option<&AdvisoryState>,
) -> Result<String, ProviderError> {
    let content = |path: &Option<PathBuf>, absent: &str| -> Result<String, ProviderError> {
        match path {
            None => Ok(absent.to_string()),
            Some(p) => file_digest(p),
        }
    };
    let rules = content(&gate.secret_rules, "builtin")?;
    let exceptions = content(&gate.exceptions, "none")?;
    let db = db.map(|d| d.digest.as_str()).unwrap_or("none");
    Ok(cutover_model::sha256_digest(
        format!(
            "{SCAN_CACHE_VERSION}\0{}\0{rules}\0{exceptions}\0{db}",
            image.id
        )
        .as_bytes(),
    ))
}

/// `sha256:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> Result<String, ProviderError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| io_error(path, e))?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// The imported advisory database as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisoryState {
    /// `sha256:` of the database file's content.
    pub digest: String,
    /// When it was imported (ms since the epoch); `None` when no record of its import
    /// matches the file (then its age is unknown, and the gate treats it as too old).
    pub imported_at_ms: Option<u64>,
    /// Advisories it holds (0 when unknown).
    pub advisories: usize,
    /// The newest `modified` time among its advisories, for information.
    pub newest_modified: Option<String>,
}

/// The state of the imported advisory database; `None` when none was imported.
pub fn advisory_state(paths: &SupplyPaths) -> Result<Option<AdvisoryState>, ProviderError> {
    let db = paths.advisories();
    if !db.exists() {
        return Ok(None);
    }
    let digest = file_digest(&db)?;
    let record: serde_json::Value = std::fs::read_to_string(paths.advisories_import())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let matches = record["digest"].as_str() == Some(digest.as_str());
    Ok(Some(AdvisoryState {
        imported_at_ms: record["imported_at_ms"].as_u64().filter(|_| matches),
        advisories: record["advisories"]
            .as_u64()
            .filter(|_| matches)
            .unwrap_or(0) as usize,
        newest_modified: record["newest_modified"]
            .as_str()
            .filter(|_| matches)
            .map(str::to_string),
        digest,
    }))
}

/// Import OSV advisories (a directory or a zip of OSV JSON files) as the database, and
/// record its digest and `now_ms` as the time of import.
pub fn import_advisories(
    paths: &SupplyPaths,
    source: &Path,
    now_ms: u64,
) -> Result<(ImportReport, AdvisoryState), ProviderError> {
    let (db, report) = AdvisoryDb::import(source).map_err(permanent)?;
    std::fs::create_dir_all(&paths.root).map_err(|e| io_error(&paths.root, e))?;
    db.save(paths.advisories()).map_err(permanent)?;
    let state = AdvisoryState {
        digest: file_digest(&paths.advisories())?,
        imported_at_ms: Some(now_ms),
        advisories: db.len(),
        newest_modified: db.newest_modified().map(str::to_string),
    };
    write_json(
        &paths.advisories_import(),
        &json!({
            "digest": state.digest,
            "imported_at_ms": now_ms,
            "advisories": state.advisories,
            "newest_modified": state.newest_modified,
            "source": source.display().to_string(),
        }),
    )?;
    Ok((report, state))
}

/// Why the advisory database cannot be trusted to be current, if it cannot: none
/// imported, age unknown, or imported longer than `max_age` before `now_ms`.
pub fn advisory_problem(
    db: Option<&AdvisoryState>,
    max_age: std::time::Duration,
    now_ms: u64,
) -> Option<String> {
    let Some(db) = db else {
        return Some(
            "no advisory database imported, so vulnerabilities were not checked".to_string(),
        );
    };
    let Some(at) = db.imported_at_ms else {
        return Some(
            "the advisory database has no record of its import (it was not imported by this version, or was changed since), so its age is unknown".to_string(),
        );
    };
    let age = std::time::Duration::from_millis(now_ms.saturating_sub(at));
    (age > max_age).then(|| {
        format!(
            "the advisory database was imported {} ago, longer than gate.max_advisory_age ({})",
            cutover_model::format_duration(age),
            cutover_model::format_duration(max_age)
        )
    })
}

/// Scan an image tarball against the imported advisory database (if any) and `rules` (or
/// the built-in secret rules). Returns the report and the database it was matched against.
pub fn scan_tarball(
    paths: &SupplyPaths,
    tar: &Path,
    rules: Option<&Path>,
) -> Result<(ScanReport, Option<AdvisoryState>), ProviderError> {
    let db_path = paths.advisories();
    let state = advisory_state(paths)?;
    let db = if state.is_some() {
        AdvisoryDb::load(&db_path).map_err(permanent)?
    } else {
        AdvisoryDb::default()
    };
    let rules = match rules {
        Some(path) => RuleSet::load(path).map_err(permanent)?,
        None => RuleSet::default_rules(),
    };
    let report = cutover_supply::scan(tar, &db, &rules, Limits::default()).map_err(permanent)?;
    // The database loaded is the one hashed (or the scan says it changed underfoot).
    let after = advisory_state(paths)?;
    if after.as_ref().map(|d| &d.digest) != state.as_ref().map(|d| &d.digest) {
        return Err(ProviderError::transient(
            "the advisory database changed during the scan; scan again",
        ));
    }
    Ok((report, state))
}

/// Where local keys' passphrases are kept by default: `$XDG_CONFIG_HOME/cutover/passphrases`,
/// else `$HOME/.config/cutover/passphrases`. Never inside a state directory.
pub fn default_passphrase_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let config = non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("cutover").join("passphrases"))
}

/// Load (or make) the local signing key under `paths.keys()`, its passphrase under
/// `paths.passphrases` (a `local.pass` beside the key is moved there).
pub fn local_key(paths: &SupplyPaths) -> Result<KeyPair, ProviderError> {
    let keys_dir = paths.keys();
    let passphrases = paths.passphrases.as_deref().ok_or_else(|| {
        ProviderError::permanent(
            "cannot tell where to keep the local signing key's passphrase: set XDG_CONFIG_HOME or HOME for the control plane",
        )
    })?;
    let key = keys_dir.join("local.key");
    let public = keys_dir.join("local.pub");
    let legacy = keys_dir.join("local.pass");
    if !key.exists() {
        return make_local_key(&keys_dir, passphrases, &legacy);
    }
    let key_id = PublicKey::from_pem_file(&public)
        .map_err(|e| {
            ProviderError::permanent(format!(
                "the local signing key has no readable public half ({e}); remove {}/local.* to make a new local key (images it signed must then be signed again)",
                keys_dir.display()
            ))
        })?
        .key_id()
        .to_string();
    let stored = passphrases.join(&key_id);
    if legacy.exists() {
        migrate_passphrase(&legacy, &stored, &key)?;
    }
    let passphrase = match std::fs::read_to_string(&stored) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProviderError::permanent(format!(
                "the passphrase of the local signing key {key_id} is not at {}; restore it, or remove {}/local.* to make a new local key (images it signed must then be signed again)",
                stored.display(),
                keys_dir.display()
            )))
        }
        Err(e) => return Err(io_error(&stored, e)),
    };
    KeyPair::load_private(&key, passphrase.trim()).map_err(permanent)
}

/// A fresh local key: its passphrase is written first (outside the state directory), then
/// the key files, so no key exists without its passphrase.
fn make_local_key(
    keys_dir: &Path,
    passphrases: &Path,
    legacy: &Path,
) -> Result<KeyPair, ProviderError> {
    create_private_dir(keys_dir)?;
    // A passphrase an earlier version left without its key protects nothing.
    let _ = std::fs::remove_file(legacy);
    let passphrase = Zeroizing::new(
        cutover_model::random_token_hex(32)
            .map_err(|e| ProviderError::permanent(format!("no randomness from the os: {e}")))?,
    );
    let pair = KeyPair::generate(cutover_signing::Algorithm::EcdsaP256);
    create_private_dir(passphrases)?;
    let stored = passphrases.join(pair.key_id());
    write_private(&stored, passphrase.as_bytes())?;
    let written = pair
        .save_private(&keys_dir.join("local.key"), &passphrase)
        .and_then(|()| pair.save_public(&keys_dir.join("local.pub")));
    if let Err(e) = written {
        let _ = std::fs::remove_file(keys_dir.join("local.key"));
        let _ = std::fs::remove_file(&stored);
        return Err(permanent(e));
    }
    tracing::info!(key_id = %pair.key_id(), passphrase = %stored.display(), "made the local signing key");
    Ok(pair)
}

/// Move a passphrase kept beside the key (`local.pass`) to `stored`, once it is known to
/// open the key.
fn migrate_passphrase(legacy: &Path, stored: &Path, key: &Path) -> Result<(), ProviderError> {
    let passphrase =
        Zeroizing::new(std::fs::read_to_string(legacy).map_err(|e| io_error(legacy, e))?);
    KeyPair::load_private(key, passphrase.trim()).map_err(|e| {
        ProviderError::permanent(format!(
            "{} does not open the local signing key ({e}); remove it, or the whole {}/local.* to make a new key",
            legacy.display(),
            legacy.parent().unwrap_or(Path::new(".")).display()
        ))
    })?;
    if !stored.exists() {
        if let Some(dir) = stored.parent() {
            create_private_dir(dir)?;
        }
        write_private(stored, passphrase.trim().as_bytes())?;
    }
    std::fs::remove_file(legacy).map_err(|e| io_error(legacy, e))?;
    tracing::info!(
        from = %legacy.display(),
        to = %stored.display(),
        "moved the local signing key's passphrase out of the state directory"
    );
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), ProviderError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))?;
    // An existing directory may be wider than asked; the passphrases' must not be.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error(dir, e))
}

/// The local key's public half (made on first use).
pub fn local_public_key(paths: &SupplyPaths) -> Result<PublicKey, ProviderError> {
    let public = paths.keys().join("local.pub");
    if !public.exists() {
        local_key(paths)?;
    }
    PublicKey::from_pem_file(&public).map_err(permanent)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ProviderError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    f.write_all(bytes).map_err(|e| io_error(path, e))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ProviderError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap_or_default())
        .map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::transient(format!("cannot access {}: {e}", path.display()))
}

fn permanent(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::permanent(e.to_string())
}

/// The gate policy a spec's `GateSpec` asks for.
pub fn gate_policy(gate: &GateSpec) -> Result<GatePolicy, ProviderError> {
    let fail_on = match gate.fail_on.as_str() {
        "none" => None,
        other => Some(
            other
                .parse::<Severity>()
                .map_err(ProviderError::permanent)?,
        ),
    };
    Ok(GatePolicy {
        fail_on,
        fail_on_secrets: gate.fail_on_secrets,
        fail_on_unmaintained: gate.fail_on_unmaintained,
        fail_on_skipped: gate.fail_on_skipped,
    })
}

/// Judge a report by a gate at `now_ms`: the findings, the files skipped for their size,
/// and whether the advisory database it was matched against (`db`) is current.
pub fn judge(
    report: &ScanReport,
    gate: &GateSpec,
    db: Option<&AdvisoryState>,
    now_ms: u64,
) -> Result<Verdict, ProviderError> {
    let exceptions = match &gate.exceptions {
        Some(path) => Exceptions::load(path).map_err(permanent)?,
        None => Exceptions::none(),
    };
    let mut verdict = cutover_supply::evaluate_scan(
        &report.findings,
        &report.skipped,
        &gate_policy(gate)?,
        &exceptions,
        Date::from_unix_days((now_ms / 86_400_000) as i64),
    );
    if let Some(problem) = advisory_problem(db, gate.max_advisory_age, now_ms) {
        if gate.allow_missing_advisories {
            verdict.reasons.push(format!(
                "{problem}; passed anyway because gate.allow_missing_advisories = true"
            ));
        } else {
            verdict.passed = false;
            verdict.reasons.insert(
                0,
                format!(
                    "{problem}: import current advisories with `cutover advisories import osv.zip` (or set gate.allow_missing_advisories = true to deploy without them)"
                ),
            );
        }
    }
    Ok(verdict)
}

/// One line about a scan for people.
pub fn summary(report: &ScanReport, verdict: &Verdict) -> String {
    format!(
        "{} packages, {} vulnerabilities, {} informational advisories, {} secrets: {}",
        report.packages.len(),
        report
            .findings
            .vulnerabilities
            .iter()
            .filter(|v| v.informational.is_none())
            .count(),
        report
            .findings
            .vulnerabilities
            .iter()
            .filter(|v| v.informational.is_some())
            .count(),
        report.findings.secrets.len(),
        verdict
    )
}

/// The source repository: git remote `origin`'s URL, without any credentials in it.
fn git_origin(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["remote", "get-url", "origin"])
        .output()
        .ok()?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !url.is_empty()).then(|| strip_userinfo(&url))
}

/// `https://user:token@host/x` → `https://host/x`: a remote URL may carry a token.
fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_string(),
    }
}

/// Who ran a build the control plane made on its own: `cutover-control-plane://<host>`.
fn control_plane_builder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("cutover-control-plane://{host}")
}

fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether the work tree under `dir` has uncommitted changes (tracked or untracked
/// files; cutover's own state directory `.cutover` beside the spec does not count);
/// `None` when git cannot tell.
fn git_dirty(dir: &Path) -> Option<bool> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--", ".", ":(exclude).cutover"])
        .output()
        .ok()?;
    out.status.success().then_some(!out.stdout.is_empty())
}

/// The findings of a report as the verdict record keeps them: vulnerabilities by severity,
/// id and package; secrets by rule, location and fingerprint (never the secret).
fn findings_record(report: &ScanReport) -> Vec<FindingEvidence> {
    let mut out: Vec<FindingEvidence> = report
        .findings
        .vulnerabilities
        .iter()
        .map(|v| FindingEvidence::Vulnerability {
            // An informational advisory shows its kind where a vulnerability's severity goes.
            severity: match v.informational {
                Some(kind) => format!("informational: {kind}"),
                None => v.severity.to_string(),
            },
            id: v.id.clone(),
            package: v.package.clone(),
            version: v.version.clone(),
            fixed: v.fixed.clone(),
        })
        .collect();
    out.extend(
        report
            .findings
            .secrets
            .iter()
            .map(|s| FindingEvidence::Secret {
                rule: s.rule_id.clone(),
                location: s.location.to_string(),
                fingerprint: s.fingerprint.clone(),
            }),
    );
    out
}

/// What was recorded about `image_id` for `env`: the verdict file and the signed
/// provenance, read as they are (the verify step checked the signatures).
pub fn recorded_evidence(
    paths: &SupplyPaths,
    image_id: &str,
    env: &str,
) -> Result<SupplyEvidence, ProviderError> {
    let mut evidence = SupplyEvidence::default();
    let verdict_file = paths.verdict(image_id, env);
    if let Ok(text) = std::fs::read_to_string(&verdict_file) {
        let record: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            ProviderError::permanent(format!(
                "{} is not a scan verdict ({e}); scan the image again",
                verdict_file.display()
            ))
        })?;
        evidence.scan = Some(scan_evidence(&record));
    }
    let imported = paths.imported_provenance(image_id);
    let pulled_from = std::fs::read_to_string(paths.origin(image_id))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["reference"].as_str().map(str::to_string));
    let bundle_file = if imported.exists() {
        imported
    } else {
        paths.attestations(image_id, env)
    };
    if bundle_file.exists() {
        let bundle = AttestationBundle::load(&bundle_file).map_err(permanent)?;
        for envelope in &bundle.envelopes {
            let Ok(payload) = envelope.decoded_payload() else {
                continue;
            };
            let Ok(statement) = serde_json::from_slice::<cutover_signing::Statement>(&payload)
            else {
                continue;
            };
            if statement.predicate_type != PROVENANCE_PREDICATE {
                continue;
            }
            let p = &statement.predicate;
            let text = |pointer: &str| {
                p.pointer(pointer)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            evidence.provenance = Some(ProvenanceEvidence {
                builder_id: text("/runDetails/builder/id").unwrap_or_default(),
                builder_version: text("/runDetails/builder/version/cutover"),
                source_path: text("/buildDefinition/externalParameters/source/path"),
                git_commit: text("/buildDefinition/externalParameters/source/gitCommit"),
                git_dirty: p
                    .pointer("/buildDefinition/externalParameters/source/gitDirty")
                    .and_then(|v| v.as_bool()),
                key_ids: envelope.key_ids(),
                repository: text("/buildDefinition/externalParameters/source/repository"),
                invoked_by: text("/buildDefinition/internalParameters/builder"),
                pulled_from: pulled_from.clone(),
            });
            break;
        }
    }
    Ok(evidence)
}

/// One environment's signed scan verdict about an image: whether it passed, and who signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictSeal {
    pub env: String,
    pub passed: bool,
    pub key_ids: Vec<String>,
}

/// The signed scan verdicts recorded for `image_id`, one per environment, by name. Read as
/// they are: [`verify_image`] checks signatures.
pub fn verdict_seals(paths: &SupplyPaths, image_id: &str) -> Vec<VerdictSeal> {
    let mut seals = Vec::new();
    let Ok(entries) = std::fs::read_dir(paths.image_dir(image_id)) else {
        return seals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(env) = name
            .strip_prefix("attestations-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Ok(bundle) = AttestationBundle::load(&entry.path()) else {
            continue;
        };
        for envelope in &bundle.envelopes {
            let Some(statement) = envelope
                .decoded_payload()
                .ok()
                .and_then(|p| serde_json::from_slice::<cutover_signing::Statement>(&p).ok())
            else {
                continue;
            };
            if statement.predicate_type == SCAN_VERDICT_PREDICATE {
                seals.push(VerdictSeal {
                    env: env.to_string(),
                    passed: statement.predicate["passed"].as_bool().unwrap_or(false),
                    key_ids: envelope.key_ids(),
                });
            }
        }
    }
    seals.sort_by(|a, b| a.env.cmp(&b.env));
    seals
}

fn scan_evidence(record: &serde_json::Value) -> ScanEvidence {
    let strings = |key: &str| -> Vec<String> {
        record[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let counts = record["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n as usize)))
                .collect()
        })
        .unwrap_or_default();
    let exceptions = record["suppressed"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|u| {
                    let field = |k: &str| u[k].as_str().unwrap_or_default().to_string();
                    ExceptionEvidence {
                        finding: field("finding"),
                        exception: field("exception"),
                        reason: field("reason"),
                        owner: field("owner"),
                        expires: field("expires"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    ScanEvidence {
        passed: record["passed"].as_bool().unwrap_or(false),
        reasons: strings("reasons"),
        counts,
        secrets: record["secrets"].as_u64().unwrap_or(0) as usize,
        advisory_database: record["advisory_database"].as_bool().unwrap_or(false),
        fail_on: record["fail_on"].as_str().unwrap_or_default().to_string(),
        fail_on_secrets: record["fail_on_secrets"].as_bool().unwrap_or(true),
        findings: serde_json::from_value(record["findings"].clone()).ok(),
        exceptions,
    }
}

#[async_trait]
impl SupplyChain for LocalSupplyChain {
    async fn scan(
        &self,
        image: &ImageInfo,
        app: &str,
        env: &str,
        gate: &GateSpec,
    ) -> Result<ScanOutcome, ProviderError> {
        let (report, db) = self.report(image, gate).await?;
        let now = now_ms();
        let verdict = judge(&report, gate, db.as_ref(), now)?;
        let record = json!({
            "env": env,
            "image": image.id,
            "passed": verdict.passed,
            "reasons": verdict.reasons,
            "counts": verdict.counts,
            "informational": verdict.informational,
            "secrets": verdict.secrets,
            "suppressed": verdict.suppressed,
            "skipped_files": report.skipped,
            "advisory_database": db.is_some(),
            "advisory_database_digest": db.as_ref().map(|d| d.digest.clone()),
            "advisory_imported_at_ms": db.as_ref().and_then(|d| d.imported_at_ms),
            "advisory_newest_modified": db.as_ref().and_then(|d| d.newest_modified.clone()),
            "max_advisory_age_ms": gate.max_advisory_age.as_millis() as u64,
            "allow_missing_advisories": gate.allow_missing_advisories,
            "fail_on": gate.fail_on,
            "fail_on_secrets": gate.fail_on_secrets,
            "fail_on_unmaintained": gate.fail_on_unmaintained,
            "fail_on_skipped": gate.fail_on_skipped,
            "findings": findings_record(&report),
            "at_ms": now,
        });
        write_json(&self.paths.verdict(&image.id, env), &record)?;
        if let Some(audit) = &self.audit {
            for used in &verdict.suppressed {
                let details = json!({
                    "env": env,
                    "app": app,
                    "finding": used.finding,
                    "exception": used.exception,
                    "reason": used.reason,
                    "owner": used.owner,
                    "expires": used.expires.to_string(),
                });
                audit.record(&image.id, details).map_err(|e| {
                    ProviderError::transient(format!(
                        "cannot write the audit record of an exception: {e}; retry once the audit log is writable"
                    ))
                })?;
            }
        }
        Ok(ScanOutcome {
            passed: verdict.passed,
            summary: summary(&report, &verdict),
            reasons: verdict.reasons,
        })
    }

    async fn sign(
        &self,
        image: &ImageInfo,
        request: &SignRequest,
    ) -> Result<String, ProviderError> {
        let read = |path: PathBuf, what: &str| -> Result<serde_json::Value, ProviderError> {
            let text = std::fs::read_to_string(&path).map_err(|_| {
                ProviderError::permanent(format!(
                    "image {} has no {what} at {}; scan it before signing",
                    image.id,
                    path.display()
                ))
            })?;
            serde_json::from_str(&text).map_err(permanent)
        };
        let sbom = read(self.paths.sbom(&image.id), "sbom")?;
        let verdict = read(self.paths.verdict(&image.id, &request.env), "scan verdict")?;
        let key = match &request.key {
            None => {
                let paths = self.paths.clone();
                tokio::task::spawn_blocking(move || local_key(&paths))
                    .await
                    .map_err(|e| ProviderError::transient(e.to_string()))??
            }
            Some(path) => {
                let passphrase = cutover_signing::passphrase_from_env().map_err(|e| {
                    ProviderError::permanent(format!(
                        "signing key {} needs its passphrase: {e}; set CUTOVER_KEY_PASSPHRASE for the control plane (restart it with `cutover serve --stop`)",
                        path.display()
                    ))
                })?;
                let path = path.clone();
                tokio::task::spawn_blocking(move || KeyPair::load_private(&path, &passphrase))
                    .await
                    .map_err(|e| ProviderError::transient(e.to_string()))?
                    .map_err(permanent)?
            }
        };
        let now = now_ms();
        let inputs = AttestInputs {
            image_name: image.tag.clone(),
            provenance: ProvenanceInputs {
                app: request.app.clone(),
                env: request.env.clone(),
                spec_digest: request.spec_digest.clone(),
                plan_digest: request.plan_digest.clone(),
                source: SourceInfo {
                    path: Some(request.source.display().to_string()),
                    git_commit: git_commit(&request.source),
                    git_dirty: git_dirty(&request.source),
                    repository: git_origin(&request.source),
                },
                resolved_dependencies: Vec::new(),
                builder_id: DEFAULT_BUILDER_ID.to_string(),
                builder_version: Some(env!("CARGO_PKG_VERSION").to_string()),
                deployment_id: request.deployment_id.clone(),
                invoked_by: Some(
                    request
                        .invoked_by
                        .clone()
                        .unwrap_or_else(control_plane_builder),
                ),
                started_on_ms: now,
                finished_on_ms: now,
            },
            sbom: Some(sbom),
            scan_verdict: Some(verdict),
        };
        let bundle = cutover_signing::attest(&image.id, inputs, &key).map_err(permanent)?;
        bundle
            .save(&self.paths.attestations(&image.id, &request.env))
            .map_err(|e| ProviderError::transient(e.to_string()))?;
        Ok(key.key_id().to_string())
    }

    async fn verify(
        &self,
        image: &ImageInfo,
        env: &str,
        trusted_keys: &[PathBuf],
    ) -> Result<Vec<String>, ProviderError> {
        verify_image(&self.paths, &image.id, env, trusted_keys)
    }

    async fn import(
        &self,
        image: &ImageInfo,
        reference: &ImageRef,
        envelopes: &[Vec<u8>],
    ) -> Result<(), ProviderError> {
        import_attestations(&self.paths, image, reference, envelopes)
    }

    async fn evidence(
        &self,
        image: &ImageInfo,
        env: &str,
    ) -> Result<SupplyEvidence, ProviderError> {
        recorded_evidence(&self.paths, &image.id, env)
    }
}

/// Keep the attestations pulled with an image (DSSE envelopes, as stored in the registry)
/// as its imported provenance. Every statement in them must be about exactly this image
/// (its id, the config digest of the pulled manifest), and a provenance must be among them;
/// signatures are checked by [`verify_image`] against each environment's trusted keys.
pub fn import_attestations(
    paths: &SupplyPaths,
    image: &ImageInfo,
    reference: &ImageRef,
    envelopes: &[Vec<u8>],
) -> Result<(), ProviderError> {
    let refuse = |why: String| {
        ProviderError::permanent(format!(
            "the attestations of {reference} ({}) {why}; refusing the image: push it again with `cutover push` from the build that signed it",
            reference.attestation_tag()
        ))
    };
    let mut bundle = AttestationBundle {
        image_digest: image.id.clone(),
        envelopes: Vec::new(),
    };
    let mut has_provenance = false;
    for (index, bytes) in envelopes.iter().enumerate() {
        let envelope: cutover_signing::Envelope = serde_json::from_slice(bytes).map_err(|e| {
            refuse(format!(
                "hold layer {index}, which is not a DSSE envelope ({e})"
            ))
        })?;
        let payload = envelope.decoded_payload().map_err(|e| {
            refuse(format!(
                "hold layer {index} with an unreadable payload ({e})"
            ))
        })?;
        let statement: cutover_signing::Statement =
            serde_json::from_slice(&payload).map_err(|e| {
                refuse(format!(
                    "hold layer {index}, which is not an in-toto statement ({e})"
                ))
            })?;
        let about_image = statement
            .subject
            .iter()
            .any(|subject| subject.sha256().as_deref() == Some(image.id.as_str()));
        if !about_image {
            let subjects: Vec<String> = statement
                .subject
                .iter()
                .map(|s| s.sha256().unwrap_or_else(|| s.name.clone()))
                .collect();
            return Err(refuse(format!(
                "are about {}, not the pulled image {}",
                subjects.join(", "),
                image.id
            )));
        }
        has_provenance |= statement.predicate_type == PROVENANCE_PREDICATE;
        bundle.envelopes.push(envelope);
    }
    if !has_provenance {
        return Err(refuse("hold no provenance".to_string()));
    }
    let dir = paths.image_dir(&image.id);
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    bundle
        .save(&paths.imported_provenance(&image.id))
        .map_err(|e| ProviderError::transient(e.to_string()))?;
    write_json(
        &paths.origin(&image.id),
        &json!({ "reference": reference.to_string(), "image": image.id }),
    )
}

/// Verify the attestations of `image_id` for `env`: signed by a trusted key (the local key
/// when `trusted_keys` is empty), about exactly this image, with a passing scan verdict made
/// for this environment that records the advisory database it was judged against (or says
/// the gate explicitly allowed none).
///
/// An image pulled from a registry carries its provenance signed elsewhere (CI): that
/// provenance must be signed by one of the environment's trusted keys, and the scan verdict
/// (this control plane's judgement, made against its own advisory database) by a trusted
/// key or by this control plane's local key.
pub fn verify_image(
    paths: &SupplyPaths,
    image_id: &str,
    env: &str,
    trusted_keys: &[PathBuf],
) -> Result<Vec<String>, ProviderError> {
    let file = paths.attestations(image_id, env);
    if !file.exists() {
        return Err(ProviderError::permanent(format!(
            "image {image_id} has no signature for environment {env} from a trusted key; it was never scanned and signed for {env} by cutover, refusing to run it"
        )));
    }
    let bundle = AttestationBundle::load(&file).map_err(permanent)?;
    let policy = if trusted_keys.is_empty() {
        VerifyPolicy::new(env, vec![local_public_key(paths)?])
    } else {
        VerifyPolicy::from_key_files(env, trusted_keys).map_err(permanent)?
    };
    let imported = paths.imported_provenance(image_id);
    let (verified, mut signers) = if imported.exists() {
        let provenance = AttestationBundle::load(&imported).map_err(permanent)?;
        let provenance_policy = VerifyPolicy {
            required_predicates: vec![PROVENANCE_PREDICATE.to_string()],
            ..policy.clone()
        };
        let origin = verify_bundle(&provenance, image_id, &provenance_policy).map_err(|e| {
            ProviderError::permanent(format!(
                "the provenance pulled with image {image_id} is not trusted for {env}: {e}"
            ))
        })?;
        let mut judges = policy.clone();
        if !trusted_keys.is_empty() {
            judges.trusted_keys.push(local_public_key(paths)?);
        }
        let verified = verify_bundle(&bundle, image_id, &judges).map_err(permanent)?;
        (verified, origin.signer_key_ids())
    } else {
        (
            verify_bundle(&bundle, image_id, &policy).map_err(permanent)?,
            Vec::new(),
        )
    };
    let verdict = verified
        .predicate(SCAN_VERDICT_PREDICATE)
        .cloned()
        .unwrap_or_default();
    let passed = verdict
        .get("passed")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if !passed {
        return Err(ProviderError::permanent(format!(
            "image {image_id} is signed, but its signed scan verdict did not pass the gate; refusing to run it"
        )));
    }
    let verdict_env = verdict.get("env").and_then(|v| v.as_str()).unwrap_or("");
    if verdict_env != env {
        return Err(ProviderError::permanent(format!(
            "image {image_id} is signed, but its signed scan verdict was made for environment {verdict_env:?}, not {env}; deploy it to {env} so it is judged by {env}'s gate, refusing to run it"
        )));
    }
    let digest_recorded = verdict
        .get("advisory_database_digest")
        .and_then(|v| v.as_str())
        .is_some_and(|d| d.starts_with("sha256:"));
    let explicitly_without = verdict.get("advisory_database_digest")
        == Some(&serde_json::Value::Null)
        && verdict
            .get("allow_missing_advisories")
            .and_then(|v| v.as_bool())
            == Some(true);
    if !digest_recorded && !explicitly_without {
        return Err(ProviderError::permanent(format!(
            "image {image_id} is signed, but its signed scan verdict records no advisory database digest, so what it was checked against is unknown; scan and sign it again, refusing to run it"
        )));
    }
    for id in verified.signer_key_ids() {
        if !signers.contains(&id) {
            signers.push(id);
        }
    }
    Ok(signers)
}
