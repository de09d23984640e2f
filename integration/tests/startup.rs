//! Starting the control plane: of several first commands racing on a fresh project, one
//! starts it (under the start lock) and every one of them succeeds.

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
    // The state directory is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.state_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "state directory mode {mode:o}");
}
