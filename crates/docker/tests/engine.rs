//! Tests against the real Docker Engine. Where it does not answer they fail when
//! `CI=true` and are skipped elsewhere, saying why ([`require_docker`]).
//!
//! Everything they create carries the label `cutover.test=cutover-docker` and the id of this
//! run (`cutover.test.run`, with the pid in it). Each test removes its own containers with a
//! guard (also on panic); the shared hello image and anything a crashed test left behind are
//! removed when the test binary exits; and each run first sweeps what runs whose process is
//! gone left behind.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use cutover_docker::DockerProvider;
use cutover_model::{
    labels, BuildSpec, Compute, ContainerSpec, ErrorClass, HealthProbe, ImageBuilder, ImageInfo,
    ImageSource, Instance, InstanceSpec, InstanceState, Probe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

const TEST_LABEL: &str = "cutover.test";
const TEST_VALUE: &str = "cutover-docker";
const RUN_LABEL: &str = "cutover.test.run";

/// `<pid>-<start nanos>`: unique per test binary run; the pid tells later runs whether the
/// owner is still alive.
fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}-{nanos}", std::process::id())
    })
}

fn test_labels(deployment: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TEST_LABEL.to_string(), TEST_VALUE.to_string()),
        (RUN_LABEL.to_string(), run_id().to_string()),
        (labels::DEPLOYMENT.to_string(), deployment.to_string()),
    ])
}

/// A unique, container-name-safe name for one test case.
fn unique(case: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "cutover-test-{}-{case}-{}",
        run_id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// For every test: `true` when the Docker Engine answers. When it does not: a panic on CI
/// (`CI=true`), else a line on stderr saying the test is skipped, and `false`.
async fn require_docker() -> bool {
    static MISSING: OnceCell<Option<String>> = OnceCell::const_new();
    let missing = MISSING
        .get_or_init(|| async { DockerProvider::connect().await.err().map(|e| e.to_string()) })
        .await;
    let Some(why) = missing else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test needs the Docker Engine and CI=true: {why}");
    }
    eprintln!("skipped: this test needs the Docker Engine: {why} (with CI=true this fails)");
    false
}

async fn provider() -> DockerProvider {
    DockerProvider::connect()
        .await
        .expect("these tests need a running docker engine")
        // Cargo builds write under the target directory, not the user's cache.
        .with_cargo_builds(cutover_docker::CargoBuilds {
            dir: builds_dir(),
            ..cutover_docker::CargoBuilds::default()
        })
}

/// Where this binary's cargo builds write (one directory per manifest inside).
fn builds_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("engine-builds")
}

/// Remove everything of this run (`Some(run)`) or of runs whose process is gone (`None`).
async fn sweep(only_run: Option<&str>) {
    let docker = bollard::Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker engine");
    let label = match only_run {
        Some(run) => format!("{RUN_LABEL}={run}"),
        None => format!("{TEST_LABEL}={TEST_VALUE}"),
    };
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    let owner_gone = |labels: Option<&HashMap<String, String>>| {
        let run = labels
            .and_then(|l| l.get(RUN_LABEL))
            .cloned()
            .unwrap_or_default();
        if only_run.is_some() {
            return true;
        }
        let pid = run.split('-').next().unwrap_or("");
        pid.is_empty() || !Path::new("/proc").join(pid).exists()
    };
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    for container in containers {
        if let Some(id) = container
            .id
            .as_deref()
            .filter(|_| owner_gone(container.labels.as_ref()))
        {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(id, Some(options)).await;
        }
    }
    // Environment networks of test apps (`unique` names them `cutover-test-<run>-…`).
    let managed = HashMap::from([(
        "label".to_string(),
        vec![format!("{}=true", labels::MANAGED)],
    )]);
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&managed)
                .build(),
        ))
        .await
        .unwrap_or_default();
    for network in networks {
        let app = network
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::APP))
            .cloned()
            .unwrap_or_default();
        let Some(rest) = app.strip_prefix("cutover-test-") else {
            continue;
        };
        let owned = match only_run {
            Some(run) => rest.starts_with(&format!("{run}-")),
            None => {
                let pid = rest.split('-').next().unwrap_or("");
                pid.is_empty() || !Path::new("/proc").join(pid).exists()
            }
        };
        if let Some(id) = network.id.as_deref().filter(|_| owned) {
            let _ = docker.remove_network(id).await;
        }
    }
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    for image in images {
        if owner_gone(Some(&image.labels)) {
            let options = RemoveImageOptionsBuilder::default().force(true).build();
            let _ = docker.remove_image(&image.id, Some(options), None).await;
        }
    }
}

/// Run `sweep` from a synchronous context (drop guards, exit handler).
fn sweep_blocking(only_run: Option<String>) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(sweep(only_run.as_deref()));
        }
    })
    .join();
}

extern "C" fn remove_this_runs_leftovers() {
    sweep_blocking(Some(run_id().to_string()));
}

extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

/// The hello image, built once per test binary through `BuildSpec::Cargo`.
async fn hello_image() -> &'static (ImageInfo, BuildSpec, BTreeMap<String, String>) {
    static IMAGE: OnceCell<(ImageInfo, BuildSpec, BTreeMap<String, String>)> =
        OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            sweep(None).await;
            // SAFETY: registers a plain function that only talks to the engine.
            unsafe {
                atexit(remove_this_runs_leftovers);
            }
            let source = BuildSpec::Cargo {
                manifest: repo_root().join("examples/hello/Cargo.toml"),
                bin: "hello".to_string(),
                profile: "release".to_string(),
            };
            let labels = test_labels("d-hello");
            let tag = format!("cutover-test/hello:{}", run_id());
            let started = Instant::now();
            let image = provider()
                .await
                .build(&tag, &source, &labels)
                .await
                .expect("build the hello image");
            eprintln!("hello image built in {:?}", started.elapsed());
            (image, source, labels)
        })
        .await
}

/// Removes the named containers when dropped, also when the test panics.
struct ContainerGuard(Vec<String>);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let docker = provider().await;
                for name in names {
                    let _ = docker.remove(&name).await;
                }
            });
        })
        .join();
    }
}

fn instance_spec(name: &str, app: &str, env: &[(&str, &str)]) -> InstanceSpec {
    let mut container = ContainerSpec {
        port: 8080,
        memory_bytes: 64 * 1024 * 1024,
        pids_limit: 64,
        cpus: 0.5,
        ..ContainerSpec::default()
    };
    for (k, v) in env {
        container.env.insert(k.to_string(), v.to_string());
    }
    let mut labels = test_labels("d-1");
    labels.insert(labels::APP.to_string(), app.to_string());
    labels.insert(labels::ENV.to_string(), "staging".to_string());
    labels.insert(labels::RELEASE.to_string(), "staging-1".to_string());
    labels.insert(labels::REPLICA.to_string(), "0".to_string());
    InstanceSpec {
        name: name.to_string(),
        app: app.to_string(),
        env: "staging".to_string(),
        release: "staging-1".to_string(),
        deployment_id: "d-1".to_string(),
        replica: 0,
        image: ImageSource::Step {
            step: "build".to_string(),
        },
        container,
        labels,
    }
}

/// Probe until the answer is not a refused connection (the app is still starting).
async fn probe_settled(docker: &DockerProvider, instance: &Instance, path: &str) -> Probe {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = docker.probe(instance, path, Duration::from_secs(1)).await;
        // Before the app listens, the engine's port forwarder accepts and then resets or
        // closes the connection.
        let starting = matches!(&probe, Probe::Unhealthy(why) if why.starts_with("connection refused")
            || why.starts_with("connection reset")
            || why.starts_with("connection closed"));
        if !starting || Instant::now() > deadline {
            return probe;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn cargo_builds_are_static_idempotent_and_exportable() {
    if !require_docker().await {
        return;
    }
    let (image, source, labels) = hello_image().await;
    assert!(image.id.starts_with("sha256:"), "{image:?}");
    let docker = provider().await;

    let started = Instant::now();
    let again = docker
        .build(&image.tag, source, labels)
        .await
        .expect("second build");
    eprintln!("repeated build answered in {:?}", started.elapsed());
    assert_eq!(&again, image);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a repeated build must not rebuild (took {:?})",
        started.elapsed()
    );
    assert_eq!(
        docker.inspect_image(&image.tag).await.expect("inspect"),
        Some(image.clone())
    );
    assert_eq!(
        docker
            .inspect_image("cutover-test/absent:nope")
            .await
            .expect("inspect"),
        None
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("hello.tar");
    docker.export_image(&image.id, &dest).await.expect("export");
    let file = std::fs::File::open(&dest).expect("exported file");
    let mut archive = tar::Archive::new(file);
    let names: Vec<String> = archive
        .entries()
        .expect("tar entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .to_string()
        })
        .collect();
    assert!(names.iter().any(|n| n == "manifest.json"), "{names:?}");
    assert!(!dir.path().join("hello.tar.partial").exists());
}

#[tokio::test]
async fn dockerfile_builds_use_the_context_args_and_labels() {
    if !require_docker().await {
        return;
    }
    let (hello, _, _) = hello_image().await;
    let docker = provider().await;
    let binary = std::fs::read_dir(builds_dir())
        .expect("the builds directory")
        .flatten()
        .map(|dir| {
            dir.path()
                .join("target/x86_64-unknown-linux-gnu/release/hello")
        })
        .find(|binary| binary.is_file())
        .expect("the hello image build left its binary in its build directory");

    let context = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&binary, context.path().join("hello")).expect("copy binary");
    std::fs::write(context.path().join("junk.log"), "not sent").expect("write");
    std::fs::write(context.path().join(".dockerignore"), "*.log\n").expect("write");
    std::fs::create_dir(context.path().join("docker")).expect("mkdir");
    std::fs::write(
        context.path().join("docker/Dockerfile"),
        "FROM scratch\nARG GREETING=none\nLABEL greeting=$GREETING\nCOPY hello /app\nUSER 65534\nENTRYPOINT [\"/app\"]\n",
    )
    .expect("write");
    let source = BuildSpec::Dockerfile {
        context: context.path().to_path_buf(),
        dockerfile: "docker/Dockerfile".to_string(),
        args: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
    };
    let tag = format!("cutover-test/ctx:{}", run_id());
    let image = docker
        .build(&tag, &source, &test_labels("d-ctx"))
        .await
        .expect("dockerfile build");
    assert!(image.id.starts_with("sha256:"));
    assert_ne!(image.id, hello.id);

    let raw = bollard::Docker::connect_with_local_defaults()
        .expect("client")
        .negotiate_version()
        .await
        .expect("engine")
        .inspect_image(&tag)
        .await
        .expect("inspect");
    let image_labels = raw.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(image_labels.get("greeting").map(String::as_str), Some("hi"));
    assert_eq!(
        image_labels.get(labels::MANAGED).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        image_labels.get(labels::DEPLOYMENT).map(String::as_str),
        Some("d-ctx")
    );

    // An ignored file is not in the context: copying it fails with the Engine's words.
    std::fs::write(
        context.path().join("docker/Dockerfile"),
        "FROM scratch\nCOPY junk.log /junk.log\n",
    )
    .expect("write");
    let err = docker
        .build(&format!("{tag}-ignored"), &source, &test_labels("d-ctx-2"))
        .await
        .expect_err("junk.log is ignored");
    eprintln!("ignored file: {}", err.message);
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("junk.log"), "{}", err.message);

    docker.remove_image(&tag).await.expect("remove image");
    assert_eq!(docker.inspect_image(&tag).await.expect("inspect"), None);
    docker
        .remove_image(&tag)
        .await
        .expect("removing twice is fine");
}

#[tokio::test]
async fn broken_dockerfiles_fail_permanently_with_the_engines_message() {
    if !require_docker().await {
        return;
    }
    let docker = provider().await;
    let context = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nFROBNICATE everything\n",
    )
    .expect("write");
    let source = BuildSpec::Dockerfile {
        context: context.path().to_path_buf(),
        dockerfile: "Dockerfile".to_string(),
        args: BTreeMap::new(),
    };
    let tag = format!("cutover-test/broken:{}", run_id());
    let err = docker
        .build(&tag, &source, &test_labels("d-broken"))
        .await
        .expect_err("a broken dockerfile does not build");
    eprintln!("broken dockerfile: {}", err.message);
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.to_lowercase().contains("frobnicate"),
        "the engine's message names the bad instruction: {}",
        err.message
    );
    assert!(err
        .message
        .starts_with(&format!("building image {tag} failed: ")));
    assert_eq!(docker.inspect_image(&tag).await.expect("inspect"), None);

    let missing = BuildSpec::Dockerfile {
        context: context.path().to_path_buf(),
        dockerfile: "../Dockerfile".to_string(),
        args: BTreeMap::new(),
    };
    let err = docker
        .build(&tag, &missing, &test_labels("d-broken"))
        .await
        .expect_err("dockerfiles outside the context are refused");
    assert_eq!(err.class, ErrorClass::Permanent);
}

#[tokio::test]
async fn provisioned_instances_are_hardened_healthy_idempotent_and_removable() {
    if !require_docker().await {
        return;
    }
    let (image, _, _) = hello_image().await;
    let docker = provider().await;
    let name = unique("web");
    let app = unique("app");
    let _guard = ContainerGuard(vec![name.clone()]);
    let spec = instance_spec(&name, &app, &[("VERSION", "vtest")]);

    let started = Instant::now();
    let instance = docker.provision(&spec, image).await.expect("provision");
    eprintln!("provisioned in {:?}", started.elapsed());
    assert_eq!(instance.name, name);
    assert_eq!(instance.state, InstanceState::Running);
    assert!(instance.addr.starts_with("127.0.0.1:"), "{instance:?}");
    assert_eq!(instance.image_id, image.id);
    assert_eq!(instance.deployment_id, "d-1");
    assert_eq!(instance.release, "staging-1");

    assert_eq!(
        probe_settled(&docker, &instance, "/healthz").await,
        Probe::Healthy
    );
    let started = Instant::now();
    for _ in 0..20 {
        let probe = docker
            .probe(&instance, "/healthz", Duration::from_secs(1))
            .await;
        assert_eq!(probe, Probe::Healthy);
    }
    eprintln!("one probe takes {:?} on average", started.elapsed() / 20);
    let response = http_get(&instance.addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("hello from vtest\n"), "{response}");

    let raw = bollard::Docker::connect_with_local_defaults()
        .expect("client")
        .negotiate_version()
        .await
        .expect("engine")
        .inspect_container(&name, None)
        .await
        .expect("inspect container");
    let config = raw.config.clone().expect("config");
    let host = raw.host_config.clone().expect("host config");
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(64));
    // The environment's own network, never the default bridge.
    let networks = raw
        .network_settings
        .clone()
        .and_then(|n| n.networks)
        .unwrap_or_default();
    assert_eq!(
        networks.keys().collect::<Vec<_>>(),
        vec![&format!("cutover-{app}-staging")]
    );
    assert_ne!(host.network_mode.as_deref(), Some("bridge"));
    let tmpfs = host.tmpfs.clone().unwrap_or_default();
    assert_eq!(
        tmpfs.get("/tmp").map(String::as_str),
        Some("rw,noexec,nosuid,size=16m")
    );
    let ports = raw
        .network_settings
        .and_then(|n| n.ports)
        .expect("published ports");
    let bindings = ports
        .get("8080/tcp")
        .cloned()
        .flatten()
        .expect("8080 published");
    assert!(!bindings.is_empty());
    for binding in &bindings {
        assert_eq!(
            binding.host_ip.as_deref(),
            Some("127.0.0.1"),
            "{bindings:?}"
        );
    }
    let env = config.env.unwrap_or_default();
    assert!(env.contains(&"PORT=8080".to_string()), "{env:?}");

    let again = docker
        .provision(&spec, image)
        .await
        .expect("provision again");
    assert_eq!(again.id, instance.id);
    let listed = docker.list(&app, Some("staging")).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, instance.id);
    assert_eq!(docker.list(&app, None).await.expect("list").len(), 1);
    assert!(docker
        .list(&app, Some("production"))
        .await
        .expect("list")
        .is_empty());

    let mut other = spec.clone();
    other.deployment_id = "d-2".to_string();
    other
        .labels
        .insert(labels::DEPLOYMENT.to_string(), "d-2".to_string());
    let err = docker
        .provision(&other, image)
        .await
        .expect_err("another deployment's container is not adopted");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&name) && err.message.contains("d-1"),
        "{}",
        err.message
    );

    let started = Instant::now();
    docker.remove(&name).await.expect("remove");
    eprintln!("removed in {:?}", started.elapsed());
    docker.remove(&name).await.expect("remove twice");
    assert_eq!(docker.inspect(&name).await.expect("inspect"), None);
    assert!(docker.list(&app, None).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_stopped_instance_is_started_again_by_provision() {
    if !require_docker().await {
        return;
    }
    let (image, _, _) = hello_image().await;
    let docker = provider().await;
    let name = unique("restart");
    let _guard = ContainerGuard(vec![name.clone()]);
    let spec = instance_spec(&name, &unique("app"), &[]);
    let first = docker.provision(&spec, image).await.expect("provision");
    bollard::Docker::connect_with_local_defaults()
        .expect("client")
        .negotiate_version()
        .await
        .expect("engine")
        .stop_container(
            &name,
            Some(
                bollard::query_parameters::StopContainerOptionsBuilder::default()
                    .t(1)
                    .build(),
            ),
        )
        .await
        .expect("stop");
    let stopped = docker
        .inspect(&name)
        .await
        .expect("inspect")
        .expect("exists");
    assert!(
        matches!(stopped.state, InstanceState::Exited { .. }),
        "{stopped:?}"
    );
    let again = docker
        .provision(&spec, image)
        .await
        .expect("provision again");
    assert_eq!(again.id, first.id);
    assert_eq!(again.state, InstanceState::Running);
    assert_eq!(
        probe_settled(&docker, &again, "/healthz").await,
        Probe::Healthy
    );
}

#[tokio::test]
async fn failing_health_is_reported_unhealthy() {
    if !require_docker().await {
        return;
    }
    let (image, _, _) = hello_image().await;
    let docker = provider().await;
    let name = unique("sick");
    let _guard = ContainerGuard(vec![name.clone()]);
    let spec = instance_spec(&name, &unique("app"), &[("FAIL_HEALTH", "1")]);
    let instance = docker.provision(&spec, image).await.expect("provision");
    assert_eq!(
        probe_settled(&docker, &instance, "/healthz").await,
        Probe::Unhealthy("GET /healthz returned 503".to_string())
    );
}

#[tokio::test]
async fn crash_loops_show_as_restarts_or_exits() {
    if !require_docker().await {
        return;
    }
    let (image, _, _) = hello_image().await;
    let docker = provider().await;
    let name = unique("crash");
    let _guard = ContainerGuard(vec![name.clone()]);
    let spec = instance_spec(&name, &unique("app"), &[("CRASH", "1")]);
    docker.provision(&spec, image).await.expect("provision");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let instance = docker
            .inspect(&name)
            .await
            .expect("inspect")
            .expect("exists");
        let crashing = instance.restart_count > 0
            || matches!(
                instance.state,
                InstanceState::Restarting | InstanceState::Exited { .. }
            );
        if crashing {
            let probe = docker
                .probe(&instance, "/healthz", Duration::from_millis(500))
                .await;
            assert!(matches!(probe, Probe::Unhealthy(_)), "{probe:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no restart seen: {instance:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn removing_unknown_or_foreign_containers() {
    if !require_docker().await {
        return;
    }
    let docker = provider().await;
    docker
        .remove(&unique("never-created"))
        .await
        .expect("removing a missing instance succeeds");
    assert_eq!(
        docker
            .inspect(&unique("never-created"))
            .await
            .expect("inspect"),
        None
    );
}

/// Diagnose `name` until `done` holds for the diagnosis, or fail after 20 s.
async fn diagnose_until(
    docker: &DockerProvider,
    name: &str,
    what: &str,
    done: impl Fn(&cutover_model::Diagnosis) -> bool,
) -> cutover_model::Diagnosis {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let instance = docker
            .inspect(name)
            .await
            .expect("inspect")
            .expect("the container exists");
        let diagnosis = docker
            .diagnose(&instance)
            .await
            .expect("docker diagnoses an existing container");
        if done(&diagnosis) {
            return diagnosis;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within 20s: {diagnosis:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_crashed_container_is_diagnosed_with_its_redacted_log_tail() {
    let (image, _, _) = hello_image().await;
    let docker = provider().await;
    let name = unique("diagnose");
    let _guard = ContainerGuard(vec![name.clone()]);
    let canary = format!("canary-{}", run_id());
    let token = format!("tok-{}-never-printed", run_id());
    let spec = instance_spec(
        &name,
        &unique("app"),
        &[
            ("CRASH", "1"),
            ("LOG_LINES", "25"),
            ("SAY", &canary),
            ("API_TOKEN", &token),
        ],
    );
    docker.provision(&spec, image).await.expect("provision");
    let diagnosis = diagnose_until(&docker, &name, "an exit with code 3", |d| {
        d.exit_code == Some(3)
            && d.logs.last().map(String::as_str) == Some("hello: CRASH=1, exiting")
    })
    .await;
    assert!(
        matches!(
            diagnosis.state.as_str(),
            "exited" | "restarting" | "running"
        ),
        "{diagnosis:?}"
    );
    assert!(!diagnosis.oom_killed, "{diagnosis:?}");
    assert_eq!(
        diagnosis.logs.len(),
        cutover_model::DIAGNOSIS_LOG_LINES,
        "{diagnosis:?}"
    );
    let n = diagnosis.logs.len();
    assert_eq!(diagnosis.logs[n - 2], "hello: says [redacted]");
    assert_eq!(diagnosis.logs[n - 3], "hello: log line 25");
    let rendered = diagnosis.render();
    assert!(rendered.contains("exit code 3"), "{rendered}");
    assert!(
        !rendered.contains(&canary),
        "the diagnosis leaks an env value"
    );
    assert!(!format!("{diagnosis:?}").contains(&canary));
    assert!(!rendered.contains(&token));
}

#[tokio::test]
async fn a_container_its_memory_limit_kills_is_diagnosed_as_oom_killed() {
    let (image, _, _) = hello_image().await;
    let docker = provider().await;
    let name = unique("oom");
    let _guard = ContainerGuard(vec![name.clone()]);
    // 64 MiB limit (instance_spec), swap off: touching 200 MiB gets the process killed.
    let spec = instance_spec(&name, &unique("app"), &[("ALLOC_MB", "200")]);
    docker.provision(&spec, image).await.expect("provision");
    // The engine restarts it; between two runs it shows as exited with the kill's code.
    let diagnosis = diagnose_until(&docker, &name, "an OOM kill", |d| {
        d.oom_killed && d.exit_code.is_some()
    })
    .await;
    assert_eq!(diagnosis.exit_code, Some(137), "{diagnosis:?}");
    assert!(
        diagnosis
            .render()
            .contains("killed for exceeding its memory limit"),
        "{}",
        diagnosis.render()
    );
}

#[tokio::test]
async fn a_missing_container_has_no_diagnosis() {
    let docker = provider().await;
    let instance = Instance {
        name: unique("never-created"),
        id: String::new(),
        app: "app".to_string(),
        env: "staging".to_string(),
        release: "staging-1".to_string(),
        deployment_id: "d-1".to_string(),
        replica: 0,
        addr: String::new(),
        image_id: String::new(),
        state: InstanceState::Running,
        restart_count: 0,
    };
    assert_eq!(docker.diagnose(&instance).await, None);
}

/// A static, std-only probe: `GET /connect?addr=<ip:port>` answers `connected` or
/// `failed: <why>` after trying a TCP connection from inside its container.
const NETPROBE_MANIFEST: &str =
    "[package]\nname = \"netprobe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n";
const NETPROBE_MAIN: &str = r#"
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let body = match path.strip_prefix("/connect?addr=") {
                Some(addr) => match addr.parse::<SocketAddr>() {
                    Ok(addr) => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(_) => "connected".to_string(),
                        Err(e) => format!("failed: {e}"),
                    },
                    Err(e) => format!("bad address: {e}"),
                },
                None => "ok".to_string(),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                body.len(),
                body
            );
        });
    }
}
"#;

/// Removes the named networks when dropped (after the containers' guard).
struct NetworkGuard(Vec<String>);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            for name in names {
                let _ = std::process::Command::new("docker")
                    .args(["network", "rm", &name])
                    .output();
            }
        })
        .join();
    }
}

fn in_env(mut spec: InstanceSpec, env: &str) -> InstanceSpec {
    spec.env = env.to_string();
    spec.release = format!("{env}-1");
    spec.labels.insert(labels::ENV.to_string(), env.to_string());
    spec.labels
        .insert(labels::RELEASE.to_string(), format!("{env}-1"));
    spec
}

/// The container's address on its (only) network, and that network's name.
async fn private_addr(name: &str) -> (String, String) {
    let raw = bollard::Docker::connect_with_local_defaults()
        .expect("client")
        .negotiate_version()
        .await
        .expect("engine")
        .inspect_container(name, None)
        .await
        .expect("inspect");
    let networks = raw
        .network_settings
        .and_then(|n| n.networks)
        .expect("networks");
    assert_eq!(networks.len(), 1, "one network per container: {networks:?}");
    let (network, endpoint) = networks.into_iter().next().expect("a network");
    let ip = endpoint.ip_address.filter(|ip| !ip.is_empty()).expect("ip");
    (format!("{ip}:8080"), network)
}

/// What the probe in `from` says about a TCP connection to `to`.
async fn connect_from(from: &Instance, to: &str) -> String {
    let response = http_get(&from.addr, &format!("/connect?addr={to}")).await;
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn environments_cannot_reach_each_others_containers() {
    if !require_docker().await {
        return;
    }
    hello_image().await; // sweeps leftovers and registers the exit cleanup
    let docker = provider().await;
    let source_dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(source_dir.path().join("src")).expect("mkdir");
    std::fs::write(source_dir.path().join("Cargo.toml"), NETPROBE_MANIFEST).expect("write");
    std::fs::write(source_dir.path().join("src/main.rs"), NETPROBE_MAIN).expect("write");
    let source = BuildSpec::Cargo {
        manifest: source_dir.path().join("Cargo.toml"),
        bin: "netprobe".to_string(),
        profile: "release".to_string(),
    };
    let tag = format!("cutover-test/netprobe:{}", run_id());
    let image = docker
        .build(&tag, &source, &test_labels("d-netprobe"))
        .await
        .expect("build the probe image");

    let app = unique("app");
    let production = unique("prod");
    let production_2 = unique("prod2");
    let staging = unique("stage");
    let _networks = NetworkGuard(vec![
        format!("cutover-{app}-production"),
        format!("cutover-{app}-staging"),
    ]);
    let _guard = ContainerGuard(vec![
        production.clone(),
        production_2.clone(),
        staging.clone(),
    ]);
    let prod = docker
        .provision(
            &in_env(instance_spec(&production, &app, &[]), "production"),
            &image,
        )
        .await
        .expect("provision production");
    let prod_2 = docker
        .provision(
            &in_env(instance_spec(&production_2, &app, &[]), "production"),
            &image,
        )
        .await
        .expect("provision a second production instance");
    let stage = docker
        .provision(
            &in_env(instance_spec(&staging, &app, &[]), "staging"),
            &image,
        )
        .await
        .expect("provision staging");
    for instance in [&prod, &prod_2, &stage] {
        assert_eq!(
            probe_settled(&docker, instance, "/").await,
            Probe::Healthy,
            "{}",
            instance.name
        );
    }

    let (prod_addr, prod_network) = private_addr(&production).await;
    let (prod_2_addr, prod_2_network) = private_addr(&production_2).await;
    let (_, stage_network) = private_addr(&staging).await;
    assert_eq!(prod_network, format!("cutover-{app}-production"));
    assert_eq!(prod_2_network, prod_network);
    assert_eq!(stage_network, format!("cutover-{app}-staging"));

    // The probe works: a container reaches its own private address.
    assert_eq!(connect_from(&prod_2, &prod_2_addr).await, "connected");
    // The attack: staging connects straight to production's private address, past the
    // proxy. Refused.
    let attack = connect_from(&stage, &prod_addr).await;
    eprintln!("staging -> production {prod_addr}: {attack}");
    assert!(attack.starts_with("failed: "), "{attack}");
    // With inter-container communication off, instances of one environment do not reach
    // each other either: everything goes through the proxy.
    let sibling = connect_from(&prod_2, &prod_addr).await;
    eprintln!("production -> production {prod_addr}: {sibling}");
    assert!(sibling.starts_with("failed: "), "{sibling}");
    // The host (and so the proxy) still reaches every instance on its published port.
    assert!(http_get(&prod.addr, "/").await.ends_with("ok"));

    drop(_guard);
    drop(_networks);
    docker.remove_image(&tag).await.expect("remove image");
}

#[tokio::test]
async fn users_mapped_to_root_in_the_image_are_refused_before_start() {
    if !require_docker().await {
        return;
    }
    let (hello, _, _) = hello_image().await;
    let docker = provider().await;
    let context = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        context.path().join("passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\ntoor:x:0:0:backdoor:/root:/sbin/nologin\napp:x:1000:1000::/:/sbin/nologin\nwheel:x:1001:0::/:/sbin/nologin\n",
    )
    .expect("write");
    std::fs::write(
        context.path().join("group"),
        "root:x:0:\napp:x:1000:\nadmins:x:0:\n",
    )
    .expect("write");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {}\nCOPY passwd /etc/passwd\nCOPY group /etc/group\n",
            hello.tag
        ),
    )
    .expect("write");
    let tag = format!("cutover-test/users:{}", run_id());
    let image = docker
        .build(
            &tag,
            &BuildSpec::Dockerfile {
                context: context.path().to_path_buf(),
                dockerfile: "Dockerfile".to_string(),
                args: BTreeMap::new(),
            },
            &test_labels("d-users"),
        )
        .await
        .expect("build the image with users");
    let app = unique("app");
    let _networks = NetworkGuard(vec![format!("cutover-{app}-staging")]);

    for (user, expected) in [
        (
            "toor",
            "/etc/passwd:2: toor:x:0:0:backdoor:/root:/sbin/nologin maps it to uid 0",
        ),
        (
            "wheel",
            "/etc/passwd:4: wheel:x:1001:0::/:/sbin/nologin gives it gid 0",
        ),
        (
            "app:admins",
            "/etc/group:3: admins:x:0: maps group \"admins\" to gid 0",
        ),
        (
            "ghost",
            "user \"ghost\" does not exist in the image's /etc/passwd",
        ),
        ("4242", "would run with gid 0"),
    ] {
        let name = unique("root");
        let _guard = ContainerGuard(vec![name.clone()]);
        let mut spec = instance_spec(&name, &app, &[]);
        spec.container.user = user.to_string();
        let err = docker
            .provision(&spec, &image)
            .await
            .expect_err("a user mapped to root is refused");
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        assert!(err.message.contains(expected), "{user}: {}", err.message);
        assert_eq!(
            docker.inspect(&name).await.expect("inspect"),
            None,
            "nothing is left of a refused instance"
        );
    }

    let name = unique("app");
    let _guard = ContainerGuard(vec![name.clone()]);
    let mut spec = instance_spec(&name, &app, &[]);
    spec.container.user = "app".to_string();
    let instance = docker
        .provision(&spec, &image)
        .await
        .expect("an unprivileged name is fine");
    assert_eq!(
        probe_settled(&docker, &instance, "/healthz").await,
        Probe::Healthy
    );
    drop(_guard);
    docker.remove_image(&tag).await.expect("remove image");
}

/// Values by mount name, as the control plane's store would hand them out.
struct FixedSecrets(BTreeMap<String, String>);

#[async_trait::async_trait]
impl cutover_model::SecretSource for FixedSecrets {
    async fn resolve(
        &self,
        _instance: &InstanceSpec,
        mount: &str,
        _pin: &cutover_model::SecretPin,
    ) -> Result<secrecy::SecretSlice<u8>, cutover_model::ProviderError> {
        let value = self.0.get(mount).expect("a value for every mount");
        Ok(secrecy::SecretSlice::from(value.as_bytes().to_vec()))
    }
}

#[tokio::test]
async fn secrets_are_read_only_files_and_only_as_env_reaches_the_environment() {
    if !require_docker().await {
        return;
    }
    let (image, _, _) = hello_image().await;
    let shm = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) if cutover_docker::is_tmpfs(dir.path()).unwrap_or(false) => dir,
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "/dev/shm is not a tmpfs on CI"
            );
            return;
        }
    };
    let file_value = format!("FILE-CANARY-{}", run_id());
    let env_value = format!("ENV-CANARY-{}", run_id());
    let values = BTreeMap::from([
        ("app-secret".to_string(), file_value.clone()),
        ("API_KEY".to_string(), env_value.clone()),
    ]);
    let files =
        cutover_docker::SecretFiles::new(Arc::new(FixedSecrets(values)), shm.path().join("s"))
            .expect("a tmpfs directory");
    let docker = provider().await.with_secret_files(files.clone());
    let name = unique("secret");
    let app = unique("app");
    let _guard = ContainerGuard(vec![name.clone()]);
    let mut spec = instance_spec(&name, &app, &[]);
    for (mount, as_env) in [("app-secret", false), ("API_KEY", true)] {
        spec.container.secrets.insert(
            mount.to_string(),
            cutover_model::SecretMount {
                source: format!("secret://{mount}"),
                path: format!("/run/secrets/{mount}"),
                as_env,
                pin: Some(cutover_model::SecretPin {
                    name: mount.to_string(),
                    version: 1,
                }),
            },
        );
    }

    // Without a place for secret files, a spec with secrets is refused.
    let bare = provider().await;
    let err = bare.provision(&spec, image).await.expect_err("refused");
    assert_eq!(err.class, ErrorClass::Permanent, "{err}");
    assert!(err.message.contains("has secrets"), "{err}");

    let instance = docker.provision(&spec, image).await.expect("provision");
    assert_eq!(
        probe_settled(&docker, &instance, "/healthz").await,
        Probe::Healthy
    );
    let response = http_get(&instance.addr, "/secret-digest").await;
    assert!(
        response.ends_with(&format!(
            "{}\n",
            cutover_model::sha256_digest(file_value.as_bytes())
        )),
        "{response}"
    );

    let raw = bollard::Docker::connect_with_local_defaults()
        .expect("client")
        .negotiate_version()
        .await
        .expect("engine")
        .inspect_container(&name, None)
        .await
        .expect("inspect container");
    let shown = serde_json::to_string(&raw).unwrap();
    assert!(
        !shown.contains(&file_value),
        "docker inspect shows the file's value"
    );
    assert!(
        shown.contains(&format!("API_KEY={env_value}")),
        "as_env is the one way into the environment (and inspect shows it)"
    );
    let binds = raw.host_config.unwrap().binds.unwrap();
    assert!(
        binds
            .iter()
            .any(|b| b.ends_with(":/run/secrets/app-secret:ro")),
        "{binds:?}"
    );
    let dir = files.dir_of(&name);
    assert!(dir.join("app-secret").is_file());

    // At start the control plane sweeps the files of containers that no longer exist.
    let gone = unique("gone");
    std::fs::create_dir_all(files.dir_of(&gone)).unwrap();
    std::fs::write(files.dir_of(&gone).join("app-secret"), "left over").unwrap();
    let swept = docker.sweep_secret_files().await.expect("sweep");
    assert_eq!(swept, vec![gone.clone()]);
    assert!(!files.dir_of(&gone).exists());
    assert!(
        dir.join("app-secret").is_file(),
        "a live container keeps its files"
    );

    docker.remove(&name).await.expect("remove");
    assert!(!dir.exists(), "the secret files go with the container");
}

#[tokio::test]
async fn gc_lists_an_apps_images_and_never_removes_one_a_container_uses() {
    if !require_docker().await {
        return;
    }
    let (hello, _, _) = hello_image().await;
    let docker = provider().await;
    let app = unique("gc-app");
    let context = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {}\nLABEL gc-case=\"{app}\"\n", hello.tag),
    )
    .expect("write");
    let source = BuildSpec::Dockerfile {
        context: context.path().to_path_buf(),
        dockerfile: "Dockerfile".to_string(),
        args: BTreeMap::new(),
    };
    let mut labels = test_labels("d-gc");
    labels.insert(labels::APP.to_string(), app.clone());
    let tag = format!("cutover-test/gc:{}", run_id());
    let image = docker.build(&tag, &source, &labels).await.expect("build");

    let listed = docker.list_images(&app).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, image.id);
    assert_eq!(listed[0].tags, std::slice::from_ref(&tag));
    assert!(listed[0].size_bytes > 0);
    assert!(docker
        .list_images(&unique("other-app"))
        .await
        .expect("list")
        .is_empty());

    // A container of the image, running, then stopped: the image stays.
    let name = unique("gc-user");
    let _guard = ContainerGuard(vec![name.clone()]);
    let spec = instance_spec(&name, &app, &[]);
    docker.provision(&spec, &image).await.expect("provision");
    let err = ImageBuilder::remove_image(&docker, &image.id)
        .await
        .expect_err("a running container uses it");
    assert!(err.message.contains(&name), "{}", err.message);
    assert!(docker
        .inspect_image(&image.id)
        .await
        .expect("inspect")
        .is_some());
    bollard::Docker::connect_with_local_defaults()
        .expect("client")
        .stop_container(
            &name,
            Some(
                bollard::query_parameters::StopContainerOptionsBuilder::default()
                    .t(1)
                    .build(),
            ),
        )
        .await
        .expect("stop");
    assert!(ImageBuilder::remove_image(&docker, &image.id)
        .await
        .is_err());
    assert!(docker.inspect_image(&tag).await.expect("inspect").is_some());

    // Without containers it goes, with its tag; removing it again is fine.
    docker.remove(&name).await.expect("remove container");
    ImageBuilder::remove_image(&docker, &image.id)
        .await
        .expect("remove image");
    assert_eq!(
        docker.inspect_image(&image.id).await.expect("inspect"),
        None
    );
    assert_eq!(docker.inspect_image(&tag).await.expect("inspect"), None);
    assert!(docker.list_images(&app).await.expect("list").is_empty());
    ImageBuilder::remove_image(&docker, &image.id)
        .await
        .expect("removing a missing image is fine");
    assert!(
        docker
            .inspect_image(&hello.tag)
            .await
            .expect("inspect")
            .is_some(),
        "its base stays"
    );
}
