//! Signing keys: generation, public keys as PEM (SPKI), key ids, and private keys stored
//! encrypted under a passphrase (argon2id → XChaCha20-Poly1305).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// Format tag of the encrypted private key file.
pub const PRIVATE_KEY_FORMAT: &str = "cutover-signing-key/v1";

/// Signature algorithms cutover signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// ECDSA over NIST P-256 with SHA-256; signatures are ASN.1 DER.
    EcdsaP256,
    /// Ed25519; signatures are the raw 64 bytes.
    Ed25519,
}

impl Algorithm {
    /// The stable name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256 => "ecdsa-p256",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" | "ecdsa" | "p256" => Ok(Algorithm::EcdsaP256),
            "ed25519" => Ok(Algorithm::Ed25519),
            other => Err(KeyError::UnknownAlgorithm(other.to_string())),
        }
    }
}

/// What can go wrong with keys.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("unknown key algorithm `{0}`; use `ecdsa-p256` or `ed25519`")]
    UnknownAlgorithm(String),
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} already exists; remove it or choose another key name")]
    Exists { path: PathBuf },
    #[error("{what} is not a P-256 or Ed25519 public key in PEM (SPKI) form; export the public key with `cutover keys generate` or `openssl pkey -pubout`")]
    BadPublicKey { what: String },
    #[error("{path} is not a cutover signing key file ({detail}); generate one with `cutover keys generate`")]
    BadPrivateKeyFile { path: PathBuf, detail: String },
    #[error("cannot decrypt the signing key at {path}: wrong passphrase or corrupted file")]
    WrongPassphrase { path: PathBuf },
    #[error("signing key file {path} can be read or written by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the passphrase for the signing key is empty; set CUTOVER_KEY_PASSPHRASE to a non-empty passphrase")]
    EmptyPassphrase,
    #[error("cannot derive the key-encryption key: {0}")]
    Kdf(String),
}

/// A public key that signatures are verified against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: PublicInner,
    spki_der: Vec<u8>,
    key_id: String,
}

#[derive(Clone, PartialEq, Eq)]
enum PublicInner {
    EcdsaP256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl PublicKey {
    fn from_inner(inner: PublicInner) -> Self {
        let spki_der = match &inner {
            PublicInner::EcdsaP256(k) => k.to_public_key_der(),
            PublicInner::Ed25519(k) => k.to_public_key_der(),
        }
        .map(|doc| doc.as_bytes().to_vec())
        // Both key types always encode; an empty DER only makes the key id unusual.
        .unwrap_or_default();
        let key_id = hex::encode(Sha256::digest(&spki_der));
        PublicKey {
            inner,
            spki_der,
            key_id,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            PublicInner::EcdsaP256(_) => Algorithm::EcdsaP256,
            PublicInner::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Hex `sha256` of the SPKI DER encoding of the key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The SPKI DER encoding.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// PEM (`-----BEGIN PUBLIC KEY-----`, SPKI).
    pub fn to_pem(&self) -> String {
        match &self.inner {
            PublicInner::EcdsaP256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicInner::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
        }
        // Encoding a valid key to PEM does not fail.
        .unwrap_or_default()
    }

    /// Parses a PEM (SPKI) public key; `what` names the source in errors.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::from_inner(PublicInner::EcdsaP256(k)));
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::from_inner(PublicInner::Ed25519(k)));
        }
        Err(KeyError::BadPublicKey {
            what: what.to_string(),
        })
    }

    /// Reads a PEM (SPKI) public key file.
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    /// Whether `sig` is a valid signature of `msg` by this key. ECDSA accepts ASN.1 DER
    /// (what cutover and cosign write) and the fixed 64-byte `r || s` form.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match &self.inner {
            PublicInner::EcdsaP256(k) => {
                let parsed = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig));
                match parsed {
                    Ok(s) => k.verify(msg, &s).is_ok(),
                    Err(_) => false,
                }
            }
            PublicInner::Ed25519(k) => match ed25519_dalek::Signature::from_slice(sig) {
                Ok(s) => k.verify_strict(msg, &s).is_ok(),
                Err(_) => false,
            },
        }
    }
}

/// A private signing key (with its public half). Its Debug never shows key material.
pub struct KeyPair {
    inner: PrivateInner,
    public: PublicKey,
}

enum PrivateInner {
    EcdsaP256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.public.key_id)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl KeyPair {
    /// A fresh key from the operating system's randomness.
    pub fn generate(algorithm: Algorithm) -> Self {
        let inner = match algorithm {
            Algorithm::EcdsaP256 => {
                PrivateInner::EcdsaP256(p256::ecdsa::SigningKey::random(&mut OsRng))
            }
            Algorithm::Ed25519 => {
                PrivateInner::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
        };
        Self::from_private(inner)
    }

    fn from_private(inner: PrivateInner) -> Self {
        let public = PublicKey::from_inner(match &inner {
            PrivateInner::EcdsaP256(k) => PublicInner::EcdsaP256(*k.verifying_key()),
            PrivateInner::Ed25519(k) => PublicInner::Ed25519(k.verifying_key()),
        });
        KeyPair { inner, public }
    }

    /// Rebuilds a key from its 32 secret bytes (P-256 scalar or Ed25519 seed).
    fn from_secret_bytes(algorithm: Algorithm, secret: &[u8]) -> Option<Self> {
        let inner = match algorithm {
            Algorithm::EcdsaP256 => {
                PrivateInner::EcdsaP256(p256::ecdsa::SigningKey::from_slice(secret).ok()?)
            }
            Algorithm::Ed25519 => {
                let seed: [u8; 32] = secret.try_into().ok()?;
                PrivateInner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
        };
        Some(Self::from_private(inner))
    }

    fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        match &self.inner {
            PrivateInner::EcdsaP256(k) => Zeroizing::new(k.to_bytes().to_vec()),
            PrivateInner::Ed25519(k) => Zeroizing::new(k.to_bytes().to_vec()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn key_id(&self) -> &str {
        self.public.key_id()
    }

    /// Signs `msg`: ECDSA P-256 over SHA-256 as ASN.1 DER, or raw Ed25519.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        match &self.inner {
            PrivateInner::EcdsaP256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
            PrivateInner::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
        }
    }

    /// Writes the private key encrypted under `passphrase` to a new file with mode 0600.
    /// Refuses to overwrite an existing file.
    pub fn save_private(&self, path: &Path, passphrase: &str) -> Result<(), KeyError> {
        let file = self.encrypt(passphrase)?;
        let mut text = serde_json::to_string_pretty(&file).map_err(|e| KeyError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        write_new_file(path, text.as_bytes(), 0o600)
    }

    /// Writes the public key as PEM to a new file with mode 0644.
    pub fn save_public(&self, path: &Path) -> Result<(), KeyError> {
        write_new_file(path, self.public.to_pem().as_bytes(), 0o644)
    }

    /// Writes the private key unencrypted (PKCS#8 PEM) to a new file with mode 0600. For
    /// keys a daemon must load unattended and whose theft is survivable (the audit
    /// checkpoint key); release signing keys are stored encrypted. Refuses to overwrite.
    pub fn save_private_unencrypted(&self, path: &Path) -> Result<(), KeyError> {
        let pem = match &self.inner {
            PrivateInner::EcdsaP256(k) => k.to_pkcs8_pem(LineEnding::LF),
            PrivateInner::Ed25519(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| KeyError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        write_new_file(path, pem.as_bytes(), 0o600)
    }

    /// Reads a private key written by [`KeyPair::save_private_unencrypted`]. Refuses a file
    /// that other users can read or write.
    pub fn load_private_unencrypted(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let pem = Zeroizing::new(fs::read_to_string(path).map_err(read_err)?);
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem) {
            return Ok(Self::from_private(PrivateInner::EcdsaP256(k)));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem) {
            return Ok(Self::from_private(PrivateInner::Ed25519(k)));
        }
        Err(KeyError::BadPrivateKeyFile {
            path: path.to_path_buf(),
            detail: "not a P-256 or Ed25519 private key in PKCS#8 PEM form".to_string(),
        })
    }

    /// Reads and decrypts a private key written by [`KeyPair::save_private`].
    /// Refuses a file that other users can read or write (like ssh does).
    pub fn load_private(path: &Path, passphrase: &str) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        let bad = |detail: &str| KeyError::BadPrivateKeyFile {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        };
        let file: EncryptedKeyFile =
            serde_json::from_str(&text).map_err(|e| bad(&format!("invalid json: {e}")))?;
        if file.format != PRIVATE_KEY_FORMAT {
            return Err(bad(&format!("unknown format `{}`", file.format)));
        }
        if file.kdf.name != "argon2id" || file.cipher.name != "xchacha20poly1305" {
            return Err(bad("unsupported kdf or cipher"));
        }
        if !file.kdf.params_reasonable() {
            return Err(bad("argon2id parameters out of range"));
        }
        let salt = B64
            .decode(&file.kdf.salt)
            .map_err(|_| bad("salt is not base64"))?;
        let nonce = B64
            .decode(&file.cipher.nonce)
            .map_err(|_| bad("nonce is not base64"))?;
        if nonce.len() != 24 {
            return Err(bad("nonce must be 24 bytes"));
        }
        let ciphertext = B64
            .decode(&file.ciphertext)
            .map_err(|_| bad("ciphertext is not base64"))?;
        let kek = derive_kek(passphrase, &salt, &file.kdf)?;
        let cipher = XChaCha20Poly1305::new((&*kek).into());
        let aad = associated_data(file.algorithm, &file.key_id);
        let secret = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::WrongPassphrase {
                path: path.to_path_buf(),
            })?;
        let key = Self::from_secret_bytes(file.algorithm, &secret).ok_or_else(|| {
            KeyError::WrongPassphrase {
                path: path.to_path_buf(),
            }
        })?;
        if key.key_id() != file.key_id {
            return Err(KeyError::WrongPassphrase {
                path: path.to_path_buf(),
            });
        }
        Ok(key)
    }

    fn encrypt(&self, passphrase: &str) -> Result<EncryptedKeyFile, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let kdf = KdfParams::recommended(B64.encode(salt));
        let kek = derive_kek(passphrase, &salt, &kdf)?;
        let cipher = XChaCha20Poly1305::new((&*kek).into());
        let aad = associated_data(self.algorithm(), self.key_id());
        let secret = self.secret_bytes();
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &secret,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Kdf("encryption of the key failed".to_string()))?;
        Ok(EncryptedKeyFile {
            format: PRIVATE_KEY_FORMAT.to_string(),
            algorithm: self.algorithm(),
            key_id: self.key_id().to_string(),
            kdf,
            cipher: CipherParams {
                name: "xchacha20poly1305".to_string(),
                nonce: B64.encode(nonce),
            },
            ciphertext: B64.encode(ciphertext),
        })
    }
}

/// The on-disk form of an encrypted private key. The algorithm and key id are bound to the
/// ciphertext as associated data, so editing them makes decryption fail.
#[derive(Debug, Serialize, Deserialize)]
struct EncryptedKeyFile {
    format: String,
    algorithm: Algorithm,
    key_id: String,
    kdf: KdfParams,
    cipher: CipherParams,
    ciphertext: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KdfParams {
    name: String,
    /// Memory in KiB.
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
}

impl KdfParams {
    /// argon2id with 19 MiB, 2 passes, 1 lane (OWASP's baseline).
    fn recommended(salt: String) -> Self {
        KdfParams {
            name: "argon2id".to_string(),
            m_cost: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            salt,
        }
    }

    /// Bounds for parameters read from a file, so a crafted file cannot exhaust memory.
    fn params_reasonable(&self) -> bool {
        (8 * 1024..=1024 * 1024).contains(&self.m_cost)
            && (1..=16).contains(&self.t_cost)
            && (1..=8).contains(&self.p_cost)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CipherParams {
    name: String,
    nonce: String,
}

fn associated_data(algorithm: Algorithm, key_id: &str) -> Vec<u8> {
    format!("{PRIVATE_KEY_FORMAT} {algorithm} {key_id}").into_bytes()
}

fn derive_kek(
    passphrase: &str,
    salt: &[u8],
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut *out)
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(out)
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    // The umask may have narrowed the mode; make it exactly what was asked.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(())
}

/// Reads the signing key passphrase from `CUTOVER_KEY_PASSPHRASE`.
pub fn passphrase_from_env() -> Result<Zeroizing<String>, KeyError> {
    match std::env::var(crate::PASSPHRASE_ENV) {
        Ok(value) if !value.is_empty() => Ok(Zeroizing::new(value)),
        _ => Err(KeyError::EmptyPassphrase),
    }
}

/// Generates a key pair and writes `<dir>/<name>.key` (encrypted, 0600) and
/// `<dir>/<name>.pub` (PEM). Returns the two paths and the key id. Refuses to overwrite.
pub fn generate_to_files(
    dir: &Path,
    name: &str,
    algorithm: Algorithm,
    passphrase: &str,
) -> Result<(PathBuf, PathBuf, String), KeyError> {
    if passphrase.is_empty() {
        return Err(KeyError::EmptyPassphrase);
    }
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&private_path, &public_path] {
        if path.exists() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }
    fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate(algorithm);
    key.save_private(&private_path, passphrase)?;
    if let Err(e) = key.save_public(&public_path) {
        // Do not leave half a key pair behind.
        let _ = fs::remove_file(&private_path);
        return Err(e);
    }
    Ok((private_path, public_path, key.key_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unencrypted_private_keys_round_trip_and_refuse_open_modes() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let path = dir.path().join(format!("{alg}.key"));
            key.save_private_unencrypted(&path).unwrap();
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let loaded = KeyPair::load_private_unencrypted(&path).unwrap();
            assert_eq!(loaded.key_id(), key.key_id());
            assert!(key.public().verify(b"m", &loaded.sign(b"m")));
            assert!(matches!(
                key.save_private_unencrypted(&path),
                Err(KeyError::Exists { .. })
            ));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                KeyPair::load_private_unencrypted(&path),
                Err(KeyError::TooOpen { .. })
            ));
        }
        let junk = dir.path().join("junk.key");
        write_new_file(&junk, b"not a key", 0o600).unwrap();
        assert!(matches!(
            KeyPair::load_private_unencrypted(&junk),
            Err(KeyError::BadPrivateKeyFile { .. })
        ));
    }

    #[test]
    fn key_id_is_sha256_of_spki_der() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let expected = hex::encode(Sha256::digest(key.public().spki_der()));
            assert_eq!(key.key_id(), expected);
            assert_eq!(key.key_id().len(), 64);
        }
    }

    #[test]
    fn public_pem_round_trips() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let pem = key.public().to_pem();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
            let parsed = PublicKey::from_pem(&pem, "test").expect("parses");
            assert_eq!(&parsed, key.public());
            assert_eq!(parsed.algorithm(), alg);
        }
    }

    #[test]
    fn garbage_public_key_is_refused() {
        let err = PublicKey::from_pem("not a key", "keys/x.pub").unwrap_err();
        assert!(err.to_string().contains("keys/x.pub"), "{err}");
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let (private, public, key_id) =
                generate_to_files(dir.path(), alg.as_str(), alg, "correct horse").unwrap();
            let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "private key mode");
            let key = KeyPair::load_private(&private, "correct horse").unwrap();
            assert_eq!(key.key_id(), key_id);
            assert_eq!(key.algorithm(), alg);
            let pubkey = PublicKey::from_pem_file(&public).unwrap();
            assert_eq!(pubkey.key_id(), key_id);
            let sig = key.sign(b"message");
            assert!(pubkey.verify(b"message", &sig));
        }
    }

    #[test]
    fn wrong_passphrase_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _, _) =
            generate_to_files(dir.path(), "k", Algorithm::Ed25519, "right").unwrap();
        let err = KeyPair::load_private(&private, "wrong").unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot decrypt the signing key at {}: wrong passphrase or corrupted file",
                private.display()
            )
        );
    }

    #[test]
    fn edited_header_fails_decryption() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _, _) =
            generate_to_files(dir.path(), "k", Algorithm::EcdsaP256, "pw").unwrap();
        let text = fs::read_to_string(&private).unwrap();
        let mut file: EncryptedKeyFile = serde_json::from_str(&text).unwrap();
        file.key_id = "0".repeat(64);
        let edited = dir.path().join("edited.key");
        fs::write(&edited, serde_json::to_string(&file).unwrap()).unwrap();
        fs::set_permissions(&edited, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyPair::load_private(&edited, "pw").unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase { .. }), "{err:?}");
    }

    #[test]
    fn group_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _, _) = generate_to_files(dir.path(), "k", Algorithm::Ed25519, "pw").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o640)).unwrap();
        let err = KeyPair::load_private(&private, "pw").unwrap_err();
        assert!(
            matches!(err, KeyError::TooOpen { mode: 0o640, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn refuses_to_overwrite_and_empty_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        generate_to_files(dir.path(), "k", Algorithm::Ed25519, "pw").unwrap();
        let err = generate_to_files(dir.path(), "k", Algorithm::Ed25519, "pw").unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err:?}");
        let err = generate_to_files(dir.path(), "other", Algorithm::Ed25519, "").unwrap_err();
        assert!(matches!(err, KeyError::EmptyPassphrase), "{err:?}");
    }

    #[test]
    fn debug_does_not_print_key_material() {
        for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
            let key = KeyPair::generate(alg);
            let debug = format!("{key:?} {key:#?}");
            let secret = key.secret_bytes();
            // Canaries: the secret in hex and base64, and a distinctive slice of it.
            assert!(!debug.contains(&hex::encode(&*secret)), "{debug}");
            assert!(!debug.contains(&B64.encode(&*secret)), "{debug}");
            assert!(!debug.contains(&hex::encode(&secret[..8])), "{debug}");
            assert!(!debug.contains(&format!("{:?}", &secret[..4])), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
            assert!(debug.contains(key.key_id()), "{debug}");
        }
    }

    #[test]
    fn algorithm_names_parse() {
        assert_eq!("ed25519".parse::<Algorithm>().unwrap(), Algorithm::Ed25519);
        assert_eq!(
            "ecdsa-p256".parse::<Algorithm>().unwrap(),
            Algorithm::EcdsaP256
        );
        assert!("rsa".parse::<Algorithm>().is_err());
    }
}
