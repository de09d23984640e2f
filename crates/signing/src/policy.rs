//! Verify-before-deploy: a bundle's attestations are checked against an environment's policy,
//! failing closed.

use std::path::PathBuf;

use serde_json::Value;
use thiserror::Error;

use crate::dsse::{self, DsseError, TrustRoot};
use crate::intoto::{
    default_required_predicates, is_image_digest, provenance_builder_id, AttestationBundle,
    Statement, DEFAULT_BUILDER_ID, PAYLOAD_TYPE, PROVENANCE_PREDICATE, STATEMENT_TYPE,
};
use crate::keys::{KeyError, PublicKey};

/// What an environment demands of an image before it runs.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    /// Environment name, for messages (`environments.<env>.trusted_keys`).
    pub environment: String,
    /// Keys whose signatures count (from PEM files listed in `deploy.toml`).
    pub trusted_keys: Vec<PublicKey>,
    /// Predicate types that must be present, signed by a trusted key, about the image.
    pub required_predicates: Vec<String>,
    /// Provenance `runDetails.builder.id`s accepted.
    pub allowed_builders: Vec<String>,
}

impl VerifyPolicy {
    /// The default policy for `environment`: provenance, SBOM and scan verdict required,
    /// only cutover's own builder id allowed.
    pub fn new(environment: impl Into<String>, trusted_keys: Vec<PublicKey>) -> Self {
        VerifyPolicy {
            environment: environment.into(),
            trusted_keys,
            required_predicates: default_required_predicates(),
            allowed_builders: vec![DEFAULT_BUILDER_ID.to_string()],
        }
    }

    /// The default policy with trusted keys read from PEM files.
    pub fn from_key_files(
        environment: impl Into<String>,
        key_files: &[PathBuf],
    ) -> Result<Self, KeyError> {
        let keys = key_files
            .iter()
            .map(|path| PublicKey::from_pem_file(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(environment, keys))
    }
}

/// One statement that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedStatement {
    pub statement: Statement,
    /// Trusted keys that signed it.
    pub key_ids: Vec<String>,
}

/// The result of a successful [`verify_bundle`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAttestations {
    pub image_digest: String,
    /// Every trusted statement about the image (required or not).
    pub statements: Vec<VerifiedStatement>,
    /// Builder id of the accepted provenance, if any.
    pub builder_id: Option<String>,
}

impl VerifiedAttestations {
    /// The predicate of the first trusted statement of `predicate_type`.
    pub fn predicate(&self, predicate_type: &str) -> Option<&Value> {
        self.statements
            .iter()
            .find(|s| s.statement.predicate_type == predicate_type)
            .map(|s| &s.statement.predicate)
    }

    /// Ids of all keys that signed accepted statements, without repeats.
    pub fn signer_key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for s in &self.statements {
            for id in &s.key_ids {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        ids
    }
}

/// Why an image may not be deployed. Each refusal has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("image reference `{reference}` is not a digest; deploy images by digest (sha256:<64 hex>) so the verified image is the one that runs")]
    NotADigest { reference: String },
    #[error("environment {env} has no trusted keys, so no image can be verified; list public key files in environments.{env}.trusted_keys")]
    NoTrustedKeys { env: String },
    #[error("image {image} has no signature from a trusted key; sign it with `cutover sign` or add its key to environments.{env}.trusted_keys")]
    Unsigned { image: String, env: String },
    #[error("attestation {index} for image {image} names trusted key {key_id} but its signature does not verify; the bundle was altered, sign the image again")]
    BadSignature {
        image: String,
        index: usize,
        key_id: String,
    },
    #[error("attestation {index} for image {image} is signed but is not a valid in-toto statement v1 ({detail}); sign the image again with `cutover sign`")]
    MalformedStatement {
        image: String,
        index: usize,
        detail: String,
    },
    #[error("image {image} is not the subject of any trusted attestation (subjects: {subjects}); refusing to deploy it")]
    SubjectMismatch { image: String, subjects: String },
    #[error("image {image} has no trusted `{predicate_type}` attestation; attest it with `cutover sign` before deploying")]
    MissingPredicate {
        image: String,
        predicate_type: String,
    },
    #[error("image {image} was built by `{builder}`, which environment {env} does not allow (allowed: {allowed}); build it with an allowed builder")]
    DisallowedBuilder {
        image: String,
        env: String,
        builder: String,
        allowed: String,
    },
}

/// Checks that `image_digest` may run under `policy`: it is a digest, every required predicate
/// is present in a statement about exactly that digest, signed by a trusted key, and its
/// provenance names an allowed builder. Anything unexpected refuses.
pub fn verify_bundle(
    bundle: &AttestationBundle,
    image_digest: &str,
    policy: &VerifyPolicy,
) -> Result<VerifiedAttestations, VerifyError> {
    let image = image_digest.to_string();
    let env = policy.environment.clone();
    if !is_image_digest(image_digest) {
        return Err(VerifyError::NotADigest { reference: image });
    }
    if policy.trusted_keys.is_empty() {
        return Err(VerifyError::NoTrustedKeys { env });
    }
    let trust = TrustRoot::new(policy.trusted_keys.clone());

    // 1. Signatures: keep statements signed by a trusted key. An envelope that claims a
    //    trusted key but does not verify is tampering, and refuses the whole bundle.
    let mut trusted: Vec<VerifiedStatement> = Vec::new();
    for (index, envelope) in bundle.envelopes.iter().enumerate() {
        let verified = match dsse::verify(envelope, &trust) {
            Ok(v) => v,
            Err(DsseError::NoTrustedKeys) => return Err(VerifyError::NoTrustedKeys { env }),
            Err(_) => {
                if let Some(sig) = envelope
                    .signatures
                    .iter()
                    .find(|s| trust.has_key_id(&s.keyid))
                {
                    return Err(VerifyError::BadSignature {
                        image,
                        index,
                        key_id: sig.keyid.clone(),
                    });
                }
                continue;
            }
        };
        let malformed = |detail: String| VerifyError::MalformedStatement {
            image: image.clone(),
            index,
            detail,
        };
        if verified.payload_type != PAYLOAD_TYPE {
            return Err(malformed(format!(
                "payload type `{}`, expected `{PAYLOAD_TYPE}`",
                verified.payload_type
            )));
        }
        let statement: Statement = serde_json::from_slice(&verified.payload)
            .map_err(|e| malformed(format!("invalid json: {e}")))?;
        if statement.statement_type != STATEMENT_TYPE {
            return Err(malformed(format!(
                "`_type` is `{}`, expected `{STATEMENT_TYPE}`",
                statement.statement_type
            )));
        }
        trusted.push(VerifiedStatement {
            statement,
            key_ids: verified.key_ids,
        });
    }
    if trusted.is_empty() {
        return Err(VerifyError::Unsigned { image, env });
    }

    // 2. Subject: only statements about exactly this digest count.
    let (about_image, others): (Vec<_>, Vec<_>) = trusted.into_iter().partition(|s| {
        s.statement
            .subject
            .iter()
            .any(|subject| subject.sha256().as_deref() == Some(image_digest))
    });
    if about_image.is_empty() {
        let mut subjects: Vec<String> = others
            .iter()
            .flat_map(|s| s.statement.subject.iter())
            .map(|subject| subject.sha256().unwrap_or_else(|| subject.name.clone()))
            .collect();
        subjects.sort();
        subjects.dedup();
        return Err(VerifyError::SubjectMismatch {
            image,
            subjects: subjects.join(", "),
        });
    }

    // 3. Provenance: only statements from an allowed builder count.
    let mut builder_id = None;
    let mut disallowed_builder = None;
    let mut accepted: Vec<VerifiedStatement> = Vec::new();
    for s in about_image {
        if s.statement.predicate_type == PROVENANCE_PREDICATE {
            let builder = provenance_builder_id(&s.statement.predicate).unwrap_or("");
            if !policy.allowed_builders.iter().any(|b| b == builder) {
                disallowed_builder.get_or_insert_with(|| builder.to_string());
                continue;
            }
            builder_id.get_or_insert_with(|| builder.to_string());
        }
        accepted.push(s);
    }

    // 4. Every required predicate is present.
    for required in &policy.required_predicates {
        if accepted
            .iter()
            .any(|s| &s.statement.predicate_type == required)
        {
            continue;
        }
        if required == PROVENANCE_PREDICATE {
            if let Some(builder) = disallowed_builder {
                return Err(VerifyError::DisallowedBuilder {
                    image,
                    env,
                    builder: if builder.is_empty() {
                        "<none>".to_string()
                    } else {
                        builder
                    },
                    allowed: if policy.allowed_builders.is_empty() {
                        "none".to_string()
                    } else {
                        policy.allowed_builders.join(", ")
                    },
                });
            }
        }
        return Err(VerifyError::MissingPredicate {
            image,
            predicate_type: required.clone(),
        });
    }

    Ok(VerifiedAttestations {
        image_digest: image,
        statements: accepted,
        builder_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intoto::tests::{inputs, DIGEST};
    use crate::intoto::{attest, Subject, SBOM_PREDICATE, SCAN_VERDICT_PREDICATE};
    use crate::keys::{Algorithm, KeyPair};
    use std::collections::BTreeMap;

    fn setup() -> (KeyPair, AttestationBundle, VerifyPolicy) {
        let key = KeyPair::generate(Algorithm::EcdsaP256);
        let bundle = attest(DIGEST, inputs(), &key).unwrap();
        let policy = VerifyPolicy::new("production", vec![key.public().clone()]);
        (key, bundle, policy)
    }

    #[test]
    fn good_bundle_passes() {
        let (key, bundle, policy) = setup();
        let verified = verify_bundle(&bundle, DIGEST, &policy).unwrap();
        assert_eq!(verified.image_digest, DIGEST);
        assert_eq!(verified.statements.len(), 3);
        assert_eq!(verified.builder_id.as_deref(), Some(DEFAULT_BUILDER_ID));
        assert_eq!(verified.signer_key_ids(), vec![key.key_id().to_string()]);
        assert_eq!(
            verified.predicate(SCAN_VERDICT_PREDICATE).unwrap()["passed"],
            true
        );
    }

    #[test]
    fn one_of_several_trusted_keys_is_enough() {
        let (_, bundle, mut policy) = setup();
        policy
            .trusted_keys
            .insert(0, KeyPair::generate(Algorithm::Ed25519).public().clone());
        assert!(verify_bundle(&bundle, DIGEST, &policy).is_ok());
    }

    #[test]
    fn missing_predicate_is_refused() {
        let (key, _, policy) = setup();
        let mut no_sbom = inputs();
        no_sbom.sbom = None;
        let bundle = attest(DIGEST, no_sbom, &key).unwrap();
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert_eq!(
            err,
            VerifyError::MissingPredicate {
                image: DIGEST.to_string(),
                predicate_type: SBOM_PREDICATE.to_string()
            }
        );
    }

    #[test]
    fn substituted_image_is_refused() {
        let (_, bundle, policy) = setup();
        let other = format!("sha256:{}", "cd".repeat(32));
        let err = verify_bundle(&bundle, &other, &policy).unwrap_err();
        assert!(
            matches!(err, VerifyError::SubjectMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "image {other} is not the subject of any trusted attestation (subjects: {DIGEST}); refusing to deploy it"
            )
        );
    }

    #[test]
    fn subject_must_match_even_if_bundle_header_is_edited() {
        let (_, mut bundle, policy) = setup();
        let other = format!("sha256:{}", "cd".repeat(32));
        bundle.image_digest = other.clone();
        let err = verify_bundle(&bundle, &other, &policy).unwrap_err();
        assert!(
            matches!(err, VerifyError::SubjectMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn untrusted_key_is_refused() {
        let (_, bundle, _) = setup();
        let stranger = KeyPair::generate(Algorithm::EcdsaP256);
        let policy = VerifyPolicy::new("production", vec![stranger.public().clone()]);
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert!(matches!(err, VerifyError::Unsigned { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("image {DIGEST} has no signature from a trusted key; sign it with `cutover sign` or add its key to environments.production.trusted_keys")
        );
    }

    #[test]
    fn unsigned_bundle_is_refused() {
        let (_, mut bundle, policy) = setup();
        for envelope in &mut bundle.envelopes {
            envelope.signatures.clear();
        }
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert!(matches!(err, VerifyError::Unsigned { .. }), "{err:?}");
        let empty = AttestationBundle {
            image_digest: DIGEST.to_string(),
            envelopes: vec![],
        };
        let err = verify_bundle(&empty, DIGEST, &policy).unwrap_err();
        assert!(matches!(err, VerifyError::Unsigned { .. }), "{err:?}");
    }

    #[test]
    fn disallowed_builder_is_refused() {
        let (key, _, policy) = setup();
        let mut rogue = inputs();
        rogue.provenance.builder_id = "https://example.invalid/laptop".to_string();
        let bundle = attest(DIGEST, rogue, &key).unwrap();
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert!(
            matches!(&err, VerifyError::DisallowedBuilder { builder, .. } if builder == "https://example.invalid/laptop"),
            "{err:?}"
        );
    }

    #[test]
    fn tag_instead_of_digest_is_refused() {
        let (_, bundle, policy) = setup();
        for reference in ["cutover/hello:production-3", "sha256:abc", "latest"] {
            let err = verify_bundle(&bundle, reference, &policy).unwrap_err();
            assert!(matches!(err, VerifyError::NotADigest { .. }), "{err:?}");
        }
    }

    #[test]
    fn no_trusted_keys_fails_closed() {
        let (_, bundle, mut policy) = setup();
        policy.trusted_keys.clear();
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert_eq!(
            err,
            VerifyError::NoTrustedKeys {
                env: "production".to_string()
            }
        );
    }

    #[test]
    fn tampered_statement_from_trusted_key_is_refused() {
        let (_, mut bundle, policy) = setup();
        // Swap the subject digest inside a signed payload, keeping the signature.
        let payload = bundle.envelopes[1].decoded_payload().unwrap();
        let mut statement: Statement = serde_json::from_slice(&payload).unwrap();
        statement.subject = vec![Subject {
            name: "evil".to_string(),
            digest: BTreeMap::from([("sha256".to_string(), "ef".repeat(32))]),
        }];
        use base64::Engine as _;
        bundle.envelopes[1].payload = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&statement).unwrap());
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert!(
            matches!(err, VerifyError::BadSignature { index: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_payload_type_from_trusted_key_is_refused() {
        let (key, mut bundle, policy) = setup();
        bundle.envelopes[0] = crate::dsse::sign("application/json", b"{}", &key);
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert!(
            matches!(err, VerifyError::MalformedStatement { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn required_predicates_are_configurable() {
        let (key, _, mut policy) = setup();
        let mut only_provenance = inputs();
        only_provenance.sbom = None;
        only_provenance.scan_verdict = None;
        let bundle = attest(DIGEST, only_provenance, &key).unwrap();
        policy.required_predicates = vec![PROVENANCE_PREDICATE.to_string()];
        assert!(verify_bundle(&bundle, DIGEST, &policy).is_ok());
    }

    #[test]
    fn untrusted_signer_claiming_a_trusted_key_id_is_refused() {
        let (key, _, policy) = setup();
        let impostor = KeyPair::generate(Algorithm::EcdsaP256);
        let mut bundle = attest(DIGEST, inputs(), &impostor).unwrap();
        for envelope in &mut bundle.envelopes {
            envelope.signatures[0].keyid = key.key_id().to_string();
        }
        let err = verify_bundle(&bundle, DIGEST, &policy).unwrap_err();
        assert!(
            matches!(err, VerifyError::BadSignature { index: 0, .. }),
            "{err:?}"
        );
    }

    /// The whole path the CLI takes: key files on disk, a bundle file, a policy from PEMs.
    #[test]
    fn end_to_end_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, _) =
            crate::keys::generate_to_files(dir.path(), "release", Algorithm::EcdsaP256, "s3cret")
                .unwrap();
        let key = KeyPair::load_private(&private, "s3cret").unwrap();
        let bundle_path = dir.path().join("bundle.json");
        attest(DIGEST, inputs(), &key)
            .unwrap()
            .save(&bundle_path)
            .unwrap();
        let bundle = AttestationBundle::load(&bundle_path).unwrap();
        let policy = VerifyPolicy::from_key_files("production", &[public]).unwrap();
        let verified = verify_bundle(&bundle, DIGEST, &policy).unwrap();
        assert_eq!(verified.signer_key_ids(), vec![key.key_id().to_string()]);
    }

    #[test]
    fn policy_from_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public, key_id) =
            crate::keys::generate_to_files(dir.path(), "ci", Algorithm::Ed25519, "pw").unwrap();
        let policy = VerifyPolicy::from_key_files("staging", &[public]).unwrap();
        assert_eq!(policy.trusted_keys[0].key_id(), key_id);
        assert_eq!(policy.required_predicates, default_required_predicates());
        let missing = dir.path().join("missing.pub");
        assert!(VerifyPolicy::from_key_files("staging", &[missing]).is_err());
    }
}
