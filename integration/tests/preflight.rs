//! End-to-end: a deploy whose listen address another process holds fails at once, naming
//! the spec field, before any image is built or container started.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use cutover_integration::{AppConfig, Project};

#[test]
fn a_listen_address_in_use_fails_the_deploy_before_the_build() {
    // Another process (this test) holds the address the spec names.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let mut p = Project::new("preflight");
    p.port = holder.local_addr().expect("local addr").port();
    p.write_spec(&AppConfig::default());
    // Start the control plane first, so the time below is the deploy's own.
    p.cutover(&["status"]).assert_code(0);

    let started = Instant::now();
    let run = p.cutover(&["deploy"]);
    let took = started.elapsed();
    eprintln!(
        "refused in {took:?} with exit code {}: {}",
        run.code,
        run.stderr.trim()
    );
    assert_ne!(run.code, 0, "the deploy succeeded: {}", run.stdout);
    let expected = format!(
        "environments.production.listen: {} is in use by another process; free it or choose another address",
        p.listen()
    );
    assert!(
        run.stderr.contains(&expected),
        "stderr does not name the field:\n{}",
        run.stderr
    );
    assert!(
        took < Duration::from_secs(5),
        "the refusal took {took:?}, not at once"
    );

    // Nothing was built, started or recorded.
    let images = Command::new("docker")
        .args(["images", "-q", &format!("cutover/{}", p.app)])
        .output()
        .expect("docker images");
    assert!(
        String::from_utf8_lossy(&images.stdout).trim().is_empty(),
        "an image was built"
    );
    assert_eq!(p.containers(), Vec::new());
    let history = p.cutover(&["history", "-o", "json"]);
    history.assert_code(0);
    assert_eq!(
        history.json(),
        serde_json::json!([]),
        "a deployment was recorded"
    );
    drop(holder);
}
