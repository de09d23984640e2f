//! A reference to an image in an OCI registry, pinned by digest:
//! `HOST[:PORT]/REPO@sha256:<64 hex>`. A tag alone is refused: a tag can be moved to other
//! content, so what was scanned and signed is named by its digest.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `registry/repository@digest`, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageRef {
    /// `host[:port]`, e.g. `127.0.0.1:5000` or `registry.example.com`.
    pub registry: String,
    /// Path in the registry, e.g. `team/hello`.
    pub repository: String,
    /// `sha256:<64 lowercase hex>`: the manifest (or index) digest.
    pub digest: String,
}

/// Why a string is not an image reference pinned by digest. Messages say what to write.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageRefError {
    #[error("`{0}` names no digest: a tag can be moved to other content, so name the image by digest (`HOST[:PORT]/REPO@sha256:<hex>`, as `cutover push` prints it)")]
    NoDigest(String),
    #[error("`{0}` has a digest that is not `sha256:` followed by 64 lowercase hex digits: copy the digest `cutover push` printed")]
    BadDigest(String),
    #[error("`{0}` names no registry: write `HOST[:PORT]/REPO@sha256:<hex>` (e.g. `127.0.0.1:5000/hello@sha256:…`)")]
    NoRegistry(String),
    #[error("`{0}` has an invalid repository name: use lowercase letters, digits and `._-/`")]
    BadRepository(String),
    #[error("`{0}` names both a tag and a digest: drop the tag, the digest alone names the image")]
    TagAndDigest(String),
}

impl ImageRef {
    /// Parse `HOST[:PORT]/REPO@sha256:<hex>`.
    pub fn parse(text: &str) -> Result<ImageRef, ImageRefError> {
        let text = text.trim();
        let Some((name, digest)) = text.split_once('@') else {
            return Err(ImageRefError::NoDigest(text.to_string()));
        };
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageRefError::BadDigest(text.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ImageRefError::BadDigest(text.to_string()));
        }
        let Some((registry, repository)) = name.split_once('/') else {
            return Err(ImageRefError::NoRegistry(text.to_string()));
        };
        let registry_like = registry.contains('.')
            || registry.contains(':')
            || registry == "localhost"
            || registry.starts_with('[');
        if registry.is_empty() || !registry_like {
            return Err(ImageRefError::NoRegistry(text.to_string()));
        }
        if let Some((host, port)) = registry.rsplit_once(':') {
            if !registry.starts_with('[') && (host.is_empty() || port.parse::<u16>().is_err()) {
                return Err(ImageRefError::NoRegistry(text.to_string()));
            }
        }
        if repository.contains(':') {
            return Err(ImageRefError::TagAndDigest(text.to_string()));
        }
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && part.as_bytes()[0].is_ascii_alphanumeric()
            });
        if !valid_repo {
            return Err(ImageRefError::BadRepository(text.to_string()));
        }
        Ok(ImageRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest: digest.to_string(),
        })
    }

    /// `registry/repository`, without the digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag the attestations of this image are stored under, next to it in the same
    /// repository: `sha256-<hex>.att` (cosign's naming; distribution 2.8 has no referrers
    /// API).
    pub fn attestation_tag(&self) -> String {
        attestation_tag(&self.digest)
    }
}

/// `sha256-<hex>.att` for a manifest digest `sha256:<hex>`.
pub fn attestation_tag(digest: &str) -> String {
    format!("{}.att", digest.replace(':', "-"))
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_registry_repository_and_digest() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/hello@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/hello");
        assert_eq!(r.digest, format!("sha256:{HEX}"));
        assert_eq!(
            r.to_string(),
            format!("127.0.0.1:5000/team/hello@sha256:{HEX}")
        );
        assert_eq!(r.attestation_tag(), format!("sha256-{HEX}.att"));
        let r = ImageRef::parse(&format!("registry.example.com/hello@sha256:{HEX}")).unwrap();
        assert_eq!(r.name(), "registry.example.com/hello");
    }

    #[test]
    fn refuses_a_tag_without_digest_and_says_why() {
        let e = ImageRef::parse("127.0.0.1:5000/hello:latest").unwrap_err();
        assert!(matches!(e, ImageRefError::NoDigest(_)));
        assert!(e.to_string().contains("a tag can be moved"), "{e}");
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            format!("127.0.0.1:5000/hello@sha256:{}", &HEX[..63]),
            format!("127.0.0.1:5000/hello@sha512:{HEX}"),
            format!("127.0.0.1:5000/hello@sha256:{}", HEX.to_uppercase()),
            format!("hello@sha256:{HEX}"),
            format!("library/hello@sha256:{HEX}"),
            format!("127.0.0.1:notaport/hello@sha256:{HEX}"),
            format!("127.0.0.1:5000/Hello@sha256:{HEX}"),
            format!("127.0.0.1:5000/hello:v1@sha256:{HEX}"),
            format!("127.0.0.1:5000/@sha256:{HEX}"),
        ] {
            assert!(ImageRef::parse(&bad).is_err(), "{bad} was accepted");
        }
    }
}
