//! What the supply chain recorded about an image, for people deciding at an approval gate:
//! the scan verdict with its findings and the exceptions it used, and the signed
//! provenance. Read back from stored results; nothing is scanned again.
//!
//! Nothing here carries a secret: a secret finding is named by its rule, location and
//! fingerprint only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the supply chain knows about one image in one environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyEvidence {
    /// The gate's verdict of the image's scan for the environment, when it was scanned.
    pub scan: Option<ScanEvidence>,
    /// The signed SLSA provenance, when the image was signed.
    pub provenance: Option<ProvenanceEvidence>,
}

/// A scan verdict as the gate recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEvidence {
    pub passed: bool,
    /// Why the gate failed, and notes (expired exceptions, no advisory database).
    pub reasons: Vec<String>,
    /// Unsuppressed vulnerabilities by severity.
    pub counts: BTreeMap<String, usize>,
    /// Unsuppressed secrets.
    pub secrets: usize,
    /// Whether an advisory database was imported when the image was scanned.
    pub advisory_database: bool,
    /// The gate: `fail_on` severity and whether secrets fail it.
    pub fail_on: String,
    pub fail_on_secrets: bool,
    /// Every finding, suppressed or not; `None` for verdicts recorded before findings were
    /// kept with them.
    pub findings: Option<Vec<FindingEvidence>>,
    /// Every exception the gate used.
    pub exceptions: Vec<ExceptionEvidence>,
}

/// One finding of a scan. Vulnerabilities carry severity, id and package; secrets carry
/// rule, location and fingerprint (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FindingEvidence {
    Vulnerability {
        severity: String,
        id: String,
        package: String,
        version: String,
        fixed: Option<String>,
    },
    Secret {
        rule: String,
        location: String,
        fingerprint: String,
    },
}

/// An exception a gate used to suppress a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionEvidence {
    /// The advisory id (with package and version) or the secret's fingerprint.
    pub finding: String,
    /// The exception's id (advisory or rule id) or fingerprint.
    pub exception: String,
    pub reason: String,
    pub owner: String,
    /// `YYYY-MM-DD`.
    pub expires: String,
}

/// The signed provenance of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceEvidence {
    /// `runDetails.builder.id`.
    pub builder_id: String,
    /// The builder's version (cutover's), when recorded.
    pub builder_version: Option<String>,
    /// The source directory built.
    pub source_path: Option<String>,
    pub git_commit: Option<String>,
    /// Whether the work tree had uncommitted changes, when known.
    pub git_dirty: Option<bool>,
    /// Key ids of the signatures over the provenance.
    pub key_ids: Vec<String>,
    /// The source repository (git remote `origin`), when recorded.
    #[serde(default)]
    pub repository: Option<String>,
    /// Who ran the build: a CI job's URL or the control plane, when recorded.
    #[serde(default)]
    pub invoked_by: Option<String>,
    /// The registry reference the provenance was pulled with, when it was signed elsewhere
    /// and imported (`None`: signed by this control plane).
    #[serde(default)]
    pub pulled_from: Option<String>,
}
