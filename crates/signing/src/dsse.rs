//! DSSE envelopes: the pre-authentication encoding, signing and verification against a set of
//! trusted keys.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keys::{KeyPair, PublicKey};

/// A DSSE envelope (JSON form): base64 payload, its type, and signatures over the PAE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Base64 of the serialized body.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Hint naming the key (hex sha256 of its SPKI DER); never trusted on its own.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the signature bytes.
    pub sig: String,
}

/// The keys whose signatures are accepted.
#[derive(Debug, Clone, Default)]
pub struct TrustRoot {
    keys: Vec<PublicKey>,
}

impl TrustRoot {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        TrustRoot { keys }
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a trusted key has this key id.
    pub fn has_key_id(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.key_id() == key_id)
    }
}

/// A payload whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPayload {
    pub payload_type: String,
    pub payload: Vec<u8>,
    /// Ids of the trusted keys that signed it.
    pub key_ids: Vec<String>,
}

/// Why an envelope did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DsseError {
    #[error("the envelope payload is not valid base64; the envelope is corrupted, sign the payload again")]
    PayloadEncoding,
    #[error("the envelope has no signatures; sign it with a trusted key")]
    NoSignatures,
    #[error("no trusted keys to verify the envelope against; configure trusted public keys")]
    NoTrustedKeys,
    #[error("no signature on the envelope verifies with a trusted key (key ids in envelope: {key_ids}); sign it with a trusted key or trust the signer's public key")]
    Untrusted { key_ids: String },
}

/// The DSSE pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` as `payload_type` with `key`.
pub fn sign(payload_type: &str, payload: &[u8], key: &KeyPair) -> Envelope {
    let sig = key.sign(&pae(payload_type, payload));
    Envelope {
        payload: STANDARD.encode(payload),
        payload_type: payload_type.to_string(),
        signatures: vec![Signature {
            keyid: key.key_id().to_string(),
            sig: STANDARD.encode(sig),
        }],
    }
}

/// Decodes base64 in any of the forms DSSE allows (standard or URL-safe, padded or not).
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

impl Envelope {
    /// The decoded payload, not yet verified.
    pub fn decoded_payload(&self) -> Result<Vec<u8>, DsseError> {
        decode_base64(&self.payload).ok_or(DsseError::PayloadEncoding)
    }

    /// Key ids named by the signatures (hints only).
    pub fn key_ids(&self) -> Vec<String> {
        self.signatures.iter().map(|s| s.keyid.clone()).collect()
    }
}

/// Verifies that at least one signature on `envelope` is valid for a trusted key. The key id
/// hint only orders the keys tried; every trusted key is tried for every signature.
pub fn verify(envelope: &Envelope, trust: &TrustRoot) -> Result<VerifiedPayload, DsseError> {
    if trust.is_empty() {
        return Err(DsseError::NoTrustedKeys);
    }
    if envelope.signatures.is_empty() {
        return Err(DsseError::NoSignatures);
    }
    let payload = envelope.decoded_payload()?;
    let message = pae(&envelope.payload_type, &payload);
    let mut key_ids: Vec<String> = Vec::new();
    for signature in &envelope.signatures {
        let Some(sig) = decode_base64(&signature.sig) else {
            continue;
        };
        let mut candidates: Vec<&PublicKey> = trust.keys().iter().collect();
        candidates.sort_by_key(|k| k.key_id() != signature.keyid);
        for key in candidates {
            if key.verify(&message, &sig) && !key_ids.iter().any(|id| id == key.key_id()) {
                key_ids.push(key.key_id().to_string());
                break;
            }
        }
    }
    if key_ids.is_empty() {
        let named: Vec<String> = envelope
            .signatures
            .iter()
            .map(|s| {
                if s.keyid.is_empty() {
                    "<none>".to_string()
                } else {
                    s.keyid.clone()
                }
            })
            .collect();
        return Err(DsseError::Untrusted {
            key_ids: named.join(", "),
        });
    }
    Ok(VerifiedPayload {
        payload_type: envelope.payload_type.clone(),
        payload,
        key_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Algorithm;

    /// The test vector published in the DSSE protocol specification.
    #[test]
    fn pae_matches_the_spec_test_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_of_empty_inputs() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    /// The spec's vector: ECDSA P-256 with RFC 6979 nonces and a raw `r || s` signature. Our
    /// signer is deterministic too, so it must reproduce the published signature exactly.
    #[test]
    fn spec_signature_vector_reproduces_and_verifies() {
        use p256::ecdsa::signature::Signer as _;
        let d = "97358161215184420915383655311931858321456579547487070936769975997791359926199";
        let d_bytes = decimal_to_be32(d);
        let signing = p256::ecdsa::SigningKey::from_slice(&d_bytes).unwrap();
        let message = pae("http://example.com/HelloWorld", b"hello world");
        let sig: p256::ecdsa::Signature = signing.sign(&message);
        let published = "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==";
        assert_eq!(STANDARD.encode(sig.to_bytes()), published);

        // And the published envelope verifies with the public half.
        use p256::pkcs8::EncodePublicKey as _;
        let pem = signing
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let public = PublicKey::from_pem(&pem, "spec key").unwrap();
        let envelope: Envelope = serde_json::from_str(&format!(
            r#"{{"payload": "aGVsbG8gd29ybGQ=", "payloadType": "http://example.com/HelloWorld",
                "signatures": [{{"sig": "{published}"}}]}}"#
        ))
        .unwrap();
        let verified = verify(&envelope, &TrustRoot::new(vec![public])).unwrap();
        assert_eq!(verified.payload, b"hello world");
    }

    /// Big-endian 32 bytes of a decimal number (test helper; no bignum dependency).
    fn decimal_to_be32(decimal: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for digit in decimal.bytes() {
            let mut carry = u32::from(digit - b'0');
            for byte in out.iter_mut().rev() {
                let v = u32::from(*byte) * 10 + carry;
                *byte = (v & 0xff) as u8;
                carry = v >> 8;
            }
            assert_eq!(carry, 0, "number does not fit in 32 bytes");
        }
        out
    }

    fn trust(key: &KeyPair) -> TrustRoot {
        TrustRoot::new(vec![key.public().clone()])
    }

    #[test]
    fn sign_verify_round_trip_both_algorithms() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let envelope = sign("application/vnd.in-toto+json", b"{\"a\":1}", &key);
            assert_eq!(envelope.signatures[0].keyid, key.key_id());
            let verified = verify(&envelope, &trust(&key)).unwrap();
            assert_eq!(verified.payload, b"{\"a\":1}");
            assert_eq!(verified.payload_type, "application/vnd.in-toto+json");
            assert_eq!(verified.key_ids, vec![key.key_id().to_string()]);
            // Survives a JSON round trip with the spec's field names.
            let json = serde_json::to_string(&envelope).unwrap();
            assert!(json.contains("\"payloadType\""), "{json}");
            let back: Envelope = serde_json::from_str(&json).unwrap();
            assert!(verify(&back, &trust(&key)).is_ok());
        }
    }

    #[test]
    fn wrong_key_fails() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let other = KeyPair::generate(alg);
            let envelope = sign("t", b"body", &key);
            let err = verify(&envelope, &trust(&other)).unwrap_err();
            assert!(matches!(err, DsseError::Untrusted { .. }), "{err:?}");
        }
    }

    #[test]
    fn flipped_payload_byte_fails() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let mut envelope = sign("t", b"body", &key);
            envelope.payload = STANDARD.encode(b"bodz");
            assert!(verify(&envelope, &trust(&key)).is_err());
            // The payload type is authenticated too.
            let mut envelope = sign("t", b"body", &key);
            envelope.payload_type = "u".to_string();
            assert!(verify(&envelope, &trust(&key)).is_err());
        }
    }

    #[test]
    fn flipped_signature_byte_fails() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let envelope = sign("t", b"body", &key);
            let raw = decode_base64(&envelope.signatures[0].sig).unwrap();
            for index in [0, raw.len() / 2, raw.len() - 1] {
                let mut bad = raw.clone();
                bad[index] ^= 0x01;
                let mut tampered = envelope.clone();
                tampered.signatures[0].sig = STANDARD.encode(&bad);
                assert!(
                    verify(&tampered, &trust(&key)).is_err(),
                    "{alg}: flipped byte {index} still verified"
                );
            }
        }
    }

    #[test]
    fn keyid_is_only_a_hint() {
        let key = KeyPair::generate(Algorithm::Ed25519);
        let mut envelope = sign("t", b"body", &key);
        envelope.signatures[0].keyid = String::new();
        assert!(verify(&envelope, &trust(&key)).is_ok());
        envelope.signatures[0].keyid = "nonsense".to_string();
        assert!(verify(&envelope, &trust(&key)).is_ok());
    }

    #[test]
    fn url_safe_base64_is_accepted() {
        let key = KeyPair::generate(Algorithm::EcdsaP256);
        let mut envelope = sign("t", &[0xfb, 0xff, 0xfe], &key);
        envelope.payload = URL_SAFE_NO_PAD.encode([0xfb, 0xff, 0xfe]);
        let sig = decode_base64(&envelope.signatures[0].sig).unwrap();
        envelope.signatures[0].sig = URL_SAFE.encode(sig);
        assert_eq!(
            verify(&envelope, &trust(&key)).unwrap().payload,
            vec![0xfb, 0xff, 0xfe]
        );
    }

    #[test]
    fn empty_trust_and_unsigned_envelopes_fail_closed() {
        let key = KeyPair::generate(Algorithm::Ed25519);
        let envelope = sign("t", b"body", &key);
        assert_eq!(
            verify(&envelope, &TrustRoot::default()).unwrap_err(),
            DsseError::NoTrustedKeys
        );
        let mut unsigned = envelope.clone();
        unsigned.signatures.clear();
        assert_eq!(
            verify(&unsigned, &trust(&key)).unwrap_err(),
            DsseError::NoSignatures
        );
    }

    /// Interop: a signature made by the `openssl` CLI over our PAE verifies with our code.
    #[test]
    fn openssl_signed_envelope_verifies() {
        use std::process::Command;
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("skipping openssl interop test: `openssl` is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("ec.pem");
        let pub_path = dir.path().join("ec.pub");
        let pae_path = dir.path().join("pae.bin");
        let sig_path = dir.path().join("sig.der");
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let p = |path: &std::path::Path| path.to_str().unwrap().to_string();
        run(&[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            &p(&key_path),
        ]);
        run(&["ec", "-in", &p(&key_path), "-pubout", "-out", &p(&pub_path)]);
        let public = PublicKey::from_pem_file(&pub_path).unwrap();
        assert_eq!(public.algorithm(), Algorithm::EcdsaP256);
        let payload_type = "application/vnd.in-toto+json";
        // Several signatures, so both low-s and high-s values from openssl are exercised.
        for round in 0..4 {
            let payload = format!("{{\"round\":{round}}}");
            std::fs::write(&pae_path, pae(payload_type, payload.as_bytes())).unwrap();
            run(&[
                "dgst",
                "-sha256",
                "-sign",
                &p(&key_path),
                "-out",
                &p(&sig_path),
                &p(&pae_path),
            ]);
            let sig = std::fs::read(&sig_path).unwrap();
            let envelope = Envelope {
                payload: STANDARD.encode(payload.as_bytes()),
                payload_type: payload_type.to_string(),
                signatures: vec![Signature {
                    keyid: public.key_id().to_string(),
                    sig: STANDARD.encode(&sig),
                }],
            };
            let verified = verify(&envelope, &TrustRoot::new(vec![public.clone()])).unwrap();
            assert_eq!(verified.payload, payload.as_bytes());
            let mut tampered = envelope.clone();
            tampered.payload = STANDARD.encode(format!("{{\"round\":{}}}", round + 10));
            assert!(verify(&tampered, &TrustRoot::new(vec![public.clone()])).is_err());
        }
    }

    /// Interop the other way: `openssl` verifies what cutover signs (P-256, DER over SHA-256),
    /// and cutover verifies Ed25519 signatures made by `openssl pkeyutl`.
    #[test]
    fn openssl_verifies_our_signatures_and_signs_ed25519() {
        use std::process::Command;
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("skipping openssl interop test: `openssl` is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let openssl = |args: &[&str]| Command::new("openssl").args(args).output().unwrap();

        // cutover signs, openssl verifies.
        let key = KeyPair::generate(Algorithm::EcdsaP256);
        std::fs::write(p("ours.pub"), key.public().to_pem()).unwrap();
        let envelope = sign(PAYLOAD, b"{\"from\":\"cutover\"}", &key);
        let payload = envelope.decoded_payload().unwrap();
        std::fs::write(p("pae.bin"), pae(&envelope.payload_type, &payload)).unwrap();
        let sig = decode_base64(&envelope.signatures[0].sig).unwrap();
        std::fs::write(p("sig.der"), sig).unwrap();
        let out = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            &p("ours.pub"),
            "-signature",
            &p("sig.der"),
            &p("pae.bin"),
        ]);
        assert!(
            out.status.success(),
            "openssl rejected our signature: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // openssl signs with Ed25519, cutover verifies.
        let steps: [&[&str]; 2] = [
            &["genpkey", "-algorithm", "ed25519", "-out", &p("ed.pem")],
            &["pkey", "-in", &p("ed.pem"), "-pubout", "-out", &p("ed.pub")],
        ];
        for args in steps {
            let out = openssl(args);
            assert!(out.status.success(), "openssl {args:?} failed");
        }
        let public = PublicKey::from_pem_file(dir.path().join("ed.pub").as_path()).unwrap();
        assert_eq!(public.algorithm(), Algorithm::Ed25519);
        let body = b"{\"from\":\"openssl\"}";
        std::fs::write(p("pae.bin"), pae(PAYLOAD, body)).unwrap();
        let out = openssl(&[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            &p("ed.pem"),
            "-in",
            &p("pae.bin"),
            "-out",
            &p("ed.sig"),
        ]);
        assert!(
            out.status.success(),
            "openssl pkeyutl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let envelope = Envelope {
            payload: STANDARD.encode(body),
            payload_type: PAYLOAD.to_string(),
            signatures: vec![Signature {
                keyid: String::new(),
                sig: STANDARD.encode(std::fs::read(p("ed.sig")).unwrap()),
            }],
        };
        let verified = verify(&envelope, &TrustRoot::new(vec![public])).unwrap();
        assert_eq!(verified.payload, body);
    }

    const PAYLOAD: &str = "application/vnd.in-toto+json";
}
