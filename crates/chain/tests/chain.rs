//! The local supply chain end to end over synthetic image tarballs, no Docker: scan, sign
//! and verify; and the refusals (tampered attestation, untrusted key, failed gate).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use cutover_chain::{
    import_advisories, verify_image, ExceptionAudit, ImageExport, LocalSupplyChain, SupplyPaths,
};
use cutover_model::{GateSpec, ImageInfo, ProviderError, SignRequest, SupplyChain};
use cutover_signing::{AttestationBundle, SCAN_VERDICT_PREDICATE};
use cutover_supply::synth::{SynthEntry, SynthImage};

/// An image store that holds one tarball and counts how often it was exported.
struct TarballExport {
    tar: PathBuf,
    exports: AtomicUsize,
}

#[async_trait]
impl ImageExport for TarballExport {
    async fn export(&self, _image: &ImageInfo, dest: &Path) -> Result<(), ProviderError> {
        self.exports.fetch_add(1, Ordering::SeqCst);
        std::fs::copy(&self.tar, dest)
            .map(|_| ())
            .map_err(|e| ProviderError::permanent(format!("copying the test tarball: {e}")))
    }
}

/// A planted AWS access key id (built from pieces so this file holds no secret literal).
fn canary() -> String {
    format!("AKIA{}", "Q7WERTYU2OPASDFG")
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: PathBuf,
    /// Where the local key's passphrase goes (outside `state`, as `~/.config` is).
    passphrases: PathBuf,
    export: Arc<TarballExport>,
    image: ImageInfo,
}

/// An image with a planted secret (or not) and a freshly imported advisory database.
fn fixture(secret: bool) -> Fixture {
    let mut files = Vec::new();
    if secret {
        files.push(SynthImage::file(
            "app/config.ini",
            format!("[aws]\naccess_key = {}\n", canary()),
        ));
    }
    let f = fixture_without_advisories(files);
    f.import_advisories(cutover_model::now_ms());
    f
}

/// An image of a shell script plus `extra` files; no advisory database imported.
fn fixture_without_advisories(extra: Vec<SynthEntry>) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = vec![
        SynthImage::file("etc/os-release", "ID=alpine\nVERSION_ID=3.20.0\n"),
        SynthImage::file("app/hello", "#!/bin/sh\necho hello\n"),
    ];
    files.extend(extra);
    let tar = dir.path().join("source.tar");
    SynthImage::new()
        .layer(files, true)
        .write(&tar, false)
        .expect("write the image tarball");
    let bytes = std::fs::read(&tar).expect("read the tarball");
    let image = ImageInfo {
        id: cutover_model::sha256_digest(&bytes),
        tag: "cutover/hello:production-1".to_string(),
        warning: None,
    };
    let state = dir.path().join("state");
    let passphrases = dir.path().join("config/cutover/passphrases");
    Fixture {
        passphrases,
        export: Arc::new(TarballExport {
            tar,
            exports: AtomicUsize::new(0),
        }),
        state,
        image,
        _dir: dir,
    }
}

impl Fixture {
    /// Import a small OSV database (one RustSec unmaintained notice, one vulnerability) as
    /// if at `at_ms`.
    fn import_advisories(&self, at_ms: u64) {
        let osv = self._dir.path().join("osv");
        std::fs::create_dir_all(&osv).unwrap();
        let crate_affected = |name: &str| {
            serde_json::json!([{"package": {"ecosystem": "crates.io", "name": name},
                "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}])
        };
        let advisories = [
            serde_json::json!({
                "id": "RUSTSEC-2020-0016", "modified": "2024-01-01T00:00:00Z",
                "summary": "net2 is unmaintained",
                "affected": crate_affected("net2"),
                "database_specific": {"informational": "unmaintained", "categories": []},
            }),
            serde_json::json!({
                "id": "RUSTSEC-2021-0003", "modified": "2023-06-13T13:10:24Z",
                "aliases": ["CVE-2021-25900"],
                "summary": "buffer overflow in SmallVec::insert_many",
                "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
                "affected": crate_affected("smallvec"),
            }),
        ];
        for a in &advisories {
            std::fs::write(
                osv.join(format!("{}.json", a["id"].as_str().unwrap())),
                a.to_string(),
            )
            .unwrap();
        }
        import_advisories(&SupplyPaths::new(&self.state), &osv, at_ms).expect("import");
    }

    fn chain(&self, audit: Option<Arc<dyn ExceptionAudit>>) -> LocalSupplyChain {
        LocalSupplyChain::new(self.export.clone(), &self.state, audit)
            .with_passphrase_dir(&self.passphrases)
    }

    /// A chain that has scanned (default gate) and signed (local key) the image.
    async fn scanned_and_signed(&self) -> LocalSupplyChain {
        let chain = self.chain(None);
        chain
            .scan(&self.image, "hello", "production", &GateSpec::default())
            .await
            .expect("scan");
        chain
            .sign(&self.image, &self.request())
            .await
            .expect("sign");
        chain
    }

    fn request(&self) -> SignRequest {
        SignRequest {
            app: "hello".to_string(),
            env: "production".to_string(),
            key: None,
            spec_digest: cutover_model::sha256_digest(b"spec"),
            plan_digest: cutover_model::sha256_digest(b"plan"),
            deployment_id: "d-1".to_string(),
            source: self.state.clone(),
            invoked_by: None,
        }
    }
}

#[tokio::test]
async fn a_clean_image_is_scanned_signed_and_verified() {
    let f = fixture(false);
    let chain = f.chain(None);
    let outcome = chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    assert!(outcome.summary.contains("0 secrets"), "{}", outcome.summary);
    let paths = chain.paths();
    assert!(paths.sbom(&f.image.id).is_file(), "no sbom written");
    assert!(
        paths.verdict(&f.image.id, "production").is_file(),
        "no verdict written"
    );
    assert!(
        !paths.image_dir(&f.image.id).join("image.tar").exists(),
        "the exported tarball was left behind"
    );

    let key_id = chain.sign(&f.image, &f.request()).await.expect("sign");
    assert!(
        paths.keys().join("local.key").is_file(),
        "no local key made"
    );
    let signers = chain
        .verify(&f.image, "production", &[])
        .await
        .expect("verify");
    assert_eq!(signers, vec![key_id]);

    // The signed verdict is the one the scan wrote, and it is about this image.
    let bundle =
        AttestationBundle::load(&paths.attestations(&f.image.id, "production")).expect("bundle");
    assert_eq!(bundle.image_digest, f.image.id);

    // Another image id is not covered by these attestations.
    let other = cutover_model::sha256_digest(b"another image");
    let err = verify_image(paths, &other, "production", &[]).expect_err("never signed");
    assert!(err.message.contains("never scanned and signed"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_second_scan_is_answered_from_the_cache() {
    let f = fixture(false);
    let chain = f.chain(None);
    let gate = GateSpec::default();
    let (first, _) = chain.report(&f.image, &gate).await.expect("first scan");
    let (second, _) = chain.report(&f.image, &gate).await.expect("second scan");
    assert_eq!(f.export.exports.load(Ordering::SeqCst), 1, "exported twice");
    assert_eq!(
        serde_json::to_value(&first).unwrap(),
        serde_json::to_value(&second).unwrap()
    );

    // Other secret rules are another cache entry: the image is scanned again.
    let rules = f.state.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nid = \"acme\"\ndescription = \"acme token\"\nregex = '''acme_[0-9a-f]{16}'''\n",
    )
    .unwrap();
    let with_rules = GateSpec {
        secret_rules: Some(rules),
        ..GateSpec::default()
    };
    chain
        .report(&f.image, &with_rules)
        .await
        .expect("scan with rules");
    assert_eq!(f.export.exports.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_planted_secret_fails_the_gate_and_the_image_is_refused() {
    let f = fixture(true);
    let chain = f.chain(None);
    let outcome = chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    assert!(!outcome.passed, "{outcome:?}");
    assert!(outcome.summary.contains("1 secrets"), "{}", outcome.summary);
    assert!(
        outcome.reasons.iter().any(|r| r.contains("secret")),
        "{:?}",
        outcome.reasons
    );
    // The secret itself is never written anywhere the chain keeps.
    let paths = chain.paths();
    for file in std::fs::read_dir(paths.image_dir(&f.image.id)).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains(&canary()), "a file leaks the planted secret");
    }
    assert!(!format!("{outcome:?}").contains(&canary()));

    // Signed anyway (the planner never does this): verification still refuses it.
    chain.sign(&f.image, &f.request()).await.expect("sign");
    let err = chain
        .verify(&f.image, "production", &[])
        .await
        .expect_err("a failed gate must not verify");
    assert!(err.message.contains("did not pass the gate"), "{err}");
    assert!(!err.is_transient());
}

/// A gate with a reviewed, live exception for the planted key's rule.
fn excepting_the_planted_key(f: &Fixture) -> GateSpec {
    let exceptions = f._dir.path().join("exceptions.toml");
    std::fs::write(
        &exceptions,
        "[[exception]]\nid = \"aws-access-key-id\"\nreason = \"test key\"\nowner = \"sec\"\nexpires = 2099-12-31\n",
    )
    .unwrap();
    GateSpec {
        exceptions: Some(exceptions),
        ..GateSpec::default()
    }
}

#[tokio::test]
async fn a_reviewed_exception_passes_the_gate_and_is_audited() {
    let f = fixture(true);
    let records: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let sink = records.clone();
    let audit: Arc<dyn ExceptionAudit> = Arc::new(move |image: &str, details| {
        sink.lock().unwrap().push((image.to_string(), details));
        Ok(())
    });
    let chain = f.chain(Some(audit));
    let gate = excepting_the_planted_key(&f);
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].0, f.image.id);
    assert_eq!(records[0].1["env"], "production");
    assert_eq!(records[0].1["owner"], "sec");
    assert!(!records[0].1.to_string().contains(&canary()));
}

#[tokio::test]
async fn an_audit_log_that_cannot_be_written_fails_the_scan() {
    let f = fixture(true);
    let audit: Arc<dyn ExceptionAudit> =
        Arc::new(|_: &str, _| Err("the store is read-only".to_string()));
    let chain = f.chain(Some(audit));
    let gate = excepting_the_planted_key(&f);
    let err = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect_err("an unaudited exception must not pass");
    assert!(err.message.contains("the store is read-only"), "{err}");
}

#[tokio::test]
async fn a_tampered_attestation_is_refused() {
    let f = fixture(true);
    let chain = f.scanned_and_signed().await;

    // Turn the signed failing verdict into a passing one without re-signing.
    let file = chain.paths().attestations(&f.image.id, "production");
    let mut bundle = AttestationBundle::load(&file).expect("bundle");
    let mut tampered = 0;
    for envelope in &mut bundle.envelopes {
        let body = decode_base64(&envelope.payload);
        let text = String::from_utf8(body).expect("utf-8 payload");
        if text.contains(SCAN_VERDICT_PREDICATE) {
            let edited = text.replace("\"passed\":false", "\"passed\":true");
            assert_ne!(edited, text, "the verdict payload has no passed field");
            envelope.payload = encode_base64(edited.as_bytes());
            tampered += 1;
        }
    }
    assert_eq!(tampered, 1, "no scan verdict envelope found");
    bundle.save(&file).expect("save the tampered bundle");

    let err = chain
        .verify(&f.image, "production", &[])
        .await
        .expect_err("a tampered attestation must not verify");
    assert!(!err.is_transient());
    assert!(
        !err.message.contains("did not pass the gate"),
        "the edit was not noticed as tampering: {err}"
    );
}

#[tokio::test]
async fn a_signature_from_an_untrusted_key_is_refused() {
    let f = fixture(false);
    let chain = f.scanned_and_signed().await;

    let keys = f._dir.path().join("other-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (_, public, _) = cutover_signing::generate_to_files(
        &keys,
        "release",
        cutover_signing::Algorithm::Ed25519,
        "a passphrase for the test",
    )
    .expect("generate a key");
    let err = chain
        .verify(&f.image, "production", &[public])
        .await
        .expect_err("only the trusted key counts");
    assert!(!err.is_transient());
    // The local key that did sign is still accepted when trusted.
    let local = chain.paths().keys().join("local.pub");
    chain
        .verify(&f.image, "production", &[local])
        .await
        .expect("the signing key verifies");
}

fn decode_base64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("standard base64")
}

fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn the_recorded_evidence_names_findings_and_used_exceptions_without_the_secret() {
    let f = fixture(true);
    let audit: Arc<dyn ExceptionAudit> = Arc::new(|_: &str, _| Ok(()));
    let chain = f.chain(Some(audit));
    let gate = excepting_the_planted_key(&f);
    chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    chain.sign(&f.image, &f.request()).await.expect("sign");
    let evidence = chain
        .evidence(&f.image, "production")
        .await
        .expect("evidence");
    let shown = serde_json::to_string(&evidence).unwrap();
    assert!(!shown.contains(&canary()), "the secret leaked: {shown}");
    assert!(
        !shown.contains("AKIA"),
        "part of the secret leaked: {shown}"
    );
    let scan = evidence.scan.expect("a recorded verdict");
    assert!(scan.passed, "{scan:?}");
    assert_eq!(scan.exceptions.len(), 1, "{scan:?}");
    let used = &scan.exceptions[0];
    assert_eq!(used.exception, "aws-access-key-id");
    assert_eq!(
        (
            used.reason.as_str(),
            used.owner.as_str(),
            used.expires.as_str()
        ),
        ("test key", "sec", "2099-12-31")
    );
    let findings = scan.findings.expect("findings recorded with the verdict");
    let secret = findings
        .iter()
        .find_map(|f| match f {
            cutover_model::FindingEvidence::Secret {
                rule,
                location,
                fingerprint,
            } => Some((rule, location, fingerprint)),
            _ => None,
        })
        .expect("the planted key is a finding");
    assert_eq!(secret.0, "aws-access-key-id");
    assert!(secret.1.contains("app/config.ini"), "{secret:?}");
    assert_eq!(secret.2, &used.finding, "the exception names the finding");
    let provenance = evidence.provenance.expect("signed provenance");
    assert_eq!(provenance.builder_id, cutover_signing::DEFAULT_BUILDER_ID);
    assert_eq!(
        provenance.builder_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        provenance.source_path.as_deref(),
        Some(f.state.display().to_string().as_str())
    );
    assert_eq!(provenance.key_ids.len(), 1);
    // Nothing recorded for another environment's gate.
    let elsewhere = chain.evidence(&f.image, "staging").await.expect("evidence");
    assert!(elsewhere.scan.is_none());
}

#[tokio::test]
async fn provenance_records_the_git_commit_and_whether_the_tree_was_dirty() {
    let git = |dir: &Path, args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
    };
    let f = fixture(false);
    let source = f._dir.path().join("src");
    std::fs::create_dir_all(&source).unwrap();
    match git(&source, &["init", "-q"]) {
        Ok(out) if out.status.success() => {}
        other => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "git is needed: {other:?}"
            );
            eprintln!("skipped: git is not available ({other:?})");
            return;
        }
    }
    std::fs::write(source.join("main.rs"), "fn main() {}\n").unwrap();
    assert!(git(&source, &["add", "."]).unwrap().status.success());
    assert!(git(&source, &["commit", "-q", "-m", "one"])
        .unwrap()
        .status
        .success());
    let head = String::from_utf8(git(&source, &["rev-parse", "HEAD"]).unwrap().stdout).unwrap();
    let chain = f.chain(None);
    chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    let mut request = f.request();
    request.source = source.clone();
    chain.sign(&f.image, &request).await.expect("sign");
    let clean = chain
        .evidence(&f.image, "production")
        .await
        .unwrap()
        .provenance
        .unwrap();
    assert_eq!(clean.git_commit.as_deref(), Some(head.trim()));
    // cutover's state directory beside the spec is not a change of the source.
    std::fs::create_dir_all(source.join(".cutover")).unwrap();
    std::fs::write(source.join(".cutover/serve.log"), "{}\n").unwrap();
    chain.sign(&f.image, &request).await.expect("sign");
    let clean = chain
        .evidence(&f.image, "production")
        .await
        .unwrap()
        .provenance
        .unwrap();
    assert_eq!(clean.git_dirty, Some(false));
    std::fs::write(source.join("main.rs"), "fn main() { println!(); }\n").unwrap();
    chain.sign(&f.image, &request).await.expect("sign again");
    let dirty = chain
        .evidence(&f.image, "production")
        .await
        .unwrap()
        .provenance
        .unwrap();
    assert_eq!(dirty.git_dirty, Some(true));
}

fn days_ms(days: u64) -> u64 {
    days * 24 * 3600 * 1000
}

fn verdict_record(chain: &LocalSupplyChain, image: &ImageInfo, env: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(chain.paths().verdict(&image.id, env)).expect("verdict");
    serde_json::from_str(&text).expect("verdict json")
}

#[tokio::test]
async fn without_an_advisory_database_the_gate_fails_and_says_how_to_import() {
    let f = fixture_without_advisories(Vec::new());
    let chain = f.chain(None);
    let outcome = chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    assert!(
        !outcome.passed,
        "a scan without advisories passed: {outcome:?}"
    );
    let first = &outcome.reasons[0];
    assert!(first.contains("no advisory database imported"), "{first}");
    assert!(
        first.contains("cutover advisories import osv.zip"),
        "{first}"
    );
    // Signed anyway, it does not verify.
    chain.sign(&f.image, &f.request()).await.expect("sign");
    let err = chain
        .verify(&f.image, "production", &[])
        .await
        .expect_err("must not verify");
    assert!(err.message.contains("did not pass the gate"), "{err}");
}

#[tokio::test]
async fn a_stale_advisory_database_fails_the_gate() {
    let f = fixture_without_advisories(Vec::new());
    f.import_advisories(cutover_model::now_ms() - days_ms(8));
    let chain = f.chain(None);
    let outcome = chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome.reasons[0].contains("imported 192h ago")
            && outcome.reasons[0].contains("gate.max_advisory_age (168h)"),
        "{:?}",
        outcome.reasons
    );
    // A gate that accepts older databases passes it.
    let lenient = GateSpec {
        max_advisory_age: std::time::Duration::from_secs(30 * 24 * 3600),
        ..GateSpec::default()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &lenient)
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    // A database edited after its import has no known age: it fails like a stale one.
    let db = chain.paths().advisories();
    let mut text = std::fs::read_to_string(&db).unwrap();
    text.push(' ');
    std::fs::write(&db, text).unwrap();
    let outcome = chain
        .scan(&f.image, "hello", "production", &lenient)
        .await
        .expect("scan");
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome.reasons[0].contains("age is unknown"),
        "{:?}",
        outcome.reasons
    );
    // A fresh import passes the default gate.
    f.import_advisories(cutover_model::now_ms());
    let outcome = chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
}

#[tokio::test]
async fn allow_missing_advisories_passes_and_says_so_in_the_signed_verdict() {
    let f = fixture_without_advisories(Vec::new());
    let chain = f.chain(None);
    let gate = GateSpec {
        allow_missing_advisories: true,
        ..GateSpec::default()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    assert!(
        outcome
            .reasons
            .iter()
            .any(|r| r.contains("no advisory database")
                && r.contains("gate.allow_missing_advisories = true")),
        "{:?}",
        outcome.reasons
    );
    let record = verdict_record(&chain, &f.image, "production");
    assert_eq!(record["allow_missing_advisories"], true);
    assert_eq!(record["advisory_database_digest"], serde_json::Value::Null);
    chain.sign(&f.image, &f.request()).await.expect("sign");
    chain
        .verify(&f.image, "production", &[])
        .await
        .expect("an explicit opt-out verifies");
    let evidence = chain.evidence(&f.image, "production").await.unwrap();
    let scan = evidence.scan.expect("verdict");
    assert!(
        scan.reasons
            .iter()
            .any(|r| r.contains("allow_missing_advisories")),
        "the approval view's scan section does not show the opt-out: {:?}",
        scan.reasons
    );
}

#[tokio::test]
async fn a_padded_file_fails_a_protected_gate_unless_an_exception_names_its_path() {
    // A secret behind 9 MiB of padding: over the 8 MiB file limit, so never read.
    let mut padded = vec![b' '; 9 << 20];
    padded.extend_from_slice(format!("\naccess_key = {}\n", canary()).as_bytes());
    let f = fixture_without_advisories(vec![SynthImage::file("srv/padded.conf", padded)]);
    f.import_advisories(cutover_model::now_ms());
    let chain = f.chain(None);
    // Not protected: passes, and the verdict says what was not scanned.
    let outcome = chain
        .scan(&f.image, "hello", "staging", &GateSpec::default())
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    assert!(
        outcome
            .reasons
            .iter()
            .any(|r| r.contains("srv/padded.conf") && r.contains("not scanned")),
        "{:?}",
        outcome.reasons
    );
    let record = verdict_record(&chain, &f.image, "staging");
    assert_eq!(record["skipped_files"][0]["path"], "srv/padded.conf");
    // Protected (the planner sets fail_on_skipped): refused.
    let protected = GateSpec {
        fail_on_skipped: true,
        ..GateSpec::default()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &protected)
        .await
        .expect("scan");
    assert!(!outcome.passed, "a padded file passed a protected gate");
    assert!(
        outcome
            .reasons
            .iter()
            .any(|r| r.contains("not scanned") && r.contains("`path` exception")),
        "{:?}",
        outcome.reasons
    );
    // An exception naming the path lets it through, and is recorded.
    let exceptions = f._dir.path().join("exceptions.toml");
    std::fs::write(
        &exceptions,
        "[[exception]]\npath = \"/srv/padded.conf\"\nreason = \"generated config, reviewed\"\nowner = \"ops\"\nexpires = 2099-12-31\n",
    )
    .unwrap();
    let excepted = GateSpec {
        exceptions: Some(exceptions),
        ..protected.clone()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &excepted)
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    let record = verdict_record(&chain, &f.image, "production");
    assert_eq!(record["suppressed"][0]["exception"], "/srv/padded.conf");
}

#[tokio::test]
async fn editing_the_rules_file_changes_the_verdict() {
    let token = format!("acme_{}", "0123456789abcdef");
    let f = fixture_without_advisories(vec![SynthImage::file(
        "app/acme.env",
        format!("TOKEN={token}\n"),
    )]);
    f.import_advisories(cutover_model::now_ms());
    let chain = f.chain(None);
    let rules = f._dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nid = \"other\"\ndescription = \"other token\"\nregex = '''other_[0-9a-f]{16}'''\n",
    )
    .unwrap();
    let gate = GateSpec {
        secret_rules: Some(rules.clone()),
        ..GateSpec::default()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    // Same path, new content: the cached report must not be reused.
    std::fs::write(
        &rules,
        "[[rules]]\nid = \"acme\"\ndescription = \"acme token\"\nregex = '''acme_[0-9a-f]{16}'''\n",
    )
    .unwrap();
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert!(!outcome.passed, "the old verdict was reused: {outcome:?}");
    assert_eq!(f.export.exports.load(Ordering::SeqCst), 2);
    // The advisory database counts by content too: importing the same advisories again
    // keeps the report, a database with other content does not.
    f.import_advisories(cutover_model::now_ms());
    chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert_eq!(f.export.exports.load(Ordering::SeqCst), 2);
    let osv = f._dir.path().join("osv");
    std::fs::write(
        osv.join("RUSTSEC-2099-0001.json"),
        r#"{"id": "RUSTSEC-2099-0001", "affected": [{"package": {"ecosystem": "crates.io", "name": "x"}}]}"#,
    )
    .unwrap();
    import_advisories(&SupplyPaths::new(&f.state), &osv, cutover_model::now_ms()).unwrap();
    chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert_eq!(f.export.exports.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_verdict_signed_for_staging_does_not_verify_for_production() {
    let f = fixture(false);
    let chain = f.chain(None);
    chain
        .scan(&f.image, "hello", "staging", &GateSpec::default())
        .await
        .expect("scan");
    let mut request = f.request();
    request.env = "staging".to_string();
    chain.sign(&f.image, &request).await.expect("sign");
    chain
        .verify(&f.image, "staging", &[])
        .await
        .expect("verifies for staging");
    let err = chain
        .verify(&f.image, "production", &[])
        .await
        .expect_err("staging's signature must not admit it to production");
    assert!(
        err.message
            .contains("never scanned and signed for production"),
        "{err}"
    );
    // The attack: put staging's signed attestations where production's are read.
    let paths = chain.paths();
    std::fs::copy(
        paths.attestations(&f.image.id, "staging"),
        paths.attestations(&f.image.id, "production"),
    )
    .unwrap();
    let err = chain
        .verify(&f.image, "production", &[])
        .await
        .expect_err("a verdict for staging must not verify for production");
    assert!(
        err.message
            .contains("made for environment \"staging\", not production"),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_signed_verdict_without_a_database_digest_does_not_verify() {
    let f = fixture(false);
    let chain = f.chain(None);
    chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    // A verdict as older versions wrote it: passing, but naming no database.
    let file = chain.paths().verdict(&f.image.id, "production");
    let mut record = verdict_record(&chain, &f.image, "production");
    record
        .as_object_mut()
        .unwrap()
        .remove("advisory_database_digest");
    std::fs::write(&file, record.to_string()).unwrap();
    chain.sign(&f.image, &f.request()).await.expect("sign");
    let err = chain
        .verify(&f.image, "production", &[])
        .await
        .expect_err("must not verify");
    assert!(err.message.contains("no advisory database digest"), "{err}");
}

#[tokio::test]
async fn informational_advisories_are_counted_apart_and_fail_only_when_asked() {
    let lock = "version = 3\n[[package]]\nname = \"net2\"\nversion = \"0.2.39\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
    let f = fixture_without_advisories(vec![SynthImage::file("app/Cargo.lock", lock)]);
    f.import_advisories(cutover_model::now_ms());
    let chain = f.chain(None);
    let strictest = GateSpec {
        fail_on: "low".to_string(),
        ..GateSpec::default()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &strictest)
        .await
        .expect("scan");
    assert!(
        outcome.passed,
        "an unmaintained notice failed as a vulnerability: {outcome:?}"
    );
    assert!(
        outcome
            .summary
            .contains("0 vulnerabilities, 1 informational advisories"),
        "{}",
        outcome.summary
    );
    let record = verdict_record(&chain, &f.image, "production");
    assert_eq!(record["informational"]["unmaintained"], 1);
    assert_eq!(record["counts"]["unknown"], 0);
    assert_eq!(
        record["findings"][0]["severity"],
        "informational: unmaintained"
    );
    let strict = GateSpec {
        fail_on_unmaintained: true,
        ..GateSpec::default()
    };
    let outcome = chain
        .scan(&f.image, "hello", "production", &strict)
        .await
        .expect("scan");
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome
            .reasons
            .iter()
            .any(|r| r.contains("RUSTSEC-2020-0016 (unmaintained)")),
        "{:?}",
        outcome.reasons
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn the_local_key_s_passphrase_is_kept_outside_the_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture(false);
    let chain = f.scanned_and_signed().await;
    let keys = chain.paths().keys();
    assert!(keys.join("local.key").is_file(), "no local key made");
    assert!(
        !keys.join("local.pass").exists(),
        "the passphrase sits beside the key"
    );
    let stored = files_under(&f.passphrases);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let key_id = cutover_signing::PublicKey::from_pem_file(&keys.join("local.pub"))
        .unwrap()
        .key_id()
        .to_string();
    assert_eq!(stored[0], f.passphrases.join(&key_id));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&stored[0]), 0o600);
    assert_eq!(mode(&f.passphrases), 0o700);
    // Nothing in the state directory holds the passphrase.
    let passphrase = std::fs::read_to_string(&stored[0]).unwrap();
    assert!(passphrase.len() >= 32);
    for file in files_under(&f.state) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(passphrase.trim()),
            "{} holds the passphrase",
            file.display()
        );
    }
    // The key opens with it and what it signed verifies.
    chain
        .verify(&f.image, "production", &[])
        .await
        .expect("verify");
}

#[tokio::test]
async fn a_passphrase_left_beside_the_key_is_moved_out_and_signing_goes_on() {
    let f = fixture(false);
    let keys = f.state.join("keys");
    // What earlier versions left: the key and its passphrase side by side.
    let (_, _, key_id) = cutover_signing::generate_to_files(
        &keys,
        "local",
        cutover_signing::Algorithm::EcdsaP256,
        "an old passphrase",
    )
    .unwrap();
    std::fs::write(keys.join("local.pass"), "an old passphrase\n").unwrap();

    let chain = f.scanned_and_signed().await;
    assert!(
        !keys.join("local.pass").exists(),
        "local.pass was left in the state directory"
    );
    assert_eq!(
        std::fs::read_to_string(f.passphrases.join(&key_id)).unwrap(),
        "an old passphrase"
    );
    // Signed by the same key as before the move, and it verifies.
    let signers = chain
        .verify(&f.image, "production", &[])
        .await
        .expect("verify");
    assert_eq!(signers, vec![key_id]);
}

#[tokio::test]
async fn a_lost_passphrase_fails_signing_saying_what_to_do() {
    let f = fixture(false);
    f.scanned_and_signed().await;
    std::fs::remove_dir_all(&f.passphrases).unwrap();
    let chain = f.chain(None);
    let err = chain
        .sign(&f.image, &f.request())
        .await
        .expect_err("no passphrase, no signature");
    assert!(err.message.contains("is not at"), "{err}");
    assert!(
        err.message.contains("local.* to make a new local key"),
        "{err}"
    );
    assert!(!err.is_transient());
}

/// Import an OSV database of exactly `advisories`, as of now.
fn import_only(f: &Fixture, name: &str, advisories: &[serde_json::Value]) {
    let osv = f._dir.path().join(name);
    std::fs::create_dir_all(&osv).unwrap();
    for a in advisories {
        std::fs::write(
            osv.join(format!("{}.json", a["id"].as_str().unwrap())),
            a.to_string(),
        )
        .unwrap();
    }
    import_advisories(&SupplyPaths::new(&f.state), &osv, cutover_model::now_ms()).expect("import");
}

#[tokio::test]
async fn an_image_that_passed_fails_its_rescan_once_the_database_knows_a_flaw() {
    let lock = "version = 3\n[[package]]\nname = \"smallvec\"\nversion = \"0.6.13\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
    let f = fixture_without_advisories(vec![SynthImage::file("app/Cargo.lock", lock)]);
    let affected = |name: &str| {
        serde_json::json!([{"package": {"ecosystem": "crates.io", "name": name},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}])
    };
    let unrelated = serde_json::json!({
        "id": "RUSTSEC-2020-0016", "modified": "2024-01-01T00:00:00Z",
        "summary": "net2 is unmaintained",
        "affected": affected("net2"),
        "database_specific": {"informational": "unmaintained", "categories": []},
    });
    // Deployed: the database of the day knows nothing against the image.
    import_only(&f, "osv-then", std::slice::from_ref(&unrelated));
    let chain = f.chain(None);
    let gate = GateSpec::default();
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("scan");
    assert!(outcome.passed, "{outcome:?}");
    chain.sign(&f.image, &f.request()).await.expect("sign");
    verify_image(chain.paths(), &f.image.id, "production", &[]).expect("verifies");

    // A rescan against the same database passes again and keeps the signed verdict valid.
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("rescan");
    assert!(outcome.passed, "{outcome:?}");
    verify_image(chain.paths(), &f.image.id, "production", &[]).expect("still verifies");

    // Today's database has an advisory against a package in the image: the rescan (not
    // answered from the cache of the old database) fails, naming it.
    let critical = serde_json::json!({
        "id": "RUSTSEC-2021-0003", "modified": "2023-06-13T13:10:24Z",
        "aliases": ["CVE-2021-25900"],
        "summary": "buffer overflow in SmallVec::insert_many",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": affected("smallvec"),
    });
    import_only(&f, "osv-now", &[unrelated, critical]);
    let outcome = chain
        .scan(&f.image, "hello", "production", &gate)
        .await
        .expect("rescan");
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome
            .reasons
            .iter()
            .any(|r| r.contains("RUSTSEC-2021-0003") && r.contains("smallvec")),
        "{:?}",
        outcome.reasons
    );
    let record = verdict_record(&chain, &f.image, "production");
    assert_eq!(record["passed"], false);
}

/// Attestations of `digest` signed elsewhere (by a "CI" key), as a registry holds them:
/// one DSSE envelope (JSON) per layer.
fn ci_attestations(digest: &str, key: &cutover_signing::KeyPair) -> Vec<Vec<u8>> {
    let inputs = cutover_signing::AttestInputs {
        image_name: "127.0.0.1:5000/hello:v1".to_string(),
        provenance: cutover_signing::ProvenanceInputs {
            app: "hello".to_string(),
            env: "ci".to_string(),
            spec_digest: cutover_model::sha256_digest(b"spec"),
            plan_digest: cutover_model::sha256_digest(b"plan"),
            source: cutover_signing::SourceInfo {
                path: Some("/src/hello".to_string()),
                git_commit: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
                git_dirty: Some(false),
                repository: Some("https://git.example/team/hello".to_string()),
            },
            resolved_dependencies: Vec::new(),
            builder_id: cutover_signing::DEFAULT_BUILDER_ID.to_string(),
            builder_version: None,
            deployment_id: "ci-1".to_string(),
            invoked_by: Some("https://ci.example/team/hello/jobs/7".to_string()),
            started_on_ms: 1_700_000_000_000,
            finished_on_ms: 1_700_000_000_000,
        },
        sbom: None,
        scan_verdict: None,
    };
    cutover_signing::attest(digest, inputs, key)
        .expect("attest")
        .envelopes
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect()
}

#[tokio::test]
async fn a_pulled_image_runs_only_where_its_provenance_signer_is_trusted() {
    let f = fixture(false);
    let chain = f.chain(None);
    let ci = cutover_signing::KeyPair::generate(cutover_signing::Algorithm::EcdsaP256);
    let ci_pub = f.state.join("ci.pub");
    ci.save_public(&ci_pub).unwrap();
    let reference =
        cutover_model::ImageRef::parse(&format!("127.0.0.1:5000/hello@sha256:{}", "ab".repeat(32)))
            .unwrap();

    // Statements about another image are refused at import, and nothing is kept.
    let other = cutover_model::sha256_digest(b"other image");
    let err = chain
        .import(&f.image, &reference, &ci_attestations(&other, &ci))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("not the pulled image"),
        "{}",
        err.message
    );
    assert!(!chain.paths().imported_provenance(&f.image.id).exists());

    chain
        .import(&f.image, &reference, &ci_attestations(&f.image.id, &ci))
        .await
        .expect("import");
    chain
        .scan(&f.image, "hello", "production", &GateSpec::default())
        .await
        .expect("scan");
    // This control plane signs its own verdict with its local key.
    chain.sign(&f.image, &f.request()).await.expect("sign");

    // Trusting CI: CI's provenance, the local key's verdict.
    let signers = chain
        .verify(&f.image, "production", std::slice::from_ref(&ci_pub))
        .await
        .expect("verified");
    assert!(signers.contains(&ci.key_id().to_string()), "{signers:?}");
    // Trusting only the local key: CI's provenance does not count.
    let err = chain.verify(&f.image, "production", &[]).await.unwrap_err();
    assert!(
        err.message.contains("not trusted for production"),
        "{}",
        err.message
    );
    // Trusting another key: neither.
    let stranger = cutover_signing::KeyPair::generate(cutover_signing::Algorithm::Ed25519);
    let stranger_pub = f.state.join("stranger.pub");
    stranger.save_public(&stranger_pub).unwrap();
    assert!(chain
        .verify(&f.image, "production", &[stranger_pub])
        .await
        .is_err());

    // The evidence names the source, the CI job and where the provenance came from.
    let evidence = chain.evidence(&f.image, "production").await.unwrap();
    let provenance = evidence.provenance.expect("provenance");
    assert_eq!(
        provenance.repository.as_deref(),
        Some("https://git.example/team/hello")
    );
    assert_eq!(
        provenance.invoked_by.as_deref(),
        Some("https://ci.example/team/hello/jobs/7")
    );
    assert_eq!(provenance.pulled_from, Some(reference.to_string()));
    assert_eq!(provenance.key_ids, vec![ci.key_id().to_string()]);

    // An imported provenance altered after the fact (a byte of its payload) fails.
    let file = chain.paths().imported_provenance(&f.image.id);
    let mut bundle = AttestationBundle::load(&file).unwrap();
    let engine = base64::engine::general_purpose::STANDARD;
    let mut payload = engine.decode(&bundle.envelopes[0].payload).unwrap();
    let at = String::from_utf8_lossy(&payload).find("\"ci\"").unwrap() + 1;
    payload[at] = b'C';
    bundle.envelopes[0].payload = engine.encode(&payload);
    bundle.save(&file).unwrap();
    let err = chain
        .verify(&f.image, "production", &[ci_pub])
        .await
        .unwrap_err();
    assert!(err.message.contains("does not verify"), "{}", err.message);
}
