//! Control-plane cost while nothing happens and while many people follow a deployment.
//!
//! Runs the real `cutover` (`CUTOVER_BIN`, else the workspace's debug build) against the
//! local Docker Engine: starts `cutover serve --http`, measures the control plane's CPU
//! time and wake-ups (voluntary and involuntary context switches of all its threads, from
//! /proc) over a window in three phases, and prints a table:
//!
//! 1. idle: no deployment at all;
//! 2. gate: one deployment waiting at its approval gate, nobody following it;
//! 3. followers: the same, with N followers (half `cutover resume` processes following it
//!    on the control socket, half server-sent-event streams of `/api/v1` over TCP).
//!
//! The reference is the deployment's own cost (phase 2): the followers' cost is phase 3
//! minus phase 2. Everything is on 127.0.0.1, bounded in time, and cleaned up at the end.
//!
//! `cargo run -p cutover-integration --bin bench-control -- [--followers N] [--seconds S]`

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cutover_integration::{
    cpu_ticks, cutover_bin, reserve_port, ticks_per_second, wait_for, AppConfig, Project,
};

/// Context switches (voluntary and involuntary) of each live thread.
fn switches(pid: u32) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        out.insert(task.file_name().to_string_lossy().into_owned(), n);
    }
    out
}

/// CPU as % of one core, and wake-ups per second, over `window`. Threads come and go
/// (the blocking pool), so switches are summed per thread from samples every 100 ms: a
/// thread that appears counts from zero, one that exits keeps what it had.
fn measure(pid: u32, window: Duration) -> (f64, f64) {
    let start = Instant::now();
    let cpu_start = cpu_ticks(pid);
    let mut last = switches(pid);
    let mut total = 0u64;
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(100));
        let now = switches(pid);
        for (tid, n) in &now {
            total += n.saturating_sub(last.get(tid).copied().unwrap_or(0));
        }
        last = now;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_ticks(pid).saturating_sub(cpu_start) as f64 / ticks_per_second() / secs * 100.0;
    (cpu, total as f64 / secs)
}

/// Let start-up or the last change settle: until the control plane has used no CPU for
/// half a second, or 5 s have passed (one that polls is never quiet; it is measured busy).
fn settle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = cpu_ticks(pid);
    let mut quiet = 0;
    while quiet < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_ticks(pid);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

/// Open file descriptors of the control plane (each follower holds one connection).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// An SSE follower: a thread reading the stream until the socket is shut down.
struct SseFollower {
    stream: TcpStream,
    thread: std::thread::JoinHandle<u64>,
}

fn sse_follower(addr: &str, token: &str, id: &str) -> SseFollower {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP API");
    write!(
        stream,
        "GET /api/v1/deployments/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send the request");
    let mut reader = stream.try_clone().expect("clone stream");
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    SseFollower { stream, thread }
}

/// The control plane, killed if the bench stops early (its proxy is stopped by
/// `serve --stop`, or by the project's clean-up).
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let followers = arg("--followers", 100) as usize;
    let window = Duration::from_secs(arg("--seconds", 10));
    let bin = cutover_bin();
    let project = Project::new("bench-control");
    project.write_spec(&AppConfig::default());
    let mut spec = std::fs::read_to_string(project.spec_path()).unwrap();
    spec = spec.replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\napproval = true",
    );
    std::fs::write(project.spec_path(), spec).unwrap();

    let http = format!("127.0.0.1:{}", reserve_port());
    let mut serve = Stop(
        project
            .command(&["serve", "--http", &http])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cutover serve"),
    );
    wait_for("the control plane", Duration::from_secs(30), || {
        project.serve_pid().is_some() && TcpStream::connect(&http).is_ok()
    });
    let pid = serve.0.id();
    settle(pid);
    let idle = measure(pid, window);

    let token = project.cutover(&["token", "create", "--role", "viewer", "-o", "json"]);
    let token = token.json()["token"].as_str().expect("a token").to_string();
    let started = project.cutover(&["deploy", "--detach", "-o", "json"]);
    let id = started.json()["deployment_id"]
        .as_str()
        .expect("a deployment id")
        .to_string();
    wait_for("the approval gate", Duration::from_secs(600), || {
        let status = project.cutover(&["status", "--deployment", &id, "-o", "json"]);
        status.json()["approval"]["waiting"] == true
    });
    settle(pid);
    let gate = measure(pid, window);
    let fds_before = open_fds(pid);

    let cli: Vec<Child> = (0..followers / 2)
        .map(|_| {
            project
                .command(&["resume"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start cutover resume")
        })
        .collect();
    let sse: Vec<SseFollower> = (0..followers - followers / 2)
        .map(|_| sse_follower(&http, &token, &id))
        .collect();
    // Every follower connected, and caught up.
    wait_for("every follower connected", Duration::from_secs(120), || {
        open_fds(pid) >= fds_before + followers
    });
    settle(pid);
    let followed = measure(pid, window);

    for mut c in cli {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut sse_bytes = 0;
    for f in sse {
        let _ = f.stream.shutdown(std::net::Shutdown::Both);
        sse_bytes += f.thread.join().unwrap_or(0);
    }
    let _ = project.cutover(&["serve", "--stop"]);
    let _ = serve.0.wait();

    println!(
        "control plane {} ({}), window {}s, {followers} followers ({} cli + {} sse, {sse_bytes} sse bytes)",
        bin.display(),
        Path::new(&bin).metadata().map(|m| m.len()).unwrap_or(0),
        window.as_secs(),
        followers / 2,
        followers - followers / 2
    );
    println!("| phase | cpu % of one core | wake-ups/s |");
    println!("|---|---|---|");
    println!("| idle (no deployment) | {:.2} | {:.1} |", idle.0, idle.1);
    println!(
        "| deployment waiting at its gate | {:.2} | {:.1} |",
        gate.0, gate.1
    );
    println!(
        "| + {followers} followers | {:.2} | {:.1} |",
        followed.0, followed.1
    );
    println!(
        "| followers' share (row 3 - row 2) | {:.2} | {:.1} |",
        followed.0 - gate.0,
        followed.1 - gate.1
    );
}
