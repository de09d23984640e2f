//! The file as written: serde structs that refuse unknown keys and keep the byte span of
//! every value, so validation can point at the exact line and column.
//!
//! Almost every key is an `Option` even when required: a missing key is reported by
//! validation with a helpful message, together with the other problems of the file.
//! To add a section (e.g. a future `[secrets]` table), add an `Option<…>` field to
//! [`RawSpec`] and convert it in `convert.rs`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;
pub(crate) type SpannedMap<V> = BTreeMap<S<String>, S<V>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpec {
    pub app: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub build: Option<S<RawBuild>>,
    pub container: Option<RawContainer>,
    pub health: Option<RawHealth>,
    pub supply: Option<RawSupply>,
    pub environments: Option<S<SpannedMap<RawEnvironment>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    pub cargo: Option<S<RawCargo>>,
    pub context: Option<S<String>>,
    pub dockerfile: Option<S<String>>,
    pub args: Option<S<SpannedMap<String>>>,
    pub image: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCargo {
    pub manifest: Option<S<String>>,
    pub bin: Option<S<String>>,
    pub profile: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContainer {
    pub port: Option<S<i64>>,
    pub command: Option<S<Vec<S<String>>>>,
    pub env: Option<SpannedMap<String>>,
    pub memory: Option<S<RawSize>>,
    pub cpus: Option<S<f64>>,
    pub pids_limit: Option<S<i64>>,
    pub user: Option<S<String>>,
    pub read_only: Option<S<bool>>,
    pub tmpfs: Option<S<Vec<S<String>>>>,
    pub secrets: Option<SpannedMap<RawSecret>>,
}

/// One entry of `[container.secrets]`: `name = "secret://x"` or
/// `name = { source = "…", as_env = true, path = "…" }`.
#[derive(Debug)]
pub(crate) enum RawSecret {
    Short(String),
    Table(RawSecretTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretTable {
    pub source: Option<S<String>>,
    pub as_env: Option<S<bool>>,
    pub path: Option<S<String>>,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a source such as \"secret://db-password\", or a table { source = \"…\", as_env = false, path = \"/run/secrets/…\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Short(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
                RawSecretTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSecret::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub healthy_threshold: Option<S<i64>>,
    pub unhealthy_threshold: Option<S<i64>>,
    pub deadline: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    pub listen: Option<S<String>>,
    pub replicas: Option<S<i64>>,
    pub retire_after: Option<S<String>>,
    pub drain_timeout: Option<S<String>>,
    pub response_timeout: Option<S<String>>,
    pub approval: Option<S<bool>>,
    pub protected: Option<S<bool>>,
    pub approvals: Option<S<RawApprovals>>,
    pub gate: Option<S<RawGate>>,
    pub trusted_keys: Option<S<Vec<S<String>>>>,
    pub keep_releases: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSupply {
    pub signing_key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApprovals {
    pub required: Option<S<i64>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGate {
    pub fail_on: Option<S<String>>,
    pub fail_on_secrets: Option<S<bool>>,
    pub exceptions: Option<S<String>>,
    pub secret_rules: Option<S<String>>,
    pub max_advisory_age: Option<S<String>>,
    pub allow_missing_advisories: Option<S<bool>>,
    pub fail_on_unmaintained: Option<S<bool>>,
}

/// A memory size as written: a number of bytes or a string with a unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"64MiB\", \"128m\", \"1g\" or a number of bytes")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}
