//! Instances as hardened containers: `Compute` over the Engine's container API.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use cutover_model::{
    labels, Compute, Diagnosis, ImageInfo, Instance, InstanceSpec, InstanceState, ProviderError,
};

use crate::engine_error::{describe, is_not_found, provider_error, status};
use crate::DockerProvider;

/// Restarts the Engine makes before giving up on a crashing instance.
pub(crate) const MAX_RESTARTS: i64 = 5;
/// Options of every tmpfs mount.
pub(crate) const TMPFS_OPTIONS: &str = "rw,noexec,nosuid,size=16m";
/// Seconds `remove` waits for a graceful stop before killing.
const STOP_TIMEOUT_SECS: i32 = 2;
/// How long `provision` waits for the Engine to publish the port.
const PORT_WAIT: Duration = Duration::from_secs(5);
/// How long `remove` waits for a removal already in progress.
const REMOVAL_WAIT: Duration = Duration::from_secs(10);
/// Interface published ports bind to.
const PUBLISH_IP: &str = "127.0.0.1";

#[async_trait]
impl Compute for DockerProvider {
    async fn provision(
        &self,
        spec: &InstanceSpec,
        image: &ImageInfo,
    ) -> Result<Instance, ProviderError> {
        check_user(&spec.container.user, &spec.name)?;
        let deployment = deployment_label(spec);
        if let Some(existing) = self.inspect_raw(&spec.name).await? {
            return self.adopt(spec, &deployment, existing).await;
        }
        let network = self.ensure_network(&spec.app, &spec.env).await?;
        let values = self.secret_values(spec).await?;
        let mut body = create_body(spec, image, &network);
        if let Some(files) = &self.secret_files {
            if !values.is_empty() {
                files.reserve(spec)?;
            }
            add_secrets(&mut body, spec, files, &values);
        }
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(409) => {
                // Created concurrently by an earlier attempt of this step: adopt it.
                let existing = self.inspect_raw(&spec.name).await?.ok_or_else(|| {
                    ProviderError::transient(format!(
                        "container {} was reported in use but is gone; retry",
                        spec.name
                    ))
                })?;
                return self.adopt(spec, &deployment, existing).await;
            }
            Err(e) if is_not_found(&e) => {
                return Err(ProviderError::permanent(format!(
                "creating container {} failed: image {} ({}) does not exist; build the image again",
                spec.name, image.tag, image.id
            )))
            }
            Err(e) => {
                return Err(provider_error(
                    &format!("creating container {}", spec.name),
                    &e,
                ))
            }
        }
        let user = self.refuse_root_user(spec).await?;
        if let Err(err) = self.write_secret_files(spec, &values, &user) {
            let _ = self.remove(&spec.name).await;
            return Err(err);
        }
        if let Err(err) = self.start(&spec.name).await {
            if !err.is_transient() {
                // Leave nothing behind for a start that will never succeed.
                let _ = self.remove(&spec.name).await;
            }
            return Err(err);
        }
        self.wait_for_port(&spec.name).await
    }

    async fn inspect(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.inspect_raw(name).await?.map(|raw| to_instance(&raw)))
    }

    async fn remove(&self, name: &str) -> Result<(), ProviderError> {
        let Some(existing) = self.inspect_raw(name).await? else {
            return Ok(());
        };
        let managed = container_labels(&existing)
            .get(labels::MANAGED)
            .is_some_and(|v| v == "true");
        if !managed {
            return Err(ProviderError::permanent(format!(
                "refusing to remove container {name}: it was not made by cutover (no {}=true label); remove it by hand if it is yours to remove",
                labels::MANAGED
            )));
        }
        let stop = StopContainerOptionsBuilder::default()
            .t(STOP_TIMEOUT_SECS)
            .build();
        match self.docker.stop_container(name, Some(stop)).await {
            Ok(()) => {}
            // 304: already stopped; 404: already gone; 409: being removed.
            Err(e) if matches!(status(&e), Some(304 | 404 | 409)) => {}
            Err(e) => return Err(provider_error(&format!("stopping container {name}"), &e)),
        }
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) if status(&e) == Some(409) => self.wait_until_gone(name).await,
            Err(e) => Err(provider_error(&format!("removing container {name}"), &e)),
        };
        if removed.is_ok() {
            if let Some(files) = &self.secret_files {
                files.remove(name);
            }
        }
        removed
    }

    async fn list(&self, app: &str, env: Option<&str>) -> Result<Vec<Instance>, ProviderError> {
        let mut label_filters = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={app}", labels::APP),
        ];
        if let Some(env) = env {
            label_filters.push(format!("{}={env}", labels::ENV));
        }
        let filters = HashMap::from([("label".to_string(), label_filters)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| provider_error(&format!("listing containers of {app}"), &e))?;
        let mut instances = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            // Removed between the list and the inspect: not an instance any more.
            if let Some(raw) = self.inspect_raw(&id).await? {
                instances.push(to_instance(&raw));
            }
        }
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(instances)
    }

    async fn diagnose(&self, instance: &Instance) -> Option<Diagnosis> {
        self.diagnosis(instance).await
    }
}

impl DockerProvider {
    /// Whether a container of this name exists.
    pub(crate) async fn docker_has(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self.inspect_raw(name).await?.is_some())
    }

    /// The values of the instance's secrets (none without secrets); refused when the
    /// spec has secrets and this provider keeps no secret files.
    async fn secret_values(
        &self,
        spec: &InstanceSpec,
    ) -> Result<Vec<(String, secrecy::SecretSlice<u8>)>, ProviderError> {
        if spec.container.secrets.is_empty() {
            return Ok(Vec::new());
        }
        match &self.secret_files {
            Some(files) => files.resolve(spec).await,
            None => Err(ProviderError::permanent(format!(
                "instance {} has secrets but this control plane injects none (no secrets directory on a tmpfs); restart it with one",
                spec.name
            ))),
        }
    }

    fn write_secret_files(
        &self,
        spec: &InstanceSpec,
        values: &[(String, secrecy::SecretSlice<u8>)],
        user: &crate::user::Resolved,
    ) -> Result<(), ProviderError> {
        match &self.secret_files {
            Some(files) if !values.is_empty() => {
                files.write(&spec.name, values, user.uid, user.gid)
            }
            _ => Ok(()),
        }
    }

    async fn inspect_raw(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, ProviderError> {
        match self.docker.inspect_container(name, None).await {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(provider_error(&format!("inspecting container {name}"), &e)),
        }
    }

    /// Take over a container an earlier attempt made: it must belong to the same deployment.
    async fn adopt(
        &self,
        spec: &InstanceSpec,
        deployment: &str,
        existing: ContainerInspectResponse,
    ) -> Result<Instance, ProviderError> {
        let have = container_labels(&existing);
        let found = have.get(labels::DEPLOYMENT).cloned();
        // Same deployment id but another plan: left over from a wiped state directory.
        let other_plan = spec
            .labels
            .get(labels::PLAN)
            .is_some_and(|plan| have.get(labels::PLAN) != Some(plan));
        if found.as_deref() != Some(deployment) || other_plan {
            let owner = match (found, other_plan) {
                (Some(d), true) => format!(
                    "an earlier deployment {d} (another plan, e.g. from a removed state directory)"
                ),
                (Some(d), false) => format!("deployment {d}"),
                (None, _) => "something other than cutover".to_string(),
            };
            return Err(ProviderError::permanent(format!(
                "container {} already exists and belongs to {owner}; remove it or let that deployment finish",
                spec.name
            )));
        }
        let user = self.refuse_root_user(spec).await?;
        let status = existing.state.as_ref().and_then(|s| s.status);
        if matches!(
            status,
            Some(ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::EXITED)
        ) {
            // The files may be gone (a reboot empties the tmpfs): write them again.
            let values = self.secret_values(spec).await?;
            self.write_secret_files(spec, &values, &user)?;
            self.start(&spec.name).await?;
        }
        self.wait_for_port(&spec.name).await
    }

    /// Resolve the user of a created container in its image; a user that maps to root
    /// (uid 0 or gid 0) or does not exist is refused and the container removed, before it
    /// ever starts.
    async fn refuse_root_user(
        &self,
        spec: &InstanceSpec,
    ) -> Result<crate::user::Resolved, ProviderError> {
        match self
            .check_image_user(&spec.name, &spec.container.user)
            .await
        {
            Ok(user) => Ok(user),
            Err(err) => {
                if !err.is_transient() {
                    let _ = self.remove(&spec.name).await;
                }
                Err(err)
            }
        }
    }

    async fn start(&self, name: &str) -> Result<(), ProviderError> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(304) => Ok(()),
            Err(e) => Err(ProviderError {
                class: crate::engine_error::class(&e),
                message: format!(
                    "starting container {name} failed: {}; check the image's entrypoint, the command and the port in deploy.toml",
                    describe(&e)
                ),
            }),
        }
    }

    /// Inspect until the Engine has published the port, or the container is no longer
    /// running (a crashing instance is returned as it is; health checks judge it).
    async fn wait_for_port(&self, name: &str) -> Result<Instance, ProviderError> {
        let deadline = tokio::time::Instant::now() + PORT_WAIT;
        loop {
            let raw = self.inspect_raw(name).await?.ok_or_else(|| {
                ProviderError::transient(format!(
                    "container {name} disappeared right after it was started; retry"
                ))
            })?;
            let instance = to_instance(&raw);
            if !instance.addr.is_empty() || instance.state != InstanceState::Running {
                return Ok(instance);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::transient(format!(
                    "container {name} runs but the engine published no host port within {}s; retry",
                    PORT_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_until_gone(&self, name: &str) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
        while self.inspect_raw(name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::transient(format!(
                    "container {name} is still being removed after {}s; retry",
                    REMOVAL_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// The deployment an instance belongs to: its label, else the spec's deployment id.
fn deployment_label(spec: &InstanceSpec) -> String {
    spec.labels
        .get(labels::DEPLOYMENT)
        .cloned()
        .unwrap_or_else(|| spec.deployment_id.clone())
}

/// Root inside the container is refused (validation refuses it too; this is the last line).
fn check_user(user: &str, name: &str) -> Result<(), ProviderError> {
    let uid = user.split(':').next().unwrap_or("").trim();
    if uid.is_empty() || uid == "0" || uid == "root" {
        return Err(ProviderError::permanent(format!(
            "instance {name} would run as root (user {user:?}); set container.user to an unprivileged uid such as 65534:65534"
        )));
    }
    Ok(())
}

/// The create request: hardened defaults from the spec.
pub(crate) fn create_body(
    spec: &InstanceSpec,
    image: &ImageInfo,
    network: &str,
) -> ContainerCreateBody {
    let container = &spec.container;
    let port_key = format!("{}/tcp", container.port);

    let mut env: Vec<String> = container
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !container.env.contains_key("PORT") {
        env.push(format!("PORT={}", container.port));
    }

    let mut container_labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    container_labels.insert(labels::MANAGED.to_string(), "true".to_string());
    for (key, value) in [
        (labels::APP, spec.app.clone()),
        (labels::ENV, spec.env.clone()),
        (labels::RELEASE, spec.release.clone()),
        (labels::DEPLOYMENT, spec.deployment_id.clone()),
        (labels::REPLICA, spec.replica.to_string()),
    ] {
        container_labels.entry(key.to_string()).or_insert(value);
    }

    let tmpfs: HashMap<String, String> = container
        .tmpfs
        .iter()
        .map(|path| (path.clone(), TMPFS_OPTIONS.to_string()))
        .collect();
    let memory = i64::try_from(container.memory_bytes).unwrap_or(i64::MAX);

    let host_config = HostConfig {
        readonly_rootfs: Some(container.read_only),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges:true".to_string()]),
        privileged: Some(false),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some((container.cpus * 1e9).round() as i64),
        pids_limit: Some(container.pids_limit),
        port_bindings: Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(PUBLISH_IP.to_string()),
                host_port: Some(String::new()),
            }]),
        )])),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(MAX_RESTARTS),
        }),
        // The environment's own network (by id), never the default bridge.
        network_mode: Some(network.to_string()),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(image.id.clone()),
        user: Some(container.user.clone()),
        env: Some(env),
        entrypoint: (!container.command.is_empty()).then(|| container.command.clone()),
        exposed_ports: Some(vec![port_key]),
        labels: Some(container_labels),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Mount the instance's secret files read-only; `as_env` secrets also become
/// environment variables (visible to `docker inspect`: only when the spec asks).
fn add_secrets(
    body: &mut ContainerCreateBody,
    spec: &InstanceSpec,
    files: &crate::SecretFiles,
    values: &[(String, secrecy::SecretSlice<u8>)],
) {
    use secrecy::ExposeSecret;
    let binds = files.binds(spec);
    if !binds.is_empty() {
        if let Some(host) = body.host_config.as_mut() {
            host.binds.get_or_insert_with(Vec::new).extend(binds);
        }
    }
    let env = body.env.get_or_insert_with(Vec::new);
    for (name, value) in values {
        if spec.container.secrets.get(name).is_some_and(|m| m.as_env) {
            env.push(format!(
                "{name}={}",
                String::from_utf8_lossy(value.expose_secret())
            ));
        }
    }
}

fn container_labels(raw: &ContainerInspectResponse) -> HashMap<String, String> {
    raw.config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

/// The model's view of an inspected container.
pub(crate) fn to_instance(raw: &ContainerInspectResponse) -> Instance {
    let labels_of = container_labels(raw);
    let label = |key: &str| labels_of.get(key).cloned().unwrap_or_default();
    let state = raw.state.as_ref();
    let exit_code = state.and_then(|s| s.exit_code).unwrap_or(0);
    let state = match state.and_then(|s| s.status) {
        Some(ContainerStateStatusEnum::RUNNING) => InstanceState::Running,
        Some(ContainerStateStatusEnum::RESTARTING) => InstanceState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) => InstanceState::Exited { code: exit_code },
        Some(other) => InstanceState::Other {
            detail: other.to_string(),
        },
        None => InstanceState::Other {
            detail: "unknown".to_string(),
        },
    };
    Instance {
        name: raw
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        id: raw.id.clone().unwrap_or_default(),
        app: label(labels::APP),
        env: label(labels::ENV),
        release: label(labels::RELEASE),
        deployment_id: label(labels::DEPLOYMENT),
        replica: label(labels::REPLICA).parse().unwrap_or(0),
        addr: published_addr(raw).unwrap_or_default(),
        image_id: raw.image.clone().unwrap_or_default(),
        state,
        restart_count: u32::try_from(raw.restart_count.unwrap_or(0)).unwrap_or(u32::MAX),
    }
}

/// `127.0.0.1:<host port>` of the first published tcp port.
fn published_addr(raw: &ContainerInspectResponse) -> Option<String> {
    let ports = raw.network_settings.as_ref()?.ports.as_ref()?;
    let mut keys: Vec<&String> = ports.keys().filter(|k| k.ends_with("/tcp")).collect();
    keys.sort();
    keys.into_iter().find_map(|key| {
        ports.get(key)?.as_ref()?.iter().find_map(|binding| {
            let port = binding.host_port.as_deref().filter(|p| !p.is_empty())?;
            let ip = match binding.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") | Some("::") => PUBLISH_IP,
                Some(ip) => ip,
            };
            Some(if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, NetworkSettings};
    use cutover_model::{ContainerSpec, ImageSource};
    use std::collections::BTreeMap;

    fn spec() -> InstanceSpec {
        let mut container = ContainerSpec::default();
        container
            .env
            .insert("VERSION".to_string(), "v2".to_string());
        InstanceSpec {
            name: "cutover-hello-production-3-0".to_string(),
            app: "hello".to_string(),
            env: "production".to_string(),
            release: "production-3".to_string(),
            deployment_id: "d-3".to_string(),
            replica: 0,
            image: ImageSource::Step {
                step: "build".to_string(),
            },
            container,
            labels: BTreeMap::from([(labels::DEPLOYMENT.to_string(), "d-3".to_string())]),
        }
    }

    fn image() -> ImageInfo {
        ImageInfo {
            id: "sha256:abc".to_string(),
            tag: "cutover/hello:production-3".to_string(),
            warning: None,
        }
    }

    #[test]
    fn create_body_is_hardened() {
        let body = create_body(&spec(), &image(), "net-production");
        let host = body.host_config.expect("host config");
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.memory, Some(128 * 1024 * 1024));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.nano_cpus, Some(1_000_000_000));
        assert_eq!(host.pids_limit, Some(128));
        assert_eq!(host.network_mode.as_deref(), Some("net-production"));
        assert_eq!(
            host.tmpfs,
            Some(HashMap::from([(
                "/tmp".to_string(),
                TMPFS_OPTIONS.to_string()
            )]))
        );
        let binding = &host.port_bindings.expect("ports")["8080/tcp"]
            .clone()
            .expect("binding")[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
        let restart = host.restart_policy.expect("restart policy");
        assert_eq!(restart.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(restart.maximum_retry_count, Some(MAX_RESTARTS));
        assert_eq!(body.image.as_deref(), Some("sha256:abc"));
        assert_eq!(body.entrypoint, None);
        let env = body.env.expect("env");
        assert!(env.contains(&"VERSION=v2".to_string()));
        assert!(env.contains(&"PORT=8080".to_string()));
        let labels_set = body.labels.expect("labels");
        assert_eq!(labels_set[labels::MANAGED], "true");
        assert_eq!(labels_set[labels::DEPLOYMENT], "d-3");
        assert_eq!(labels_set[labels::APP], "hello");
    }

    #[test]
    fn an_explicit_port_env_and_command_win() {
        let mut spec = spec();
        spec.container
            .env
            .insert("PORT".to_string(), "9000".to_string());
        spec.container.command = vec!["/app".to_string(), "--flag".to_string()];
        let body = create_body(&spec, &image(), "net-production");
        let env = body.env.expect("env");
        assert!(env.contains(&"PORT=9000".to_string()));
        assert!(!env.contains(&"PORT=8080".to_string()));
        assert_eq!(
            body.entrypoint,
            Some(vec!["/app".to_string(), "--flag".to_string()])
        );
    }

    #[test]
    fn root_users_are_refused() {
        assert!(check_user("0", "x").is_err());
        assert!(check_user("root:root", "x").is_err());
        assert!(check_user("", "x").is_err());
        assert!(check_user("65534:65534", "x").is_ok());
        assert!(check_user("1000", "x").is_ok());
    }

    #[test]
    fn instances_are_read_from_inspect_output() {
        let raw = ContainerInspectResponse {
            id: Some("c1".to_string()),
            name: Some("/cutover-hello-production-3-1".to_string()),
            image: Some("sha256:abc".to_string()),
            restart_count: Some(2),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                exit_code: Some(3),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                labels: Some(HashMap::from([
                    (labels::APP.to_string(), "hello".to_string()),
                    (labels::ENV.to_string(), "production".to_string()),
                    (labels::RELEASE.to_string(), "production-3".to_string()),
                    (labels::DEPLOYMENT.to_string(), "d-3".to_string()),
                    (labels::REPLICA.to_string(), "1".to_string()),
                ])),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(HashMap::from([(
                    "8080/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_string()),
                        host_port: Some("49153".to_string()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let instance = to_instance(&raw);
        assert_eq!(instance.name, "cutover-hello-production-3-1");
        assert_eq!(instance.addr, "127.0.0.1:49153");
        assert_eq!(instance.replica, 1);
        assert_eq!(instance.restart_count, 2);
        assert_eq!(instance.state, InstanceState::Exited { code: 3 });
        assert_eq!(instance.deployment_id, "d-3");
        assert_eq!(instance.image_id, "sha256:abc");
    }
}
