//! Bodies of `/api/v1/secrets…`. Values go in (base64, in a request body, never a URL or
//! an argument) and never come out: every response names secrets and versions only.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One stored version of a secret, as anyone allowed to list secrets sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretVersionLine {
    pub version: u64,
    pub created_at_ms: u64,
    /// The principal that stored it.
    pub created_by: String,
    /// How it came: `api` (set or rotate), `env://VAR` or `file:///path` (a spec reference).
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Releases of the environment that pin this version.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// A secret of an environment: its versions, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretLine {
    pub env: String,
    pub name: String,
    /// The newest version that is not revoked (what a deploy pins).
    pub latest: Option<u64>,
    /// Warn when the latest version is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Age of the latest version.
    pub age_ms: u64,
    /// The latest version is older than `max_age_ms`: rotate it.
    pub expired: bool,
    pub versions: Vec<SecretVersionLine>,
}

/// `PUT /api/v1/secrets/{env}/{name}` and `POST …/rotate`: a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value, base64 (standard alphabet). Never echoed.
    pub value_base64: String,
    /// Warn (status, webhook) when the latest version is older than this, e.g. `90d`.
    /// Kept until changed; `"none"` clears it.
    #[serde(default)]
    pub max_age: Option<String>,
}

/// `POST /api/v1/secrets/{env}/{name}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeSecret {
    pub version: u64,
}

/// What a change of a secret did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretChanged {
    pub env: String,
    pub name: String,
    /// The version stored, revoked, or (for a removal) the last one there was.
    pub version: u64,
}

/// `POST /api/v1/secrets/rewrap`: move every data key to a new master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewrapSecrets {
    /// The new master key: base64 of 32 random bytes.
    pub new_key_base64: String,
}

/// What a rewrap did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RewrapReport {
    pub secrets: usize,
    pub versions: usize,
    /// Public id of the master key now in use.
    pub key_id: String,
}

/// `GET /api/v1/secrets` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
pub struct SecretsQuery {
    /// Only this environment.
    #[serde(default)]
    pub env: Option<String>,
}
