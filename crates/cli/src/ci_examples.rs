//! The CI examples (`examples/ci/`) cannot drift from the CLI: every `cutover …` command
//! line in them parses with the real clap definition. (Their YAML is checked against the official schemas in
//! `integration/tests/ci_examples.rs`.)

use std::path::PathBuf;

use clap::Parser;

use crate::Cli;

fn examples() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/ci");
    ["github-actions.yml", "gitlab-ci.yml"]
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (path, text)
        })
        .collect()
}

/// The `cutover` command lines of a CI file: lines (YAML list items and `run:` values
/// included) that start with `cutover `, split as the shell would, up to the first
/// redirection or operator.
fn command_lines(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line.trim_start();
        rest = rest.strip_prefix("- ").unwrap_or(rest).trim_start();
        rest = rest.strip_prefix("run: ").unwrap_or(rest).trim_start();
        if !rest.starts_with("cutover ") {
            continue;
        }
        let words = shlex::split(rest)
            .unwrap_or_else(|| panic!("line {}: unbalanced quotes: {line}", n + 1));
        let end = words
            .iter()
            .position(|w| {
                matches!(
                    w.as_str(),
                    ">" | ">>" | "2>" | "|" | "||" | "&&" | ";" | "<"
                )
            })
            .unwrap_or(words.len());
        lines.push((n + 1, words[..end].to_vec()));
    }
    lines
}

#[test]
fn every_cutover_command_in_the_ci_examples_parses() {
    for (path, text) in examples() {
        let lines = command_lines(&text);
        // The examples build, push and deploy: a file without them checks nothing.
        for needed in ["build", "push", "deploy"] {
            assert!(
                lines.iter().any(|(_, w)| w[1] == needed),
                "{} has no `cutover {needed}`",
                path.display()
            );
        }
        for (line, words) in lines {
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!(
                    "{}:{line}: `{}` does not parse with the CLI:\n{e}",
                    path.display(),
                    words.join(" ")
                );
            }
        }
    }
}

#[test]
fn the_deploy_of_the_examples_waits_and_answers_in_json() {
    for (path, text) in examples() {
        let deploys: Vec<_> = command_lines(&text)
            .into_iter()
            .filter(|(_, w)| w[1] == "deploy")
            .collect();
        assert!(!deploys.is_empty(), "{}", path.display());
        for (line, words) in deploys {
            let at = format!("{}:{line}", path.display());
            assert!(!words.iter().any(|w| w == "--detach"), "{at}: must wait");
            assert!(
                words
                    .windows(2)
                    .any(|w| w[0] == "--output" && w[1] == "json"),
                "{at}: --output json"
            );
            assert!(
                words
                    .windows(2)
                    .any(|w| w[0] == "--env" && w[1] == "staging"),
                "{at}: --env staging"
            );
            // A token never on the command line.
            assert!(!words.iter().any(|w| w.contains("TOKEN")), "{at}");
        }
    }
}

#[test]
fn a_command_line_that_does_not_parse_is_caught() {
    let lines = command_lines(
        "script:\n  - cutover deploy --env staging --bogus > out.json\n  # cutover nothing\n",
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0].1,
        ["cutover", "deploy", "--env", "staging", "--bogus"]
    );
    assert!(Cli::try_parse_from(&lines[0].1).is_err());
    let run = command_lines("      run: cutover status --output json | jq .\n");
    assert_eq!(run[0].1, ["cutover", "status", "--output", "json"]);
}
