//! Version orderings of the ecosystems cutover scans: Debian (dpkg), Alpine (apk), semver
//! (crates.io, npm) and PEP 440 (PyPI).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// A package ecosystem, named as OSV names it (without a release suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Ecosystem {
    Debian,
    Alpine,
    #[serde(rename = "crates.io")]
    CratesIo,
    #[serde(rename = "npm")]
    Npm,
    PyPI,
}

impl Ecosystem {
    pub fn osv_name(self) -> &'static str {
        match self {
            Ecosystem::Debian => "Debian",
            Ecosystem::Alpine => "Alpine",
            Ecosystem::CratesIo => "crates.io",
            Ecosystem::Npm => "npm",
            Ecosystem::PyPI => "PyPI",
        }
    }

    /// Parses an OSV ecosystem such as `Debian:12` or `crates.io`; the release part is
    /// returned separately.
    pub fn from_osv(s: &str) -> Option<(Ecosystem, Option<&str>)> {
        let (base, release) = match s.split_once(':') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let eco = match base {
            "Debian" => Ecosystem::Debian,
            "Alpine" => Ecosystem::Alpine,
            "crates.io" => Ecosystem::CratesIo,
            "npm" => Ecosystem::Npm,
            "PyPI" => Ecosystem::PyPI,
            _ => return None,
        };
        Some((eco, release))
    }

    /// The name under which advisories index a package of this ecosystem.
    pub fn normalize_name(self, name: &str) -> String {
        match self {
            Ecosystem::PyPI => normalize_pypi(name),
            _ => name.to_string(),
        }
    }

    /// Compares two versions of this ecosystem; `None` when either does not parse.
    pub fn compare(self, a: &str, b: &str) -> Option<Ordering> {
        match self {
            Ecosystem::Debian => compare_debian(a, b),
            Ecosystem::Alpine => compare_apk(a, b),
            Ecosystem::CratesIo | Ecosystem::Npm => compare_semver(a, b),
            Ecosystem::PyPI => compare_pep440(a, b),
        }
    }
}

impl std::fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.osv_name())
    }
}

/// PEP 503 name normalization: lowercase, runs of `-_.` become `-`.
pub fn normalize_pypi(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// dpkg ordering (epochs, `~`, revisions).
pub fn compare_debian(a: &str, b: &str) -> Option<Ordering> {
    let a: debversion::Version = a.trim().parse().ok()?;
    let b: debversion::Version = b.trim().parse().ok()?;
    Some(a.cmp(&b))
}

/// semver ordering; `1.2` is read as `1.2.0` and a leading `v` is dropped.
pub fn compare_semver(a: &str, b: &str) -> Option<Ordering> {
    Some(parse_semver(a)?.cmp_precedence(&parse_semver(b)?))
}

pub(crate) fn parse_semver(s: &str) -> Option<semver::Version> {
    let s = s.trim().trim_start_matches('v');
    if let Ok(v) = semver::Version::parse(s) {
        return Some(v);
    }
    // Pad missing minor/patch: split off pre-release/build first.
    let cut = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(cut);
    let parts = core.split('.').count();
    if parts == 0 || parts >= 3 {
        return None;
    }
    let padded = format!("{core}{}{rest}", ".0".repeat(3 - parts));
    semver::Version::parse(&padded).ok()
}

// ---------------------------------------------------------------- PEP 440

/// PEP 440 ordering (epochs, pre/post/dev releases, local versions), by `pep440_rs`.
pub fn compare_pep440(a: &str, b: &str) -> Option<Ordering> {
    let a: pep440_rs::Version = a.trim().parse().ok()?;
    let b: pep440_rs::Version = b.trim().parse().ok()?;
    Some(a.cmp(&b))
}

// ---------------------------------------------------------------- apk

#[derive(Debug)]
struct ApkVersion {
    numbers: Vec<String>,
    letter: Option<char>,
    suffixes: Vec<(u8, u64)>,
    revision: u64,
}

/// Rank of an apk suffix; `NO_SUFFIX` sits between pre-release and post-release suffixes.
const NO_SUFFIX: u8 = 4;

fn apk_suffix_rank(s: &str) -> Option<u8> {
    Some(match s {
        "alpha" => 0,
        "beta" => 1,
        "pre" => 2,
        "rc" => 3,
        "cvs" => 5,
        "svn" => 6,
        "git" => 7,
        "hg" => 8,
        "p" => 9,
        _ => return None,
    })
}

fn parse_apk(s: &str) -> Option<ApkVersion> {
    let s = s.trim();
    let (main, revision) = match s.rsplit_once("-r") {
        Some((m, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            (m, r.parse().ok()?)
        }
        _ => (s, 0),
    };
    let (head, suffix_part) = match main.split_once('_') {
        Some((h, rest)) => (h, Some(rest)),
        None => (main, None),
    };
    let (nums, letter) = match head.chars().last() {
        Some(c) if c.is_ascii_lowercase() => (&head[..head.len() - 1], Some(c)),
        _ => (head, None),
    };
    let numbers: Vec<String> = nums.split('.').map(str::to_string).collect();
    if numbers
        .iter()
        .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut suffixes = Vec::new();
    if let Some(sp) = suffix_part {
        for part in sp.split('_') {
            let word_len = part.bytes().take_while(u8::is_ascii_alphabetic).count();
            let rank = apk_suffix_rank(&part[..word_len])?;
            let digits = &part[word_len..];
            let n = if digits.is_empty() {
                0
            } else {
                digits.parse().ok()?
            };
            suffixes.push((rank, n));
        }
    }
    Some(ApkVersion {
        numbers,
        letter,
        suffixes,
        revision,
    })
}

/// apk-tools ordering: numeric components (later ones with a leading zero compare as
/// fractions), an optional letter, `_alpha`..`_p` suffixes and `-rN` revisions.
pub fn compare_apk(a: &str, b: &str) -> Option<Ordering> {
    let a = parse_apk(a)?;
    let b = parse_apk(b)?;
    for (i, (x, y)) in a.numbers.iter().zip(&b.numbers).enumerate() {
        let ord = if i > 0 && (x.starts_with('0') || y.starts_with('0')) {
            x.trim_end_matches('0').cmp(y.trim_end_matches('0'))
        } else {
            let x = x.trim_start_matches('0');
            let y = y.trim_start_matches('0');
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        };
        if ord != Ordering::Equal {
            return Some(ord);
        }
    }
    let ord = a.numbers.len().cmp(&b.numbers.len());
    if ord != Ordering::Equal {
        return Some(ord);
    }
    let ord = a.letter.cmp(&b.letter);
    if ord != Ordering::Equal {
        return Some(ord);
    }
    let max = a.suffixes.len().max(b.suffixes.len());
    for i in 0..max {
        let x = a.suffixes.get(i).copied().unwrap_or((NO_SUFFIX, 0));
        let y = b.suffixes.get(i).copied().unwrap_or((NO_SUFFIX, 0));
        let ord = x.cmp(&y);
        if ord != Ordering::Equal {
            return Some(ord);
        }
    }
    Some(a.revision.cmp(&b.revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn debian_ordering_table() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1", Less),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("1.0a", "1.0+", Less),
        ] {
            assert_eq!(compare_debian(a, b), Some(want), "{a} vs {b}");
        }
    }

    #[test]
    fn semver_ordering_table() {
        for (a, b, want) in [
            ("1.0.0-alpha", "1.0.0", Less),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0-rc.1", "1.0.0-beta.11", Greater),
            ("1.2", "1.2.0", Equal),
            ("v2.0.0", "1.9.9", Greater),
            ("1.0.0+build", "1.0.0", Equal),
        ] {
            assert_eq!(compare_semver(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare_semver("not.a.version", "1.0.0"), None);
    }

    #[test]
    fn pep440_ordering_table() {
        let ordered = [
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.1.dev1",
            "2.0",
            "1!0.1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                compare_pep440(w[0], w[1]),
                Some(Less),
                "{} < {}",
                w[0],
                w[1]
            );
        }
        assert_eq!(compare_pep440("1.0", "1.0.0"), Some(Equal));
        assert_eq!(compare_pep440("1.0-1", "1.0.post1"), Some(Equal));
        assert_eq!(compare_pep440("1.0RC1", "1.0rc1"), Some(Equal));
        assert_eq!(compare_pep440("banana", "1.0"), None);
    }

    #[test]
    fn pep440_epochs_spellings_and_local_versions() {
        for (a, b, want) in [
            // Epochs outrank every release number.
            ("1!1.0", "2.0", Greater),
            ("0!1.0", "1.0", Equal),
            ("1!1.0", "1!1.0.0", Equal),
            ("2!0.1", "1!99.0", Greater),
            // Pre-release spellings normalize.
            ("1.0alpha1", "1.0a1", Equal),
            ("1.0-beta.2", "1.0b2", Equal),
            ("1.0c1", "1.0rc1", Equal),
            ("1.0pre1", "1.0rc1", Equal),
            ("1.0preview1", "1.0rc1", Equal),
            ("1.0a", "1.0a0", Equal),
            ("1.0rc1", "1.0", Less),
            // Post-release spellings normalize and sort after the release.
            ("1.0-1", "1.0.post1", Equal),
            ("1.0.rev1", "1.0.post1", Equal),
            ("1.0r1", "1.0.post1", Equal),
            ("1.0post", "1.0.post0", Equal),
            ("1.0.post1", "1.0", Greater),
            ("1.0.post1", "1.0.1", Less),
            // Dev releases sort before the pre-releases of the same release.
            ("1.0.dev", "1.0.dev0", Equal),
            ("1.0dev1", "1.0a1", Less),
            ("1.0a1.dev1", "1.0a1", Less),
            ("1.0.post1.dev1", "1.0.post1", Less),
            ("1.0.post1.dev1", "1.0", Greater),
            // Local versions sort after their public version; numbers after strings.
            ("1.0+ubuntu.1", "1.0", Greater),
            ("1.0+ubuntu.1", "1.0.post1", Less),
            ("1.0+local-1", "1.0+local.1", Equal),
            ("1.0+1", "1.0+abc", Greater),
            ("1.0+abc.10", "1.0+abc.9", Greater),
            // A leading `v`, case and surrounding blanks are not significant.
            ("v1.0", "1.0", Equal),
            ("1.0RC1", "1.0rc1", Equal),
            (" 1.0 ", "1.0", Equal),
        ] {
            assert_eq!(compare_pep440(a, b), Some(want), "{a} vs {b}");
        }
        for bad in ["1.0+", "1..0", "1.0-", "", "1.0.dev1.post1"] {
            assert_eq!(compare_pep440(bad, "1.0"), None, "{bad:?} must not parse");
        }
    }

    #[test]
    fn apk_ordering_table() {
        for (a, b, want) in [
            ("1.2.3", "1.2.3-r0", Equal),
            ("1.2.3-r1", "1.2.3-r0", Greater),
            ("1.2.3_rc1", "1.2.3", Less),
            ("1.2.3_p1", "1.2.3", Greater),
            ("1.2.3a", "1.2.3", Greater),
            ("1.2.10", "1.2.9", Greater),
            ("1.2", "1.2.1", Less),
            ("3.1.4-r5", "3.1.4-r10", Less),
            ("1.02", "1.1", Less),
            ("1.0_alpha1", "1.0_beta", Less),
            ("2.0_git20240101", "2.0", Greater),
        ] {
            assert_eq!(compare_apk(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare_apk("1.x", "1.0"), None);
    }

    #[test]
    fn pypi_names_normalize() {
        assert_eq!(normalize_pypi("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize_pypi("requests"), "requests");
    }
}
