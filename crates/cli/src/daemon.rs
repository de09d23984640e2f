//! Starting the long-lived processes (control plane, proxy) detached from the caller, and
//! stopping them.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Read a pid file, if present and well-formed.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Send SIGTERM to the pid in `pid_file` and wait up to `timeout` for it to exit.
/// Returns whether a process was stopped.
pub fn terminate(pid_file: &Path, timeout: Duration) -> bool {
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
    let start = Instant::now();
    while alive(pid) && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(25));
    }
    if alive(pid) {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    true
}

/// The last lines of a log file, for error messages when a daemon failed to start.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
