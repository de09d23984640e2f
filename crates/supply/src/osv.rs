//! OSV advisories: import from a directory or zip of OSV JSON files, a single-file database,
//! and matching of installed packages with OSV range semantics.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inventory::{Distro, Package};
use crate::version::{compare_semver, Ecosystem};
use crate::{Result, SupplyError};

/// Severity of a vulnerability. `Unknown` sorts lowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Unknown,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// CVSS score bands; a score of 0 has no severity.
    pub fn from_score(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Unknown,
        }
    }

    /// Reads words used by advisory databases (`HIGH`, `moderate`, `important`, …).
    pub fn from_word(s: &str) -> Option<Severity> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" | "negligible" | "unimportant" => Severity::Low,
            "unknown" | "" => Severity::Unknown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::from_word(s).ok_or_else(|| {
            format!("unknown severity {s:?}: use unknown, low, medium, high or critical")
        })
    }
}

// ---------------------------------------------------------------- OSV schema (the parts used)

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<OsvSeverity>,
    #[serde(default)]
    pub affected: Vec<Affected>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsvSeverity {
    #[serde(rename = "type")]
    pub kind: String,
    pub score: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    #[serde(default)]
    pub package: AffectedPackage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<OsvSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecosystem_specific: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AffectedPackage {
    #[serde(default)]
    pub ecosystem: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

// ---------------------------------------------------------------- matching

/// How one package is affected, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The first fixed version above the installed one, when a range names one.
    pub fixed: Option<String>,
}

/// Whether `version` of `ecosystem` is affected according to one `affected[]` entry.
/// Returns `None` when the versions cannot be compared (then only the explicit `versions`
/// list decides).
pub fn affected_by(ecosystem: Ecosystem, version: &str, affected: &Affected) -> Option<Hit> {
    for range in &affected.ranges {
        let cmp: fn(Ecosystem, &str, &str) -> Option<Ordering> = match range.kind.as_str() {
            "SEMVER" => |_, a, b| compare_semver(a, b),
            "ECOSYSTEM" => |e, a, b| e.compare(a, b),
            _ => continue,
        };
        if let Some(hit) = range_affects(&|a, b| cmp(ecosystem, a, b), version, &range.events) {
            return Some(hit);
        }
    }
    if affected
        .versions
        .iter()
        .any(|v| v == version || ecosystem.compare(v, version) == Some(Ordering::Equal))
    {
        return Some(Hit { fixed: None });
    }
    None
}

type Cmp<'a> = &'a dyn Fn(&str, &str) -> Option<Ordering>;

/// OSV range evaluation: walk the events in version order; `introduced` opens, `fixed` and
/// `last_affected` close; `limit` caps the range from above.
fn range_affects(cmp: Cmp<'_>, version: &str, events: &[Event]) -> Option<Hit> {
    // (version, kind) with kind 0=introduced 1=fixed 2=last_affected 3=limit.
    let mut evs: Vec<(&str, u8)> = Vec::new();
    for e in events {
        if let Some(v) = &e.introduced {
            evs.push((v, 0));
        }
        if let Some(v) = &e.fixed {
            evs.push((v, 1));
        }
        if let Some(v) = &e.last_affected {
            evs.push((v, 2));
        }
        if let Some(v) = &e.limit {
            evs.push((v, 3));
        }
    }
    let is_zero = |v: &str| v == "0";
    // Events that do not parse are dropped rather than guessed at.
    evs.retain(|(v, _)| is_zero(v) || cmp(v, v).is_some());
    evs.sort_by(|a, b| match (is_zero(a.0), is_zero(b.0)) {
        (true, true) => a.1.cmp(&b.1),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => cmp(a.0, b.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1)),
    });
    cmp(version, version)?;
    let limits: Vec<&str> = evs.iter().filter(|e| e.1 == 3).map(|e| e.0).collect();
    if !limits.is_empty()
        && !limits
            .iter()
            .any(|l| is_zero(l) || cmp(version, l) == Some(Ordering::Less))
    {
        return None;
    }
    let mut affected = false;
    for (v, kind) in &evs {
        let ord = if is_zero(v) {
            Ordering::Greater
        } else {
            cmp(version, v)?
        };
        match kind {
            0 if ord != Ordering::Less => affected = true,
            1 if ord != Ordering::Less => affected = false,
            2 if ord == Ordering::Greater => affected = false,
            _ => {}
        }
    }
    if !affected {
        return None;
    }
    // The fix that closes the range containing `version` is the first fixed event above it.
    let fixed = evs
        .iter()
        .filter(|(v, k)| *k == 1 && cmp(version, v) == Some(Ordering::Less))
        .map(|(v, _)| v.to_string())
        .next();
    Some(Hit { fixed })
}

/// Severity and best CVSS score of an advisory as it applies to one affected entry.
pub fn severity_of(adv: &Advisory, affected: Option<&Affected>) -> (Severity, Option<f64>) {
    let mut best: Option<f64> = None;
    let scores = affected
        .map(|a| a.severity.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(&adv.severity);
    for s in scores {
        let score = if s.kind.starts_with("CVSS_") {
            s.score
                .parse::<cvss::Cvss>()
                .ok()
                .map(|c| c.score())
                .or_else(|| s.score.parse::<f64>().ok())
        } else {
            None
        };
        if let Some(score) = score {
            best = Some(best.map_or(score, |b: f64| b.max(score)));
        }
    }
    if let Some(score) = best {
        return (Severity::from_score(score), Some(score));
    }
    let words = [
        affected.and_then(|a| a.database_specific.as_ref()),
        affected.and_then(|a| a.ecosystem_specific.as_ref()),
        adv.database_specific.as_ref(),
    ];
    for w in words.into_iter().flatten() {
        for key in ["severity", "urgency"] {
            if let Some(sev) = w[key].as_str().and_then(Severity::from_word) {
                if sev != Severity::Unknown {
                    return (sev, None);
                }
            }
        }
    }
    (Severity::Unknown, None)
}

/// The kind of an informational advisory (RustSec's `informational` field, carried in OSV
/// as `database_specific.informational`): not a vulnerability, but worth knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Informational {
    /// The crate is no longer maintained.
    Unmaintained,
    /// The crate has unsound code (memory safety bugs reachable from safe code).
    Unsound,
    /// Any other notice (`notice` and kinds not known here).
    Notice,
}

impl Informational {
    pub const ALL: [Informational; 3] = [
        Informational::Unmaintained,
        Informational::Unsound,
        Informational::Notice,
    ];

    /// The informational kind an advisory declares, if any.
    pub fn of(adv: &Advisory) -> Option<Informational> {
        let word = adv
            .database_specific
            .as_ref()?
            .get("informational")?
            .as_str()?;
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "" => return None,
            "unmaintained" => Informational::Unmaintained,
            "unsound" => Informational::Unsound,
            _ => Informational::Notice,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Informational::Unmaintained => "unmaintained",
            Informational::Unsound => "unsound",
            Informational::Notice => "notice",
        }
    }
}

impl std::fmt::Display for Informational {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A package matched by an advisory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VulnFinding {
    /// Advisory id (`CVE-…`, `GHSA-…`, `RUSTSEC-…`, `DSA-…`).
    pub id: String,
    /// Every other id known for the same vulnerability, sorted.
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Severity,
    pub score: Option<f64>,
    pub ecosystem: Ecosystem,
    pub package: String,
    pub version: String,
    pub source_name: Option<String>,
    pub fixed: Option<String>,
    pub purl: String,
    pub locations: Vec<String>,
    pub layer: String,
    /// Set for informational advisories (unmaintained, unsound, notice): counted apart from
    /// vulnerabilities, and their severity is not a vulnerability's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub informational: Option<Informational>,
}

impl VulnFinding {
    /// The id and all aliases.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

impl std::fmt::Display for VulnFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.informational {
            Some(kind) => kind.as_str(),
            None => self.severity.as_str(),
        };
        write!(
            f,
            "{} ({kind}) in {} {} {}",
            self.id, self.ecosystem, self.package, self.version
        )?;
        match &self.fixed {
            Some(v) => write!(f, ", fixed in {v}"),
            None => write!(f, ", no fix yet"),
        }
    }
}

// ---------------------------------------------------------------- database

/// What an import read and what it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub files: usize,
    pub imported: usize,
    pub withdrawn: usize,
    /// One line per skipped file, naming it and the reason.
    pub warnings: Vec<String>,
}

/// Bounds for importing a zip of advisories.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_files: usize,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_file_bytes: 16 << 20,
            max_total_bytes: 8 << 30,
            max_files: 2_000_000,
        }
    }
}

const DB_FORMAT: &str = "cutover-osv-db/1";

#[derive(Serialize, Deserialize)]
struct DbFile {
    format: String,
    advisories: Vec<Advisory>,
}

/// Advisories indexed by (ecosystem, package name).
#[derive(Debug, Default)]
pub struct AdvisoryDb {
    advisories: Vec<Advisory>,
    index: HashMap<(Ecosystem, String), Vec<(usize, usize)>>,
    /// Alias group of every id (ids linked through `aliases`, transitively).
    group_of: HashMap<String, usize>,
    groups: Vec<BTreeSet<String>>,
}

impl AdvisoryDb {
    /// Builds a database from advisories (withdrawn ones are dropped).
    pub fn from_advisories(advisories: Vec<Advisory>) -> AdvisoryDb {
        let mut db = AdvisoryDb {
            advisories: advisories
                .into_iter()
                .filter(|a| a.withdrawn.is_none())
                .collect(),
            ..AdvisoryDb::default()
        };
        db.advisories.sort_by(|a, b| a.id.cmp(&b.id));
        db.advisories.dedup_by(|a, b| a.id == b.id);
        db.reindex();
        db
    }

    pub fn len(&self) -> usize {
        self.advisories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.advisories.is_empty()
    }

    pub fn advisories(&self) -> &[Advisory] {
        &self.advisories
    }

    /// The newest `modified` timestamp of the advisories (RFC 3339, compared as written).
    pub fn newest_modified(&self) -> Option<&str> {
        self.advisories
            .iter()
            .filter_map(|a| a.modified.as_deref())
            .max()
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (ai, adv) in self.advisories.iter().enumerate() {
            for (fi, aff) in adv.affected.iter().enumerate() {
                if let Some((eco, _)) = Ecosystem::from_osv(&aff.package.ecosystem) {
                    self.index
                        .entry((eco, eco.normalize_name(&aff.package.name)))
                        .or_default()
                        .push((ai, fi));
                }
            }
        }
        // Union-find over ids and aliases.
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        let mut id_of = |s: &str, parent: &mut Vec<usize>| -> usize {
            *ids.entry(s.to_string()).or_insert_with(|| {
                parent.push(parent.len());
                parent.len() - 1
            })
        };
        for adv in &self.advisories {
            let a = id_of(&adv.id, &mut parent);
            for alias in &adv.aliases {
                let b = id_of(alias, &mut parent);
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                if ra != rb {
                    parent[ra] = rb;
                }
            }
        }
        let mut root_group: HashMap<usize, usize> = HashMap::new();
        self.groups.clear();
        self.group_of.clear();
        let mut entries: Vec<(String, usize)> = ids.into_iter().collect();
        entries.sort();
        for (id, n) in entries {
            let root = find(&mut parent, n);
            let g = *root_group.entry(root).or_insert_with(|| {
                self.groups.push(BTreeSet::new());
                self.groups.len() - 1
            });
            self.groups[g].insert(id.clone());
            self.group_of.insert(id, g);
        }
    }

    /// All ids known to name the same vulnerability as `id`, excluding `id` itself.
    pub fn aliases_of(&self, id: &str) -> Vec<String> {
        self.group_of
            .get(id)
            .map(|g| {
                self.groups[*g]
                    .iter()
                    .filter(|s| *s != id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Imports every `*.json` under a directory (recursively) or inside a zip file.
    /// Malformed files are skipped with a warning naming the file and the error.
    pub fn import(source: impl AsRef<Path>) -> Result<(AdvisoryDb, ImportReport)> {
        Self::import_with_limits(source, ImportLimits::default())
    }

    pub fn import_with_limits(
        source: impl AsRef<Path>,
        limits: ImportLimits,
    ) -> Result<(AdvisoryDb, ImportReport)> {
        let source = source.as_ref();
        let mut report = ImportReport::default();
        let mut advisories = Vec::new();
        let meta = std::fs::metadata(source).map_err(|e| SupplyError::io(source, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk_json(source, &mut files)?;
            files.sort();
            for f in files {
                if report.files >= limits.max_files {
                    report
                        .warnings
                        .push(format!("stopped after {} files", limits.max_files));
                    break;
                }
                report.files += 1;
                let bytes = match read_bounded(&f, limits.max_file_bytes) {
                    Ok(b) => b,
                    Err(w) => {
                        report.warnings.push(w);
                        continue;
                    }
                };
                parse_into(
                    &f.display().to_string(),
                    &bytes,
                    &mut advisories,
                    &mut report,
                );
            }
        } else {
            import_zip(source, limits, &mut advisories, &mut report)?;
        }
        report.withdrawn = advisories.iter().filter(|a| a.withdrawn.is_some()).count();
        let db = AdvisoryDb::from_advisories(advisories);
        report.imported = db.len();
        Ok((db, report))
    }

    /// Writes the database to one file (atomically: a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            serde_json::to_writer(
                &mut f,
                &DbFileRef {
                    format: DB_FORMAT,
                    advisories: &self.advisories,
                },
            )?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            SupplyError::io(path, e)
        })
    }

    /// Reads a database written by [`AdvisoryDb::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<AdvisoryDb> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).map_err(|e| SupplyError::io(path, e))?;
        let file: DbFile = serde_json::from_reader(std::io::BufReader::new(f)).map_err(|e| {
            SupplyError::AdvisoryDb {
                path: path.to_path_buf(),
                detail: format!("not a saved advisory database ({e}); import the advisories again"),
            }
        })?;
        if file.format != DB_FORMAT {
            return Err(SupplyError::AdvisoryDb {
                path: path.to_path_buf(),
                detail: format!(
                    "format {:?} is not {DB_FORMAT}; import the advisories again",
                    file.format
                ),
            });
        }
        Ok(AdvisoryDb::from_advisories(file.advisories))
    }

    /// Matches packages against the database. `distro` restricts `Debian:N`/`Alpine:vX.Y`
    /// advisories to the image's release when it is known.
    pub fn match_packages(
        &self,
        packages: &[Package],
        distro: Option<&Distro>,
    ) -> Vec<VulnFinding> {
        let mut out: BTreeMap<(String, String, String, Ecosystem), VulnFinding> = BTreeMap::new();
        for p in packages {
            let key = (p.ecosystem, p.advisory_name());
            let Some(hits) = self.index.get(&key) else {
                continue;
            };
            for &(ai, fi) in hits {
                let adv = &self.advisories[ai];
                let aff = &adv.affected[fi];
                if !release_applies(&aff.package.ecosystem, distro) {
                    continue;
                }
                let Some(hit) = affected_by(p.ecosystem, p.advisory_version(), aff) else {
                    continue;
                };
                let (severity, score) = severity_of(adv, Some(aff));
                let k = (
                    adv.id.clone(),
                    p.name.clone(),
                    p.version.clone(),
                    p.ecosystem,
                );
                out.entry(k).or_insert_with(|| VulnFinding {
                    id: adv.id.clone(),
                    aliases: self.aliases_of(&adv.id),
                    summary: adv.summary.clone(),
                    severity,
                    score,
                    ecosystem: p.ecosystem,
                    package: p.name.clone(),
                    version: p.version.clone(),
                    source_name: p.source_name.clone(),
                    fixed: hit.fixed,
                    purl: p.purl.clone(),
                    locations: p.locations.clone(),
                    layer: p.layer.clone(),
                    informational: Informational::of(adv),
                });
            }
        }
        let mut v: Vec<VulnFinding> = out.into_values().collect();
        v.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.package.cmp(&b.package))
                .then_with(|| a.version.cmp(&b.version))
        });
        v
    }
}

#[derive(Serialize)]
struct DbFileRef<'a> {
    format: &'a str,
    advisories: &'a [Advisory],
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Whether an advisory for `osv_ecosystem` (e.g. `Debian:12`) applies to the image's distro.
fn release_applies(osv_ecosystem: &str, distro: Option<&Distro>) -> bool {
    let Some((eco, Some(release))) = Ecosystem::from_osv(osv_ecosystem) else {
        return true;
    };
    let Some(d) = distro.filter(|d| !d.version_id.is_empty()) else {
        return true;
    };
    match eco {
        Ecosystem::Debian => d.id != "debian" || d.version_id.split('.').next() == Some(release),
        Ecosystem::Alpine => {
            let mut parts = d.version_id.split('.');
            let mm = format!(
                "v{}.{}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            );
            d.id != "alpine" || release == mm || release == "edge"
        }
        _ => true,
    }
}

fn walk_json(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| SupplyError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| SupplyError::io(dir, e))?;
        let ty = entry
            .file_type()
            .map_err(|e| SupplyError::io(entry.path(), e))?;
        let p = entry.path();
        if ty.is_dir() {
            walk_json(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    Ok(())
}

fn read_bounded(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("skipped {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("skipped {}: {e}", path.display()))?;
    if buf.len() as u64 > limit {
        return Err(format!(
            "skipped {}: larger than {limit} bytes",
            path.display()
        ));
    }
    Ok(buf)
}

fn parse_into(name: &str, bytes: &[u8], out: &mut Vec<Advisory>, report: &mut ImportReport) {
    // A file holds one advisory or an array of them.
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            report.warnings.push(format!("skipped {name}: {e}"));
            return;
        }
    };
    let items = match value {
        serde_json::Value::Array(a) => a,
        v => vec![v],
    };
    for item in items {
        match serde_json::from_value::<Advisory>(item) {
            Ok(a) if !a.id.is_empty() => out.push(a),
            Ok(_) => report
                .warnings
                .push(format!("skipped {name}: advisory has an empty id")),
            Err(e) => report.warnings.push(format!("skipped {name}: {e}")),
        }
    }
}

fn import_zip(
    path: &Path,
    limits: ImportLimits,
    out: &mut Vec<Advisory>,
    report: &mut ImportReport,
) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| SupplyError::io(path, e))?;
    let bad = |detail: String| SupplyError::AdvisoryDb {
        path: path.to_path_buf(),
        detail,
    };
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| bad(format!("not a directory or a zip of OSV json files ({e})")))?;
    let mut total: u64 = 0;
    let mut buf = Vec::new();
    for i in 0..zip.len() {
        if report.files >= limits.max_files {
            report
                .warnings
                .push(format!("stopped after {} files", limits.max_files));
            break;
        }
        let mut entry = match zip.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                report.warnings.push(format!("skipped zip entry {i}: {e}"));
                continue;
            }
        };
        let name = entry.name().to_string();
        if !entry.is_file() || !name.ends_with(".json") {
            continue;
        }
        report.files += 1;
        buf.clear();
        let read = (&mut entry)
            .take(limits.max_file_bytes + 1)
            .read_to_end(&mut buf);
        if let Err(e) = read {
            report.warnings.push(format!("skipped {name}: {e}"));
            continue;
        }
        if buf.len() as u64 > limits.max_file_bytes {
            report.warnings.push(format!(
                "skipped {name}: decompresses past {} bytes",
                limits.max_file_bytes
            ));
            continue;
        }
        total += buf.len() as u64;
        if total > limits.max_total_bytes {
            return Err(bad(format!(
                "zip decompresses past {} bytes in total (possible zip bomb)",
                limits.max_total_bytes
            )));
        }
        parse_into(&name, &buf, out, report);
    }
    Ok(())
}

/// Writes advisories as a zip of `<id>.json` files (used by tests and the benchmark).
pub fn write_zip(path: &Path, advisories: &[serde_json::Value]) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut zip = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (i, a) in advisories.iter().enumerate() {
        let id = a["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or(format!("adv-{i}"));
        zip.start_file(format!("{id}.json"), opts)
            .map_err(std::io::Error::other)?;
        zip.write_all(&serde_json::to_vec(a)?)?;
    }
    zip.finish().map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aff(kind: &str, events: serde_json::Value, versions: &[&str]) -> Affected {
        serde_json::from_value(serde_json::json!({
            "package": {"ecosystem": "x", "name": "x"},
            "ranges": [{"type": kind, "events": events}],
            "versions": versions,
        }))
        .unwrap()
    }

    fn hit(eco: Ecosystem, v: &str, a: &Affected) -> Option<Option<String>> {
        affected_by(eco, v, a).map(|h| h.fixed)
    }

    #[test]
    fn range_semantics_table() {
        use Ecosystem::*;
        let zero_fixed = aff(
            "ECOSYSTEM",
            serde_json::json!([{"introduced": "0"}, {"fixed": "1.2.0"}]),
            &[],
        );
        let last = aff(
            "SEMVER",
            serde_json::json!([{"introduced": "1.0.0"}, {"last_affected": "1.4.2"}]),
            &[],
        );
        let multi = aff(
            "SEMVER",
            serde_json::json!([{"introduced": "0.6.3"}, {"fixed": "0.6.14"}, {"introduced": "1.0.0"}, {"fixed": "1.6.1"}]),
            &[],
        );
        let limited = aff(
            "SEMVER",
            serde_json::json!([{"introduced": "0"}, {"limit": "2.0.0"}]),
            &[],
        );
        let open = aff("ECOSYSTEM", serde_json::json!([{"introduced": "0"}]), &[]);
        let listed = aff(
            "GIT",
            serde_json::json!([{"introduced": "abc"}, {"fixed": "def"}]),
            &["1.0.1", "1.0.2"],
        );
        let deb = aff(
            "ECOSYSTEM",
            serde_json::json!([{"introduced": "0"}, {"fixed": "1:2.3~rc1-1"}]),
            &[],
        );
        let pre = aff(
            "SEMVER",
            serde_json::json!([{"introduced": "1.0.0-alpha.1"}, {"fixed": "1.0.0"}]),
            &[],
        );
        type Row<'a> = (
            &'a str,
            Ecosystem,
            &'a str,
            &'a Affected,
            Option<Option<&'a str>>,
        );
        let table: Vec<Row<'_>> = vec![
            (
                "introduced 0 below fix",
                CratesIo,
                "1.1.9",
                &zero_fixed,
                Some(Some("1.2.0")),
            ),
            ("at fix", CratesIo, "1.2.0", &zero_fixed, None),
            ("above fix", CratesIo, "1.3.0", &zero_fixed, None),
            (
                "0.0.0 with introduced 0",
                CratesIo,
                "0.0.0",
                &zero_fixed,
                Some(Some("1.2.0")),
            ),
            ("below introduced", CratesIo, "0.9.0", &last, None),
            ("at introduced", CratesIo, "1.0.0", &last, Some(None)),
            ("at last_affected", CratesIo, "1.4.2", &last, Some(None)),
            ("above last_affected", CratesIo, "1.4.3", &last, None),
            (
                "first range",
                CratesIo,
                "0.6.5",
                &multi,
                Some(Some("0.6.14")),
            ),
            ("between ranges", CratesIo, "0.7.0", &multi, None),
            (
                "second range",
                CratesIo,
                "1.6.0",
                &multi,
                Some(Some("1.6.1")),
            ),
            ("second fix", CratesIo, "1.6.1", &multi, None),
            ("under limit", CratesIo, "1.9.9", &limited, Some(None)),
            ("at limit", CratesIo, "2.0.0", &limited, None),
            ("no fix yet", Npm, "99.0.0", &open, Some(None)),
            ("explicit versions", CratesIo, "1.0.2", &listed, Some(None)),
            ("not listed; GIT ignored", CratesIo, "1.0.3", &listed, None),
            (
                "debian epoch beats upstream",
                Debian,
                "2.4-1",
                &deb,
                Some(Some("1:2.3~rc1-1")),
            ),
            (
                "debian tilde sorts before",
                Debian,
                "1:2.3~beta-1",
                &deb,
                Some(Some("1:2.3~rc1-1")),
            ),
            ("debian at fix", Debian, "1:2.3~rc1-1", &deb, None),
            ("debian after fix", Debian, "1:2.3-1", &deb, None),
            (
                "semver prerelease inside",
                CratesIo,
                "1.0.0-beta",
                &pre,
                Some(Some("1.0.0")),
            ),
            (
                "semver prerelease before",
                CratesIo,
                "1.0.0-alpha",
                &pre,
                None,
            ),
            ("semver release is fix", CratesIo, "1.0.0", &pre, None),
        ];
        for (name, eco, v, a, want) in table {
            assert_eq!(
                hit(eco, v, a),
                want.map(|f| f.map(str::to_string)),
                "{name}: {v}"
            );
        }
    }

    #[test]
    fn pypi_ranges_as_osv_gives_them() {
        use Ecosystem::PyPI;
        // `>= 0, < 2.31.0`
        let below_fix = aff(
            "ECOSYSTEM",
            serde_json::json!([{"introduced": "0"}, {"fixed": "2.31.0"}]),
            &[],
        );
        // `>= 2.0, <= 2.5.post1`
        let closed = aff(
            "ECOSYSTEM",
            serde_json::json!([{"introduced": "2.0"}, {"last_affected": "2.5.post1"}]),
            &[],
        );
        // `>= 1!1.0a1, < 1!1.2`
        let epoch = aff(
            "ECOSYSTEM",
            serde_json::json!([{"introduced": "1!1.0a1"}, {"fixed": "1!1.2"}]),
            &[],
        );
        // `== 3.1.0` (OSV's explicit `versions` list)
        let listed = aff("ECOSYSTEM", serde_json::json!([]), &["3.1.0"]);
        type Row<'a> = (&'a str, &'a Affected, Option<Option<&'a str>>);
        let table: Vec<Row<'_>> = vec![
            ("2.30.0", &below_fix, Some(Some("2.31.0"))),
            ("2.31.0rc1", &below_fix, Some(Some("2.31.0"))),
            ("2.31.0.dev3", &below_fix, Some(Some("2.31.0"))),
            ("2.30.0+ubuntu1", &below_fix, Some(Some("2.31.0"))),
            ("2.31.0", &below_fix, None),
            ("2.31", &below_fix, None),
            ("2.31.0.post1", &below_fix, None),
            ("2.31.0+local", &below_fix, None),
            ("1!0.1", &below_fix, None),
            ("2.0rc1", &closed, None),
            ("2.0", &closed, Some(None)),
            ("2.5", &closed, Some(None)),
            ("2.5.post1", &closed, Some(None)),
            ("2.5.post1.dev1", &closed, Some(None)),
            ("2.5.post2", &closed, None),
            ("2.5.1", &closed, None),
            ("1.9", &epoch, None),
            ("1!1.0.dev1", &epoch, None),
            ("1!1.0a1", &epoch, Some(Some("1!1.2"))),
            ("1!1.1.post3", &epoch, Some(Some("1!1.2"))),
            ("1!1.2rc1", &epoch, Some(Some("1!1.2"))),
            ("1!1.2", &epoch, None),
            ("3.1.0", &listed, Some(None)),
            ("3.1", &listed, Some(None)),
            ("v3.1.0", &listed, Some(None)),
            ("3.1.0.post1", &listed, None),
            ("3.1.0rc1", &listed, None),
        ];
        for (v, a, want) in table {
            assert_eq!(
                hit(PyPI, v, a),
                want.map(|f| f.map(str::to_string)),
                "{v} against {:?} / {:?}",
                a.ranges.first().map(|r| &r.events),
                a.versions
            );
        }
    }

    #[test]
    fn severity_from_cvss_words_and_nothing() {
        let adv: Advisory = serde_json::from_value(serde_json::json!({
            "id": "X-1",
            "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        }))
        .unwrap();
        let (s, score) = severity_of(&adv, None);
        assert_eq!(s, Severity::Critical);
        assert!((score.unwrap() - 9.8).abs() < 0.01);
        let v4: Advisory = serde_json::from_value(serde_json::json!({
            "id": "X-2",
            "severity": [{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:L/VI:N/VA:N/SC:N/SI:N/SA:N"}],
        }))
        .unwrap();
        assert_eq!(severity_of(&v4, None).0, Severity::Medium);
        let word: Advisory = serde_json::from_value(serde_json::json!({
            "id": "X-3", "database_specific": {"severity": "MODERATE"}
        }))
        .unwrap();
        assert_eq!(severity_of(&word, None), (Severity::Medium, None));
        let none: Advisory = serde_json::from_value(serde_json::json!({"id": "X-4"})).unwrap();
        assert_eq!(severity_of(&none, None), (Severity::Unknown, None));
    }

    #[test]
    fn aliases_are_grouped_transitively() {
        let db = AdvisoryDb::from_advisories(vec![
            serde_json::from_value(serde_json::json!({"id": "GHSA-a", "aliases": ["CVE-1"]}))
                .unwrap(),
            serde_json::from_value(serde_json::json!({"id": "RUSTSEC-b", "aliases": ["CVE-1"]}))
                .unwrap(),
            serde_json::from_value(serde_json::json!({"id": "DSA-c", "aliases": ["CVE-9"]}))
                .unwrap(),
        ]);
        assert_eq!(db.aliases_of("GHSA-a"), ["CVE-1", "RUSTSEC-b"]);
        assert_eq!(db.aliases_of("DSA-c"), ["CVE-9"]);
    }

    #[test]
    fn debian_release_filter() {
        let d12 = Distro {
            id: "debian".into(),
            version_id: "12".into(),
        };
        assert!(release_applies("Debian:12", Some(&d12)));
        assert!(!release_applies("Debian:11", Some(&d12)));
        assert!(release_applies("Debian:11", None));
        let a = Distro {
            id: "alpine".into(),
            version_id: "3.18.4".into(),
        };
        assert!(release_applies("Alpine:v3.18", Some(&a)));
        assert!(!release_applies("Alpine:v3.19", Some(&a)));
    }

    #[test]
    fn rustsec_informational_advisories_are_marked_by_kind() {
        let adv = |id: &str, info: Option<&str>| -> serde_json::Value {
            let mut a = serde_json::json!({
                "id": id,
                "affected": [{"package": {"ecosystem": "crates.io", "name": "net2"},
                              "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}],
            });
            if let Some(kind) = info {
                a["database_specific"] =
                    serde_json::json!({"informational": kind, "categories": []});
            }
            a
        };
        let db = AdvisoryDb::from_advisories(
            [
                adv("RUSTSEC-2020-0016", Some("unmaintained")),
                adv("RUSTSEC-2000-0001", Some("unsound")),
                adv("RUSTSEC-2000-0002", Some("notice")),
                adv("RUSTSEC-2000-0003", None),
            ]
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect(),
        );
        let pkg = Package {
            ecosystem: Ecosystem::CratesIo,
            name: "net2".into(),
            version: "0.2.39".into(),
            purl: "pkg:cargo/net2@0.2.39".into(),
            source_name: None,
            source_version: None,
            locations: vec!["app/Cargo.lock".into()],
            layer: "sha256:l".into(),
        };
        let found = db.match_packages(&[pkg], None);
        let kind = |id: &str| found.iter().find(|f| f.id == id).unwrap().informational;
        assert_eq!(kind("RUSTSEC-2020-0016"), Some(Informational::Unmaintained));
        assert_eq!(kind("RUSTSEC-2000-0001"), Some(Informational::Unsound));
        assert_eq!(kind("RUSTSEC-2000-0002"), Some(Informational::Notice));
        assert_eq!(kind("RUSTSEC-2000-0003"), None);
        let shown = found
            .iter()
            .find(|f| f.id == "RUSTSEC-2020-0016")
            .unwrap()
            .to_string();
        assert!(
            shown.contains("(unmaintained)") && !shown.contains("unknown"),
            "{shown}"
        );
    }
}
