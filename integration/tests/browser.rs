//! The web UI in headless Chromium: log in as an approver, watch a deployment progress live
//! (a step turns succeeded without a reload), approve it at its gate, see it finish.
//! Screenshots at a laptop and a phone width go to `target/ui-screenshots/` (a CI artifact).
//!
//! The control plane runs in this process on the fake providers (slowed down so progress is
//! visible), serving `http_app` on a free 127.0.0.1 port. Fails when chromium or
//! chromedriver is missing and `CI=true`; elsewhere it skips, saying why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use cutover_executor::fake::{self, FakeProviders};
use cutover_executor::ExecutorConfig;
use cutover_integration::browser::Browser;
use cutover_integration::require_chromium;
use cutover_model::{
    ApprovalSpec, BuildSpec, HealthProbe, ImageBuilder, ImageInfo, Instance, Probe, ProviderError,
};
use cutover_server::auth::{self, Grant, Role};
use cutover_server::ControlPlane;
use cutover_store::{DeploymentRecord, Lease, Store};

const LAPTOP: (u32, u32) = (1366, 900);
const PHONE: (u32, u32) = (390, 844);
const WAIT: Duration = Duration::from_secs(30);

/// The fake image builder, taking `delay` per build.
struct SlowBuilder {
    inner: FakeProviders,
    delay: Duration,
}

#[async_trait]
impl ImageBuilder for SlowBuilder {
    async fn build(
        &self,
        tag: &str,
        source: &BuildSpec,
        labels: &BTreeMap<String, String>,
    ) -> Result<ImageInfo, ProviderError> {
        tokio::time::sleep(self.delay).await;
        self.inner.build(tag, source, labels).await
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, ProviderError> {
        self.inner.inspect_image(reference).await
    }
}

/// The fake health probe, taking `delay` per probe.
struct SlowProbe {
    inner: FakeProviders,
    delay: Duration,
}

#[async_trait]
impl HealthProbe for SlowProbe {
    async fn probe(&self, instance: &Instance, path: &str, timeout: Duration) -> Probe {
        tokio::time::sleep(self.delay).await;
        self.inner.probe(instance, path, timeout).await
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cutover_integration::repo_root().join("target"));
    target.join("ui-screenshots")
}

/// A control plane on the fake providers serving the HTTP app on 127.0.0.1.
struct Server {
    cp: Arc<ControlPlane>,
    base: String,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    fn start() -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fakes = FakeProviders::new();
        let mut providers = fakes.providers();
        providers.images = Arc::new(SlowBuilder {
            inner: fakes.clone(),
            delay: Duration::from_millis(2500),
        });
        providers.health = Arc::new(SlowProbe {
            inner: fakes.clone(),
            delay: Duration::from_millis(300),
        });
        let cp = ControlPlane::new(
            Store::temporary().expect("temporary store"),
            providers,
            ExecutorConfig::default(),
        );
        auth::add_user(
            &cp.store,
            "test",
            "alice",
            vec![Grant {
                role: Role::Approver,
                env: Some("production".to_string()),
            }],
            "correct horse battery",
        )
        .expect("add user");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let app = cutover_server::router(cp.clone());
        runtime.spawn(async move {
            let _ = axum_serve(listener, app, stopped).await;
        });
        Server {
            cp,
            base: format!("http://{addr}"),
            runtime,
            stop: Some(stop),
        }
    }

    /// Save and run a deployment that waits at an approval gate, requested by `tester`.
    fn start_deployment(&self) -> String {
        let plan = fake::planned_deploy_with_approval(
            "production-1",
            "production",
            None,
            2,
            ApprovalSpec {
                required: 1,
                timeout: Duration::from_secs(2 * 3600),
            },
        );
        let store = &self.cp.store;
        store
            .next_deployment_seq(&plan.env)
            .expect("deployment number");
        store
            .acquire_lease(
                &plan.env,
                Lease {
                    deployment_id: plan.deployment_id.clone(),
                    holder: plan.requested_by.clone(),
                    acquired_at_ms: cutover_model::now_ms(),
                },
            )
            .expect("lease");
        store
            .save_plan(&plan, &DeploymentRecord::from_plan(&plan))
            .expect("save plan");
        let _guard = self.runtime.enter();
        self.cp.spawn_run(&plan.deployment_id);
        plan.deployment_id
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn axum_serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await
}

fn shot(browser: &Browser, name: &str) {
    let path = screenshots().join(format!("{name}.png"));
    browser
        .screenshot(&path)
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn approver_watches_a_deployment_live_and_approves_it() {
    if !require_chromium() {
        return;
    }
    let server = Server::start();
    let browser = Browser::start(LAPTOP.0, LAPTOP.1).expect("start headless chromium");
    let id = server.start_deployment();
    let page = format!("/deployments/{id}");

    // Log in with the form; the login page sends us on to the deployment.
    browser
        .goto(&format!("{}{page}", server.base))
        .expect("open the deployment page");
    browser
        .wait_until(
            "the login form",
            WAIT,
            "return !!document.getElementById('username');",
        )
        .expect("login page");
    shot(&browser, "login-laptop");
    browser.type_into("#username", "alice").expect("type user");
    browser
        .type_into("#password", "correct horse battery")
        .expect("type password");
    browser
        .click("form.card button[type=submit]")
        .expect("submit login");
    browser
        .wait_until(
            "the deployment page",
            WAIT,
            "return !!document.getElementById('deployment');",
        )
        .expect("deployment page after login");
    assert!(browser.url().unwrap().ends_with(&page));

    // Watch the build finish live: the page is not reloaded (a marker survives).
    browser
        .execute("window.__noReload = 42; return true;", json!([]))
        .expect("set marker");
    let build_class = "var n = document.querySelector('g[data-step=\"build\"]'); return n ? n.getAttribute('class') : null;";
    let before = browser
        .execute(build_class, json!([]))
        .expect("build class");
    assert_eq!(
        before,
        json!("node running"),
        "the build runs when the page opens"
    );
    shot(&browser, "running-laptop");
    browser
        .wait_until(
            "the build step to turn succeeded live",
            WAIT,
            "var n = document.querySelector('g[data-step=\"build\"]'); return n.getAttribute('class') === 'node succeeded' && window.__noReload === 42;",
        )
        .expect("live progress");
    let live = browser
        .execute(
            "return document.getElementById('deployment').dataset.live;",
            json!([]),
        )
        .expect("live counter");
    assert!(
        live.as_str().is_some(),
        "updates came over server-sent events"
    );

    // The gate: the page reloads itself to show the approval form.
    browser
        .wait_until(
            "the approval form",
            WAIT,
            "return !!document.getElementById('approve');",
        )
        .expect("approval form");
    let text = browser
        .execute(
            "return document.getElementById('approval').innerText;",
            json!([]),
        )
        .expect("approval text");
    let text = text.as_str().unwrap_or_default().to_string();
    let plan = server.cp.store.plan(&id).unwrap().unwrap();
    assert!(
        text.contains(&plan.digest),
        "the gate names the plan digest"
    );
    assert!(text.contains("0 of 1 needed"), "{text}");
    assert!(text.contains("tester"), "the gate names who started it");
    // What approving changes: the approval view, with the digest the form sends.
    for shown in [
        "What changes",
        "First release of production",
        "Scan verdict",
        "Provenance",
        "fake-key-1",
    ] {
        assert!(
            text.contains(shown),
            "the approval view shows {shown}: {text}"
        );
    }
    shot(&browser, "approval-laptop");
    browser.resize(PHONE.0, PHONE.1).expect("phone width");
    shot(&browser, "approval-phone");
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            json!([]),
        )
        .expect("overflow check");
    assert_eq!(overflow, json!(true), "no sideways scrolling on a phone");
    browser.resize(LAPTOP.0, LAPTOP.1).expect("laptop width");

    // Approve with a comment and see it finish.
    browser
        .type_into("#comment", "checked the scan, ship it")
        .expect("comment");
    browser.click("#approve").expect("approve");
    browser
        .wait_until(
            "the deployment to finish",
            WAIT,
            "var s = document.getElementById('dep-status'); return !!s && s.textContent.trim() === 'succeeded';",
        )
        .expect("deployment finished");
    let classes = browser
        .execute(
            "return Array.from(document.querySelectorAll('g.node')).map(function (n) { return n.getAttribute('class'); });",
            json!([]),
        )
        .expect("node classes");
    assert!(
        classes
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == "node succeeded"),
        "every step succeeded: {classes}"
    );
    let approvals = server.cp.store.approvals(&id).unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].by, "alice");
    assert_eq!(approvals[0].comment, "checked the scan, ship it");
    assert!(
        approvals[0].view_digest.starts_with("sha256:"),
        "the approval names the view it was given on"
    );
    shot(&browser, "finished-laptop");
    browser.resize(PHONE.0, PHONE.1).expect("phone width");
    shot(&browser, "finished-phone");

    browser
        .goto(&format!("{}/", server.base))
        .expect("environments");
    browser
        .wait_until(
            "the environments page",
            WAIT,
            "return document.querySelectorAll('section.env').length === 1;",
        )
        .expect("environments page");
    shot(&browser, "environments-phone");
    browser.resize(LAPTOP.0, LAPTOP.1).expect("laptop width");
    browser
        .goto(&format!("{}/history", server.base))
        .expect("history");
    browser
        .wait_until(
            "the history page",
            WAIT,
            "return document.querySelectorAll('table.history tbody tr').length === 1;",
        )
        .expect("history page");
    shot(&browser, "history-laptop");
}
