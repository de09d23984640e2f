use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cutover_model::{
    json_digest, Action, ApprovalSpec, Backend, BuildSpec, ContainerSpec, DeploymentKind,
    EnvironmentSpec, GateSpec, HealthSpec, ImageInfo, ImageSource, Instance, InstanceState, Plan,
    Release, RestoreRoute, Route, Spec, StepKind, Strategy, SupplySpec,
};

use super::*;

fn spec() -> Spec {
    let mut container = ContainerSpec::default();
    container
        .env
        .insert("VERSION".to_string(), "v1".to_string());
    container.memory_bytes = 64 << 20;
    container.cpus = 0.5;
    container.pids_limit = 64;
    let mut environments = BTreeMap::new();
    environments.insert(
        "production".to_string(),
        EnvironmentSpec::with_listen("127.0.0.1:8080"),
    );
    Spec {
        app: "hello".to_string(),
        strategy: "blue-green".to_string(),
        base_dir: PathBuf::from("/srv/app"),
        build: BuildSpec::Cargo {
            manifest: PathBuf::from("/srv/app/examples/hello/Cargo.toml"),
            bin: "hello".to_string(),
            profile: "release".to_string(),
        },
        container,
        health: HealthSpec::default(),
        supply: SupplySpec::default(),
        environments,
    }
}

fn release(id: &str, version: &str) -> Release {
    let mut container = ContainerSpec::default();
    container
        .env
        .insert("VERSION".to_string(), version.to_string());
    Release {
        id: id.to_string(),
        app: "hello".to_string(),
        env: "production".to_string(),
        deployment_id: id.to_string(),
        image: ImageInfo {
            id: format!("sha256:{}", "ab".repeat(32)),
            tag: format!("cutover/hello:{id}"),
            warning: None,
        },
        plan_digest: format!("sha256:{}", "cd".repeat(32)),
        spec_digest: format!("sha256:{}", "ef".repeat(32)),
        created_by: "alice".to_string(),
        created_at_ms: 1_700_000_000_000,
        replicas: 2,
        container,
        health: HealthSpec::default(),
        instances: vec![
            format!("cutover-hello-{id}-0"),
            format!("cutover-hello-{id}-1"),
        ],
    }
}

fn running(release: &Release, replica: u32) -> Instance {
    Instance {
        name: format!("cutover-hello-{}-{replica}", release.id),
        id: format!("container-{replica}"),
        app: "hello".to_string(),
        env: "production".to_string(),
        release: release.id.clone(),
        deployment_id: release.deployment_id.clone(),
        replica,
        addr: format!("172.17.0.{}:8080", 10 + replica),
        image_id: release.image.id.clone(),
        state: InstanceState::Running,
        restart_count: 0,
    }
}

fn builtin(name: &str) -> Strategy {
    let text = builtin_strategy(name).expect("builtin strategy exists");
    parse_strategy(text, &format!("plans/{name}.toml")).expect("builtin strategy parses")
}

fn deploy_input<'a>(
    spec: &'a Spec,
    strategy: &'a Strategy,
    current: Option<&'a Release>,
    deployment_id: &'a str,
) -> PlanInput<'a> {
    PlanInput {
        spec,
        env: "production",
        strategy,
        deployment_id,
        requested_by: "alice",
        created_at_ms: 1_700_000_600_000,
        current,
        current_route: current.map(|r| &*Box::leak(Box::new(route_to(r)))),
        kind: PlanKind::Deploy,
    }
}

/// The route an environment serves when `release` takes all its traffic.
fn route_to(release: &Release) -> Route {
    Route {
        env: release.env.clone(),
        listen: "127.0.0.1:8080".to_string(),
        backends: vec![Backend {
            release: release.id.clone(),
            addrs: (0..release.replicas)
                .map(|replica| running(release, replica).addr)
                .collect(),
            weight: 100,
        }],
        response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
    }
}

/// Every dependency of a step comes before it, ids are unique and keys follow the rule.
fn assert_well_formed(plan: &Plan) {
    let mut seen = Vec::new();
    for step in &plan.steps {
        assert!(
            !seen.contains(&step.id.as_str()),
            "duplicate step {}",
            step.id
        );
        for dep in &step.depends_on {
            assert!(
                seen.contains(&dep.as_str()),
                "{} runs before its dependency {dep}",
                step.id
            );
        }
        assert_eq!(
            step.idempotency_key,
            format!("{}/{}", plan.deployment_id, step.id)
        );
        seen.push(step.id.as_str());
    }
    let mut unsigned = plan.clone();
    unsigned.digest = String::new();
    assert_eq!(plan.digest, json_digest(&unsigned));
}

fn first_deploy_plan() -> Plan {
    let spec = spec();
    let strategy = builtin("blue-green");
    plan(&deploy_input(&spec, &strategy, None, "production-1")).expect("first deploy plans")
}

fn redeploy_plan() -> Plan {
    let spec = spec();
    let strategy = builtin("blue-green");
    let current = release("production-6", "v1");
    plan(&deploy_input(
        &spec,
        &strategy,
        Some(&current),
        "production-7",
    ))
    .expect("redeploy plans")
}

fn rollback_plan(warm: bool) -> Plan {
    let spec = spec();
    let strategy = builtin("rollback");
    let current = release("production-7", "v2");
    let target = release("production-6", "v1");
    let instances = if warm {
        vec![running(&target, 1), running(&target, 0)]
    } else {
        // One replica is gone: the rollback is cold.
        vec![running(&target, 0)]
    };
    plan(&PlanInput {
        spec: &spec,
        env: "production",
        strategy: &strategy,
        deployment_id: "production-9",
        requested_by: "bob",
        created_at_ms: 1_700_000_900_000,
        current: Some(&current),
        current_route: Some(&route_to(&current)),
        kind: PlanKind::Rollback {
            target: &target,
            warm_instances: &instances,
        },
    })
    .expect("rollback plans")
}

#[test]
fn first_deploy() {
    let plan = first_deploy_plan();
    assert_well_formed(&plan);
    assert_eq!(plan.release_id, "production-1");
    assert_eq!(plan.previous_release, None);
    insta::assert_json_snapshot!("first_deploy", plan);
    insta::assert_snapshot!("first_deploy_text", render_text(&plan));
    insta::assert_snapshot!("first_deploy_dot", render_dot(&plan));
}

#[test]
fn redeploy() {
    let plan = redeploy_plan();
    assert_well_formed(&plan);
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "build",
            "scan",
            "sign",
            "verify",
            "provision-0",
            "provision-1",
            "health-check-0",
            "health-check-1",
            "shift-traffic",
            "drain",
            "retire",
            "record"
        ]
    );
    assert_eq!(
        plan.step("health-check-1").map(|s| s.depends_on.clone()),
        Some(vec!["provision-1".to_string()])
    );
    match &plan.step("retire").map(|s| &s.action) {
        Some(Action::Retire {
            release,
            instances,
            after,
        }) => {
            assert_eq!(release.as_deref(), Some("production-6"));
            assert_eq!(instances.len(), 2);
            assert_eq!(*after, Duration::from_secs(300));
        }
        other => panic!("expected a retire action, got {other:?}"),
    }
    insta::assert_json_snapshot!("redeploy", plan);
    insta::assert_snapshot!("redeploy_text", render_text(&plan));
    insta::assert_snapshot!("redeploy_dot", render_dot(&plan));
}

#[test]
fn warm_rollback() {
    let plan = rollback_plan(true);
    assert_well_formed(&plan);
    assert_eq!(
        plan.kind,
        DeploymentKind::Rollback {
            target: "production-6".to_string(),
            warm: true
        }
    );
    assert!(plan
        .steps
        .iter()
        .all(|s| !matches!(s.kind, StepKind::Build | StepKind::Provision)));
    match &plan.step("adopt-1").map(|s| &s.action) {
        Some(Action::Adopt { name, release }) => {
            assert_eq!(name, "cutover-hello-production-6-1");
            assert_eq!(release, "production-6");
        }
        other => panic!("expected an adopt action, got {other:?}"),
    }
    match &plan.step("health-check-0").map(|s| &s.action) {
        Some(Action::HealthCheck {
            instance_step,
            health,
        }) => {
            assert_eq!(instance_step, "adopt-0");
            assert_eq!(health.healthy_threshold, 1);
            assert!(health.interval <= Duration::from_millis(100));
        }
        other => panic!("expected a health check, got {other:?}"),
    }
    insta::assert_json_snapshot!("warm_rollback", plan);
    insta::assert_snapshot!("warm_rollback_text", render_text(&plan));
    insta::assert_snapshot!("warm_rollback_dot", render_dot(&plan));
}

#[test]
fn cold_rollback() {
    let plan = rollback_plan(false);
    assert_well_formed(&plan);
    assert_eq!(
        plan.kind,
        DeploymentKind::Rollback {
            target: "production-6".to_string(),
            warm: false
        }
    );
    assert_eq!(plan.release_id, "production-6");
    assert!(plan
        .steps
        .iter()
        .all(|s| !matches!(s.kind, StepKind::Build | StepKind::Adopt)));
    match &plan.step("provision-0").map(|s| &s.action) {
        Some(Action::Provision { instance }) => {
            assert_eq!(instance.name, "cutover-hello-production-6-production-9-0");
            assert_eq!(instance.release, "production-6");
            assert_eq!(instance.deployment_id, "production-9");
            // The target's recorded settings, not today's spec (which says 64MiB).
            assert_eq!(instance.container.memory_bytes, 128 << 20);
            assert_eq!(
                instance.image,
                ImageSource::Pinned {
                    id: format!("sha256:{}", "ab".repeat(32)),
                    tag: "cutover/hello:production-6".to_string()
                }
            );
        }
        other => panic!("expected a provision action, got {other:?}"),
    }
    match &plan.step("retire").map(|s| &s.action) {
        Some(Action::Retire { release, .. }) => {
            assert_eq!(release.as_deref(), Some("production-7"))
        }
        other => panic!("expected a retire action, got {other:?}"),
    }
    insta::assert_json_snapshot!("cold_rollback", plan);
    insta::assert_snapshot!("cold_rollback_text", render_text(&plan));
    insta::assert_snapshot!("cold_rollback_dot", render_dot(&plan));
}

#[test]
fn same_input_gives_byte_identical_plan_and_digest() {
    let first = serde_json::to_string(&redeploy_plan()).expect("serializes");
    let second = serde_json::to_string(&redeploy_plan()).expect("serializes");
    assert_eq!(first, second);
    assert_eq!(redeploy_plan().digest, redeploy_plan().digest);
    assert_eq!(rollback_plan(true), rollback_plan(true));
    let approval = serde_json::to_string(&approval_deploy_plan()).expect("serializes");
    assert_eq!(
        approval,
        serde_json::to_string(&approval_deploy_plan()).expect("serializes")
    );
}

#[test]
fn clients_see_env_values_as_digests_and_the_plan_keeps_them() {
    let plan = redeploy_plan();
    let shown = plan.with_env_digests();
    let digest = cutover_model::sha256_digest(b"v1");
    let containers = |p: &Plan| -> Vec<ContainerSpec> {
        p.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Provision { instance } => Some(instance.container.clone()),
                Action::Record { container, .. } => Some(container.clone()),
                _ => None,
            })
            .collect()
    };
    let (kept, redacted) = (containers(&plan), containers(&shown));
    assert!(kept.len() >= 2, "provision and record steps");
    for (k, r) in kept.iter().zip(&redacted) {
        assert_eq!(k.env["VERSION"], "v1");
        assert_eq!(r.env["VERSION"], digest);
        assert_eq!(r, &k.with_env_digests());
    }
    // The digest stays the saved plan's; nothing else changes.
    assert_eq!(shown.digest, plan.digest);
    let text = render_text(&plan);
    assert!(text.contains(&format!("VERSION={digest}")), "{text}");
    assert!(!text.contains("VERSION=v1"), "{text}");
    let mut back = shown.clone();
    for (step, orig) in back.steps.iter_mut().zip(&plan.steps) {
        match (&mut step.action, &orig.action) {
            (Action::Provision { instance }, Action::Provision { instance: o }) => {
                instance.container.env = o.container.env.clone();
            }
            (Action::Record { container, .. }, Action::Record { container: o, .. }) => {
                container.env = o.env.clone();
            }
            _ => {}
        }
    }
    assert_eq!(back, plan);
}

#[test]
fn any_input_change_changes_the_digest() {
    let strategy = builtin("blue-green");
    let base_spec = spec();
    let current = release("production-6", "v1");
    let other_current = release("production-5", "v1");
    let base = plan(&deploy_input(
        &base_spec,
        &strategy,
        Some(&current),
        "production-7",
    ))
    .expect("plans")
    .digest;

    let mut changed_env_var = spec();
    changed_env_var
        .container
        .env
        .insert("VERSION".to_string(), "v2".to_string());
    let mut changed_replicas = spec();
    if let Some(env) = changed_replicas.environments.get_mut("production") {
        env.replicas = 3;
    }
    let mut changed_health = spec();
    changed_health.health.path = "/ready".to_string();
    let mut changed_strategy = strategy.clone();
    changed_strategy.description.push('!');

    let mut digests = vec![
        plan(&deploy_input(
            &changed_env_var,
            &strategy,
            Some(&current),
            "production-7",
        )),
        plan(&deploy_input(
            &changed_replicas,
            &strategy,
            Some(&current),
            "production-7",
        )),
        plan(&deploy_input(
            &changed_health,
            &strategy,
            Some(&current),
            "production-7",
        )),
        plan(&deploy_input(
            &base_spec,
            &strategy,
            Some(&current),
            "production-8",
        )),
        plan(&deploy_input(
            &base_spec,
            &strategy,
            Some(&other_current),
            "production-7",
        )),
        plan(&deploy_input(&base_spec, &strategy, None, "production-7")),
        plan(&PlanInput {
            requested_by: "mallory",
            ..deploy_input(&base_spec, &strategy, Some(&current), "production-7")
        }),
        plan(&PlanInput {
            created_at_ms: 1,
            ..deploy_input(&base_spec, &strategy, Some(&current), "production-7")
        }),
    ]
    .into_iter()
    .map(|p| p.expect("plans").digest)
    .collect::<Vec<_>>();
    // The description is not part of the plan, so the same plan and digest come out.
    let same = plan(&deploy_input(
        &base_spec,
        &changed_strategy,
        Some(&current),
        "production-7",
    ))
    .expect("plans")
    .digest;
    assert_eq!(same, base);

    digests.push(base);
    let unique: std::collections::BTreeSet<&String> = digests.iter().collect();
    assert_eq!(unique.len(), digests.len(), "digests collide: {digests:#?}");
}

#[test]
fn builtin_strategies_parse_and_unknown_names_are_none() {
    for (name, _) in BUILTIN_STRATEGIES {
        assert_eq!(builtin(name).name, *name);
    }
    assert_eq!(builtin_strategy("canary-42"), None);
}

/// (name, strategy text, error fragment)
const BAD_STRATEGIES: &[(&str, &str, &str)] = &[
    (
        "cycle",
        r#"name = "loop"
[[step]]
id = "build"
kind = "build"
after = ["record"]
[[step]]
id = "record"
kind = "record"
after = ["build"]
"#,
        "test.toml: step `build`: is part of a dependency cycle between steps `build`, `record`",
    ),
    (
        "unknown after reference",
        r#"name = "typo"
[[step]]
id = "build"
kind = "build"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["biuld"]
"#,
        "test.toml: step `provision`: `after` names `biuld`, which is not a step of this strategy",
    ),
    (
        "unknown kind",
        r#"name = "x"
[[step]]
id = "pause"
kind = "pause"
"#,
        "test.toml:4:8: unknown variant `pause`",
    ),
    (
        "unknown top-level key",
        r#"name = "x"
steps = []
"#,
        "test.toml:2:1: unknown field `steps`",
    ),
    (
        "unknown step key",
        r#"name = "x"
[[step]]
id = "build"
kind = "build"
afterwards = ["x"]
"#,
        "test.toml:5:1: unknown field `afterwards`",
    ),
    (
        "duplicate id",
        r#"name = "x"
[[step]]
id = "build"
kind = "build"
[[step]]
id = "build"
kind = "record"
after = ["build"]
"#,
        "test.toml: step `build`: the id is used twice",
    ),
    (
        "self reference",
        r#"name = "x"
[[step]]
id = "build"
kind = "build"
after = ["build"]
"#,
        "test.toml: step `build`: cannot run after itself",
    ),
    (
        "per_replica missing on provision",
        r#"name = "x"
[[step]]
id = "provision"
kind = "provision"
"#,
        "test.toml: step `provision`: kind provision needs per_replica = true",
    ),
    (
        "weight on a non-shift step",
        r#"name = "x"
[[step]]
id = "build"
kind = "build"
weight = 10
"#,
        "test.toml: step `build`: weight only applies to shift-traffic steps",
    ),
    (
        "shift before health checks",
        r#"name = "x"
[[step]]
id = "verify"
kind = "verify"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["verify"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["provision"]
"#,
        "test.toml: step `shift-traffic`: must run after `health-check` (traffic only moves to instances that passed their health check)",
    ),
    (
        "retire before drain",
        r#"name = "x"
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
[[step]]
id = "drain"
kind = "drain"
after = ["shift-traffic"]
[[step]]
id = "retire"
kind = "retire"
after = ["shift-traffic"]
"#,
        "test.toml: step `retire`: must run after `drain`",
    ),
    (
        "two full shifts",
        r#"name = "x"
[[step]]
id = "a"
kind = "shift-traffic"
[[step]]
id = "b"
kind = "shift-traffic"
after = ["a"]
"#,
        "test.toml: steps `a`, `b` all shift 100% of traffic",
    ),
    (
        "expanded id clash",
        r#"name = "x"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
[[step]]
id = "provision-1"
kind = "drain"
"#,
        "test.toml: step `provision-1`: clashes with the per-replica ids of step `provision`",
    ),
    (
        "provision without verify",
        r#"name = "x"
[[step]]
id = "build"
kind = "build"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["build"]
"#,
        "test.toml: provision must come after verify so nothing unsigned runs: add a [[step]] with kind = \"verify\" and list it in the `after` of step `provision`",
    ),
    (
        "provision beside verify",
        r#"name = "x"
[[step]]
id = "build"
kind = "build"
[[step]]
id = "verify"
kind = "verify"
after = ["build"]
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["build"]
"#,
        "test.toml: provision must come after verify so nothing unsigned runs: add `verify` (or a step after it) to the `after` of step `provision`",
    ),
    (
        "adopt without verify",
        r#"name = "x"
[[step]]
id = "adopt"
kind = "adopt"
per_replica = true
"#,
        "test.toml: adopt must come after verify so nothing unsigned runs",
    ),
    (
        "sign before scan",
        r#"name = "x"
[[step]]
id = "sign"
kind = "sign"
[[step]]
id = "scan"
kind = "scan"
after = ["sign"]
"#,
        "test.toml: step `sign`: must run after `scan` (the signature attests the scan verdict)",
    ),
    (
        "verify beside sign",
        r#"name = "x"
[[step]]
id = "sign"
kind = "sign"
[[step]]
id = "verify"
kind = "verify"
"#,
        "test.toml: step `verify`: must run after `sign` (it checks the signature that step makes)",
    ),
    (
        "scan before build",
        r#"name = "x"
[[step]]
id = "scan"
kind = "scan"
[[step]]
id = "build"
kind = "build"
"#,
        "test.toml: step `scan`: must run after `build` (it works on the image that step builds)",
    ),
    (
        "shift before approval",
        r#"name = "x"
[[step]]
id = "approval"
kind = "approval"
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
"#,
        "test.toml: step `shift-traffic`: must run after `approval` (traffic moves only once the release is approved)",
    ),
    (
        "two verify steps",
        r#"name = "x"
[[step]]
id = "verify"
kind = "verify"
[[step]]
id = "verify-again"
kind = "verify"
after = ["verify"]
"#,
        "test.toml: steps `verify`, `verify-again` all have kind verify: a strategy has at most one",
    ),
    (
        "approval per replica",
        r#"name = "x"
[[step]]
id = "approval"
kind = "approval"
per_replica = true
"#,
        "test.toml: step `approval`: kind approval needs per_replica = false",
    ),
    (
        "syntax error",
        "name = \"x\"\n[[step]\n",
        "test.toml:2:",
    ),
];

#[test]
fn bad_strategies_are_refused_with_file_and_step() {
    let mut failures = Vec::new();
    for (name, text, fragment) in BAD_STRATEGIES {
        match parse_strategy(text, "test.toml") {
            Ok(_) => failures.push(format!("{name}: parsed but should fail")),
            Err(e) if !e.to_string().contains(fragment) => failures.push(format!(
                "{name}: expected {fragment:?} in {:?}",
                e.to_string()
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_deploy_needs_every_required_kind() {
    let strategy = parse_strategy(
        r#"name = "no-record"
[[step]]
id = "build"
kind = "build"
[[step]]
id = "scan"
kind = "scan"
after = ["build"]
[[step]]
id = "sign"
kind = "sign"
after = ["scan"]
[[step]]
id = "verify"
kind = "verify"
after = ["sign"]
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["verify"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["health-check"]
"#,
        "plans/no-record.toml",
    )
    .expect("a strategy without record is valid data");
    let spec = spec();
    let error = plan(&deploy_input(&spec, &strategy, None, "production-1")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "strategy no-record: cannot deploy: it has no step of kind `record`; add a [[step]] for each"
    );
}

#[test]
fn unknown_environment_is_refused() {
    let spec = spec();
    let strategy = builtin("blue-green");
    let input = PlanInput {
        env: "staging",
        ..deploy_input(&spec, &strategy, None, "staging-1")
    };
    let error = plan(&input).unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment `staging` is not in the spec (it has: production): add [environments.staging] to deploy.toml or pick one of those"
    );
}

/// A protected production: two approvers, a strict gate, its own keys.
fn guarded_spec() -> Spec {
    let mut spec = spec();
    spec.supply.signing_key = Some(PathBuf::from("/srv/app/keys/release.key"));
    if let Some(env) = spec.environments.get_mut("production") {
        env.protected = true;
        env.approval = true;
        env.approvals = ApprovalSpec {
            required: 2,
            timeout: Duration::from_secs(3600),
        };
        env.gate = GateSpec {
            fail_on: "high".to_string(),
            fail_on_secrets: true,
            exceptions: Some(PathBuf::from("/srv/app/security/exceptions.toml")),
            secret_rules: Some(PathBuf::from("/srv/app/security/gitleaks.toml")),
            ..GateSpec::default()
        };
        env.trusted_keys = vec![
            PathBuf::from("/srv/app/keys/release.pub"),
            PathBuf::from("/srv/app/keys/ci.pub"),
        ];
    }
    spec
}

fn approval_deploy_plan() -> Plan {
    let spec = guarded_spec();
    let strategy = builtin("blue-green");
    let current = release("production-6", "v1");
    plan(&deploy_input(
        &spec,
        &strategy,
        Some(&current),
        "production-7",
    ))
    .expect("deploy with approval plans")
}

#[test]
fn deploy_with_approval() {
    let plan = approval_deploy_plan();
    assert_well_formed(&plan);
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "build",
            "scan",
            "sign",
            "verify",
            "provision-0",
            "provision-1",
            "health-check-0",
            "health-check-1",
            "approval",
            "shift-traffic",
            "drain",
            "retire",
            "record"
        ]
    );
    let built = ImageSource::Step {
        step: "build".to_string(),
    };
    match plan.step("approval").map(|s| (&s.depends_on, &s.action)) {
        Some((deps, Action::Approval { image, gate })) => {
            assert_eq!(deps, &["health-check-0", "health-check-1"]);
            assert_eq!(image, &built);
            assert_eq!(gate.required, 2);
            assert_eq!(gate.timeout, Duration::from_secs(3600));
        }
        other => panic!("expected an approval action, got {other:?}"),
    }
    assert_eq!(
        plan.step("shift-traffic").map(|s| s.depends_on.clone()),
        Some(vec!["approval".to_string()])
    );
    match plan.step("sign").map(|s| &s.action) {
        Some(Action::Sign {
            image,
            key,
            spec_digest,
            source,
            app,
            env,
            invoked_by,
        }) => {
            // A deploy's build is the control plane's own.
            assert_eq!(invoked_by, &None);
            assert_eq!(image, &built);
            assert_eq!(
                key.as_deref(),
                Some(std::path::Path::new("/srv/app/keys/release.key"))
            );
            assert_eq!(spec_digest, &plan.spec_digest);
            assert_eq!(source, &PathBuf::from("/srv/app"));
            assert_eq!((app.as_str(), env.as_str()), ("hello", "production"));
        }
        other => panic!("expected a sign action, got {other:?}"),
    }
    match plan.step("verify").map(|s| &s.action) {
        Some(Action::Verify {
            trusted_keys,
            image,
            ..
        }) => {
            assert_eq!(image, &built);
            assert_eq!(trusted_keys.len(), 2);
        }
        other => panic!("expected a verify action, got {other:?}"),
    }
    match plan.step("scan").map(|s| &s.action) {
        Some(Action::Scan { gate, image, .. }) => {
            assert_eq!(image, &built);
            assert_eq!(gate.fail_on, "high");
            // Protected: files the scan skips for their size fail the gate.
            assert!(gate.fail_on_skipped);
        }
        other => panic!("expected a scan action, got {other:?}"),
    }
    insta::assert_json_snapshot!("deploy_with_approval", plan);
    insta::assert_snapshot!("deploy_with_approval_text", render_text(&plan));
}

#[test]
fn without_approval_the_step_is_left_out_and_traffic_follows_the_health_checks() {
    let plan = redeploy_plan();
    assert!(plan.steps.iter().all(|s| s.kind != StepKind::Approval));
    assert_eq!(
        plan.step("shift-traffic").map(|s| s.depends_on.clone()),
        Some(vec![
            "health-check-0".to_string(),
            "health-check-1".to_string()
        ])
    );
    // The defaults: the local key signs and verifies, the gate fails on critical and secrets.
    match plan.step("sign").map(|s| &s.action) {
        Some(Action::Sign { key, .. }) => assert_eq!(key, &None),
        other => panic!("expected a sign action, got {other:?}"),
    }
    match plan.step("scan").map(|s| &s.action) {
        Some(Action::Scan { gate, .. }) => assert_eq!(gate, &GateSpec::default()),
        other => panic!("expected a scan action, got {other:?}"),
    }
}

#[test]
fn protected_alone_requires_approval() {
    let mut spec = spec();
    if let Some(env) = spec.environments.get_mut("production") {
        env.protected = true;
        env.approval = false;
    }
    let strategy = builtin("blue-green");
    let plan = plan(&deploy_input(&spec, &strategy, None, "production-1")).expect("plans");
    assert!(plan.step("approval").is_some());
}

#[test]
fn an_environment_needing_approval_refuses_a_strategy_without_it() {
    let spec = guarded_spec();
    let mut strategy = builtin("blue-green");
    strategy.steps.retain(|s| s.kind != StepKind::Approval);
    for step in &mut strategy.steps {
        if step.kind == StepKind::ShiftTraffic {
            step.after = vec!["health-check".to_string()];
        }
    }
    let error = plan(&deploy_input(&spec, &strategy, None, "production-1")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "strategy blue-green: environment `production` requires approval but the strategy has no approval step: add a [[step]] with kind = \"approval\" before shift-traffic"
    );
}

#[test]
fn a_deploy_without_supply_chain_steps_is_refused() {
    let mut strategy = builtin("blue-green");
    strategy
        .steps
        .retain(|s| !matches!(s.kind, StepKind::Scan | StepKind::Sign));
    for step in &mut strategy.steps {
        if step.kind == StepKind::Verify {
            step.after = vec!["build".to_string()];
        }
    }
    let spec = spec();
    let error = plan(&deploy_input(&spec, &strategy, None, "production-1")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "strategy blue-green: cannot deploy: it has no step of kind `scan`, `sign`; add a [[step]] for each"
    );
}

fn rollback_in(spec: &Spec, warm: bool) -> Result<Plan, PlanError> {
    let strategy = builtin("rollback");
    let current = release("production-7", "v2");
    let target = release("production-6", "v1");
    let instances = if warm {
        vec![running(&target, 0), running(&target, 1)]
    } else {
        Vec::new()
    };
    plan(&PlanInput {
        spec,
        env: "production",
        strategy: &strategy,
        deployment_id: "production-9",
        requested_by: "bob",
        created_at_ms: 1_700_000_900_000,
        current: Some(&current),
        current_route: Some(&route_to(&current)),
        kind: PlanKind::Rollback {
            target: &target,
            warm_instances: &instances,
        },
    })
}

#[test]
fn rollback_verifies_the_pinned_image_first_and_never_waits_for_approval() {
    // Unprotected: verify comes first and nothing is rescanned (warm stays instant).
    let spec = spec();
    for warm in [true, false] {
        let plan = rollback_in(&spec, warm).expect("rollback plans");
        assert_well_formed(&plan);
        assert_eq!(plan.steps[0].id, "verify");
        assert!(plan.steps[0].depends_on.is_empty());
        assert!(plan.steps.iter().all(|s| !matches!(
            s.kind,
            StepKind::Approval | StepKind::Scan | StepKind::Sign | StepKind::Build
        )));
    }
}

#[test]
fn a_protected_rollback_rescans_the_pinned_image_before_verifying_it() {
    let spec = guarded_spec();
    let pinned = ImageSource::Pinned {
        id: format!("sha256:{}", "ab".repeat(32)),
        tag: "cutover/hello:production-6".to_string(),
    };
    for warm in [true, false] {
        let plan = rollback_in(&spec, warm).expect("rollback plans");
        assert_well_formed(&plan);
        let first = &plan.steps[0];
        assert_eq!(first.id, "scan");
        assert!(first.depends_on.is_empty());
        match &first.action {
            Action::Scan {
                image,
                app,
                env,
                gate,
            } => {
                assert_eq!(image, &pinned);
                assert_eq!(app, "hello");
                assert_eq!(env, "production");
                // The environment's gate, as a deploy's scan has it.
                assert_eq!(gate.fail_on, "high");
                assert!(gate.fail_on_skipped, "protected fails on what was skipped");
                assert_eq!(
                    gate.exceptions,
                    Some(PathBuf::from("/srv/app/security/exceptions.toml"))
                );
            }
            other => panic!("expected a scan action, got {other:?}"),
        }
        let verify = plan.step("verify").expect("a verify step");
        assert_eq!(verify.depends_on, vec!["scan".to_string()]);
        match &verify.action {
            Action::Verify {
                image,
                trusted_keys,
                env,
            } => {
                assert_eq!(image, &pinned);
                assert_eq!(trusted_keys.len(), 2);
                assert_eq!(env, "production");
            }
            other => panic!("expected a verify action, got {other:?}"),
        }
        let instance = if warm { "adopt-0" } else { "provision-0" };
        assert_eq!(
            plan.step(instance).map(|s| s.depends_on.clone()),
            Some(vec!["verify".to_string()])
        );
        // Same deploy gate action as a deploy to production.
        let deploy = approval_deploy_plan();
        let deploy_gate = deploy.steps.iter().find_map(|s| match &s.action {
            Action::Scan { gate, .. } => Some(gate.clone()),
            _ => None,
        });
        assert!(
            matches!(&first.action, Action::Scan { gate, .. } if Some(gate) == deploy_gate.as_ref())
        );
        assert!(plan.steps.iter().all(|s| !matches!(
            s.kind,
            StepKind::Approval | StepKind::Sign | StepKind::Build
        )));
    }
    let cold = rollback_in(&spec, false).expect("rollback plans");
    insta::assert_snapshot!("protected_cold_rollback_text", render_text(&cold));
    let warm = rollback_in(&spec, true).expect("rollback plans");
    insta::assert_snapshot!("protected_warm_rollback_text", render_text(&warm));
}

#[test]
fn a_custom_protected_rollback_gets_a_rescan_and_a_scan_may_not_come_late() {
    let late = parse_strategy(
        r#"name = "late-scan"
[[step]]
id = "verify"
kind = "verify"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["verify"]
[[step]]
id = "scan"
kind = "scan"
after = ["provision"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["health-check"]
[[step]]
id = "record"
kind = "record"
after = ["shift-traffic"]
"#,
        "plans/late-scan.toml",
    )
    .unwrap_err();
    assert_eq!(
        late.to_string(),
        "plans/late-scan.toml: step `provision`: must run after `scan` (an image that fails the gate never runs): add it (or a step after it) to `after`"
    );
    let misnamed = parse_strategy(
        r#"name = "misnamed"
[[step]]
id = "scan"
kind = "verify"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["scan"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["health-check"]
[[step]]
id = "record"
kind = "record"
after = ["shift-traffic"]
"#,
        "plans/misnamed.toml",
    )
    .expect("parses");
    let target = release("production-6", "v1");
    let current = release("production-7", "v2");
    let guarded = guarded_spec();
    let error = plan(&PlanInput {
        kind: PlanKind::Rollback {
            target: &target,
            warm_instances: &[],
        },
        ..deploy_input(&guarded, &misnamed, Some(&current), "production-9")
    })
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("step `scan`: a rollback in a protected environment rescans"),
        "{error}"
    );
}

#[test]
fn a_rollback_strategy_that_signs_is_refused() {
    let spec = spec();
    let target = release("production-6", "v1");
    let strategy = parse_strategy(
        r#"name = "resign"
[[step]]
id = "sign"
kind = "sign"
[[step]]
id = "verify"
kind = "verify"
after = ["sign"]
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["verify"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["health-check"]
[[step]]
id = "record"
kind = "record"
after = ["shift-traffic"]
"#,
        "plans/resign.toml",
    )
    .expect("parses");
    let error = plan(&PlanInput {
        kind: PlanKind::Rollback {
            target: &target,
            warm_instances: &[],
        },
        ..deploy_input(&spec, &strategy, None, "production-9")
    })
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("strategy resign: step `sign`: a rollback never signs"),
        "{error}"
    );
}

#[test]
fn supply_chain_settings_change_the_digest() {
    let base = approval_deploy_plan().digest;
    let strategy = builtin("blue-green");
    let current = release("production-6", "v1");
    let variants: [fn(&mut Spec); 4] = [
        |s| s.supply.signing_key = None,
        |s| {
            if let Some(e) = s.environments.get_mut("production") {
                e.gate.fail_on = "critical".to_string();
            }
        },
        |s| {
            if let Some(e) = s.environments.get_mut("production") {
                e.trusted_keys.pop();
            }
        },
        |s| {
            if let Some(e) = s.environments.get_mut("production") {
                e.approvals.required = 1;
            }
        },
    ];
    let mut digests = vec![base];
    for change in variants {
        let mut spec = guarded_spec();
        change(&mut spec);
        let plan = plan(&deploy_input(
            &spec,
            &strategy,
            Some(&current),
            "production-7",
        ))
        .expect("plans");
        digests.push(plan.digest);
    }
    let unique: std::collections::BTreeSet<&String> = digests.iter().collect();
    assert_eq!(unique.len(), digests.len(), "digests collide: {digests:#?}");
}

#[test]
fn rollback_mistakes_are_refused() {
    let spec = spec();
    let rollback = builtin("rollback");
    let blue_green = builtin("blue-green");
    let current = release("production-7", "v2");
    let target = release("production-6", "v1");
    let rollback_input = |strategy, target| PlanInput {
        kind: PlanKind::Rollback {
            target,
            warm_instances: &[],
        },
        ..deploy_input(&spec, strategy, Some(&current), "production-9")
    };
    let to_current = plan(&rollback_input(&rollback, &current)).unwrap_err();
    assert!(
        to_current.to_string().contains("is already current"),
        "{to_current}"
    );
    let with_build = plan(&rollback_input(&blue_green, &target)).unwrap_err();
    assert!(
        with_build.to_string().contains("a rollback never builds"),
        "{with_build}"
    );
    let adopt_in_deploy = plan(&deploy_input(&spec, &rollback, None, "production-1")).unwrap_err();
    assert!(
        adopt_in_deploy
            .to_string()
            .contains("adopt steps only belong in rollback strategies"),
        "{adopt_in_deploy}"
    );
    let mut other_env = target.clone();
    other_env.env = "staging".to_string();
    let wrong_env = plan(&rollback_input(&rollback, &other_env)).unwrap_err();
    assert!(
        wrong_env.to_string().contains("belongs to hello/staging"),
        "{wrong_env}"
    );
}

/// A strategy that shifts twice: 10 %, then all.
fn canary() -> Strategy {
    parse_strategy(
        r#"name = "canary"
[[step]]
id = "build"
kind = "build"
[[step]]
id = "scan"
kind = "scan"
after = ["build"]
[[step]]
id = "sign"
kind = "sign"
after = ["scan"]
[[step]]
id = "verify"
kind = "verify"
after = ["sign"]
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["verify"]
[[step]]
id = "health"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "canary"
kind = "shift-traffic"
weight = 10
after = ["health"]
[[step]]
id = "full"
kind = "shift-traffic"
after = ["canary"]
[[step]]
id = "record"
kind = "record"
after = ["full"]
"#,
        "plans/canary.toml",
    )
    .expect("canary parses")
}

#[test]
fn canary_strategy_expands_in_order_with_weights() {
    let strategy = canary();
    let spec = spec();
    let plan = plan(&deploy_input(&spec, &strategy, None, "production-1")).expect("plans");
    assert_well_formed(&plan);
    let weights: Vec<(String, u8)> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::ShiftTraffic { weight, .. } => Some((s.id.clone(), *weight)),
            _ => None,
        })
        .collect();
    assert_eq!(
        weights,
        [("canary".to_string(), 10), ("full".to_string(), 100)]
    );
    assert_eq!(
        plan.step("canary").map(|s| s.depends_on.clone()),
        Some(vec!["health-0".to_string(), "health-1".to_string()])
    );
}

#[test]
fn cold_rollback_without_provision_is_refused() {
    let strategy = parse_strategy(
        r#"name = "warm-only"
[[step]]
id = "verify"
kind = "verify"
[[step]]
id = "adopt"
kind = "adopt"
per_replica = true
after = ["verify"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["adopt"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["health-check"]
[[step]]
id = "record"
kind = "record"
after = ["shift-traffic"]
"#,
        "plans/warm-only.toml",
    )
    .expect("parses");
    let spec = spec();
    let target = release("production-6", "v1");
    let instances = [running(&target, 0)];
    let error = plan(&PlanInput {
        kind: PlanKind::Rollback {
            target: &target,
            warm_instances: &instances,
        },
        ..deploy_input(&spec, &strategy, None, "production-9")
    })
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is cold (1 of 2 instances running)"),
        "{error}"
    );
}

#[test]
fn plans_read_back_from_json_unchanged() {
    for plan in [
        first_deploy_plan(),
        redeploy_plan(),
        rollback_plan(true),
        rollback_plan(false),
        approval_deploy_plan(),
    ] {
        let json = serde_json::to_string(&plan).expect("serializes");
        let back: Plan = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, plan);
        assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
    }
}

#[test]
fn strategy_examples_in_the_plans_readme_are_valid() {
    let readme = include_str!("../../../plans/README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|block| block.contains("kind = \"record\""))
        .collect();
    assert!(!blocks.is_empty(), "the readme has strategy examples");
    let spec = spec();
    for block in blocks {
        let strategy = parse_strategy(block, "plans/README.md")
            .unwrap_or_else(|e| panic!("readme example does not parse: {e}\n{block}"));
        if strategy.steps.len() > 1 {
            let plan = plan(&deploy_input(&spec, &strategy, None, "production-1"))
                .unwrap_or_else(|e| panic!("readme example does not plan: {e}"));
            assert_well_formed(&plan);
        }
    }
}

#[test]
fn an_approval_in_a_custom_rollback_is_kept_only_where_required() {
    let strategy = parse_strategy(
        r#"name = "careful-rollback"
[[step]]
id = "verify"
kind = "verify"
[[step]]
id = "provision"
kind = "provision"
per_replica = true
after = ["verify"]
[[step]]
id = "health-check"
kind = "health-check"
per_replica = true
after = ["provision"]
[[step]]
id = "approval"
kind = "approval"
after = ["health-check"]
[[step]]
id = "shift-traffic"
kind = "shift-traffic"
after = ["approval"]
[[step]]
id = "record"
kind = "record"
after = ["shift-traffic"]
"#,
        "plans/careful-rollback.toml",
    )
    .expect("parses");
    let target = release("production-6", "v1");
    let current = release("production-7", "v2");
    let rollback = |spec: &Spec| {
        plan(&PlanInput {
            kind: PlanKind::Rollback {
                target: &target,
                warm_instances: &[],
            },
            ..deploy_input(spec, &strategy, Some(&current), "production-9")
        })
        .expect("plans")
    };
    let guarded = rollback(&guarded_spec());
    match guarded.step("approval").map(|s| &s.action) {
        Some(Action::Approval { image, .. }) => assert!(
            matches!(image, ImageSource::Pinned { tag, .. } if tag == "cutover/hello:production-6")
        ),
        other => panic!("expected an approval of the pinned image, got {other:?}"),
    }
    // The planner added the rescan the strategy lacks, before its verify.
    assert_eq!(guarded.steps[0].kind, StepKind::Scan);
    assert_eq!(
        guarded.step("verify").map(|s| s.depends_on.clone()),
        Some(vec!["scan".to_string()])
    );
    let plain = rollback(&spec());
    assert!(plain.step("approval").is_none());
    assert!(plain.step("scan").is_none());
    assert_eq!(
        plain.step("shift-traffic").map(|s| s.depends_on.clone()),
        Some(vec![
            "health-check-0".to_string(),
            "health-check-1".to_string()
        ])
    );
}

#[test]
fn every_shift_records_the_route_it_restores() {
    let spec = spec();
    let current = release("production-6", "sha256:old");
    let strategy = canary();
    let live = route_to(&current);
    let input = PlanInput {
        current_route: Some(&live),
        ..deploy_input(&spec, &strategy, Some(&current), "production-7")
    };
    let planned = plan(&input).unwrap();
    let restores: Vec<&RestoreRoute> = planned
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::ShiftTraffic { restore, .. } => Some(restore),
            _ => None,
        })
        .collect();
    assert!(restores.len() > 1, "canary shifts more than once");
    for restore in &restores {
        assert_eq!(restore.recorded(), Some(Some(&live)));
    }
    // The route is an input like any other: same route, same plan; another, another digest.
    assert_eq!(plan(&input).unwrap().digest, planned.digest);
    let mut other = live.clone();
    other.backends[0].addrs.pop();
    let changed = plan(&PlanInput {
        current_route: Some(&other),
        ..input
    })
    .unwrap();
    assert_ne!(changed.digest, planned.digest);
    // No route: the undo removes it.
    let first = plan(&deploy_input(&spec, &strategy, None, "production-1")).unwrap();
    assert!(first.steps.iter().any(|s| matches!(
        &s.action,
        Action::ShiftTraffic {
            restore: RestoreRoute::NoRoute,
            ..
        }
    )));
}

#[test]
fn a_plan_saved_without_the_restore_route_reads_as_unrecorded() {
    let planned = plan(&deploy_input(
        &spec(),
        &builtin("blue-green"),
        None,
        "production-1",
    ))
    .unwrap();
    let mut json = serde_json::to_value(&planned).unwrap();
    let mut removed = 0;
    for step in json["steps"].as_array_mut().unwrap() {
        let action = step["action"].as_object_mut().unwrap();
        if action["type"] == "shift-traffic" {
            removed += usize::from(action.remove("restore").is_some());
        }
    }
    assert_eq!(removed, 1, "{json}");
    let old: Plan = serde_json::from_value(json).unwrap();
    assert!(old.steps.iter().any(|s| matches!(
        &s.action,
        Action::ShiftTraffic {
            restore: RestoreRoute::Unrecorded,
            ..
        }
    )));
}

fn rotate_plan() -> Plan {
    let spec = spec();
    let strategy = builtin("rollback");
    let mut current = release("production-7", "v2");
    current.container.secrets.insert(
        "db".to_string(),
        cutover_model::SecretMount {
            source: "secret://db-password".to_string(),
            path: "/run/secrets/db".to_string(),
            as_env: false,
            pin: Some(cutover_model::SecretPin {
                name: "db-password".to_string(),
                version: 4,
            }),
        },
    );
    plan(&PlanInput {
        spec: &spec,
        env: "production",
        strategy: &strategy,
        deployment_id: "production-9",
        requested_by: "bob",
        created_at_ms: 1_700_000_900_000,
        current: Some(&current),
        current_route: Some(&route_to(&current)),
        kind: PlanKind::Rotate { source: &current },
    })
    .expect("rotation plans")
}

#[test]
fn rotate_starts_a_new_release_of_the_pinned_image_with_its_pins_and_builds_nothing() {
    let plan = rotate_plan();
    assert_well_formed(&plan);
    assert_eq!(
        plan.kind,
        DeploymentKind::Rotate {
            from: "production-7".to_string()
        }
    );
    assert_eq!(plan.release_id, "production-9");
    assert!(plan
        .steps
        .iter()
        .all(|s| !matches!(s.kind, StepKind::Build | StepKind::Sign | StepKind::Adopt)));
    assert!(plan.steps.iter().any(|s| s.kind == StepKind::Verify));
    match &plan.step("provision-0").map(|s| &s.action) {
        Some(Action::Provision { instance }) => {
            assert_eq!(instance.name, "cutover-hello-production-9-0");
            assert_eq!(instance.release, "production-9");
            assert_eq!(
                instance.container.secrets["db"]
                    .pin
                    .as_ref()
                    .map(|p| p.version),
                Some(4)
            );
            assert!(matches!(instance.image, ImageSource::Pinned { .. }));
        }
        other => panic!("expected a provision action, got {other:?}"),
    }
    match &plan.step("retire").map(|s| &s.action) {
        Some(Action::Retire { release, .. }) => {
            assert_eq!(release.as_deref(), Some("production-7"))
        }
        other => panic!("expected a retire action, got {other:?}"),
    }
    assert!(render_text(&plan).contains("rotate the secrets of hello in production"));
    insta::assert_json_snapshot!("rotate", plan);
}

fn image_spec() -> Spec {
    Spec {
        build: BuildSpec::Image {
            reference: cutover_model::ImageRef::parse(&format!(
                "127.0.0.1:5000/team/hello@sha256:{}",
                "12".repeat(32)
            ))
            .expect("valid reference"),
        },
        ..spec()
    }
}

#[test]
fn a_prebuilt_image_is_pulled_then_scanned_signed_and_verified_here_before_it_runs() {
    let spec = image_spec();
    let strategy = builtin("blue-green");
    let plan =
        plan(&deploy_input(&spec, &strategy, None, "production-1")).expect("image deploy plans");
    assert_well_formed(&plan);
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids[..4], ["pull", "scan", "sign", "verify"]);
    assert!(!ids.contains(&"build"), "{ids:?}");
    match &plan.steps[0].action {
        Action::Pull { reference, tag } => {
            assert_eq!(reference.registry, "127.0.0.1:5000");
            assert_eq!(tag, "cutover/hello:production-1");
        }
        other => panic!("expected a pull, got {other:?}"),
    }
    // Every image the plan uses is the pulled one.
    let scan = &plan.steps[1];
    assert_eq!(scan.depends_on, ["pull"]);
    match &scan.action {
        Action::Scan { image, .. } => assert_eq!(
            *image,
            ImageSource::Step {
                step: "pull".to_string()
            }
        ),
        other => panic!("expected a scan, got {other:?}"),
    }
    let first_provision = ids
        .iter()
        .position(|id| id.starts_with("provision"))
        .unwrap();
    assert!(ids.iter().position(|id| *id == "verify").unwrap() < first_provision);
    insta::assert_snapshot!("image_deploy_text", render_text(&plan));
}

#[test]
fn a_build_plan_builds_scans_signs_and_verifies_only() {
    for spec in [spec(), image_spec()] {
        let strategy = builtin("blue-green");
        let input = PlanInput {
            kind: PlanKind::Build { invoked_by: None },
            ..deploy_input(&spec, &strategy, None, "production-1")
        };
        let plan = plan(&input).expect("build plans");
        assert_well_formed(&plan);
        assert_eq!(plan.kind, DeploymentKind::Build);
        let kinds: Vec<StepKind> = plan.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Build,
                StepKind::Scan,
                StepKind::Sign,
                StepKind::Verify
            ]
        );
        assert!(!plan
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::Provision { .. } | Action::Record { .. })));
    }
    let spec = spec();
    let strategy = builtin("blue-green");
    let job = "https://ci.example/team/hello/jobs/7";
    let with_job = plan(&PlanInput {
        kind: PlanKind::Build {
            invoked_by: Some(job),
        },
        ..deploy_input(&spec, &strategy, None, "production-1")
    })
    .expect("build plans");
    match with_job.step("sign").map(|s| &s.action) {
        Some(Action::Sign { invoked_by, .. }) => assert_eq!(invoked_by.as_deref(), Some(job)),
        other => panic!("expected a sign step, got {other:?}"),
    }
    let plan = plan(&PlanInput {
        kind: PlanKind::Build { invoked_by: None },
        ..deploy_input(&spec, &strategy, None, "production-1")
    })
    .expect("build plans");
    insta::assert_snapshot!("build_only_text", render_text(&plan));
}

/// A staging release of the same app, whose image a promotion to production deploys.
fn staging_release() -> Release {
    let mut source = release("staging-7", "v2");
    source.env = "staging".to_string();
    source.image.id = format!("sha256:{}", "5a".repeat(32));
    source.replicas = 1;
    source
}

fn promote_plan(
    spec: &Spec,
    current: Option<&Release>,
    source: &Release,
) -> Result<Plan, PlanError> {
    let strategy = builtin("blue-green");
    plan(&PlanInput {
        kind: PlanKind::Promote { source },
        ..deploy_input(spec, &strategy, current, "production-8")
    })
}

#[test]
fn promotion() {
    let spec = spec();
    let current = release("production-7", "v1");
    let source = staging_release();
    let plan = promote_plan(&spec, Some(&current), &source).expect("promotion plans");
    assert_well_formed(&plan);
    assert_eq!(
        plan.kind,
        DeploymentKind::Promote {
            from_release: "staging-7".to_string(),
            from_env: "staging".to_string(),
        }
    );
    assert_eq!(plan.release_id, "production-8");
    assert_eq!(plan.previous_release.as_deref(), Some("production-7"));
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "scan",
            "sign",
            "verify",
            "provision-0",
            "provision-1",
            "health-check-0",
            "health-check-1",
            "shift-traffic",
            "drain",
            "retire",
            "record",
        ],
        "no build step; the rest like a deploy"
    );
    assert!(plan.steps.iter().all(|s| s.kind != StepKind::Build));
    // The scan that runs first depends on nothing: the image exists.
    assert!(plan.step("scan").unwrap().depends_on.is_empty());
    let pinned = ImageSource::Pinned {
        id: source.image.id.clone(),
        tag: source.image.tag.clone(),
    };
    for step in &plan.steps {
        match &step.action {
            Action::Scan { image, env, .. } | Action::Sign { image, env, .. } => {
                assert_eq!(image, &pinned);
                assert_eq!(env, "production", "a fresh verdict for the target");
            }
            Action::Verify { image, env, .. } => {
                assert_eq!(image, &pinned);
                assert_eq!(env, "production");
            }
            Action::Provision { instance } => {
                assert_eq!(instance.image, pinned);
                assert_eq!(instance.env, "production");
                assert_eq!(instance.release, "production-8");
                // The target's own settings (replicas and container from its spec).
                assert_eq!(instance.container, spec.container);
            }
            Action::Record {
                image, replicas, ..
            } => {
                assert_eq!(image, &pinned);
                assert_eq!(*replicas, 2, "the target environment's replicas");
            }
            _ => {}
        }
    }
    let text = render_text(&plan);
    assert!(text.contains("promoted from staging-7 (staging)"), "{text}");
    insta::assert_json_snapshot!("promotion", plan);
    insta::assert_snapshot!("promotion_text", render_text(&plan));
    insta::assert_snapshot!("promotion_dot", render_dot(&plan));
}

#[test]
fn a_promotion_to_an_environment_needing_approval_waits_for_it() {
    let spec = guarded_spec();
    let plan = promote_plan(&spec, None, &staging_release()).expect("promotion plans");
    assert_well_formed(&plan);
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids[..3], ["scan", "sign", "verify"]);
    let approval = plan.step("approval").expect("an approval step");
    assert_eq!(approval.depends_on, ["health-check-0", "health-check-1"]);
    assert!(matches!(
        &approval.action,
        Action::Approval {
            image: ImageSource::Pinned { .. },
            ..
        }
    ));
    insta::assert_snapshot!("promotion_with_approval_text", render_text(&plan));
}

#[test]
fn promotion_mistakes_are_refused() {
    let spec = spec();
    // A release of the environment itself.
    let same_env = release("production-6", "v1");
    let err = promote_plan(&spec, None, &same_env).unwrap_err();
    assert!(
        err.to_string()
            .contains("already a release of `production`"),
        "{err}"
    );
    // A release of another app.
    let mut other_app = staging_release();
    other_app.app = "other".to_string();
    let err = promote_plan(&spec, None, &other_app).unwrap_err();
    assert!(err.to_string().contains("belongs to app other"), "{err}");
    // A release without a pinned image.
    let mut no_image = staging_release();
    no_image.image.id.clear();
    let err = promote_plan(&spec, None, &no_image).unwrap_err();
    assert!(err.to_string().contains("no pinned image id"), "{err}");
    // A rollback strategy cannot promote.
    let strategy = builtin("rollback");
    let source = staging_release();
    let err = plan(&PlanInput {
        kind: PlanKind::Promote { source: &source },
        ..deploy_input(&spec, &strategy, None, "production-8")
    })
    .unwrap_err();
    assert!(err.to_string().contains("adopt"), "{err}");
}

#[test]
fn a_promotion_plan_differs_from_a_deploy_and_names_its_source() {
    let spec = spec();
    let a = promote_plan(&spec, None, &staging_release()).unwrap();
    let mut other = staging_release();
    other.id = "staging-8".to_string();
    let b = promote_plan(&spec, None, &other).unwrap();
    assert_ne!(a.digest, b.digest);
    let back: Plan = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back, a);
}
