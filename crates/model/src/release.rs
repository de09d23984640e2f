//! Releases, instances, images and routes: the things deployments create and move between.

use serde::{Deserialize, Serialize};

use crate::spec::{ContainerSpec, HealthSpec};

/// A built (or pinned) image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Content-addressed id, `sha256:<hex>`; releases are pinned by it.
    pub id: String,
    /// Human tag, e.g. `cutover/hello:production-3`.
    pub tag: String,
    /// What people should know about how the image was built (an unsandboxed build), shown
    /// with the build step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Observed state of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum InstanceState {
    Running,
    Restarting,
    Exited { code: i64 },
    Other { detail: String },
}

/// A running (or once running) instance of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    /// Provider id (container id, EC2 instance id).
    pub id: String,
    pub app: String,
    pub env: String,
    pub release: String,
    pub deployment_id: String,
    pub replica: u32,
    /// Address traffic is sent to, `ip:port`.
    pub addr: String,
    pub image_id: String,
    pub state: InstanceState,
    pub restart_count: u32,
}

/// One weighted set of upstreams in a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub release: String,
    pub addrs: Vec<String>,
    /// Relative weight; a route with one backend uses 100.
    pub weight: u32,
}

/// What the traffic layer serves on an environment's listen address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub env: String,
    pub listen: String,
    pub backends: Vec<Backend>,
    /// How long the proxy waits for an upstream's answer (the head and a small body) before
    /// it answers 504 itself; tables saved without it get the default.
    #[serde(
        with = "crate::spec::duration_ms",
        default = "crate::spec::default_response_timeout"
    )]
    pub response_timeout: std::time::Duration,
}

impl Route {
    /// The release getting the largest share, if any.
    pub fn primary_release(&self) -> Option<&str> {
        self.backends
            .iter()
            .max_by_key(|b| b.weight)
            .map(|b| b.release.as_str())
    }
}

/// An immutable release: what ran, where it came from, and how to bring it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    pub app: String,
    pub env: String,
    /// The deployment that created it.
    pub deployment_id: String,
    pub image: ImageInfo,
    pub plan_digest: String,
    pub spec_digest: String,
    pub created_by: String,
    pub created_at_ms: u64,
    pub replicas: u32,
    pub container: ContainerSpec,
    pub health: HealthSpec,
    /// Instance names at the time it was recorded.
    pub instances: Vec<String>,
}

impl Release {
    /// The release as clients are shown it: environment values replaced by their digests
    /// ([`ContainerSpec::with_env_digests`]).
    pub fn with_env_digests(&self) -> Release {
        Release {
            container: self.container.with_env_digests(),
            ..self.clone()
        }
    }
}

/// Overall state of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Saved, not started.
    Planned,
    Running,
    /// A step failed; undo is running.
    Unwinding {
        reason: String,
    },
    Succeeded,
    /// Failed and fully undone: traffic on the previous release, new instances removed.
    RolledBack {
        reason: String,
    },
    /// An undo failed: needs a human. Loud everywhere.
    Stuck {
        reason: String,
    },
}

impl DeploymentStatus {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            DeploymentStatus::Succeeded
                | DeploymentStatus::RolledBack { .. }
                | DeploymentStatus::Stuck { .. }
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            DeploymentStatus::Planned => "planned",
            DeploymentStatus::Running => "running",
            DeploymentStatus::Unwinding { .. } => "unwinding",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::RolledBack { .. } => "rolled_back",
            DeploymentStatus::Stuck { .. } => "stuck",
        }
    }
}
