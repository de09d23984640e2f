//! Reads and validates `deploy.toml` into a [`cutover_model::Spec`], with
//! `file:line:column: field: message` errors.
//!
//! # The file format
//!
//! Every key, with its default (keys without a default are required):
//!
//! ```toml
//! app = "hello"                    # required; [a-z0-9][a-z0-9-]{0,30}
//! strategy = "blue-green"          # a strategy in plans/ (file name without .toml); default "blue-green"
//!
//! [build]                          # required; exactly one of `cargo` or `context`
//! cargo = { manifest = "examples/hello/Cargo.toml", bin = "hello", profile = "release" }
//! #   manifest: required, relative to this file's directory, must exist
//! #   bin:      default: the app name
//! #   profile:  default "release"
//! # context = "examples/hello"     # a directory with a Dockerfile; must exist
//! # dockerfile = "Dockerfile"      # relative to the context; default "Dockerfile"; must exist
//! # args = { K = "v" }             # build arguments; default none
//!
//! [container]                      # the whole table is optional
//! port = 8080                      # port the app listens on inside the container; 1..=65535; default 8080
//! command = []                     # entrypoint + args; default [] (the image's own)
//! env = { VERSION = "v1" }         # plain environment variables; names [A-Za-z_][A-Za-z0-9_]*; default none
//! memory = "64MiB"                 # "64MiB", "128m", "1g", "512k" (binary units, as Docker) or bytes; >= 4MiB; default 128MiB
//! cpus = 0.5                       # > 0; default 1.0
//! pids_limit = 64                  # >= 1; default 128
//! user = "65534:65534"             # uid[:gid] or name[:group]; root is refused; default "65534:65534"
//! read_only = true                 # read-only root filesystem; default true
//! tmpfs = ["/tmp"]                 # absolute paths of writable tmpfs mounts; default ["/tmp"]
//!
//! [health]                         # the whole table is optional
//! path = "/healthz"                # GET path, 2xx is healthy; starts with "/"; default "/healthz"
//! interval = "200ms"               # between probes (humantime: "200ms", "1s", "2m 30s"); > 0; default 200ms
//! timeout = "1s"                   # per probe; > 0 and <= deadline; default 1s
//! healthy_threshold = 2            # consecutive successes; >= 1; default 2
//! unhealthy_threshold = 3          # consecutive failures that fail the step; >= 1; default 3
//! deadline = "30s"                 # give up after; > interval; default 30s
//!
//! [supply]                         # the whole table is optional
//! signing_key = "keys/release.key" # encrypted key from `cutover keys generate`; must exist; default: the control plane's local key
//!
//! [environments.production]        # at least one; names [a-z0-9][a-z0-9-]*
//! listen = "127.0.0.1:8080"        # required; a socket address, unique across environments
//! replicas = 2                     # 1..=64; default 2
//! retire_after = "5m"              # keep the previous release warm this long; "0s" retires at once; default 5m
//! drain_timeout = "10s"            # wait this long for in-flight requests; > 0; default 10s
//! response_timeout = "30s"         # the proxy answers 504 when an upstream takes longer; > 0; default 30s
//! approval = false                 # require a human approval; default false (always true when protected)
//! protected = false                # protected environments always require approval; default false
//! trusted_keys = []                # public keys (PEM) whose signatures verify; must exist; default [] = the local key
//!
//! [environments.production.approvals]  # optional; only where approval is required (an error elsewhere)
//! required = 1                     # distinct approvers, never the requester; 1..=10; default 1
//! timeout = "24h"                  # reject when not approved within this; > 0, at most 30 days; default 24h
//!
//! [environments.production.gate]   # optional; judges the scan of every image
//! fail_on = "critical"             # "none", "low", "medium", "high" or "critical": fail on findings this severe or worse; default "critical"
//! fail_on_secrets = true           # fail when a secret is found in the image; default true
//! exceptions = "security/exceptions.toml"  # reviewed, expiring exceptions; optional; must exist
//! secret_rules = "security/gitleaks.toml"  # secret rules replacing the built-in ones; optional; must exist
//! ```
//!
//! Paths are relative to the directory of the file and are made absolute.
//!
//! Unknown keys are errors, so typos never pass silently.

mod convert;
mod prebuilt;
mod raw;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use cutover_model::Spec;

/// A problem in a `deploy.toml`: where it is and what is wrong.
///
/// `Display` gives `deploy.toml:14:12: environments.production.replicas: must be between 1
/// and 64, got 0`, followed by one line per further problem in `others`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file, as given to [`load`] or [`parse`].
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted path of the key, e.g. `environments.production.replicas`; empty for syntax
    /// errors outside any key.
    pub field: String,
    /// Lowercase, no trailing period.
    pub message: String,
    /// Further problems found in the same file, in file order.
    pub others: Vec<SpecError>,
}

impl SpecError {
    /// This problem and all the others, in file order.
    pub fn all(&self) -> impl Iterator<Item = &SpecError> {
        std::iter::once(self).chain(self.others.iter())
    }

    fn fmt_one(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_one(f)?;
        for other in &self.others {
            f.write_str("\n")?;
            other.fmt_one(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

pub use prebuilt::with_prebuilt_image;

/// Read and validate the `deploy.toml` at `path`.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(SpecError {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            field: String::new(),
            message: format!("cannot read the spec file: {e}; check the path passed to cutover"),
            others: Vec::new(),
        }),
    }
}

/// Validate the text of a `deploy.toml`. `path` names the file in messages, and its
/// directory is the base that relative paths are resolved against (made absolute, without
/// requiring it to exist). The build manifest or context must exist.
pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecError> {
    let raw: raw::RawSpec = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(toml_error(text, path, &e)),
    };
    let mut errors = Errors::new(text, path);
    let base_dir = base_dir_of(path);
    let spec = convert::convert(raw, base_dir, &mut errors);
    match (spec, errors.into_error()) {
        (_, Some(error)) => Err(error),
        (Some(spec), None) => Ok(spec),
        (None, None) => Err(SpecError {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            field: String::new(),
            message: "the spec is invalid".to_string(),
            others: Vec::new(),
        }),
    }
}

/// Bytes of a size written as `container.memory` is: `"256MiB"`, `"1g"`, a number of bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    convert::parse_size(&raw::RawSize::Text(text.to_string()))
}

/// A syntax or type error of another TOML file read the way `deploy.toml` is (e.g. the
/// control plane's guardrails files), located as `file:line:column: field: message`.
pub fn toml_file_error(text: &str, path: &Path, error: &toml::de::Error) -> SpecError {
    toml_error(text, path, error)
}

/// A problem at byte `span` of the TOML `text` of the file `path`.
pub fn error_at(
    text: &str,
    path: &Path,
    span: Range<usize>,
    field: &str,
    message: impl Into<String>,
) -> SpecError {
    let mut errors = Errors::new(text, path);
    errors.at(span, field, message);
    errors.into_error().unwrap_or_else(|| SpecError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        field: field.to_string(),
        message: "invalid".to_string(),
        others: Vec::new(),
    })
}

/// `sha256:<hex>` of the spec's canonical JSON: names the exact configuration a plan used.
/// An error about secret `name` of `[container.secrets]` found after parsing (a missing
/// stored secret or environment variable), placed at its line in `text`.
pub fn secret_error(text: &str, path: &Path, name: &str, message: impl Into<String>) -> SpecError {
    #[derive(serde::Deserialize)]
    struct Doc {
        container: Option<Container>,
    }
    #[derive(serde::Deserialize)]
    struct Container {
        secrets: Option<std::collections::BTreeMap<String, toml::Spanned<toml::Value>>>,
    }
    let span = toml::from_str::<Doc>(text)
        .ok()
        .and_then(|d| d.container)
        .and_then(|c| c.secrets)
        .and_then(|s| s.get(name).map(|v| v.span()))
        .unwrap_or(0..0);
    error_at(
        text,
        path,
        span,
        &format!("container.secrets.{name}"),
        message,
    )
}

pub fn spec_digest(spec: &Spec) -> String {
    cutover_model::json_digest(spec)
}

/// Where a project keeps its own copy of the spec's strategy: `<base_dir>/plans/<strategy>.toml`.
/// The CLI uses it when it exists and falls back to the built-in strategy otherwise.
pub fn strategy_path(spec: &Spec) -> PathBuf {
    spec.base_dir
        .join("plans")
        .join(format!("{}.toml", spec.strategy))
}

/// The directory of `path`, absolute.
fn base_dir_of(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let absolute = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    convert::normalize(&absolute)
}

/// Collects validation problems with their spans.
pub(crate) struct Errors<'a> {
    text: &'a str,
    path: &'a Path,
    list: Vec<(usize, SpecError)>,
}

impl<'a> Errors<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        Errors {
            text,
            path,
            list: Vec::new(),
        }
    }

    /// Record a problem at byte `span` of the file.
    pub(crate) fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.list.push((
            span.start,
            SpecError {
                path: self.path.to_path_buf(),
                line,
                column,
                field: field.to_string(),
                message: message.into(),
                others: Vec::new(),
            },
        ));
    }

    fn into_error(mut self) -> Option<SpecError> {
        self.list.sort_by_key(|(start, _)| *start);
        let mut iter = self.list.into_iter().map(|(_, e)| e);
        let mut first = iter.next()?;
        first.others = iter.collect();
        Some(first)
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Turn a syntax or type error from the toml reader into a located [`SpecError`].
fn toml_error(text: &str, path: &Path, error: &toml::de::Error) -> SpecError {
    let span = error.span().unwrap_or(0..0);
    let (line, column) = line_column(text, span.start);
    let mut field = field_at(text, span.start).unwrap_or_default();
    let raw_message = error.message().trim();
    if let Some(missing) = backticked_after(raw_message, "missing field ") {
        if field.is_empty() {
            field = missing.to_string();
        } else {
            field = format!("{field}.{missing}");
        }
    }
    SpecError {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message: tidy_message(raw_message),
        others: Vec::new(),
    }
}

/// The name between backticks right after `prefix` in `message`.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}

/// Lowercase first letter, no trailing period, one line.
fn tidy_message(message: &str) -> String {
    let one_line = message.lines().next().unwrap_or("").trim();
    let trimmed = one_line.trim_end_matches('.');
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "invalid toml".to_string(),
    }
}

/// Dotted path of the innermost key whose key or value covers byte `offset`, found by
/// re-reading the document with spans. `None` when the text does not parse or nothing
/// covers the offset.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_in_table(doc.get_ref(), offset, &mut path).then(|| path.join("."))
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn find_in_table(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if find_in_value(value, offset, path) || covers(&key.span(), offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    offset: usize,
    path: &mut Vec<String>,
) -> bool {
    match value.get_ref() {
        toml::de::DeValue::Table(table) if find_in_table(table, offset, path) => return true,
        toml::de::DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let last = path.pop().unwrap_or_default();
                path.push(format!("{last}[{index}]"));
                if find_in_value(item, offset, path) {
                    return true;
                }
                path.pop();
                path.push(last);
            }
        }
        _ => {}
    }
    covers(&value.span(), offset)
}

#[cfg(test)]
mod tests;
