//! Images in an OCI registry: credentials, the manifest check before a pull, pulling and
//! pushing through the Engine, and the attestations stored next to an image under the tag
//! `sha256-<hex>.att` (cosign's naming; distribution 2.8 has no referrers API), as an OCI
//! artifact whose layers are DSSE envelopes.
//!
//! Talking to the registry itself (manifests, attestation artifacts) is `oci-client`'s;
//! pulling and pushing image content is the Engine's (bollard). Registries on loopback
//! addresses are spoken to over plain HTTP, as the Engine does; all others over HTTPS.

use std::path::{Path, PathBuf};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder,
};
use cutover_model::{ImageBuilder, ImageInfo, ImageRef, ProviderError, PulledImage};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::engine_error::{describe, is_not_found};
use crate::DockerProvider;

/// Media type of one attestation layer: a DSSE envelope (JSON).
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Environment variables naming registry credentials (both must be set).
pub const USERNAME_ENV: &str = "CUTOVER_REGISTRY_USERNAME";
pub const PASSWORD_ENV: &str = "CUTOVER_REGISTRY_PASSWORD";
/// Environment variable naming the credentials file (Docker's `config.json` `auths`).
pub const AUTH_FILE_ENV: &str = "CUTOVER_REGISTRY_AUTH";

/// The largest attestation layer read from a registry.
const MAX_ATTESTATION_BYTES: i64 = 16 << 20;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A user name and password for one registry. Its `Debug` never shows the password, and
/// no error or log line of this module contains it.
#[derive(Clone)]
pub struct RegistryCredentials {
    pub username: String,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryCredentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> RegistryCredentials {
        RegistryCredentials {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    /// The credentials for `registry`: `CUTOVER_REGISTRY_USERNAME` and
    /// `CUTOVER_REGISTRY_PASSWORD` when both are set, else the entry for `registry` in the
    /// credentials file ([`auth_file_path`]), else none (anonymous). The file must not be
    /// readable by group or others.
    pub fn load(registry: &str) -> Result<Option<RegistryCredentials>, ProviderError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let (Some(username), Some(password)) = (var(USERNAME_ENV), var(PASSWORD_ENV)) {
            return Ok(Some(RegistryCredentials::new(username, password)));
        }
        match auth_file_path() {
            Some(path) => from_auth_file(&path, registry),
            None => Ok(None),
        }
    }

    fn oci(&self) -> RegistryAuth {
        RegistryAuth::Basic(self.username.clone(), self.password.to_string())
    }

    fn docker(&self, registry: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.to_string()),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        }
    }
}

/// Where registry credentials are read from: `$CUTOVER_REGISTRY_AUTH`, else
/// `$XDG_CONFIG_HOME/cutover/registry-auth.json` (default `~/.config/…`).
pub fn auth_file_path() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = non_empty(AUTH_FILE_ENV) {
        return Some(PathBuf::from(path));
    }
    let config = non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("cutover").join("registry-auth.json"))
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The entry for `registry` in a Docker-style `{"auths": {...}}` file; `None` when the file
/// does not exist or has no entry for it.
fn from_auth_file(
    path: &Path,
    registry: &str,
) -> Result<Option<RegistryCredentials>, ProviderError> {
    use base64::Engine as _;
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ProviderError::permanent(format!(
                "cannot read the registry credentials file {}: {e}; fix its permissions",
                path.display()
            )))
        }
    };
    if meta.mode() & 0o077 != 0 {
        return Err(ProviderError::permanent(format!(
            "the registry credentials file {} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        ProviderError::permanent(format!(
            "cannot read the registry credentials file {}: {e}; fix its permissions",
            path.display()
        ))
    })?);
    // serde's message could quote the file's content: say only where it is wrong.
    let file: AuthFile = serde_json::from_str(&text).map_err(|e| {
        ProviderError::permanent(format!(
            "the registry credentials file {} is not Docker's `{{\"auths\": {{\"<registry>\": {{\"auth\": \"<base64 user:password>\"}}}}}}` format (line {}, column {}); fix it",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    let entry = file.auths.iter().find(|(key, _)| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        key == registry
    });
    let Some((_, entry)) = entry else {
        return Ok(None);
    };
    let bad = || {
        ProviderError::permanent(format!(
            "the entry for {registry} in the registry credentials file {} has no usable `auth` (base64 of user:password) or `username` and `password`; fix it",
            path.display()
        ))
    };
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryCredentials::new(
            username.clone(),
            password.clone(),
        )));
    }
    let encoded = entry.auth.as_deref().ok_or_else(bad)?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?,
    );
    let decoded = std::str::from_utf8(&decoded).map_err(|_| bad())?;
    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(RegistryCredentials::new(username, password)))
}

/// Whether `registry` (`host[:port]`) is on this machine: spoken to over plain HTTP.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An `oci-client` for `registry`.
pub fn client_for(registry: &str) -> Client {
    // The TLS stack the control plane's door uses too (ring); the first install wins.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if is_loopback(registry) {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
}

fn oci_auth(credentials: Option<&RegistryCredentials>) -> RegistryAuth {
    credentials
        .map(RegistryCredentials::oci)
        .unwrap_or(RegistryAuth::Anonymous)
}

fn oci_reference(text: &str, image: &str) -> Result<Reference, ProviderError> {
    text.parse::<Reference>().map_err(|e| {
        ProviderError::permanent(format!(
            "{image} is not a reference the registry client accepts ({e}); check it"
        ))
    })
}

/// A registry error as people should read it: what failed for which image, and what to do.
/// Never contains credentials (the client sends them in headers, never in URLs).
fn registry_error(
    image: &str,
    registry: &str,
    what: &str,
    e: &OciDistributionError,
) -> ProviderError {
    let text = e.to_string();
    let message = match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => format!(
            "registry {registry} refused the credentials for {image} while {what} (401 unauthorized); give the right ones in {USERNAME_ENV} and {PASSWORD_ENV} or the credentials file {}",
            auth_file_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| AUTH_FILE_ENV.to_string())
        ),
        OciDistributionError::RequestError(req) if req.is_connect() || req.is_timeout() => {
            format!(
                "cannot reach registry {registry} while {what} for {image}: {}; check the address and that the registry runs",
                connect_cause(req)
            )
        }
        OciDistributionError::DigestError(_) => format!(
            "the content the registry {registry} returned for {image} does not match its digest while {what}; the registry's content is corrupt or altered, push the image again"
        ),
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(image),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|err| {
                let code = format!("{:?}", err.code).to_ascii_uppercase();
                code.contains("UNKNOWN")
            }) =>
        {
            not_found(image)
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(image),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|err| {
                format!("{:?}", err.code)
                    .to_ascii_uppercase()
                    .contains("UNAUTHORIZED")
            }) =>
        {
            format!(
                "registry {registry} refused the credentials for {image} while {what} (unauthorized); give the right ones in {USERNAME_ENV} and {PASSWORD_ENV} or the credentials file"
            )
        }
        _ => format!("registry {registry} failed while {what} for {image}: {text}; check the registry and retry"),
    };
    ProviderError::permanent(message)
}

fn not_found(image: &str) -> String {
    format!(
        "{image} is not in the registry; push it with `cutover push` and use the digest it prints"
    )
}

fn connect_cause(e: &reqwest::Error) -> String {
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(c) = cause {
        last = c.to_string();
        cause = c.source();
    }
    last
}

/// What the manifest check found about an image by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFacts {
    /// Digest of the platform's image manifest (the reference's own when it is not a list).
    pub manifest_digest: String,
    /// Digest of its config: the image id the Engine gives it.
    pub config_digest: String,
}

/// The Engine's name for this host's architecture.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawEntry>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawEntry {
    digest: String,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
}

/// Look at the manifest of `reference` before anything is pulled: it exists, its content
/// matches its digest, and (for a manifest list) it has an image for linux on this host's
/// architecture. Returns that image's manifest and config digests.
pub async fn inspect_manifest(
    reference: &ImageRef,
    credentials: Option<&RegistryCredentials>,
) -> Result<ManifestFacts, ProviderError> {
    let image = reference.to_string();
    let client = client_for(&reference.registry);
    let auth = oci_auth(credentials);
    let oci = oci_reference(&image, &image)?;
    let (body, digest) = client
        .pull_manifest_raw(&oci, &auth, MANIFEST_TYPES)
        .await
        .map_err(|e| registry_error(&image, &reference.registry, "reading its manifest", &e))?;
    check_digest(&image, &body, &reference.digest)?;
    let manifest: RawManifest = serde_json::from_slice(&body).map_err(|e| {
        ProviderError::permanent(format!(
            "the manifest of {image} is not an image manifest or index ({e}); push an image built for linux/{}",
            host_arch()
        ))
    })?;
    let (manifest, digest) = match manifest.manifests {
        Some(entries) => {
            let arch = host_arch();
            let found = entries.iter().find(|entry| {
                entry
                    .platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            });
            let Some(entry) = found else {
                let platforms: Vec<String> = entries
                    .iter()
                    .map(|e| match &e.platform {
                        Some(p) => format!("{}/{}", p.os, p.architecture),
                        None => "unknown".to_string(),
                    })
                    .collect();
                return Err(ProviderError::permanent(format!(
                    "{image} is a manifest list without an image for linux/{arch}, this host's platform (it has: {}); push an image built for linux/{arch}",
                    if platforms.is_empty() { "none".to_string() } else { platforms.join(", ") }
                )));
            };
            let platform_ref = format!("{}@{}", reference.name(), entry.digest);
            let oci = oci_reference(&platform_ref, &image)?;
            let (body, _) = client
                .pull_manifest_raw(&oci, &auth, MANIFEST_TYPES)
                .await
                .map_err(|e| {
                    registry_error(
                        &image,
                        &reference.registry,
                        "reading its linux/amd64 manifest",
                        &e,
                    )
                })?;
            check_digest(&image, &body, &entry.digest)?;
            let inner: RawManifest = serde_json::from_slice(&body).map_err(|e| {
                ProviderError::permanent(format!(
                    "the linux/{arch} manifest of {image} is not an image manifest ({e}); push the image again"
                ))
            })?;
            (inner, entry.digest.clone())
        }
        None => (manifest, digest),
    };
    let config = manifest.config.ok_or_else(|| {
        ProviderError::permanent(format!(
            "the manifest of {image} ({}) names no config, so it is not a runnable image; push an image built for linux/{}",
            manifest.media_type.as_deref().unwrap_or("no media type"),
            host_arch()
        ))
    })?;
    Ok(ManifestFacts {
        manifest_digest: digest,
        config_digest: config.digest,
    })
}

fn check_digest(image: &str, body: &[u8], expected: &str) -> Result<(), ProviderError> {
    let actual = cutover_model::sha256_digest(body);
    if actual != expected {
        return Err(ProviderError::permanent(format!(
            "the registry returned content for {image} whose digest is {actual}, not {expected}; the registry's content does not match the digest, push the image again"
        )));
    }
    Ok(())
}

/// The attestations stored next to `reference` (its `.att` tag): each layer, a DSSE
/// envelope. Refuses when there are none.
pub async fn fetch_attestations(
    reference: &ImageRef,
    credentials: Option<&RegistryCredentials>,
) -> Result<Vec<Vec<u8>>, ProviderError> {
    let image = reference.to_string();
    let tag = reference.attestation_tag();
    let client = client_for(&reference.registry);
    let auth = oci_auth(credentials);
    let oci = oci_reference(&format!("{}:{tag}", reference.name()), &image)?;
    let (body, _) = client
        .pull_manifest_raw(&oci, &auth, MANIFEST_TYPES)
        .await
        .map_err(|e| {
            let err = registry_error(&image, &reference.registry, "reading its attestations", &e);
            if err.message.contains("is not in the registry") {
                ProviderError::permanent(format!(
                    "{image} has no attestations in the registry (no tag {tag} in {}); it was not pushed by `cutover push` from a signed build, refusing to run it",
                    reference.name()
                ))
            } else {
                err
            }
        })?;
    let manifest: RawManifest = serde_json::from_slice(&body).map_err(|e| {
        ProviderError::permanent(format!(
            "the attestations of {image} (tag {tag}) are not an OCI artifact manifest ({e}); push the image again with `cutover push`"
        ))
    })?;
    let mut out = Vec::new();
    for layer in &manifest.layers {
        if layer.media_type != DSSE_MEDIA_TYPE {
            continue;
        }
        if layer.size > MAX_ATTESTATION_BYTES {
            return Err(ProviderError::permanent(format!(
                "an attestation of {image} (tag {tag}) is {} bytes, more than the {} allowed; push the image again with `cutover push`",
                layer.size, MAX_ATTESTATION_BYTES
            )));
        }
        let descriptor = oci_client::manifest::OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        client
            .pull_blob(&oci, &descriptor, &mut bytes)
            .await
            .map_err(|e| {
                registry_error(&image, &reference.registry, "reading an attestation", &e)
            })?;
        check_digest(&image, &bytes, &layer.digest)?;
        out.push(bytes);
    }
    if out.is_empty() {
        return Err(ProviderError::permanent(format!(
            "{image} has no attestations in the registry (tag {tag} holds no DSSE envelope); push it with `cutover push` from a signed build, refusing to run it"
        )));
    }
    Ok(out)
}

/// Store `envelopes` (DSSE, JSON each) next to `reference` under its `.att` tag, as an OCI
/// artifact with one layer per envelope. Replaces what the tag held.
pub async fn push_attestations(
    reference: &ImageRef,
    envelopes: Vec<Vec<u8>>,
    credentials: Option<&RegistryCredentials>,
) -> Result<(), ProviderError> {
    let image = reference.to_string();
    let client = client_for(&reference.registry);
    let auth = oci_auth(credentials);
    let oci = oci_reference(
        &format!("{}:{}", reference.name(), reference.attestation_tag()),
        &image,
    )?;
    let layers: Vec<ImageLayer> = envelopes
        .into_iter()
        .map(|bytes| ImageLayer::new(bytes, DSSE_MEDIA_TYPE.to_string(), None))
        .collect();
    let config = Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.image.config.v1+json".to_string(),
        None,
    );
    client
        .push(&oci, &layers, config, &auth, None)
        .await
        .map_err(|e| registry_error(&image, &reference.registry, "pushing its attestations", &e))?;
    Ok(())
}

impl DockerProvider {
    /// Push the local image `image_id` to `registry/repository:tag` through the Engine and
    /// return it by digest.
    pub async fn push_image_to(
        &self,
        image_id: &str,
        registry: &str,
        repository: &str,
        tag: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<ImageRef, ProviderError> {
        let name = format!("{registry}/{repository}");
        let target = format!("{name}:{tag}");
        self.docker
            .tag_image(
                image_id,
                Some(TagImageOptionsBuilder::default().repo(&name).tag(tag).build()),
            )
            .await
            .map_err(|e| {
                ProviderError::permanent(format!(
                    "tagging image {image_id} as {target} failed: {}; check that the image exists (`cutover build` made it)",
                    describe(&e)
                ))
            })?;
        let options = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self.docker.push_image(
            &name,
            Some(options),
            credentials.map(|c| c.docker(registry)),
        );
        let mut digest = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| push_failed(&target, registry, &describe(&e)))?;
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_default();
                return Err(push_failed(&target, registry, &message));
            }
            if let Some(status) = info.status.as_deref() {
                if let Some(found) = status
                    .split_whitespace()
                    .skip_while(|w| *w != "digest:")
                    .nth(1)
                {
                    digest = Some(found.to_string());
                }
            }
        }
        let digest = digest.ok_or_else(|| {
            ProviderError::permanent(format!(
                "the Engine pushed {target} but reported no digest; push again"
            ))
        })?;
        ImageRef::parse(&format!("{name}@{digest}")).map_err(|e| {
            ProviderError::permanent(format!(
                "the Engine reported an unusable digest for {target}: {e}"
            ))
        })
    }
}

fn push_failed(target: &str, registry: &str, why: &str) -> ProviderError {
    let lower = why.to_ascii_lowercase();
    let advice = if lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("no basic auth")
    {
        format!("registry {registry} refused the credentials; give the right ones in {USERNAME_ENV} and {PASSWORD_ENV} or the credentials file")
    } else if lower.contains("connection refused")
        || lower.contains("no such host")
        || lower.contains("timeout")
    {
        format!("cannot reach registry {registry}; check the address and that the registry runs")
    } else {
        "check the registry and retry".to_string()
    };
    ProviderError::permanent(format!("pushing {target} failed: {why}; {advice}"))
}

/// Pulling by digest for [`ImageBuilder::pull`].
pub(crate) async fn pull(
    provider: &DockerProvider,
    reference: &ImageRef,
    tag: &str,
) -> Result<PulledImage, ProviderError> {
    let image = reference.to_string();
    let credentials = RegistryCredentials::load(&reference.registry)?;
    let facts = inspect_manifest(reference, credentials.as_ref()).await?;
    let attestations = fetch_attestations(reference, credentials.as_ref()).await?;
    let present = provider.inspect_image(&image).await?;
    if present.is_none() {
        let options = CreateImageOptionsBuilder::default()
            .from_image(&image)
            .build();
        let mut stream = provider.docker.create_image(
            Some(options),
            None,
            credentials.as_ref().map(|c| c.docker(&reference.registry)),
        );
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| pull_failed(&image, &reference.registry, &describe(&e)))?;
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_default();
                return Err(pull_failed(&image, &reference.registry, &message));
            }
        }
    }
    let pulled = provider.inspect_image(&image).await?.ok_or_else(|| {
        ProviderError::transient(format!(
            "{image} was pulled but the Engine does not list it; retry"
        ))
    })?;
    if pulled.id != facts.config_digest {
        return Err(ProviderError::permanent(format!(
            "{image} was pulled as image {}, but its manifest names config {}; the content does not match the digest, refusing it",
            pulled.id, facts.config_digest
        )));
    }
    let (repo, local_tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    provider
        .docker
        .tag_image(
            &pulled.id,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(local_tag)
                    .build(),
            ),
        )
        .await
        .map_err(|e| {
            if is_not_found(&e) {
                ProviderError::transient(format!(
                    "{image} vanished while it was tagged {tag}; retry"
                ))
            } else {
                ProviderError::transient(format!(
                    "tagging {image} as {tag} failed: {}; retry",
                    describe(&e)
                ))
            }
        })?;
    Ok(PulledImage {
        image: ImageInfo {
            id: pulled.id,
            tag: tag.to_string(),
            warning: None,
        },
        attestations,
    })
}

fn pull_failed(image: &str, registry: &str, why: &str) -> ProviderError {
    ProviderError::permanent(format!(
        "pulling {image} from {registry} failed: {why}; check that the registry runs and the credentials are right"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let creds = RegistryCredentials::new("ci", "canary-Zq8v1x");
        let shown = format!("{creds:?}");
        assert!(shown.contains("ci"));
        assert!(!shown.contains("canary-Zq8v1x"), "{shown}");
    }

    #[test]
    fn reads_docker_auths_and_refuses_a_file_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // base64("ci:canary-Zq8v1x")
        std::fs::write(
            &path,
            r#"{"auths": {"127.0.0.1:5000": {"auth": "Y2k6Y2FuYXJ5LVpxOHYxeA=="}, "https://other.example/": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = from_auth_file(&path, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(creds.username, "ci");
        assert_eq!(creds.password.as_str(), "canary-Zq8v1x");
        let other = from_auth_file(&path, "other.example").unwrap().unwrap();
        assert_eq!(other.username, "u");
        assert!(from_auth_file(&path, "nowhere:1").unwrap().is_none());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = from_auth_file(&path, "127.0.0.1:5000").unwrap_err();
        assert!(err.message.contains("chmod 600"), "{}", err.message);
        assert!(!err.message.contains("canary"), "{}", err.message);
    }

    #[test]
    fn a_malformed_file_is_refused_without_quoting_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, r#"{"auths": {"r:1": {"auth": canary-Zq8v1x}}}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = from_auth_file(&path, "r:1").unwrap_err();
        assert!(!err.message.contains("canary"), "{}", err.message);
    }

    #[test]
    fn only_loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
