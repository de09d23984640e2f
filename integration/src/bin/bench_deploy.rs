//! Benchmark of a real deploy on the local Docker Engine with the real `cutover` binary.
//!
//! - **Warm rollback latency**: from starting `cutover rollback` to the moment after which
//!   every response carries the target release's header (measured by clients polling the
//!   listen address back to back). Target ≤ 100 ms.
//! - **Orchestrator overhead**: a deploy's wall time minus the time its critical path spent
//!   inside provider calls (Docker, builds, health checks), from the journal. Target ≤ 5 %.
//!
//! Bounded: a handful of deploys and rollbacks on 127.0.0.1; cleans up after itself.
//! Run: `cargo run --release -p cutover-integration --bin bench-deploy`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_integration::{get, wait_for, AppConfig, Project};

const DEPLOYS: usize = 3;
const ROLLBACKS: usize = 6;

fn main() {
    let p = Project::new("bench");
    p.write_spec(&AppConfig::default());
    p.cutover(&["deploy"]).assert_code(0);

    println!(
        "orchestrator overhead of a deploy (2 replicas, cargo build + docker build, health checks)"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>14} {:>10} {:>9}",
        "deployment", "cli wall", "cp wall", "provider path", "overhead", "overhead%"
    );
    let mut worst_pct: f64 = 0.0;
    for i in 0..DEPLOYS {
        p.write_spec(&AppConfig {
            version: format!("v{}", i + 2),
            ..AppConfig::default()
        });
        let start = Instant::now();
        let run = p.cutover(&["deploy", "-o", "json"]);
        let cli_wall = start.elapsed().as_millis() as u64;
        run.assert_code(0);
        let detail = run.json();
        let (cp_wall, critical) = critical_path(&detail);
        let overhead = cp_wall.saturating_sub(critical);
        let pct = 100.0 * overhead as f64 / cp_wall.max(1) as f64;
        worst_pct = worst_pct.max(pct);
        println!(
            "{:<16} {:>8}ms {:>8}ms {:>12}ms {:>8}ms {:>8.2}%",
            detail["deployment_id"].as_str().unwrap_or("?"),
            cli_wall,
            cp_wall,
            critical,
            overhead,
            pct
        );
    }
    println!("worst overhead: {worst_pct:.2}% (target <= 5%)\n");

    println!("warm rollback: command start -> every response from the target release");
    println!(
        "{:<4} {:<16} {:>12} {:>12} {:>10}",
        "run", "to release", "switch", "command", "requests"
    );
    let mut switches = Vec::new();
    for run in 0..ROLLBACKS {
        let (switch, command, requests, target) = measure_rollback(&p);
        println!(
            "{:<4} {:<16} {:>10.1}ms {:>10.1}ms {:>10}",
            run + 1,
            target,
            switch.as_secs_f64() * 1000.0,
            command.as_secs_f64() * 1000.0,
            requests
        );
        switches.push(switch);
    }
    switches.sort();
    let median = switches[switches.len() / 2];
    let max = switches[switches.len() - 1];
    println!(
        "warm rollback switch: median {:.1}ms, max {:.1}ms (target <= 100ms)",
        median.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
}

/// (control-plane wall ms, longest provider path ms) from a deployment's detail JSON.
fn critical_path(detail: &serde_json::Value) -> (u64, u64) {
    let created = detail["created_at_ms"].as_u64().unwrap_or(0);
    let finished = detail["finished_at_ms"].as_u64().unwrap_or(created);
    let steps = detail["steps"].as_array().cloned().unwrap_or_default();
    // Steps come in a topological order: longest path by summing durations along deps.
    let mut longest: HashMap<String, u64> = HashMap::new();
    for s in &steps {
        let id = s["id"].as_str().unwrap_or("").to_string();
        let own = s["duration_ms"].as_u64().unwrap_or(0);
        let before = s["depends_on"]
            .as_array()
            .map(|deps| {
                deps.iter()
                    .filter_map(|d| d.as_str())
                    .map(|d| longest.get(d).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        longest.insert(id, before + own);
    }
    (
        finished.saturating_sub(created),
        longest.values().copied().max().unwrap_or(0),
    )
}

/// One warm rollback under polling clients: (switch time, command time, requests, target).
fn measure_rollback(p: &Project) -> (Duration, Duration, usize, String) {
    let current = p.current_release();
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let url = p.url();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok((_, release, _)) = get(&url) {
                        seen.lock().expect("lock").push((Instant::now(), release));
                    }
                }
            })
        })
        .collect();
    // Measure only once the clients are being answered.
    wait_for(
        "the clients to be answered",
        Duration::from_secs(10),
        || seen.lock().expect("lock").len() >= 8,
    );
    let start = Instant::now();
    p.cutover(&["rollback"]).assert_code(0);
    let command = start.elapsed();
    // Keep polling until responses from the target have come in for a while after the
    // command returned, so a late response from the old release would still be seen.
    let target = p.current_release();
    let settled = Instant::now() + Duration::from_millis(300);
    wait_for(
        "responses from the rollback target",
        Duration::from_secs(10),
        || {
            let seen = seen.lock().expect("lock");
            seen.iter()
                .filter(|(at, release)| *at >= settled && *release == target)
                .count()
                >= 4
        },
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let seen = seen.lock().expect("lock");
    assert_ne!(target, current, "rollback changed the current release");
    // The switch is done once no response from another release completes after it.
    let last_other = seen
        .iter()
        .filter(|(at, release)| *at >= start && *release != target)
        .map(|(at, _)| *at)
        .max()
        .unwrap_or(start);
    (
        last_other.duration_since(start),
        command,
        seen.len(),
        target,
    )
}
