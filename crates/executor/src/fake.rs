//! In-memory providers and test plans, for tests of the executor and of the crates that
//! drive it (server, cli, integration). The fake keeps a world (images, instances, routes)
//! behind a mutex and counts every side effect so tests can check idempotency.
//! [`FakeSupply`] scans, signs and verifies in memory and can be told to fail each of them.
//!
//! Plans come from the real planner ([`planned_deploy`], [`planned_rollback`], …) with a
//! spec made for the fakes ([`spec_for`]), so tests run what the control plane would run.
//! The hand-built [`deploy_plan`] and [`deploy_plan_with_approval`] remain only for the
//! server's UI tests, which name releases apart from deployments; new tests use the
//! planned ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cutover_model::{
    json_digest, labels, Action, ApprovalSpec, BuildSpec, Compute, ContainerSpec, DeploymentKind,
    Diagnosis, DrainReport, GateSpec, HealthProbe, HealthSpec, ImageBuilder, ImageInfo,
    ImageSource, Instance, InstanceSpec, InstanceState, LocalImage, Plan, Probe, ProviderError,
    Providers, Release, RestoreRoute, Route, ScanOutcome, SignRequest, Spec, Step, StepKind,
    SupplyChain, SupplySpec, Traffic, PLAN_FORMAT,
};
use cutover_planner::{PlanInput, PlanKind};

/// How the fake health probe answers for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeHealth {
    Healthy,
    Unhealthy(String),
    /// The instance exits (crash loop) as soon as it is inspected.
    CrashLoop,
}

/// Everything the fake providers hold.
#[derive(Debug, Default)]
pub struct FakeWorld {
    pub images: BTreeMap<String, ImageInfo>,
    pub instances: BTreeMap<String, Instance>,
    pub routes: BTreeMap<String, Route>,
    /// Instances created (not found again) per name.
    pub created: BTreeMap<String, u32>,
    /// Images actually built per tag.
    pub built: BTreeMap<String, u32>,
    /// Every route set, in order.
    pub route_changes: Vec<Route>,
    /// Health answers by instance name, or by release (checked second).
    pub health: BTreeMap<String, FakeHealth>,
    pub drains: u32,
    /// What `diagnose` answers, by instance name or by release (checked second).
    pub diagnoses: BTreeMap<String, Diagnosis>,
    next_port: u16,
}

/// Fake image builder, compute, health probe and traffic sharing one [`FakeWorld`], plus a
/// [`FakeSupply`].
#[derive(Debug, Clone, Default)]
pub struct FakeProviders {
    world: Arc<Mutex<FakeWorld>>,
    supply: FakeSupply,
}

impl FakeProviders {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn world(&self) -> MutexGuard<'_, FakeWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn providers(&self) -> Providers {
        Providers {
            images: Arc::new(self.clone()),
            compute: Arc::new(self.clone()),
            health: Arc::new(self.clone()),
            traffic: Arc::new(self.clone()),
            supply: Some(Arc::new(self.supply.clone())),
            preflight: None,
        }
    }

    /// The supply chain given to executors by [`FakeProviders::providers`].
    pub fn supply(&self) -> &FakeSupply {
        &self.supply
    }

    /// Make probes of `name_or_release` answer `health`.
    pub fn set_health(&self, name_or_release: &str, health: FakeHealth) {
        self.world()
            .health
            .insert(name_or_release.to_string(), health);
    }

    /// Make `diagnose` of `name_or_release` answer `diagnosis`.
    pub fn set_diagnosis(&self, name_or_release: &str, diagnosis: Diagnosis) {
        self.world()
            .diagnoses
            .insert(name_or_release.to_string(), diagnosis);
    }

    /// Names of the instances of `release`.
    pub fn instances_of(&self, release: &str) -> Vec<String> {
        self.world()
            .instances
            .values()
            .filter(|i| i.release == release)
            .map(|i| i.name.clone())
            .collect()
    }

    pub fn route(&self, env: &str) -> Option<Route> {
        self.world().routes.get(env).cloned()
    }
}

#[async_trait]
impl ImageBuilder for FakeProviders {
    async fn build(
        &self,
        tag: &str,
        _source: &BuildSpec,
        _labels: &BTreeMap<String, String>,
    ) -> Result<ImageInfo, ProviderError> {
        let mut w = self.world();
        if let Some(image) = w.images.get(tag) {
            return Ok(image.clone());
        }
        let image = ImageInfo {
            id: cutover_model::sha256_digest(tag.as_bytes()),
            tag: tag.to_string(),
            warning: None,
        };
        w.images.insert(tag.to_string(), image.clone());
        *w.built.entry(tag.to_string()).or_default() += 1;
        Ok(image)
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, ProviderError> {
        let w = self.world();
        Ok(w.images
            .values()
            .find(|i| i.id == reference || i.tag == reference)
            .cloned())
    }

    async fn list_images(&self, app: &str) -> Result<Vec<LocalImage>, ProviderError> {
        let w = self.world();
        let prefix = format!("cutover/{app}:");
        let mut out: Vec<LocalImage> = Vec::new();
        for image in w.images.values() {
            let Some(release) = image.tag.strip_prefix(&prefix) else {
                continue;
            };
            match out.iter_mut().find(|l| l.id == image.id) {
                Some(line) => line.tags.push(image.tag.clone()),
                None => out.push(LocalImage {
                    id: image.id.clone(),
                    tags: vec![image.tag.clone()],
                    size_bytes: FAKE_IMAGE_BYTES,
                    env: release.rsplit_once('-').map(|(env, _)| env.to_string()),
                    release: Some(release.to_string()),
                }),
            }
        }
        Ok(out)
    }

    async fn remove_image(&self, id: &str) -> Result<(), ProviderError> {
        let mut w = self.world();
        if let Some(user) = w.instances.values().find(|i| i.image_id == id) {
            return Err(ProviderError::permanent(format!(
                "cannot remove image {id}: container {} uses it; remove the container first",
                user.name
            )));
        }
        w.images.retain(|_, image| image.id != id);
        Ok(())
    }
}

/// What every fake image weighs.
pub const FAKE_IMAGE_BYTES: u64 = 1 << 20;

#[async_trait]
impl Compute for FakeProviders {
    async fn provision(
        &self,
        spec: &InstanceSpec,
        image: &ImageInfo,
    ) -> Result<Instance, ProviderError> {
        let mut w = self.world();
        if let Some(existing) = w.instances.get_mut(&spec.name) {
            existing.state = InstanceState::Running;
            return Ok(existing.clone());
        }
        w.next_port += 1;
        let instance = Instance {
            name: spec.name.clone(),
            id: format!("c-{}", spec.name),
            app: spec.app.clone(),
            env: spec.env.clone(),
            release: spec.release.clone(),
            deployment_id: spec.deployment_id.clone(),
            replica: spec.replica,
            addr: format!("127.0.0.1:{}", 20000 + w.next_port),
            image_id: image.id.clone(),
            state: InstanceState::Running,
            restart_count: 0,
        };
        w.instances.insert(spec.name.clone(), instance.clone());
        *w.created.entry(spec.name.clone()).or_default() += 1;
        Ok(instance)
    }

    async fn inspect(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        let mut w = self.world();
        let crash = {
            let Some(i) = w.instances.get(name) else {
                return Ok(None);
            };
            w.health.get(name).or_else(|| w.health.get(&i.release)) == Some(&FakeHealth::CrashLoop)
        };
        let instance = w.instances.get_mut(name).expect("looked up above");
        if crash {
            instance.state = InstanceState::Restarting;
            instance.restart_count += 1;
        }
        Ok(Some(instance.clone()))
    }

    async fn remove(&self, name: &str) -> Result<(), ProviderError> {
        self.world().instances.remove(name);
        Ok(())
    }

    async fn list(&self, app: &str, env: Option<&str>) -> Result<Vec<Instance>, ProviderError> {
        Ok(self
            .world()
            .instances
            .values()
            .filter(|i| i.app == app && env.is_none_or(|e| i.env == e))
            .cloned()
            .collect())
    }

    async fn diagnose(&self, instance: &Instance) -> Option<Diagnosis> {
        let w = self.world();
        w.diagnoses
            .get(&instance.name)
            .or_else(|| w.diagnoses.get(&instance.release))
            .cloned()
    }
}

#[async_trait]
impl HealthProbe for FakeProviders {
    async fn probe(&self, instance: &Instance, _path: &str, _timeout: Duration) -> Probe {
        let w = self.world();
        match w
            .health
            .get(&instance.name)
            .or_else(|| w.health.get(&instance.release))
        {
            Some(FakeHealth::Unhealthy(reason)) => Probe::Unhealthy(reason.clone()),
            _ => Probe::Healthy,
        }
    }
}

#[async_trait]
impl Traffic for FakeProviders {
    async fn route(&self, env: &str) -> Result<Option<Route>, ProviderError> {
        Ok(self.world().routes.get(env).cloned())
    }

    async fn set_route(&self, route: &Route) -> Result<Option<Route>, ProviderError> {
        let mut w = self.world();
        if w.routes.get(&route.env) == Some(route) {
            return Ok(Some(route.clone()));
        }
        w.route_changes.push(route.clone());
        Ok(w.routes.insert(route.env.clone(), route.clone()))
    }

    async fn remove_route(&self, env: &str) -> Result<Option<Route>, ProviderError> {
        Ok(self.world().routes.remove(env))
    }

    async fn drain(
        &self,
        _listen: &str,
        _release: &str,
        _timeout: Duration,
    ) -> Result<DrainReport, ProviderError> {
        self.world().drains += 1;
        Ok(DrainReport { in_flight_left: 0 })
    }
}

// ----- supply chain -----

/// What [`FakeSupply`] holds and how it behaves.
#[derive(Debug, Default)]
pub struct FakeSupplyState {
    /// When set, every scan fails the gate with these reasons.
    pub gate_failure: Option<Vec<String>>,
    /// When set, every verification is refused with this message.
    pub verify_refusal: Option<String>,
    /// When set, every signature fails with this error.
    pub sign_error: Option<ProviderError>,
    /// Key id of each signed image, by image id.
    pub signed: BTreeMap<String, String>,
    /// Calls per image id.
    pub scans: BTreeMap<String, u32>,
    pub signs: BTreeMap<String, u32>,
    pub verifies: BTreeMap<String, u32>,
    /// The last sign request per image id.
    pub sign_requests: BTreeMap<String, SignRequest>,
    /// What `evidence` answers for an image id (else what the fake's own calls recorded).
    pub evidence: BTreeMap<String, cutover_model::SupplyEvidence>,
}

/// Key id the fake signs with.
pub const FAKE_KEY_ID: &str = "fake-key-1";

/// In-memory supply chain: scans pass, signatures are remembered per image, verification
/// accepts signed images and refuses unsigned ones (fails closed).
#[derive(Debug, Clone, Default)]
pub struct FakeSupply {
    state: Arc<Mutex<FakeSupplyState>>,
}

impl FakeSupply {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> MutexGuard<'_, FakeSupplyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make every scan fail the gate with `reasons`.
    pub fn fail_gate(&self, reasons: &[&str]) {
        self.state().gate_failure = Some(reasons.iter().map(|r| r.to_string()).collect());
    }

    /// Make every verification fail with `message`.
    pub fn refuse_verify(&self, message: &str) {
        self.state().verify_refusal = Some(message.to_string());
    }

    /// Make every signature fail with `error`.
    pub fn fail_sign(&self, error: ProviderError) {
        self.state().sign_error = Some(error);
    }
}

#[async_trait]
impl SupplyChain for FakeSupply {
    async fn scan(
        &self,
        image: &ImageInfo,
        _app: &str,
        env: &str,
        gate: &GateSpec,
    ) -> Result<ScanOutcome, ProviderError> {
        let mut s = self.state();
        *s.scans.entry(image.id.clone()).or_default() += 1;
        Ok(match &s.gate_failure {
            Some(reasons) => ScanOutcome {
                passed: false,
                summary: format!(
                    "{} findings at or above {} in {env}: failed",
                    reasons.len(),
                    gate.fail_on
                ),
                reasons: reasons.clone(),
            },
            None => ScanOutcome {
                passed: true,
                summary: "12 packages, 0 vulnerabilities, 0 secrets: passed".to_string(),
                reasons: Vec::new(),
            },
        })
    }

    async fn sign(
        &self,
        image: &ImageInfo,
        request: &SignRequest,
    ) -> Result<String, ProviderError> {
        let mut s = self.state();
        if let Some(e) = &s.sign_error {
            return Err(e.clone());
        }
        *s.signs.entry(image.id.clone()).or_default() += 1;
        s.sign_requests.insert(image.id.clone(), request.clone());
        s.signed.insert(image.id.clone(), FAKE_KEY_ID.to_string());
        Ok(FAKE_KEY_ID.to_string())
    }

    async fn verify(
        &self,
        image: &ImageInfo,
        env: &str,
        _trusted_keys: &[std::path::PathBuf],
    ) -> Result<Vec<String>, ProviderError> {
        let mut s = self.state();
        *s.verifies.entry(image.id.clone()).or_default() += 1;
        if let Some(message) = &s.verify_refusal {
            return Err(ProviderError::permanent(message.clone()));
        }
        match s.signed.get(&image.id) {
            Some(key) => Ok(vec![key.clone()]),
            None => Err(ProviderError::permanent(format!(
                "image {} has no signature trusted in {env}; sign it before deploying",
                image.id
            ))),
        }
    }

    async fn evidence(
        &self,
        image: &ImageInfo,
        _env: &str,
    ) -> Result<cutover_model::SupplyEvidence, ProviderError> {
        let s = self.state();
        if let Some(evidence) = s.evidence.get(&image.id) {
            return Ok(evidence.clone());
        }
        let scan = s
            .scans
            .contains_key(&image.id)
            .then(|| cutover_model::ScanEvidence {
                passed: s.gate_failure.is_none(),
                reasons: s.gate_failure.clone().unwrap_or_default(),
                fail_on: "critical".to_string(),
                fail_on_secrets: true,
                findings: Some(Vec::new()),
                ..Default::default()
            });
        let provenance = s
            .signed
            .get(&image.id)
            .map(|key| cutover_model::ProvenanceEvidence {
                builder_id: "fake-builder".to_string(),
                source_path: s
                    .sign_requests
                    .get(&image.id)
                    .map(|r| r.source.display().to_string()),
                key_ids: vec![key.clone()],
                ..Default::default()
            });
        Ok(cutover_model::SupplyEvidence { scan, provenance })
    }
}

/// Application name used by the test plans.
pub const APP: &str = "hello";
/// Listen address used by the test plans.
pub const LISTEN: &str = "127.0.0.1:18080";

/// Fast health checks for tests.
pub fn fast_health() -> HealthSpec {
    HealthSpec {
        path: "/healthz".to_string(),
        interval: Duration::from_millis(1),
        timeout: Duration::from_millis(50),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        deadline: Duration::from_secs(5),
    }
}

// ----- plans made by the planner -----

/// Who requests the test plans.
pub const REQUESTED_BY: &str = "tester";

/// A spec for the fakes with the one environment `env`: app [`APP`] built with cargo,
/// listening on [`LISTEN`], `replicas` instances, [`fast_health`] checks, a 100 ms drain,
/// blue kept warm 5 minutes, and an approval gate when `approval` is given.
pub fn spec_for(env: &str, replicas: u32, approval: Option<ApprovalSpec>) -> Spec {
    let mut environment = cutover_model::EnvironmentSpec::with_listen(LISTEN);
    environment.replicas = replicas;
    environment.drain_timeout = Duration::from_millis(100);
    environment.retire_after = Duration::from_secs(300);
    if let Some(gate) = approval {
        environment.approval = true;
        environment.approvals = gate;
    }
    Spec {
        app: APP.to_string(),
        strategy: "blue-green".to_string(),
        base_dir: "/src/hello".into(),
        build: BuildSpec::Cargo {
            manifest: "/src/hello/Cargo.toml".into(),
            bin: APP.to_string(),
            profile: "release".to_string(),
        },
        container: ContainerSpec::default(),
        health: fast_health(),
        supply: SupplySpec::default(),
        environments: BTreeMap::from([(env.to_string(), environment)]),
    }
}

/// The shipped strategy `name`, parsed.
fn builtin(name: &str) -> cutover_model::Strategy {
    let text = cutover_planner::builtin_strategy(name)
        .unwrap_or_else(|| panic!("no built-in strategy {name}"));
    cutover_planner::parse_strategy(text, name)
        .unwrap_or_else(|e| panic!("built-in strategy {name}: {e}"))
}

/// The blue-green strategy with its one traffic shift replaced by one shift per weight
/// (`shift-traffic-0`, `shift-traffic-1`, …), each after the one before.
fn canary_strategy(weights: &[u8]) -> cutover_model::Strategy {
    let mut text = String::from("name = \"canary\"\n");
    let mut step = |id: &str, kind: &str, after: &[&str], extra: &str| {
        let after: Vec<String> = after.iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!(
            "[[step]]\nid = \"{id}\"\nkind = \"{kind}\"\nafter = [{}]\n{extra}",
            after.join(", ")
        ));
    };
    step("build", "build", &[], "");
    step("scan", "scan", &["build"], "");
    step("sign", "sign", &["scan"], "");
    step("verify", "verify", &["sign"], "");
    step(
        "provision",
        "provision",
        &["verify"],
        "per_replica = true\n",
    );
    step(
        "health-check",
        "health-check",
        &["provision"],
        "per_replica = true\n",
    );
    let mut previous = "health-check".to_string();
    for (n, weight) in weights.iter().enumerate() {
        let id = format!("shift-traffic-{n}");
        step(
            &id,
            "shift-traffic",
            &[&previous],
            &format!("weight = {weight}\n"),
        );
        previous = id;
    }
    step("drain", "drain", &[&previous], "");
    step("retire", "retire", &["drain"], "");
    step("record", "record", &[&previous], "");
    cutover_planner::parse_strategy(&text, "canary")
        .unwrap_or_else(|e| panic!("canary strategy with weights {weights:?}: {e}"))
}

fn planned(
    spec: &Spec,
    strategy: &cutover_model::Strategy,
    deployment: &str,
    current: Option<&Release>,
    kind: PlanKind<'_>,
) -> Plan {
    planned_over(spec, strategy, deployment, current, None, kind)
}

/// As [`planned`], with the live route the caller found (what the shift's undo restores).
fn planned_over(
    spec: &Spec,
    strategy: &cutover_model::Strategy,
    deployment: &str,
    current: Option<&Release>,
    current_route: Option<&Route>,
    kind: PlanKind<'_>,
) -> Plan {
    let env = spec
        .environments
        .keys()
        .next()
        .expect("spec_for makes one environment");
    cutover_planner::plan(&PlanInput {
        spec,
        env,
        strategy,
        deployment_id: deployment,
        requested_by: REQUESTED_BY,
        created_at_ms: cutover_model::now_ms(),
        current,
        current_route,
        kind,
    })
    .unwrap_or_else(|e| panic!("the planner refused the test plan {deployment}: {e}"))
}

/// The planner's blue-green deploy of release `deployment` (the planner names a deploy's
/// release after its deployment) over `current`, with `replicas` instances.
pub fn planned_deploy(
    deployment: &str,
    env: &str,
    current: Option<&Release>,
    replicas: u32,
) -> Plan {
    planned_deploy_of(&spec_for(env, replicas, None), deployment, current)
}

/// The planner's blue-green deploy of `spec` (one environment, e.g. a [`spec_for`] with
/// other health settings) over `current`.
pub fn planned_deploy_of(spec: &Spec, deployment: &str, current: Option<&Release>) -> Plan {
    planned(
        spec,
        &builtin("blue-green"),
        deployment,
        current,
        PlanKind::Deploy,
    )
}

/// As [`planned_deploy`], over the live route `route` (recorded in the plan: the shift's
/// undo restores it).
pub fn planned_deploy_routed(
    deployment: &str,
    env: &str,
    current: Option<&Release>,
    replicas: u32,
    route: Option<&Route>,
) -> Plan {
    planned_over(
        &spec_for(env, replicas, None),
        &builtin("blue-green"),
        deployment,
        current,
        route,
        PlanKind::Deploy,
    )
}

/// As [`planned_deploy`], in an environment that requires the approval `gate`.
pub fn planned_deploy_with_approval(
    deployment: &str,
    env: &str,
    current: Option<&Release>,
    replicas: u32,
    gate: ApprovalSpec,
) -> Plan {
    let spec = spec_for(env, replicas, Some(gate));
    planned(
        &spec,
        &builtin("blue-green"),
        deployment,
        current,
        PlanKind::Deploy,
    )
}

/// As [`planned_deploy_routed`], moving traffic in steps (e.g. `[10, 100]`: a canary at
/// 10 %, then all of it); blue keeps the rest of the recorded `route`.
pub fn planned_canary(
    deployment: &str,
    env: &str,
    current: Option<&Release>,
    route: Option<&Route>,
    replicas: u32,
    weights: &[u8],
) -> Plan {
    let spec = spec_for(env, replicas, None);
    planned_over(
        &spec,
        &canary_strategy(weights),
        deployment,
        current,
        route,
        PlanKind::Deploy,
    )
}

/// The planner's rollback to `target` from `current`: warm (adopt) when `running` holds
/// every instance of the target, else cold (provision from the pinned image).
pub fn planned_rollback(
    deployment: &str,
    env: &str,
    target: &Release,
    current: Option<&Release>,
    running: &[Instance],
) -> Plan {
    let spec = spec_for(env, target.replicas, None);
    planned(
        &spec,
        &builtin("rollback"),
        deployment,
        current,
        PlanKind::Rollback {
            target,
            warm_instances: running,
        },
    )
}

/// As [`planned_rollback`] in a protected environment: the planner adds a rescan of the
/// target's pinned image before its verify.
pub fn planned_protected_rollback(
    deployment: &str,
    env: &str,
    target: &Release,
    current: Option<&Release>,
    running: &[Instance],
) -> Plan {
    let mut spec = spec_for(env, target.replicas, None);
    if let Some(environment) = spec.environments.get_mut(env) {
        environment.protected = true;
    }
    planned(
        &spec,
        &builtin("rollback"),
        deployment,
        current,
        PlanKind::Rollback {
            target,
            warm_instances: running,
        },
    )
}

/// Name the planner gives replica `replica` of a deploy's release.
pub fn instance_name(release: &str, replica: u32) -> String {
    format!("cutover-{APP}-{release}-{replica}")
}

impl FakeProviders {
    /// The instances of `release` in the fake world, as a caller of the planner finds them
    /// before planning a rollback.
    pub fn running_instances_of(&self, release: &str) -> Vec<Instance> {
        self.world()
            .instances
            .values()
            .filter(|i| i.release == release && i.state == InstanceState::Running)
            .cloned()
            .collect()
    }
}

// ----- hand-built plans (the server's UI tests only) -----

/// Name of replica `replica` of `release` in `env`, in hand-built plans.
fn hand_built_instance_name(env: &str, release: &str, replica: u32) -> String {
    format!("cutover-{APP}-{env}-{release}-{replica}")
}

fn step(deployment: &str, id: &str, kind: StepKind, deps: Vec<String>, action: Action) -> Step {
    Step {
        id: id.to_string(),
        kind,
        depends_on: deps,
        idempotency_key: format!("{deployment}/{id}"),
        action,
    }
}

fn instance_spec(
    deployment: &str,
    env: &str,
    release: &str,
    replica: u32,
    image: ImageSource,
    name: String,
) -> InstanceSpec {
    let labels = BTreeMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::APP.to_string(), APP.to_string()),
        (labels::ENV.to_string(), env.to_string()),
        (labels::RELEASE.to_string(), release.to_string()),
        (labels::DEPLOYMENT.to_string(), deployment.to_string()),
        (labels::STEP.to_string(), format!("provision-{replica}")),
        (labels::REPLICA.to_string(), replica.to_string()),
    ]);
    InstanceSpec {
        name,
        app: APP.to_string(),
        env: env.to_string(),
        release: release.to_string(),
        deployment_id: deployment.to_string(),
        replica,
        image,
        container: ContainerSpec::default(),
        labels,
    }
}

/// Where traffic goes back to: the release being replaced and its instance names.
#[derive(Debug, Clone)]
pub struct Blue {
    pub release: String,
    pub instances: Vec<String>,
    /// What the plan's shifts restore on undo; `Unrecorded` (as in plans saved before the
    /// planner recorded it) unless [`Blue::routed`] says.
    pub restore: RestoreRoute,
}

impl Blue {
    pub fn of(release: &Release) -> Self {
        Blue {
            release: release.id.clone(),
            instances: release.instances.clone(),
            restore: RestoreRoute::Unrecorded,
        }
    }

    /// Record `route` (the environment's route when planning) in the plan, as the planner
    /// does.
    pub fn routed(mut self, route: Option<Route>) -> Self {
        self.restore = RestoreRoute::of(route.as_ref());
        self
    }
}

#[allow(clippy::too_many_arguments)]
fn tail_steps(
    deployment: &str,
    release: &str,
    instance_steps: Vec<String>,
    health_steps: Vec<String>,
    blue: Option<&Blue>,
    image: ImageSource,
    replicas: u32,
    weights: &[u8],
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut deps = health_steps;
    for (n, weight) in weights.iter().enumerate() {
        let id = if weights.len() == 1 {
            "shift-traffic".to_string()
        } else {
            format!("shift-traffic-{n}")
        };
        steps.push(step(
            deployment,
            &id,
            StepKind::ShiftTraffic,
            deps,
            Action::ShiftTraffic {
                listen: LISTEN.to_string(),
                release: release.to_string(),
                instance_steps: instance_steps.clone(),
                weight: *weight,
                response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
                restore: blue.map_or(RestoreRoute::NoRoute, |b| b.restore.clone()),
            },
        ));
        deps = vec![id];
    }
    let shifted = deps;
    steps.push(step(
        deployment,
        "drain",
        StepKind::Drain,
        shifted.clone(),
        Action::Drain {
            listen: LISTEN.to_string(),
            release: blue.map(|b| b.release.clone()),
            timeout: Duration::from_millis(100),
        },
    ));
    steps.push(step(
        deployment,
        "record",
        StepKind::Record,
        shifted,
        Action::Record {
            release: release.to_string(),
            image,
            instance_steps,
            container: ContainerSpec::default(),
            health: fast_health(),
            replicas,
        },
    ));
    steps.push(step(
        deployment,
        "retire",
        StepKind::Retire,
        vec!["drain".to_string(), "record".to_string()],
        Action::Retire {
            release: blue.map(|b| b.release.clone()),
            instances: blue.map(|b| b.instances.clone()).unwrap_or_default(),
            after: Duration::from_secs(300),
        },
    ));
    steps
}

fn finish_plan(
    deployment: &str,
    env: &str,
    kind: DeploymentKind,
    release: &str,
    blue: Option<&Blue>,
    steps: Vec<Step>,
) -> Plan {
    let mut plan = Plan {
        format: PLAN_FORMAT,
        deployment_id: deployment.to_string(),
        app: APP.to_string(),
        env: env.to_string(),
        kind,
        release_id: release.to_string(),
        previous_release: blue.map(|b| b.release.clone()),
        strategy: "blue-green".to_string(),
        spec_digest: "sha256:spec".to_string(),
        requested_by: "tester".to_string(),
        created_at_ms: cutover_model::now_ms(),
        steps,
        digest: String::new(),
    };
    plan.digest = json_digest(&plan);
    plan
}

/// A blue/green deploy that waits at an approval gate (after the health checks, before
/// traffic moves).
pub fn deploy_plan_with_approval(
    deployment: &str,
    env: &str,
    release: &str,
    blue: Option<&Blue>,
    replicas: u32,
    gate: ApprovalSpec,
) -> Plan {
    deploy_plan_full(deployment, env, release, blue, replicas, &[100], Some(gate))
}

/// Build, scan, sign, verify, then per replica provision and health check, the optional
/// approval, then shift, drain, record and retire.
fn deploy_plan_full(
    deployment: &str,
    env: &str,
    release: &str,
    blue: Option<&Blue>,
    replicas: u32,
    weights: &[u8],
    approval: Option<ApprovalSpec>,
) -> Plan {
    let tag = format!("cutover/{APP}:{env}-{release}");
    let built = || ImageSource::Step {
        step: "build".to_string(),
    };
    let mut steps = vec![step(
        deployment,
        "build",
        StepKind::Build,
        vec![],
        Action::Build {
            tag: tag.clone(),
            source: BuildSpec::Cargo {
                manifest: "/src/hello/Cargo.toml".into(),
                bin: APP.to_string(),
                profile: "release".to_string(),
            },
            labels: BTreeMap::from([(labels::DEPLOYMENT.to_string(), deployment.to_string())]),
        },
    )];
    steps.push(step(
        deployment,
        "scan",
        StepKind::Scan,
        vec!["build".to_string()],
        Action::Scan {
            image: built(),
            app: APP.to_string(),
            env: env.to_string(),
            gate: GateSpec::default(),
        },
    ));
    steps.push(step(
        deployment,
        "sign",
        StepKind::Sign,
        vec!["scan".to_string()],
        Action::Sign {
            image: built(),
            app: APP.to_string(),
            env: env.to_string(),
            key: None,
            spec_digest: "sha256:spec".to_string(),
            source: "/src/hello".into(),
            invoked_by: None,
        },
    ));
    steps.push(step(
        deployment,
        "verify",
        StepKind::Verify,
        vec!["sign".to_string()],
        Action::Verify {
            image: built(),
            env: env.to_string(),
            trusted_keys: Vec::new(),
        },
    ));
    let mut instance_steps = Vec::new();
    let mut health_steps = Vec::new();
    for r in 0..replicas {
        let pid = format!("provision-{r}");
        let hid = format!("health-check-{r}");
        steps.push(step(
            deployment,
            &pid,
            StepKind::Provision,
            vec!["verify".to_string()],
            Action::Provision {
                instance: instance_spec(
                    deployment,
                    env,
                    release,
                    r,
                    built(),
                    hand_built_instance_name(env, release, r),
                ),
            },
        ));
        steps.push(step(
            deployment,
            &hid,
            StepKind::HealthCheck,
            vec![pid.clone()],
            Action::HealthCheck {
                instance_step: pid.clone(),
                health: fast_health(),
            },
        ));
        instance_steps.push(pid);
        health_steps.push(hid);
    }
    // As in plans/blue-green.toml: approvers see a release that runs and is healthy.
    if let Some(gate) = approval {
        steps.push(step(
            deployment,
            "approval",
            StepKind::Approval,
            health_steps,
            Action::Approval {
                image: built(),
                gate,
            },
        ));
        health_steps = vec!["approval".to_string()];
    }
    steps.extend(tail_steps(
        deployment,
        release,
        instance_steps,
        health_steps,
        blue,
        built(),
        replicas,
        weights,
    ));
    finish_plan(
        deployment,
        env,
        DeploymentKind::Deploy,
        release,
        blue,
        steps,
    )
}

/// A blue/green deploy of a new `release` with `replicas` instances.
pub fn deploy_plan(
    deployment: &str,
    env: &str,
    release: &str,
    blue: Option<&Blue>,
    replicas: u32,
) -> Plan {
    deploy_plan_full(deployment, env, release, blue, replicas, &[100], None)
}
