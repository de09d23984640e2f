//! Translation of Go RE2 regular expressions (the syntax of gitleaks rule files) into the
//! syntax of the `regex` crate, keeping Go's meaning:
//!
//! - a `{` that does not start a valid repetition (`{n}`, `{n,}`, `{n,m}` after something
//!   repeatable) is a literal brace, and so is every `}` outside a repetition;
//! - `\w`, `\d`, `\s` and `\b` are ASCII-only in Go: they become explicit ASCII classes;
//! - `\Q…\E` quotes a literal;
//! - inside a character class, `[` (unless it opens `[:name:]`), `&&`, `~~` and `--` are
//!   literals in Go but class operators in Rust: they are escaped.
//!
//! Everything else (flags such as `(?i)` anywhere, `\z`, `\A`, `\pN`, `\x{…}`, named groups)
//! already means the same in both and is copied.

const WORD: &str = "0-9A-Za-z_";
const DIGIT: &str = "0-9";
const SPACE: &str = r"\t\n\x0C\r ";

/// The `regex`-crate form of the Go regular expression `re`.
pub fn translate(re: &str) -> String {
    let chars: Vec<char> = re.chars().collect();
    let mut out = String::with_capacity(re.len() + 16);
    let mut i = 0;
    // Whether the previous item can take a repetition operator.
    let mut can_repeat = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                i = escape(&chars, i, &mut out, false);
                can_repeat = true;
                continue;
            }
            '[' => {
                i = class(&chars, i, &mut out);
                can_repeat = true;
                continue;
            }
            '{' => match repetition(&chars, i) {
                Some(end) if can_repeat => {
                    out.extend(&chars[i..end]);
                    i = end;
                    if chars.get(i) == Some(&'?') {
                        out.push('?');
                        i += 1;
                    }
                    can_repeat = false;
                    continue;
                }
                _ => {
                    out.push_str(r"\{");
                    can_repeat = true;
                }
            },
            '}' => {
                out.push_str(r"\}");
                can_repeat = true;
            }
            '(' => {
                out.push('(');
                can_repeat = false;
            }
            ')' => {
                out.push(')');
                can_repeat = true;
            }
            '|' | '^' | '$' => {
                out.push(c);
                can_repeat = false;
            }
            '*' | '+' | '?' => {
                out.push(c);
                if chars.get(i + 1) == Some(&'?') {
                    out.push('?');
                    i += 1;
                }
                can_repeat = false;
            }
            _ => {
                out.push(c);
                can_repeat = true;
            }
        }
        i += 1;
    }
    out
}

/// The end (exclusive) of a `{n}`, `{n,}` or `{n,m}` starting at `start`, if it is one.
fn repetition(chars: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    let digits = |i: &mut usize| {
        let from = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        *i > from
    };
    if !digits(&mut i) {
        return None;
    }
    if chars.get(i) == Some(&',') {
        i += 1;
        digits(&mut i);
    }
    (chars.get(i) == Some(&'}')).then_some(i + 1)
}

/// Translates the escape at `chars[i] == '\\'`; returns the index after it.
fn escape(chars: &[char], i: usize, out: &mut String, in_class: bool) -> usize {
    let Some(&c) = chars.get(i + 1) else {
        // A trailing backslash: let the regex crate report it.
        out.push('\\');
        return i + 1;
    };
    let class = |out: &mut String, body: &str, negated: bool| {
        if in_class && !negated {
            out.push_str(body);
        } else if in_class {
            // A negated ASCII class inside a class: the Unicode form is the closest.
            out.push('\\');
            out.push(c);
        } else {
            out.push('[');
            if negated {
                out.push('^');
            }
            out.push_str(body);
            out.push(']');
        }
    };
    match c {
        'w' => class(out, WORD, false),
        'W' => class(out, WORD, true),
        'd' => class(out, DIGIT, false),
        'D' => class(out, DIGIT, true),
        's' => class(out, SPACE, false),
        'S' => class(out, SPACE, true),
        'b' if !in_class => out.push_str(r"(?-u:\b)"),
        'B' if !in_class => out.push_str(r"(?-u:\B)"),
        'Q' => {
            let mut j = i + 2;
            let mut lit = String::new();
            while j < chars.len() && !(chars[j] == '\\' && chars.get(j + 1) == Some(&'E')) {
                lit.push(chars[j]);
                j += 1;
            }
            if in_class {
                for ch in lit.chars() {
                    push_class_literal(out, ch);
                }
            } else {
                out.push_str(&regex::escape(&lit));
            }
            return if j < chars.len() { j + 2 } else { j };
        }
        'p' | 'P' | 'x' if chars.get(i + 2) == Some(&'{') => {
            let end = chars[i..]
                .iter()
                .position(|ch| *ch == '}')
                .map_or(chars.len(), |p| i + p + 1);
            out.extend(&chars[i..end]);
            return end;
        }
        'x' => {
            let end = (i + 4).min(chars.len());
            out.extend(&chars[i..end]);
            return end;
        }
        'p' | 'P' => {
            let end = (i + 3).min(chars.len());
            out.extend(&chars[i..end]);
            return end;
        }
        _ => {
            out.push('\\');
            out.push(c);
        }
    }
    i + 2
}

fn push_class_literal(out: &mut String, ch: char) {
    if matches!(ch, '[' | ']' | '\\' | '&' | '~' | '-' | '^') {
        out.push('\\');
    }
    out.push(ch);
}

/// Translates the class starting at `chars[start] == '['`; returns the index after it.
fn class(chars: &[char], start: usize, out: &mut String) -> usize {
    out.push('[');
    let mut i = start + 1;
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        out.push_str(r"\]");
        i += 1;
    }
    while i < chars.len() {
        let c = chars[i];
        match c {
            ']' => {
                out.push(']');
                return i + 1;
            }
            '\\' => {
                i = escape(chars, i, out, true);
                continue;
            }
            '[' => {
                // `[:alpha:]` and friends are the same in both; any other `[` is literal.
                if chars.get(i + 1) == Some(&':') {
                    if let Some(p) = chars[i + 2..].windows(2).position(|w| w == [':', ']']) {
                        let end = i + 2 + p + 2;
                        out.extend(&chars[i..end]);
                        i = end;
                        continue;
                    }
                }
                out.push_str(r"\[");
            }
            '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                // `a--` in Go is a range ending at `-`; Rust reads `--` as set difference.
                out.push_str(r"-\-");
                i += 2;
                continue;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    // Unterminated: the regex crate reports it.
    i
}

#[cfg(test)]
mod tests {
    use super::translate;

    fn ok(go: &str) -> regex::Regex {
        let t = translate(go);
        regex::Regex::new(&t).unwrap_or_else(|e| panic!("{go} -> {t}: {e}"))
    }

    #[test]
    fn literal_braces_are_escaped() {
        let re = ok(r"^\{\{[ \t]*[\w ().|]+[ \t]*}}$");
        assert!(re.is_match("{{ .Values.token }}"));
        let re = ok(r"^\$(?:\d+|{\d+})$");
        assert!(re.is_match("${12}") && re.is_match("$1") && !re.is_match("${x}"));
        let re = ok(r"curl.{0,4}\s{user}");
        assert!(re.is_match("curl -u {user}"));
        // `{,3}` is a literal in RE2; a repetition right after `(` too.
        assert!(ok(r"a{,3}").is_match("a{,3}"));
        assert!(ok(r"({2})").is_match("{2}"));
        assert!(ok(r"a{2,3}?b").is_match("aab"));
        assert!(!ok(r"^a{2}$").is_match("a{2}"));
    }

    #[test]
    fn ascii_classes_and_boundaries() {
        let re = ok(r"^\w+\s\d$");
        assert!(re.is_match("abc_9 1"));
        assert!(!re.is_match("é 1"), "\\w is ASCII in Go");
        assert!(!ok(r"^\d$").is_match("٣"));
        assert!(ok(r"[\w.-]+").is_match("a.b-c"));
        assert!(ok(r"\bkey\b").is_match("é key é"));
        assert!(ok(r"(?i)x(?-i)Y\z").is_match("XY"));
    }

    #[test]
    fn class_operators_are_literals() {
        let re = ok(r"^[a&&b~~c[]+$");
        assert!(re.is_match("a&&b~~c["));
        assert!(ok(r"^[+--]$").is_match(","));
        assert!(ok(r"^[]a]$").is_match("]"));
        assert!(ok(r"^[[:alpha:]]+$").is_match("abc"));
        assert!(ok(r"^\Qa.b{1}\E$").is_match("a.b{1}"));
        assert!(!ok(r"^\Qa.b\E$").is_match("axb"));
        assert!(ok(r"^\x{41}\x42\pL\p{Greek}$").is_match("ABxα"));
    }
}
