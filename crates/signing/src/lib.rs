//! Keys, DSSE/in-toto attestations (SLSA provenance, SBOM, scan verdict), verification.
//!
//! - [`keys`]: P-256 and Ed25519 key pairs, public keys as PEM (SPKI) with cosign-style key ids
//!   (hex sha256 of the SPKI DER), private keys encrypted under a passphrase
//!   (argon2id → XChaCha20-Poly1305) in a file with mode 0600.
//! - [`dsse`]: the DSSE envelope, its pre-authentication encoding, signing and verification.
//! - [`intoto`]: in-toto Statement v1 about an image digest, the three predicates cutover
//!   attaches to a release, and the [`AttestationBundle`] stored with it.
//! - [`policy`]: verify-before-deploy. [`verify_bundle`] fails closed: anything it cannot
//!   prove about the image being run refuses the deployment with its own error.
//!
//! Deliberately absent: no I/O besides reading and writing key and bundle files, no network,
//! no knowledge of Docker or of where bundles are stored.

pub mod dsse;
pub mod intoto;
pub mod keys;
pub mod policy;

pub use dsse::{pae, sign, verify, DsseError, Envelope, Signature, TrustRoot, VerifiedPayload};
pub use intoto::{
    attest, default_required_predicates, is_image_digest, AttestError, AttestInputs,
    AttestationBundle, ProvenanceInputs, ResourceDescriptor, SourceInfo, Statement, Subject,
    BUILD_TYPE, DEFAULT_BUILDER_ID, PAYLOAD_TYPE, PROVENANCE_PREDICATE, SBOM_PREDICATE,
    SCAN_VERDICT_PREDICATE, STATEMENT_TYPE,
};
pub use keys::{generate_to_files, passphrase_from_env, Algorithm, KeyError, KeyPair, PublicKey};
pub use policy::{
    verify_bundle, VerifiedAttestations, VerifiedStatement, VerifyError, VerifyPolicy,
};

/// Environment variable the CLI reads the signing key passphrase from.
pub const PASSPHRASE_ENV: &str = "CUTOVER_KEY_PASSPHRASE";
