//! What a flood of wrong web logins costs the control plane, against cheap requests.
//!
//! Runs the real `cutover` (`CUTOVER_BIN`, else the workspace's debug build): starts
//! `cutover serve --http 127.0.0.1:<port>`, adds one user, then from 127.0.0.1 sends, one
//! after the other on fresh connections:
//!
//! 1. reference: N unauthenticated `GET /api/v1/health` (answered 401 without a hash);
//! 2. reference: N `GET /login` (the login form and its signed cookie);
//! 3. the flood: N attempts, each a `GET /login` and a `POST /login` with a wrong password,
//!    half of them at the existing user's name, half at other names.
//!
//! For each it prints the answers by status, the wall time, and the control plane's CPU
//! time (from /proc), and for the flood how many attempts were checked (401) before the
//! limits answered 429, and at what rate. Everything is on 127.0.0.1, bounded in count, and
//! cleaned up at the end.
//!
//! `cargo run -p cutover-integration --bin bench-login -- [--attempts 1000]`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cutover_integration::{
    cpu_ticks, cutover_bin, reserve_port, ticks_per_second, wait_for, AppConfig, Project,
};

/// One HTTP/1.1 exchange on a fresh connection: the status, the `Set-Cookie` values and
/// the body.
fn exchange(addr: &str, request: &str) -> (u16, Vec<String>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the control plane");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cookies = head
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_string())
        })
        .collect();
    (status, cookies, body.to_string())
}

fn get(addr: &str, path: &str) -> (u16, Vec<String>, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// The value of the login form's `csrf` field.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a csrf field on the login page") + marker.len();
    page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// One wrong login: the form, then the POST with its cookie and field. Returns the
/// POST's status.
fn wrong_login(addr: &str, user: &str) -> u16 {
    let (_, cookies, page) = get(addr, "/login");
    let csrf = csrf_of(&page);
    let body = format!("csrf={csrf}&next=%2F&username={user}&password=not-the-password");
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: {}\r\nContent-Length: {}\r\n\r\n{body}",
        cookies.join("; "),
        body.len()
    );
    exchange(addr, &request).0
}

struct Phase {
    name: &'static str,
    statuses: BTreeMap<u16, usize>,
    wall: Duration,
    cpu_seconds: f64,
}

fn phase(name: &'static str, pid: u32, n: usize, mut one: impl FnMut(usize) -> u16) -> Phase {
    let cpu_start = cpu_ticks(pid);
    let start = Instant::now();
    let mut statuses = BTreeMap::new();
    for i in 0..n {
        *statuses.entry(one(i)).or_insert(0) += 1;
    }
    Phase {
        name,
        statuses,
        wall: start.elapsed(),
        cpu_seconds: cpu_ticks(pid).saturating_sub(cpu_start) as f64 / ticks_per_second(),
    }
}

fn main() {
    let attempts = std::env::args()
        .skip_while(|a| a != "--attempts")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000usize);
    let bin = cutover_bin();
    let project = Project::new("bench-login");
    project.write_spec(&AppConfig::default());
    let addr = format!("127.0.0.1:{}", reserve_port());
    let mut serve = project
        .command(&["serve", "--http", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cutover serve");
    wait_for("the control plane", Duration::from_secs(30), || {
        project.serve_pid().is_some() && TcpStream::connect(&addr).is_ok()
    });
    let pid = serve.id();
    project
        .cutover_with_env(
            &["user", "add", "alice", "--role", "viewer"],
            &[("CUTOVER_PASSWORD", "the-right-password")],
        )
        .assert_code(0);

    let health = phase("reference: GET /api/v1/health", pid, attempts, |_| {
        get(&addr, "/api/v1/health").0
    });
    let form = phase("reference: GET /login", pid, attempts, |_| {
        get(&addr, "/login").0
    });
    // The status of every attempt of the flood, and when it was answered.
    let mut answered = Vec::new();
    let flood_start = Instant::now();
    let flood = phase(
        "flood: GET /login + POST wrong password",
        pid,
        attempts,
        |i| {
            let user = if i % 2 == 0 {
                "alice".to_string()
            } else {
                format!("user{i}")
            };
            let status = wrong_login(&addr, &user);
            answered.push((status, flood_start.elapsed()));
            status
        },
    );

    let _ = project.cutover(&["serve", "--stop"]);
    let _ = serve.wait();

    println!(
        "control plane {}, {attempts} requests or attempts per phase, one at a time from 127.0.0.1",
        bin.display()
    );
    println!("| phase | answers | wall | control-plane cpu | cpu per request |");
    println!("|---|---|---|---|---|");
    for p in [&health, &form, &flood] {
        let answers: Vec<String> = p
            .statuses
            .iter()
            .map(|(status, n)| format!("{n} × {status}"))
            .collect();
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} ms |",
            p.name,
            answers.join(", "),
            p.wall.as_secs_f64(),
            p.cpu_seconds,
            p.cpu_seconds * 1000.0 / attempts as f64
        );
    }
    // The burst: attempts checked before the limits first answered 429; after it, the
    // checks the refill allowed over the rest of the flood.
    let first_refusal = answered
        .iter()
        .position(|(status, _)| *status == 429)
        .unwrap_or(answered.len());
    let burst = answered[..first_refusal]
        .iter()
        .filter(|(status, _)| *status == 401)
        .count();
    let refill = answered[first_refusal..]
        .iter()
        .filter(|(status, _)| *status == 401)
        .count();
    let refill_span = answered
        .last()
        .zip(answered.get(first_refusal))
        .map(|((_, end), (_, start))| end.saturating_sub(*start).as_secs_f64())
        .unwrap_or(0.0);
    println!(
        "flood: {burst} attempts had their password checked (401) before the first 429, then {refill} more over {refill_span:.1} s ({:.2}/s); the other {} were refused (429) before any hash",
        refill as f64 / refill_span.max(0.001),
        attempts - burst - refill
    );
    println!(
        "flood cpu relative to the GET /login reference: {:.2}×",
        flood.cpu_seconds / form.cpu_seconds.max(0.001)
    );
}
