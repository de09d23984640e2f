//! The TCP door under attack, over real sockets on 127.0.0.1: TLS (and plain HTTP sent to
//! it), certificate reload, a stalled request head, an oversized body, more connections
//! than the cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use cutover_executor::fake::FakeProviders;
use cutover_executor::ExecutorConfig;
use cutover_store::Store;

use super::{serve_tcp, DoorOptions, TlsFiles, BODY_LIMIT};
use crate::auth::{self, Role};
use crate::ControlPlane;

/// Every wait of these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(10);

struct Door {
    addr: SocketAddr,
    cp: Arc<ControlPlane>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Door {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn open(options: DoorOptions) -> Door {
    let cp = ControlPlane::new(
        Store::temporary().unwrap(),
        FakeProviders::new().providers(),
        ExecutorConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_tcp(
        listener,
        crate::router(cp.clone()),
        options,
        async {
            let _ = stopped.await;
        },
    ));
    Door {
        addr,
        cp,
        stop: Some(stop),
    }
}

/// One response: status, head (lowercase), body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Send `raw` and read one response (with a Content-Length body).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    raw: &[u8],
) -> std::io::Result<Answer> {
    stream.write_all(raw).await?;
    stream.flush().await?;
    read_answer(stream).await
}

async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a whole response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer { status, head, body })
}

const GET_CSS: &[u8] = b"GET /ui/static/cutover.css HTTP/1.1\r\nHost: door\r\n\r\n";

async fn get_css(addr: SocketAddr) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(DEADLINE, exchange(&mut stream, GET_CSS))
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// Wait until the peer closes `stream` (EOF or reset), reading and discarding what comes.
async fn closed_by_peer(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

// ----- TLS -----

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Pair {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    Pair {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
        der: made.cert.der().clone(),
    }
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn connector(trusted: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection trusting only `trusted`, and the fingerprint of what the server showed.
async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(DEADLINE, connector(trusted).connect(name, tcp))
        .await
        .expect("a handshake in time")?;
    let shown = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c.as_ref()))
        .unwrap_or_default();
    Ok((tls, shown))
}

#[tokio::test]
async fn tls_serves_the_certificate_refuses_plain_http_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = self_signed();
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let files = TlsFiles::load(&cert, &key).unwrap();
    assert_eq!(files.fingerprint(), fingerprint(&first.der));
    let door = open(DoorOptions {
        tls: Some(files.clone()),
        ..DoorOptions::default()
    })
    .await;

    // A client trusting the certificate gets the UI over TLS, with Secure cookies.
    let (mut kept, shown) = tls_connect(door.addr, &first.der).await.unwrap();
    assert_eq!(shown, fingerprint(&first.der));
    let page = exchange(&mut kept, b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.head.contains("set-cookie: cutover_login=") && page.head.contains("; secure"),
        "{}",
        page.head
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(door.addr).await.unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, closed_by_peer(&mut plain))
        .await
        .expect("the server closes a plain-HTTP connection");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // New files, reloaded: new handshakes show the new certificate; a client that trusts
    // only the old one now fails. The connection opened before goes on.
    let second = self_signed();
    assert!(tls_connect(door.addr, &second.der).await.is_err());
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    files.reload().unwrap();
    let (mut fresh, shown) = tls_connect(door.addr, &second.der).await.unwrap();
    assert_eq!(shown, fingerprint(&second.der));
    assert_eq!(files.fingerprint(), shown);
    assert!(tls_connect(door.addr, &first.der).await.is_err());
    let again = exchange(
        &mut fresh,
        b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(again.status, 200);
    let old = exchange(&mut kept, b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        old.status, 200,
        "a connection from before the reload goes on"
    );

    // Bad new files are refused and the served pair stays: garbage, a key of another
    // certificate, a missing file.
    std::fs::write(&key, "not a key").unwrap();
    let err = files.reload().unwrap_err().to_string();
    assert!(
        err.contains("key.pem") && err.contains("no PEM private key"),
        "{err}"
    );
    std::fs::write(&key, &first.key_pem).unwrap();
    let err = files.reload().unwrap_err().to_string();
    assert!(err.contains("does not belong"), "{err}");
    std::fs::remove_file(&cert).unwrap();
    let err = files.reload().unwrap_err().to_string();
    assert!(err.contains("cert.pem"), "{err}");
    let (_, shown) = tls_connect(door.addr, &second.der).await.unwrap();
    assert_eq!(shown, fingerprint(&second.der));
}

#[tokio::test]
async fn loading_unusable_files_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pair = self_signed();
    std::fs::write(&cert, &pair.key_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let err = TlsFiles::load(&cert, &key).err().unwrap().to_string();
    assert!(
        err.contains("cert.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = TlsFiles::load(&dir.path().join("missing.pem"), &key)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot read") && err.contains("missing.pem"),
        "{err}"
    );
}

// ----- slow clients -----

#[tokio::test]
async fn a_stalled_request_head_is_cut_off_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let door = open(DoorOptions {
        header_read_timeout: timeout,
        ..DoorOptions::default()
    })
    .await;
    // Half a request head, then nothing.
    let mut stalled = TcpStream::connect(door.addr).await.unwrap();
    let started = Instant::now();
    stalled
        .write_all(b"GET /login HTTP/1.1\r\nHost: door\r\nX-Slow: ")
        .await
        .unwrap();
    // A client trickling a byte every 100 ms is cut off all the same.
    let mut trickling = TcpStream::connect(door.addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let _ = trickling.write_all(b"GET /login HTTP/1.1\r\n").await;
        for _ in 0..100 {
            if trickling.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Writes may still succeed into the buffer after the close: the read tells.
        let got = closed_by_peer(&mut trickling).await;
        (started.elapsed(), got)
    });
    // Meanwhile an ordinary request is answered at once.
    let answer = get_css(door.addr).await;
    assert_eq!(answer.status, 200);
    let got = tokio::time::timeout(DEADLINE, closed_by_peer(&mut stalled))
        .await
        .expect("the stalled connection is closed");
    let waited = started.elapsed();
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    assert!(
        waited >= timeout - Duration::from_millis(50) && waited < timeout * 6,
        "closed after {waited:?}"
    );
    let (trickled_for, got) = tokio::time::timeout(DEADLINE, trickle)
        .await
        .expect("the trickling connection is closed")
        .unwrap();
    assert!(!got.starts_with(b"HTTP/1.1 200"));
    assert!(trickled_for < timeout * 6, "closed after {trickled_for:?}");
    // And the server still answers.
    assert_eq!(get_css(door.addr).await.status, 200);
}

#[tokio::test]
async fn a_silent_tls_client_is_cut_off_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pair = self_signed();
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let timeout = Duration::from_millis(500);
    let door = open(DoorOptions {
        tls: Some(TlsFiles::load(&cert, &key).unwrap()),
        header_read_timeout: timeout,
        ..DoorOptions::default()
    })
    .await;
    let mut silent = TcpStream::connect(door.addr).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, closed_by_peer(&mut silent))
        .await
        .expect("a connection that never starts its handshake is closed");
    assert!(started.elapsed() >= timeout - Duration::from_millis(50));
    let (_, shown) = tls_connect(door.addr, &pair.der).await.unwrap();
    assert_eq!(shown, fingerprint(&pair.der));
}

// ----- bodies -----

fn admin_token(cp: &ControlPlane) -> String {
    auth::create_token(
        &cp.store,
        "test",
        &auth::NewToken {
            role: Role::Admin,
            env: None,
            name: Some("ci".to_string()),
            owner: None,
            expires_in_ms: None,
        },
    )
    .unwrap()
    .token
}

/// POST a 2 MiB JSON body (declared, or chunked) while reading the answer.
async fn post_big(addr: SocketAddr, token: &str, chunked: bool) -> Answer {
    let body = format!("{{\"spec\": \"{}\"}}", "x".repeat(2 * BODY_LIMIT - 12));
    assert!(body.len() >= 2 * BODY_LIMIT);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST /api/v1/plans HTTP/1.1\r\nHost: door\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        if chunked {
            for piece in body.as_bytes().chunks(64 * 1024) {
                write
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                write.write_all(piece).await?;
                write.write_all(b"\r\n").await?;
            }
            write.write_all(b"0\r\n\r\n").await?;
        } else {
            write.write_all(body.as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    let answer = tokio::time::timeout(DEADLINE, read_answer(&mut read))
        .await
        .expect("an answer in time")
        .expect("an answer");
    // The server may close before the whole body was sent; that is its right.
    let _ = writer.await;
    answer
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_with_the_error_body() {
    let door = open(DoorOptions::default()).await;
    let token = admin_token(&door.cp);
    for chunked in [false, true] {
        let answer = post_big(door.addr, &token, chunked).await;
        assert_eq!(answer.status, 413, "chunked: {chunked}");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["code"], "payload_too_large", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("too large")
                || body["message"].as_str().unwrap().contains("larger than"),
            "{body}"
        );
    }
    // The server is fine afterwards: a small body is read and judged on its merits.
    let mut stream = TcpStream::connect(door.addr).await.unwrap();
    let small = "{\"env\": 7}";
    let request = format!(
        "POST /api/v1/plans HTTP/1.1\r\nHost: door\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{small}",
        small.len()
    );
    let answer = exchange(&mut stream, request.as_bytes()).await.unwrap();
    assert_eq!(
        answer.status,
        400,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(get_css(door.addr).await.status, 200);
}

// ----- the connection cap -----

const CAP: usize = 4;
const CLIENTS: usize = 10;

/// Wait until `total` clients were served; then check that no other is served while the
/// served ones keep their connections.
async fn served_until(
    answers: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
    served: &mut Vec<usize>,
    total: usize,
) {
    while served.len() < total {
        let i = tokio::time::timeout(DEADLINE, answers.recv())
            .await
            .expect("a waiting client is served in time")
            .unwrap();
        served.push(i);
    }
    if total < CLIENTS {
        let more = tokio::time::timeout(Duration::from_millis(400), answers.recv()).await;
        assert!(
            more.is_err(),
            "served {served:?} and then {more:?}: over the cap"
        );
    }
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_ends() {
    let door = open(DoorOptions {
        max_connections: CAP,
        header_read_timeout: Duration::from_secs(30),
        ..DoorOptions::default()
    })
    .await;
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut close = Vec::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        close.push(Some(close_tx));
        let answered = answered.clone();
        let addr = door.addr;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let answer = exchange(&mut stream, GET_CSS).await.unwrap();
            assert_eq!(answer.status, 200);
            let _ = answered.send(i);
            // Keep the (keep-alive) connection open until told to close it.
            let _ = close_rx.await;
        }));
    }
    let mut served: Vec<usize> = Vec::new();
    served_until(&mut answers, &mut served, CAP).await;
    // Two of them hang up: two more are served, and no more.
    for &i in &served[..2] {
        close[i].take().unwrap().send(()).unwrap();
    }
    served_until(&mut answers, &mut served, CAP + 2).await;
    // The others hang up in turn until every client was served.
    while served.len() < CLIENTS {
        for &i in &served {
            if let Some(tx) = close[i].take() {
                tx.send(()).unwrap();
            }
        }
        let total = (served.len() + CAP).min(CLIENTS);
        served_until(&mut answers, &mut served, total).await;
    }
    for tx in close.iter_mut().filter_map(Option::take) {
        tx.send(()).unwrap();
    }
    for client in clients {
        tokio::time::timeout(DEADLINE, client)
            .await
            .expect("clients finish")
            .unwrap();
    }
    // Recovered: a new client is served at once.
    assert_eq!(get_css(door.addr).await.status, 200);
}
