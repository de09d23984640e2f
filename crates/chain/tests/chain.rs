//! The local supply chain end to end over synthetic image tarballs, no Docker: scan, sign
//! and verify; and the refusals (tampered attestation, untrusted key, failed gate).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use cutover_chain::{verify_image, ExceptionAudit, ImageExport, LocalSupplyChain};
use cutover_model::{GateSpec, ImageInfo, ProviderError, SignRequest, SupplyChain};
use cutover_signing::{AttestationBundle, SCAN_VERDICT_PREDICATE};
use cutover_supply::synth::SynthImage;

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

fn fixture(secret: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = vec![
        SynthImage::file("etc/os-release", "ID=alpine\nVERSION_ID=3.20.0\n"),
        SynthImage::file("app/hello", "#!/bin/sh\necho hello\n"),
    ];
    if secret {
        files.push(SynthImage::file(
            "app/config.ini",
            format!("[aws]\naccess_key = {}\n", canary()),
        ));
    }
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
    let bundle = AttestationBundle::load(&paths.attestations(&f.image.id)).expect("bundle");
    assert_eq!(bundle.image_digest, f.image.id);

    // Another image id is not covered by these attestations.
    let other = cutover_model::sha256_digest(b"another image");
    let err = verify_image(paths, &other, "production", &[]).expect_err("never signed");
    assert!(err.message.contains("never signed by cutover"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_second_scan_is_answered_from_the_cache() {
    let f = fixture(false);
    let chain = f.chain(None);
    let (first, _) = chain.report(&f.image, None).await.expect("first scan");
    let (second, _) = chain.report(&f.image, None).await.expect("second scan");
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
    chain
        .report(&f.image, Some(&rules))
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
    let file = chain.paths().attestations(&f.image.id);
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
