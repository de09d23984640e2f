//! Project roots: the directories on the control plane's machine that specs may be read
//! from. A caller names a spec by path (`spec_path`) or sends its text with the directory
//! its relative paths resolve against (`base_dir`); either must lie inside a registered
//! root, checked lexically before anything is read (so a refusal says nothing about what
//! exists outside the roots) and again once symlinks are resolved. Every path the spec
//! names (build context or manifest, Dockerfile, keys, gate files, `plans/`) must stay in
//! the same root.
//!
//! Admins register roots (`cutover projects add`); a deploy or plan by the socket's own
//! admin registers its spec's directory itself (audited), so the first local deploy needs
//! no setup. Tokens never register anything.

use std::path::{Component, Path, PathBuf};

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::json;

use cutover_model::{now_ms, BuildSpec, Spec};
use cutover_store::TypedTree;

use crate::api::{ErrorBody, ProjectPath, ProjectRoot, SpecSource};
use crate::auth::{Principal, Role};
use crate::http::ApiJson;
use crate::{audit, ControlPlane, ServerError};

const ROOTS_TREE: &str = "project_roots";

fn roots_tree(cp: &ControlPlane) -> Result<TypedTree<ProjectRoot>, ServerError> {
    Ok(cp.store.typed_tree(ROOTS_TREE)?)
}

/// Registered roots, by path.
pub fn list(cp: &ControlPlane) -> Result<Vec<ProjectRoot>, ServerError> {
    Ok(roots_tree(cp)?
        .scan_prefix("")?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// `path` with `.` and `..` resolved lexically (no file system access).
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Register `path` (an existing absolute directory, canonicalized) as a project root.
pub fn add(
    cp: &ControlPlane,
    who: &Principal,
    path: &str,
    automatic: bool,
) -> Result<ProjectRoot, ServerError> {
    let given = Path::new(path);
    if !given.is_absolute() {
        return Err(ServerError::BadRequest(format!(
            "path: {path} is not absolute; give the project's absolute directory on the control plane's machine"
        )));
    }
    let canonical = std::fs::canonicalize(given).map_err(|e| {
        ServerError::BadRequest(format!(
            "path: cannot resolve {path}: {e}; give an existing directory"
        ))
    })?;
    if !canonical.is_dir() {
        return Err(ServerError::BadRequest(format!(
            "path: {} is not a directory; give the project's directory",
            canonical.display()
        )));
    }
    if canonical.parent().is_none() {
        return Err(ServerError::BadRequest(
            "path: the file system's root cannot be a project root; give the project's own directory".to_string(),
        ));
    }
    let text = canonical.to_string_lossy().into_owned();
    let root = ProjectRoot {
        path: text.clone(),
        added_by: who.person.clone(),
        added_at_ms: now_ms(),
        automatic,
    };
    let tree = roots_tree(cp)?;
    let previous = tree.get(&text)?;
    tree.insert(&text, &root)?;
    cp.store.flush()?;
    let audited = audit::record(
        &cp.store,
        &who.name,
        "project.add",
        &text,
        json!({"automatic": automatic, "person": who.person}),
    );
    if let Err(e) = audited {
        // A root the audit log cannot record admits nothing: as it was before.
        match &previous {
            Some(before) => tree.insert(&text, before)?,
            None => {
                tree.remove(&text)?;
            }
        }
        cp.store.flush()?;
        return Err(match e {
            ServerError::AuditSink(_) => {
                ServerError::AuditSink(format!("project root {text} was not registered"))
            }
            other => other,
        });
    }
    Ok(root)
}

/// Unregister the root `path` (as listed, or a path that resolves to it).
pub fn remove(cp: &ControlPlane, who: &Principal, path: &str) -> Result<ProjectRoot, ServerError> {
    let tree = roots_tree(cp)?;
    let key = match tree.get(path)? {
        Some(_) => path.to_string(),
        None => std::fs::canonicalize(path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| path.to_string()),
    };
    let removed = tree.remove(&key)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "path: {path} is not a registered project root; `cutover projects list` shows them"
        ))
    })?;
    cp.store.flush()?;
    // A removal stands even when it cannot be audited (it only narrows what specs may
    // name); the error says so.
    audit::record(
        &cp.store,
        &who.name,
        "project.remove",
        &key,
        json!({"person": who.person}),
    )
    .map_err(|e| match e {
        ServerError::AuditSink(_) => ServerError::AuditSink(format!(
            "project root {key} is removed, but the removal is not in the audit log's sink"
        )),
        other => other,
    })?;
    Ok(removed)
}

/// The registered root `path` lies in (the innermost), if any.
fn root_of(roots: &[ProjectRoot], path: &Path) -> Option<PathBuf> {
    roots
        .iter()
        .map(|r| PathBuf::from(&r.path))
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.components().count())
}

/// A spec source whose paths were checked: canonical, inside `root`.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub source: SpecSource,
    /// The canonical `deploy.toml` (with `spec_path`), or where one would live in
    /// `base_dir` (with `spec`).
    pub file: PathBuf,
    pub text: Option<String>,
    /// The project root it lies in; none for a spec sent without `base_dir`, which names
    /// no file.
    pub root: Option<PathBuf>,
}

fn outside(field: &str, path: &str) -> ServerError {
    ServerError::Forbidden(format!(
        "{field}: {path} is not inside a registered project root; an admin registers the project's directory with `cutover projects add <dir>`"
    ))
}

/// Check where `source` points before anything of it is read: its path must be absolute
/// and lie inside a registered root, lexically and once resolved. A socket admin's source
/// outside every root registers its directory first.
pub fn admit(
    cp: &ControlPlane,
    who: &Principal,
    source: &SpecSource,
) -> Result<Admitted, ServerError> {
    let (field, given, is_file) = match (&source.spec_path, &source.spec, &source.base_dir) {
        (Some(path), None, None) => ("spec_path", path.clone(), true),
        (None, Some(_), Some(base)) => ("base_dir", base.clone(), false),
        (None, Some(text), None) => return admit_without_base(text),
        (Some(_), Some(_), _) | (Some(_), None, Some(_)) => {
            return Err(ServerError::BadRequest(
                "spec_path: give either spec_path, or spec with base_dir, not both".to_string(),
            ))
        }
        (None, None, _) => {
            return Err(ServerError::BadRequest(
                "spec_path: a spec is required: give spec_path, or spec with base_dir".to_string(),
            ))
        }
    };
    let path = Path::new(&given);
    if !path.is_absolute() {
        return Err(ServerError::BadRequest(format!(
            "{field}: {given} is not absolute; give an absolute path on the control plane's machine"
        )));
    }
    let mut roots = list(cp)?;
    if root_of(&roots, &lexical(path)).is_none() {
        if !(who.socket_peer && who.can(Role::Admin, None)) {
            return Err(outside(field, &given));
        }
        // The local admin's own project: register it (the path may be read by them).
        let dir = if is_file {
            lexical(path)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        } else {
            lexical(path)
        };
        add(cp, who, &dir.to_string_lossy(), true)?;
        roots = list(cp)?;
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| ServerError::BadRequest(format!("{field}: cannot resolve {given}: {e}")))?;
    let Some(root) = root_of(&roots, &canonical) else {
        return Err(ServerError::Forbidden(format!(
            "{field}: {given} resolves (through a symbolic link) to {}, outside every registered project root",
            canonical.display()
        )));
    };
    let canonical_text = canonical.to_string_lossy().into_owned();
    Ok(if is_file {
        Admitted {
            source: SpecSource {
                spec_path: Some(canonical_text),
                spec: None,
                base_dir: None,
            },
            file: canonical,
            text: None,
            root: Some(root),
        }
    } else {
        Admitted {
            source: SpecSource {
                spec_path: None,
                spec: source.spec.clone(),
                base_dir: Some(canonical_text),
            },
            file: canonical.join("deploy.toml"),
            text: source.spec.clone(),
            root: Some(root),
        }
    })
}

/// Where a spec sent without `base_dir` is parsed as if it lived: a path under which no
/// file can exist (`/dev/null` is no directory), so nothing it could name resolves to a
/// file of the control plane, and `plans/` falls back to the built-in strategies.
const NO_BASE_FILE: &str = "/dev/null/deploy.toml";

/// Whether `base_dir` is that of a spec sent without one: no directory of this machine.
pub fn is_without_base(base_dir: &Path) -> bool {
    Path::new(NO_BASE_FILE).parent() == Some(base_dir)
}

/// How a spec sent without `base_dir` is named in messages.
const NO_BASE_NAME: &str = "deploy.toml (sent without base_dir)";

/// A spec sent as text without `base_dir`: admitted only when it names no file of the
/// control plane's machine (a prebuilt image), checked on its text before anything is
/// parsed or read. A spec that names one is refused naming the field.
fn admit_without_base(text: &str) -> Result<Admitted, ServerError> {
    if let Some((field, value)) = files_named_by_text(text).into_iter().next() {
        return Err(names_a_file(&field, &value));
    }
    Ok(Admitted {
        source: SpecSource {
            spec_path: None,
            spec: Some(text.to_string()),
            base_dir: None,
        },
        file: PathBuf::from(NO_BASE_FILE),
        text: Some(text.to_string()),
        root: None,
    })
}

fn names_a_file(field: &str, value: &str) -> ServerError {
    ServerError::BadRequest(format!(
        "{field}: names a file ({value}) but the spec came without base_dir, so no directory of the control plane's machine is its project: build and sign in CI and deploy the image by reference, or send base_dir (`--base-dir DIR`) naming the project's directory inside a registered project root"
    ))
}

/// The fields of a spec's text that name files, the build's source included: a `[build]`
/// section builds from a directory or a manifest unless it names a prebuilt image.
fn files_named_by_text(text: &str) -> Vec<(String, String)> {
    let mut named = named_paths(text);
    if let Ok(doc) = text.parse::<toml::Table>() {
        if let Some(build) = doc.get("build").and_then(toml::Value::as_table) {
            let prebuilt = build.contains_key("image");
            let source_named = named
                .iter()
                .any(|(f, _)| f == "build.context" || f == "build.cargo.manifest");
            if !prebuilt && !source_named {
                // Whatever it builds from would be read on the control plane's machine.
                let field = if build.contains_key("cargo") {
                    "build.cargo.manifest"
                } else {
                    "build.context"
                };
                named.insert(0, (field.to_string(), "the build source".to_string()));
            }
        }
    }
    named
}

/// Read, check and parse the admitted spec: every path it names lies inside a registered
/// root (a relative one inside the spec's own), checked on its text before the parser looks
/// at any of them, and again with symbolic links resolved. A socket admin's spec that names
/// an absolute path outside every root registers that path's directory (audited).
pub fn load(cp: &ControlPlane, who: &Principal, admitted: &Admitted) -> Result<Spec, ServerError> {
    let text = match &admitted.text {
        Some(text) => text.clone(),
        None => std::fs::read_to_string(&admitted.file).map_err(|e| {
            ServerError::BadRequest(format!(
                "spec_path: cannot read {}: {e}",
                admitted.file.display()
            ))
        })?,
    };
    let Some(root) = &admitted.root else {
        return load_without_base(&text);
    };
    let base = admitted.file.parent().unwrap_or(Path::new("/"));
    let local_admin = who.socket_peer && who.can(Role::Admin, None);
    for (field, value) in named_paths(&text) {
        let given = Path::new(&value);
        let lexically = lexical(&base.join(given));
        if !given.is_absolute() {
            if !lexically.starts_with(root) {
                return Err(escapes(&field, &value, root));
            }
            continue;
        }
        if root_of(&list(cp)?, &lexically).is_some() {
            continue;
        }
        if !local_admin {
            return Err(outside(&field, &value));
        }
        // The local admin's own files: register the directory they live in.
        let dir = if field == "build.context" {
            lexically.clone()
        } else {
            lexically
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        add(cp, who, &dir.to_string_lossy(), true)?;
    }
    let spec = cutover_spec::parse(&text, &admitted.file)?;
    check_resolved_paths(&spec, &list(cp)?)?;
    Ok(spec)
}

/// Parse a spec sent without `base_dir` (its text named no file: [`admit_without_base`]);
/// then, on the parsed spec, check again that it names none.
fn load_without_base(text: &str) -> Result<Spec, ServerError> {
    let spec = cutover_spec::parse(text, Path::new(NO_BASE_FILE)).map_err(|mut e| {
        e.path = PathBuf::from(NO_BASE_NAME);
        for other in &mut e.others {
            other.path = PathBuf::from(NO_BASE_NAME);
        }
        e
    })?;
    if let Some((field, path)) = spec_files(&spec).into_iter().next() {
        return Err(names_a_file(&field, &path.display().to_string()));
    }
    Ok(spec)
}

fn escapes(field: &str, value: &str, root: &Path) -> ServerError {
    ServerError::BadRequest(format!(
        "{field}: {value} leads outside the project root {}; a spec names only files inside its project",
        root.display()
    ))
}

/// The paths a spec's text names (before the parser checks they exist), by field.
fn named_paths(text: &str) -> Vec<(String, String)> {
    // Unparsable text is left to the spec parser, which names the error's place.
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut named: Vec<(String, String)> = Vec::new();
    let mut push = |field: String, value: Option<&toml::Value>| {
        if let Some(v) = value.and_then(toml::Value::as_str) {
            named.push((field, v.to_string()));
        }
    };
    let build = doc.get("build").and_then(toml::Value::as_table);
    if let Some(build) = build {
        push("build.context".into(), build.get("context"));
        if let Some(cargo) = build.get("cargo").and_then(toml::Value::as_table) {
            push("build.cargo.manifest".into(), cargo.get("manifest"));
        }
    }
    if let Some(supply) = doc.get("supply").and_then(toml::Value::as_table) {
        push("supply.signing_key".into(), supply.get("signing_key"));
    }
    // `file://` secrets are read by the control plane: authorised like every other path.
    if let Some(secrets) = doc
        .get("container")
        .and_then(|c| c.get("secrets"))
        .and_then(toml::Value::as_table)
    {
        for (name, entry) in secrets {
            let source = entry
                .as_str()
                .or_else(|| entry.get("source").and_then(toml::Value::as_str));
            if let Some(path) = source.and_then(|s| s.strip_prefix("file://")) {
                let path = toml::Value::String(path.to_string());
                push(format!("container.secrets.{name}"), Some(&path));
            }
        }
    }
    if let Some(envs) = doc.get("environments").and_then(toml::Value::as_table) {
        for (name, env) in envs {
            let Some(env) = env.as_table() else { continue };
            if let Some(keys) = env.get("trusted_keys").and_then(toml::Value::as_array) {
                for (i, key) in keys.iter().enumerate() {
                    push(format!("environments.{name}.trusted_keys[{i}]"), Some(key));
                }
            }
            if let Some(gate) = env.get("gate").and_then(toml::Value::as_table) {
                push(
                    format!("environments.{name}.gate.exceptions"),
                    gate.get("exceptions"),
                );
                push(
                    format!("environments.{name}.gate.secret_rules"),
                    gate.get("secret_rules"),
                );
            }
        }
    }
    // The Dockerfile is relative to the context.
    if let Some(build) = build {
        if let (Some(context), Some(dockerfile)) = (
            build.get("context").and_then(toml::Value::as_str),
            build.get("dockerfile").and_then(toml::Value::as_str),
        ) {
            named.push((
                "build.dockerfile".into(),
                Path::new(context).join(dockerfile).to_string_lossy().into(),
            ));
        }
    }
    named
}

/// The files a parsed spec names, by field (not its own directory or `plans/`).
fn spec_files(spec: &Spec) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    match &spec.build {
        BuildSpec::Dockerfile {
            context,
            dockerfile,
            ..
        } => {
            files.push(("build.context".into(), context.clone()));
            files.push(("build.dockerfile".into(), context.join(dockerfile)));
        }
        BuildSpec::Cargo { manifest, .. } => {
            files.push(("build.cargo.manifest".into(), manifest.clone()));
        }
        BuildSpec::Image { .. } => {}
    }
    if let Some(key) = &spec.supply.signing_key {
        files.push(("supply.signing_key".into(), key.clone()));
    }
    for (name, mount) in &spec.container.secrets {
        if let Some(path) = mount.source.strip_prefix("file://") {
            files.push((format!("container.secrets.{name}"), PathBuf::from(path)));
        }
    }
    for (name, env) in &spec.environments {
        for (i, key) in env.trusted_keys.iter().enumerate() {
            files.push((
                format!("environments.{name}.trusted_keys[{i}]"),
                key.clone(),
            ));
        }
        for (what, file) in [
            ("exceptions", &env.gate.exceptions),
            ("secret_rules", &env.gate.secret_rules),
        ] {
            if let Some(file) = file {
                files.push((format!("environments.{name}.gate.{what}"), file.clone()));
            }
        }
    }
    files
}

fn check_resolved_paths(spec: &Spec, roots: &[ProjectRoot]) -> Result<(), ServerError> {
    let mut paths: Vec<(String, PathBuf)> = vec![
        ("base_dir".into(), spec.base_dir.clone()),
        ("plans".into(), cutover_spec::strategy_path(spec)),
    ];
    paths.extend(spec_files(spec));
    for (field, path) in paths {
        if root_of(roots, &lexical(&path)).is_none() {
            return Err(outside(&field, &path.display().to_string()));
        }
        if let Ok(resolved) = std::fs::canonicalize(&path) {
            if root_of(roots, &resolved).is_none() {
                return Err(ServerError::BadRequest(format!(
                    "{field}: {} leads (through a symbolic link) outside every registered project root; a spec names only files inside registered projects",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

// ----- handlers -----

type Cp = State<std::sync::Arc<ControlPlane>>;
type Who = Extension<Principal>;

/// Registered project roots: the directories specs may be read from.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects",
    responses(
        (status = 200, body = Vec<ProjectRoot>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub(crate) async fn list_projects(
    State(cp): Cp,
    Extension(_who): Who,
) -> Result<Json<Vec<ProjectRoot>>, ServerError> {
    Ok(Json(list(&cp)?))
}

/// Register a project root (admin; the directory must exist; symlinks are resolved).
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = ProjectPath,
    responses(
        (status = 200, body = ProjectRoot),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub(crate) async fn add_project(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<ProjectPath>,
) -> Result<Json<ProjectRoot>, ServerError> {
    who.require(Role::Admin, None)?;
    Ok(Json(add(&cp, &who, &req.path, false)?))
}

/// Unregister a project root (admin).
#[utoipa::path(post, path = "/api/v1/projects/remove", tag = "projects", request_body = ProjectPath,
    responses(
        (status = 200, body = ProjectRoot),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub(crate) async fn remove_project(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<ProjectPath>,
) -> Result<Json<ProjectRoot>, ServerError> {
    who.require(Role::Admin, None)?;
    Ok(Json(remove(&cp, &who, &req.path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_without_base_dir_is_refused_for_each_field_that_names_a_file() {
        let cases = [
            ("[build]\ncontext = \".\"\n", "build.context"),
            ("[build]\ncargo = { manifest = \"Cargo.toml\" }\n", "build.cargo.manifest"),
            // A build source left to its default is read on the control plane all the same.
            ("[build]\ncargo = { bin = \"x\" }\n", "build.cargo.manifest"),
            ("[build]\nimage = \"r/x@sha256:00\"\n[supply]\nsigning_key = \"/k\"\n", "supply.signing_key"),
            (
                "[build]\nimage = \"r/x@sha256:00\"\n[environments.p]\ntrusted_keys = [\"ci.pub\"]\n",
                "environments.p.trusted_keys[0]",
            ),
            (
                "[build]\nimage = \"r/x@sha256:00\"\n[environments.p.gate]\nexceptions = \"e.toml\"\n",
                "environments.p.gate.exceptions",
            ),
        ];
        for (text, field) in cases {
            let Err(ServerError::BadRequest(message)) = admit_without_base(text) else {
                panic!("{text} was admitted");
            };
            assert!(
                message.starts_with(&format!("{field}: ")),
                "{text}: {message}"
            );
            assert!(message.contains("base_dir"), "{message}");
        }
        // A prebuilt image that names no file: admitted (parsed later, against no directory).
        let admitted = admit_without_base("[build]\nimage = \"r/x@sha256:00\"\n").unwrap();
        assert_eq!(admitted.root, None);
        assert_eq!(admitted.source.base_dir, None);
    }

    #[test]
    fn a_spec_without_base_dir_is_parsed_against_no_directory_and_named_as_sent() {
        // Parse errors name the text as sent, not the stand-in path.
        let Err(ServerError::Spec(e)) = load_without_base("app = 1\n") else {
            panic!("a bad spec was loaded");
        };
        assert_eq!(e.path, PathBuf::from(NO_BASE_NAME));
        // Nothing can exist below the stand-in base, so nothing is read through it.
        assert!(!Path::new(NO_BASE_FILE)
            .parent()
            .unwrap()
            .join("plans")
            .exists());
    }

    #[test]
    fn lexical_resolves_dots_without_the_file_system() {
        assert_eq!(
            lexical(Path::new("/srv/app/../../etc/passwd")),
            PathBuf::from("/etc/passwd")
        );
        assert_eq!(
            lexical(Path::new("/srv/app/./x/../deploy.toml")),
            PathBuf::from("/srv/app/deploy.toml")
        );
        assert_eq!(lexical(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn every_path_a_spec_names_is_found() {
        let text = "[build]\ncontext = \".\"\ndockerfile = \"../D\"\n[supply]\nsigning_key = \"s.key\"\n[environments.p]\nlisten = \"x\"\ntrusted_keys = [\"k.pem\", \"/etc/k.pem\"]\n[environments.p.gate]\nexceptions = \"e.toml\"\nsecret_rules = \"r.toml\"\n";
        let fields: Vec<String> = named_paths(text).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "build.context",
                "supply.signing_key",
                "environments.p.trusted_keys[0]",
                "environments.p.trusted_keys[1]",
                "environments.p.gate.exceptions",
                "environments.p.gate.secret_rules",
                "build.dockerfile",
            ]
        );
        let cargo = "[build]\ncargo = { manifest = \"../other/Cargo.toml\" }\n";
        assert_eq!(
            named_paths(cargo),
            [(
                "build.cargo.manifest".to_string(),
                "../other/Cargo.toml".to_string()
            )]
        );
    }
}
