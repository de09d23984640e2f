//! Golden images: `ImageBuilder` over the Engine's classic build API, plus export and
//! removal.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use cutover_model::{labels, BuildSpec, ImageBuilder, ImageInfo, LocalImage, ProviderError};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::engine_error::{describe, is_not_found, provider_error, status};
use crate::{cargo, context, DockerProvider};

/// Dockerfile wrapped around a static binary.
const BINARY_DOCKERFILE: &str =
    "FROM scratch\nCOPY app /app\nUSER 65534:65534\nENTRYPOINT [\"/app\"]\n";

/// How many trailing lines of build output an error message quotes.
const TAIL_LINES: usize = 15;

#[async_trait]
impl ImageBuilder for DockerProvider {
    async fn build(
        &self,
        tag: &str,
        source: &BuildSpec,
        labels: &BTreeMap<String, String>,
    ) -> Result<ImageInfo, ProviderError> {
        if let Some(existing) = self.existing_build(tag, labels).await? {
            tracing::debug!(tag, id = %existing.id, "image already built for this deployment");
            return Ok(existing);
        }
        let mut labels = labels.clone();
        labels.insert(labels::MANAGED.to_string(), "true".to_string());
        let mut warning = None;
        let (archive, dockerfile) = match source {
            BuildSpec::Dockerfile {
                context,
                dockerfile,
                ..
            } => (
                directory_context(context, dockerfile).await?,
                dockerfile.clone(),
            ),
            BuildSpec::Image { reference } => {
                return Err(ProviderError::permanent(format!(
                    "{reference} is a prebuilt image: it is pulled, not built; plan the deployment again"
                )))
            }
            BuildSpec::Cargo {
                manifest,
                bin,
                profile,
            } => {
                let built = cargo::build_static(&self.cargo_builds, manifest, bin, profile).await?;
                warning = built.warning;
                let archive = context::tar_binary_image(&built.binary, BINARY_DOCKERFILE).map_err(|e| {
                    ProviderError::permanent(format!(
                        "packing the binary {bin} into a build context failed: {e}; check free memory and disk space"
                    ))
                })?;
                (archive, "Dockerfile".to_string())
            }
        };
        let args = match source {
            BuildSpec::Dockerfile { args, .. } => args.clone(),
            BuildSpec::Cargo { .. } | BuildSpec::Image { .. } => BTreeMap::new(),
        };
        self.build_archive(tag, archive, &dockerfile, &args, &labels)
            .await?;
        let mut image = self.inspect_image(tag).await?.ok_or_else(|| {
            ProviderError::transient(format!(
                "image {tag} was built but the engine does not list it; retry the build"
            ))
        })?;
        image.warning = warning;
        Ok(image)
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, ProviderError> {
        Ok(self
            .inspect_image_labels(reference)
            .await?
            .map(|(info, _)| info))
    }

    async fn pull(
        &self,
        reference: &cutover_model::ImageRef,
        tag: &str,
    ) -> Result<cutover_model::PulledImage, ProviderError> {
        crate::registry::pull(self, reference, tag).await
    }

    async fn list_images(&self, app: &str) -> Result<Vec<LocalImage>, ProviderError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={app}", labels::APP),
            ],
        )]);
        let options = ListImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|e| provider_error(&format!("listing the images of {app}"), &e))?;
        Ok(images
            .into_iter()
            .map(|i| LocalImage {
                env: i.labels.get(labels::ENV).cloned(),
                release: i.labels.get(labels::RELEASE).cloned(),
                id: i.id,
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                size_bytes: u64::try_from(i.size).unwrap_or(0),
            })
            .collect())
    }

    async fn remove_image(&self, id: &str) -> Result<(), ProviderError> {
        // Each tag, then the id: never forced, so the engine refuses (409) while any
        // container, running or stopped, uses the image.
        let tags = match self.inspect_image_tags(id).await? {
            Some(tags) => tags,
            None => return Ok(()),
        };
        // Untagging an image with other tags skips the engine's own check: ask first.
        let filters = HashMap::from([("ancestor".to_string(), vec![id.to_string()])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let users = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| provider_error(&format!("listing the containers of image {id}"), &e))?;
        if let Some(user) = users.first() {
            let name = user
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| user.id.clone().unwrap_or_default());
            return Err(ProviderError::permanent(format!(
                "cannot remove image {id}: container {name} uses it; remove the container first"
            )));
        }
        for tag in &tags {
            DockerProvider::remove_image(self, tag).await?;
        }
        DockerProvider::remove_image(self, id).await
    }
}

impl DockerProvider {
    /// Write the image `reference` (id or tag) as a `docker save` tarball to `dest`.
    /// The file appears complete or not at all (written beside `dest`, then renamed).
    pub async fn export_image(&self, reference: &str, dest: &Path) -> Result<(), ProviderError> {
        if self.inspect_image(reference).await?.is_none() {
            return Err(ProviderError::permanent(format!(
                "cannot export image {reference}: it does not exist; build it first"
            )));
        }
        let partial = partial_path(dest);
        let result = self.write_export(reference, &partial).await;
        match result {
            Ok(()) => tokio::fs::rename(&partial, dest).await.map_err(|e| {
                ProviderError::permanent(format!(
                    "moving the exported image to {} failed: {e}; check the directory",
                    dest.display()
                ))
            }),
            Err(err) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(err)
            }
        }
    }

    /// Remove the image `reference` (id or tag). A missing image is fine.
    pub async fn remove_image(&self, reference: &str) -> Result<(), ProviderError> {
        let options = RemoveImageOptionsBuilder::default().build();
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) if status(&e) == Some(409) => Err(ProviderError::permanent(format!(
                "cannot remove image {reference}: {}; remove the containers using it first",
                describe(&e)
            ))),
            Err(e) => Err(provider_error(&format!("removing image {reference}"), &e)),
        }
    }

    async fn write_export(&self, reference: &str, path: &Path) -> Result<(), ProviderError> {
        let write_failed = |e: std::io::Error| {
            ProviderError::permanent(format!(
                "writing the exported image to {} failed: {e}; check the path and free space",
                path.display()
            ))
        };
        let mut file = tokio::fs::File::create(path).await.map_err(write_failed)?;
        let mut stream = self.docker.export_image(reference);
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| provider_error(&format!("exporting image {reference}"), &e))?;
            file.write_all(&chunk).await.map_err(write_failed)?;
        }
        file.flush().await.map_err(write_failed)?;
        file.sync_all().await.map_err(write_failed)?;
        Ok(())
    }

    /// The tags of image `id`, `None` when it does not exist.
    async fn inspect_image_tags(&self, id: &str) -> Result<Option<Vec<String>>, ProviderError> {
        match self.docker.inspect_image(id).await {
            Ok(image) => Ok(Some(image.repo_tags.unwrap_or_default())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(provider_error(&format!("inspecting image {id}"), &e)),
        }
    }

    /// The image and its labels, `None` when it does not exist.
    pub(crate) async fn inspect_image_labels(
        &self,
        reference: &str,
    ) -> Result<Option<(ImageInfo, HashMap<String, String>)>, ProviderError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => {
                let Some(id) = image.id else {
                    return Err(ProviderError::transient(format!(
                        "the engine described image {reference} without an id; retry"
                    )));
                };
                let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
                Ok(Some((
                    ImageInfo {
                        id,
                        tag: reference.to_string(),
                        warning: None,
                    },
                    labels,
                )))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(provider_error(&format!("inspecting image {reference}"), &e)),
        }
    }

    /// An image tagged `tag` built earlier for the same deployment, if any.
    async fn existing_build(
        &self,
        tag: &str,
        wanted: &BTreeMap<String, String>,
    ) -> Result<Option<ImageInfo>, ProviderError> {
        // The plan label is unique per plan; older plans only carry the deployment label.
        let key = [labels::PLAN, labels::DEPLOYMENT]
            .into_iter()
            .find_map(|k| wanted.get(k).map(|v| (k, v)));
        let Some((key, value)) = key else {
            return Ok(None);
        };
        let found = self.inspect_image_labels(tag).await?;
        Ok(found.and_then(|(info, have)| (have.get(key) == Some(value)).then_some(info)))
    }

    async fn build_archive(
        &self,
        tag: &str,
        archive: Vec<u8>,
        dockerfile: &str,
        args: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let labels: HashMap<String, String> = labels.clone().into_iter().collect();
        let args: HashMap<String, String> = args.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile)
            .t(tag)
            .labels(&labels)
            .buildargs(&args)
            .rm(true)
            .forcerm(true)
            .build();
        let body = bollard::body_full(archive.into());
        let mut stream = self.docker.build_image(options, None, Some(body));
        let mut tail: Vec<String> = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref() {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            tracing::debug!(tag, "build: {line}");
                            tail.push(line.to_string());
                            if tail.len() > TAIL_LINES {
                                tail.remove(0);
                            }
                        }
                    }
                }
                Err(e) => {
                    // The Engine reports build failures (bad Dockerfile, failing RUN) in the
                    // stream or as an answer to the request: both are the user's to fix.
                    let is_build_failure =
                        matches!(e, bollard::errors::Error::DockerStreamError { .. })
                            || status(&e).is_some_and(|s| (400..500).contains(&s));
                    if is_build_failure {
                        let last = tail
                            .last()
                            .map(|l| format!(" (last output: {l})"))
                            .unwrap_or_default();
                        let detail = describe(&e);
                        if is_cache_race(&detail) {
                            // A cached layer vanished under the build (another image was
                            // removed meanwhile): building again does not reuse it.
                            return Err(ProviderError::transient(format!(
                                "building image {tag} failed: {detail}{last}; a cached layer was removed during the build, building again"
                            )));
                        }
                        return Err(ProviderError::permanent(format!(
                            "building image {tag} failed: {detail}{last}; fix the dockerfile or build context and try again"
                        )));
                    }
                    return Err(provider_error(&format!("building image {tag}"), &e));
                }
            }
        }
        Ok(())
    }
}

/// Whether a build failed because a layer of its cache was removed while it ran (the
/// Engine's legacy builder says so when a concurrent image removal pruned a parent).
fn is_cache_race(detail: &str) -> bool {
    detail.contains("unknown parent image ID") || detail.contains("failed to set parent")
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "image.tar".into());
    name.push(".partial");
    dest.with_file_name(name)
}

async fn directory_context(context: &Path, dockerfile: &str) -> Result<Vec<u8>, ProviderError> {
    context::check_relative(dockerfile).map_err(|e| {
        ProviderError::permanent(format!("{e}; fix build.dockerfile in deploy.toml"))
    })?;
    if !context.is_dir() {
        return Err(ProviderError::permanent(format!(
            "the build context {} is not a directory; fix build.context in deploy.toml",
            context.display()
        )));
    }
    if !context.join(dockerfile).is_file() {
        return Err(ProviderError::permanent(format!(
            "there is no dockerfile at {}; create it or fix build.dockerfile in deploy.toml",
            context.join(dockerfile).display()
        )));
    }
    let dir = context.to_path_buf();
    let dockerfile = dockerfile.to_string();
    tokio::task::spawn_blocking(move || context::tar_directory(&dir, &dockerfile))
        .await
        .map_err(|e| {
            ProviderError::transient(format!(
                "packing the build context was interrupted: {e}; retry"
            ))
        })?
        .map_err(|e| {
            ProviderError::permanent(format!(
                "packing the build context {} failed: {e}; check file permissions",
                context.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_layer_removed_during_the_build_is_a_race_not_a_dockerfile_error() {
        // What the Engine answered when a concurrent removal pruned a cached parent.
        let raced = "failed to export image: failed to set parent sha256:17482abb6ec1: unknown parent image ID sha256:17482abb6ec1";
        assert!(is_cache_race(raced));
        assert!(!is_cache_race(
            "The command '/bin/sh -c false' returned a non-zero code: 1"
        ));
        assert!(!is_cache_race(
            "COPY failed: file not found in build context"
        ));
    }

    #[test]
    fn partial_exports_sit_beside_the_destination() {
        assert_eq!(
            partial_path(Path::new("/tmp/x/image.tar")),
            PathBuf::from("/tmp/x/image.tar.partial")
        );
    }
}
