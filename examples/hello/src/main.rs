//! `hello`: the example app cutover deploys.
//!
//! - `GET /` answers `hello from <VERSION>` (env `VERSION`, default `v1`).
//! - `GET /healthz` answers 200, or 503 when `FAIL_HEALTH` is set to `1`.
//! - `CRASH=1` makes the process exit with code 3 at start (a crash-looping release, for
//!   tests); before that, `LOG_LINES=<n>` writes n numbered lines to stderr and `SAY=<text>`
//!   one line with the text (diagnosis tests look for them, redacted).
//! - `ALLOC_MB=<n>` allocates and touches n MiB at start (a release its memory limit kills).
//! - `DELAY_MS=<n>` delays every `/` response by n milliseconds (drain tests).
//!
//! HTTP/1.1 with keep-alive, one thread per connection, std only, so it links statically
//! and runs in a `FROM scratch` image.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let lines: usize = std::env::var("LOG_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for i in 1..=lines {
        eprintln!("hello: log line {i}");
    }
    if let Ok(text) = std::env::var("SAY") {
        eprintln!("hello: says {text}");
    }
    if let Some(mb) = std::env::var("ALLOC_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut blocks = Vec::with_capacity(mb);
        for _ in 0..mb {
            blocks.push(vec![1u8; 1024 * 1024]);
        }
        eprintln!("hello: allocated {} MiB", blocks.len());
        std::hint::black_box(&blocks);
    }
    if std::env::var("CRASH").as_deref() == Ok("1") {
        eprintln!("hello: CRASH=1, exiting");
        std::process::exit(3);
    }
    install_sigterm_exit();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    let config = Config::from_env();
    eprintln!("hello {} listening on :{port}", config.version);
    for stream in listener.incoming().flatten() {
        let config = config.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &config);
        });
    }
}

#[derive(Clone)]
struct Config {
    version: String,
    fail_health: bool,
    delay: Duration,
}

impl Config {
    fn from_env() -> Config {
        Config {
            version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_string()),
            fail_health: std::env::var("FAIL_HEALTH").as_deref() == Ok("1"),
            delay: Duration::from_millis(
                std::env::var("DELAY_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
}

fn serve(stream: TcpStream, config: &Config) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut content_length = 0usize;
        let mut close = http10;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length.min(1 << 20)];
            reader.read_exact(&mut body)?;
        }
        let (status, body) = respond(&method, &path, config);
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-app-version: {}\r\n{}\r\n",
            body.len(),
            config.version,
            if close { "connection: close\r\n" } else { "" }
        );
        writer.write_all(head.as_bytes())?;
        if method != "HEAD" {
            writer.write_all(body.as_bytes())?;
        }
        if close {
            return Ok(());
        }
    }
}

fn respond(method: &str, path: &str, config: &Config) -> (&'static str, String) {
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "method not allowed\n".to_string());
    }
    match path {
        "/healthz" if config.fail_health => ("503 Service Unavailable", "unhealthy\n".to_string()),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        _ => {
            if !config.delay.is_zero() {
                std::thread::sleep(config.delay);
            }
            ("200 OK", format!("hello from {}\n", config.version))
        }
    }
}

/// PID 1 in a container ignores SIGTERM unless it installs a handler: exit at once on it.
fn install_sigterm_exit() {
    extern "C" fn on_sigterm(_: i32) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(0) }
    }
    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(code: i32) -> !;
    }
    const SIGTERM: i32 = 15;
    // SAFETY: installs a handler that only exits the process.
    unsafe {
        signal(SIGTERM, on_sigterm);
    }
}
