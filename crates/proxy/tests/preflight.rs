//! The listen-address preflight against the real proxy (in this process): an address the
//! proxy serves for the same environment passes, for another environment it fails, and an
//! address another process holds fails naming the spec field.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cutover_model::{
    Backend, BuildSpec, EnvironmentSpec, Preflight, ProviderError, Route, Spec, Traffic,
};
use cutover_proxy::{run_until, AdminClient, ProxyConfig, ProxyTraffic};
use tokio::sync::oneshot;

fn spec(envs: &[(&str, &str)]) -> Spec {
    Spec {
        app: "hello".to_string(),
        strategy: "blue-green".to_string(),
        base_dir: "/srv/hello".into(),
        build: BuildSpec::Cargo {
            manifest: "/srv/hello/Cargo.toml".into(),
            bin: "hello".to_string(),
            profile: "release".to_string(),
        },
        container: Default::default(),
        health: Default::default(),
        supply: Default::default(),
        environments: envs
            .iter()
            .map(|(env, listen)| (env.to_string(), EnvironmentSpec::with_listen(*listen)))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Serve `listen` for `env`, retrying while another process grabs the port first.
async fn serve(traffic: &ProxyTraffic, env: &str) -> Result<String, ProviderError> {
    let mut last = None;
    for _ in 0..5 {
        // Bind port 0, read the port back, hand it to the proxy.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let listen = probe.local_addr().expect("local addr").to_string();
        drop(probe);
        let route = Route {
            env: env.to_string(),
            listen: listen.clone(),
            backends: vec![Backend {
                release: format!("{env}-1"),
                addrs: vec!["127.0.0.1:9".to_string()],
                weight: 100,
            }],
            response_timeout: Duration::from_secs(5),
        };
        match traffic.set_route(&route).await {
            Ok(_) => return Ok(listen),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("five attempts"))
}

#[tokio::test]
async fn the_proxys_own_address_passes_for_its_environment_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig {
        state_dir: dir.path().to_owned(),
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
    let traffic = ProxyTraffic::new(admin);
    let listen = serve(&traffic, "production").await.expect("serve a route");

    // Ours, for the same environment: a redeploy is fine.
    let failures = traffic
        .check(&spec(&[("production", &listen)]), "production")
        .await;
    assert_eq!(failures, Vec::new());

    // Another environment on the same address is refused before anything is built.
    let failures = traffic
        .check(&spec(&[("staging", &listen)]), "staging")
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
        .check(&spec(&[("staging", &taken)]), "staging")
        .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0].to_string(),
        format!("environments.staging.listen: {taken} is in use by another process; free it or choose another address")
    );

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
