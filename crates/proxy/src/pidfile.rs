//! Pid files that say which process they mean: `<pid> <start time>`, the start time being
//! the kernel's (field 22 of `/proc/<pid>/stat`, clock ticks since boot). A pid that was
//! reused by another process after ours died has another start time, so nobody signals it.

use std::path::Path;

/// The kernel's start time of process `pid`, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // Field 22 overall; the 20th after the command name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Write this process's pid file.
pub fn write(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let line = match start_time(pid) {
        Some(start) => format!("{pid} {start}\n"),
        None => format!("{pid}\n"),
    };
    std::fs::write(path, line)
}

/// What a pid file says: the pid, and its start time when recorded.
pub fn read(path: &Path) -> Option<(u32, Option<u64>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words.next().and_then(|w| w.parse().ok());
    Some((pid, start))
}

/// The pid a pid file names, only if that process is still the one that wrote it (same
/// start time; files without one are trusted by pid alone).
pub fn live_pid(path: &Path) -> Option<u32> {
    let (pid, recorded) = read(path)?;
    let now = start_time(pid)?;
    match recorded {
        Some(start) if start != now => None,
        _ => Some(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_pid_file_names_us_and_a_reused_pid_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        write(&path).unwrap();
        assert_eq!(live_pid(&path), Some(std::process::id()));
        // The same pid with another start time: a different process now.
        let (pid, start) = read(&path).unwrap();
        std::fs::write(&path, format!("{pid} {}\n", start.unwrap() + 1)).unwrap();
        assert_eq!(live_pid(&path), None);
        // Files from before start times were recorded still name their pid.
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        assert_eq!(live_pid(&path), Some(pid));
        assert_eq!(live_pid(&dir.path().join("missing.pid")), None);
    }
}
