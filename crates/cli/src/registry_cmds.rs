//! Build once, deploy many: `cutover build` (build, scan, sign and verify through the
//! control plane, nothing deployed; writes the build record and the attestation bundle) and
//! `cutover push` (the image and its attestations to an OCI registry, from this process:
//! no control plane needed).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use cutover_docker::registry::{self, RegistryCredentials};
use cutover_docker::DockerProvider;
use cutover_model::{ImageBuilder, ImageRef};
use cutover_server::api::{PlanRequest, Started};
use cutover_signing::AttestationBundle;

use crate::{check_spec, connect, follow, Context_, Output};

/// `build.json`: what `cutover build` made, for `cutover push`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    pub app: String,
    pub env: String,
    /// The image id (`sha256:` of its config), the subject of the attestations.
    pub image_id: String,
    /// Its local tag, e.g. `cutover/hello:ci-3`.
    pub tag: String,
    /// Keys that signed the attestations.
    pub key_ids: Vec<String>,
    /// Who ran the build: the CI job's URL, or the control plane.
    pub builder: String,
    pub deployment_id: String,
}

/// The CI job this process runs in, by its URL (GitHub Actions, GitLab CI), if any.
pub fn ci_job_url() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let (Some(server), Some(repo), Some(run)) = (
        var("GITHUB_SERVER_URL"),
        var("GITHUB_REPOSITORY"),
        var("GITHUB_RUN_ID"),
    ) {
        return Some(format!(
            "{}/{repo}/actions/runs/{run}",
            server.trim_end_matches('/')
        ));
    }
    var("CI_JOB_URL")
}

/// `cutover build`: plan and run build → scan → sign → verify for `env`, then write
/// `out/build.json` and `out/attestations.json` and print the image id.
pub async fn build(ctx: &Context_, env: Option<String>, out: &Path) -> Result<u8> {
    check_spec(ctx)?;
    let spec = cutover_spec::load(&ctx.spec)?;
    let client = connect(ctx).await?;
    let invoked_by = ci_job_url();
    let request = PlanRequest {
        spec_path: Some(ctx.spec.to_string_lossy().into_owned()),
        env,
        build_only: true,
        invoked_by: invoked_by.clone(),
        ..PlanRequest::default()
    };
    let started: Started = client.post("/api/v1/deployments", &request).await?;
    let code = follow::follow(&ctx.state, &started.deployment_id, false).await?;
    if code != 0 {
        return Ok(code);
    }
    let tag = format!("cutover/{}:{}", spec.app, started.release_id);
    let docker = DockerProvider::connect().await?;
    let image = docker
        .inspect_image(&tag)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?
        .with_context(|| {
            format!("the build finished but image {tag} is not in the engine; build again")
        })?;
    let paths = cutover_chain::SupplyPaths::new(&ctx.state.0);
    let bundle_file = paths.attestations(&image.id, &started.env);
    let bundle = AttestationBundle::load(&bundle_file).with_context(|| {
        format!(
            "the build finished but its attestations are not at {}; build again",
            bundle_file.display()
        )
    })?;
    let mut key_ids: Vec<String> = Vec::new();
    for envelope in &bundle.envelopes {
        for id in envelope.key_ids() {
            if !key_ids.contains(&id) {
                key_ids.push(id);
            }
        }
    }
    let record = BuildRecord {
        app: spec.app.clone(),
        env: started.env.clone(),
        image_id: image.id.clone(),
        tag,
        key_ids,
        builder: invoked_by.unwrap_or_else(|| "the control plane".to_string()),
        deployment_id: started.deployment_id.clone(),
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write(
        &out.join("build.json"),
        &serde_json::to_string_pretty(&record)?,
    )?;
    write(&out.join("attestations.json"), &bundle.to_json())?;
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&record)?),
        _ => {
            eprintln!(
                "built {} for {}: signed by {}; wrote {}/build.json and {}/attestations.json",
                record.tag,
                record.env,
                record.key_ids.join(", "),
                out.display(),
                out.display()
            );
            println!("{}", record.image_id);
        }
    }
    Ok(0)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `registry/repository[:tag]` of `cutover push`.
fn parse_target(target: &str) -> Result<(String, String, Option<String>)> {
    let Some((registry, rest)) = target.split_once('/') else {
        bail!(
            "{target:?} names no registry: write HOST[:PORT]/REPO[:TAG], e.g. 127.0.0.1:5000/hello"
        );
    };
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
        bail!(
            "{target:?} names no registry: write HOST[:PORT]/REPO[:TAG], e.g. 127.0.0.1:5000/hello"
        );
    }
    if rest.contains('@') {
        bail!("{target:?} names a digest: push names a repository (and a tag); the digest is what it prints");
    }
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
        _ => (rest.to_string(), None),
    };
    // Check the repository name as a reference would be checked.
    let probe = format!("{registry}/{repository}@sha256:{}", "0".repeat(64));
    ImageRef::parse(&probe).map_err(|e| anyhow::anyhow!("{target:?}: {e}"))?;
    Ok((registry.to_string(), repository, tag))
}

/// `cutover push`: the image of `build_dir/build.json` to `target`, its attestations next
/// to it; prints the image by digest.
pub async fn push(ctx: &Context_, target: &str, build_dir: &Path) -> Result<u8> {
    let (registry, repository, tag) = parse_target(target)?;
    let record_file = build_dir.join("build.json");
    let record: BuildRecord =
        serde_json::from_str(&std::fs::read_to_string(&record_file).with_context(|| {
            format!(
                "cannot read {}: run `cutover build --out {}` first",
                record_file.display(),
                build_dir.display()
            )
        })?)
        .with_context(|| {
            format!(
                "{} is not a build record of `cutover build`",
                record_file.display()
            )
        })?;
    let bundle = AttestationBundle::load(&build_dir.join("attestations.json"))
        .with_context(|| format!("cannot read the attestations of {}", build_dir.display()))?;
    if bundle.image_digest != record.image_id {
        bail!(
            "{}/attestations.json is about {}, not the built image {}; run `cutover build` again",
            build_dir.display(),
            bundle.image_digest,
            record.image_id
        );
    }
    let tag = tag.unwrap_or_else(|| {
        record
            .tag
            .rsplit_once(':')
            .map(|(_, t)| t.to_string())
            .unwrap_or_else(|| record.deployment_id.clone())
    });
    let credentials =
        RegistryCredentials::load(&registry).map_err(|e| anyhow::anyhow!(e.message))?;
    let docker = DockerProvider::connect().await?;
    let pushed = docker
        .push_image_to(
            &record.image_id,
            &registry,
            &repository,
            &tag,
            credentials.as_ref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let envelopes = bundle
        .envelopes
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    registry::push_attestations(&pushed, envelopes, credentials.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    match ctx.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "image": pushed.to_string(),
                "digest": pushed.digest,
                "image_id": record.image_id,
                "tag": format!("{registry}/{repository}:{tag}"),
                "attestations": format!("{}:{}", pushed.name(), pushed.attestation_tag()),
            })
        ),
        _ => {
            eprintln!(
                "pushed {registry}/{repository}:{tag} and its attestations ({})",
                pushed.attestation_tag()
            );
            println!("{pushed}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_targets_name_a_registry_and_maybe_a_tag() {
        assert_eq!(
            parse_target("127.0.0.1:5000/team/hello").unwrap(),
            ("127.0.0.1:5000".into(), "team/hello".into(), None)
        );
        assert_eq!(
            parse_target("127.0.0.1:5000/hello:v1").unwrap(),
            ("127.0.0.1:5000".into(), "hello".into(), Some("v1".into()))
        );
        assert!(parse_target("hello").is_err());
        assert!(parse_target("library/hello").is_err());
        assert!(parse_target("127.0.0.1:5000/Hello").is_err());
        assert!(parse_target(&format!("127.0.0.1:5000/hello@sha256:{}", "0".repeat(64))).is_err());
    }
}
