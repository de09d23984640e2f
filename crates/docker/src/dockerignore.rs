//! `.dockerignore` with the semantics of Docker's own matcher (moby's `patternmatcher` and
//! `ignorefile`, as the docker CLI and BuildKit apply them when they send a context).
//!
//! - Reading: a line whose first character is `#` is a comment; other lines are trimmed,
//!   empty ones skipped; `!` marks an exception; each pattern is cleaned like Go's
//!   `filepath.Clean` (`./x` is `x`, `a/../b` is `b`, `dir/` is `dir`) and a leading `/`
//!   is dropped. A UTF-8 byte order mark on the first line is ignored.
//! - Matching: patterns match the whole `/`-separated path relative to the context. `*`
//!   and `?` never cross a `/`; `[...]` is a character class; `\` escapes the next
//!   character; `**` matches any number of directories (also none), `**` at the end
//!   matches everything below. There is no "match at any depth" as in gitignore: `*.md`
//!   matches `a.md` only at the top.
//! - A pattern that matches a parent directory matches everything below it. The last
//!   matching pattern wins; `!` exceptions re-include.
//! - Walking: an excluded directory is not entered unless some exception pattern, read as
//!   text, starts with the directory's path followed by `/` (so `!dir/keep` keeps
//!   `dir/keep` below an excluded `dir`, while `!**/keep` does not reach into it — as in
//!   Docker). An excluded directory that is entered is not sent itself; what is re-included
//!   inside it is.

use regex::Regex;

/// One pattern of a `.dockerignore`.
#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without the `!`.
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// `prefix**`: every path starting with the prefix.
    Prefix(String),
    /// `**suffix`: every path ending with the suffix (and `x` for `**/x`).
    Suffix(String),
    Regex(Regex),
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix
                        .strip_prefix('/')
                        .is_some_and(|rest| !rest.is_empty() && path == rest)
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoreRules {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// Which patterns matched a directory, to match its entries against (moby's `MatchInfo`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ParentMatches(Vec<bool>);

/// A `.dockerignore` line Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadPattern {
    pub(crate) line: usize,
    pub(crate) pattern: String,
    pub(crate) reason: String,
}

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            ".dockerignore:{}: {:?}: {}; fix or remove the pattern",
            self.line, self.pattern, self.reason
        )
    }
}

impl IgnoreRules {
    /// Read a `.dockerignore` the way Docker reads it.
    pub(crate) fn parse(text: &str) -> Result<IgnoreRules, BadPattern> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        let mut exclusions = false;
        for (index, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: &str| BadPattern {
                line: index + 1,
                pattern: line.to_string(),
                reason: reason.to_string(),
            };
            let (exclusion, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if exclusion && rest.is_empty() {
                return Err(bad("an exception needs a pattern after the !"));
            }
            let mut cleaned = go_clean(rest);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let kind = compile(&cleaned).map_err(|reason| bad(&reason))?;
            exclusions |= exclusion;
            patterns.push(Pattern {
                cleaned,
                exclusion,
                kind,
            });
        }
        Ok(IgnoreRules {
            patterns,
            exclusions,
        })
    }

    /// Whether `path` (relative, `/`-separated) is excluded, given what matched its parent
    /// directory; also returns what to pass on to the entries of `path` if it is a directory.
    pub(crate) fn matches(&self, path: &str, parent: &ParentMatches) -> (bool, ParentMatches) {
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.0.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && parent.0.is_empty() {
                    // No parent information: try every parent directory.
                    let mut end = 0;
                    while let Some(slash) = path[end..].find('/') {
                        end += slash;
                        if pattern.matches(&path[..end]) {
                            hit = true;
                            break;
                        }
                        end += 1;
                    }
                }
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, ParentMatches(info))
    }

    /// Whether `path`, matched on its own (parents included), is excluded.
    #[cfg(test)]
    pub(crate) fn is_ignored(&self, path: &str) -> bool {
        self.matches(path, &ParentMatches::default()).0
    }

    /// Whether an excluded directory must still be entered because an exception could
    /// re-include something inside it.
    pub(crate) fn must_enter(&self, dir: &str) -> bool {
        if !self.exclusions {
            return false;
        }
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", p.cleaned).starts_with(&dir_slash))
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(last) if *last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Translate one cleaned pattern as moby's `Pattern.compile` does.
fn compile(pattern: &str) -> Result<MatchKind, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    check_syntax(pattern)?;
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let mut i = 0;
    while i < chars.len() {
        let first = i == 0;
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(i) {
                Some(next) => {
                    re.push('\\');
                    re.push(*next);
                    i += 1;
                    kind = Kind::Regex;
                }
                None => re.push_str("\\\\"),
            },
            '[' | ']' => {
                re.push(ch);
                kind = Kind::Regex;
            }
            // Characters the regex crate reads as class set operators: keep them literal.
            '&' | '~' | '-' if !inside_class(&re) => re.push(ch),
            '&' | '~' => {
                re.push('\\');
                re.push(ch);
            }
            other => re.push(other),
        }
    }
    Ok(match kind {
        Kind::Exact => MatchKind::Exact,
        Kind::Prefix => MatchKind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => MatchKind::Suffix(pattern[2..].to_string()),
        Kind::Regex => {
            re.push('$');
            MatchKind::Regex(Regex::new(&re).map_err(|e| {
                format!(
                    "not a valid pattern ({})",
                    e.to_string().lines().last().unwrap_or("syntax error")
                )
            })?)
        }
    })
}

/// Whether the regex text built so far ends inside an open `[` class.
fn inside_class(re: &str) -> bool {
    let mut depth = false;
    let mut escaped = false;
    for ch in re.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => depth = true,
            ']' => depth = false,
            _ => {}
        }
    }
    depth
}

/// The checks of Go's `filepath.Match` (which Docker runs on every pattern): classes must be
/// closed and not empty, and a pattern must not end in a lone `\`.
fn check_syntax(pattern: &str) -> Result<(), String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return Err("a pattern cannot end with \\".to_string());
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                let start = i;
                loop {
                    match chars.get(i) {
                        None => return Err("a [ class is not closed".to_string()),
                        Some(']') if i > start => break,
                        Some(']') => return Err("a [] class is empty".to_string()),
                        Some('\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text).expect("valid .dockerignore")
    }

    #[test]
    fn paths_are_cleaned_like_go() {
        assert_eq!(go_clean("./x"), "x");
        assert_eq!(go_clean("a/../b"), "b");
        assert_eq!(go_clean("dir/"), "dir");
        assert_eq!(go_clean("a//b/./c/"), "a/b/c");
        assert_eq!(go_clean("../x"), "../x");
        assert_eq!(go_clean("/../x"), "/x");
        assert_eq!(go_clean("a/.."), ".");
        assert_eq!(go_clean("/"), "/");
    }

    #[test]
    fn double_star_matches_any_number_of_directories() {
        let r = rules("**/.env\ndocs/**/*.tmp\n");
        assert!(r.is_ignored(".env"));
        assert!(r.is_ignored("a/.env"));
        assert!(r.is_ignored("a/b/c/.env"));
        assert!(!r.is_ignored("a/x.env"));
        assert!(r.is_ignored("docs/a.tmp"));
        assert!(r.is_ignored("docs/x/y/a.tmp"));
        assert!(!r.is_ignored("a.tmp"));
        assert!(!r.is_ignored("other/docs/a.tmp"));
    }

    #[test]
    fn patterns_without_a_slash_do_not_match_at_depth() {
        // gitignore would match sub/a.md; Docker does not.
        let r = rules("*.md\n");
        assert!(r.is_ignored("a.md"));
        assert!(!r.is_ignored("sub/a.md"));
    }

    #[test]
    fn classes_question_marks_and_escapes() {
        let r = rules("[ab]*.txt\n?.log\n[!x]y\nlit\\*\n");
        assert!(r.is_ignored("a1.txt"));
        assert!(r.is_ignored("b.txt"));
        assert!(!r.is_ignored("c.txt"));
        assert!(r.is_ignored("1.log"));
        assert!(!r.is_ignored("12.log"));
        assert!(!r.is_ignored("d/1.log"));
        // Docker hands `[!x]` to a regexp, where ! is a member of the class, not negation.
        assert!(r.is_ignored("!y"));
        assert!(!r.is_ignored("ay"));
        assert!(r.is_ignored("lit*"));
        assert!(!r.is_ignored("litx"));
    }

    #[test]
    fn exceptions_last_match_wins() {
        let r = rules("*.md\n!README.md\n");
        assert!(r.is_ignored("CHANGES.md"));
        assert!(!r.is_ignored("README.md"));
        let r = rules("!README.md\n*.md\n");
        assert!(
            r.is_ignored("README.md"),
            "a later pattern wins over an earlier exception"
        );
    }

    #[test]
    fn excluded_directories_exclude_their_contents_unless_an_exception_reaches_in() {
        let r = rules("dir/\n!dir/keep\n");
        assert!(r.is_ignored("dir"));
        assert!(r.is_ignored("dir/other"));
        assert!(!r.is_ignored("dir/keep"));
        assert!(r.must_enter("dir"));
        let r = rules("dir\n!**/keep\n");
        assert!(
            !r.must_enter("dir"),
            "a wildcard exception does not reach in"
        );
        let r = rules("**\n!src\n");
        assert!(r.is_ignored("Dockerfile"));
        assert!(!r.is_ignored("src"));
        assert!(!r.is_ignored("src/main.rs"));
        assert!(r.must_enter("src"));
        assert!(!r.must_enter("target"));
    }

    #[test]
    fn leading_slashes_dots_and_comments() {
        let r = rules("# secret\n/secret\n./x\na/../b\n #notacomment\n  spaced  \r\n");
        assert!(r.is_ignored("secret"));
        assert!(!r.is_ignored("# secret"));
        assert!(r.is_ignored("x"));
        assert!(r.is_ignored("b"));
        assert!(!r.is_ignored("a"));
        assert!(r.is_ignored("#notacomment"));
        assert!(r.is_ignored("spaced"));
    }

    #[test]
    fn parent_results_are_carried_down() {
        let r = rules("*/b\n!a\n");
        let (a, info) = r.matches("a", &ParentMatches::default());
        assert!(!a);
        // The exception was not evaluated for `a` (nothing was excluded yet), so it does
        // not apply below it either: Docker excludes a/b.
        assert!(r.matches("a/b", &info).0);
    }

    #[test]
    fn bad_patterns_name_their_line() {
        let err = IgnoreRules::parse("ok\n[abc\n").expect_err("unclosed class");
        assert_eq!(err.line, 2);
        assert!(
            err.to_string().starts_with(".dockerignore:2: \"[abc\""),
            "{err}"
        );
        assert!(IgnoreRules::parse("!\n").is_err());
        assert!(IgnoreRules::parse("x\\").is_err());
    }
}
