//! Helpers shared by the server's integration tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use cutover_executor::{ExecutorConfig, RetryPolicy};
use cutover_server::auth::{self, NewToken, Role};
use cutover_server::LocalPeer;
use cutover_store::Store;

/// A new API token named `name`, owned by `owner`, with `role` in `env` (all when `None`).
pub fn token(store: &Store, role: Role, env: Option<&str>, name: &str, owner: &str) -> String {
    auth::create_token(
        store,
        "test",
        &NewToken {
            role,
            env: env.map(str::to_string),
            name: Some(name.to_string()),
            owner: Some(owner.to_string()),
            expires_in_ms: None,
        },
    )
    .unwrap()
    .token
}

/// The executor's settings for tests on fake providers: quick retries and approval checks.
pub fn executor_config() -> ExecutorConfig {
    ExecutorConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        approval_poll: Duration::from_millis(10),
        ..ExecutorConfig::default()
    }
}

/// A project in `dir`: `deploy.toml` with `spec`, and the cargo manifest it builds.
pub fn write_project(dir: &Path, spec: &str) {
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(
        dir.join("app/Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("deploy.toml"), spec).unwrap();
}

/// A request through the router: with `token` as a bearer token, as the socket's peer
/// `peer` when given (else through the HTTP door), JSON `body`, extra `headers`. The
/// status and the whole body, read within 20 s.
pub async fn send(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    peer: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    if let Some(peer) = peer {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(LocalPeer::named(peer)));
    }
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
        .await
        .expect("the response body ends")
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes)
}

/// A body as JSON, or as a JSON string when it is not JSON.
pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Poll `check` every 10 ms until it gives a value; past `within`, fail naming `what` and
/// the last state `check` reported.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(start.elapsed() < within, "{what}: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Read a body for at most `patience` (an event stream never ends by itself), as text.
pub async fn read_body(mut body: Body, patience: Duration) -> String {
    let mut bytes = Vec::new();
    let until = tokio::time::Instant::now() + patience;
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// GET a UI page with `cookie`: its status, its text (read for 2 s at most) and the cookie
/// it sets, if any.
pub async fn page(
    app: &Router,
    path: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let set_cookie = set_cookie(&response);
    let status = response.status();
    let body = read_body(response.into_body(), Duration::from_secs(2)).await;
    (status, body, set_cookie)
}

fn set_cookie(response: &axum::response::Response) -> Option<String> {
    response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// A web UI session cookie of the owner of `token` (the login form takes a token).
pub async fn ui_login(app: &Router, token: &str) -> String {
    let (status, form, cookie) = page(app, "/login", None).await;
    assert_eq!(status, StatusCode::OK, "{form}");
    let anon = cookie.expect("the login page sets its proof cookie");
    let marker = "name=\"csrf\" value=\"";
    let at = form.find(marker).expect("the login form has a csrf field") + marker.len();
    let csrf = &form[at..at + form[at..].find('"').unwrap()];
    let body = format!("csrf={csrf}&token={token}&next=%2F");
    let request = Request::post("/login")
        .header(header::COOKIE, &anon)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "login refused");
    set_cookie(&response).expect("a session cookie")
}
