//! Build contexts: the tar archive the Engine's build API reads.
//!
//! A directory context honours `.dockerignore` as Docker does ([`crate::dockerignore`]; the
//! Dockerfile and `.dockerignore` are always sent and the Engine leaves them out of the
//! context when they are excluded) and
//! always leaves out `.git/` and `.cutover/` anywhere and `target/` at the top of the
//! context. Archives are deterministic: sorted entries, zero timestamps and owners.

use std::io;
use std::path::{Component, Path};

use crate::dockerignore::{IgnoreRules, ParentMatches};

/// Directory names never sent, at any depth.
const ALWAYS_SKIPPED_ANYWHERE: &[&str] = &[".git", ".cutover"];
/// Directory names never sent from the top of the context.
const ALWAYS_SKIPPED_AT_TOP: &[&str] = &["target"];

/// Check that `dockerfile` is a plain relative path inside the context.
pub(crate) fn check_relative(dockerfile: &str) -> Result<(), String> {
    let path = Path::new(dockerfile);
    if dockerfile.is_empty() {
        return Err("the dockerfile path is empty".to_string());
    }
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(format!(
                    "the dockerfile path {dockerfile} must be relative to the context and stay inside it"
                ))
            }
        }
    }
    Ok(())
}

/// Tar the directory `context` for the build API; `dockerfile` (relative) is always sent.
pub(crate) fn tar_directory(context: &Path, dockerfile: &str) -> io::Result<Vec<u8>> {
    let ignore = match std::fs::read_to_string(context.join(".dockerignore")) {
        Ok(text) => IgnoreRules::parse(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(e),
    };
    let dockerfile = normalize(dockerfile);
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    walk(
        context,
        "",
        &ignore,
        &ParentMatches::default(),
        &dockerfile,
        &mut builder,
    )?;
    builder.into_inner()
}

fn normalize(relative: &str) -> String {
    relative
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn walk(
    dir: &Path,
    prefix: &str,
    ignore: &IgnoreRules,
    parent: &ParentMatches,
    dockerfile: &str,
    builder: &mut tar::Builder<Vec<u8>>,
) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "file name {:?} in the build context is not utf-8",
                    entry.path()
                ),
            ));
        };
        let relative = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry.file_type()?;
        let always_skipped = file_type.is_dir()
            && (ALWAYS_SKIPPED_ANYWHERE.contains(&name)
                || (prefix.is_empty() && ALWAYS_SKIPPED_AT_TOP.contains(&name)));
        if always_skipped {
            continue;
        }
        // The Dockerfile and `.dockerignore` are always sent, as the docker CLI sends them:
        // the Engine reads both and then drops them from the context when `.dockerignore`
        // excludes them.
        let needed = relative == dockerfile
            || relative == ".dockerignore"
            || dockerfile.starts_with(&format!("{relative}/"));
        let (excluded, matches) = ignore.matches(&relative, parent);
        if excluded && !needed {
            // As Docker: an excluded directory is entered (but not sent itself) only when
            // an exception could re-include something inside it.
            if file_type.is_dir() && ignore.must_enter(&relative) {
                walk(
                    &entry.path(),
                    &relative,
                    ignore,
                    &matches,
                    dockerfile,
                    builder,
                )?;
            }
            continue;
        }
        if file_type.is_dir() {
            builder.append_dir(&relative, entry.path())?;
            walk(
                &entry.path(),
                &relative,
                ignore,
                &matches,
                dockerfile,
                builder,
            )?;
        } else {
            builder.append_path_with_name(entry.path(), &relative)?;
        }
    }
    Ok(())
}

/// A context of exactly two files: `app` (the binary, mode 0755) and `Dockerfile`.
pub(crate) fn tar_binary_image(binary: &[u8], dockerfile: &str) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, mode, data) in [
        ("Dockerfile", 0o644, dockerfile.as_bytes()),
        ("app", 0o755, binary),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append_data(&mut header, name, data)?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn dockerfile_paths_must_stay_inside_the_context() {
        assert!(check_relative("Dockerfile").is_ok());
        assert!(check_relative("./docker/Dockerfile.prod").is_ok());
        assert!(check_relative("../Dockerfile").is_err());
        assert!(check_relative("/etc/Dockerfile").is_err());
        assert!(check_relative("").is_err());
    }

    #[test]
    fn directory_contexts_skip_ignored_and_always_skipped_paths() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for path in [
            "Dockerfile",
            "src/main.rs",
            "target/release/app",
            ".git/HEAD",
            "sub/.git/config",
            ".cutover/state",
            "sub/target/kept",
            "notes.log",
        ] {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, path).expect("write");
        }
        std::fs::write(root.join(".dockerignore"), "*.log\nDockerfile\n").expect("write");
        let archive = tar_directory(root, "Dockerfile").expect("tar");
        assert_eq!(
            names(&archive),
            vec![
                ".dockerignore",
                "Dockerfile",
                "src",
                "src/main.rs",
                "sub",
                "sub/target",
                "sub/target/kept",
            ]
        );
        let again = tar_directory(root, "Dockerfile").expect("tar");
        assert_eq!(archive, again, "archives are deterministic");
    }

    #[test]
    fn binary_contexts_hold_an_executable_app_and_the_dockerfile() {
        let archive = tar_binary_image(b"\x7fELF...", "FROM scratch\n").expect("tar");
        let mut archive = tar::Archive::new(&archive[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().to_string();
            seen.push((path, entry.header().mode().expect("mode")));
        }
        assert_eq!(
            seen,
            vec![
                ("Dockerfile".to_string(), 0o644),
                ("app".to_string(), 0o755)
            ]
        );
    }
}
