//! gitleaks's own default configuration (v8.24.0, read from the shared fixtures at test time,
//! never copied into the repository) loads, and its rules find what the real gitleaks finds:
//! for every rule, strings are generated from the rule's regex, the real gitleaks binary
//! confirms which are true positives for that rule, and cutover must find those too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::Rng;
use cutover_supply::RuleSet;
use regex_syntax::hir::{Class, Hir, HirKind};

/// The upstream gitleaks default configuration: `shared/fixtures/gitleaks` beside the
/// repository (searched upwards from this crate), or under `CUTOVER_SHARED_FIXTURES`.
/// Missing: fails when `CI=true`, else `None`.
fn upstream_config() -> Option<PathBuf> {
    let name = "gitleaks/gitleaks-v8.24.0.toml";
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("CUTOVER_SHARED_FIXTURES") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for up in manifest.ancestors().skip(1).take(4) {
        candidates.push(up.join("shared/fixtures").join(name));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    common::skip(&format!(
        "the gitleaks default configuration is absent (looked at {candidates:?}); set CUTOVER_SHARED_FIXTURES to the shared fixtures directory"
    ));
    None
}

#[derive(serde::Deserialize)]
struct UpstreamFile {
    rules: Vec<UpstreamRule>,
}

#[derive(serde::Deserialize)]
struct UpstreamRule {
    id: String,
    regex: Option<String>,
    path: Option<String>,
}

#[test]
fn upstream_default_config_loads_every_rule() {
    let Some(path) = upstream_config() else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let upstream: UpstreamFile = toml::from_str(&text).unwrap();
    let rules = RuleSet::load(&path).unwrap();
    for w in rules.warnings() {
        eprintln!("warning: {w}");
    }
    let loaded: BTreeSet<&str> = rules.rule_ids().collect();
    let failed: Vec<&str> = upstream
        .rules
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !loaded.contains(id))
        .collect();
    // The file carries no examples of its own (gitleaks keeps them in Go test files).
    let examples = text.lines().filter(|l| l.starts_with("examples")).count();
    eprintln!(
        "upstream v8.24.0: {} rules, {} loaded, failed: {failed:?}, examples in the file: {examples}",
        upstream.rules.len(),
        loaded.len()
    );
    assert_eq!(upstream.rules.len(), 206);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(rules.warnings().is_empty());
    // And strict loading agrees.
    assert_eq!(RuleSet::load_strict(&path).unwrap().len(), 206);

    // Extending it: useDefault is cutover's built-in rules; the upstream file can be the
    // base through `path`, with rules disabled and an allowlist added to one of them.
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("ext.toml");
    std::fs::write(
        &ext,
        format!(
            "[extend]\npath = {:?}\ndisabledRules = [\"generic-api-key\"]\n\n[[rules]]\nid = \"github-pat\"\n[[rules.allowlists]]\nregexTarget = \"line\"\nregexes = ['''test-fixture''']\n",
            path.display().to_string()
        ),
    )
    .unwrap();
    let extended = RuleSet::load_strict(&ext).unwrap();
    assert_eq!(extended.len(), 205);
    assert!(!extended.rule_ids().any(|id| id == "generic-api-key"));
    let token = format!("ghp_{}", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY2zA4");
    let ids = |text: &str| -> Vec<String> {
        extended
            .scan_text(text, Some("src/app.env"))
            .iter()
            .map(|r| extended.rule_id(r).to_string())
            .collect()
    };
    assert_eq!(ids(&format!("TOKEN={token}\n")), ["github-pat"]);
    // The digest covers the extended file: a change there is a change of the rules.
    let before = extended.digest().to_string();
    assert!(before.starts_with("sha256:"));
    assert_eq!(RuleSet::load(&ext).unwrap().digest(), before);
    let base = dir.path().join("base.toml");
    std::fs::write(&base, "[[rules]]\nid = \"b\"\nregex = '''b_[0-9]{4}'''\n").unwrap();
    std::fs::write(&ext, "[extend]\npath = \"base.toml\"\n").unwrap();
    let one = RuleSet::load_strict(&ext).unwrap().digest().to_string();
    std::fs::write(&base, "[[rules]]\nid = \"b\"\nregex = '''b_[0-9]{5}'''\n").unwrap();
    assert_ne!(RuleSet::load_strict(&ext).unwrap().digest(), one);
    assert_ne!(RuleSet::default_rules().digest(), one);
    assert!(ids(&format!("TOKEN={token} # test-fixture\n")).is_empty());
}

/// Writes a string the regex matches, choosing randomly among alternatives and characters.
struct Generator<'a> {
    rng: &'a mut Rng,
}

impl Generator<'_> {
    fn emit(&mut self, hir: &Hir, out: &mut String) {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => {}
            HirKind::Literal(lit) => out.push_str(&String::from_utf8_lossy(&lit.0)),
            HirKind::Class(Class::Unicode(c)) => {
                let chars: Vec<char> = c
                    .ranges()
                    .iter()
                    .flat_map(|r| {
                        let (a, b) = (r.start().min('\u{7f}'), r.end().min('\u{7e}'));
                        (a..=b).filter(|c| !c.is_ascii_control())
                    })
                    .collect();
                let alnum: Vec<char> = chars
                    .iter()
                    .copied()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect();
                let pool = if alnum.is_empty() { chars } else { alnum };
                match pool.len() {
                    0 => out.push(c.ranges().first().map_or(' ', |r| r.start())),
                    n => out.push(pool[self.rng.below(n)]),
                }
            }
            HirKind::Class(Class::Bytes(c)) => {
                let b = c.ranges().first().map_or(b' ', |r| r.start());
                out.push(b as char);
            }
            HirKind::Repetition(rep) => {
                let n = match (rep.max, rep.greedy) {
                    (_, false) => rep.min,
                    (Some(max), true) if max - rep.min <= 64 => max,
                    (Some(_), true) => rep.min + 32,
                    (None, true) => rep.min.max(1) + self.rng.below(12) as u32,
                };
                for _ in 0..n {
                    self.emit(&rep.sub, out);
                }
            }
            HirKind::Capture(c) => self.emit(&c.sub, out),
            HirKind::Concat(hs) => hs.iter().for_each(|h| self.emit(h, out)),
            HirKind::Alternation(hs) => {
                let i = self.rng.below(hs.len());
                self.emit(&hs[i], out);
            }
        }
    }
}

fn generate(go_regex: &str, seed: u64) -> Option<String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(&cutover_supply::re2::translate(go_regex))
        .ok()?;
    let mut rng = Rng(seed);
    let mut out = String::new();
    Generator { rng: &mut rng }.emit(&hir, &mut out);
    Some(out)
}

/// A file name a rule's `path` regex accepts (letters, digits, `._-` only).
fn file_name(path_regex: &str, seed: u64) -> Option<String> {
    let re = regex::Regex::new(&cutover_supply::re2::translate(path_regex)).ok()?;
    (0..20).find_map(|i| {
        let name = generate(path_regex, seed + i)?;
        let name = name.rsplit('/').next()?.to_string();
        (!name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && re.is_match(&name))
        .then_some(name)
    })
}

#[test]
fn upstream_rules_find_what_gitleaks_finds() {
    let Some(config) = upstream_config() else {
        return;
    };
    let text = std::fs::read_to_string(&config).unwrap();
    let upstream: UpstreamFile = toml::from_str(&text).unwrap();
    let Some(bin) = common::gitleaks() else {
        return;
    };
    const TRIES: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    // (rule index, try) → file path relative to `dir`.
    let mut files: BTreeMap<(usize, u64), String> = BTreeMap::new();
    for (i, rule) in upstream.rules.iter().enumerate() {
        for t in 0..TRIES {
            let seed = (i as u64) << 8 | t;
            let body = match &rule.regex {
                Some(re) => match generate(re, seed) {
                    Some(b) if !b.contains('\n') => b,
                    _ => continue,
                },
                None => "binary".to_string(),
            };
            let name = match &rule.path {
                Some(p) => match file_name(p, seed) {
                    Some(n) => n,
                    None => continue,
                },
                None => "sample.txt".to_string(),
            };
            let rel = format!("r{i:03}-{t}/{name}");
            let full = dir.path().join(&rel);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, format!("\n{body}\n")).unwrap();
            files.insert((i, t), rel);
        }
    }
    let found = common::run_gitleaks(&bin, dir.path(), Some(&config), false);
    let by_gitleaks: BTreeSet<(String, String)> =
        found.into_iter().map(|f| (f.file, f.rule)).collect();

    // cutover, one rule at a time (gitleaks reports every rule that matches, while a
    // RuleSet reports one rule per secret).
    let all = RuleSet::load_strict(&config).unwrap();
    let mut confirmed_rules = 0;
    let mut agreed_rules = 0;
    let mut confirmed_strings = 0;
    let mut agreed_strings = 0;
    let mut missed: Vec<String> = Vec::new();
    let mut unconfirmed: Vec<&str> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    for (i, rule) in upstream.rules.iter().enumerate() {
        let one = all.only(&[rule.id.as_str()]);
        let (confirmed, rejected): (Vec<&String>, Vec<&String>) = (0..TRIES)
            .filter_map(|t| files.get(&(i, t)))
            .partition(|rel| by_gitleaks.contains(&(rel.to_string(), rule.id.clone())));
        // Strings gitleaks does not report for this rule (its allowlists, stopwords, entropy
        // or keywords drop them): cutover must drop them too.
        for rel in rejected {
            let content = std::fs::read_to_string(dir.path().join(rel)).unwrap();
            if !one.scan_text(&content, Some(rel)).is_empty() {
                extra.push(format!("{} ({rel}: {:?})", rule.id, content.trim()));
            }
        }
        if confirmed.is_empty() {
            unconfirmed.push(&rule.id);
            continue;
        }
        assert_eq!(one.len(), 1);
        confirmed_rules += 1;
        let mut rule_agrees = false;
        for rel in confirmed {
            confirmed_strings += 1;
            let content = std::fs::read_to_string(dir.path().join(rel)).unwrap();
            let hit = !one.scan_text(&content, Some(rel)).is_empty();
            if hit {
                agreed_strings += 1;
                rule_agrees = true;
            } else {
                missed.push(format!("{} ({rel}: {:?})", rule.id, content.trim()));
            }
        }
        agreed_rules += usize::from(rule_agrees);
    }
    eprintln!(
        "generated true positives: gitleaks 8.30 confirmed {confirmed_strings} strings for {confirmed_rules} of {} rules; cutover finds {agreed_strings} of those strings, covering {agreed_rules} rules",
        upstream.rules.len()
    );
    eprintln!("rules without a confirmed string: {unconfirmed:?}");
    for m in &missed {
        eprintln!("cutover misses: {m}");
    }
    for m in &extra {
        eprintln!("cutover reports what gitleaks does not: {m}");
    }
    let generated = files.len();
    eprintln!(
        "of {generated} generated strings, {} were not confirmed by gitleaks; cutover reports {} of those",
        generated - confirmed_strings,
        extra.len()
    );
    assert!(
        confirmed_rules >= 150,
        "too few rules confirmed by gitleaks"
    );
    assert!(missed.is_empty(), "{} strings missed", missed.len());
    assert!(
        extra.is_empty(),
        "{} strings reported beyond gitleaks",
        extra.len()
    );
}

#[test]
fn unusable_rules_are_warnings_with_lines_and_fatal_when_strict() {
    let text = r#"title = "mixed"

[[rules]]
id = "good"
regex = '''tok_[a-z0-9]{8}'''
keywords = ["tok_"]

[[rules]]
id = "lookahead"
description = "Go's RE2 has no lookaround either, so gitleaks refuses it too"
regex = '''key(?=[0-9])'''

[[rules]]
id = "braces"
regex = '''curl\s+-u\s+{{user}}:([a-z]{6,})'''
secretGroup = 1

[[rules]]
id = "no-pattern"

[[rules]]
id = "bad-group"
regex = '''x([a-z]+)'''
secretGroup = 3

[[rules]]
id = "bad-allowlist"
regex = '''bad_[a-z]{6}'''
[rules.allowlist]
regexes = ['''(unclosed''']
"#;
    let rules = RuleSet::from_toml(text, "mixed.toml").unwrap();
    let ids: Vec<&str> = rules.rule_ids().collect();
    assert_eq!(ids, ["good", "braces", "bad-allowlist"]);
    let w: Vec<String> = rules.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 4, "{w:#?}");
    assert!(
        w[0].starts_with("mixed.toml, line 11: rule lookahead: invalid regex: "),
        "{w:#?}"
    );
    assert_eq!(
        w[1],
        "mixed.toml, line 19: rule no-pattern: needs a regex or a path"
    );
    assert!(
        w[2].starts_with("mixed.toml, line 22: rule bad-group: secretGroup 3"),
        "{w:#?}"
    );
    assert!(
        w[3].starts_with("mixed.toml, line 27: rule bad-allowlist: allowlist #1 left out"),
        "{w:#?}"
    );
    // Literal braces as RE2 reads them; the left-out allowlist fails closed (more findings).
    let hits = rules.scan_text("curl -u {{user}}:hunter\nbad_abcdef\n", Some("x"));
    let found: Vec<&str> = hits.iter().map(|h| rules.rule_id(h)).collect();
    assert_eq!(found, ["braces", "bad-allowlist"]);
    // A scan with these rules carries the warnings in its report.
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    cutover_supply::synth::SynthImage::new()
        .layer(
            vec![cutover_supply::synth::SynthImage::file(
                "app/run.sh",
                "curl -u {{user}}:hunter\n",
            )],
            false,
        )
        .write(&tar, false)
        .unwrap();
    let report = cutover_supply::scan(
        &tar,
        &cutover_supply::AdvisoryDb::default(),
        &rules,
        cutover_supply::Limits::default(),
    )
    .unwrap();
    assert_eq!(report.findings.secrets.len(), 1);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("secret rule left out: mixed.toml, line 11: rule lookahead")),
        "{:?}",
        report.warnings
    );
    // Strict: the same file is an error listing every problem.
    let err = RuleSet::from_toml_strict(text, "mixed.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("rule file mixed.toml: 4 problem(s)"),
        "{err}"
    );
    assert!(err.contains("line 22: rule bad-group"), "{err}");
    // A global allowlist that does not compile is left out, named by its line.
    let rules = RuleSet::from_toml(
        "[[rules]]\nid = \"a\"\nregex = '''a_[0-9]{4}'''\n\n[allowlist]\nregexes = ['''(x''']\n",
        "g.toml",
    )
    .unwrap();
    assert_eq!(
        rules.warnings()[0].to_string(),
        "g.toml, line 5: global allowlist left out: invalid regex \"(x\": unclosed group"
    );
    assert_eq!(rules.scan_text("a_1234", Some("x")).len(), 1);
    // A file none of whose rules can be used is an error even when lenient.
    let err = RuleSet::from_toml("[[rules]]\nid = \"x\"\nregex = '''(a'''\n", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no rule can be used"), "{err}");
}

#[test]
fn allowlist_forms_as_gitleaks_reads_them() {
    let rules = RuleSet::from_toml_strict(
        r#"
[[rules]]
id = "generic-token"
regex = '''(?i)token\s*=\s*([a-z0-9]{10,})'''
entropy = 2.5
keywords = ["TOKEN"]
# Old single form: stopwords.
[rules.allowlist]
stopwords = ["sample"]
# AND: both the path and the line must match.
[[rules.allowlists]]
condition = "AND"
paths = ['''^test/''']
regexTarget = "line"
regexes = ['''#\s*fake''']
# Commits never apply to an image (it has none).
[[rules.allowlists]]
commits = ["0123456789abcdef"]
# The match rather than the secret.
[[rules.allowlists]]
regexTarget = "match"
regexes = ['''^TOKEN = ''']

[allowlist]
paths = ['''\.lock$''']
"#,
        "forms.toml",
    )
    .unwrap();
    let n = |text: &str, path: &str| rules.scan_text(text, Some(path)).len();
    let secret = "k3j5h7g9f1d2s4a6";
    assert_eq!(n(&format!("token = {secret}"), "src/a"), 1);
    // gitleaks: entropy must be above the threshold, and generic rules need a digit.
    assert_eq!(n("token = kkkkkkkkkkkk", "src/a"), 0);
    assert_eq!(n("token = kjhgfdsaqwerty", "src/a"), 0);
    assert_eq!(n(&format!("token = sample{secret}"), "src/a"), 0);
    assert_eq!(n(&format!("token = {secret} # fake"), "test/a"), 0);
    assert_eq!(n(&format!("token = {secret} # fake"), "src/a"), 1);
    assert_eq!(n(&format!("token = {secret}"), "test/a"), 1);
    assert_eq!(n(&format!("TOKEN = {secret}"), "src/a"), 0);
    assert_eq!(n(&format!("token = {secret}"), "deps/Cargo.lock"), 0);
    assert_eq!(n(&format!("token = {secret} # gitleaks:allow"), "src/a"), 0);
    // Keywords are case-insensitive; without the keyword the regex is not run.
    assert_eq!(n(&format!("ToKeN = {secret}"), "src/a"), 1);
}
