//! The local supply chain: scans images exported from Docker with `cutover-supply`, signs
//! attestations with `cutover-signing`, and verifies them before anything runs.
//!
//! Everything is kept beside the image, content-addressed by its id, under
//! `<state>/supply/<hex>/`: `report-<key>.json` (scan report for one advisory database and
//! rule set), `sbom.cdx.json`, `verdict-<env>.json`, `attestations.json`. The advisory
//! database imported with `cutover advisories import` is `<state>/advisories.json`.
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
    now_ms, ExceptionEvidence, FindingEvidence, GateSpec, ImageInfo, ProvenanceEvidence,
    ProviderError, ScanEvidence, ScanOutcome, SignRequest, SupplyChain, SupplyEvidence,
};
use cutover_signing::{
    verify_bundle, AttestInputs, AttestationBundle, KeyPair, ProvenanceInputs, PublicKey,
    SourceInfo, VerifyPolicy, DEFAULT_BUILDER_ID, PROVENANCE_PREDICATE, SCAN_VERDICT_PREDICATE,
};
use cutover_supply::{
    AdvisoryDb, Date, Exceptions, GatePolicy, Limits, RuleSet, ScanReport, Severity, Verdict,
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
    pub fn attestations(&self, image_id: &str) -> PathBuf {
        self.image_dir(image_id).join("attestations.json")
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

    /// The scan report of `image` for the current advisory database and `rules`, from the
    /// cache or by exporting and scanning the image.
    pub async fn report(
        &self,
        image: &ImageInfo,
        rules: Option<&Path>,
    ) -> Result<(ScanReport, bool), ProviderError> {
        let db_path = self.paths.advisories();
        let db_stamp = std::fs::metadata(&db_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_else(|| "none".to_string());
        let key = cutover_model::sha256_digest(
            format!(
                "{db_stamp}\0{}",
                rules.map(|r| r.display().to_string()).unwrap_or_default()
            )
            .as_bytes(),
        );
        let dir = self.paths.image_dir(&image.id);
        let cached = dir.join(format!("report-{}.json", &key[7..19]));
        let has_db = db_path.exists();
        if let Ok(text) = std::fs::read_to_string(&cached) {
            if let Ok(report) = serde_json::from_str::<ScanReport>(&text) {
                return Ok((report, has_db));
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let tar = dir.join("image.tar");
        self.images.export(image, &tar).await?;
        let rules = rules.map(Path::to_path_buf);
        let (paths, scan_tar) = (self.paths.clone(), tar.clone());
        let report = tokio::task::spawn_blocking(move || {
            scan_tarball(&paths, &scan_tar, rules.as_deref()).map(|(report, _)| report)
        })
        .await
        .map_err(|e| ProviderError::transient(format!("the scan task failed: {e}")))?;
        let _ = std::fs::remove_file(&tar);
        let report = report?;
        write_json(&cached, &serde_json::to_value(&report).unwrap_or_default())?;
        let sbom = cutover_supply::sbom(&report.image, &report.packages);
        write_json(&self.paths.sbom(&image.id), &sbom)?;
        Ok((report, has_db))
    }
}

/// Scan an image tarball against the imported advisory database (if any) and `rules` (or
/// the built-in secret rules). Returns the report and whether a database was there.
pub fn scan_tarball(
    paths: &SupplyPaths,
    tar: &Path,
    rules: Option<&Path>,
) -> Result<(ScanReport, bool), ProviderError> {
    let db_path = paths.advisories();
    let has_db = db_path.exists();
    let db = if has_db {
        AdvisoryDb::load(&db_path).map_err(permanent)?
    } else {
        AdvisoryDb::default()
    };
    let rules = match rules {
        Some(path) => RuleSet::load(path).map_err(permanent)?,
        None => RuleSet::default_rules(),
    };
    let report = cutover_supply::scan(tar, &db, &rules, Limits::default()).map_err(permanent)?;
    Ok((report, has_db))
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
    })
}

/// Judge a report by a gate; the verdict as JSON (what is signed) and for people.
pub fn judge(report: &ScanReport, gate: &GateSpec, has_db: bool) -> Result<Verdict, ProviderError> {
    let exceptions = match &gate.exceptions {
        Some(path) => Exceptions::load(path).map_err(permanent)?,
        None => Exceptions::none(),
    };
    let mut verdict = cutover_supply::evaluate(
        &report.findings,
        &gate_policy(gate)?,
        &exceptions,
        Date::today(),
    );
    if !has_db {
        verdict
            .reasons
            .push("no advisory database imported (`cutover advisories import <dir-or-zip>`): vulnerabilities were not checked".to_string());
    }
    Ok(verdict)
}

/// One line about a scan for people.
pub fn summary(report: &ScanReport, verdict: &Verdict) -> String {
    format!(
        "{} packages, {} vulnerabilities, {} secrets: {}",
        report.packages.len(),
        report.findings.vulnerabilities.len(),
        report.findings.secrets.len(),
        verdict
    )
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
            severity: v.severity.to_string(),
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
    let bundle_file = paths.attestations(image_id);
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
            });
            break;
        }
    }
    Ok(evidence)
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
        let (report, has_db) = self.report(image, gate.secret_rules.as_deref()).await?;
        let verdict = judge(&report, gate, has_db)?;
        let record = json!({
            "env": env,
            "image": image.id,
            "passed": verdict.passed,
            "reasons": verdict.reasons,
            "counts": verdict.counts,
            "secrets": verdict.secrets,
            "suppressed": verdict.suppressed,
            "advisory_database": has_db,
            "fail_on": gate.fail_on,
            "fail_on_secrets": gate.fail_on_secrets,
            "findings": findings_record(&report),
            "at_ms": now_ms(),
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
                },
                resolved_dependencies: Vec::new(),
                builder_id: DEFAULT_BUILDER_ID.to_string(),
                builder_version: Some(env!("CARGO_PKG_VERSION").to_string()),
                deployment_id: request.deployment_id.clone(),
                started_on_ms: now,
                finished_on_ms: now,
            },
            sbom: Some(sbom),
            scan_verdict: Some(verdict),
        };
        let bundle = cutover_signing::attest(&image.id, inputs, &key).map_err(permanent)?;
        bundle
            .save(&self.paths.attestations(&image.id))
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

    async fn evidence(
        &self,
        image: &ImageInfo,
        env: &str,
    ) -> Result<SupplyEvidence, ProviderError> {
        recorded_evidence(&self.paths, &image.id, env)
    }
}

/// Verify the attestations of `image_id` for `env`: signed by a trusted key (the local key
/// when `trusted_keys` is empty), about exactly this image, with a passing scan verdict.
pub fn verify_image(
    paths: &SupplyPaths,
    image_id: &str,
    env: &str,
    trusted_keys: &[PathBuf],
) -> Result<Vec<String>, ProviderError> {
    let file = paths.attestations(image_id);
    if !file.exists() {
        return Err(ProviderError::permanent(format!(
            "image {image_id} has no signature from a trusted key; it was never signed by cutover, refusing to run it"
        )));
    }
    let bundle = AttestationBundle::load(&file).map_err(permanent)?;
    let policy = if trusted_keys.is_empty() {
        VerifyPolicy::new(env, vec![local_public_key(paths)?])
    } else {
        VerifyPolicy::from_key_files(env, trusted_keys).map_err(permanent)?
    };
    let verified = verify_bundle(&bundle, image_id, &policy).map_err(permanent)?;
    let passed = verified
        .predicate(SCAN_VERDICT_PREDICATE)
        .and_then(|v| v.get("passed"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if !passed {
        return Err(ProviderError::permanent(format!(
            "image {image_id} is signed, but its signed scan verdict did not pass the gate; refusing to run it"
        )));
    }
    Ok(verified.signer_key_ids())
}
