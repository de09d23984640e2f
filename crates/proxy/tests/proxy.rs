//! In-process tests: the real proxy (`run_until`) on a temp state dir, tiny hyper upstreams,
//! everything on 127.0.0.1; upstreams on ports picked by the kernel, route listen addresses
//! on reserved ports (the proxy binds those itself).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_model::{Backend, Route, RELEASE_HEADER};
use cutover_proxy::{run_until, AdminClient, AdminError, ProxyConfig, PID_FILE, SOCKET_FILE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Size of the `/big` answer: larger than what the proxy reads whole, so it is streamed.
const BIG_BODY: usize = 300 * 1024;

/// A tiny upstream answering its name; `/slow` answers after 400 ms, `/big` answers
/// [`BIG_BODY`] bytes, `/echo` answers the request body.
struct Upstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (drain_tx, drain_rx) = watch::channel(false);
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let mut drain = drain_rx.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                                let body = match req.uri().path() {
                                    "/slow" => {
                                        tokio::time::sleep(Duration::from_millis(400)).await;
                                        Bytes::from_static(name.as_bytes())
                                    }
                                    "/big" => Bytes::from(vec![b'x'; BIG_BODY]),
                                    "/echo" => req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
                                    _ => Bytes::from_static(name.as_bytes()),
                                };
                                Ok::<_, Infallible>(Response::new(Full::new(body)))
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::pin!(conn);
                            tokio::select! {
                                _ = conn.as_mut() => {}
                                _ = async { let _ = drain.wait_for(|d| *d).await; } => {
                                    conn.as_mut().graceful_shutdown();
                                    let _ = conn.await;
                                }
                            }
                        });
                    }
                    _ = &mut stop_rx => break,
                }
            }
            drop(listener);
            let _ = drain_tx.send(true);
            while connections.join_next().await.is_some() {}
        });
        Upstream {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Close the listener and let open connections finish, like a container being stopped.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy under test, running in this process.
struct TestProxy {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), cutover_proxy::ProxyError>>,
    admin: AdminClient,
}

impl TestProxy {
    async fn start(state_dir: &Path) -> TestProxy {
        let config = ProxyConfig {
            state_dir: state_dir.to_owned(),
        };
        let admin = AdminClient::new(config.socket_path());
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_until(config, async move {
            let _ = stop_rx.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin.health().await.is_err() {
            assert!(!task.is_finished(), "the proxy stopped during startup");
            assert!(Instant::now() < deadline, "the proxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TestProxy {
            stop: Some(stop),
            task,
            admin,
        }
    }

    /// Stop like SIGTERM: graceful.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    /// Stop like SIGKILL: everything dropped at once.
    async fn kill(self) {
        self.task.abort();
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[path = "support/ports.rs"]
mod ports;

/// A listen address for a route: the proxy binds it itself and cannot report a port the
/// kernel picked, so the port is reserved (see `support/ports.rs`).
fn listen_addr() -> String {
    format!("127.0.0.1:{}", ports::reserve_port())
}

/// An address that refuses connections: a socket bound to a port the kernel picked and not
/// listening. Keep the socket while the address is in use, so no one else can take the port.
fn refusing_addr() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    (socket, addr)
}

/// Poll `cond` every 5 ms until it holds; panic naming `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn route(env: &str, listen: &str, backends: &[(&str, u32, Vec<String>)]) -> Route {
    Route {
        env: env.to_owned(),
        listen: listen.to_owned(),
        backends: backends
            .iter()
            .map(|(release, weight, addrs)| Backend {
                release: (*release).to_owned(),
                weight: *weight,
                addrs: addrs.clone(),
            })
            .collect(),
        response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GET `url`: status, release header, body.
async fn get(client: &HttpClient, url: &str) -> Result<(StatusCode, String, String), String> {
    let response = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let release = response
        .headers()
        .get(RELEASE_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, release, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_requests_round_robin_and_names_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = Upstream::start("a1").await;
    let a2 = Upstream::start("a2").await;
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    let previous = proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[("rel-a", 100, vec![a1.addr(), a2.addr()])],
        ))
        .await
        .unwrap();
    assert_eq!(previous, None);

    let client = http_client();
    let url = format!("http://{listen}/hello");
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let (status, release, body) = get(&client, &url).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(release, "rel-a");
        bodies.push(body);
    }
    bodies.sort();
    assert_eq!(bodies, vec!["a1", "a1", "a2", "a2"]);

    // Large answers are streamed through, request bodies are forwarded.
    let (status, release, body) = get(&client, &format!("http://{listen}/big")).await.unwrap();
    assert_eq!(
        (status, release.as_str(), body.len()),
        (StatusCode::OK, "rel-a", BIG_BODY)
    );
    let posted = Request::post(format!("http://{listen}/echo"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let response = Client::builder(TokioExecutor::new())
        .build(HttpConnector::new())
        .request(posted)
        .await
        .unwrap();
    assert_eq!(response.headers()[RELEASE_HEADER], "rel-a");
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&echoed[..], b"payload");

    let stats = proxy.admin.stats().await.unwrap();
    let row = stats.iter().find(|s| s.release == "rel-a").unwrap();
    assert_eq!((row.requests, row.errors, row.in_flight), (6, 0, 0));
    let health = proxy.admin.health().await.unwrap();
    assert_eq!((health.pid, health.routes), (std::process::id(), 1));
    assert!(dir.path().join(PID_FILE).exists());

    // A route whose only backend has no address answers 503 naming no release.
    proxy
        .admin
        .set_route(&route("production", &listen, &[("rel-empty", 100, vec![])]))
        .await
        .unwrap();
    let (status, release, body) = get(&client, &url).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(release, "none");
    assert!(body.contains("no release"), "{body}");

    proxy.stop().await;
    assert!(!dir.path().join(SOCKET_FILE).exists());
    a1.shut_down().await;
    a2.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_then_retire_the_old_release_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[("blue", 100, vec![blue.addr()])],
        ))
        .await
        .unwrap();

    const CLIENTS: usize = 4;
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    // Successful responses per client.
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let mut clients = JoinSet::new();
    for n in 0..CLIENTS {
        let done = done.clone();
        let failures = failures.clone();
        let answered = answered.clone();
        let url = format!("http://{listen}/");
        clients.spawn(async move {
            let client = http_client();
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match get(&client, &url).await {
                    Ok((StatusCode::OK, release, _)) => {
                        answered[n].fetch_add(1, Ordering::Relaxed);
                        if seen.last() != Some(&release) {
                            seen.push(release);
                        }
                    }
                    Ok((status, release, body)) => {
                        eprintln!("failed request: {status} {release} {body}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        eprintln!("failed request: {err}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            seen
        });
    }

    // Every client answered by blue a good number of times, then the swap.
    let counts = || {
        answered
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    let each_answered_since = |before: &[u64], n: u64| {
        let now = counts();
        now.iter()
            .zip(before)
            .all(|(now, before)| now - before >= n)
    };
    let start = vec![0; CLIENTS];
    wait_until(
        "every client answered by blue",
        Duration::from_secs(10),
        || each_answered_since(&start, 25),
    )
    .await;
    let previous = proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[("green", 100, vec![green.addr()])],
        ))
        .await
        .unwrap();
    assert_eq!(previous.unwrap().backends[0].release, "blue");
    let left = proxy
        .admin
        .drain(&listen, "blue", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(left, 0);
    blue.shut_down().await;
    // Blue is gone: whatever each client is answered from now on comes from green.
    let retired = counts();
    wait_until(
        "every client answered by green",
        Duration::from_secs(10),
        || each_answered_since(&retired, 25),
    )
    .await;
    done.store(true, Ordering::Relaxed);

    while let Some(seen) = clients.join_next().await {
        // Each client saw blue, then green, and never blue again.
        assert_eq!(seen.unwrap(), vec!["blue".to_owned(), "green".to_owned()]);
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let stats = proxy.admin.stats().await.unwrap();
    assert!(stats.iter().all(|s| s.errors == 0), "{stats:?}");
    let served: u64 = stats.iter().map(|s| s.requests).sum();
    assert!(served >= 200, "only {served} requests served");
    proxy.stop().await;
    green.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_is_retried_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let alive = Upstream::start("alive").await;
    let (_refusing, dead) = refusing_addr();
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[("rel", 100, vec![dead.clone(), alive.addr()])],
        ))
        .await
        .unwrap();
    let client = http_client();
    for _ in 0..6 {
        let (status, release, body) = get(&client, &format!("http://{listen}/")).await.unwrap();
        assert_eq!(
            (status, release.as_str(), body.as_str()),
            (StatusCode::OK, "rel", "alive")
        );
    }
    // Across releases too: a canary whose only address is gone falls back to the other.
    proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[
                ("canary", 50, vec![dead]),
                ("stable", 50, vec![alive.addr()]),
            ],
        ))
        .await
        .unwrap();
    for _ in 0..6 {
        let (status, release, _) = get(&client, &format!("http://{listen}/")).await.unwrap();
        assert_eq!((status, release.as_str()), (StatusCode::OK, "stable"));
    }
    proxy.stop().await;
    alive.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_goes_elsewhere_when_its_upstream_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let alive = Upstream::start("alive").await;
    let (_refusing, dead) = refusing_addr();
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    for round in 0..3 {
        // A fresh route starts its round robin at the first address: the refusing one.
        let release = format!("rel-{round}");
        proxy
            .admin
            .set_route(&route(
                "production",
                &listen,
                &[(release.as_str(), 100, vec![dead.clone(), alive.addr()])],
            ))
            .await
            .unwrap();
        let payload: Bytes = format!("payload {round} ")
            .repeat(8 * 1024)
            .into_bytes()
            .into();
        let request = Request::post(format!("http://{listen}/echo"))
            .body(Full::new(payload.clone()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(RELEASE_HEADER).unwrap(),
            release.as_str()
        );
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed.len(), payload.len());
        assert!(echoed == payload, "the body arrived changed");
    }
    proxy.stop().await;
    alive.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_serves_the_saved_routes() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("up").await;
    let listen = listen_addr();
    let wanted = route("production", &listen, &[("rel-1", 100, vec![up.addr()])]);

    let proxy = TestProxy::start(dir.path()).await;
    proxy.admin.set_route(&wanted).await.unwrap();
    proxy.kill().await;

    let proxy = TestProxy::start(dir.path()).await;
    assert_eq!(proxy.admin.routes().await.unwrap(), vec![wanted]);
    let (status, release, _) = get(&http_client(), &format!("http://{listen}/"))
        .await
        .unwrap();
    assert_eq!((status, release.as_str()), (StatusCode::OK, "rel-1"));
    assert_eq!(
        proxy.admin.health().await.unwrap().unbound,
        Vec::<String>::new()
    );
    proxy.stop().await;
    up.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_slow_request_and_reports_what_is_left_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("slow").await;
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[("rel", 100, vec![up.addr()])],
        ))
        .await
        .unwrap();
    let url = format!("http://{listen}/slow");

    let wait_in_flight = || async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = proxy.admin.stats().await.unwrap();
            if stats.iter().any(|s| s.release == "rel" && s.in_flight == 1) {
                break;
            }
            assert!(Instant::now() < deadline, "the slow request never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };

    let slow = {
        let url = url.clone();
        tokio::spawn(async move { get(&http_client(), &url).await })
    };
    wait_in_flight().await;
    let started = Instant::now();
    let left = proxy
        .admin
        .drain(&listen, "rel", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "drain did not wait"
    );
    assert_eq!(slow.await.unwrap().unwrap().0, StatusCode::OK);

    let slow = tokio::spawn(async move { get(&http_client(), &url).await });
    wait_in_flight().await;
    let left = proxy
        .admin
        .drain(&listen, "rel", Duration::from_millis(30))
        .await
        .unwrap();
    assert_eq!(left, 1);
    assert_eq!(slow.await.unwrap().unwrap().0, StatusCode::OK);
    // An unknown release has nothing in flight.
    assert_eq!(
        proxy
            .admin
            .drain(&listen, "never-served", Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );
    proxy.stop().await;
    up.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_is_private_and_explains_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TestProxy::start(dir.path()).await;
    let socket = dir.path().join(SOCKET_FILE);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let body = "{not json";
    let request = format!(
        "PUT /routes/production HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body is not a valid route: "#),
        "{answer}"
    );

    // A route sent to the wrong env, and an address that cannot be bound, are refused.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap().to_string();
    let err = proxy
        .admin
        .set_route(&route("production", &held_addr, &[("rel", 100, vec![])]))
        .await
        .unwrap_err();
    match &err {
        AdminError::Rejected {
            status: 409,
            message,
        } => {
            assert!(
                message.contains(&format!("cannot listen on {held_addr}")),
                "{message}"
            )
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert!(proxy.admin.routes().await.unwrap().is_empty());

    // A second proxy on the same state dir refuses to start.
    let second = run_until(
        ProxyConfig {
            state_dir: dir.path().to_owned(),
        },
        async {},
    )
    .await;
    assert!(matches!(
        second,
        Err(cutover_proxy::ProxyError::AlreadyRunning { .. })
    ));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_or_removing_a_route_closes_its_old_address() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("up").await;
    let proxy = TestProxy::start(dir.path()).await;
    let first = listen_addr();
    let second = listen_addr();
    proxy
        .admin
        .set_route(&route("staging", &first, &[("rel", 100, vec![up.addr()])]))
        .await
        .unwrap();
    let client = http_client();
    assert!(get(&client, &format!("http://{first}/")).await.is_ok());

    proxy
        .admin
        .set_route(&route("staging", &second, &[("rel", 100, vec![up.addr()])]))
        .await
        .unwrap();
    assert!(get(&http_client(), &format!("http://{second}/"))
        .await
        .is_ok());
    assert!(tokio::net::TcpStream::connect(&first).await.is_err());

    let previous = proxy.admin.remove_route("staging").await.unwrap();
    assert_eq!(previous.unwrap().listen, second);
    assert!(tokio::net::TcpStream::connect(&second).await.is_err());
    assert_eq!(proxy.admin.remove_route("staging").await.unwrap(), None);
    assert!(proxy.admin.routes().await.unwrap().is_empty());
    proxy.stop().await;
    up.shut_down().await;
}

/// An upstream written by hand: each answer's head names hop-by-hop headers and its body
/// arrives in two writes, so the proxy reads a small body made of two frames.
async fn split_body_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\
                                    Connection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
                                    Keep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nhello";
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        if stream.write_all(b"world").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_pieces_arrives_whole_and_hop_by_hop_headers_stay_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, upstream_task) = split_body_upstream().await;
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    proxy
        .admin
        .set_route(&route(
            "production",
            &listen,
            &[("rel", 100, vec![upstream.to_string()])],
        ))
        .await
        .unwrap();
    let client = http_client();
    // Several requests: the pooled upstream connection is reused after each split body.
    for _ in 0..3 {
        let response = client
            .get(format!("http://{listen}/").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers.get(RELEASE_HEADER).unwrap(), "rel");
        assert_eq!(headers.get("x-kept").unwrap(), "yes");
        assert!(
            headers.get("x-hop").is_none(),
            "a header named in Connection leaked"
        );
        assert!(headers.get("keep-alive").is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"helloworld");
    }
    proxy.stop().await;
    upstream_task.abort();
}

/// An upstream that reads one request head, writes `answer` (possibly nothing, or a head
/// without all of its body) and then stalls; it reports each connection the proxy closed.
async fn stalling_upstream(
    answer: &'static [u8],
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 1024];
                let mut answered = false;
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                    if !answered && buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    (addr, closed_rx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_answer_in_time_gets_a_504_and_its_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let alive = Upstream::start("alive").await;
    let proxy = TestProxy::start(dir.path()).await;
    let listen = listen_addr();
    let timeout = Duration::from_millis(500);
    let client = http_client();
    // Silent after the request; then a head whose body stops short.
    let answers: [&'static [u8]; 2] = [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"];
    for (n, answer) in answers.into_iter().enumerate() {
        let (upstream, mut closed, task) = stalling_upstream(answer).await;
        let mut stalled = route(
            "production",
            &listen,
            &[(&format!("stalled-{n}"), 100, vec![upstream.to_string()])],
        );
        stalled.response_timeout = timeout;
        proxy.admin.set_route(&stalled).await.unwrap();
        let started = Instant::now();
        let (status, release, body) = get(&client, &format!("http://{listen}/")).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "answer {n}: {body}");
        assert_eq!(release, format!("stalled-{n}"));
        assert!(body.starts_with("gateway timeout"), "{body}");
        assert!(
            waited >= timeout && waited < timeout + Duration::from_millis(1000),
            "answer {n}: the 504 came after {waited:?}"
        );
        // The proxy gave up on that upstream connection instead of pooling it.
        tokio::time::timeout(Duration::from_secs(2), closed.recv())
            .await
            .expect("the proxy closes the stalled upstream connection")
            .unwrap();
        task.abort();
    }
    // An upstream that answers within the timeout is served as usual on the same address.
    let mut patient = route(
        "production",
        &listen,
        &[("alive-1", 100, vec![alive.addr()])],
    );
    patient.response_timeout = timeout;
    proxy.admin.set_route(&patient).await.unwrap();
    let (status, release, body) = get(&client, &format!("http://{listen}/slow"))
        .await
        .unwrap();
    assert_eq!(
        (status, release.as_str(), body.as_str()),
        (StatusCode::OK, "alive-1", "alive")
    );
    let stats = proxy.admin.stats().await.unwrap();
    let errors: u64 = stats
        .iter()
        .filter(|s| s.release.starts_with("stalled-"))
        .map(|s| s.errors)
        .sum();
    assert_eq!(errors, 2, "{stats:?}");
    proxy.stop().await;
    alive.shut_down().await;
}

/// A spec whose environments listen on the given addresses.
fn preflight_spec(envs: &[(&str, &str)]) -> cutover_model::Spec {
    cutover_model::Spec {
        app: "hello".to_string(),
        strategy: "blue-green".to_string(),
        base_dir: "/srv/hello".into(),
        build: cutover_model::BuildSpec::Cargo {
            manifest: "/srv/hello/Cargo.toml".into(),
            bin: "hello".to_string(),
            profile: "release".to_string(),
        },
        container: Default::default(),
        health: Default::default(),
        supply: Default::default(),
        environments: envs
            .iter()
            .map(|(env, listen)| {
                (
                    env.to_string(),
                    cutover_model::EnvironmentSpec::with_listen(*listen),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>(),
    }
}

/// Serve `env` on a free address (returned), retrying while another process grabs the
/// port first.
async fn serve_somewhere(
    traffic: &cutover_proxy::ProxyTraffic,
    env: &str,
) -> Result<String, cutover_model::ProviderError> {
    let mut last = None;
    for _ in 0..5 {
        // Bind port 0, read the port back, hand it to the proxy.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let listen = probe.local_addr().expect("local addr").to_string();
        drop(probe);
        let release = format!("{env}-1");
        let route = route(env, &listen, &[(&release, 100, vec!["127.0.0.1:9".into()])]);
        match cutover_model::Traffic::set_route(traffic, &route).await {
            Ok(_) => return Ok(listen),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("five attempts"))
}

#[tokio::test]
async fn preflight_passes_the_proxys_own_address_for_its_environment_only() {
    use cutover_model::Preflight as _;
    let dir = tempfile::tempdir().unwrap();
    let proxy = TestProxy::start(dir.path()).await;
    let traffic = cutover_proxy::ProxyTraffic::new(proxy.admin.clone());
    let listen = serve_somewhere(&traffic, "production")
        .await
        .expect("serve a route");

    // Ours, for the same environment: a redeploy is fine.
    let failures = traffic
        .check(&preflight_spec(&[("production", &listen)]), "production")
        .await;
    assert_eq!(failures, Vec::new());

    // Another environment on the same address is refused before anything is built.
    let failures = traffic
        .check(&preflight_spec(&[("staging", &listen)]), "staging")
        .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0].to_string(),
        format!("environments.staging.listen: {listen} is already served by the cutover proxy for environment production; choose another address")
    );

    // An address another process holds.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap().to_string();
    let failures = traffic
        .check(&preflight_spec(&[("staging", &taken)]), "staging")
        .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0].to_string(),
        format!("environments.staging.listen: {taken} is in use by another process; free it or choose another address")
    );

    proxy.stop().await;
}
