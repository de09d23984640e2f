//! End-to-end tests over synthetic image tarballs: inventory against the real dpkg database,
//! whiteouts, secrets, OSV matching, the gate, SBOM/SARIF and hostile input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cutover_supply::synth::{SynthEntry, SynthImage};
use cutover_supply::version::compare_debian;
use cutover_supply::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv")
}

fn write(img: &SynthImage, oci: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    img.write(&path, oci).unwrap();
    (dir, path)
}

fn file(path: &str, data: impl Into<Vec<u8>>) -> SynthEntry {
    SynthImage::file(path, data)
}

/// A test that cannot run here (a tool is missing): fails when `CI=true`, else prints
/// why it is skipped. Returns so the caller can `return`.
#[track_caller]
fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test cannot run and CI=true: {why}");
    }
    eprintln!("skipped: {why} (with CI=true this fails)");
}

fn dpkg_available() -> bool {
    Command::new("dpkg").arg("--version").output().is_ok()
        && Path::new("/var/lib/dpkg/status").exists()
}

#[test]
fn debian_ordering_agrees_with_dpkg() {
    if !dpkg_available() {
        skip("dpkg or /var/lib/dpkg/status is absent; install dpkg");
        return;
    }
    let status = std::fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let versions: Vec<String> = status
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(versions.len() > 20, "too few versions to compare");
    let n = versions.len();
    let mut pairs: Vec<(&str, &str)> = (0..n.min(300))
        .map(|i| (versions[i].as_str(), versions[(i * 7 + 3) % n].as_str()))
        .collect();
    // Near neighbours in lexical order are the interesting ones (same upstream, other revision).
    pairs.extend((1..n.min(150)).map(|i| (versions[i - 1].as_str(), versions[i].as_str())));
    pairs.push(("1.0~rc1", "1.0"));
    pairs.push(("1:0.9", "2.0"));
    let mut checked = 0;
    for (a, b) in pairs {
        let dpkg = |op: &str| {
            Command::new("dpkg")
                .args(["--compare-versions", a, op, b])
                .status()
                .unwrap()
                .success()
        };
        let want = if dpkg("lt") {
            std::cmp::Ordering::Less
        } else if dpkg("eq") {
            std::cmp::Ordering::Equal
        } else {
            std::cmp::Ordering::Greater
        };
        assert_eq!(compare_debian(a, b), Some(want), "{a} vs {b}");
        checked += 1;
    }
    eprintln!("{checked} version pairs agree with dpkg");
    assert!(checked >= 300);
}

#[test]
fn inventory_of_real_dpkg_status_agrees_with_dpkg_query() {
    if !dpkg_available() {
        skip("dpkg or /var/lib/dpkg/status is absent; install dpkg");
        return;
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}|${Package}|${Version}\n"])
        .output()
        .unwrap();
    let want: BTreeSet<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '|');
            let status = it.next()?;
            let (name, version) = (it.next()?, it.next()?);
            // Second letter is the current state: n = not installed, c = config files only.
            let state = status.chars().nth(1)?;
            (!version.is_empty() && state != 'n' && state != 'c')
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect();
    let status = std::fs::read("/var/lib/dpkg/status").unwrap();
    let img = SynthImage::new()
        .layer(vec![file("var/lib/dpkg/status", status)], true)
        .layer(
            vec![file("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")],
            false,
        );
    let (_dir, path) = write(&img, false);
    let image = ImageReader::open(&path).unwrap();
    let inv = inventory(&image).unwrap();
    let got: BTreeSet<(String, String)> = inv
        .packages
        .iter()
        .filter(|p| p.ecosystem == Ecosystem::Debian)
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(inv.distro.as_ref().unwrap().version_id, "12");
    assert!(inv
        .packages
        .iter()
        .all(|p| p.layer == image.layers[0].digest));
    eprintln!("{} packages agree with dpkg-query", got.len());
}

const STATUS: &str = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: 3.0.11-1~deb12u2\n\nPackage: libc6\nStatus: install ok installed\nSource: glibc\nVersion: 2.36-9+deb12u1\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n";

fn app_image() -> SynthImage {
    SynthImage::new()
        .layer(
            vec![
                file("var/lib/dpkg/status", STATUS),
                file("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"),
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
                file("usr/lib/python3/dist-packages/Jinja2-2.11.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: Jinja2\nVersion: 2.11.2\n"),
                file("app/requirements.txt", "requests==2.31.0\n"),
            ],
            false,
        )
}

#[test]
fn end_to_end_scan_match_gate_sbom_sarif() {
    let (db, report) = AdvisoryDb::import(fixtures()).unwrap();
    assert_eq!(report.withdrawn, 1);
    assert_eq!(db.len(), 7, "{report:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("malformed.json") && w.contains("EOF")),
        "{:?}",
        report.warnings
    );
    let dbdir = tempfile::tempdir().unwrap();
    let dbfile = dbdir.path().join("osv.db");
    db.save(&dbfile).unwrap();
    let db = AdvisoryDb::load(&dbfile).unwrap();

    for oci in [false, true] {
        let (_dir, path) = write(&app_image(), oci);
        let report = scan(&path, &db, &RuleSet::default_rules(), Limits::default()).unwrap();
        let ids: BTreeSet<&str> = report
            .findings
            .vulnerabilities
            .iter()
            .map(|v| v.id.as_str())
            .collect();
        let want: BTreeSet<&str> = [
            "DEBIAN-CVE-2024-2511",
            "DEBIAN-CVE-2023-4911",
            "RUSTSEC-2021-0003",
            "GHSA-p6mc-m468-83gw",
            "GHSA-g3rq-g295-4j3m",
        ]
        .into();
        // DSA-5343-1 is for Debian 11 and the image is Debian 12.
        assert_eq!(ids, want, "oci={oci}");
        let smallvec = report
            .findings
            .vulnerabilities
            .iter()
            .find(|v| v.id == "RUSTSEC-2021-0003")
            .unwrap();
        assert_eq!(smallvec.severity, Severity::Critical);
        assert_eq!(smallvec.fixed.as_deref(), Some("1.6.1"));
        assert_eq!(smallvec.locations, ["app/Cargo.lock"]);
        let ssl = report
            .findings
            .vulnerabilities
            .iter()
            .find(|v| v.id == "DEBIAN-CVE-2024-2511")
            .unwrap();
        assert_eq!(
            (ssl.package.as_str(), ssl.severity),
            ("libssl3", Severity::Low)
        );
        assert!(report
            .packages
            .iter()
            .any(|p| p.purl == "pkg:pypi/jinja2@2.11.2"));
        assert!(report.packages.iter().any(|p| p.name == "requests"));
        assert!(
            report.findings.secrets.is_empty(),
            "{:?}",
            report.findings.secrets
        );

        // Gate: critical and high fail; exceptions by alias clear them.
        let today: Date = "2026-06-01".parse().unwrap();
        let v = evaluate(
            &report.findings,
            &GatePolicy::default(),
            &Exceptions::none(),
            today,
        );
        assert!(!v.passed);
        assert!(
            v.reasons[0].starts_with("3 vulnerabilities at or above high"),
            "{:?}",
            v.reasons
        );
        let ex = Exceptions::from_toml(
            "[[exception]]\nid = \"GHSA-43w2-9j62-hq99\"\nreason = \"insert_many is never called\"\nowner = \"platform\"\nexpires = 2026-12-31\n\n\
             [[exception]]\nid = \"CVE-2020-8203\"\nreason = \"zipObjectDeep unused\"\nowner = \"web\"\nexpires = 2026-12-31\n\n\
             [[exception]]\nid = \"CVE-2023-4911\"\npackage = \"libc6\"\nreason = \"no setuid binaries\"\nowner = \"platform\"\nexpires = 2026-07-01\n",
            "exceptions.toml",
        )
        .unwrap();
        let v = evaluate(&report.findings, &GatePolicy::default(), &ex, today);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.suppressed.len(), 3);
        let v = evaluate(
            &report.findings,
            &GatePolicy::default(),
            &ex,
            "2026-07-02".parse().unwrap(),
        );
        assert!(!v.passed);
        assert!(
            v.reasons
                .contains(&"exception CVE-2023-4911 expired on 2026-07-01".to_string()),
            "{:?}",
            v.reasons
        );

        // SBOM: CycloneDX 1.5, deterministic, sorted, names the image digest.
        let bom = sbom(&report.image, &report.packages);
        assert_eq!(bom["bomFormat"], "CycloneDX");
        assert_eq!(bom["specVersion"], "1.5");
        assert!(bom["serialNumber"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:"));
        assert_eq!(
            bom["metadata"]["component"]["bom-ref"],
            report.image.id.as_str()
        );
        let purls: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["purl"].as_str().unwrap())
            .collect();
        let mut sorted = purls.clone();
        sorted.sort();
        assert_eq!(purls, sorted);
        assert_eq!(purls.len(), report.packages.len());
        assert_eq!(bom, sbom(&report.image, &report.packages));

        let sarif = to_sarif(&report);
        assert_eq!(sarif["version"], "2.1.0");
        assert_eq!(sarif["runs"][0]["results"].as_array().unwrap().len(), 5);
    }
}

#[test]
fn whiteouts_and_opaque_dirs_hide_packages() {
    let img = SynthImage::new()
        .layer(
            vec![
                file("var/lib/dpkg/status", STATUS),
                file("app/node/package-lock.json", r#"{"lockfileVersion":2,"packages":{"node_modules/lodash":{"version":"4.17.15"}}}"#),
                file("app/requirements.txt", "flask==0.12\n"),
            ],
            true,
        )
        .layer(
            vec![
                SynthEntry::Whiteout { path: "var/lib/dpkg/status".into() },
                SynthEntry::Opaque { dir: "app/node".into() },
                file("app/node/README", "fresh"),
                file("app/requirements.txt", "flask==2.3.3\n"),
            ],
            false,
        );
    let (_dir, path) = write(&img, false);
    let image = ImageReader::open(&path).unwrap();
    assert!(!image.is_visible("var/lib/dpkg/status"));
    assert!(image.is_visible("app/node/README"));
    assert!(!image.is_visible("app/node/package-lock.json"));
    let inv = inventory(&image).unwrap();
    let got: Vec<(String, String)> = inv
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    assert_eq!(got, [("flask".to_string(), "2.3.3".to_string())]);
    assert_eq!(inv.packages[0].layer, image.layers[1].digest);
}

fn canaries() -> (String, String, String, String) {
    // Built at run time so the source holds no literal token.
    let aws = format!("AKIA{}", "QWERTYUIOPASDFGH");
    let gh = format!("ghp_{}", "Zq8xW3vK9pL2mN5bR7tY1uI4oP6aS0dF3gH8");
    let pw = format!("{}{}", "Vx7#qL9!zR2@", "mK4$wP8&");
    let gl = format!("glpat-{}", "AbCdEf1234567890XyZw");
    (aws, gh, pw, gl)
}

fn npm_canary() -> String {
    format!("{}{}", "c3VwZXJzZWNyZXRu", "cG10b2tlbg")
}

fn secret_image() -> SynthImage {
    let (aws, gh, pw, gl) = canaries();
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBq3kq0s9l8mQh2xq7Yf0b1yZpX8bD3kF0m2a9nqPq1lwAAAJgAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    let mut img = SynthImage::new()
        .layer(
            vec![
                file("etc/app/config.ini", format!("[aws]\naccess_key = {aws}\n\n[db]\ndb_password = \"{pw}\"\nexample_key = AKIAIOSFODNN7EXAMPLE\n")),
                file("root/.ssh/id_ed25519", key),
                file("usr/share/doc/app/README", format!("token: {gl}\n")),
                file("usr/bin/tool", b"\x7fELF\x02\x01\x01\0\0\0 ghp_notscannedbecausebinary".to_vec()),
            ],
            true,
        )
        .layer(vec![file("tmp/build/.npmrc", format!("//registry.npmjs.org/:_authToken={}\n", npm_canary()))], false)
        .layer(vec![SynthEntry::Whiteout { path: "tmp/build".into() }], false);
    img.env = vec!["PATH=/usr/bin".into(), format!("GITHUB_TOKEN={gh}")];
    img.cmd = vec!["/app".into()];
    img.history = vec!["RUN echo build".into()];
    img
}

#[test]
fn secrets_are_found_redacted_and_marked_deleted() {
    let (_dir, path) = write(&secret_image(), false);
    let db = AdvisoryDb::default();
    let report = scan(&path, &db, &RuleSet::default_rules(), Limits::default()).unwrap();
    let s = &report.findings.secrets;
    let by_rule = |id: &str| s.iter().filter(|f| f.rule_id == id).collect::<Vec<_>>();
    let aws = by_rule("aws-access-key-id");
    assert_eq!(aws.len(), 1, "the EXAMPLE key is allowlisted: {s:#?}");
    assert_eq!(aws[0].redacted, "AKIA…");
    assert!(
        matches!(&aws[0].location, SecretLocation::File { path, line: 2, .. } if path == "etc/app/config.ini")
    );
    assert_eq!(by_rule("generic-secret-assignment").len(), 1, "{s:#?}");
    assert_eq!(by_rule("private-key")[0].redacted, "");
    assert_eq!(by_rule("ssh-private-key-file").len(), 1);
    let env = by_rule("github-pat");
    assert_eq!(env.len(), 1);
    assert_eq!(
        env[0].location,
        SecretLocation::Config {
            field: "Env[1]".into()
        }
    );
    let npm = by_rule("npmrc-auth-token");
    assert_eq!(npm.len(), 1, "{s:#?}");
    assert!(npm[0].deleted);
    assert!(npm[0]
        .note
        .as_deref()
        .unwrap()
        .contains("deleted by a later layer"));
    assert!(!aws[0].deleted);
    // The docs path is allowlisted globally; binaries get no content rules.
    assert!(s
        .iter()
        .all(|f| f.location.path() != Some("usr/share/doc/app/README")));
    assert!(s.iter().all(|f| f.location.path() != Some("usr/bin/tool")));

    let json = serde_json::to_string(&report).unwrap();
    let debug = format!("{report:?}");
    let sarif = to_sarif(&report).to_string();
    let display: String = s.iter().map(|f| f.to_string()).collect();
    let (aws, gh, pw, gl) = canaries();
    for canary in [
        aws,
        gh,
        pw,
        gl,
        npm_canary(),
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ".into(),
    ] {
        for (what, text) in [
            ("json", &json),
            ("debug", &debug),
            ("sarif", &sarif),
            ("display", &display),
        ] {
            assert!(!text.contains(&canary), "{what} leaks a canary");
        }
    }
    // Fingerprints are stable across scans.
    let again = scan(&path, &db, &RuleSet::default_rules(), Limits::default()).unwrap();
    assert_eq!(again.findings.secrets, report.findings.secrets);

    // The gate fails on secrets, and a fingerprint exception clears one.
    let today: Date = "2026-01-01".parse().unwrap();
    let v = evaluate(
        &report.findings,
        &GatePolicy::default(),
        &Exceptions::none(),
        today,
    );
    assert!(!v.passed);
    assert_eq!(v.secrets, s.len());
    let ex = Exceptions::from_toml(
        &format!("[[exception]]\nfingerprint = \"{}\"\nreason = \"test key\"\nowner = \"sec\"\nexpires = 2026-02-01\n", env[0].fingerprint),
        "e.toml",
    )
    .unwrap();
    let v = evaluate(&report.findings, &GatePolicy::default(), &ex, today);
    assert_eq!(v.secrets, s.len() - 1);
}

#[test]
fn custom_rules_with_allowlists() {
    let rules = RuleSet::from_toml(
        r#"
[[rules]]
id = "acme-key"
description = "ACME API key"
regex = '''acme_[a-z0-9]{16}'''
keywords = ["acme_"]
[[rules.allowlists]]
paths = ['''^fixtures/''']
[[rules.allowlists]]
regexTarget = "line"
regexes = ['''# not-a-secret''']

[allowlist]
stopwords = ["0000000000000000"]
"#,
        "acme.toml",
    )
    .unwrap();
    let text = "a = acme_1234567890abcdef\nb = acme_1234567890abcdef # not-a-secret\nc = acme_0000000000000000\n";
    let hits = rules.scan_text(text, Some("srv/app.conf"));
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(rules.scan_text(text, Some("fixtures/app.conf")).is_empty());
    assert!(rules.scan_text("nothing here", Some("x")).is_empty());
}

#[test]
fn malformed_rule_files_are_clear_errors() {
    let err = RuleSet::from_toml("[[rules]\nid=", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("rule file bad.toml:"), "{err}");
    let err = RuleSet::from_toml(
        "[[rules]]\nid = \"x\"\nregex = '''(unclosed'''\n",
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rule x: invalid regex"), "{err}");
    let err = RuleSet::from_toml("[[rules]]\nid = \"y\"\n", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2: rule y: needs a regex or a path"),
        "{err}"
    );
}

#[test]
fn hostile_and_broken_images_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Not a tar at all.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    assert!(ImageReader::open(&junk).is_err());
    // Missing file.
    let err = ImageReader::open(dir.path().join("nope.tar"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read"), "{err}");

    // A gzip bomb: 32 MiB of zeros compress to ~32 KiB; a 4 MiB layer limit stops it.
    let bomb = SynthImage::new().layer(vec![file("zeros", vec![0u8; 32 << 20])], true);
    let bomb_path = dir.path().join("bomb.tar");
    bomb.write(&bomb_path, false).unwrap();
    assert!(std::fs::metadata(&bomb_path).unwrap().len() < 1 << 20);
    let limits = Limits {
        max_layer_bytes: 4 << 20,
        ..Limits::default()
    };
    let err = ImageReader::open_with_limits(&bomb_path, limits).unwrap_err();
    assert!(matches!(err, SupplyError::LayerTooLarge { .. }), "{err}");
    // With room for it, the oversized file is skipped with a warning instead.
    let limits = Limits {
        max_file_bytes: 1 << 20,
        ..Limits::default()
    };
    let report = scan(
        &bomb_path,
        &AdvisoryDb::default(),
        &RuleSet::default_rules(),
        limits,
    )
    .unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains("skipped zeros")),
        "{:?}",
        report.warnings
    );
    // The report lists it for the gate.
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert_eq!(report.skipped[0].path, "zeros");
    assert_eq!(report.skipped[0].size, 32 << 20);
    // Too many entries.
    let many = SynthImage::new().layer(
        (0..50).map(|i| file(&format!("f{i}"), "x")).collect(),
        false,
    );
    let many_path = dir.path().join("many.tar");
    many.write(&many_path, false).unwrap();
    let err = ImageReader::open_with_limits(
        &many_path,
        Limits {
            max_entries: 10,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, SupplyError::TooManyEntries { limit: 10 }),
        "{err}"
    );

    // Truncated gzip inside a layer: cut the compressed layer blob short.
    let img = SynthImage::new().layer(
        vec![file(
            "big",
            (0..400_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>(),
        )],
        true,
    );
    let good = dir.path().join("good.tar");
    img.write(&good, false).unwrap();
    let truncated = dir.path().join("truncated-gzip.tar");
    rewrite_layers(&good, &truncated, |blob| blob[..blob.len() / 2].to_vec());
    let err = scan(
        &truncated,
        &AdvisoryDb::default(),
        &RuleSet::default_rules(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SupplyError::CorruptTar { .. }), "{err}");
    // A truncated image tarball.
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert!(ImageReader::open(&cut).is_err());
    // A gzip-compressed image tarball gets a hint.
    let gz = dir.path().join("image.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut enc, &bytes).unwrap();
    enc.finish().unwrap();
    let err = ImageReader::open(&gz).unwrap_err().to_string();
    assert!(err.contains("gunzip"), "{err}");
}

/// Copies an image tarball, passing every `*/layer.tar` member through `f`.
fn rewrite_layers(src: &Path, dst: &Path, f: impl Fn(&[u8]) -> Vec<u8>) {
    let mut archive = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name.ends_with("layer.tar") {
            data = f(&data);
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, &name, data.as_slice()).unwrap();
    }
    out.finish().unwrap();
}

#[test]
fn zip_import_bounds_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("osv.zip");
    let mut advisories = vec![serde_json::json!({
        "id": "RUSTSEC-2099-0001", "aliases": ["CVE-2099-1"],
        "affected": [{"package": {"ecosystem": "crates.io", "name": "demo"},
                      "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.0.0"}]}]}]
    })];
    // A "bomb": one advisory padded with 8 MiB of spaces, past a 1 MiB per-file limit.
    advisories.push(serde_json::json!({"id": "PAD-1", "summary": " ".repeat(8 << 20)}));
    cutover_supply::osv::write_zip(&zip, &advisories).unwrap();
    assert!(std::fs::metadata(&zip).unwrap().len() < 1 << 20);
    let limits = ImportLimits {
        max_file_bytes: 1 << 20,
        ..ImportLimits::default()
    };
    let (db, report) = AdvisoryDb::import_with_limits(&zip, limits).unwrap();
    assert_eq!(db.len(), 1);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("PAD-1.json") && w.contains("decompresses past")),
        "{report:?}"
    );
    let limits = ImportLimits {
        max_total_bytes: 100,
        ..ImportLimits::default()
    };
    assert!(AdvisoryDb::import_with_limits(&zip, limits).is_err());
    // Not a zip and not a directory.
    let err = AdvisoryDb::import(dir.path().join("osv.zip").with_extension("nothing")).unwrap_err();
    assert!(err.to_string().starts_with("cannot read"), "{err}");
    let junk = dir.path().join("junk.zip");
    std::fs::write(&junk, b"not a zip").unwrap();
    assert!(AdvisoryDb::import(&junk).is_err());
    let err = AdvisoryDb::load(&junk).unwrap_err().to_string();
    assert!(err.contains("import the advisories again"), "{err}");
}

#[test]
fn alpine_packages_match_apk_advisories() {
    let (db, _) = AdvisoryDb::import(fixtures()).unwrap();
    let img = SynthImage::new().layer(
        vec![
            file("etc/os-release", "ID=alpine\nVERSION_ID=3.18.4\n"),
            file(
                "lib/apk/db/installed",
                "P:libcrypto3\nV:3.1.3-r0\no:openssl\n\nP:musl\nV:1.2.4-r2\no:musl\n",
            ),
        ],
        true,
    );
    let (_dir, path) = write(&img, true);
    let report = scan(&path, &db, &RuleSet::default_rules(), Limits::default()).unwrap();
    let v = &report.findings.vulnerabilities;
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (v[0].id.as_str(), v[0].package.as_str()),
        ("ALPINE-CVE-2023-5678", "libcrypto3")
    );
    assert_eq!(v[0].fixed.as_deref(), Some("3.1.4-r1"));
    assert_eq!(v[0].severity, Severity::Medium);
    assert!(report.packages[0]
        .purl
        .starts_with("pkg:apk/alpine/libcrypto3@3.1.3-r0?distro=alpine-3.18.4"));
}

#[test]
fn cargo_auditable_binaries_are_inventoried() {
    let objcopy = Command::new("objcopy").arg("--version").output();
    let Ok(true_bin) = std::fs::read("/bin/true") else {
        skip("/bin/true is absent");
        return;
    };
    if objcopy.is_err() {
        skip("objcopy is absent; install binutils");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = br#"{"packages":[{"name":"app","version":"0.1.0","source":"local","kind":"build","root":true},{"name":"smallvec","version":"1.6.0","source":"crates.io","dependencies":[]}]}"#;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, json).unwrap();
    let section = dir.path().join("dep-v0");
    std::fs::write(&section, enc.finish().unwrap()).unwrap();
    let src = dir.path().join("true");
    std::fs::write(&src, true_bin).unwrap();
    let out = dir.path().join("app");
    let ok = Command::new("objcopy")
        .arg("--add-section")
        .arg(format!(".dep-v0={}", section.display()))
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "objcopy failed");
    let binary = std::fs::read(&out).unwrap();
    let img = SynthImage::new().layer(vec![file("usr/local/bin/app.so", binary)], false);
    let (_d, path) = write(&img, false);
    let image = ImageReader::open(&path).unwrap();
    let inv = inventory(&image).unwrap();
    let got: Vec<(&str, &str)> = inv
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    assert_eq!(got, [("smallvec", "1.6.0")]);
    assert_eq!(inv.packages[0].locations, ["usr/local/bin/app.so"]);
}

#[test]
fn a_stripe_live_key_in_env_fails_the_gate() {
    // Built at run time so the source holds no literal key.
    let key = format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc9Xq2Lm");
    let mut img = SynthImage::new().layer(vec![file("app/README", "hello\n")], false);
    img.env = vec!["PATH=/usr/bin".into(), format!("STRIPE_API_KEY={key}")];
    let (_dir, path) = write(&img, false);
    let report = scan(
        &path,
        &AdvisoryDb::default(),
        &RuleSet::default_rules(),
        Limits::default(),
    )
    .unwrap();
    let found: Vec<&SecretFinding> = report.findings.secrets.iter().collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule_id, "stripe-secret-key");
    assert!(
        matches!(&found[0].location, SecretLocation::Config { field, .. } if field.starts_with("Env")),
        "{:?}",
        found[0].location
    );
    let shown = serde_json::to_string(&report).unwrap();
    assert!(!shown.contains(&key), "the key leaked into the report");
    let v = evaluate(
        &report.findings,
        &GatePolicy::default(),
        &Exceptions::none(),
        "2026-01-01".parse().unwrap(),
    );
    assert!(!v.passed, "{v:?}");
    assert_eq!(v.secrets, 1);
}
