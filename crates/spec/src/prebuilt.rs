//! A spec's text as a deploy by image (`cutover deploy --image`) sent from CI means it: its
//! `[build]` replaced by the prebuilt image, and the files that only the sender's machine
//! holds left out: the build source, the signing key (the control plane signs its own
//! verdict) and the trusted keys (an environment trusts what its guardrails hold, or the
//! control plane's own key). Nothing of them is looked for or read. Every other line keeps
//! its number, so errors still point at the sender's file.

/// The table header a line opens (`[name]` or `[[name]]`), its name with spaces trimmed.
fn header(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let (open, close) = if t.starts_with("[[") {
        ("[[", "]]")
    } else if t.starts_with('[') {
        ("[", "]")
    } else {
        return None;
    };
    let inner = &t[open.len()..];
    let end = inner.find(close)?;
    let rest = inner[end + close.len()..].trim_start();
    // A header is alone on its line (a comment may follow); `["a"],` in an array is not.
    (rest.is_empty() || rest.starts_with('#')).then(|| inner[..end].trim())
}

/// Whether `line` of table `table` sets a key naming a file on the sender's machine:
/// `[supply] signing_key`, or an environment's `trusted_keys`.
fn senders_file(table: &str, line: &str) -> bool {
    let Some((key, _)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim();
    let environment = table
        .strip_prefix("environments.")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('.'));
    (table == "supply" && key == "signing_key") || (environment && key == "trusted_keys")
}

/// Open minus closing brackets on a line (a multi-line array goes on while positive).
fn brackets(line: &str) -> i32 {
    line.chars().fold(0, |n, c| match c {
        '[' => n + 1,
        ']' => n - 1,
        _ => n,
    })
}

fn in_build(name: &str) -> bool {
    name == "build" || name.starts_with("build.")
}

/// `text` with the lines of its `[build]` table (and `[build.*]` sub-tables) emptied and
/// `image = "<reference>"` in place of the table's first line; a spec without a `[build]`
/// table gets one at its end.
pub fn with_prebuilt_image(text: &str, reference: &str) -> String {
    let image_line = format!("image = {}", toml::Value::String(reference.to_string()));
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    let mut placed = false;
    // The header was seen, the image line not yet written.
    let mut pending = false;
    // The current table's name, and the open brackets of a multi-line value being left out.
    let mut table = String::new();
    let mut dropping = 0i32;
    for line in text.lines() {
        if dropping > 0 {
            dropping += brackets(line);
            out.push(String::new());
            continue;
        }
        if header(line).is_none() && !inside && senders_file(&table, line) {
            dropping = brackets(line).max(0);
            out.push(String::new());
            continue;
        }
        if let Some(name) = header(line) {
            table = name.to_string();
            if pending {
                // A `[build]` without a body: one line more, after it.
                out.push(image_line.clone());
                pending = false;
            }
            inside = in_build(name);
            if inside && name == "build" && !placed {
                out.push(line.to_string());
                placed = true;
                pending = true;
            } else if inside {
                out.push(String::new());
            } else {
                out.push(line.to_string());
            }
            continue;
        }
        if !inside {
            out.push(line.to_string());
        } else if pending {
            out.push(image_line.clone());
            pending = false;
        } else {
            out.push(String::new());
        }
    }
    if pending {
        out.push(image_line.clone());
    }
    if !placed {
        out.push("[build]".to_string());
        out.push(image_line);
    }
    let mut joined = out.join("\n");
    if text.ends_with('\n') || !placed {
        joined.push('\n');
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "127.0.0.1:5000/hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_build_table_becomes_the_image_and_other_lines_keep_their_numbers() {
        let text = "app = \"hello\"\n\n[build]\ncargo = \"examples/hello/Cargo.toml\"\nbin = \"hello\"\n\n[build.args]\nA = \"1\"\n[container]\nport = 8080\n";
        let out = with_prebuilt_image(text, IMAGE);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), text.lines().count());
        assert_eq!(lines[2], "[build]");
        assert_eq!(lines[3], format!("image = \"{IMAGE}\""));
        assert!(lines[4..8].iter().all(|l| l.is_empty()), "{lines:?}");
        assert_eq!(lines[8], "[container]");
        assert_eq!(lines[9], "port = 8080");
        let doc: toml::Table = out.parse().expect("still TOML");
        assert_eq!(doc["build"]["image"].as_str(), Some(IMAGE));
        assert!(doc["build"].get("cargo").is_none());
    }

    #[test]
    fn a_spec_without_a_build_table_gets_one_and_an_empty_one_is_filled() {
        let out = with_prebuilt_image("app = \"hello\"\n", IMAGE);
        let doc: toml::Table = out.parse().expect("TOML");
        assert_eq!(doc["build"]["image"].as_str(), Some(IMAGE));
        let out = with_prebuilt_image("[build]\n[container]\nport = 1\n", IMAGE);
        let doc: toml::Table = out.parse().expect("TOML");
        assert_eq!(doc["build"]["image"].as_str(), Some(IMAGE));
        assert_eq!(doc["container"]["port"].as_integer(), Some(1));
    }

    #[test]
    fn the_senders_key_files_are_left_out_and_nothing_else() {
        let text = "app = \"hello\"\n[supply]\nsigning_key = \"keys/ci.key\"\n[environments.production]\nlisten = \"127.0.0.1:80\"\ntrusted_keys = [\n  \"keys/ci.pub\",\n]\nreplicas = 2\n[environments.production.gate]\nfail_on = \"high\"\n";
        let out = with_prebuilt_image(text, IMAGE);
        let doc: toml::Table = out.parse().expect("TOML");
        assert!(doc["supply"].get("signing_key").is_none(), "{out}");
        let production = &doc["environments"]["production"];
        assert!(production.get("trusted_keys").is_none(), "{out}");
        assert_eq!(production["replicas"].as_integer(), Some(2));
        assert_eq!(production["listen"].as_str(), Some("127.0.0.1:80"));
        assert_eq!(production["gate"]["fail_on"].as_str(), Some("high"));
        let lines: Vec<&str> = out.lines().collect();
        // The spec's own lines keep their numbers (the [build] table is added at the end).
        assert_eq!(lines[8], "replicas = 2");
    }

    #[test]
    fn array_lines_that_look_like_headers_are_not_headers() {
        assert_eq!(header("[build] # the build"), Some("build"));
        assert_eq!(header("  [[ environments.x ]]"), Some("environments.x"));
        assert_eq!(header("  [\"a\"],"), None);
        assert_eq!(header("image = \"x\""), None);
    }
}
