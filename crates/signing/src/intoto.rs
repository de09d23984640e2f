//! in-toto Statements (v1) about an image and the three predicates cutover attaches to a
//! release: SLSA provenance v1, a CycloneDX SBOM and the scan verdict.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

use crate::dsse::{self, Envelope};
use crate::keys::KeyPair;

/// `_type` of every statement.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// SLSA provenance v1.
pub const PROVENANCE_PREDICATE: &str = "https://slsa.dev/provenance/v1";
/// CycloneDX SBOM (the predicate is the BOM's JSON).
pub const SBOM_PREDICATE: &str = "https://cyclonedx.org/bom";
/// cutover's scan verdict (the predicate is the verdict's JSON).
pub const SCAN_VERDICT_PREDICATE: &str = "https://cutover.dev/attestations/scan-verdict/v1";
/// `buildType` of cutover's provenance.
pub const BUILD_TYPE: &str = "https://cutover.dev/build-types/image/v1";
/// Builder id used when the caller names none.
pub const DEFAULT_BUILDER_ID: &str = "https://cutover.dev/builders/cutover-cli/v1";

/// The predicates a deployment requires by default.
pub fn default_required_predicates() -> Vec<String> {
    vec![
        PROVENANCE_PREDICATE.to_string(),
        SBOM_PREDICATE.to_string(),
        SCAN_VERDICT_PREDICATE.to_string(),
    ]
}

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    #[serde(default)]
    pub predicate: Value,
}

/// What a statement is about: a name and its digests (algorithm → lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    /// The subject's sha256 as `sha256:<hex>`, if it has one.
    pub fn sha256(&self) -> Option<String> {
        self.digest.get("sha256").map(|hex| format!("sha256:{hex}"))
    }
}

impl Statement {
    pub fn new(subject: Vec<Subject>, predicate_type: &str, predicate: Value) -> Self {
        Statement {
            statement_type: STATEMENT_TYPE.to_string(),
            subject,
            predicate_type: predicate_type.to_string(),
            predicate,
        }
    }

    /// Signs the statement into a DSSE envelope.
    pub fn sign(&self, key: &KeyPair) -> Envelope {
        // A statement is plain data (strings and JSON values): it always serializes.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        dsse::sign(PAYLOAD_TYPE, &payload, key)
    }
}

/// Where the deployed code came from, as given by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Source directory (e.g. the cargo manifest directory or docker context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Git commit of the source, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Whether the source's work tree had uncommitted changes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_dirty: Option<bool>,
    /// The source repository (git remote `origin`'s URL), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// A SLSA `ResourceDescriptor` for `resolvedDependencies`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
}

/// Inputs of the SLSA provenance predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceInputs {
    pub app: String,
    pub env: String,
    pub spec_digest: String,
    pub plan_digest: String,
    pub source: SourceInfo,
    pub resolved_dependencies: Vec<ResourceDescriptor>,
    /// `runDetails.builder.id`; [`DEFAULT_BUILDER_ID`] for the cutover CLI.
    pub builder_id: String,
    /// `runDetails.builder.version.cutover`: the version of cutover that built, when known.
    pub builder_version: Option<String>,
    /// Becomes `runDetails.metadata.invocationId`.
    pub deployment_id: String,
    /// Who ran the build: the CI job (its URL) when a CI job asked for it, else the control
    /// plane (`cutover-control-plane://<host>`). Becomes
    /// `buildDefinition.internalParameters.builder`.
    #[serde(default)]
    pub invoked_by: Option<String>,
    pub started_on_ms: u64,
    pub finished_on_ms: u64,
}

impl ProvenanceInputs {
    /// The SLSA provenance v1 predicate.
    pub fn predicate(&self) -> Value {
        let mut source = serde_json::Map::new();
        if let Some(path) = &self.source.path {
            source.insert("path".into(), json!(path));
        }
        if let Some(commit) = &self.source.git_commit {
            source.insert("gitCommit".into(), json!(commit));
        }
        if let Some(dirty) = self.source.git_dirty {
            source.insert("gitDirty".into(), json!(dirty));
        }
        if let Some(repository) = &self.source.repository {
            source.insert("repository".into(), json!(repository));
        }
        let mut builder = serde_json::Map::new();
        builder.insert("id".into(), json!(self.builder_id));
        if let Some(version) = &self.builder_version {
            builder.insert("version".into(), json!({ "cutover": version }));
        }
        json!({
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "app": self.app,
                    "env": self.env,
                    "specDigest": self.spec_digest,
                    "planDigest": self.plan_digest,
                    "source": Value::Object(source),
                },
                "resolvedDependencies": self.resolved_dependencies,
                "internalParameters": { "builder": self.invoked_by },
            },
            "runDetails": {
                "builder": Value::Object(builder),
                "metadata": {
                    "invocationId": self.deployment_id,
                    "startedOn": cutover_model::format_ms(self.started_on_ms),
                    "finishedOn": cutover_model::format_ms(self.finished_on_ms),
                },
            },
        })
    }
}

/// The builder id of a provenance predicate, if present.
pub fn provenance_builder_id(predicate: &Value) -> Option<&str> {
    predicate
        .pointer("/runDetails/builder/id")
        .and_then(Value::as_str)
}

/// Everything [`attest`] needs besides the image digest and the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestInputs {
    /// Subject name, e.g. the image tag `cutover/hello:production-3`.
    pub image_name: String,
    pub provenance: ProvenanceInputs,
    /// CycloneDX JSON; no SBOM statement when `None`.
    pub sbom: Option<Value>,
    /// Scan verdict JSON; no verdict statement when `None`.
    pub scan_verdict: Option<Value>,
}

/// The signed statements stored with a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationBundle {
    /// `sha256:<hex>` of the image the statements are about.
    pub image_digest: String,
    pub envelopes: Vec<Envelope>,
}

/// What can go wrong while attesting or handling bundles.
#[derive(Debug, Error)]
pub enum AttestError {
    #[error("image reference `{0}` is not a digest; attest the image by its `sha256:<64 hex>` id")]
    NotADigest(String),
    #[error("cannot read attestation bundle {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write attestation bundle {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an attestation bundle ({detail}); create one with `cutover sign`")]
    Parse {
        path: std::path::PathBuf,
        detail: String,
    },
}

/// Whether `reference` is an image digest: `sha256:` and 64 lowercase hex digits.
pub fn is_image_digest(reference: &str) -> bool {
    reference.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Signs provenance, SBOM and scan-verdict statements about `image_digest` with `key`.
pub fn attest(
    image_digest: &str,
    inputs: AttestInputs,
    key: &KeyPair,
) -> Result<AttestationBundle, AttestError> {
    if !is_image_digest(image_digest) {
        return Err(AttestError::NotADigest(image_digest.to_string()));
    }
    let hex = image_digest.trim_start_matches("sha256:");
    let subject = vec![Subject {
        name: inputs.image_name.clone(),
        digest: BTreeMap::from([("sha256".to_string(), hex.to_string())]),
    }];
    let mut statements = vec![Statement::new(
        subject.clone(),
        PROVENANCE_PREDICATE,
        inputs.provenance.predicate(),
    )];
    if let Some(sbom) = inputs.sbom {
        statements.push(Statement::new(subject.clone(), SBOM_PREDICATE, sbom));
    }
    if let Some(verdict) = inputs.scan_verdict {
        statements.push(Statement::new(subject, SCAN_VERDICT_PREDICATE, verdict));
    }
    Ok(AttestationBundle {
        image_digest: image_digest.to_string(),
        envelopes: statements.iter().map(|s| s.sign(key)).collect(),
    })
}

impl AttestationBundle {
    /// Pretty JSON, for files and the release store.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<(), AttestError> {
        std::fs::write(path, self.to_json()).map_err(|source| AttestError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Self, AttestError> {
        let text = std::fs::read_to_string(path).map_err(|source| AttestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| AttestError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// Adds the envelopes of another bundle about the same image.
    pub fn merge(&mut self, other: AttestationBundle) {
        self.envelopes.extend(other.envelopes);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dsse::TrustRoot;
    use crate::keys::Algorithm;

    pub(crate) const DIGEST: &str =
        "sha256:abababababababababababababababababababababababababababababababab";

    pub(crate) fn inputs() -> AttestInputs {
        AttestInputs {
            image_name: "cutover/hello:production-3".to_string(),
            provenance: ProvenanceInputs {
                app: "hello".to_string(),
                env: "production".to_string(),
                spec_digest: format!("sha256:{}", "1".repeat(64)),
                plan_digest: format!("sha256:{}", "2".repeat(64)),
                source: SourceInfo {
                    path: Some("/src/hello".to_string()),
                    git_commit: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
                    git_dirty: None,
                    repository: None,
                },
                resolved_dependencies: vec![ResourceDescriptor {
                    uri: Some("file:///src/hello/Cargo.lock".to_string()),
                    name: None,
                    digest: BTreeMap::from([("sha256".to_string(), "3".repeat(64))]),
                }],
                builder_id: DEFAULT_BUILDER_ID.to_string(),
                builder_version: None,
                deployment_id: "dep-42".to_string(),
                invoked_by: None,
                started_on_ms: 1_700_000_000_000,
                finished_on_ms: 1_700_000_060_000,
            },
            sbom: Some(json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []})),
            scan_verdict: Some(json!({"passed": true, "findings": []})),
        }
    }

    #[test]
    fn attest_signs_three_statements_about_the_digest() {
        let key = KeyPair::generate(Algorithm::Ed25519);
        let bundle = attest(DIGEST, inputs(), &key).unwrap();
        assert_eq!(bundle.envelopes.len(), 3);
        let trust = TrustRoot::new(vec![key.public().clone()]);
        let mut types = Vec::new();
        for envelope in &bundle.envelopes {
            assert_eq!(envelope.payload_type, PAYLOAD_TYPE);
            let verified = dsse::verify(envelope, &trust).unwrap();
            let statement: Statement = serde_json::from_slice(&verified.payload).unwrap();
            assert_eq!(statement.statement_type, STATEMENT_TYPE);
            assert_eq!(statement.subject[0].sha256().as_deref(), Some(DIGEST));
            assert_eq!(statement.subject[0].digest["sha256"].len(), 64);
            types.push(statement.predicate_type);
        }
        assert_eq!(types, default_required_predicates());
    }

    #[test]
    fn provenance_has_the_slsa_v1_shape() {
        let p = inputs().provenance.predicate();
        assert_eq!(p["buildDefinition"]["buildType"], BUILD_TYPE);
        let ext = &p["buildDefinition"]["externalParameters"];
        assert_eq!(ext["app"], "hello");
        assert_eq!(ext["env"], "production");
        assert_eq!(ext["specDigest"], format!("sha256:{}", "1".repeat(64)));
        assert_eq!(ext["planDigest"], format!("sha256:{}", "2".repeat(64)));
        assert_eq!(
            ext["source"]["gitCommit"],
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(
            p["buildDefinition"]["resolvedDependencies"][0]["uri"],
            "file:///src/hello/Cargo.lock"
        );
        assert_eq!(provenance_builder_id(&p), Some(DEFAULT_BUILDER_ID));
        let meta = &p["runDetails"]["metadata"];
        assert_eq!(meta["invocationId"], "dep-42");
        assert_eq!(meta["startedOn"], "2023-11-14T22:13:20Z");
        assert_eq!(meta["finishedOn"], "2023-11-14T22:14:20Z");
    }

    #[test]
    fn attest_refuses_a_tag() {
        let key = KeyPair::generate(Algorithm::Ed25519);
        let err = attest("cutover/hello:latest", inputs(), &key).unwrap_err();
        assert!(matches!(err, AttestError::NotADigest(_)), "{err:?}");
    }

    #[test]
    fn digest_syntax() {
        assert!(is_image_digest(DIGEST));
        assert!(!is_image_digest("sha256:ABAB"));
        assert!(!is_image_digest(&DIGEST.to_uppercase()));
        assert!(!is_image_digest(&DIGEST[..70]));
        assert!(!is_image_digest("hello:latest"));
    }

    #[test]
    fn bundle_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate(Algorithm::EcdsaP256);
        let bundle = attest(DIGEST, inputs(), &key).unwrap();
        let path = dir.path().join("bundle.json");
        bundle.save(&path).unwrap();
        assert_eq!(AttestationBundle::load(&path).unwrap(), bundle);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            AttestationBundle::load(&path).unwrap_err(),
            AttestError::Parse { .. }
        ));
    }
}
