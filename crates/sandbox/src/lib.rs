//! Runs untrusted host commands — an app's `cargo build` and whatever its build scripts
//! and proc macros do — in a bubblewrap (`bwrap`) sandbox.
//!
//! What runs inside:
//! - as uid/gid 65534 of a new user namespace (mapped to the control plane's account, with
//!   no capability outside it), in new mount, PID, IPC, UTS and cgroup namespaces, and a
//!   new network namespace (loopback only) unless [`Sandbox::network`] allows the host's;
//! - sees a filesystem made of a fresh tmpfs root, the system directories read-only
//!   (`/usr`, the `/bin` and `/lib*` links, a short list of `/etc` entries for the loader,
//!   the linker, name resolution and TLS roots), a fresh `/proc`, a minimal `/dev`, an
//!   empty `/tmp`, and nothing else but the paths the caller lists: read-only, writable,
//!   or hidden under an empty tmpfs (a hidden directory inside a visible one stays hidden,
//!   and a path listed below a hidden one is visible again). `/run`, `/var` (the Docker
//!   socket), home directories and every socket of the control plane are simply absent;
//! - gets only the environment the caller sets ([`Sandbox::env`]); nothing is inherited.
//!
//! [`Isolation::Unsandboxed`] exists for development machines without bubblewrap: the
//! command then runs on the host as the caller's account (environment still cleared). The
//! caller decides when that is allowed and must say so loudly; this crate never falls back
//! to it by itself.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Uid and gid the sandboxed command runs as inside its user namespace (`nobody`).
pub const SANDBOX_ID: u32 = 65534;

/// Entries of `/etc` a sandboxed command sees: the dynamic loader's cache and config, the
/// `cc` alternative, account and group names, name resolution, and the TLS trust roots.
const ETC_ENTRIES: &[&str] = &[
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "passwd",
    "group",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "hosts",
    "resolv.conf",
    "ssl/certs",
    "ca-certificates",
    "ca-certificates.conf",
];

/// Top-level system paths shown read-only (or recreated as the symlinks they are).
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Why a sandbox cannot be made.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// bubblewrap is not installed.
    #[error("cannot sandbox the command: bubblewrap (bwrap) is not installed; install it (`apt-get install bubblewrap`)")]
    NotInstalled,
}

/// How commands are isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// In a bubblewrap sandbox, with the `bwrap` at this path.
    Bubblewrap(PathBuf),
    /// On the host, as the caller's account, with only the environment the caller sets.
    /// Only for development machines without bubblewrap, chosen explicitly.
    Unsandboxed,
}

impl Isolation {
    /// Bubblewrap, found on `PATH` (or at `/usr/bin/bwrap`).
    pub fn bubblewrap() -> Result<Isolation, SandboxError> {
        find_program("bwrap")
            .or_else(|| {
                let usual = Path::new("/usr/bin/bwrap");
                usual.is_file().then(|| usual.to_path_buf())
            })
            .map(Isolation::Bubblewrap)
            .ok_or(SandboxError::NotInstalled)
    }

    /// Whether commands run sandboxed.
    pub fn is_sandboxed(&self) -> bool {
        matches!(self, Isolation::Bubblewrap(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    Writable,
    Hidden,
}

/// A sandbox for one kind of command: what it sees, its environment, its network.
#[derive(Debug, Clone)]
pub struct Sandbox {
    isolation: Isolation,
    paths: Vec<(PathBuf, Access)>,
    env: Vec<(OsString, OsString)>,
    network: bool,
    current_dir: Option<PathBuf>,
}

impl Sandbox {
    /// A sandbox that shows only the system directories, with an empty environment and no
    /// network.
    pub fn new(isolation: Isolation) -> Sandbox {
        Sandbox {
            isolation,
            paths: Vec::new(),
            env: Vec::new(),
            network: false,
            current_dir: None,
        }
    }

    /// How this sandbox isolates its commands.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// Show `path` (a directory or file) read-only at the same place. A path that does not
    /// exist is skipped.
    pub fn read_only(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.paths.push((path.into(), Access::ReadOnly));
        self
    }

    /// Show `path` writable at the same place. It must exist when the command is made.
    pub fn writable(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.paths.push((path.into(), Access::Writable));
        self
    }

    /// Hide `path` under an empty tmpfs when it lies inside a visible directory (elsewhere
    /// it is absent anyway). A path that does not exist is skipped (nothing to hide).
    pub fn hide(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.paths.push((path.into(), Access::Hidden));
        self
    }

    /// Set one environment variable of the command (the only ones it gets).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Sandbox {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// Share the host's network (and its abstract Unix sockets) with the command. Off by
    /// default: the command sees only a loopback interface of its own.
    pub fn network(mut self, shared: bool) -> Sandbox {
        self.network = shared;
        self
    }

    /// The command's working directory (it must be visible in the sandbox).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Sandbox {
        self.current_dir = Some(dir.into());
        self
    }

    /// The command `program args…` in this sandbox, ready to be given stdio and spawned.
    /// `program` is looked up on the sandbox's `PATH` unless it is a path. The command is
    /// killed when the returned [`tokio::process::Command`]'s child is dropped.
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = match &self.isolation {
            Isolation::Bubblewrap(bwrap) => {
                let mut command = tokio::process::Command::new(bwrap);
                command
                    .args(self.bwrap_args())
                    .arg("--")
                    .arg(program)
                    .args(args);
                command
            }
            Isolation::Unsandboxed => {
                let mut command = tokio::process::Command::new(self.host_program(program));
                command.args(args);
                if let Some(dir) = &self.current_dir {
                    command.current_dir(dir);
                }
                command
            }
        };
        command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        command
    }

    /// Unsandboxed, a bare program name is looked up on the `PATH` given to the command,
    /// as bubblewrap does inside.
    fn host_program(&self, program: impl AsRef<OsStr>) -> PathBuf {
        let program = Path::new(program.as_ref());
        if program.components().count() > 1 {
            return program.to_path_buf();
        }
        let path = self
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        path.and_then(|p| search_path(&p, program.as_os_str()))
            .unwrap_or_else(|| program.to_path_buf())
    }

    /// bubblewrap's options for this sandbox (everything before `--`).
    pub fn bwrap_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|s| s.to_os_string()));
        let id = SANDBOX_ID.to_string();
        push(&[
            "--unshare-user".as_ref(),
            "--uid".as_ref(),
            id.as_ref(),
            "--gid".as_ref(),
            id.as_ref(),
            "--unshare-pid".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-uts".as_ref(),
            "--unshare-cgroup-try".as_ref(),
            "--die-with-parent".as_ref(),
            "--new-session".as_ref(),
        ]);
        if !self.network {
            push(&["--unshare-net".as_ref()]);
        }
        for system in SYSTEM_PATHS {
            let path = Path::new(system);
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        push(&["--symlink".as_ref(), target.as_os_str(), path.as_os_str()]);
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    push(&["--ro-bind".as_ref(), path.as_os_str(), path.as_os_str()])
                }
                _ => {}
            }
        }
        for entry in ETC_ENTRIES {
            let path = Path::new("/etc").join(entry);
            push(&["--ro-bind-try".as_ref(), path.as_os_str(), path.as_os_str()]);
        }
        push(&[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
        ]);
        for (path, access) in self.ordered_paths() {
            let path = path.as_os_str();
            match access {
                Access::ReadOnly => push(&["--ro-bind".as_ref(), path, path]),
                Access::Writable => push(&["--bind".as_ref(), path, path]),
                Access::Hidden => push(&["--tmpfs".as_ref(), path]),
            }
        }
        if let Some(dir) = &self.current_dir {
            push(&["--chdir".as_ref(), dir.as_os_str()]);
        }
        args
    }

    /// The caller's paths, resolved (symlinks followed, so nesting is seen), without those
    /// that do not exist (except writable ones: bubblewrap then names the missing path)
    /// and hidden ones outside every visible path,
    /// parents before children so a hidden directory covers what is inside it and a path
    /// listed below it is mounted on top.
    fn ordered_paths(&self) -> Vec<(PathBuf, Access)> {
        let mut paths: Vec<(PathBuf, Access)> = self
            .paths
            .iter()
            .filter_map(|(path, access)| match std::fs::canonicalize(path) {
                Ok(real) => Some((real, *access)),
                Err(_) if *access == Access::Writable => Some((path.clone(), *access)),
                Err(_) => None,
            })
            .collect();
        // A hidden path outside every visible one is absent already; an empty tmpfs there
        // would only show that it exists.
        let visible: Vec<PathBuf> = paths
            .iter()
            .filter(|(_, access)| *access != Access::Hidden)
            .map(|(path, _)| path.clone())
            .collect();
        paths.retain(|(path, access)| {
            *access != Access::Hidden || visible.iter().any(|v| path.starts_with(v) && path != v)
        });
        // Stable: of two entries for one path, the later one wins.
        paths.sort_by_key(|(path, _)| path.components().count());
        paths
    }
}

/// `name` on the `PATH` of this process.
pub fn find_program(name: &str) -> Option<PathBuf> {
    search_path(&std::env::var_os("PATH")?, OsStr::new(name))
}

fn search_path(path: &OsStr, name: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests;
