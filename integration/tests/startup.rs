//! Starting the control plane: of several first commands racing on a fresh project, one
//! starts it (under the start lock) and every one of them succeeds.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use cutover_integration::{alive, AppConfig, Project};

#[test]
fn eight_parallel_first_commands_all_succeed_with_one_control_plane() {
    let p = Project::new("startup-race");
    p.write_spec(&AppConfig::default());
    // `status` needs no Docker build: it only reaches (or starts) the control plane.
    let children: Vec<_> = (0..8)
        .map(|_| {
            p.command(&["status", "-o", "json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start cutover status")
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for cutover status"))
        .collect();
    for (i, out) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "command {i} failed ({:?}): {stderr}",
            out.status.code()
        );
        assert!(!stderr.contains("in use by another"), "{stderr}");
    }
    let pid = p.serve_pid().expect("a control plane pid file");
    assert!(alive(pid), "the control plane runs");
    // Exactly one control plane for this state directory: no other `cutover serve` of it.
    let state = p.state_dir().display().to_string();
    let serves = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" serve ") && c.contains(&state))
        .count();
    assert_eq!(serves, 1, "one control plane for {state}");
    // The state directory and everything in it (store, logs, pid files, sockets, the
    // proxy's routes) are their owner's alone.
    let mode = std::fs::metadata(p.state_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "state directory mode {mode:o}");
    let mut open_to_others = Vec::new();
    let mut dirs = vec![p.state_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.permissions().mode() & 0o077 != 0 {
                open_to_others.push(format!(
                    "{} {:o}",
                    entry.path().display(),
                    meta.permissions().mode() & 0o777
                ));
            }
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    assert!(open_to_others.is_empty(), "{open_to_others:#?}");
}

#[test]
fn a_state_directory_other_users_can_enter_is_refused() {
    let p = Project::new("startup-open");
    p.write_spec(&AppConfig::default());
    std::fs::create_dir_all(p.state_dir()).unwrap();
    std::fs::set_permissions(p.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = p.cutover(&["status"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("open to other users") && run.stderr.contains("chmod 700"),
        "{}",
        run.stderr
    );
    assert!(
        p.serve_pid().is_none_or(|pid| !alive(pid)),
        "nothing serves"
    );
}

#[test]
fn plain_http_on_an_address_other_machines_reach_is_refused() {
    let p = Project::new("startup-public");
    p.write_spec(&AppConfig::default());
    let port = cutover_integration::reserve_port();
    let addr = format!("0.0.0.0:{port}");
    let run = p.cutover(&["serve", "--http", &addr]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("in the clear") && run.stderr.contains("--insecure-http"),
        "{}",
        run.stderr
    );
    // Refused before anything was opened: no control plane, nothing on the port.
    assert!(
        p.serve_pid().is_none_or(|pid| !alive(pid)),
        "nothing serves"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_pid_file_naming_someone_elses_process_signals_nobody() {
    let p = Project::new("startup-pid");
    p.write_spec(&AppConfig::default());
    std::fs::create_dir_all(p.state_dir()).unwrap();
    std::fs::set_permissions(p.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // An unrelated process now holds the pid a stale pid file names (its start time differs
    // from the one recorded).
    let mut bystander = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let pid = bystander.id();
    for file in ["serve.pid", "proxy/proxy.pid"] {
        let path = p.state_dir().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{pid} 1\n")).unwrap();
    }
    let run = p.cutover(&["serve", "--stop"]);
    run.assert_code(0);
    assert!(run.stdout.contains("was not running"), "{}", run.stdout);
    assert!(alive(pid), "the bystander was signalled");
    let _ = bystander.kill();
    let _ = bystander.wait();
}
