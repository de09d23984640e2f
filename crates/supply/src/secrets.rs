//! Secret detection with gitleaks-compatible TOML rules. Findings never hold the secret:
//! only a redacted prefix and a fingerprint.

use std::path::Path;

use aho_corasick::AhoCorasick;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{FileFate, FileMeta, ImageConfig};
use crate::{Result, SupplyError};

/// The rule set shipped with the crate.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Secret,
    Match,
    Line,
}

#[derive(Debug, Clone)]
struct Allowlist {
    and: bool,
    target: Target,
    regexes: Vec<Regex>,
    paths: Vec<Regex>,
    stopwords: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    description: String,
    regex: Option<Regex>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    path: Option<Regex>,
    allowlists: Vec<Allowlist>,
    has_keywords: bool,
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    global: Vec<Allowlist>,
    keywords: Option<AhoCorasick>,
    /// For each keyword pattern, the rules it enables.
    keyword_rules: Vec<Vec<usize>>,
    /// Rule evaluation order: file-specific (path) rules first, so that when two rules find
    /// the same secret the more specific one names it.
    order: Vec<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    rules: Vec<RawRule>,
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    id: String,
    #[serde(default)]
    description: String,
    regex: Option<String>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    path: Option<String>,
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAllowlist {
    condition: Option<String>,
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
}

impl RuleSet {
    /// The shipped default rules.
    pub fn default_rules() -> RuleSet {
        RuleSet::from_toml(DEFAULT_RULES, "default rules").expect("the shipped rules compile")
    }

    /// Reads a gitleaks-style rule file.
    pub fn load(path: impl AsRef<Path>) -> Result<RuleSet> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SupplyError::io(path, e))?;
        RuleSet::from_toml(&text, &path.display().to_string())
    }

    /// Compiles rules from TOML text; `name` is used in error messages.
    pub fn from_toml(text: &str, name: &str) -> Result<RuleSet> {
        let err = |detail: String| SupplyError::Rules {
            path: name.to_string(),
            detail,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut rules = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            if r.id.trim().is_empty() {
                return Err(err(format!("rule #{} has an empty id", i + 1)));
            }
            let compile = |what: &str, re: &str| {
                Regex::new(re).map_err(|e| err(format!("rule {}: invalid {what}: {e}", r.id)))
            };
            let regex = r
                .regex
                .as_deref()
                .map(|re| compile("regex", re))
                .transpose()?;
            let path = r
                .path
                .as_deref()
                .map(|re| compile("path", re))
                .transpose()?;
            if regex.is_none() && path.is_none() {
                return Err(err(format!("rule {} needs a regex or a path", r.id)));
            }
            let mut allowlists = Vec::new();
            for a in r.allowlist.iter().chain(&r.allowlists) {
                allowlists
                    .push(compile_allowlist(a).map_err(|e| err(format!("rule {}: {e}", r.id)))?);
            }
            let idx = rules.len();
            for k in &r.keywords {
                let k = k.to_lowercase();
                match patterns.iter().position(|p| *p == k) {
                    Some(p) => keyword_rules[p].push(idx),
                    None => {
                        patterns.push(k);
                        keyword_rules.push(vec![idx]);
                    }
                }
            }
            rules.push(Rule {
                id: r.id,
                description: r.description,
                regex,
                secret_group: r.secret_group,
                entropy: r.entropy,
                path,
                allowlists,
                has_keywords: !r.keywords.is_empty(),
            });
        }
        let mut global = Vec::new();
        for a in raw.allowlist.iter().chain(&raw.allowlists) {
            global.push(compile_allowlist(a).map_err(|e| err(format!("global allowlist: {e}")))?);
        }
        let keywords = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(&patterns)
                    .map_err(|e| err(format!("keywords: {e}")))?,
            )
        };
        let mut order: Vec<usize> = (0..rules.len()).collect();
        order.sort_by_key(|i| rules[*i].path.is_none());
        Ok(RuleSet {
            order,
            rules,
            global,
            keywords,
            keyword_rules,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Finds secrets in `text`. `path` is the file path (rules restricted to paths only run on
    /// files) and is `None` for config fields.
    pub fn scan_text(&self, text: &str, path: Option<&str>) -> Vec<RawSecret> {
        let mut out = Vec::new();
        if let Some(p) = path {
            if self.global.iter().any(|a| a.allows_path_only(p)) {
                return out;
            }
        }
        let mut enabled = vec![false; self.rules.len()];
        if let Some(ac) = &self.keywords {
            for m in ac.find_overlapping_iter(text) {
                for &r in &self.keyword_rules[m.pattern().as_usize()] {
                    enabled[r] = true;
                }
            }
        }
        let mut line_index = LineIndex::new(text);
        for &ri in &self.order {
            let rule = &self.rules[ri];
            if rule.has_keywords && !enabled[ri] {
                continue;
            }
            match (&rule.path, path) {
                (Some(re), Some(p)) if !re.is_match(p) => continue,
                (Some(_), None) => continue,
                _ => {}
            }
            let Some(regex) = &rule.regex else {
                // A path-only rule: the file itself is the finding.
                let p = path.unwrap_or_default();
                if !self.allowed(rule, p, "", p, Some(p)) {
                    out.push(RawSecret {
                        rule: ri,
                        secret: String::new(),
                        line: 0,
                    });
                }
                continue;
            };
            for caps in regex.captures_iter(text).take(100) {
                let whole = caps.get(0).expect("group 0 always matches");
                let secret = match rule.secret_group {
                    Some(g) if g > 0 => caps.get(g),
                    _ => (1..caps.len()).find_map(|g| caps.get(g).filter(|m| !m.is_empty())),
                }
                .unwrap_or(whole);
                if let Some(min) = rule.entropy {
                    if shannon_entropy(secret.as_str()) < min {
                        continue;
                    }
                }
                let line_start = text[..whole.start()].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[whole.end()..]
                    .find('\n')
                    .map_or(text.len(), |i| whole.end() + i);
                let line = &text[line_start..line_end];
                if self.allowed(rule, secret.as_str(), whole.as_str(), line, path) {
                    continue;
                }
                out.push(RawSecret {
                    rule: ri,
                    secret: secret.as_str().to_string(),
                    line: line_index.line_of(whole.start()),
                });
            }
        }
        // One finding per (secret, line): the first rule wins.
        let mut seen = std::collections::HashSet::new();
        out.retain(|s| {
            seen.insert((
                s.secret.clone(),
                s.line,
                s.secret.is_empty().then_some(s.rule),
            ))
        });
        out
    }

    /// `text` with every secret these rules find in it replaced by `replacement`, for text
    /// shown to people (e.g. a container's log lines). Path-only rules do not apply.
    pub fn redact(&self, text: &str, replacement: &str) -> String {
        let mut secrets: Vec<String> = self
            .scan_text(text, None)
            .into_iter()
            .map(|raw| raw.secret)
            .filter(|secret| !secret.is_empty())
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        let mut out = text.to_string();
        for secret in secrets {
            out = out.replace(&secret, replacement);
        }
        out
    }

    fn allowed(
        &self,
        rule: &Rule,
        secret: &str,
        whole: &str,
        line: &str,
        path: Option<&str>,
    ) -> bool {
        rule.allowlists
            .iter()
            .chain(&self.global)
            .any(|a| a.allows(secret, whole, line, path))
    }

    pub fn rule_id(&self, raw: &RawSecret) -> &str {
        &self.rules[raw.rule].id
    }

    pub fn rule_description(&self, raw: &RawSecret) -> &str {
        &self.rules[raw.rule].description
    }
}

fn compile_allowlist(a: &RawAllowlist) -> std::result::Result<Allowlist, String> {
    let target = match a.regex_target.as_deref().unwrap_or("secret") {
        "secret" | "" => Target::Secret,
        "match" => Target::Match,
        "line" => Target::Line,
        other => {
            return Err(format!(
                "allowlist regexTarget {other:?} is not secret, match or line"
            ))
        }
    };
    let and = match a
        .condition
        .as_deref()
        .unwrap_or("OR")
        .to_ascii_uppercase()
        .as_str()
    {
        "OR" => false,
        "AND" => true,
        other => return Err(format!("allowlist condition {other:?} is not OR or AND")),
    };
    let compile = |v: &Vec<String>| -> std::result::Result<Vec<Regex>, String> {
        v.iter()
            .map(|r| Regex::new(r).map_err(|e| format!("invalid allowlist regex: {e}")))
            .collect()
    };
    Ok(Allowlist {
        and,
        target,
        regexes: compile(&a.regexes)?,
        paths: compile(&a.paths)?,
        stopwords: a.stopwords.iter().map(|s| s.to_lowercase()).collect(),
    })
}

impl Allowlist {
    fn allows_path_only(&self, path: &str) -> bool {
        !self.and && self.paths.iter().any(|r| r.is_match(path))
    }

    fn allows(&self, secret: &str, whole: &str, line: &str, path: Option<&str>) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        let lower = secret.to_lowercase();
        let mut checks: Vec<bool> = Vec::new();
        if !self.regexes.is_empty() {
            checks.push(self.regexes.iter().any(|r| r.is_match(target)));
        }
        if !self.paths.is_empty() {
            checks.push(path.is_some_and(|p| self.paths.iter().any(|r| r.is_match(p))));
        }
        if !self.stopwords.is_empty() {
            checks.push(self.stopwords.iter().any(|w| lower.contains(w.as_str())));
        }
        if checks.is_empty() {
            return false;
        }
        if self.and {
            checks.iter().all(|c| *c)
        } else {
            checks.iter().any(|c| *c)
        }
    }
}

/// A match before redaction; holds the secret, so it stays inside the crate's scan loop.
pub struct RawSecret {
    rule: usize,
    secret: String,
    line: usize,
}

impl std::fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSecret")
            .field("rule", &self.rule)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

struct LineIndex<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        LineIndex {
            text,
            pos: 0,
            line: 1,
        }
    }

    fn line_of(&mut self, offset: usize) -> usize {
        if offset < self.pos {
            self.pos = 0;
            self.line = 1;
        }
        self.line += self.text.as_bytes()[self.pos..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.pos = offset;
        self.line
    }
}

/// Shannon entropy in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SecretLocation {
    File {
        layer_index: usize,
        path: String,
        /// 1-based; 0 for findings about the file as a whole.
        line: usize,
        layer: String,
    },
    Config {
        /// e.g. `Env[2]`, `Cmd`, `Labels.api-key`, `history[3].created_by`.
        field: String,
    },
}

impl SecretLocation {
    /// The part of the location used in fingerprints: stable across rebuilds (no layer digest,
    /// no line number).
    fn key(&self) -> String {
        match self {
            SecretLocation::File { path, .. } => format!("file:{path}"),
            SecretLocation::Config { field } => format!("config:{field}"),
        }
    }

    pub fn path(&self) -> Option<&str> {
        match self {
            SecretLocation::File { path, .. } => Some(path),
            SecretLocation::Config { .. } => None,
        }
    }
}

impl std::fmt::Display for SecretLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretLocation::File {
                layer, path, line, ..
            } if *line > 0 => write!(f, "/{path}:{line} (layer {layer})"),
            SecretLocation::File { layer, path, .. } => write!(f, "/{path} (layer {layer})"),
            SecretLocation::Config { field } => write!(f, "image config {field}"),
        }
    }
}

/// A redacted secret finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretFinding {
    pub rule_id: String,
    pub description: String,
    /// At most the first 4 characters followed by `…`, or empty for keys.
    pub redacted: String,
    /// `sha256(rule id, location, secret)` in hex: names the finding in exceptions.
    pub fingerprint: String,
    pub location: SecretLocation,
    /// The file is gone from the final filesystem but its bytes still ship in a layer.
    pub deleted: bool,
    pub note: Option<String>,
}

impl std::fmt::Display for SecretFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.rule_id, self.location)?;
        if !self.redacted.is_empty() {
            write!(f, " ({})", self.redacted)?;
        }
        if let Some(n) = &self.note {
            write!(f, ", {n}")?;
        }
        Ok(())
    }
}

/// The shown part of a secret: nothing for keys and file-level finds, else at most four
/// characters (fewer for short secrets) and an ellipsis.
pub fn redact(rule_id: &str, secret: &str) -> String {
    if secret.is_empty() || rule_id.contains("private-key") || secret.starts_with("-----BEGIN") {
        return String::new();
    }
    let n = secret.chars().count();
    let show = (n / 4).min(4);
    let prefix: String = secret.chars().take(show).collect();
    format!("{prefix}…")
}

fn fingerprint(rule_id: &str, location: &SecretLocation, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(rule_id.as_bytes());
    h.update([0]);
    h.update(location.key().as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

fn finding(
    rules: &RuleSet,
    raw: RawSecret,
    location: SecretLocation,
    fate: FileFate,
) -> SecretFinding {
    let rule_id = rules.rule_id(&raw).to_string();
    let note = match fate {
        FileFate::Present => None,
        FileFate::Deleted => {
            Some("deleted by a later layer, but still shipped in this layer".into())
        }
        FileFate::Replaced { by_layer } => Some(format!(
            "replaced by layer {by_layer}, but still shipped in this layer"
        )),
    };
    SecretFinding {
        description: rules.rule_description(&raw).to_string(),
        redacted: redact(&rule_id, &raw.secret),
        fingerprint: fingerprint(&rule_id, &location, &raw.secret),
        rule_id,
        location,
        deleted: fate != FileFate::Present,
        note,
    }
}

/// Scans one layer file.
pub fn scan_file(rules: &RuleSet, meta: &FileMeta<'_>, data: &[u8]) -> Vec<SecretFinding> {
    let head = &data[..data.len().min(8000)];
    let binary = head.contains(&0);
    let text = if binary {
        // Binaries: only file-name rules apply.
        std::borrow::Cow::Borrowed("")
    } else {
        String::from_utf8_lossy(data)
    };
    rules
        .scan_text(&text, Some(meta.path))
        .into_iter()
        .map(|raw| {
            let location = SecretLocation::File {
                layer: meta.layer_digest.to_string(),
                layer_index: meta.layer_index,
                path: meta.path.to_string(),
                line: raw.line,
            };
            finding(rules, raw, location, meta.fate)
        })
        .collect()
}

/// Scans the image config: Env, Cmd, Entrypoint, Labels and history `created_by`.
pub fn scan_config(rules: &RuleSet, config: &ImageConfig) -> Vec<SecretFinding> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for (i, e) in config.env.iter().enumerate() {
        fields.push((format!("Env[{i}]"), e.clone()));
    }
    if !config.cmd.is_empty() {
        fields.push(("Cmd".into(), config.cmd.join(" ")));
    }
    if !config.entrypoint.is_empty() {
        fields.push(("Entrypoint".into(), config.entrypoint.join(" ")));
    }
    for (k, v) in &config.labels {
        fields.push((format!("Labels.{k}"), format!("{k}={v}")));
    }
    for (i, h) in config.history.iter().enumerate() {
        fields.push((format!("history[{i}].created_by"), h.clone()));
    }
    let mut out = Vec::new();
    for (field, text) in fields {
        for raw in rules.scan_text(&text, None) {
            let location = SecretLocation::Config {
                field: field.clone(),
            };
            out.push(finding(rules, raw, location, FileFate::Present));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_shows_at_most_four_chars() {
        assert_eq!(
            redact("github-pat", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            "ghp_…"
        );
        assert_eq!(redact("generic", "abcdefgh"), "ab…");
        assert_eq!(redact("generic", "abc"), "…");
        assert_eq!(redact("private-key", "-----BEGIN RSA PRIVATE KEY-----"), "");
        assert_eq!(redact("ssh-private-key-file", ""), "");
    }

    #[test]
    fn entropy_orders_randomness() {
        assert_eq!(shannon_entropy("aaaa"), 0.0);
        assert!((shannon_entropy("abcd") - 2.0).abs() < 1e-9);
        assert!(shannon_entropy("Vx7#qL9!zR2@mK4") > 3.5);
        assert!(shannon_entropy("password") < 3.5);
    }

    #[test]
    fn default_rules_compile_and_find_lines() {
        let rules = RuleSet::default_rules();
        assert!(rules.len() >= 14);
        let text = format!("a\nb\nkey = AKIA{}\n", "QWERTYUIOPASDFGH");
        let hits = rules.scan_text(&text, Some("etc/x"));
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (rules.rule_id(&hits[0]), hits[0].line),
            ("aws-access-key-id", 3)
        );
        assert!(!format!("{:?}", hits[0]).contains("QWERTY"));
        // Path rules never run on config fields.
        assert!(rules.scan_text("password 12345678", None).is_empty());
    }

    #[test]
    fn redact_replaces_what_the_rules_find() {
        let rules = RuleSet::default_rules();
        let key = format!("AKIA{}", "QWERTYUIOPASDFGH");
        let line = format!("connecting with key={key} to s3 (retry with {key})");
        assert_eq!(
            rules.redact(&line, "[redacted]"),
            "connecting with key=[redacted] to s3 (retry with [redacted])"
        );
        assert_eq!(
            rules.redact("listening on :8080", "[redacted]"),
            "listening on :8080"
        );
    }
}
