//! The SBOM and the SARIF log of a real scan, checked by the standards' own validators:
//! CycloneDX by cyclonedx-python-lib's strict JSON validator, SARIF against the OASIS SARIF
//! 2.1.0 schema (`scripts/validate-formats.py`; `scripts/setup` installs its packages).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cutover_supply::synth::{SynthEntry, SynthImage};
use cutover_supply::*;

fn file(path: &str, data: impl Into<Vec<u8>>) -> SynthEntry {
    SynthImage::file(path, data)
}

fn validator() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/validate-formats.py")
}

/// Exit code of the validator when a Python package it needs is missing.
const MISSING: i32 = 3;

/// Runs the validator on `args`; `None` (after failing under `CI=true`) when python or a
/// package it needs is missing.
fn validate(args: &[&str]) -> Option<Output> {
    let out = match Command::new("python3").arg(validator()).args(args).output() {
        Ok(out) => out,
        Err(e) => {
            skip(&format!("python3 cannot run ({e}); run scripts/setup"));
            return None;
        }
    };
    if out.status.code() == Some(MISSING) {
        skip(&format!(
            "the validators' python packages are missing: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    Some(out)
}

#[track_caller]
fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test cannot run and CI=true: {why}");
    }
    eprintln!("skipped: {why} (with CI=true this fails)");
}

/// An image with packages of several ecosystems (some vulnerable), and secrets in files
/// (one whose path needs percent-encoding in a URI), in a file deleted by a later layer, in ENV, in a label and in the history.
fn image() -> SynthImage {
    // Built at run time so the source holds no literal token.
    let aws = format!("AKIA{}", "QWERTYUIOPASDFGH");
    let gh = format!("ghp_{}", "Zq8xW3vK9pL2mN5bR7tY1uI4oP6aS0dF3gH8");
    let gl = format!("glpat-{}", "AbCdEf1234567890XyZw");
    let status = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: 3.0.11-1~deb12u2\n\n\
                  Package: libc6\nStatus: install ok installed\nSource: glibc\nVersion: 2.36-9+deb12u1\n\n\
                  Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n";
    let mut img = SynthImage::new()
        .layer(
            vec![
                file("var/lib/dpkg/status", status),
                file(
                    "etc/os-release",
                    "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
                ),
            ],
            true,
        )
        .layer(
            vec![
                file(
                    "app/Cargo.lock",
                    "version = 3\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
                ),
                file(
                    "app/web/package-lock.json",
                    r#"{"name":"web","lockfileVersion":3,"packages":{"":{"name":"web"},"node_modules/lodash":{"version":"4.17.15"}}}"#,
                ),
                file(
                    "usr/lib/python3/dist-packages/Jinja2-2.11.2.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: Jinja2\nVersion: 2.11.2\n",
                ),
                file("etc/app/config.ini", format!("[aws]\naccess_key = {aws}\n")),
                // A path that is not a URI reference as it is (SARIF locations are URIs).
                file("srv/my app #2/.env", format!("GITHUB_TOKEN={gh}\n")),
                file("tmp/build/notes.txt", format!("token: {gl}\n")),
            ],
            false,
        )
        .layer(
            vec![SynthEntry::Whiteout {
                path: "tmp/build".into(),
            }],
            false,
        );
    img.env = vec!["PATH=/usr/bin".into(), format!("GITHUB_TOKEN={gh}")];
    img.labels = vec![("org.example.deploy-key".into(), aws.clone())];
    img.history = vec![format!("RUN echo {gl} > /dev/null")];
    img.cmd = vec!["/app".into()];
    img
}

#[test]
fn sbom_and_sarif_of_a_real_scan_pass_the_standard_validators() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv");
    let (db, _) = AdvisoryDb::import(&fixtures).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("image.tar");
    image().write(&tarball, false).unwrap();
    let report = scan(&tarball, &db, &RuleSet::default_rules(), Limits::default()).unwrap();

    // Non-trivial documents: packages of four ecosystems, vulnerabilities, and secrets in
    // files (one deleted) and in the image config.
    assert!(report.packages.len() >= 6, "{:?}", report.packages);
    assert!(
        report.findings.vulnerabilities.len() >= 4,
        "{:?}",
        report.findings.vulnerabilities
    );
    let secrets = &report.findings.secrets;
    assert!(
        secrets
            .iter()
            .any(|s| matches!(s.location, SecretLocation::Config { .. })),
        "{secrets:?}"
    );
    assert!(
        secrets
            .iter()
            .any(|s| matches!(s.location, SecretLocation::File { .. })),
        "{secrets:?}"
    );
    assert!(secrets.iter().any(|s| s.deleted), "{secrets:?}");

    let sbom_path = dir.path().join("sbom.cdx.json");
    let sarif_path = dir.path().join("scan.sarif");
    let bom = sbom(&report.image, &report.packages);
    let sarif = to_sarif(&report);
    std::fs::write(&sbom_path, serde_json::to_vec_pretty(&bom).unwrap()).unwrap();
    std::fs::write(&sarif_path, serde_json::to_vec_pretty(&sarif).unwrap()).unwrap();
    let uris: Vec<&str> = sarif["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(uris.contains(&"srv/my%20app%20%232/.env"), "{uris:?}");
    let results = uris.len();
    assert_eq!(
        results,
        report.findings.vulnerabilities.len() + secrets.len()
    );

    let (sbom_arg, sarif_arg) = (sbom_path.to_str().unwrap(), sarif_path.to_str().unwrap());
    let Some(out) = validate(&["--sbom", sbom_arg, "--sarif", sarif_arg]) else {
        return;
    };
    assert!(
        out.status.success(),
        "the validators refused cutover's output:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("valid CycloneDX 1.5"), "{said}");
    assert!(said.contains("valid SARIF 2.1.0"), "{said}");
    eprintln!(
        "{said}({} components, {results} SARIF results)",
        report.packages.len()
    );

    // The validators are not vacuous: each refuses a document that breaks its schema.
    let mut broken_bom = bom.clone();
    broken_bom["components"][0]["type"] = "not-a-type".into();
    let mut broken_sarif = sarif.clone();
    broken_sarif["runs"][0]["results"][0]["level"] = "fatal".into();
    std::fs::write(&sbom_path, broken_bom.to_string()).unwrap();
    std::fs::write(&sarif_path, broken_sarif.to_string()).unwrap();
    for (flag, path, complaint) in [
        ("--sbom", sbom_arg, "['components'][0]['type']"),
        ("--sarif", sarif_arg, "['results'][0]['level']"),
    ] {
        let out = validate(&[flag, path]).expect("the validator ran above");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains(complaint), "{flag}: {stderr}");
    }
}
