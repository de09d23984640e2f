//! Secret detection with gitleaks-compatible TOML rules. Findings never hold the secret:
//! only a redacted prefix and a fingerprint.

use std::path::Path;

use aho_corasick::AhoCorasick;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::image::{FileFate, FileMeta, ImageConfig};
use crate::re2;
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
    /// The allowlist names commits; an image has none, so that condition never holds.
    commits: bool,
    /// Global allowlists only: the rules it applies to (all when empty).
    target_rules: Vec<String>,
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
    /// gitleaks's rule for `generic*` rules with an entropy threshold: the secret must
    /// contain a digit. Applies to rules from rule files, not to the built-in ones.
    needs_digit: bool,
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    global: Vec<Allowlist>,
    keywords: Option<AhoCorasick>,
    keyword_patterns: Vec<String>,
    /// For each keyword pattern, the rules it enables.
    keyword_rules: Vec<Vec<usize>>,
    /// Rule evaluation order: file-specific (path) rules first and `generic*` rules last, so
    /// that when two rules find the same secret the more specific one names it.
    order: Vec<usize>,
    warnings: Vec<RuleWarning>,
    digest: String,
}

/// A rule (or allowlist) of a rule file that cannot be used. The loader leaves it out and
/// the other rules still apply; [`RuleSet::load_strict`] makes it fatal instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleWarning {
    /// The rule file.
    pub source: String,
    /// 1-based line of the rule's id (or of its regex or path).
    pub line: usize,
    /// The rule id; `None` for the global allowlist.
    pub rule: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for RuleWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, line {}: ", self.source, self.line)?;
        match &self.rule {
            Some(id) => write!(f, "rule {id}: {}", self.detail),
            None => write!(f, "{}", self.detail),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    extend: Option<RawExtend>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawExtend {
    #[serde(default)]
    use_default: bool,
    path: Option<String>,
    #[serde(default)]
    disabled_rules: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    /// Its span gives the rule's line (a rule table's own span is unreliable with subtables).
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    regex: Option<Spanned<String>>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    path: Option<Spanned<String>>,
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize, Clone)]
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
    #[serde(default)]
    commits: Vec<String>,
    #[serde(default)]
    target_rules: Vec<String>,
}

/// A rule as written, with where it was written, before compilation.
struct RuleDef {
    source: String,
    line: usize,
    builtin: bool,
    id: String,
    description: String,
    regex: Option<(usize, String)>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    keywords: Vec<String>,
    path: Option<(usize, String)>,
    allowlists: Vec<RawAllowlist>,
}

/// A global allowlist as written.
struct GlobalDef {
    source: String,
    line: usize,
    raw: RawAllowlist,
}

#[derive(Default)]
struct Parsed {
    rules: Vec<RuleDef>,
    global: Vec<GlobalDef>,
    /// sha256 of every file's text that went in, extended files first.
    sources: Vec<[u8; 32]>,
}

/// How deep `[extend]` may nest (gitleaks allows two levels).
const MAX_EXTEND_DEPTH: usize = 2;

/// Compiled regexes may be larger than the `regex` crate's default allows: upstream rules
/// combine `(?i)` with wide bounded repetitions.
const REGEX_SIZE_LIMIT: usize = 64 << 20;

fn compile_regex(go: &str) -> std::result::Result<Regex, String> {
    regex::RegexBuilder::new(&re2::translate(go))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => s
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(&s)
                .to_string(),
            other => other.to_string(),
        })
}

/// 1-based line numbers of byte offsets in a text.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|nl| *nl < offset) + 1
    }

    /// The line of the `n`th (0-based) line whose trimmed text starts with `header`; 1 if
    /// there is none. (The spans TOML gives for tables are unreliable when they have
    /// subtables, so table headers are found by their text.)
    fn of_header(&self, text: &str, header: &str, n: usize) -> usize {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(header))
            .nth(n)
            .map_or(1, |(i, _)| i + 1)
    }
}

fn parse_rules(
    text: &str,
    name: &str,
    base_dir: Option<&Path>,
    depth: usize,
    builtin: bool,
) -> Result<Parsed> {
    let err = |detail: String| SupplyError::Rules {
        path: name.to_string(),
        detail,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    let lines = Lines::new(text);
    let mut parsed = Parsed::default();
    let own_digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    if let Some(ext) = raw.extend {
        if depth >= MAX_EXTEND_DEPTH {
            return Err(err(format!(
                "[extend] nests more than {MAX_EXTEND_DEPTH} files deep; merge the files"
            )));
        }
        if ext.use_default {
            let base = parse_rules(DEFAULT_RULES, "default rules", None, depth + 1, true)?;
            parsed.rules.extend(base.rules);
            parsed.global.extend(base.global);
            parsed.sources.extend(base.sources);
        }
        if let Some(p) = &ext.path {
            let path = match base_dir {
                Some(dir) => dir.join(p),
                None => p.into(),
            };
            let text = std::fs::read_to_string(&path).map_err(|e| SupplyError::io(&path, e))?;
            let base = parse_rules(
                &text,
                &path.display().to_string(),
                path.parent(),
                depth + 1,
                false,
            )?;
            parsed.rules.extend(base.rules);
            parsed.global.extend(base.global);
            parsed.sources.extend(base.sources);
        }
        parsed.rules.retain(|r| !ext.disabled_rules.contains(&r.id));
    }
    for spanned in raw.rules {
        let r = spanned.into_inner();
        let line = lines.of(r.id.span().start);
        let allowlists: Vec<RawAllowlist> = r.allowlist.into_iter().chain(r.allowlists).collect();
        let def = RuleDef {
            source: name.to_string(),
            line,
            builtin,
            description: r.description,
            regex: r.regex.map(|s| (lines.of(s.span().start), s.into_inner())),
            secret_group: r.secret_group,
            entropy: r.entropy,
            keywords: r.keywords,
            path: r.path.map(|s| (lines.of(s.span().start), s.into_inner())),
            allowlists,
            id: r.id.into_inner(),
        };
        match parsed.rules.iter_mut().find(|b| b.id == def.id) {
            // Redefining an extended rule: what the new definition sets wins, the rest
            // (and the allowlists) is kept, as gitleaks does.
            Some(base) => base.merge(def),
            _ => parsed.rules.push(def),
        }
    }
    if let Some(a) = raw.allowlist {
        parsed.global.push(GlobalDef {
            source: name.to_string(),
            line: lines.of_header(text, "[allowlist]", 0),
            raw: a,
        });
    }
    for (n, a) in raw.allowlists.into_iter().enumerate() {
        parsed.global.push(GlobalDef {
            source: name.to_string(),
            line: lines.of_header(text, "[[allowlists]]", n),
            raw: a,
        });
    }
    parsed.sources.push(own_digest);
    Ok(parsed)
}

impl RuleDef {
    fn merge(&mut self, over: RuleDef) {
        self.source = over.source;
        self.line = over.line;
        // A built-in rule stays built-in (no gitleaks digit rule) unless its match changes.
        self.builtin &= over.builtin || (over.regex.is_none() && over.entropy.is_none());
        if !over.description.is_empty() {
            self.description = over.description;
        }
        if over.regex.is_some() {
            self.regex = over.regex;
        }
        if over.path.is_some() {
            self.path = over.path;
        }
        if over.secret_group.is_some() {
            self.secret_group = over.secret_group;
        }
        if over.entropy.is_some() {
            self.entropy = over.entropy;
        }
        for k in over.keywords {
            if !self.keywords.contains(&k) {
                self.keywords.push(k);
            }
        }
        self.allowlists.extend(over.allowlists);
    }
}

impl RuleSet {
    /// The shipped default rules.
    pub fn default_rules() -> RuleSet {
        RuleSet::from_toml_strict(DEFAULT_RULES, "default rules")
            .expect("the shipped rules compile")
    }

    /// Reads a gitleaks rule file. Rules that cannot be used are left out and reported by
    /// [`RuleSet::warnings`]; the file fails only when it is not valid TOML or when none
    /// of its rules can be used.
    pub fn load(path: impl AsRef<Path>) -> Result<RuleSet> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SupplyError::io(path, e))?;
        RuleSet::compile(&text, &path.display().to_string(), path.parent(), false)
    }

    /// Like [`RuleSet::load`], but any rule that cannot be used fails the whole file.
    pub fn load_strict(path: impl AsRef<Path>) -> Result<RuleSet> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SupplyError::io(path, e))?;
        RuleSet::compile(&text, &path.display().to_string(), path.parent(), true)
    }

    /// Compiles rules from TOML text; `name` is used in messages. Lenient like
    /// [`RuleSet::load`]; an `[extend] path` is relative to the working directory.
    pub fn from_toml(text: &str, name: &str) -> Result<RuleSet> {
        RuleSet::compile(text, name, None, false)
    }

    /// Like [`RuleSet::from_toml`], but any rule that cannot be used is an error.
    pub fn from_toml_strict(text: &str, name: &str) -> Result<RuleSet> {
        RuleSet::compile(text, name, None, true)
    }

    /// The rules and allowlists that were left out, each with its file, line and reason.
    pub fn warnings(&self) -> &[RuleWarning] {
        &self.warnings
    }

    /// `sha256:<hex>` of this crate's version and the text of every file these rules came
    /// from (an `[extend]`ed file and the built-in rules included): what a cached scan made
    /// with these rules should be keyed by.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The ids of the rules in use.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The same rules restricted to those with the given ids (gitleaks's `--enable-rule`).
    pub fn only(&self, ids: &[&str]) -> RuleSet {
        // Old rule index → new rule index.
        let mut new_index = vec![None; self.rules.len()];
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if ids.contains(&r.id.as_str()) {
                new_index[i] = Some(rules.len());
                rules.push(r.clone());
            }
        }
        let mut patterns = Vec::new();
        let mut keyword_rules = Vec::new();
        for (pattern, enabled) in self.keyword_patterns.iter().zip(&self.keyword_rules) {
            let kept: Vec<usize> = enabled.iter().filter_map(|&i| new_index[i]).collect();
            if !kept.is_empty() {
                patterns.push(pattern.clone());
                keyword_rules.push(kept);
            }
        }
        let mut set = RuleSet::assemble(
            rules,
            self.global.clone(),
            patterns,
            keyword_rules,
            Vec::new(),
        )
        .expect("keywords that compiled once compile again");
        set.digest = format!("{}+only:{}", self.digest, ids.join(","));
        set
    }

    fn assemble(
        rules: Vec<Rule>,
        global: Vec<Allowlist>,
        patterns: Vec<String>,
        keyword_rules: Vec<Vec<usize>>,
        warnings: Vec<RuleWarning>,
    ) -> std::result::Result<RuleSet, String> {
        let keywords = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    // Over a hundred keywords, some of two or three bytes, defeat the SIMD
                    // prefilter: a full DFA is the fastest byte-at-a-time search (its size
                    // grows with the keywords; past a few thousand the crate chooses).
                    .kind((patterns.len() <= 4000).then_some(aho_corasick::AhoCorasickKind::DFA))
                    .build(&patterns)
                    .map_err(|e| format!("keywords: {e}"))?,
            )
        };
        let mut order: Vec<usize> = (0..rules.len()).collect();
        order.sort_by_key(|i| {
            (
                rules[*i].path.is_none(),
                rules[*i].id.starts_with("generic"),
            )
        });
        Ok(RuleSet {
            order,
            rules,
            global,
            keywords,
            keyword_patterns: patterns,
            keyword_rules,
            warnings,
            digest: String::new(),
        })
    }

    fn compile(text: &str, name: &str, base_dir: Option<&Path>, strict: bool) -> Result<RuleSet> {
        let parsed = parse_rules(text, name, base_dir, 0, false)?;
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        for d in &parsed.sources {
            h.update(d);
        }
        let digest = format!("sha256:{}", hex::encode(h.finalize()));
        let mut warnings: Vec<RuleWarning> = Vec::new();
        let mut rules = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let total = parsed.rules.len();
        for def in parsed.rules {
            let warn = |line: usize, detail: String| RuleWarning {
                source: def.source.clone(),
                line,
                rule: Some(def.id.clone()),
                detail,
            };
            if def.id.trim().is_empty() {
                warnings.push(warn(def.line, "the rule has an empty id".into()));
                continue;
            }
            let regex = match &def.regex {
                Some((line, re)) => match compile_regex(re) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warnings.push(warn(*line, format!("invalid regex: {e}")));
                        continue;
                    }
                },
                None => None,
            };
            let path = match &def.path {
                Some((line, re)) => match compile_regex(re) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warnings.push(warn(*line, format!("invalid path: {e}")));
                        continue;
                    }
                },
                None => None,
            };
            if regex.is_none() && path.is_none() {
                warnings.push(warn(def.line, "needs a regex or a path".into()));
                continue;
            }
            if let (Some(g), Some(re)) = (def.secret_group, &regex) {
                if g >= re.captures_len() {
                    warnings.push(warn(
                        def.line,
                        format!(
                            "secretGroup {g} is past the regex's {} groups",
                            re.captures_len() - 1
                        ),
                    ));
                    continue;
                }
            }
            if def.entropy.is_some_and(|e| !e.is_finite() || e < 0.0) {
                warnings.push(warn(def.line, "entropy must be a number >= 0".into()));
                continue;
            }
            let mut allowlists = Vec::new();
            for (n, a) in def.allowlists.iter().enumerate() {
                // A broken allowlist is left out whole: the rule then reports more, never less.
                match compile_allowlist(a) {
                    Ok(a) => allowlists.push(a),
                    Err(e) => warnings.push(warn(
                        def.line,
                        format!("allowlist #{} left out: {e}", n + 1),
                    )),
                }
            }
            let idx = rules.len();
            for k in &def.keywords {
                let k = k.to_lowercase();
                if k.is_empty() {
                    continue;
                }
                match patterns.iter().position(|p| *p == k) {
                    Some(p) => keyword_rules[p].push(idx),
                    None => {
                        patterns.push(k);
                        keyword_rules.push(vec![idx]);
                    }
                }
            }
            rules.push(Rule {
                needs_digit: !def.builtin && def.id.starts_with("generic") && def.entropy.is_some(),
                id: def.id,
                description: def.description,
                regex,
                secret_group: def.secret_group,
                entropy: def.entropy,
                path,
                allowlists,
                has_keywords: def.keywords.iter().any(|k| !k.is_empty()),
            });
        }
        let mut global = Vec::new();
        for g in parsed.global {
            match compile_allowlist(&g.raw) {
                Ok(a) => global.push(a),
                Err(e) => warnings.push(RuleWarning {
                    source: g.source,
                    line: g.line,
                    rule: None,
                    detail: format!("global allowlist left out: {e}"),
                }),
            }
        }
        let err = |detail: String| SupplyError::Rules {
            path: name.to_string(),
            detail,
        };
        if strict && !warnings.is_empty() {
            let list: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            return Err(err(format!(
                "{} problem(s), and strict rules allow none: {}",
                list.len(),
                list.join("; ")
            )));
        }
        if rules.is_empty() && total > 0 {
            let list: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            return Err(err(format!("no rule can be used: {}", list.join("; "))));
        }
        let mut set =
            RuleSet::assemble(rules, global, patterns, keyword_rules, warnings).map_err(err)?;
        set.digest = digest;
        Ok(set)
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
                    if shannon_entropy(secret.as_str()) <= min {
                        continue;
                    }
                    if rule.needs_digit && !secret.as_str().bytes().any(|b| b.is_ascii_digit()) {
                        continue;
                    }
                }
                let line_start = text[..whole.start()].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[whole.end()..]
                    .find('\n')
                    .map_or(text.len(), |i| whole.end() + i);
                let line = &text[line_start..line_end];
                if line.contains("gitleaks:allow")
                    || self.allowed(rule, secret.as_str(), whole.as_str(), line, path)
                {
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
            .chain(self.global.iter().filter(|a| a.applies_to(&rule.id)))
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
                "regexTarget {other:?} is not secret, match or line"
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
        "OR" | "" => false,
        "AND" => true,
        other => return Err(format!("condition {other:?} is not OR or AND")),
    };
    let compile = |v: &Vec<String>| -> std::result::Result<Vec<Regex>, String> {
        v.iter()
            .map(|r| compile_regex(r).map_err(|e| format!("invalid regex {r:?}: {e}")))
            .collect()
    };
    Ok(Allowlist {
        and,
        target,
        regexes: compile(&a.regexes)?,
        paths: compile(&a.paths)?,
        stopwords: a.stopwords.iter().map(|s| s.to_lowercase()).collect(),
        commits: !a.commits.is_empty(),
        target_rules: a.target_rules.clone(),
    })
}

impl Allowlist {
    fn applies_to(&self, rule: &str) -> bool {
        self.target_rules.is_empty() || self.target_rules.iter().any(|r| r == rule)
    }

    fn allows_path_only(&self, path: &str) -> bool {
        !self.and && self.target_rules.is_empty() && self.paths.iter().any(|r| r.is_match(path))
    }

    fn allows(&self, secret: &str, whole: &str, line: &str, path: Option<&str>) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        let lower = secret.to_lowercase();
        let mut checks: Vec<bool> = Vec::new();
        if self.commits {
            checks.push(false);
        }
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
