//! Strategies (data from `plans/*.toml`), the immutable plan the planner produces, and the
//! concrete actions of its steps.
//!
//! A [`Plan`] leaves no choice to execution time: every container name, image tag, label,
//! address and idempotency key is decided by the planner and recorded here. The executor
//! only adds what the world tells it (image ids, container ids, host ports) as step outputs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::release::{Instance, Route};
use crate::spec::{duration_ms, ApprovalSpec, BuildSpec, ContainerSpec, GateSpec, HealthSpec};

/// Version of the plan format; part of the digest.
pub const PLAN_FORMAT: u32 = 1;

/// The kinds of step a strategy may use. The planner expands each into one or more
/// [`Step`]s with a concrete [`Action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Build,
    /// SBOM, vulnerability and secret scan of the image, judged by the environment's gate.
    Scan,
    /// Sign attestations (SLSA provenance, SBOM, scan verdict) for the image digest.
    Sign,
    /// Verify the image's attestations against the environment's trusted keys; fails closed.
    Verify,
    /// Wait (durably) for human approval of this plan and image.
    Approval,
    Provision,
    /// Adopt an instance that is still running (warm rollback) instead of provisioning one.
    Adopt,
    HealthCheck,
    ShiftTraffic,
    Drain,
    Retire,
    Record,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Build => "build",
            StepKind::Scan => "scan",
            StepKind::Sign => "sign",
            StepKind::Verify => "verify",
            StepKind::Approval => "approval",
            StepKind::Provision => "provision",
            StepKind::Adopt => "adopt",
            StepKind::HealthCheck => "health-check",
            StepKind::ShiftTraffic => "shift-traffic",
            StepKind::Drain => "drain",
            StepKind::Retire => "retire",
            StepKind::Record => "record",
        }
    }
}

/// What undoing a traffic shift puts back, decided by the planner from the route the
/// caller found when planning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RestoreRoute {
    /// A plan saved before the planner recorded the route: the executor reads the live
    /// route once, before the shift changes it, and keeps it for the undo.
    #[default]
    Unrecorded,
    /// The environment had no route: undo removes the route.
    NoRoute,
    /// Undo sets this route again.
    Route { route: Route },
}

impl RestoreRoute {
    /// The planner's record for `current` (the route the environment serves now).
    pub fn of(current: Option<&Route>) -> Self {
        match current {
            Some(route) => RestoreRoute::Route {
                route: route.clone(),
            },
            None => RestoreRoute::NoRoute,
        }
    }

    /// The recorded route before the shift: `None` when not recorded, `Some(None)` when
    /// there was no route.
    pub fn recorded(&self) -> Option<Option<&Route>> {
        match self {
            RestoreRoute::Unrecorded => None,
            RestoreRoute::NoRoute => Some(None),
            RestoreRoute::Route { route } => Some(Some(route)),
        }
    }
}

/// A deployment strategy as written in `plans/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "step")]
    pub steps: Vec<StrategyStep>,
}

/// One step template of a strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyStep {
    /// Template id, unique in the strategy (e.g. `provision`). Expanded ids add `-<replica>`.
    pub id: String,
    pub kind: StepKind,
    /// Template ids this step runs after. Between two per-replica templates the dependency
    /// is pairwise (health-check-1 after provision-1); otherwise it is on every expansion.
    #[serde(default)]
    pub after: Vec<String>,
    /// Expand once per replica.
    #[serde(default)]
    pub per_replica: bool,
    /// Traffic weight (percent) for `shift-traffic`, default 100. Canary strategies use
    /// several shift steps with increasing weights.
    #[serde(default)]
    pub weight: Option<u8>,
}

/// What a deployment does: roll out a new release, or go back to an earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeploymentKind {
    Deploy,
    Rollback {
        /// The release traffic returns to.
        target: String,
        /// True when the target's instances were still running at plan time.
        warm: bool,
    },
    /// A new release of `from`'s pinned image with the latest secret versions (no build).
    Rotate {
        /// The release whose image and settings the new one takes.
        from: String,
    },
    /// Build (or pull), scan, sign and verify an image without deploying it
    /// (`cutover build`): no instance, route or release.
    Build,
    /// Roll out, as a new release of this environment, exactly the image of a release of
    /// another environment: no build, the same image id, a fresh scan verdict for this
    /// environment.
    Promote {
        /// The release whose image is promoted, e.g. `staging-7`.
        from_release: String,
        /// Its environment.
        from_env: String,
    },
}

impl DeploymentKind {
    /// The word people and the audit log see: `deploy`, `rollback` or `promote`.
    pub fn label(&self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Rollback { .. } => "rollback",
            DeploymentKind::Promote { .. } => "promote",
            DeploymentKind::Build => "build",
            DeploymentKind::Rotate { .. } => "rotate",
        }
    }

    /// Whether the deployment makes a new release (deploy, promote, rotate) rather than going
    /// back to an existing one (rollback) or making none (build).
    pub fn creates_release(&self) -> bool {
        matches!(
            self,
            DeploymentKind::Deploy | DeploymentKind::Promote { .. } | DeploymentKind::Rotate { .. }
        )
    }

    /// `promoted from staging-7` for a promotion.
    pub fn promoted_from(&self) -> Option<(&str, &str)> {
        match self {
            DeploymentKind::Promote {
                from_release,
                from_env,
            } => Some((from_release.as_str(), from_env.as_str())),
            _ => None,
        }
    }
}

/// An immutable, digested plan: a DAG of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    pub deployment_id: String,
    pub app: String,
    pub env: String,
    pub kind: DeploymentKind,
    /// The release this deployment makes current (new for deploy, the target for rollback).
    pub release_id: String,
    /// The release that was current when planning (blue), if any.
    pub previous_release: Option<String>,
    pub strategy: String,
    pub spec_digest: String,
    pub requested_by: String,
    pub created_at_ms: u64,
    /// Steps in a topological order; `depends_on` gives the DAG edges.
    pub steps: Vec<Step>,
    /// `sha256:<hex>` of the canonical JSON of this plan with `digest` empty.
    pub digest: String,
}

impl Plan {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The plan as clients are shown it: every container's environment values replaced by
    /// their digests ([`ContainerSpec::with_env_digests`]). `digest` stays the digest of the
    /// plan as saved, values included.
    pub fn with_env_digests(&self) -> Plan {
        let mut plan = self.clone();
        for step in &mut plan.steps {
            match &mut step.action {
                Action::Provision { instance } => {
                    instance.container = instance.container.with_env_digests();
                }
                Action::Record { container, .. } => *container = container.with_env_digests(),
                // Listed so that a new action carrying a container is not missed here.
                Action::Build { .. }
                | Action::Pull { .. }
                | Action::Scan { .. }
                | Action::Sign { .. }
                | Action::Verify { .. }
                | Action::Approval { .. }
                | Action::Adopt { .. }
                | Action::HealthCheck { .. }
                | Action::ShiftTraffic { .. }
                | Action::Drain { .. }
                | Action::Retire { .. } => {}
            }
        }
        plan
    }
}

/// One node of the plan's DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Unique in the plan, e.g. `provision-0`.
    pub id: String,
    pub kind: StepKind,
    pub depends_on: Vec<String>,
    /// `<deployment_id>/<step_id>`: carried by every provider call of this step.
    pub idempotency_key: String,
    pub action: Action,
}

/// Where a provisioned instance's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ImageSource {
    /// The image built by that step of this plan.
    Step { step: String },
    /// A pinned image of an earlier release (rollback never rebuilds).
    Pinned { id: String, tag: String },
}

/// Everything needed to start one instance. Decided by the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Container name, e.g. `cutover-hello-production-3-0`.
    pub name: String,
    pub app: String,
    pub env: String,
    pub release: String,
    pub deployment_id: String,
    pub replica: u32,
    pub image: ImageSource,
    pub container: ContainerSpec,
    /// Labels put on the instance (`cutover.app`, `cutover.env`, `cutover.release`,
    /// `cutover.deployment`, `cutover.step`, `cutover.replica`).
    pub labels: BTreeMap<String, String>,
}

/// The concrete work of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Action {
    Build {
        /// Tag given to the image, e.g. `cutover/hello:production-3`.
        tag: String,
        source: BuildSpec,
        labels: BTreeMap<String, String>,
    },
    /// Take a prebuilt image from a registry by digest instead of building it: check its
    /// manifest, pull it, fetch its attestations (signed elsewhere, e.g. by CI) and keep
    /// them as the image's imported provenance. Output: the image.
    Pull {
        reference: crate::ImageRef,
        /// Local tag given to the pulled image, e.g. `cutover/hello:production-3`.
        tag: String,
    },
    Scan {
        image: ImageSource,
        app: String,
        env: String,
        gate: GateSpec,
    },
    Sign {
        image: ImageSource,
        app: String,
        env: String,
        /// Encrypted private key; `None` uses the control plane's local signing key.
        key: Option<std::path::PathBuf>,
        spec_digest: String,
        /// Where the build came from (the spec's directory).
        source: std::path::PathBuf,
        /// The CI job (URL) that asked for the build, recorded in the provenance; `None`:
        /// the control plane itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoked_by: Option<String>,
    },
    Verify {
        image: ImageSource,
        env: String,
        /// Public keys (PEM) trusted for this environment; empty trusts the local key only.
        trusted_keys: Vec<std::path::PathBuf>,
    },
    Approval {
        /// The image the approvers approve (with the plan digest).
        image: ImageSource,
        gate: ApprovalSpec,
    },
    Provision {
        instance: InstanceSpec,
    },
    Adopt {
        /// Name of the running instance to take over.
        name: String,
        release: String,
    },
    HealthCheck {
        /// Step whose output is the instance to probe (provision or adopt).
        instance_step: String,
        health: HealthSpec,
    },
    ShiftTraffic {
        listen: String,
        release: String,
        /// Steps whose outputs are the instances of `release`.
        instance_steps: Vec<String>,
        /// Percent of traffic for `release`; the rest stays on the previous release.
        weight: u8,
        /// The proxy's wait for an upstream's answer on this route (plans saved before it
        /// existed get the default).
        #[serde(
            with = "duration_ms",
            default = "crate::spec::default_response_timeout"
        )]
        response_timeout: Duration,
        /// The route this step puts back when it is undone: the environment's route when
        /// the deployment was planned (plans saved before it was recorded: `unrecorded`).
        #[serde(default)]
        restore: RestoreRoute,
    },
    Drain {
        listen: String,
        /// The release whose in-flight requests are waited for (blue); none on a first deploy.
        release: Option<String>,
        #[serde(with = "duration_ms")]
        timeout: Duration,
    },
    Retire {
        /// The release to retire (blue); none on a first deploy.
        release: Option<String>,
        /// Its instance names.
        instances: Vec<String>,
        /// Keep it warm this long after the cutover, then remove its instances.
        #[serde(with = "duration_ms")]
        after: Duration,
    },
    Record {
        /// The release made current: created from this plan on deploy, an existing one on
        /// rollback. The executor fills the image and instances from step outputs.
        release: String,
        image: ImageSource,
        instance_steps: Vec<String>,
        /// What a cold rollback to this release needs to re-provision it.
        container: ContainerSpec,
        health: HealthSpec,
        replicas: u32,
    },
}

/// What a succeeded step produced; journaled with `StepSucceeded` and given to later steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StepOutput {
    None,
    Image(crate::release::ImageInfo),
    Instance(Instance),
    Healthy {
        probes: u32,
    },
    /// The route before the shift, so undo can put it back.
    Shifted {
        previous: Option<crate::release::Route>,
    },
    Drained {
        in_flight_left: u64,
    },
    /// The scan passed the gate (a failed gate fails the step).
    Scanned {
        summary: String,
    },
    Signed {
        key_id: String,
    },
    Verified {
        key_ids: Vec<String>,
    },
    Approved {
        by: Vec<String>,
    },
    /// Retirement scheduled at this time (unix ms).
    RetireScheduled {
        at_ms: u64,
    },
    Recorded,
}
