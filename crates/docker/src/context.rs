//! Build contexts: the tar archive the Engine's build API reads.
//!
//! A directory context honours a simple `.dockerignore` (path prefixes and globs with `*`,
//! `?` and `**`, `!` to re-include, last match wins) and always leaves out `.git/` and
//! `.cutover/` anywhere and `target/` at the top of the context. Archives are deterministic:
//! sorted entries, zero timestamps and owners.

use std::io;
use std::path::{Component, Path};

/// Directory names never sent, at any depth.
const ALWAYS_SKIPPED_ANYWHERE: &[&str] = &[".git", ".cutover"];
/// Directory names never sent from the top of the context.
const ALWAYS_SKIPPED_AT_TOP: &[&str] = &["target"];

/// Rules read from a `.dockerignore`.
#[derive(Debug, Default, Clone)]
pub(crate) struct IgnoreRules {
    /// (re-include?, pattern split on `/`)
    rules: Vec<(bool, Vec<String>)>,
}

impl IgnoreRules {
    pub(crate) fn parse(text: &str) -> IgnoreRules {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segments: Vec<String> = pattern
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            if !segments.is_empty() {
                rules.push((include, segments));
            }
        }
        IgnoreRules { rules }
    }

    /// Whether `relative` (a `/`-separated path inside the context) is left out.
    pub(crate) fn is_ignored(&self, relative: &str) -> bool {
        let path: Vec<&str> = relative.split('/').filter(|s| !s.is_empty()).collect();
        let mut ignored = false;
        for (include, pattern) in &self.rules {
            // A pattern matching a parent directory matches everything below it.
            let hit = (1..=path.len()).any(|len| match_segments(pattern, &path[..len]));
            if hit {
                ignored = !include;
            }
        }
        ignored
    }
}

fn match_segments(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                glob_segment(first.as_bytes(), segment.as_bytes())
                    && match_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one path segment.
fn glob_segment(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_segment(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob_segment(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob_segment(rest, &text[1..]),
    }
}

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
        Ok(text) => IgnoreRules::parse(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(e),
    };
    let dockerfile = normalize(dockerfile);
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    walk(context, "", &ignore, &dockerfile, &mut builder)?;
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
        let needed = relative == dockerfile || dockerfile.starts_with(&format!("{relative}/"));
        if ignore.is_ignored(&relative) && !needed {
            continue;
        }
        if file_type.is_dir() {
            builder.append_dir(&relative, entry.path())?;
            walk(&entry.path(), &relative, ignore, dockerfile, builder)?;
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
    fn ignore_rules_match_prefixes_globs_and_negations() {
        let rules = IgnoreRules::parse(
            "# comment\n\nnode_modules\n*.log\n/docs/\n**/secret?.txt\nbuild/*.o\n!keep.log\n",
        );
        assert!(rules.is_ignored("node_modules"));
        assert!(rules.is_ignored("node_modules/a/b.js"));
        assert!(rules.is_ignored("error.log"));
        assert!(
            !rules.is_ignored("sub/error.log"),
            "* does not cross directories"
        );
        assert!(!rules.is_ignored("keep.log"), "! re-includes");
        assert!(rules.is_ignored("docs/readme.md"));
        assert!(rules.is_ignored("a/b/secret1.txt"));
        assert!(rules.is_ignored("secret2.txt"));
        assert!(!rules.is_ignored("secret10.txt"));
        assert!(rules.is_ignored("build/x.o"));
        assert!(!rules.is_ignored("build/x.c"));
        assert!(!rules.is_ignored("src/main.rs"));
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
