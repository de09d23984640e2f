//! The control plane's TCP door over TLS, through the real binary: `cutover serve --http
//! 0.0.0.0:PORT --tls-cert --tls-key` starts (TLS makes a non-loopback address acceptable),
//! serves the certificate it was given, answers no plain HTTP, closes a silent connection
//! after `--header-read-timeout`, and serves new certificate files to new connections
//! after SIGHUP, keeping the old pair when the new files are bad. Needs Docker (the control
//! plane connects to it at start).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

use cutover_integration::{
    alive, kill, require_docker, reserve_port, wait_for, AppConfig, Project,
};

const WAIT: Duration = Duration::from_secs(30);

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Pair {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pair {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
        der: made.cert.der().clone(),
    }
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[allow(deprecated)] // ring: no post-quantum key exchange, which this test does not need
fn client(trusted: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// GET /login over TLS trusting only `trusted`: the fingerprint the server showed and the
/// response's first line.
fn tls_get(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
) -> Result<(String, String), String> {
    let mut tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn =
        rustls::ClientConnection::new(client(trusted), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let shown = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c.as_ref()))
        .ok_or("no certificate shown")?;
    let text = String::from_utf8_lossy(&response);
    Ok((shown, text.lines().next().unwrap_or("").to_string()))
}

/// Read until the peer closes; what came.
fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_over_tls_on_any_address_and_reload_the_certificate_on_sighup() {
    if !require_docker() {
        return;
    }
    let p = Project::new("tls");
    p.write_spec(&AppConfig::default());
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let first = self_signed();
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let port = reserve_port();
    let log = std::fs::File::create(certs.path().join("serve.log")).unwrap();
    let serve = Serve(
        p.command(&[
            "serve",
            "--http",
            &format!("0.0.0.0:{port}"),
            "--header-read-timeout",
            "1s",
        ])
        .env("CUTOVER_TLS_CERT", &cert)
        .env("CUTOVER_TLS_KEY", &key)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start cutover serve"),
    );
    let pid = serve.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_text = || std::fs::read_to_string(certs.path().join("serve.log")).unwrap_or_default();
    wait_for("the TLS listener", WAIT, || {
        assert!(alive(pid), "cutover serve exited:\n{}", log_text());
        tls_get(addr, &first.der).is_ok()
    });
    let (shown, status) = tls_get(addr, &first.der).unwrap();
    assert_eq!(shown, fingerprint(&first.der));
    assert_eq!(status, "HTTP/1.1 200 OK");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let got = until_closed(&mut plain);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // A connection that never starts its handshake is closed after --header-read-timeout.
    let mut silent = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    until_closed(&mut silent);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );

    // New files and SIGHUP: new connections see the new certificate.
    let second = self_signed();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    kill(pid, libc::SIGHUP);
    wait_for("the new certificate after SIGHUP", WAIT, || {
        tls_get(addr, &second.der).is_ok_and(|(shown, _)| shown == fingerprint(&second.der))
    });
    assert!(
        tls_get(addr, &first.der).is_err(),
        "the old certificate is gone"
    );

    // A bad key and SIGHUP: the error is logged and the served certificate stays.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    kill(pid, libc::SIGHUP);
    wait_for("the reload error in the log", WAIT, || {
        log_text().contains("TLS certificate not reloaded")
    });
    assert!(alive(pid));
    let (shown, status) = tls_get(addr, &second.der).unwrap();
    assert_eq!(shown, fingerprint(&second.der));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let log = log_text();
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");
}

#[test]
fn unusable_tls_files_are_refused_at_start_naming_the_file() {
    let p = Project::new("tls-bad");
    p.write_spec(&AppConfig::default());
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, self_signed().key_pem).unwrap();
    let port = reserve_port();
    let addr = format!("0.0.0.0:{port}");
    let cert_arg = cert.display().to_string();
    let key_arg = key.display().to_string();
    let run = p.cutover(&[
        "serve",
        "--http",
        &addr,
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("cert.pem") && run.stderr.contains("no PEM certificate"),
        "{}",
        run.stderr
    );
    assert!(
        p.serve_pid().is_none_or(|pid| !alive(pid)),
        "nothing serves"
    );
    // A certificate without its key is a usage error.
    let run = p.cutover(&["serve", "--http", &addr, "--tls-cert", &cert_arg]);
    run.assert_code(2);
    assert!(run.stderr.contains("--tls-key"), "{}", run.stderr);
}
