//! Secret values and their encryption at rest.
//!
//! **Envelope encryption.** Every stored version of a secret is sealed under its own
//! fresh 256-bit data key with XChaCha20-Poly1305; the associated data binds the
//! ciphertext to its environment, name and version ([`Aad`]), so a ciphertext moved to
//! another secret or version fails to open. The data key is itself sealed ("wrapped") by
//! the master key, with its own associated data. The master key never sits in the store:
//! it comes from a 0600 key file ([`MasterKey::from_file`]) or an environment variable
//! ([`MasterKey::from_env`]); a KMS joins through the [`KeyWrapper`] trait.
//! [`rewrap`] moves a data key to a new master key without touching the value's
//! ciphertext. A [`KeyCheck`] kept beside the secrets tells a wrong master key at start.
//!
//! **Values** are [`SecretValue`]: a `secrecy` box that zeroizes its memory when dropped
//! and prints as `[REDACTED]`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

pub use secrecy;

/// The environment variable holding the master key (base64 or hex of 32 bytes) for CI.
pub const KEY_ENV: &str = "CUTOVER_SECRETS_KEY";

/// Length of master and data keys, in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Largest secret value accepted (the API's body limit is 1 MiB, base64 inflates by 4/3).
pub const MAX_VALUE_LEN: usize = 512 * 1024;

const VALUE_DOMAIN: &[u8] = b"cutover-secret-value\0";
const WRAP_DOMAIN: &[u8] = b"cutover-secret-data-key\0";
const CHECK_DOMAIN: &[u8] = b"cutover-secrets-key-check\0";
const CHECK_PLAINTEXT: &[u8] = b"cutover secrets master key check";

/// Errors of this crate. Messages name the secret, never a value.
#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("secret {0} cannot be decrypted: its ciphertext or data key was altered, or it was sealed under another master key; set it again with `cutover secret set`")]
    Decrypt(String),
    #[error("the secrets master key does not match the store: it is not the key the secrets were sealed with; start with the right key (`--secrets-key`, or CUTOVER_SECRETS_KEY), or restore it from its backup")]
    WrongMasterKey,
    #[error("the secrets master key file {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    KeyFileOpen { path: PathBuf, mode: u32 },
    #[error("cannot read the secrets master key file {}: {source}", path.display())]
    KeyFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the secrets master key file {}: {source}", path.display())]
    KeyFileWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} does not hold a secrets master key: give base64 or hex of 32 random bytes (e.g. `openssl rand -base64 32`)")]
    KeyFormat { origin: String },
    #[error("invalid secret name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("the secret value is too large ({len} bytes); at most {MAX_VALUE_LEN} bytes")]
    TooLarge { len: usize },
    #[error("the secret value is empty; give a value on stdin or with --from-file")]
    Empty,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("the stored secret record is malformed: {0}")]
    Malformed(&'static str),
}

pub type Result<T, E = SecretsError> = std::result::Result<T, E>;

/// A secret value: zeroized when dropped, `[REDACTED]` when printed.
pub type SecretValue = SecretSlice<u8>;

/// A value from bytes (the vector is moved in, no copy is left behind).
pub fn secret_value(bytes: Vec<u8>) -> SecretValue {
    SecretSlice::from(bytes)
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut buf = Zeroizing::new([0u8; N]);
    getrandom::fill(buf.as_mut()).map_err(|e| SecretsError::Random(e.to_string()))?;
    Ok(buf)
}

/// Whether `name` may name a secret (it becomes a file name):
/// [`cutover_model::check_secret_name`].
pub fn check_name(name: &str) -> Result<()> {
    cutover_model::check_secret_name(name).map_err(|reason| SecretsError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// What a value's ciphertext is bound to: its environment, name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aad {
    pub env: String,
    pub name: String,
    pub version: u64,
}

impl Aad {
    pub fn new(env: &str, name: &str, version: u64) -> Aad {
        Aad {
            env: env.to_string(),
            name: name.to_string(),
            version,
        }
    }

    /// Length-prefixed encoding, so no two triples share one.
    fn bytes(&self, domain: &[u8]) -> Vec<u8> {
        let mut out = domain.to_vec();
        for part in [self.env.as_bytes(), self.name.as_bytes()] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }

    /// `env/name@version`, how errors name it.
    pub fn label(&self) -> String {
        format!("{}/{} version {}", self.env, self.name, self.version)
    }
}

/// Bytes stored as base64 in JSON.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// A data key sealed by a master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Which master key wrapped it ([`KeyWrapper::key_id`]).
    pub key_id: String,
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// One sealed value: its ciphertext under its data key, and the wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub data_key: WrappedKey,
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// Whatever wraps data keys: the local [`MasterKey`], or (later) a KMS key.
pub trait KeyWrapper: Send + Sync {
    /// A short public id of the key (never derived in a way that helps guess it).
    fn key_id(&self) -> String;
    /// Seal `data_key` bound to `aad`.
    fn wrap(&self, data_key: &[u8; KEY_LEN], aad: &[u8]) -> Result<WrappedKey>;
    /// Open a wrapped key; `None` when it does not open (wrong key, altered bytes).
    fn unwrap_key(&self, wrapped: &WrappedKey, aad: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>>;
}

/// A master key held in memory (zeroized on drop, never printed).
pub struct MasterKey {
    key: SecretBox<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.key_id())
    }
}

fn seal_with(key: &[u8; KEY_LEN], msg: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let nonce = random::<NONCE_LEN>()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(nonce.as_ref()), Payload { msg, aad })
        .map_err(|_| SecretsError::Malformed("encryption failed"))?;
    Ok((nonce.to_vec(), ciphertext))
}

fn open_with(key: &[u8; KEY_LEN], nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<MasterKey> {
        let bytes = random::<KEY_LEN>()?;
        Ok(MasterKey::from_bytes(*bytes))
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey {
            key: SecretBox::new(Box::new(bytes)),
        }
    }

    /// Parse base64 or hex of 32 bytes (surrounding whitespace ignored).
    pub fn parse(text: &str, origin: &str) -> Result<MasterKey> {
        let text = text.trim();
        let decoded: Option<Zeroizing<Vec<u8>>> = if text.len() == 2 * KEY_LEN {
            hex::decode(text).ok().map(Zeroizing::new)
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .map(Zeroizing::new)
        };
        match decoded {
            Some(bytes) if bytes.len() == KEY_LEN => {
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(&bytes);
                let master = MasterKey::from_bytes(key);
                zeroize::Zeroize::zeroize(&mut key);
                Ok(master)
            }
            _ => Err(SecretsError::KeyFormat {
                origin: origin.to_string(),
            }),
        }
    }

    /// Read a key file: it must not be readable by group or others.
    pub fn from_file(path: &Path) -> Result<MasterKey> {
        let read = |source| SecretsError::KeyFileRead {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::KeyFileOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read)?);
        MasterKey::parse(&text, &format!("the key file {}", path.display()))
    }

    /// The key in `CUTOVER_SECRETS_KEY`, if set.
    pub fn from_env() -> Result<Option<MasterKey>> {
        match std::env::var(KEY_ENV) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                MasterKey::parse(&text, KEY_ENV).map(Some)
            }
            Err(_) => Ok(None),
        }
    }

    /// Write this key to `path` (base64, mode 0600, created new: an existing file is
    /// never replaced).
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let write = |source| SecretsError::KeyFileWrite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write)?;
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write)?;
        let text = Zeroizing::new(format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.key.expose_secret())
        ));
        file.write_all(text.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        Ok(())
    }

    /// The key at `path`, made (0600, in a 0700 directory) when missing.
    pub fn load_or_create(path: &Path) -> Result<MasterKey> {
        if !path.exists() {
            let key = MasterKey::generate()?;
            match key.write_new_file(path) {
                Ok(()) => return Ok(key),
                // Made by a racing process meanwhile: read theirs.
                Err(SecretsError::KeyFileWrite { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        MasterKey::from_file(path)
    }

    /// The key as base64 (to hand a new key to the control plane at rewrap).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.key.expose_secret()))
    }
}

impl KeyWrapper for MasterKey {
    fn key_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"cutover-secrets-key-id\0");
        h.update(self.key.expose_secret());
        hex::encode(&h.finalize()[..6])
    }

    fn wrap(&self, data_key: &[u8; KEY_LEN], aad: &[u8]) -> Result<WrappedKey> {
        let (nonce, ciphertext) = seal_with(self.key.expose_secret(), data_key, aad)?;
        Ok(WrappedKey {
            key_id: self.key_id(),
            nonce,
            ciphertext,
        })
    }

    fn unwrap_key(&self, wrapped: &WrappedKey, aad: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let plain = Zeroizing::new(open_with(
            self.key.expose_secret(),
            &wrapped.nonce,
            &wrapped.ciphertext,
            aad,
        )?);
        if plain.len() != KEY_LEN {
            return None;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&plain);
        Some(key)
    }
}

/// Check a value's size before it is sealed.
pub fn check_value(value: &SecretValue) -> Result<()> {
    let len = value.expose_secret().len();
    if len == 0 {
        return Err(SecretsError::Empty);
    }
    if len > MAX_VALUE_LEN {
        return Err(SecretsError::TooLarge { len });
    }
    Ok(())
}

/// Seal `value` for `aad` under a fresh data key wrapped by `master`.
pub fn seal(master: &dyn KeyWrapper, aad: &Aad, value: &SecretValue) -> Result<Sealed> {
    check_value(value)?;
    let data_key = random::<KEY_LEN>()?;
    let (nonce, ciphertext) =
        seal_with(&data_key, value.expose_secret(), &aad.bytes(VALUE_DOMAIN))?;
    let wrapped = master.wrap(&data_key, &aad.bytes(WRAP_DOMAIN))?;
    Ok(Sealed {
        data_key: wrapped,
        nonce,
        ciphertext,
    })
}

/// Open a sealed value; every failure is [`SecretsError::Decrypt`] naming the secret
/// (never a partial value: the AEAD authenticates the whole ciphertext first).
pub fn open(master: &dyn KeyWrapper, aad: &Aad, sealed: &Sealed) -> Result<SecretValue> {
    let fail = || SecretsError::Decrypt(aad.label());
    let data_key = master
        .unwrap_key(&sealed.data_key, &aad.bytes(WRAP_DOMAIN))
        .ok_or_else(fail)?;
    let plain = open_with(
        &data_key,
        &sealed.nonce,
        &sealed.ciphertext,
        &aad.bytes(VALUE_DOMAIN),
    )
    .ok_or_else(fail)?;
    Ok(secret_value(plain))
}

/// The same value's data key wrapped by `new` instead of `old`; the value's ciphertext is
/// kept as it is.
pub fn rewrap(
    old: &dyn KeyWrapper,
    new: &dyn KeyWrapper,
    aad: &Aad,
    sealed: &Sealed,
) -> Result<Sealed> {
    let wrap_aad = aad.bytes(WRAP_DOMAIN);
    let data_key = old
        .unwrap_key(&sealed.data_key, &wrap_aad)
        .ok_or_else(|| SecretsError::Decrypt(aad.label()))?;
    Ok(Sealed {
        data_key: new.wrap(&data_key, &wrap_aad)?,
        nonce: sealed.nonce.clone(),
        ciphertext: sealed.ciphertext.clone(),
    })
}

/// A value sealed by the master key alone, kept beside the secrets: a key that cannot
/// open it is not the store's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCheck {
    pub key_id: String,
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl KeyCheck {
    /// The check value of `master`.
    pub fn new(master: &dyn KeyWrapper) -> Result<KeyCheck> {
        // The check wraps a constant through the wrapper, so a KMS key checks the same way.
        let mut constant = [0u8; KEY_LEN];
        constant.copy_from_slice(&Sha256::digest(CHECK_PLAINTEXT));
        let wrapped = master.wrap(&constant, CHECK_DOMAIN)?;
        Ok(KeyCheck {
            key_id: wrapped.key_id,
            nonce: wrapped.nonce,
            ciphertext: wrapped.ciphertext,
        })
    }

    /// `Ok` when `master` is the key this check was made with.
    pub fn verify(&self, master: &dyn KeyWrapper) -> Result<()> {
        let wrapped = WrappedKey {
            key_id: self.key_id.clone(),
            nonce: self.nonce.clone(),
            ciphertext: self.ciphertext.clone(),
        };
        let opened = master
            .unwrap_key(&wrapped, CHECK_DOMAIN)
            .ok_or(SecretsError::WrongMasterKey)?;
        if opened.as_slice() != Sha256::digest(CHECK_PLAINTEXT).as_slice() {
            return Err(SecretsError::WrongMasterKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
