//! The release gate: a policy, expiring exceptions, and a verdict.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::image::SkippedFile;
use crate::osv::{Informational, Severity, VulnFinding};
use crate::report::Findings;
use crate::secrets::SecretFinding;
use crate::{Result, SupplyError};

/// A calendar date (UTC), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    pub fn new(year: i32, month: u8, day: u8) -> Option<Date> {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (day >= 1 && day <= days).then_some(Date { year, month, day })
    }

    /// Today in UTC.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Date::from_unix_days((secs / 86_400) as i64)
    }

    /// Civil date of a day count since 1970-01-01.
    pub fn from_unix_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl std::str::FromStr for Date {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Date, String> {
        let bad = || format!("{s:?} is not a date like 2026-12-31");
        let mut it = s.trim().splitn(3, '-');
        let y = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let m = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let d = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        Date::new(y, m, d).ok_or_else(bad)
    }
}

impl TryFrom<String> for Date {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Date, String> {
        s.parse()
    }
}

impl From<Date> for String {
    fn from(d: Date) -> String {
        d.to_string()
    }
}

/// When the gate fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// Fail on any unsuppressed vulnerability at or above this severity; `None` never
    /// fails on vulnerabilities (they are still counted and reported).
    pub fail_on: Option<Severity>,
    /// Fail on any unsuppressed secret.
    pub fail_on_secrets: bool,
    /// Fail on any unsuppressed informational advisory (unmaintained, unsound, notice);
    /// otherwise they are counted apart and reported.
    #[serde(default)]
    pub fail_on_unmaintained: bool,
    /// Fail on any file the scan skipped for its size unless a `path` exception names it
    /// (protected environments).
    #[serde(default)]
    pub fail_on_skipped: bool,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            fail_on: Some(Severity::High),
            fail_on_secrets: true,
            fail_on_unmaintained: false,
            fail_on_skipped: false,
        }
    }
}

/// One accepted risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// Advisory id or alias (`CVE-…`, `GHSA-…`), or a secret rule id.
    pub id: Option<String>,
    /// A secret finding's fingerprint.
    pub fingerprint: Option<String>,
    /// Only for this package name.
    pub package: Option<String>,
    /// Only for this path (or paths under it).
    pub path: Option<String>,
    pub reason: String,
    pub owner: String,
    pub expires: Date,
    /// Line of the exception in its file.
    pub line: usize,
}

impl Exception {
    /// What the exception is named by in messages.
    pub fn label(&self) -> &str {
        self.id
            .as_deref()
            .or(self.fingerprint.as_deref())
            .or(self.path.as_deref())
            .unwrap_or("?")
    }

    /// A path-only exception (no `id`, no `fingerprint`) covers a file skipped for its size
    /// when it names exactly that file's path; it never covers findings.
    fn covers_skipped(&self, f: &SkippedFile) -> bool {
        self.id.is_none()
            && self.fingerprint.is_none()
            && self.path.as_deref().is_some_and(|want| {
                let want = want.trim_start_matches('/');
                !want.is_empty() && want == f.path.trim_start_matches('/')
            })
    }

    fn path_ok(&self, paths: &[&str]) -> bool {
        match &self.path {
            None => true,
            Some(want) => {
                let want = want.trim_start_matches('/');
                paths.iter().any(|p| {
                    let p = p.trim_start_matches('/');
                    p == want || p.starts_with(&format!("{}/", want.trim_end_matches('/')))
                })
            }
        }
    }

    fn covers_vuln(&self, f: &VulnFinding) -> bool {
        let Some(id) = &self.id else { return false };
        f.ids().any(|i| i.eq_ignore_ascii_case(id))
            && self
                .package
                .as_ref()
                .is_none_or(|p| *p == f.package || f.source_name.as_ref() == Some(p))
            && self.path_ok(&f.locations.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn covers_secret(&self, s: &SecretFinding) -> bool {
        let by_fp = self
            .fingerprint
            .as_ref()
            .is_some_and(|fp| *fp == s.fingerprint);
        let by_rule =
            self.fingerprint.is_none() && self.id.as_ref().is_some_and(|id| *id == s.rule_id);
        (by_fp || by_rule) && self.path_ok(&s.location.path().into_iter().collect::<Vec<_>>())
    }
}

/// Exceptions from a TOML file of `[[exception]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exceptions {
    pub source: String,
    pub exceptions: Vec<Exception>,
}

#[derive(Deserialize)]
struct RawExceptions {
    #[serde(default)]
    exception: Vec<toml::Spanned<RawException>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    id: Option<String>,
    fingerprint: Option<String>,
    package: Option<String>,
    path: Option<String>,
    reason: Option<String>,
    owner: Option<String>,
    expires: Option<toml::Value>,
}

impl Exceptions {
    pub fn none() -> Exceptions {
        Exceptions::default()
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Exceptions> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SupplyError::io(path, e))?;
        Exceptions::from_toml(&text, &path.display().to_string())
    }

    /// Parses exceptions; every error names the file, the line and the field.
    pub fn from_toml(text: &str, name: &str) -> Result<Exceptions> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawExceptions = toml::from_str(text).map_err(|e| SupplyError::Exceptions {
            path: name.to_string(),
            line: e.span().map_or(0, |s| line_of(s.start)),
            detail: e.message().trim().to_string(),
        })?;
        let mut exceptions = Vec::new();
        for spanned in raw.exception {
            // The span starts at the table's `[[exception]]` header.
            let header_line = line_of(spanned.span().start);
            let r = spanned.into_inner();
            let fail = |detail: String| SupplyError::Exceptions {
                path: name.to_string(),
                line: header_line,
                detail,
            };
            if r.id.is_none() && r.fingerprint.is_none() && r.path.is_none() {
                return Err(fail(
                    "exception needs `id` (advisory or rule id), `fingerprint`, or `path` (a file skipped for its size)".into(),
                ));
            }
            if r.id.is_none()
                && r.fingerprint.is_none()
                && r.path
                    .as_deref()
                    .is_some_and(|p| p.trim_start_matches('/').is_empty())
            {
                return Err(fail(
                    "field `path`: name the file skipped for its size, e.g. \"srv/model.bin\""
                        .into(),
                ));
            }
            let reason = r.reason.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                fail("missing field `reason`: say why the risk is accepted".into())
            })?;
            let owner = r
                .owner
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| fail("missing field `owner`: name who answers for it".into()))?;
            let expires = match r.expires {
                None => return Err(fail(
                    "missing field `expires`: every exception needs an end date like 2026-12-31"
                        .into(),
                )),
                Some(toml::Value::Datetime(dt)) => match (dt.date, dt.time) {
                    (Some(d), None) => Date::new(i32::from(d.year), d.month, d.day),
                    _ => None,
                }
                .ok_or_else(|| {
                    fail(format!(
                        "field `expires`: {dt} is not a plain date like 2026-12-31"
                    ))
                })?,
                Some(toml::Value::String(s)) => s
                    .parse()
                    .map_err(|e| fail(format!("field `expires`: {e}")))?,
                Some(other) => {
                    return Err(fail(format!(
                        "field `expires`: {other} is not a date like 2026-12-31"
                    )))
                }
            };
            exceptions.push(Exception {
                id: r.id,
                fingerprint: r.fingerprint,
                package: r.package,
                path: r.path,
                reason,
                owner,
                expires,
                line: header_line,
            });
        }
        Ok(Exceptions {
            source: name.to_string(),
            exceptions,
        })
    }
}

/// A finding an exception suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The advisory id or the secret fingerprint.
    pub finding: String,
    pub exception: String,
    pub reason: String,
    pub owner: String,
    pub expires: Date,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// Why it failed, and notes such as expired exceptions.
    pub reasons: Vec<String>,
    /// Unsuppressed vulnerabilities by severity.
    pub counts: BTreeMap<Severity, usize>,
    pub secrets: usize,
    pub suppressed: Vec<Suppressed>,
    /// Unsuppressed informational advisories by kind (`unmaintained`, `unsound`, `notice`),
    /// apart from the vulnerabilities in `counts`.
    #[serde(default)]
    pub informational: BTreeMap<Informational, usize>,
    /// Files not scanned for their size and not named by a `path` exception.
    #[serde(default)]
    pub skipped: usize,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", if self.passed { "passed" } else { "failed" })?;
        let counts: Vec<String> = self
            .counts
            .iter()
            .rev()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        if !counts.is_empty() {
            write!(f, ": {}", counts.join(", "))?;
        }
        if self.secrets > 0 {
            write!(f, ", {} secret(s)", self.secrets)?;
        }
        for (kind, n) in self.informational.iter().filter(|(_, n)| **n > 0) {
            write!(f, ", {n} {kind} (informational)")?;
        }
        if self.skipped > 0 {
            write!(f, ", {} file(s) not scanned", self.skipped)?;
        }
        if !self.suppressed.is_empty() {
            write!(f, " ({} suppressed)", self.suppressed.len())?;
        }
        Ok(())
    }
}

/// Applies the policy and the exceptions to the findings on `today`. Expired exceptions do not
/// suppress; each one met adds "exception <id> expired on <date>" to the reasons.
pub fn evaluate(
    findings: &Findings,
    policy: &GatePolicy,
    exceptions: &Exceptions,
    today: Date,
) -> Verdict {
    evaluate_scan(findings, &[], policy, exceptions, today)
}

/// [`evaluate`], also judging the files the scan skipped for their size: each one not named
/// by a live `path` exception is counted, and fails the gate under
/// [`GatePolicy::fail_on_skipped`]. Informational advisories are counted by kind apart
/// from vulnerabilities, and fail only under [`GatePolicy::fail_on_unmaintained`].
pub fn evaluate_scan(
    findings: &Findings,
    skipped_files: &[SkippedFile],
    policy: &GatePolicy,
    exceptions: &Exceptions,
    today: Date,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut suppressed = Vec::new();
    let mut counts: BTreeMap<Severity, usize> = Severity::ALL.iter().map(|s| (*s, 0)).collect();
    let mut expired_noted = std::collections::BTreeSet::new();
    let mut check = |covering: Vec<&Exception>, finding: &str, reasons: &mut Vec<String>| -> bool {
        let mut live = None;
        for e in covering {
            if e.expires >= today {
                live.get_or_insert(e);
            } else if expired_noted.insert((e.label().to_string(), e.line)) {
                reasons.push(format!("exception {} expired on {}", e.label(), e.expires));
            }
        }
        match live {
            Some(e) => {
                suppressed.push(Suppressed {
                    finding: finding.to_string(),
                    exception: e.label().to_string(),
                    reason: e.reason.clone(),
                    owner: e.owner.clone(),
                    expires: e.expires,
                });
                true
            }
            None => false,
        }
    };
    let mut failing = Vec::new();
    let mut informational: BTreeMap<Informational, usize> =
        Informational::ALL.iter().map(|k| (*k, 0)).collect();
    let mut failing_info = Vec::new();
    for v in &findings.vulnerabilities {
        let covering: Vec<&Exception> = exceptions
            .exceptions
            .iter()
            .filter(|e| e.covers_vuln(v))
            .collect();
        if check(
            covering,
            &format!("{} in {} {}", v.id, v.package, v.version),
            &mut reasons,
        ) {
            continue;
        }
        if let Some(kind) = v.informational {
            *informational.entry(kind).or_default() += 1;
            if policy.fail_on_unmaintained {
                failing_info.push(format!("informational advisory {v}"));
            }
            continue;
        }
        *counts.entry(v.severity).or_default() += 1;
        if policy
            .fail_on
            .is_some_and(|threshold| v.severity >= threshold)
        {
            failing.push(v.to_string());
        }
    }
    let mut secrets = 0;
    let mut failing_secrets = Vec::new();
    for s in &findings.secrets {
        let covering: Vec<&Exception> = exceptions
            .exceptions
            .iter()
            .filter(|e| e.covers_secret(s))
            .collect();
        if check(covering, &s.fingerprint, &mut reasons) {
            continue;
        }
        secrets += 1;
        if policy.fail_on_secrets {
            failing_secrets.push(format!("secret {s} [fingerprint {}]", s.fingerprint));
        }
    }
    let mut skipped = 0;
    let mut skipped_notes = Vec::new();
    for f in skipped_files {
        let covering: Vec<&Exception> = exceptions
            .exceptions
            .iter()
            .filter(|e| e.covers_skipped(f))
            .collect();
        if check(covering, &f.path, &mut reasons) {
            continue;
        }
        skipped += 1;
        skipped_notes.push(format!(
            "file {} in layer {} was not scanned: {} bytes is over the {} byte file limit",
            f.path, f.layer, f.size, f.limit
        ));
    }
    let failing_skipped = policy.fail_on_skipped && skipped > 0;
    let passed = failing.is_empty()
        && failing_secrets.is_empty()
        && failing_info.is_empty()
        && !failing_skipped;
    if !failing.is_empty() {
        reasons.insert(
            0,
            format!(
                "{} vulnerabilit{} at or above {}",
                failing.len(),
                if failing.len() == 1 { "y" } else { "ies" },
                policy.fail_on.unwrap_or(Severity::Critical)
            ),
        );
    }
    reasons.extend(failing);
    reasons.extend(failing_secrets);
    if !failing_info.is_empty() {
        reasons.push(format!(
            "{} informational advisor{} (unmaintained, unsound or notice) and gate.fail_on_unmaintained is set",
            failing_info.len(),
            if failing_info.len() == 1 { "y" } else { "ies" },
        ));
        reasons.extend(failing_info);
    }
    if failing_skipped {
        reasons.push(format!(
            "{skipped} file(s) over the size limit were not scanned, so a secret or a package database could hide in them: shrink them, or name each in a `path` exception"
        ));
    }
    reasons.extend(skipped_notes);
    Verdict {
        passed,
        reasons,
        counts,
        secrets,
        suppressed,
        informational,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Ecosystem;

    fn vuln(id: &str, aliases: &[&str], severity: Severity) -> VulnFinding {
        VulnFinding {
            id: id.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            summary: String::new(),
            severity,
            score: None,
            ecosystem: Ecosystem::CratesIo,
            package: "smallvec".into(),
            version: "1.6.0".into(),
            source_name: None,
            fixed: Some("1.6.1".into()),
            purl: "pkg:cargo/smallvec@1.6.0".into(),
            locations: vec!["app/Cargo.lock".into()],
            layer: "sha256:l".into(),
            informational: None,
        }
    }

    fn day(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn dates_parse_and_come_from_unix_days() {
        assert_eq!(Date::from_unix_days(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_unix_days(19_723).to_string(), "2024-01-01");
        assert!("2026-02-30".parse::<Date>().is_err());
        assert!(day("2026-12-31") > day("2026-01-31"));
    }

    #[test]
    fn alias_exceptions_suppress_both_ways() {
        let findings = Findings {
            vulnerabilities: vec![vuln(
                "RUSTSEC-2021-0003",
                &["CVE-2021-25900", "GHSA-43w2-9j62-hq99"],
                Severity::Critical,
            )],
            secrets: vec![],
        };
        let policy = GatePolicy::default();
        let today = day("2026-06-01");
        let by_cve = Exceptions::from_toml(
            "[[exception]]\nid = \"CVE-2021-25900\"\nreason = \"insert_many unused\"\nowner = \"team-a\"\nexpires = 2026-12-31\n",
            "x.toml",
        )
        .unwrap();
        let v = evaluate(&findings, &policy, &by_cve, today);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.suppressed.len(), 1);
        // The other way round: the finding is the CVE, the exception names the RUSTSEC id.
        let findings2 = Findings {
            vulnerabilities: vec![vuln(
                "CVE-2021-25900",
                &["RUSTSEC-2021-0003"],
                Severity::Critical,
            )],
            secrets: vec![],
        };
        let by_rustsec = Exceptions::from_toml(
            "[[exception]]\nid = \"RUSTSEC-2021-0003\"\npackage = \"smallvec\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-12-31\n",
            "x.toml",
        )
        .unwrap();
        assert!(evaluate(&findings2, &policy, &by_rustsec, today).passed);
        // A package filter that does not match does not suppress.
        let other_pkg = Exceptions::from_toml(
            "[[exception]]\nid = \"CVE-2021-25900\"\npackage = \"other\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-12-31\n",
            "x.toml",
        )
        .unwrap();
        let v = evaluate(&findings, &policy, &other_pkg, today);
        assert!(!v.passed);
        assert_eq!(v.counts[&Severity::Critical], 1);
    }

    #[test]
    fn expired_exception_does_not_suppress_and_says_so() {
        let findings = Findings {
            vulnerabilities: vec![vuln("GHSA-x", &["CVE-1"], Severity::High)],
            secrets: vec![],
        };
        let ex = Exceptions::from_toml(
            "[[exception]]\nid = \"CVE-1\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-01-31\n",
            "x.toml",
        )
        .unwrap();
        let v = evaluate(&findings, &GatePolicy::default(), &ex, day("2026-02-01"));
        assert!(!v.passed);
        assert!(
            v.reasons
                .iter()
                .any(|r| r == "exception CVE-1 expired on 2026-01-31"),
            "{:?}",
            v.reasons
        );
        // Still valid on its last day.
        assert!(evaluate(&findings, &GatePolicy::default(), &ex, day("2026-01-31")).passed);
    }

    #[test]
    fn severity_threshold() {
        let findings = Findings {
            vulnerabilities: vec![
                vuln("A", &[], Severity::Medium),
                vuln("B", &[], Severity::Low),
            ],
            secrets: vec![],
        };
        let high = GatePolicy {
            fail_on: Some(Severity::High),
            fail_on_secrets: true,
            ..GatePolicy::default()
        };
        let v = evaluate(&findings, &high, &Exceptions::none(), day("2026-01-01"));
        assert!(v.passed);
        assert_eq!(
            (v.counts[&Severity::Medium], v.counts[&Severity::Low]),
            (1, 1)
        );
        let medium = GatePolicy {
            fail_on: Some(Severity::Medium),
            ..high
        };
        let v = evaluate(&findings, &medium, &Exceptions::none(), day("2026-01-01"));
        assert!(!v.passed);
        assert_eq!(v.reasons[0], "1 vulnerability at or above medium");
    }

    #[test]
    fn missing_expires_names_file_line_and_field() {
        let text = "# accepted risks\n\n[[exception]]\nid = \"CVE-1\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-01-01\n\n[[exception]]\nid = \"CVE-2\"\nreason = \"r\"\nowner = \"o\"\n";
        let err = Exceptions::from_toml(text, "exceptions.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceptions.toml"), "{err}");
        assert!(err.contains("line 9"), "{err}");
        assert!(err.contains("`expires`"), "{err}");
        let err = Exceptions::from_toml(
            "[[exception]]\nid = \"CVE-1\"\nreason = \"r\"\nowner = \"o\"\nexpires = \"someday\"\n",
            "e.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 1") && err.contains("someday"), "{err}");
        let err = Exceptions::from_toml("[[exception]]\nid = 3\n", "e.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("e.toml, line 2"), "{err}");
    }

    fn skipped(path: &str) -> SkippedFile {
        SkippedFile {
            path: path.into(),
            layer: "sha256:l".into(),
            size: 9 << 20,
            limit: 8 << 20,
        }
    }

    #[test]
    fn informational_advisories_are_counted_apart_and_fail_only_when_asked() {
        let mut unmaintained = vuln("RUSTSEC-2020-0016", &[], Severity::Unknown);
        unmaintained.informational = Some(Informational::Unmaintained);
        let mut unsound = vuln("RUSTSEC-2021-0145", &[], Severity::Unknown);
        unsound.informational = Some(Informational::Unsound);
        let findings = Findings {
            vulnerabilities: vec![unmaintained, unsound, vuln("X", &[], Severity::Low)],
            secrets: vec![],
        };
        let lenient = GatePolicy {
            fail_on: Some(Severity::Unknown),
            ..GatePolicy::default()
        };
        // Even with fail_on = unknown, informational advisories are not vulnerabilities.
        let mut only_info = findings.clone();
        only_info.vulnerabilities.truncate(2);
        let v = evaluate(&only_info, &lenient, &Exceptions::none(), day("2026-01-01"));
        assert!(v.passed, "{v:?}");
        assert_eq!(v.counts[&Severity::Unknown], 0);
        assert_eq!(v.informational[&Informational::Unmaintained], 1);
        assert_eq!(v.informational[&Informational::Unsound], 1);
        assert!(
            v.to_string().contains("1 unmaintained (informational)"),
            "{v}"
        );

        let v = evaluate(
            &findings,
            &GatePolicy::default(),
            &Exceptions::none(),
            day("2026-01-01"),
        );
        assert!(v.passed);
        assert_eq!(v.counts[&Severity::Low], 1);

        let strict = GatePolicy {
            fail_on_unmaintained: true,
            ..GatePolicy::default()
        };
        let v = evaluate(&findings, &strict, &Exceptions::none(), day("2026-01-01"));
        assert!(!v.passed);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.contains("RUSTSEC-2020-0016 (unmaintained)")),
            "{:?}",
            v.reasons
        );
        // An exception covers an informational advisory like any other.
        let ex = Exceptions::from_toml(
            "[[exception]]\nid = \"RUSTSEC-2020-0016\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-12-31\n\n[[exception]]\nid = \"RUSTSEC-2021-0145\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-12-31\n",
            "e.toml",
        )
        .unwrap();
        assert!(evaluate(&findings, &strict, &ex, day("2026-01-01")).passed);
    }

    #[test]
    fn skipped_files_fail_when_asked_unless_a_path_exception_names_them() {
        let findings = Findings::default();
        let files = [skipped("srv/padded.bin")];
        let today = day("2026-01-01");
        let open = evaluate_scan(
            &findings,
            &files,
            &GatePolicy::default(),
            &Exceptions::none(),
            today,
        );
        assert!(open.passed, "{open:?}");
        assert_eq!(open.skipped, 1);
        assert!(open.reasons.iter().any(|r| r.contains("srv/padded.bin")));

        let protected = GatePolicy {
            fail_on_skipped: true,
            ..GatePolicy::default()
        };
        let v = evaluate_scan(&findings, &files, &protected, &Exceptions::none(), today);
        assert!(!v.passed);
        assert!(
            v.reasons.iter().any(|r| r.contains("not scanned")),
            "{:?}",
            v.reasons
        );

        let named = Exceptions::from_toml(
            "[[exception]]\npath = \"/srv/padded.bin\"\nreason = \"model weights\"\nowner = \"ml\"\nexpires = 2026-12-31\n",
            "e.toml",
        )
        .unwrap();
        let v = evaluate_scan(&findings, &files, &protected, &named, today);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.suppressed[0].exception, "/srv/padded.bin");
        // A directory does not name a file, and an expired exception does not count.
        let dir = Exceptions::from_toml(
            "[[exception]]\npath = \"srv\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-12-31\n",
            "e.toml",
        )
        .unwrap();
        assert!(!evaluate_scan(&findings, &files, &protected, &dir, today).passed);
        assert!(!evaluate_scan(&findings, &files, &protected, &named, day("2027-01-01")).passed);
        // The root names nothing.
        let root = Exceptions::from_toml(
            "[[exception]]\npath = \"/\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2026-12-31\n",
            "e.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            root.contains("e.toml, line 1") && root.contains("`path`"),
            "{root}"
        );
    }
}
