//! The validated deployment spec (`deploy.toml`), as the rest of cutover sees it.
//!
//! Reading the file (with line/column errors) and validating values is the job of the
//! `cutover-spec` crate; these types carry no spans and no I/O. Every field that a user
//! may omit has the default documented next to it; `Default` impls hold those defaults so
//! the spec crate and tests share one source of truth.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A whole, validated `deploy.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Application name: `[a-z0-9][a-z0-9-]{0,30}`; part of every container and image name.
    pub app: String,
    /// Name of a strategy file in `plans/` (without `.toml`), default `blue-green`.
    pub strategy: String,
    /// Directory that relative paths in the spec are resolved against (the directory of
    /// `deploy.toml`). Absolute after validation.
    pub base_dir: PathBuf,
    pub build: BuildSpec,
    pub container: ContainerSpec,
    pub health: HealthSpec,
    /// Supply-chain settings shared by every environment (`[supply]`).
    pub supply: SupplySpec,
    /// Environments by name (`[environments.<name>]`), at least one.
    pub environments: BTreeMap<String, EnvironmentSpec>,
}

/// `[supply]`: signing and scanning inputs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SupplySpec {
    /// Encrypted private signing key (from `cutover keys generate`); default: the control
    /// plane's local key under the state directory.
    pub signing_key: Option<PathBuf>,
}

/// Vulnerability/secret gate of an environment (`[environments.<name>.gate]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    /// Fail on findings of this severity or worse: `low`, `medium`, `high`, `critical`, or
    /// `none` to never fail on vulnerabilities. Default `critical`.
    pub fail_on: String,
    /// Fail on any secret found in the image, default true.
    pub fail_on_secrets: bool,
    /// Reviewed exceptions file (each with `expires`), optional.
    pub exceptions: Option<PathBuf>,
    /// gitleaks-style rule file replacing the built-in secret rules, optional.
    pub secret_rules: Option<PathBuf>,
    /// The oldest advisory database the gate accepts, by time since its import; default
    /// 7 days. Older (or none) fails the gate unless `allow_missing_advisories`.
    #[serde(
        default = "default_max_advisory_age",
        with = "duration_ms",
        skip_serializing_if = "is_default_max_advisory_age"
    )]
    pub max_advisory_age: Duration,
    /// Pass without a current advisory database (none imported, or older than
    /// `max_advisory_age`), saying so in the verdict; default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_missing_advisories: bool,
    /// Fail on informational advisories (unmaintained, unsound, notice); default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fail_on_unmaintained: bool,
    /// Fail on files the scan skipped for their size unless a `path` exception names them.
    /// Not a spec key: the planner sets it for protected environments.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fail_on_skipped: bool,
}

/// Default of [`GateSpec::max_advisory_age`]: 7 days.
pub const DEFAULT_MAX_ADVISORY_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

fn default_max_advisory_age() -> Duration {
    DEFAULT_MAX_ADVISORY_AGE
}

fn is_default_max_advisory_age(d: &Duration) -> bool {
    *d == DEFAULT_MAX_ADVISORY_AGE
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for GateSpec {
    fn default() -> Self {
        GateSpec {
            fail_on: "critical".to_string(),
            fail_on_secrets: true,
            exceptions: None,
            secret_rules: None,
            max_advisory_age: DEFAULT_MAX_ADVISORY_AGE,
            allow_missing_advisories: false,
            fail_on_unmaintained: false,
            fail_on_skipped: false,
        }
    }
}

/// Approval gate of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSpec {
    /// Distinct approvers needed, default 1. Never the person who started the deployment.
    pub required: u32,
    /// Reject the deployment when not approved within this long, default 24h.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
}

impl Default for ApprovalSpec {
    fn default() -> Self {
        ApprovalSpec {
            required: 1,
            timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// How the golden image is produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BuildSpec {
    /// `docker build` of a context directory with a Dockerfile in it.
    Dockerfile {
        /// Absolute context directory.
        context: PathBuf,
        /// Dockerfile path relative to the context, default `Dockerfile`.
        dockerfile: String,
        /// `--build-arg`s.
        args: BTreeMap<String, String>,
    },
    /// A cargo binary built statically (`+crt-static`) and wrapped in a `FROM scratch` image.
    Cargo {
        /// Absolute path of the package's `Cargo.toml`.
        manifest: PathBuf,
        /// Binary target name.
        bin: String,
        /// Cargo profile, default `release`.
        profile: String,
    },
    /// A prebuilt image in an OCI registry, pinned by digest (`[build] image = "…"`): it
    /// is pulled, its attestations verified against the environment's trusted keys, and
    /// scanned here; never built.
    Image { reference: crate::ImageRef },
}

/// Settings of every instance of the app. Hardened defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Port the app listens on inside the container, default 8080.
    pub port: u16,
    /// Command (entrypoint + args); empty means the image's default.
    pub command: Vec<String>,
    /// Plain environment variables (secrets come later through a separate, redacted path).
    pub env: BTreeMap<String, String>,
    /// Memory limit in bytes, default 128 MiB.
    pub memory_bytes: u64,
    /// CPU limit in CPUs (e.g. 0.5), default 1.0.
    pub cpus: f64,
    /// Max number of processes/threads, default 128.
    pub pids_limit: i64,
    /// `uid[:gid]`, default `65534:65534` (nobody). Root (`0`) is refused by validation.
    pub user: String,
    /// Read-only root filesystem, default true.
    pub read_only: bool,
    /// Writable tmpfs mounts (paths) when the root filesystem is read-only, default `["/tmp"]`.
    pub tmpfs: Vec<String>,
    /// Secrets the app gets, by the name it sees (`[container.secrets]`): files under
    /// `/run/secrets/`, never values in the spec. The control plane pins each to a stored
    /// version before planning.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretMount>,
}

/// One secret of `[container.secrets]`: where its value comes from, where the app finds
/// it, and (once the control plane has pinned it) the stored version it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    /// `secret://<name>` (the store), `env://<VAR>` (the caller's environment at plan
    /// time, stored as a new version), `file:///<path>` (a file on the control plane's
    /// host, stored as a new version), `aws-sm://…` (not yet).
    pub source: String,
    /// Absolute path of the file inside the container, default `/run/secrets/<name>`.
    pub path: String,
    /// Also set an environment variable of this name with the value. Visible to
    /// `docker inspect` and to every process of the container: a policy finding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_env: bool,
    /// The stored secret and version this plan injects (set by the control plane before
    /// planning; never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<SecretPin>,
}

/// A stored secret version, by name and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPin {
    /// The secret's name in the store (of the plan's environment).
    pub name: String,
    pub version: u64,
}

/// Whether `name` may name a secret (and the file it is mounted as): 1 to 128 characters
/// of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`. The error says why not.
pub fn check_secret_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("a name has 1 to 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a name uses only letters, digits, `.`, `_` and `-` (it becomes a file name)");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("a name does not start with `.` or `-`");
    }
    Ok(())
}

/// A secret's source, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSourceRef {
    /// `secret://<name>`: a stored secret of the environment.
    Store(String),
    /// `env://<VAR>`: the caller's environment when planning.
    Env(String),
    /// `file:///<path>`: a file on the control plane's host.
    File(PathBuf),
}

impl SecretSourceRef {
    /// Parse a source; the error says what is wrong and what is accepted.
    pub fn parse(source: &str) -> Result<SecretSourceRef, String> {
        if let Some(name) = source.strip_prefix("secret://") {
            check_secret_name(name).map_err(|why| format!("secret://{name}: {why}"))?;
            return Ok(SecretSourceRef::Store(name.to_string()));
        }
        if let Some(var) = source.strip_prefix("env://") {
            let valid = !var.is_empty()
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "env://{var}: not an environment variable name (letters, digits and `_`)"
                ));
            }
            return Ok(SecretSourceRef::Env(var.to_string()));
        }
        if let Some(path) = source.strip_prefix("file://") {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(format!(
                    "{source}: a file source is an absolute path without `..`, e.g. file:///run/keys/db"
                ));
            }
            return Ok(SecretSourceRef::File(PathBuf::from(path)));
        }
        if source.starts_with("aws-sm://") {
            return Err(format!(
                "{source}: aws-sm:// comes with the AWS provider; use secret://, env:// or file:// for now"
            ));
        }
        Err(format!(
            "{source:?} has an unknown scheme: use secret://<name> (the secret store), env://<VAR> or file:///<path>"
        ))
    }
}

/// Where secret files are mounted unless `path` says otherwise.
pub const SECRETS_DIR: &str = "/run/secrets";

impl ContainerSpec {
    /// Each environment variable's name with `sha256:<hex>` of its value: what the API, the
    /// UI and plan renderings show instead of values (which only the spec and the provider
    /// that starts the container read).
    pub fn env_digests(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(name, value)| (name.clone(), crate::sha256_digest(value.as_bytes())))
            .collect()
    }

    /// These settings as clients are shown them: every environment value replaced by its
    /// digest ([`ContainerSpec::env_digests`]).
    pub fn with_env_digests(&self) -> ContainerSpec {
        ContainerSpec {
            env: self.env_digests(),
            ..self.clone()
        }
    }
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            port: 8080,
            command: Vec::new(),
            env: BTreeMap::new(),
            memory_bytes: 128 * 1024 * 1024,
            cpus: 1.0,
            pids_limit: 128,
            user: "65534:65534".to_string(),
            read_only: true,
            tmpfs: vec!["/tmp".to_string()],
            secrets: BTreeMap::new(),
        }
    }
}

/// HTTP health check of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Path requested with GET, default `/healthz`; 2xx is healthy.
    pub path: String,
    /// Between probes, default 200ms.
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    /// Per probe, default 1s.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Consecutive successes to call an instance healthy, default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures to call it unhealthy (fail the step), default 3.
    pub unhealthy_threshold: u32,
    /// Give up after this long without becoming healthy, default 30s.
    #[serde(with = "duration_ms")]
    pub deadline: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: "/healthz".to_string(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            deadline: Duration::from_secs(30),
        }
    }
}

/// One environment (`[environments.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentSpec {
    /// Address the proxy listens on for this environment, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Number of instances, default 2.
    pub replicas: u32,
    /// How long the previous release stays warm after a cutover, default 5m.
    #[serde(with = "duration_ms")]
    pub retire_after: Duration,
    /// How long in-flight requests on the old set may take to finish, default 10s.
    #[serde(with = "duration_ms")]
    pub drain_timeout: Duration,
    /// How long the proxy gives an upstream to take one request (its body included) and
    /// answer it before it answers 504 itself, default 30s.
    #[serde(with = "duration_ms", default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// Whether a human approval gate is required, default false (true when `protected`).
    pub approval: bool,
    /// Protected environments require approval and (later) stricter policy, default false.
    pub protected: bool,
    /// Approvals needed and their timeout, when `approval` is on.
    pub approvals: ApprovalSpec,
    /// Vulnerability and secret gate.
    pub gate: GateSpec,
    /// Public keys (PEM) whose signatures this environment trusts; empty trusts the local key.
    pub trusted_keys: Vec<PathBuf>,
    /// How many of the newest releases `cutover gc` keeps (their images and attestations),
    /// besides the current, warm and pinned ones; default 5. Left out of the serialized
    /// spec at the default, so digests of specs without it do not change.
    #[serde(
        default = "default_keep_releases",
        skip_serializing_if = "is_default_keep_releases"
    )]
    pub keep_releases: u32,
}

/// Releases `cutover gc` keeps per environment unless the spec says otherwise.
pub const DEFAULT_KEEP_RELEASES: u32 = 5;

fn default_keep_releases() -> u32 {
    DEFAULT_KEEP_RELEASES
}

fn is_default_keep_releases(n: &u32) -> bool {
    *n == DEFAULT_KEEP_RELEASES
}

impl EnvironmentSpec {
    /// An environment with the documented defaults, listening on `listen`.
    pub fn with_listen(listen: impl Into<String>) -> Self {
        EnvironmentSpec {
            listen: listen.into(),
            replicas: 2,
            retire_after: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(10),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            approval: false,
            protected: false,
            approvals: ApprovalSpec::default(),
            gate: GateSpec::default(),
            trusted_keys: Vec::new(),
            keep_releases: DEFAULT_KEEP_RELEASES,
        }
    }
}

/// How long the proxy waits for an upstream's answer unless the environment says otherwise.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serde default for fields saved before the response timeout existed.
pub fn default_response_timeout() -> Duration {
    DEFAULT_RESPONSE_TIMEOUT
}

/// Serde helper: durations as whole milliseconds (stable, digest-friendly).
pub mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
