//! Static cargo builds of an app, run in a sandbox: the app's build scripts and proc macros
//! are untrusted code.
//!
//! A build is two sandboxed cargo runs, both as nobody in new namespaces, with a cleared
//! environment and none of the control plane's files (its state directory is hidden even
//! when it lies inside the source tree):
//! 1. `cargo fetch` with the host's network: downloads the dependencies into the cargo
//!    registry (writable for this run only) and writes a missing `Cargo.lock` (the source
//!    tree is writable only then). Fetching runs no code of any package, nor the project's
//!    cargo configuration (it runs from `/`, so its rustc is the toolchain's, unwrapped):
//!    dependencies come from crates.io, git and path sources, not from a registry or a
//!    source replacement that only the project's `.cargo/config.toml` names.
//! 2. `cargo build --offline` without network: the source tree and the registry read-only,
//!    only the app's build directory (`<builds>/<hash of the manifest path>/`) writable.

use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use cutover_model::ProviderError;
use cutover_sandbox::{Isolation, Sandbox};

use crate::elf;

/// The flag appended to `RUSTFLAGS` for cargo builds: a static binary for `FROM scratch`.
pub const STATIC_RUSTFLAG: &str = "-C target-feature=+crt-static";

/// Target triple of cargo builds (the Engine runs linux/amd64 containers).
pub(crate) const CARGO_TARGET: &str = "x86_64-unknown-linux-gnu";

/// How many trailing lines of cargo's output an error message quotes.
const TAIL_LINES: usize = 15;

/// What an unsandboxed build says about itself, in the log and the build step's output.
pub const UNSANDBOXED_WARNING: &str = "built without a sandbox (CUTOVER_UNSANDBOXED_BUILDS=1): the app's build scripts ran as the control plane's user and could read its keys and reach its sockets";

/// Where cargo builds put their output and what they must not see.
#[derive(Debug, Clone)]
pub struct CargoBuilds {
    /// Each app builds in `<dir>/<hash of its manifest path>/` (its target directory is
    /// `target/` inside); only that directory is writable by the build.
    pub dir: PathBuf,
    /// Directories hidden from builds even inside the source tree (the state directory).
    pub hidden: Vec<PathBuf>,
    /// Run builds on the host without a sandbox, as the caller's account. Only for
    /// development machines without bubblewrap; every build then says so.
    pub unsandboxed: bool,
}

impl Default for CargoBuilds {
    /// Builds under `$XDG_CACHE_HOME/cutover/builds` (or `~/.cache/cutover/builds`),
    /// sandboxed, hiding nothing in particular.
    fn default() -> CargoBuilds {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        CargoBuilds {
            dir: cache.join("cutover").join("builds"),
            hidden: Vec::new(),
            unsandboxed: false,
        }
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A built binary and what people should know about how it was built.
pub(crate) struct Built {
    pub binary: Vec<u8>,
    pub warning: Option<String>,
}

/// The cargo and Rust toolchain the builds use, shown read-only in the sandbox.
#[derive(Debug, Clone)]
struct Toolchain {
    cargo: PathBuf,
    rustup_home: Option<PathBuf>,
    cargo_home: PathBuf,
}

impl Toolchain {
    fn from_env() -> Result<Toolchain, ProviderError> {
        let cargo = std::env::var_os("CARGO")
            .filter(|c| !c.is_empty())
            .map(PathBuf::from)
            .or_else(|| cutover_sandbox::find_program("cargo"))
            .ok_or_else(|| {
                ProviderError::permanent(
                    "cannot find cargo to build the app; install rust (cargo) or put it on the control plane's PATH",
                )
            })?;
        // Absolute, but not resolved: rustup's proxies are links to one binary that acts
        // by the name it was called with.
        let cargo = std::path::absolute(&cargo).unwrap_or(cargo);
        let from_env = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(default)))
        };
        let cargo_home = from_env("CARGO_HOME", ".cargo").ok_or_else(|| {
            ProviderError::permanent(
                "cannot tell where cargo keeps its registry: set CARGO_HOME or HOME for the control plane",
            )
        })?;
        Ok(Toolchain {
            cargo,
            rustup_home: from_env("RUSTUP_HOME", ".rustup"),
            cargo_home,
        })
    }

    /// A sandbox that sees this toolchain read-only, with the environment cargo needs.
    fn sandbox(&self, isolation: Isolation) -> Sandbox {
        let cargo_bin = self.cargo_home.join("bin");
        let mut sandbox = Sandbox::new(isolation).read_only(&cargo_bin);
        let mut path: Vec<PathBuf> = Vec::new();
        if let Some(dir) = self.cargo.parent() {
            if !dir.starts_with("/usr") {
                sandbox = sandbox.read_only(dir);
            }
            path.push(dir.to_path_buf());
        }
        path.push(cargo_bin);
        path.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
        let path = std::env::join_paths(path).unwrap_or_else(|_| "/usr/bin:/bin".into());
        sandbox = sandbox
            .env("PATH", path)
            .env("HOME", "/tmp")
            .env("CARGO_HOME", &self.cargo_home)
            .env("CARGO_TERM_COLOR", "never");
        if let Some(rustup) = &self.rustup_home {
            sandbox = sandbox.read_only(rustup).env("RUSTUP_HOME", rustup);
        }
        if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN").filter(|t| !t.is_empty()) {
            sandbox = sandbox.env("RUSTUP_TOOLCHAIN", toolchain);
        }
        sandbox
    }

    /// The registry and git checkouts of dependencies (made if missing, so they can be
    /// shown in the sandbox).
    fn caches(&self) -> Result<[PathBuf; 2], ProviderError> {
        let dirs = [
            self.cargo_home.join("registry"),
            self.cargo_home.join("git"),
        ];
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|e| {
                ProviderError::permanent(format!(
                    "cannot create cargo's cache directory {}: {e}; check CARGO_HOME",
                    dir.display()
                ))
            })?;
        }
        Ok(dirs)
    }
}

/// The directory cargo treats as the root of the package's source: the nearest directory
/// at or above the manifest whose `Cargo.toml` declares a `[workspace]`, else the
/// manifest's own directory. Path dependencies outside it are not visible to the build.
pub(crate) fn source_root(manifest: &Path) -> PathBuf {
    let dir = manifest.parent().unwrap_or(Path::new("/"));
    dir.ancestors()
        .find(|candidate| declares_workspace(&candidate.join("Cargo.toml")))
        .unwrap_or(dir)
        .to_path_buf()
}

fn declares_workspace(manifest: &Path) -> bool {
    std::fs::read_to_string(manifest).is_ok_and(|text| {
        text.lines().map(str::trim).any(|line| {
            line == "[workspace]" || (line.starts_with("[workspace.") && line.ends_with(']'))
        })
    })
}

/// The isolation of builds: bubblewrap, or the host when `unsandboxed` was chosen.
pub(crate) fn isolation(unsandboxed: bool) -> Result<Isolation, ProviderError> {
    isolation_with(unsandboxed, Isolation::bubblewrap)
}

fn isolation_with(
    unsandboxed: bool,
    bubblewrap: impl FnOnce() -> Result<Isolation, cutover_sandbox::SandboxError>,
) -> Result<Isolation, ProviderError> {
    if unsandboxed {
        return Ok(Isolation::Unsandboxed);
    }
    bubblewrap().map_err(|_| {
        ProviderError::permanent(
            "cargo builds run in a bubblewrap sandbox and bubblewrap (bwrap) is not installed; install it (`apt-get install bubblewrap`) and deploy again (on a development machine only: `cutover serve --stop`, then CUTOVER_UNSANDBOXED_BUILDS=1 on the next command builds without a sandbox)",
        )
    })
}

/// The build directory of `manifest` under `builds` (made, private to the control plane).
fn build_dir(builds: &Path, manifest: &Path) -> Result<PathBuf, ProviderError> {
    let digest = cutover_model::sha256_digest(manifest.as_os_str().as_encoded_bytes());
    let dir = builds.join(&digest["sha256:".len().."sha256:".len() + 16]);
    let target = dir.join("target");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&target)
        .map_err(|e| {
            ProviderError::permanent(format!(
                "cannot create the build directory {}: {e}; check the state directory's permissions and free space",
                target.display()
            ))
        })?;
    Ok(dir)
}

/// `RUSTFLAGS` for a static build, keeping flags the caller already set.
pub(crate) fn static_rustflags(existing: Option<&str>, encoded: Option<&str>) -> String {
    let mut flags: Vec<String> = Vec::new();
    if let Some(encoded) = encoded.filter(|e| !e.is_empty()) {
        flags.extend(encoded.split('\u{1f}').map(str::to_string));
    } else if let Some(existing) = existing.filter(|e| !e.trim().is_empty()) {
        flags.push(existing.trim().to_string());
    }
    flags.push(STATIC_RUSTFLAG.to_string());
    flags.join(" ")
}

/// The directory cargo puts a profile's artifacts in.
pub(crate) fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

pub(crate) fn tail_of(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

/// The sandboxed commands of one build.
pub(crate) struct BuildCommands {
    /// `cargo fetch`, with the network.
    pub fetch: tokio::process::Command,
    /// `cargo build --offline`, without.
    pub build: tokio::process::Command,
    /// The target directory the build writes.
    pub target: PathBuf,
}

/// The two sandboxed cargo runs of a build of `bin` (see the module docs).
pub(crate) fn commands(
    config: &CargoBuilds,
    isolation: Isolation,
    manifest: &Path,
    bin: &str,
    profile: &str,
) -> Result<BuildCommands, ProviderError> {
    let toolchain = Toolchain::from_env()?;
    let [registry, git] = toolchain.caches()?;
    let root = source_root(manifest);
    let dir = build_dir(&config.dir, manifest)?;
    let target = dir.join("target");
    let rustflags = static_rustflags(
        std::env::var("RUSTFLAGS").ok().as_deref(),
        std::env::var("CARGO_ENCODED_RUSTFLAGS").ok().as_deref(),
    );
    let mut common = toolchain
        .sandbox(isolation)
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", rustflags)
        .current_dir(manifest.parent().unwrap_or(Path::new("/")));
    for hidden in &config.hidden {
        common = common.hide(hidden);
    }
    common = common.writable(&dir);
    // Fetching writes the lock file when there is none; nothing else of the source.
    let fetch = if root.join("Cargo.lock").exists() {
        common.clone().read_only(&root)
    } else {
        common.clone().writable(&root)
    };
    // Fetching has the network, so it must run no project code. It asks rustc about the
    // target, and the project's cargo configuration (`.cargo/config.toml`, found from the
    // working directory) could name a rustc, a wrapper or `[env]` for it: fetching runs
    // from `/`, which has none, and names the toolchain's rustc without a wrapper.
    let fetch = fetch
        .current_dir("/")
        .writable(&registry)
        .writable(&git)
        .network(true)
        .env("RUSTC", "rustc")
        .env("RUSTC_WRAPPER", "")
        .env("RUSTC_WORKSPACE_WRAPPER", "");
    let build = common
        .read_only(&root)
        .read_only(&registry)
        .read_only(&git)
        .network(false);
    let manifest = manifest.as_os_str();
    // Only what this target and this host (build scripts, proc macros) need.
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut fetch_args: Vec<&OsStr> = vec![
        "fetch".as_ref(),
        "--manifest-path".as_ref(),
        manifest,
        "--target".as_ref(),
        CARGO_TARGET.as_ref(),
    ];
    if host != CARGO_TARGET {
        fetch_args.extend(["--target".as_ref(), OsStr::new(&host)]);
    }
    let build_args: Vec<&OsStr> = vec![
        "build".as_ref(),
        "--offline".as_ref(),
        "--manifest-path".as_ref(),
        manifest,
        "--bin".as_ref(),
        bin.as_ref(),
        "--profile".as_ref(),
        profile.as_ref(),
        "--target".as_ref(),
        CARGO_TARGET.as_ref(),
    ];
    Ok(BuildCommands {
        fetch: fetch.command(&toolchain.cargo, fetch_args),
        build: build.command(&toolchain.cargo, build_args),
        target,
    })
}

/// Build `bin` of `manifest` statically in the sandbox and return the binary.
pub(crate) async fn build_static(
    config: &CargoBuilds,
    manifest: &Path,
    bin: &str,
    profile: &str,
) -> Result<Built, ProviderError> {
    if !manifest.is_file() {
        return Err(ProviderError::permanent(format!(
            "there is no cargo manifest at {}; fix build.manifest in deploy.toml",
            manifest.display()
        )));
    }
    let manifest = std::fs::canonicalize(manifest).map_err(|e| {
        ProviderError::permanent(format!(
            "cannot resolve the cargo manifest {}: {e}; fix build.manifest in deploy.toml",
            manifest.display()
        ))
    })?;
    let isolation = isolation(config.unsandboxed)?;
    let warning = (!isolation.is_sandboxed()).then(|| UNSANDBOXED_WARNING.to_string());
    if let Some(warning) = &warning {
        tracing::warn!(bin, "{warning}");
    }
    tracing::info!(bin, profile, manifest = %manifest.display(), sandboxed = warning.is_none(), "cargo build (static)");
    let BuildCommands {
        fetch,
        build,
        target,
    } = commands(config, isolation, &manifest, bin, profile)?;
    run(
        fetch,
        || format!("fetching the dependencies of {bin}"),
        "check the dependencies in Cargo.toml and the network, then try again",
    )
    .await?;
    run(
        build,
        || format!("cargo build of {bin} (profile {profile})"),
        "fix the build error and try again (builds run sandboxed: no network, nothing of the host outside the source tree and the toolchain, nothing written outside the target directory)",
    )
    .await?;

    let binary_path = target
        .join(CARGO_TARGET)
        .join(profile_dir(profile))
        .join(bin);
    let binary = tokio::fs::read(&binary_path).await.map_err(|e| {
        ProviderError::permanent(format!(
            "cargo built {bin} but reading {} failed: {e}; check build.bin names a binary target",
            binary_path.display()
        ))
    })?;
    match elf::check_static(&binary) {
        Ok(()) => Ok(Built { binary, warning }),
        Err(elf::NotStatic::Dynamic { interpreter }) => Err(ProviderError::permanent(format!(
            "{} is dynamically linked (needs {interpreter}) and cannot run in a scratch image; make sure RUSTFLAGS keeps {STATIC_RUSTFLAG} and no dependency forces dynamic linking",
            binary_path.display()
        ))),
        Err(elf::NotStatic::NotElf(why)) => Err(ProviderError::permanent(format!(
            "{} is not a linux executable ({why}); check build.bin",
            binary_path.display()
        ))),
    }
}

/// Run a cargo command to completion; on failure, an error quoting the end of its output.
async fn run(
    mut command: tokio::process::Command,
    what: impl Fn() -> String,
    fix: &str,
) -> Result<(), ProviderError> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            ProviderError::permanent(format!(
                "{} could not start: {e}; install rust (cargo) and bubblewrap for the control plane",
                what()
            ))
        })?;
    if output.status.success() {
        return Ok(());
    }
    // cargo reports on stderr; a wrapper (rustup, bubblewrap) may have used stdout.
    let said = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        &output.stdout
    } else {
        &output.stderr
    };
    Err(ProviderError::permanent(format!(
        "{} failed with {}:\n{}\n{fix}",
        what(),
        output.status,
        tail_of(said)
    )))
}

#[cfg(test)]
mod tests;
