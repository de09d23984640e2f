//! Secrets injected as files: each value is written to a tmpfs on the host (never to a
//! disk), in a 0700 directory per container, as a 0400 file owned by the container's
//! resolved user, and bind-mounted read-only at its path in the container
//! (`/run/secrets/<name>` by default). `docker inspect` shows the mount, never a value.
//! The directory goes with the container: removed by `remove`, and swept at start for
//! containers that no longer exist.
//!
//! `as_env = true` also sets an environment variable, which `docker inspect` and every
//! process of the container can read: the spec must ask for it, and policy flags it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_model::{InstanceSpec, ProviderError, SecretSource};
use secrecy::{ExposeSecret, SecretSlice};

/// `statfs(2)`'s magic number of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where secret files go and where their values come from.
#[derive(Clone)]
pub struct SecretFiles {
    source: Arc<dyn SecretSource>,
    base: PathBuf,
}

/// Why secret files cannot be kept somewhere.
#[derive(Debug, thiserror::Error)]
pub enum SecretFilesError {
    #[error("{} is not on a tmpfs, so secret values would reach a disk; give a directory on a tmpfs (e.g. under /dev/shm)", .0.display())]
    NotTmpfs(PathBuf),
    #[error("cannot prepare the secrets directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `path` lies on a tmpfs.
pub fn is_tmpfs(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a writable statfs struct that
    // outlives the call.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(buf.f_type as i64 == TMPFS_MAGIC)
}

impl std::fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFiles")
            .field("base", &self.base)
            .finish()
    }
}

impl SecretFiles {
    /// Keep secret files under `base` (made 0700; it must be on a tmpfs).
    pub fn new(
        source: Arc<dyn SecretSource>,
        base: PathBuf,
    ) -> Result<SecretFiles, SecretFilesError> {
        let io = |source| SecretFilesError::Io {
            path: base.clone(),
            source,
        };
        std::fs::create_dir_all(&base).map_err(io)?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        if !is_tmpfs(&base).map_err(io)? {
            return Err(SecretFilesError::NotTmpfs(base));
        }
        Ok(SecretFiles { source, base })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The directory of `container`'s secret files.
    pub fn dir_of(&self, container: &str) -> PathBuf {
        self.base.join(container)
    }

    /// The values of `spec`'s secrets, by mount name (each fetch is audited by the source).
    pub async fn resolve(
        &self,
        spec: &InstanceSpec,
    ) -> Result<Vec<(String, SecretSlice<u8>)>, ProviderError> {
        let mut out = Vec::new();
        for (name, mount) in &spec.container.secrets {
            let pin = mount.pin.as_ref().ok_or_else(|| {
                ProviderError::permanent(format!(
                    "secret {name} of instance {} was not pinned to a stored version when planned; plan the deployment again",
                    spec.name
                ))
            })?;
            out.push((name.clone(), self.source.resolve(spec, name, pin).await?));
        }
        Ok(out)
    }

    /// Bind mounts (`host:container:ro`) of `spec`'s secret files.
    pub fn binds(&self, spec: &InstanceSpec) -> Vec<String> {
        let dir = self.dir_of(&spec.name);
        spec.container
            .secrets
            .iter()
            .map(|(name, mount)| format!("{}:{}:ro", dir.join(name).display(), mount.path))
            .collect()
    }

    /// Empty files where `container`'s secret files go, made before the container is
    /// created (the Engine would make a missing bind source a directory); [`Self::write`]
    /// replaces them with the values once the container's user is known.
    pub fn reserve(&self, spec: &InstanceSpec) -> Result<(), ProviderError> {
        let dir = self.dir_of(&spec.name);
        let fail = |e: std::io::Error| {
            ProviderError::permanent(format!(
                "cannot prepare the secret files of container {} in {}: {e}",
                spec.name,
                dir.display()
            ))
        };
        std::fs::create_dir_all(&dir).map_err(fail)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        for name in spec.container.secrets.keys() {
            let path = dir.join(name);
            if path.is_dir() {
                std::fs::remove_dir(&path).map_err(fail)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o400)
                .open(&path)
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Write the files of `container` (0400, owned by `uid:gid`, in a 0700 directory).
    pub fn write(
        &self,
        container: &str,
        values: &[(String, SecretSlice<u8>)],
        uid: u32,
        gid: u32,
    ) -> Result<(), ProviderError> {
        let dir = self.dir_of(container);
        let fail = |what: &str, e: std::io::Error| {
            ProviderError::permanent(format!(
                "cannot {what} the secret files of container {container} in {}: {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail("make the directory of", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail("protect the directory of", e))?;
        for (name, value) in values {
            let path = dir.join(name);
            // A file of an earlier attempt is replaced (its mode forbids writing to it).
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail("replace", e)),
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(|e| fail("write", e))?;
            file.write_all(value.expose_secret())
                .map_err(|e| fail("write", e))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| fail("give the container's user", e))?;
        }
        Ok(())
    }

    /// The values in `container`'s files (for the diagnosis to redact; 4+ characters).
    pub(crate) fn values_of(&self, container: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir_of(container)) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path()).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .filter(|v| v.trim().len() >= 4)
            .flat_map(|v| {
                let trimmed = v.trim().to_string();
                if trimmed == v {
                    vec![v]
                } else {
                    vec![v, trimmed]
                }
            })
            .collect()
    }

    /// Remove `container`'s files (missing ones are fine).
    pub fn remove(&self, container: &str) {
        let dir = self.dir_of(container);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove secret files")
            }
        }
    }

    /// Directories of containers not in `existing`: what a sweep removes.
    pub fn orphans(&self, existing: &std::collections::BTreeSet<String>) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !existing.contains(name))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use cutover_model::SecretPin;

    struct Fixed;

    #[async_trait]
    impl SecretSource for Fixed {
        async fn resolve(
            &self,
            _instance: &InstanceSpec,
            _mount: &str,
            _pin: &SecretPin,
        ) -> Result<SecretSlice<u8>, ProviderError> {
            Ok(SecretSlice::from(b"value".to_vec()))
        }
    }

    fn shm() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir_in("/dev/shm").ok()?;
        is_tmpfs(dir.path()).ok()?.then_some(dir)
    }

    #[test]
    fn a_directory_on_a_disk_is_refused() {
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(!is_tmpfs(disk.path()).unwrap());
        let err =
            SecretFiles::new(Arc::new(Fixed), disk.path().join("secrets")).expect_err("refused");
        assert!(err.to_string().contains("not on a tmpfs"), "{err}");
    }

    #[test]
    fn files_are_0400_in_a_0700_directory_and_go_with_the_container() {
        let Some(shm) = shm() else {
            assert!(
                std::env::var("CI").is_err(),
                "/dev/shm is not a tmpfs on CI"
            );
            return;
        };
        let files = SecretFiles::new(Arc::new(Fixed), shm.path().join("s")).unwrap();
        let uid = unsafe { libc::getuid() };
        let gid = unsafe { libc::getgid() };
        let mut spec: InstanceSpec = serde_json::from_value(serde_json::json!({
            "name": "c-1", "app": "a", "env": "e", "release": "r", "deployment_id": "d",
            "replica": 0, "image": {"type": "step", "step": "build"},
            "container": serde_json::to_value(cutover_model::ContainerSpec::default()).unwrap(),
            "labels": {},
        }))
        .unwrap();
        spec.container.secrets.insert(
            "db".to_string(),
            cutover_model::SecretMount {
                source: "secret://db".to_string(),
                path: "/run/secrets/db".to_string(),
                as_env: false,
                pin: Some(SecretPin {
                    name: "db".to_string(),
                    version: 1,
                }),
            },
        );
        // Reserved before the container exists, so the Engine never makes a directory there.
        files.reserve(&spec).unwrap();
        assert!(files.dir_of("c-1").join("db").is_file());
        assert_eq!(
            files.binds(&spec),
            vec![format!(
                "{}:/run/secrets/db:ro",
                files.dir_of("c-1").join("db").display()
            )]
        );
        let values = vec![("db".to_string(), SecretSlice::from(b"one".to_vec()))];
        files.write("c-1", &values, uid, gid).unwrap();
        // A second attempt replaces the read-only file.
        let values = vec![("db".to_string(), SecretSlice::from(b"two".to_vec()))];
        files.write("c-1", &values, uid, gid).unwrap();
        let dir = files.dir_of("c-1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("db")), 0o400);
        assert_eq!(std::fs::read(dir.join("db")).unwrap(), b"two");
        // Too short to redact safely: left out; longer values (and their trimmed form) in.
        assert!(files.values_of("c-1").is_empty());
        let values = vec![(
            "db".to_string(),
            SecretSlice::from(b"s3cret-value\n".to_vec()),
        )];
        files.write("c-1", &values, uid, gid).unwrap();
        assert_eq!(
            files.values_of("c-1"),
            vec!["s3cret-value\n".to_string(), "s3cret-value".to_string()]
        );
        let existing = std::collections::BTreeSet::from(["c-2".to_string()]);
        assert_eq!(files.orphans(&existing), vec!["c-1".to_string()]);
        files.remove("c-1");
        assert!(!dir.exists());
        assert!(files.orphans(&existing).is_empty());
    }
}
