//! `.dockerignore` as Docker reads it: for each tricky `.dockerignore`, the files a context
//! built through cutover's builder puts in an image (`COPY . /ctx`) equal those of the same
//! context built by `docker build`. Where the Engine or the docker CLI is missing the test
//! fails when `CI=true` and is skipped elsewhere, saying why.
//!
//! Images carry `cutover.test=cutover-docker` and this run's id and are removed when the
//! test ends (also on panic).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use cutover_docker::DockerProvider;
use cutover_model::{BuildSpec, ImageBuilder};

const TEST_LABEL: &str = "cutover.test";
const TEST_VALUE: &str = "cutover-docker";
const RUN_LABEL: &str = "cutover.test.run";

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// `true` when both the Engine and the docker CLI answer; else a panic on CI, a skip elsewhere.
async fn require_docker() -> bool {
    let engine = DockerProvider::connect().await.err().map(|e| e.to_string());
    let cli = match Command::new("docker").arg("version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "docker version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run the docker cli: {e}")),
    };
    let Some(why) = engine.or(cli) else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test needs the Docker Engine and the docker cli and CI=true: {why}");
    }
    eprintln!("skipped: this test needs the Docker Engine and the docker cli: {why} (with CI=true this fails)");
    false
}

fn docker(args: &[&str]) -> Vec<u8> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Removes the tagged images when dropped, also when the test panics.
struct ImageGuard(Vec<String>);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker")
                .args(["image", "rm", "-f", tag])
                .output();
        }
    }
}

/// The paths under `/ctx` of `image` (directories and files), read from an export of a
/// container created (never started) from it.
fn ctx_listing(image: &str) -> BTreeSet<String> {
    let id = String::from_utf8(docker(&[
        "create",
        "--label",
        &format!("{TEST_LABEL}={TEST_VALUE}"),
        image,
        "/never-run",
    ]))
    .expect("utf-8 id")
    .trim()
    .to_string();
    let exported = Command::new("docker").args(["export", &id]).output();
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    let exported = exported.expect("docker export");
    assert!(exported.status.success(), "docker export failed");
    let mut archive = tar::Archive::new(&exported.stdout[..]);
    let mut listing = BTreeSet::new();
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().to_string();
        if let Some(rest) = path.trim_end_matches('/').strip_prefix("ctx/") {
            listing.insert(rest.to_string());
        }
    }
    listing
}

/// Every case's context holds these files.
const FILES: &[&str] = &[
    ".env",
    "README.md",
    "CHANGES.md",
    "docs/guide.md",
    "docs/README.md",
    "docs/x.tmp",
    "docs/a/b/c.tmp",
    "docs/a/d.txt",
    "sub/.env",
    "sub/deep/.env",
    "sub/deep/ok.txt",
    "sub/notes.md",
    "sub/secret",
    "a1.txt",
    "b.txt",
    "c.txt",
    "1.log",
    "12.log",
    "logs/2.log",
    "secret",
    "dir/keep",
    "dir/other",
    "dir/nested/keep",
    "src/main.rs",
    "src/lib/mod.rs",
    "x",
    "b",
    "a/b",
    "a/y",
    "#b.txt",
];

/// (name, .dockerignore, paths that must be absent, paths that must be present)
type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const CASES: &[Case] = &[
    (
        "env files at any depth",
        "**/.env\n",
        &[".env", "sub/.env", "sub/deep/.env"],
        &["sub/deep/ok.txt"],
    ),
    (
        "markdown but the readme",
        "*.md\n!README.md\n",
        &["CHANGES.md"],
        &["README.md", "docs/guide.md", "sub/notes.md"],
    ),
    (
        "temporary files below docs",
        "docs/**/*.tmp\n",
        &["docs/x.tmp", "docs/a/b/c.tmp"],
        &["docs/a/d.txt"],
    ),
    ("a class", "[ab]*.txt\n", &["a1.txt", "b.txt"], &["c.txt"]),
    (
        "one character",
        "?.log\n",
        &["1.log"],
        &["12.log", "logs/2.log"],
    ),
    ("rooted", "/secret\n", &["secret"], &["sub/secret"]),
    (
        "a directory but one file",
        "dir/\n!dir/keep\n",
        &["dir/other", "dir/nested", "dir/nested/keep"],
        &["dir/keep"],
    ),
    (
        "everything but src",
        "**\n!src\n",
        &["Dockerfile", ".dockerignore", "README.md", "docs"],
        &["src/main.rs", "src/lib/mod.rs"],
    ),
    (
        "comments and whitespace",
        "# c.txt\n#b.txt\n   a1.txt   \n \t\n",
        &["a1.txt"],
        &["c.txt", "b.txt", "#b.txt"],
    ),
    ("dot slash", "./x\n", &["x"], &[]),
    ("dot dot", "a/../b\n", &["b"], &["a/b", "a/y"]),
    (
        "nested exceptions",
        "docs\n!docs/a\ndocs/a/b\n!docs/a/b/c.tmp\n",
        &["docs/guide.md", "docs/x.tmp"],
        &["docs/a/d.txt", "docs/a/b/c.tmp"],
    ),
    (
        "a wildcard exception does not reach into an excluded directory",
        "dir\n!**/keep\n",
        &["dir", "dir/keep"],
        &[],
    ),
    (
        "exceptions evaluated against parents",
        "*/b\n!a\n",
        &[],
        &["a/y"],
    ),
    (
        "a directory with an exception below and an exclusion below that",
        "sub\n!sub/deep\nsub/deep/.env\n",
        &["sub/.env", "sub/notes.md", "sub/deep/.env"],
        &["sub/deep/ok.txt"],
    ),
    (
        "everything below docs",
        "docs/**\n",
        &["docs/guide.md", "docs/a"],
        &["docs"],
    ),
    (
        "markdown at any depth but readmes",
        "**/*.md\n!**/README.md\n",
        &["CHANGES.md", "docs/guide.md", "sub/notes.md"],
        &["README.md", "docs/README.md"],
    ),
    (
        "the build files themselves",
        ".dockerignore\nDockerfile\n",
        &[".dockerignore", "Dockerfile"],
        &["README.md"],
    ),
];

#[tokio::test]
async fn contexts_hold_what_docker_build_sends() {
    if !require_docker().await {
        return;
    }
    let provider = DockerProvider::connect().await.expect("engine");
    let run = run_id();
    let mut guard = ImageGuard(Vec::new());
    let mut disagreements = Vec::new();
    for (index, (name, ignore, absent, present)) in CASES.iter().enumerate() {
        let context = tempfile::tempdir().expect("temp dir");
        let root = context.path();
        for file in FILES {
            let full = root.join(file);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, file).expect("write");
        }
        std::fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY . /ctx\n").expect("write");
        std::fs::write(root.join(".dockerignore"), ignore).expect("write");

        let ours = format!("cutover-test/dockerignore:{run}-{index}-cutover");
        let theirs = format!("cutover-test/dockerignore:{run}-{index}-docker");
        guard.0.push(ours.clone());
        guard.0.push(theirs.clone());
        let labels = BTreeMap::from([
            (TEST_LABEL.to_string(), TEST_VALUE.to_string()),
            (RUN_LABEL.to_string(), run.clone()),
        ]);
        let source = BuildSpec::Dockerfile {
            context: root.to_path_buf(),
            dockerfile: "Dockerfile".to_string(),
            args: BTreeMap::new(),
        };
        provider
            .build(&ours, &source, &labels)
            .await
            .unwrap_or_else(|e| panic!("case {name:?}: cutover's build failed: {}", e.message));
        docker(&[
            "build",
            "-q",
            "--label",
            &format!("{TEST_LABEL}={TEST_VALUE}"),
            "--label",
            &format!("{RUN_LABEL}={run}"),
            "-t",
            &theirs,
            root.to_str().expect("utf-8 path"),
        ]);
        let ours_listing = ctx_listing(&ours);
        let theirs_listing = ctx_listing(&theirs);
        for path in *absent {
            assert!(
                !theirs_listing.contains(*path),
                "case {name:?}: docker sent {path}, the case expects it left out"
            );
        }
        for path in *present {
            assert!(
                theirs_listing.contains(*path),
                "case {name:?}: docker left out {path}, the case expects it sent"
            );
        }
        if ours_listing != theirs_listing {
            disagreements.push(format!(
                "case {name:?} ({ignore:?}): only cutover sent {:?}; only docker sent {:?}",
                ours_listing.difference(&theirs_listing).collect::<Vec<_>>(),
                theirs_listing.difference(&ours_listing).collect::<Vec<_>>()
            ));
        }
        eprintln!(
            "case {name:?}: {} paths, agree: {}",
            theirs_listing.len(),
            ours_listing == theirs_listing
        );
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
