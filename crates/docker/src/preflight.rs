//! Checks made before a deployment is planned: the engine answers, and the build source
//! the spec names is there.

use std::time::Duration;

use async_trait::async_trait;
use cutover_model::{BuildSpec, Preflight, PreflightFailure, Spec};

use crate::DockerProvider;

/// How long the engine may take to answer a ping.
const PING_WAIT: Duration = Duration::from_secs(5);

#[async_trait]
impl Preflight for DockerProvider {
    async fn check(&self, spec: &Spec, _env: &str) -> Vec<PreflightFailure> {
        let mut failures = build_source(&spec.build);
        if matches!(spec.build, BuildSpec::Cargo { .. }) {
            // Cargo builds run sandboxed: without bubblewrap nothing can be built.
            if let Err(e) = crate::cargo::isolation(self.cargo_builds.unsandboxed) {
                failures.push(PreflightFailure {
                    field: "build.cargo".to_string(),
                    message: e.message,
                });
            }
        }
        let reason = match tokio::time::timeout(PING_WAIT, self.docker.ping()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(crate::engine_error::describe(&e)),
            Err(_) => Some(format!("no answer within {}s", PING_WAIT.as_secs())),
        };
        if let Some(reason) = reason {
            failures.push(PreflightFailure {
                field: "docker".to_string(),
                message: format!(
                    "cannot reach the docker engine at {}: {reason}; start dockerd or set DOCKER_HOST for the control plane",
                    self.addr
                ),
            });
        }
        failures
    }
}

/// The build source named by the spec is present: the context directory and its
/// Dockerfile, or the cargo manifest.
pub(crate) fn build_source(build: &BuildSpec) -> Vec<PreflightFailure> {
    let failure = |field: &str, message: String| PreflightFailure {
        field: field.to_string(),
        message,
    };
    match build {
        // Checked by the pull step, which names the image: the registry's answer may change
        // between now and then.
        BuildSpec::Image { .. } => Vec::new(),
        BuildSpec::Dockerfile {
            context,
            dockerfile,
            ..
        } => {
            if !context.is_dir() {
                return vec![failure(
                    "build.context",
                    format!(
                        "{} is not a directory; point it at the directory to build (relative to deploy.toml)",
                        context.display()
                    ),
                )];
            }
            let file = context.join(dockerfile);
            if !file.is_file() {
                return vec![failure(
                    "build.dockerfile",
                    format!(
                        "{} does not exist; add it or name the Dockerfile relative to the context",
                        file.display()
                    ),
                )];
            }
            Vec::new()
        }
        BuildSpec::Cargo { manifest, .. } => {
            if manifest.is_file() {
                Vec::new()
            } else {
                vec![failure(
                    "build.cargo.manifest",
                    format!(
                        "{} does not exist; point it at the package's Cargo.toml (relative to deploy.toml)",
                        manifest.display()
                    ),
                )]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_present_dockerfile_context_passes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let build = BuildSpec::Dockerfile {
            context: dir.path().to_path_buf(),
            dockerfile: "Dockerfile".to_string(),
            args: BTreeMap::new(),
        };
        assert_eq!(build_source(&build), Vec::new());
    }

    #[test]
    fn a_missing_context_or_dockerfile_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = BuildSpec::Dockerfile {
            context: dir.path().join("gone"),
            dockerfile: "Dockerfile".to_string(),
            args: BTreeMap::new(),
        };
        let failures = build_source(&missing);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].field, "build.context");
        assert!(
            failures[0].message.contains("is not a directory"),
            "{}",
            failures[0]
        );

        let no_file = BuildSpec::Dockerfile {
            context: dir.path().to_path_buf(),
            dockerfile: "deploy/Dockerfile".to_string(),
            args: BTreeMap::new(),
        };
        let failures = build_source(&no_file);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].field, "build.dockerfile");
        assert!(
            failures[0]
                .message
                .contains("deploy/Dockerfile does not exist"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn a_missing_cargo_manifest_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let build = BuildSpec::Cargo {
            manifest: dir.path().join("Cargo.toml"),
            bin: "hello".to_string(),
            profile: "release".to_string(),
        };
        let failures = build_source(&build);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].field, "build.cargo.manifest");
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\n").unwrap();
        assert_eq!(build_source(&build), Vec::new());
    }

    #[tokio::test]
    async fn an_unreachable_engine_fails_preflight() {
        // A socket file nobody listens on: the client is made, its pings are refused.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let addr = format!("unix://{}", socket.display());
        let docker = bollard::Docker::connect_with_unix(&addr, 5, bollard::API_DEFAULT_VERSION)
            .expect("a client for a dead socket");
        let provider = DockerProvider {
            docker,
            addr: addr.clone(),
            networks: Default::default(),
            cargo_builds: crate::CargoBuilds::default(),
            secret_files: None,
        };
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\n").unwrap();
        let spec = Spec {
            app: "hello".to_string(),
            strategy: "blue-green".to_string(),
            base_dir: dir.path().to_path_buf(),
            build: BuildSpec::Cargo {
                manifest: dir.path().join("Cargo.toml"),
                bin: "hello".to_string(),
                profile: "release".to_string(),
            },
            container: Default::default(),
            health: Default::default(),
            supply: Default::default(),
            environments: BTreeMap::new(),
        };
        let failures = provider.check(&spec, "production").await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].field, "docker");
        assert!(
            failures[0].to_string().starts_with(&format!(
                "docker: cannot reach the docker engine at {addr}: "
            )),
            "{}",
            failures[0]
        );
    }
}
