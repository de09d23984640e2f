//! Starting the long-lived processes (control plane, proxy) detached from the caller, and
//! stopping them.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

/// Start `cutover <args>` in its own session (so it outlives the caller and a signal to
/// the caller's process group), stdio to `log`. Returns the child's pid.
pub fn spawn_detached(args: &[&str], log: &Path) -> Result<u32> {
    let exe = std::env::current_exe().context("cannot find the cutover executable")?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("cannot open log file {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_remove("NO_COLOR");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `cutover {}`", args.join(" ")))?;
    let pid = child.id();
    // Reap it if it exits while we live; after we exit, init does.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The pid a pid file names, if that process still lives and is the one that wrote it.
pub fn read_pid(path: &Path) -> Option<u32> {
    cutover_proxy::pidfile::live_pid(path)
}

/// Wait until process `pid` exits, or `timeout` passes; returns whether it exited. Waits on
/// a pidfd (readable once the process has exited), so nothing wakes meanwhile.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let Some(fd) = pidfd(pid) else {
        // No such process (or no pidfd support): it is gone as far as we can tell.
        return !alive(pid);
    };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same descriptor) for
    // as long as the AsyncFd lives.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(fd) = registered else {
        return !alive(pid);
    };
    tokio::time::timeout(timeout, fd.readable()).await.is_ok() || !alive(pid)
}

/// A pidfd for `pid`, if the process exists.
fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Send SIGTERM to the pid in `pid_file` and wait up to `timeout` for it to exit (then
/// SIGKILL). Returns whether a process was stopped. A pid file whose process is gone, or
/// whose pid now belongs to another process (another start time), signals nobody.
pub async fn terminate(pid_file: &Path, timeout: Duration) -> bool {
    let Some(pid) = read_pid(pid_file) else {
        return false;
    };
    if !alive(pid) {
        return false;
    }
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    if !wait_exit(pid, timeout).await {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        wait_exit(pid, Duration::from_secs(2)).await;
    }
    true
}

/// The last lines of a log file, indented, for error messages when a daemon failed to
/// start (its own `error: ` prefix dropped, so the message does not repeat it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  {}", l.strip_prefix("error: ").unwrap_or(l)))
        .collect::<Vec<_>>()
        .join("\n")
}
