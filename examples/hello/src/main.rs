//! `hello`: the example app cutover deploys.
//!
//! - `GET /` answers `hello from <VERSION>` (env `VERSION`, default `v1`).
//! - `GET /healthz` answers 200, or 503 when `FAIL_HEALTH` is set to `1`.
//! - `CRASH=1` makes the process exit with code 3 at start (a crash-looping release, for
//!   tests); before that, `LOG_LINES=<n>` writes n numbered lines to stderr and `SAY=<text>`
//!   one line with the text (diagnosis tests look for them, redacted).
//! - `ALLOC_MB=<n>` allocates and touches n MiB at start (a release its memory limit kills).
//! - `DELAY_MS=<n>` delays every `/` response by n milliseconds (drain tests).
//! - `GET /secret-digest` answers `sha256:<hex>` of the secret file
//!   `/run/secrets/<SECRET_NAME>` (default `app-secret`), read at each request, or 404 when
//!   it cannot be read: proof that the app sees its secret without showing it.
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
        "/secret-digest" => {
            let name = std::env::var("SECRET_NAME").unwrap_or_else(|_| "app-secret".to_string());
            match std::fs::read(format!("/run/secrets/{name}")) {
                Ok(bytes) => ("200 OK", format!("sha256:{}\n", sha256_hex(&bytes))),
                Err(_) => ("404 Not Found", "no readable secret file\n".to_string()),
            }
        }
        _ => {
            if !config.delay.is_zero() {
                std::thread::sleep(config.delay);
            }
            ("200 OK", format!("hello from {}\n", config.version))
        }
    }
}

/// SHA-256 (FIPS 180-4) of `data` as lowercase hex. Written out here because the app has
/// no dependencies (it must link statically into a `FROM scratch` image in seconds).
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (slot, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *slot = slot.wrapping_add(v);
        }
    }
    h.iter().map(|v| format!("{v:08x}")).collect()
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

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_matches_the_standard_vectors() {
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            super::sha256_hex(&[b'a'; 1000]),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }
}
