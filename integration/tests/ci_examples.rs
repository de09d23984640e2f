//! The CI examples (`examples/ci/`) are valid by the official schemas of GitHub Actions
//! workflows and GitLab CI files, as vendored in `check-jsonschema` (PyPI; offline, pinned
//! by `scripts/setup`). That their `cutover` command lines parse is checked against the
//! CLI's own clap definition in `crates/cli/src/ci_examples.rs`. Without check-jsonschema
//! these tests are skipped, and fail under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cutover_integration::repo_root;

fn check_jsonschema() -> Option<String> {
    let bin = std::env::var("CHECK_JSONSCHEMA").unwrap_or_else(|_| "check-jsonschema".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => Some(bin),
        _ => {
            let why = format!(
                "`{bin} --version` failed: install it with scripts/setup (python3 -m pip install check-jsonschema)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("this test needs check-jsonschema and CI=true: {why}");
            }
            eprintln!("skipped: this test needs check-jsonschema: {why} (with CI=true this fails)");
            None
        }
    }
}

/// `check-jsonschema --builtin-schema <schema> <file>`: (passed, output).
fn validate(bin: &str, schema: &str, file: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .expect("run check-jsonschema");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn example(name: &str) -> PathBuf {
    repo_root().join("examples/ci").join(name)
}

#[test]
fn the_ci_examples_are_valid_by_the_official_schemas() {
    let Some(bin) = check_jsonschema() else {
        return;
    };
    for (schema, file) in [
        ("vendor.github-workflows", example("github-actions.yml")),
        ("vendor.gitlab-ci", example("gitlab-ci.yml")),
    ] {
        let (ok, output) = validate(&bin, schema, &file);
        assert!(
            ok,
            "{} is not a valid {schema} file:\n{output}",
            file.display()
        );
    }
}

#[test]
fn the_schema_check_refuses_a_broken_file() {
    let Some(bin) = check_jsonschema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The examples with one mistake each: a step's `run` that is not a string, a job's
    // `script` that is a number.
    for (schema, name, from, to) in [
        (
            "vendor.github-workflows",
            "github-actions.yml",
            "run: cutover build --env staging",
            "run: 5\n        uses: 7",
        ),
        (
            "vendor.gitlab-ci",
            "gitlab-ci.yml",
            "  resource_group: staging",
            "  resource_group: [staging]",
        ),
    ] {
        let text = std::fs::read_to_string(example(name)).unwrap();
        assert!(text.contains(from), "{name} no longer contains {from:?}");
        let broken = dir.path().join(name);
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let (ok, output) = validate(&bin, schema, &broken);
        assert!(!ok, "a broken {name} passed:\n{output}");
    }
}
