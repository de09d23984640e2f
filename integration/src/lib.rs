//! Harness for end-to-end tests: a throw-away project (deploy.toml + state dir) that deploys
//! the example app with the real `cutover` binary to the local Docker Engine, a bounded load
//! generator that counts failed requests and the releases that served them, and cleanup of
//! every container, image, process and file a test made.

pub mod browser;
pub mod https;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The cargo target directory the tests build into.
fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"))
}

/// `cargo build --quiet <args>` in the repository, with extra environment.
fn cargo_build(args: &[&str], env: &[(&str, &str)]) {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg("build")
        .arg("--quiet")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo build {args:?}: {e}"));
    assert!(status.success(), "cargo build {args:?} failed");
}

/// Path of the `cutover` binary: `CUTOVER_BIN`, else the workspace's debug build (built on
/// first use).
pub fn cutover_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("CUTOVER_BIN") {
            return PathBuf::from(bin);
        }
        cargo_build(&["-p", "cutover-cli", "--bin", "cutover"], &[]);
        target_dir().join("debug").join("cutover")
    })
    .clone()
}

/// The example app built as a static binary (what the cargo build of a deploy makes), for
/// tests that assemble their own Docker build context around it.
pub fn static_hello_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        cargo_build(
            &[
                "--release",
                "-p",
                "hello",
                "--target",
                "x86_64-unknown-linux-gnu",
            ],
            &[("RUSTFLAGS", "-C target-feature=+crt-static")],
        );
        target_dir().join("x86_64-unknown-linux-gnu/release/hello")
    })
    .clone()
}

#[path = "../../crates/proxy/tests/support/ports.rs"]
mod ports;

/// A port for a listen address the real `cutover` binary binds itself (a spec's `listen`,
/// chromedriver's `--port`): neither can be given port 0 and report the port back, so the
/// port comes from below the kernel's ephemeral range, checked free (see the module docs of
/// `crates/proxy/tests/support/ports.rs`). Listeners a test binds itself bind port 0.
pub use ports::reserve_port;

/// Whether `CI=true`: missing tools fail the tests there instead of skipping them.
fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `Ok` when the tool is here. When it is missing (`why`): on CI (`CI=true`) a panic naming
/// it; elsewhere a line on stderr saying the test is skipped, and `false`.
#[track_caller]
fn require(test_needs: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    if on_ci() {
        panic!("this test needs {test_needs} and CI=true: {why}");
    }
    eprintln!("skipped: this test needs {test_needs}: {why} (with CI=true this fails)");
    false
}

/// Why the local Docker Engine cannot be used, if it cannot (`docker info` fails).
pub fn docker_missing() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`docker info` failed: {}; start the Docker Engine or set DOCKER_HOST",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "cannot run `docker`: {e}; install the Docker CLI and start the engine"
        )),
    }
}

/// For tests that need the Docker Engine: `true` when it answers; else panics on CI and
/// returns `false` (test skipped, reason printed) elsewhere. Asked once per process.
#[track_caller]
pub fn require_docker() -> bool {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    require(
        "the Docker Engine",
        MISSING.get_or_init(docker_missing).clone(),
    )
}

/// For tests that need headless Chromium and chromedriver, as [`require_docker`].
#[track_caller]
pub fn require_chromium() -> bool {
    require("chromium and chromedriver", browser::missing())
}

/// What the example app's spec says; tests change it between deploys.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub version: String,
    pub replicas: u32,
    pub fail_health: bool,
    pub crash: bool,
    pub delay_ms: u64,
    pub retire_after: String,
    pub deadline: String,
    /// Body of `[build]`; `None` builds examples/hello with cargo.
    pub build: Option<String>,
    /// Body of `[environments.production.gate]`, if any (`allow_missing_advisories = true`
    /// is added unless it names that key).
    pub gate: Option<String>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            version: "v1".into(),
            replicas: 2,
            fail_health: false,
            crash: false,
            delay_ms: 0,
            retire_after: "5m".into(),
            deadline: "20s".into(),
            build: None,
            gate: None,
        }
    }
}

/// The result of one `cutover` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The outcome of a finished command.
    pub fn of(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not json ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The account this test process runs as: the name the control plane records for every
/// command run through the control socket.
pub fn account() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A temporary project: its own app name, listen port, spec and state dir. Dropping it
/// stops its control plane and proxy and removes its containers and images.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub app: String,
    pub port: u16,
    /// The control plane's `XDG_CONFIG_HOME` (where the local key's passphrase goes),
    /// outside the project as `~/.config` is outside a repository.
    pub config: tempfile::TempDir,
}

impl Project {
    pub fn new(name: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cutover-it-{name}-"))
            .tempdir()
            .expect("temp dir");
        let app = format!("it-{name}-{}", std::process::id() % 100_000);
        let config = tempfile::Builder::new()
            .prefix(&format!("cutover-it-{name}-config-"))
            .tempdir()
            .expect("temp dir");
        let project = Project {
            dir,
            app,
            port: reserve_port(),
            config,
        };
        project.cleanup_docker();
        project
    }

    pub fn spec_path(&self) -> PathBuf {
        self.dir.path().join("deploy.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".cutover")
    }

    pub fn listen(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Write deploy.toml for `config`.
    pub fn write_spec(&self, config: &AppConfig) {
        let manifest = repo_root().join("examples/hello/Cargo.toml");
        let mut env = format!("VERSION = \"{}\"", config.version);
        if config.fail_health {
            env.push_str(", FAIL_HEALTH = \"1\"");
        }
        if config.crash {
            env.push_str(", CRASH = \"1\"");
        }
        if config.delay_ms > 0 {
            env.push_str(&format!(", DELAY_MS = \"{}\"", config.delay_ms));
        }
        let text = format!(
            r#"app = "{app}"

[build]
{build}

[container]
port = 8080
env = {{ {env} }}
memory = "64MiB"
cpus = 0.5
pids_limit = 64

[health]
path = "/healthz"
interval = "100ms"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 3
deadline = "{deadline}"

[environments.production]
listen = "{listen}"
replicas = {replicas}
retire_after = "{retire_after}"
drain_timeout = "5s"
{gate}"#,
            app = self.app,
            build = config.build.clone().unwrap_or_else(|| format!(
                "cargo = {{ manifest = \"{}\", bin = \"hello\", profile = \"release\" }}",
                manifest.display()
            )),
            // Test projects import no advisory database unless a test does (and says so
            // in its gate): without this opt-out their gates would fail closed.
            gate = match config.gate.as_deref() {
                Some(g) if g.contains("allow_missing_advisories") => {
                    format!("\n[environments.production.gate]\n{g}\n")
                }
                Some(g) => format!(
                    "\n[environments.production.gate]\nallow_missing_advisories = true\n{g}\n"
                ),
                None => "\n[environments.production.gate]\nallow_missing_advisories = true\n"
                    .to_string(),
            },
            listen = self.listen(),
            replicas = config.replicas,
            retire_after = config.retire_after,
            deadline = config.deadline,
        );
        std::fs::write(self.spec_path(), text).expect("write deploy.toml");
    }

    /// Run `cutover <args> -f <spec>` and wait for it.
    pub fn cutover(&self, args: &[&str]) -> Run {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run cutover {args:?}: {e}"));
        Run::of(out)
    }

    /// Run `cutover <args> -f <spec>` with extra environment variables and wait for it.
    pub fn cutover_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cutover {args:?}: {e}"));
        Run::of(out)
    }

    /// A `cutover` command for this project, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cutover_bin());
        cmd.args(args)
            .arg("-f")
            .arg(self.spec_path())
            // A claimed name the control plane must ignore: it knows its caller by the
            // socket's peer credentials (see `account()`).
            .env("CUTOVER_USER", "mallory")
            .env_remove("CUTOVER_TOKEN")
            .env("NO_COLOR", "1")
            .env_remove("CUTOVER_STATE_DIR")
            // The local key's passphrase goes here, and leaves with the project.
            .env("XDG_CONFIG_HOME", self.config.path())
            .current_dir(self.dir.path());
        cmd
    }

    pub fn serve_pid(&self) -> Option<u32> {
        read_pid(&self.state_dir().join("serve.pid"))
    }

    pub fn proxy_pid(&self) -> Option<u32> {
        read_pid(&self.state_dir().join("proxy").join("proxy.pid"))
    }

    /// The project's containers: (name, release label, running).
    pub fn containers(&self) -> Vec<(String, String, bool)> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=cutover.app={}", self.app),
                "--format",
                "{{.Names}}\t{{.Label \"cutover.release\"}}\t{{.State}}",
            ])
            .output()
            .expect("docker ps");
        let mut list: Vec<(String, String, bool)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split('\t');
                Some((
                    parts.next()?.to_string(),
                    parts.next()?.to_string(),
                    parts.next()? == "running",
                ))
            })
            .collect();
        list.sort();
        list
    }

    /// Releases of the running containers, sorted, with multiplicity.
    pub fn running_releases(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .containers()
            .into_iter()
            .filter(|c| c.2)
            .map(|c| c.1)
            .collect();
        r.sort();
        r
    }

    /// The current release of the (first) environment, from `cutover status`.
    pub fn current_release(&self) -> String {
        let run = self.cutover(&["status", "-o", "json"]);
        run.assert_code(0);
        run.json()[0]["current"]["id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// GET / through the proxy: (status, release header, body).
    pub fn get(&self) -> Result<(u16, String, String), String> {
        get(&self.url())
    }

    fn cleanup_docker(&self) {
        let containers = docker_words(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=cutover.app={}", self.app),
        ]);
        docker_remove(&["rm", "-f"], &containers);
        let networks = docker_words(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=cutover.app={}", self.app),
        ]);
        docker_remove(&["network", "rm"], &networks);
        let images = docker_words(&["images", "-q", &format!("cutover/{}", self.app)]);
        docker_remove(&["rmi", "-f"], &images);
    }
}

/// The whitespace-separated words a docker command prints (ids).
fn docker_words(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `docker <verb...> <ids>` when there is anything to remove.
fn docker_remove(verb: &[&str], ids: &[String]) {
    if !ids.is_empty() {
        let _ = Command::new("docker").args(verb).args(ids).output();
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.command(&["serve", "--stop"]).output();
        for pid in [self.serve_pid(), self.proxy_pid()].into_iter().flatten() {
            kill(pid, libc::SIGKILL);
        }
        self.cleanup_docker();
    }
}

/// The pid a pid file names (`<pid> [<start time>]`).
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn kill(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a pid the test started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// One GET: (status, x-cutover-release, body).
pub fn get(url: &str) -> Result<(u16, String, String), String> {
    get_with(&agent(), url)
}

fn get_with(agent: &ureq::Agent, url: &str) -> Result<(u16, String, String), String> {
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let release = resp
        .headers()
        .get("x-cutover-release")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, release, body))
}

/// Wait until `f` holds, polling every 50ms, or panic after `timeout` with `what`.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
    /// Releases in the order they first served a request.
    pub releases: Vec<String>,
}

/// A bounded, continuous load on one URL from a few threads with keep-alive connections.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    releases: Arc<Mutex<Vec<String>>>,
}

impl Load {
    /// Start `threads` clients; each stops by itself after `max` even if never stopped.
    pub fn start(url: &str, threads: usize, max: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let releases = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|_| {
                let (stop, ok, failed, failures, releases) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    failures.clone(),
                    releases.clone(),
                );
                let url = url.to_string();
                std::thread::spawn(move || {
                    let agent = agent();
                    let start = Instant::now();
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                        match get_with(&agent, &url) {
                            Ok((status, release, _)) if (200..300).contains(&status) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let mut seen = releases.lock().expect("lock");
                                if !seen.contains(&release) {
                                    seen.push(release);
                                }
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut f = failures.lock().expect("lock");
                                if f.len() < 10 {
                                    f.push(format!("{:?} at {:?}", other, start.elapsed()));
                                }
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads: handles,
            ok,
            failed,
            failures,
            releases,
        }
    }

    pub fn ok_so_far(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Whether a successful response so far came from `release`.
    pub fn has_seen(&self, release: &str) -> bool {
        self.releases
            .lock()
            .expect("lock")
            .iter()
            .any(|r| r == release)
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failures: self.failures.lock().expect("lock").clone(),
            releases: self.releases.lock().expect("lock").clone(),
        }
    }
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of [`cpu_ticks`].
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of the whole process (exited threads included), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("control plane stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
