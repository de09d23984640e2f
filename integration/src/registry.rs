//! A throw-away OCI registry for tests: Docker's registry (distribution 2.8, Debian package
//! `docker-registry`) on 127.0.0.1 with a free port, filesystem storage in a temp dir and
//! htpasswd basic auth (bcrypt, made with `htpasswd -Bbn` from apache2-utils). Deleting
//! manifests is enabled so tests can remove an attestation. Killed and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Why the registry cannot be started here, if it cannot.
pub fn registry_missing() -> Option<String> {
    if !std::path::Path::new(REGISTRY_BIN).is_file() {
        return Some(format!(
            "{REGISTRY_BIN} is missing; install the Debian package docker-registry (scripts/setup does)"
        ));
    }
    match Command::new("htpasswd").arg("-h").output() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "cannot run htpasswd ({e}); install the Debian package apache2-utils (scripts/setup does)"
        )),
    }
}

/// For tests that need a registry: `true` when it can be started; else panics on CI and
/// returns `false` (test skipped, reason printed) elsewhere.
#[track_caller]
pub fn require_registry() -> bool {
    crate::require("docker-registry and htpasswd", registry_missing())
}

/// A running registry; stopped and its storage removed when dropped.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub username: String,
    pub password: String,
}

impl Registry {
    /// Start a registry that accepts `username`/`password`, and wait until `/v2/` answers
    /// 401 (auth on), for at most 20 s.
    pub fn start(username: &str, password: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("cutover-it-registry-")
            .tempdir()
            .expect("temp dir");
        let out = Command::new("htpasswd")
            .args(["-Bbn", username, password])
            .output()
            .expect("run htpasswd");
        assert!(out.status.success(), "htpasswd failed");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            listener.local_addr().expect("local addr").port()
        };
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: cutover-tests\n    path: {htpasswd}\n",
                storage = storage.display(),
                htpasswd = htpasswd.display(),
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        let mut registry = Registry {
            child,
            dir,
            addr,
            username: username.to_string(),
            password: password.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!(
                    "the registry exited ({status}): {}",
                    std::fs::read_to_string(registry.log()).unwrap_or_default()
                );
            }
            let answered = ureq::get(&format!("http://{}/v2/", registry.addr))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .map(|r| r.status().as_u16());
            if matches!(answered, Ok(401)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registry at {} did not answer /v2/ with 401 within 20s (last: {answered:?})",
                registry.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// The registry's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// `Authorization: Basic …` for this registry's user.
    pub fn basic_auth(&self) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.username, self.password))
        )
    }

    /// Delete the manifest `digest` of `repository` (all its tags go with it).
    pub fn delete_manifest(&self, repository: &str, digest: &str) {
        let status = ureq::delete(&format!(
            "http://{}/v2/{repository}/manifests/{digest}",
            self.addr
        ))
        .header("Authorization", &self.basic_auth())
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(202)),
            "deleting {repository}@{digest}: {status:?}"
        );
    }

    /// The digest the tag `repository:tag` points to, if any.
    pub fn tag_digest(&self, repository: &str, tag: &str) -> Option<String> {
        let response = ureq::head(&format!(
            "http://{}/v2/{repository}/manifests/{tag}",
            self.addr
        ))
        .header("Authorization", &self.basic_auth())
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
