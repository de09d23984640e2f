//! A small WebDriver client for UI tests: starts `chromedriver` on a reserved 127.0.0.1 port
//! and drives headless Chromium through the W3C WebDriver protocol (JSON over HTTP, with
//! `ureq`). Every wait is bounded. Dropping the [`Browser`] ends the session and kills the
//! driver (and with it the browser); the profile directory is removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C key of element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Paths of the browser and its driver: `CHROMIUM` / `CHROMEDRIVER`, else Debian's.
pub fn binaries() -> (PathBuf, PathBuf) {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    (chromium, driver)
}

/// Why the browser tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    let (chromium, driver) = binaries();
    for path in [&chromium, &driver] {
        if !path.is_file() {
            return Some(format!(
                "{} not found; install chromium and chromium-driver (Debian) or set CHROMIUM and CHROMEDRIVER",
                path.display()
            ));
        }
    }
    None
}

/// A headless Chromium session.
pub struct Browser {
    agent: ureq::Agent,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless browser with a `width` x `height` window.
    pub fn start(width: u32, height: u32) -> Result<Browser, String> {
        let (chromium, driver_path) = binaries();
        let port = crate::reserve_port();
        let mut driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", driver_path.display()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if agent.get(&format!("{base}/status")).call().is_ok() {
                break;
            }
            if let Ok(Some(status)) = driver.try_wait() {
                return Err(format!(
                    "chromedriver exited at start ({status}); is port {port} taken?"
                ));
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err("chromedriver did not answer within 15s".to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().map_err(|e| format!("profile directory: {e}"))?;
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--no-first-run".to_string(),
            "--hide-scrollbars".to_string(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        // Chromium refuses to run as root without it.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox".to_string());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let answer = call(&agent, "POST", &format!("{base}/session"), Some(&caps));
        let session = match answer {
            Ok(v) => match v["sessionId"].as_str() {
                Some(id) => format!("{base}/session/{id}"),
                None => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    return Err(format!("new session answered without an id: {v}"));
                }
            },
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err(e);
            }
        };
        Ok(Browser {
            agent,
            session,
            driver,
            _profile: profile,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        call(
            &self.agent,
            method,
            &format!("{}{path}", self.session),
            body,
        )
    }

    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(&json!({ "url": url })))
            .map(|_| ())
    }

    pub fn url(&self) -> Result<String, String> {
        Ok(self
            .cmd("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Resize the window (CSS pixels).
    pub fn resize(&self, width: u32, height: u32) -> Result<(), String> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        )
        .map(|_| ())
    }

    /// The element matching `css`.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element {css}: {v}"))
    }

    pub fn click(&self, css: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("/element/{id}/click"), Some(&json!({})))
            .map(|_| ())
    }

    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Run `script` (a function body; `arguments` holds `args`) and return its value.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value, String> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Poll `script` until it returns `true`, every 100 ms, for at most `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, script: &str) -> Result<(), String> {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < timeout {
            match self.execute(script, json!([])) {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(v) => last = v,
                // The page may be navigating; try again.
                Err(e) => last = Value::String(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "timed out after {timeout:?} waiting for {what} (last answer: {last})"
        ))
    }

    /// Save a PNG of the viewport to `path` (directories are created).
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", None)?;
        let data = v.as_str().ok_or("screenshot answer is not a string")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("screenshot is not base64: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(&self.agent, "DELETE", &self.session, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command; returns its `value`, or the driver's error message.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let result = match (method, body) {
        ("POST", Some(body)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string()),
        ("POST", None) => agent
            .post(url)
            .header("content-type", "application/json")
            .send("{}"),
        ("DELETE", _) => agent.delete(url).call(),
        _ => agent.get(url).call(),
    };
    let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{method} {url}: answer is not json ({e}): {text}"))?;
    if status >= 400 {
        return Err(format!(
            "{method} {url}: {} {}",
            v["value"]["error"].as_str().unwrap_or("error"),
            v["value"]["message"].as_str().unwrap_or("")
        ));
    }
    Ok(v["value"].clone())
}
