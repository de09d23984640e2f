//! Expanding a strategy into a concrete plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cutover_model::{
    json_digest, labels, Action, BuildSpec, ContainerSpec, DeploymentKind, EnvironmentSpec,
    GateSpec, HealthSpec, ImageSource, Instance, InstanceSpec, InstanceState, Plan, Release,
    RestoreRoute, Step, StepKind, Strategy, StrategyStep, PLAN_FORMAT,
};

use crate::strategy::{ancestors, quote_list, validate};
use crate::{PlanError, PlanInput, PlanKind};

/// Health checks of adopted (warm) instances: one success is enough, probed at most this
/// far apart, so a warm rollback takes well under a second.
const WARM_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// Make the plan for `input`. Pure and deterministic: the same input gives a
/// byte-identical plan and digest.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let strategy = input.strategy;
    let file = format!("strategy {}", strategy.name);
    validate(strategy, &file)?;
    let spec = input.spec;
    let env = spec
        .environments
        .get(input.env)
        .ok_or_else(|| PlanError::UnknownEnvironment {
            env: input.env.to_string(),
            known: spec
                .environments
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    if input.deployment_id.is_empty() {
        return Err(invalid(
            "the deployment id is empty: pass an id like `production-7`",
        ));
    }

    let setup = Setup::new(input, &file)?;
    let rescanning;
    let strategy = if env.protected
        && matches!(
            setup.kind,
            DeploymentKind::Rollback { .. } | DeploymentKind::Rotate { .. }
        ) {
        rescanning = with_rescan(strategy, &file)?;
        &rescanning
    } else {
        strategy
    };
    let mut setup = setup;
    let mut effective = effective_strategy(strategy, &setup.dropped);
    validate(&effective, &file)?;
    require_kinds(&effective, &setup.required, &file, setup.purpose)?;
    if matches!(spec.build, BuildSpec::Image { .. }) {
        pull_instead_of_build(&mut effective, &mut setup);
    }
    if needs_approval(env) && setup.kind.creates_release() {
        require_approval(&effective, &file, input.env)?;
    }

    let nodes = expand(input, &setup, &effective, env)?;
    let steps = stable_topological_order(nodes, input.deployment_id);

    let mut plan = Plan {
        format: PLAN_FORMAT,
        deployment_id: input.deployment_id.to_string(),
        app: spec.app.clone(),
        env: input.env.to_string(),
        kind: setup.kind.clone(),
        release_id: setup.release_id.clone(),
        previous_release: input.current.map(|r| r.id.clone()),
        strategy: strategy.name.clone(),
        spec_digest: json_digest(spec),
        requested_by: input.requested_by.to_string(),
        created_at_ms: input.created_at_ms,
        steps,
        digest: String::new(),
    };
    plan.digest = json_digest(&plan);
    Ok(plan)
}

fn invalid(message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        message: message.into(),
    }
}

/// A spec naming a prebuilt image pulls it instead of building: the build step is named
/// `pull` (unless the strategy uses that id for another step), and every step after it and
/// every image taken from it follow the new name.
fn pull_instead_of_build(strategy: &mut Strategy, setup: &mut Setup) {
    let Some(build) = strategy.steps.iter().find(|s| s.kind == StepKind::Build) else {
        return;
    };
    let old = build.id.clone();
    if old == PULL_STEP || strategy.steps.iter().any(|s| s.id == PULL_STEP) {
        return;
    }
    for step in &mut strategy.steps {
        if step.id == old {
            step.id = PULL_STEP.to_string();
        }
        for after in &mut step.after {
            if *after == old {
                *after = PULL_STEP.to_string();
            }
        }
    }
    if setup.image == (ImageSource::Step { step: old }) {
        setup.image = ImageSource::Step {
            step: PULL_STEP.to_string(),
        };
    }
}

/// The id of the step that pulls a prebuilt image.
const PULL_STEP: &str = "pull";

/// What differs between a deploy and a rollback, decided before expansion.
struct Setup<'a> {
    kind: DeploymentKind,
    purpose: &'static str,
    release_id: String,
    replicas: u32,
    /// Image of every instance (and of the record).
    image: ImageSource,
    container: ContainerSpec,
    /// Settings of the health-check steps.
    check_health: HealthSpec,
    /// Settings recorded with the release.
    record_health: HealthSpec,
    /// Instances to adopt, by replica (warm rollback).
    adopt: Vec<&'a Instance>,
    /// Suffix of new instance names (cold rollback), so they never clash with old ones.
    name_suffix: Option<&'a str>,
    /// Template kinds left out of this plan.
    dropped: BTreeSet<StepKind>,
    required: Vec<StepKind>,
}

impl<'a> Setup<'a> {
    fn new(input: &PlanInput<'a>, file: &str) -> Result<Setup<'a>, PlanError> {
        let spec = input.spec;
        let strategy = input.strategy;
        let has = |kind: StepKind| strategy.steps.iter().any(|s| s.kind == kind);
        match input.kind {
            PlanKind::Deploy => {
                if let Some(step) = strategy.steps.iter().find(|s| s.kind == StepKind::Adopt) {
                    return Err(PlanError::StrategyStep {
                        file: file.to_string(),
                        step: step.id.clone(),
                        message: "adopt steps only belong in rollback strategies: a deploy starts new instances".to_string(),
                    });
                }
                if let Some(current) = input.current {
                    if current.id == input.deployment_id {
                        return Err(invalid(format!(
                            "release `{}` already exists: give the deployment a new id",
                            current.id
                        )));
                    }
                }
                let build_id = strategy
                    .steps
                    .iter()
                    .find(|s| s.kind == StepKind::Build)
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                let env = &spec.environments[input.env];
                let mut dropped = BTreeSet::new();
                if !needs_approval(env) {
                    dropped.insert(StepKind::Approval);
                }
                Ok(Setup {
                    kind: DeploymentKind::Deploy,
                    purpose: "deploy",
                    release_id: input.deployment_id.to_string(),
                    replicas: env.replicas,
                    image: ImageSource::Step { step: build_id },
                    container: spec.container.clone(),
                    check_health: spec.health.clone(),
                    record_health: spec.health.clone(),
                    adopt: Vec::new(),
                    name_suffix: None,
                    dropped,
                    required: vec![
                        StepKind::Build,
                        StepKind::Scan,
                        StepKind::Sign,
                        StepKind::Verify,
                        StepKind::Provision,
                        StepKind::HealthCheck,
                        StepKind::ShiftTraffic,
                        StepKind::Record,
                    ],
                })
            }
            PlanKind::Build { .. } => {
                let build_id = strategy
                    .steps
                    .iter()
                    .find(|s| s.kind == StepKind::Build)
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                // Only what makes and proves the image: nothing runs, nothing is recorded.
                let dropped = strategy
                    .steps
                    .iter()
                    .map(|s| s.kind)
                    .filter(|k| {
                        !matches!(
                            k,
                            StepKind::Build | StepKind::Scan | StepKind::Sign | StepKind::Verify
                        )
                    })
                    .collect();
                Ok(Setup {
                    kind: DeploymentKind::Build,
                    purpose: "build",
                    release_id: input.deployment_id.to_string(),
                    replicas: 0,
                    image: ImageSource::Step { step: build_id },
                    container: spec.container.clone(),
                    check_health: spec.health.clone(),
                    record_health: spec.health.clone(),
                    adopt: Vec::new(),
                    name_suffix: None,
                    dropped,
                    required: vec![
                        StepKind::Build,
                        StepKind::Scan,
                        StepKind::Sign,
                        StepKind::Verify,
                    ],
                })
            }
            PlanKind::Promote { source } => {
                if let Some(step) = strategy.steps.iter().find(|s| s.kind == StepKind::Adopt) {
                    return Err(PlanError::StrategyStep {
                        file: file.to_string(),
                        step: step.id.clone(),
                        message: "adopt steps only belong in rollback strategies: a promotion starts new instances".to_string(),
                    });
                }
                check_promoted(input, source)?;
                let env = &spec.environments[input.env];
                // The deploy strategy without its build: the image exists and is pinned.
                let mut dropped = BTreeSet::from([StepKind::Build]);
                if !needs_approval(env) {
                    dropped.insert(StepKind::Approval);
                }
                Ok(Setup {
                    kind: DeploymentKind::Promote {
                        from_release: source.id.clone(),
                        from_env: source.env.clone(),
                    },
                    purpose: "promote",
                    release_id: input.deployment_id.to_string(),
                    replicas: env.replicas,
                    image: ImageSource::Pinned {
                        id: source.image.id.clone(),
                        tag: source.image.tag.clone(),
                    },
                    container: spec.container.clone(),
                    check_health: spec.health.clone(),
                    record_health: spec.health.clone(),
                    adopt: Vec::new(),
                    name_suffix: None,
                    dropped,
                    required: vec![
                        StepKind::Scan,
                        StepKind::Sign,
                        StepKind::Verify,
                        StepKind::Provision,
                        StepKind::HealthCheck,
                        StepKind::ShiftTraffic,
                        StepKind::Record,
                    ],
                })
            }
            PlanKind::Rollback {
                target,
                warm_instances,
            } => {
                if let Some(step) = strategy.steps.iter().find(|s| s.kind == StepKind::Build) {
                    return Err(PlanError::StrategyStep {
                        file: file.to_string(),
                        step: step.id.clone(),
                        message: "a rollback never builds: use a rollback strategy (e.g. the built-in `rollback`)".to_string(),
                    });
                }
                if let Some(step) = strategy.steps.iter().find(|s| s.kind == StepKind::Sign) {
                    return Err(PlanError::StrategyStep {
                        file: file.to_string(),
                        step: step.id.clone(),
                        message: "a rollback never signs: the release was signed when it was built and `verify` proves it; remove this step".to_string(),
                    });
                }
                check_target(input, target)?;
                let adopt = warm_set(target, warm_instances);
                let warm = adopt.is_some() && has(StepKind::Adopt);
                if !warm && !has(StepKind::Provision) {
                    let running = warm_instances
                        .iter()
                        .filter(|i| i.release == target.id && i.state == InstanceState::Running)
                        .count();
                    return Err(PlanError::Strategy {
                        file: file.to_string(),
                        message: format!(
                            "release `{}` is cold ({running} of {} instances running) and the strategy has no provision step to start it again: add a [[step]] with kind = \"provision\"",
                            target.id, target.replicas
                        ),
                    });
                }
                let mut check_health = target.health.clone();
                let (dropped, instance_kind, adopt) = if warm {
                    check_health.healthy_threshold = 1;
                    check_health.interval = check_health.interval.min(WARM_HEALTH_INTERVAL);
                    (
                        StepKind::Provision,
                        StepKind::Adopt,
                        adopt.unwrap_or_default(),
                    )
                } else {
                    (StepKind::Adopt, StepKind::Provision, Vec::new())
                };
                let mut dropped = BTreeSet::from([dropped]);
                if !needs_approval(&spec.environments[input.env]) {
                    dropped.insert(StepKind::Approval);
                }
                Ok(Setup {
                    kind: DeploymentKind::Rollback {
                        target: target.id.clone(),
                        warm,
                    },
                    purpose: "roll back",
                    release_id: target.id.clone(),
                    replicas: target.replicas,
                    image: ImageSource::Pinned {
                        id: target.image.id.clone(),
                        tag: target.image.tag.clone(),
                    },
                    container: target.container.clone(),
                    check_health,
                    record_health: target.health.clone(),
                    adopt,
                    name_suffix: (!warm).then_some(input.deployment_id),
                    dropped,
                    required: vec![
                        StepKind::Verify,
                        instance_kind,
                        StepKind::HealthCheck,
                        StepKind::ShiftTraffic,
                        StepKind::Record,
                    ],
                })
            }
            PlanKind::Rotate { source } => {
                if let Some(step) = strategy
                    .steps
                    .iter()
                    .find(|s| matches!(s.kind, StepKind::Build | StepKind::Sign))
                {
                    return Err(PlanError::StrategyStep {
                        file: file.to_string(),
                        step: step.id.clone(),
                        message:
                            "a rotation never builds or signs: use the built-in `rollback` strategy"
                                .to_string(),
                    });
                }
                if source.app != spec.app || source.env != input.env {
                    return Err(invalid(format!(
                        "release `{}` belongs to {}/{}, not {}/{}",
                        source.id, source.app, source.env, spec.app, input.env
                    )));
                }
                if source.image.id.is_empty() || source.replicas == 0 {
                    return Err(invalid(format!(
                        "release `{}` has no pinned image or no replicas: it cannot be rotated",
                        source.id
                    )));
                }
                if input.current.is_some_and(|c| c.id == input.deployment_id) {
                    return Err(invalid(format!(
                        "release `{}` already exists: give the deployment a new id",
                        input.deployment_id
                    )));
                }
                let mut dropped = BTreeSet::from([StepKind::Adopt]);
                if !needs_approval(&spec.environments[input.env]) {
                    dropped.insert(StepKind::Approval);
                }
                Ok(Setup {
                    kind: DeploymentKind::Rotate {
                        from: source.id.clone(),
                    },
                    purpose: "rotate secrets",
                    release_id: input.deployment_id.to_string(),
                    replicas: source.replicas,
                    image: ImageSource::Pinned {
                        id: source.image.id.clone(),
                        tag: source.image.tag.clone(),
                    },
                    container: source.container.clone(),
                    check_health: source.health.clone(),
                    record_health: source.health.clone(),
                    adopt: Vec::new(),
                    name_suffix: None,
                    dropped,
                    required: vec![
                        StepKind::Verify,
                        StepKind::Provision,
                        StepKind::HealthCheck,
                        StepKind::ShiftTraffic,
                        StepKind::Record,
                    ],
                })
            }
        }
    }
}

fn check_promoted(input: &PlanInput, source: &Release) -> Result<(), PlanError> {
    if source.app != input.spec.app {
        return Err(invalid(format!(
            "release `{}` belongs to app {}, not {}: promote a release of this app",
            source.id, source.app, input.spec.app
        )));
    }
    if source.env == input.env {
        return Err(invalid(format!(
            "release `{}` is already a release of `{}`: promote it to another environment, or roll back to it",
            source.id, input.env
        )));
    }
    if source.image.id.is_empty() {
        return Err(invalid(format!(
            "release `{}` has no pinned image id: it cannot be promoted",
            source.id
        )));
    }
    if let Some(current) = input.current {
        if current.id == input.deployment_id {
            return Err(invalid(format!(
                "release `{}` already exists: give the deployment a new id",
                current.id
            )));
        }
    }
    Ok(())
}

fn check_target(input: &PlanInput, target: &Release) -> Result<(), PlanError> {
    if target.app != input.spec.app || target.env != input.env {
        return Err(invalid(format!(
            "release `{}` belongs to {}/{}, not {}/{}: pick a release of this environment",
            target.id, target.app, target.env, input.spec.app, input.env
        )));
    }
    if input.current.is_some_and(|c| c.id == target.id) {
        return Err(invalid(format!(
            "release `{}` is already current in `{}`: nothing to roll back to",
            target.id, input.env
        )));
    }
    if target.replicas == 0 {
        return Err(invalid(format!(
            "release `{}` records 0 replicas: it cannot be brought back",
            target.id
        )));
    }
    if target.image.id.is_empty() {
        return Err(invalid(format!(
            "release `{}` has no pinned image id: it cannot be brought back",
            target.id
        )));
    }
    Ok(())
}

/// The running instance of each replica of `target`, when every replica has one.
fn warm_set<'a>(target: &Release, warm_instances: &'a [Instance]) -> Option<Vec<&'a Instance>> {
    (0..target.replicas)
        .map(|replica| {
            warm_instances
                .iter()
                .filter(|i| {
                    i.release == target.id
                        && i.replica == replica
                        && i.state == InstanceState::Running
                })
                .min_by(|a, b| a.name.cmp(&b.name))
        })
        .collect()
}

/// A rollback strategy for a protected environment: one that has no `scan` step gets one
/// (id `scan`) that every `verify` step runs after, so the target's pinned image is
/// rescanned against today's advisory database before anything changes.
fn with_rescan(strategy: &Strategy, file: &str) -> Result<Strategy, PlanError> {
    if strategy.steps.iter().any(|s| s.kind == StepKind::Scan) {
        return Ok(strategy.clone());
    }
    if let Some(step) = strategy.steps.iter().find(|s| s.id == "scan") {
        return Err(PlanError::StrategyStep {
            file: file.to_string(),
            step: step.id.clone(),
            message: "a rollback in a protected environment rescans the image in a step named `scan`: rename this step".to_string(),
        });
    }
    let mut steps = vec![StrategyStep {
        id: "scan".to_string(),
        kind: StepKind::Scan,
        after: Vec::new(),
        per_replica: false,
        weight: None,
    }];
    for step in &strategy.steps {
        let mut step = step.clone();
        if step.kind == StepKind::Verify {
            step.after.insert(0, "scan".to_string());
        }
        steps.push(step);
    }
    let strategy = Strategy {
        steps,
        ..strategy.clone()
    };
    validate(&strategy, file)?;
    Ok(strategy)
}

/// The strategy without the templates of `dropped` kinds; a step that ran after a dropped
/// one runs after what that one ran after.
fn effective_strategy(strategy: &Strategy, dropped: &BTreeSet<StepKind>) -> Strategy {
    let by_id: BTreeMap<&str, &StrategyStep> =
        strategy.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let index: BTreeMap<&str, usize> = strategy
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // Leaving steps out keeps who-runs-after-whom, so the full strategy's ancestors hold.
    let ancestors = ancestors(strategy, &index);
    fn resolve(
        id: &str,
        by_id: &BTreeMap<&str, &StrategyStep>,
        dropped: &BTreeSet<StepKind>,
        out: &mut Vec<String>,
    ) {
        match by_id.get(id) {
            Some(step) if dropped.contains(&step.kind) => {
                for after in &step.after {
                    resolve(after, by_id, dropped, out);
                }
            }
            _ => {
                if !out.iter().any(|o| o == id) {
                    out.push(id.to_string());
                }
            }
        }
    }
    let steps = strategy
        .steps
        .iter()
        .filter(|s| !dropped.contains(&s.kind))
        .map(|s| {
            let mut after = Vec::new();
            for a in &s.after {
                resolve(a, &by_id, dropped, &mut after);
            }
            if after == s.after {
                return s.clone();
            }
            // Where a left-out step passed its own `after` on, keep only the nearest:
            // `after = ["verify", "adopt"]` where adopt already runs after verify is just
            // `["adopt"]`. Dependencies written in the strategy stay as written.
            let runs_after =
                |later: &str, earlier: &str| match (index.get(later), index.get(earlier)) {
                    (Some(&l), Some(e)) => ancestors[l].contains(e),
                    _ => false,
                };
            let nearest = after
                .iter()
                .filter(|a| !after.iter().any(|b| b != *a && runs_after(b, a)))
                .cloned()
                .collect();
            StrategyStep {
                after: nearest,
                ..s.clone()
            }
        })
        .collect();
    Strategy {
        steps,
        ..strategy.clone()
    }
}

/// Whether deployments to `env` wait for a human approval (`protected` implies it).
fn needs_approval(env: &EnvironmentSpec) -> bool {
    env.approval || env.protected
}

/// An environment that requires approval is never deployed by a strategy without an
/// approval step.
fn require_approval(strategy: &Strategy, file: &str, env: &str) -> Result<(), PlanError> {
    if strategy.steps.iter().any(|s| s.kind == StepKind::Approval) {
        return Ok(());
    }
    Err(PlanError::Strategy {
        file: file.to_string(),
        message: format!(
            "environment `{env}` requires approval but the strategy has no approval step: add a [[step]] with kind = \"approval\" before shift-traffic"
        ),
    })
}

fn require_kinds(
    strategy: &Strategy,
    required: &[StepKind],
    file: &str,
    purpose: &str,
) -> Result<(), PlanError> {
    let missing: Vec<&str> = required
        .iter()
        .filter(|k| !strategy.steps.iter().any(|s| s.kind == **k))
        .map(|k| k.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PlanError::Strategy {
        file: file.to_string(),
        message: format!(
            "cannot {purpose}: it has no step of kind {}; add a [[step]] for each",
            quote_list(&missing)
        ),
    })
}

/// A step before ordering.
struct Node {
    id: String,
    kind: StepKind,
    depends_on: Vec<String>,
    action: Action,
}

fn expand(
    input: &PlanInput,
    setup: &Setup,
    strategy: &Strategy,
    env: &EnvironmentSpec,
) -> Result<Vec<Node>, PlanError> {
    let spec = input.spec;
    let app = spec.app.as_str();
    let release = setup.release_id.as_str();
    let expansion = |template: &StrategyStep| -> Vec<String> {
        if template.per_replica {
            (0..setup.replicas)
                .map(|i| format!("{}-{i}", template.id))
                .collect()
        } else {
            vec![template.id.clone()]
        }
    };
    let by_id: BTreeMap<&str, &StrategyStep> =
        strategy.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let instance_steps: Vec<String> = strategy
        .steps
        .iter()
        .find(|s| matches!(s.kind, StepKind::Provision | StepKind::Adopt))
        .map(expansion)
        .unwrap_or_default();
    let instance_template = strategy
        .steps
        .iter()
        .find(|s| matches!(s.kind, StepKind::Provision | StepKind::Adopt))
        .map(|s| s.id.clone())
        .unwrap_or_default();
    let label_set = |step: &str, replica: Option<u32>| {
        let mut l = std::collections::BTreeMap::new();
        l.insert(labels::MANAGED.to_string(), "true".to_string());
        l.insert(labels::APP.to_string(), app.to_string());
        l.insert(labels::ENV.to_string(), input.env.to_string());
        l.insert(labels::RELEASE.to_string(), release.to_string());
        l.insert(
            labels::DEPLOYMENT.to_string(),
            input.deployment_id.to_string(),
        );
        l.insert(
            labels::PLAN.to_string(),
            format!("{}@{}", input.deployment_id, input.created_at_ms),
        );
        l.insert(labels::STEP.to_string(), step.to_string());
        if let Some(r) = replica {
            l.insert(labels::REPLICA.to_string(), r.to_string());
        }
        l
    };
    let previous = input.current.map(|c| c.id.clone());
    let spec_digest = json_digest(spec);

    let mut nodes = Vec::new();
    for template in &strategy.steps {
        let ids = expansion(template);
        for (replica, id) in ids.iter().enumerate() {
            let replica = replica as u32;
            let mut depends_on = Vec::new();
            for after in &template.after {
                let other = by_id[after.as_str()];
                if template.per_replica && other.per_replica {
                    depends_on.push(format!("{}-{replica}", other.id));
                } else {
                    depends_on.extend(expansion(other));
                }
            }
            let action = match template.kind {
                StepKind::Build => match &spec.build {
                    BuildSpec::Image { reference } => Action::Pull {
                        reference: reference.clone(),
                        tag: format!("cutover/{app}:{release}"),
                    },
                    source => Action::Build {
                        tag: format!("cutover/{app}:{release}"),
                        source: source.clone(),
                        labels: label_set(id, None),
                    },
                },
                StepKind::Scan => Action::Scan {
                    image: setup.image.clone(),
                    app: app.to_string(),
                    env: input.env.to_string(),
                    gate: GateSpec {
                        // What the scan skipped fails the gate of a protected environment.
                        fail_on_skipped: env.gate.fail_on_skipped || env.protected,
                        ..env.gate.clone()
                    },
                },
                StepKind::Sign => Action::Sign {
                    image: setup.image.clone(),
                    app: app.to_string(),
                    env: input.env.to_string(),
                    key: spec.supply.signing_key.clone(),
                    spec_digest: spec_digest.clone(),
                    source: spec.base_dir.clone(),
                    invoked_by: match input.kind {
                        PlanKind::Build { invoked_by } => invoked_by.map(str::to_string),
                        _ => None,
                    },
                },
                StepKind::Verify => Action::Verify {
                    image: setup.image.clone(),
                    env: input.env.to_string(),
                    trusted_keys: env.trusted_keys.clone(),
                },
                StepKind::Approval => Action::Approval {
                    image: setup.image.clone(),
                    gate: env.approvals.clone(),
                },
                StepKind::Provision => {
                    let name = match setup.name_suffix {
                        Some(suffix) => format!("cutover-{app}-{release}-{suffix}-{replica}"),
                        None => format!("cutover-{app}-{release}-{replica}"),
                    };
                    Action::Provision {
                        instance: InstanceSpec {
                            name,
                            app: app.to_string(),
                            env: input.env.to_string(),
                            release: release.to_string(),
                            deployment_id: input.deployment_id.to_string(),
                            replica,
                            image: setup.image.clone(),
                            container: setup.container.clone(),
                            labels: label_set(id, Some(replica)),
                        },
                    }
                }
                StepKind::Adopt => {
                    let instance = setup.adopt.get(replica as usize).ok_or_else(|| {
                        invalid(format!(
                            "no running instance of replica {replica} of release `{release}` to adopt"
                        ))
                    })?;
                    Action::Adopt {
                        name: instance.name.clone(),
                        release: release.to_string(),
                    }
                }
                StepKind::HealthCheck => {
                    if !depends_transitively(&by_id, template, &instance_template) {
                        return Err(PlanError::StrategyStep {
                            file: format!("strategy {}", strategy.name),
                            step: template.id.clone(),
                            message: format!(
                                "must run after `{instance_template}`, whose instances it checks"
                            ),
                        });
                    }
                    Action::HealthCheck {
                        instance_step: format!("{instance_template}-{replica}"),
                        health: setup.check_health.clone(),
                    }
                }
                StepKind::ShiftTraffic => Action::ShiftTraffic {
                    listen: env.listen.clone(),
                    release: release.to_string(),
                    instance_steps: instance_steps.clone(),
                    weight: template.weight.unwrap_or(100),
                    response_timeout: env.response_timeout,
                    restore: RestoreRoute::of(input.current_route),
                },
                StepKind::Drain => Action::Drain {
                    listen: env.listen.clone(),
                    release: previous.clone(),
                    timeout: env.drain_timeout,
                },
                StepKind::Retire => Action::Retire {
                    release: previous.clone(),
                    instances: input
                        .current
                        .map(|c| c.instances.clone())
                        .unwrap_or_default(),
                    after: env.retire_after,
                },
                StepKind::Record => Action::Record {
                    release: release.to_string(),
                    image: setup.image.clone(),
                    instance_steps: instance_steps.clone(),
                    container: setup.container.clone(),
                    health: setup.record_health.clone(),
                    replicas: setup.replicas,
                },
            };
            nodes.push(Node {
                id: id.clone(),
                kind: template.kind,
                depends_on,
                action,
            });
        }
    }
    Ok(nodes)
}

fn depends_transitively(
    by_id: &BTreeMap<&str, &StrategyStep>,
    template: &StrategyStep,
    target: &str,
) -> bool {
    template.after.iter().any(|a| {
        a == target
            || by_id
                .get(a.as_str())
                .is_some_and(|t| depends_transitively(by_id, t, target))
    })
}

/// Kahn's algorithm that always takes the earliest ready node in expansion order (strategy
/// order, then replica), so the order is deterministic and reads like the strategy.
fn stable_topological_order(nodes: Vec<Node>, deployment_id: &str) -> Vec<Step> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut remaining: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let mut steps = Vec::with_capacity(remaining.len());
    loop {
        let next = remaining.iter().position(|n| {
            n.as_ref()
                .is_some_and(|n| n.depends_on.iter().all(|d| placed.contains(d)))
        });
        // The strategy is acyclic (validated), so every node is eventually ready.
        let Some(index) = next else { break };
        let Some(node) = remaining[index].take() else {
            break;
        };
        placed.insert(node.id.clone());
        steps.push(node);
    }
    steps
        .into_iter()
        .map(|node| Step {
            idempotency_key: format!("{deployment_id}/{}", node.id),
            id: node.id,
            kind: node.kind,
            depends_on: node.depends_on,
            action: node.action,
        })
        .collect()
}
