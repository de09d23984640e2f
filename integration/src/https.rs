//! The control plane over HTTPS for tests: `cutover serve --http 127.0.0.1:PORT` with a
//! self-signed certificate, and the CLI pointed at it (`CUTOVER_URL`, `CUTOVER_CA_CERT`).

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::{alive, reserve_port, wait_for, Project};

const WAIT: Duration = Duration::from_secs(30);

/// A foreground `cutover serve`, killed when dropped.
pub struct Serve(pub Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("a self-signed certificate");
    (made.cert.pem(), made.key_pair.serialize_pem())
}

/// Write `text` to `path`, readable by its owner only.
pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write a private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("make it private");
}

/// Write a self-signed `cert.pem` and `key.pem` into `dir`; the certificate's path.
pub fn write_certificate(dir: &Path) -> PathBuf {
    let (cert_pem, key_pem) = self_signed();
    let cert = dir.join("cert.pem");
    write_private(&cert, &cert_pem);
    write_private(&dir.join("key.pem"), &key_pem);
    cert
}

/// Run `cutover serve --http 127.0.0.1:PORT` of project `p` over TLS with `cert.pem` and
/// `key.pem` of `dir` (its log appended to `serve.log` there), with `env` added, until its
/// listener and socket answer.
pub fn serve_on(p: &Project, dir: &Path, port: u16, env: &[(&str, &str)]) -> Serve {
    let log_path = dir.join("serve.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open serve.log");
    let mut command = p.command(&["serve", "--http", &format!("127.0.0.1:{port}")]);
    command
        .env("CUTOVER_TLS_CERT", dir.join("cert.pem"))
        .env("CUTOVER_TLS_KEY", dir.join("key.pem"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log);
    let serve = Serve(command.spawn().expect("start cutover serve"));
    let pid = serve.0.id();
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("the TLS listener and the control socket", WAIT, || {
        assert!(alive(pid), "cutover serve exited:\n{}", log_text());
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && std::os::unix::net::UnixStream::connect(p.state_dir().join("control.sock")).is_ok()
    });
    serve
}

/// `cutover serve` of `p` over HTTPS on a free port with a fresh self-signed certificate:
/// (the process, the directory of certificate, key and log, the certificate, the port).
pub fn serve_https(p: &Project, env: &[(&str, &str)]) -> (Serve, tempfile::TempDir, PathBuf, u16) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = write_certificate(dir.path());
    let port = reserve_port();
    let serve = serve_on(p, dir.path(), port, env);
    (serve, dir, cert, port)
}
