//! Guardrails: what an environment requires of every plan, held by the control plane and
//! owned by admins, never taken from the request. A spec may be stricter than its
//! environment's guardrails, never weaker: [`enforce`] runs before anything is planned (by
//! every entry point: socket, HTTP API, web UI; deploy, plan, rollback) and refuses a spec
//! with the list of each setting it tried to loosen (422).
//!
//! Versions are kept (`guardrails` tree, `<env>\0<version>`): every set makes version N+1
//! naming the person, the time and the text's digest. The first spec seen for an
//! environment without guardrails proposes some (derived from it); an admin accepts them
//! (`cutover guardrails accept`), and an admin's own first deploy accepts them at once.
//!
//! Verification uses the guardrails' copies of the trusted keys (and a pinned exceptions
//! or secret rules file is used from the control plane's copy of the checked bytes): the
//! spec's paths are replaced before planning by files under `<state>/guardrails/`, named by
//! their digest, so nothing the spec points at can change after the check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use toml::Spanned;

use cutover_model::{format_duration_ms, now_ms, BuildSpec, LivePeriod, Spec};
use cutover_signing::PublicKey;
use cutover_spec::SpecError;
use cutover_store::{Claim, TypedTree};

use crate::api::{
    ContainerFloor, ErrorBody, GateFloor, GuardrailViolation, Guardrails, GuardrailsProposal,
    GuardrailsQuery, GuardrailsShow, GuardrailsVersion, SetGuardrails,
};
use crate::auth::{Principal, Role};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::{audit, ControlPlane, ServerError};

const VERSIONS_TREE: &str = "guardrails";
const PROPOSALS_TREE: &str = "guardrail_proposals";
/// Severities from least to most strict as a `fail_on` floor.
const STRICTNESS: [&str; 5] = ["none", "critical", "high", "medium", "low"];

fn versions(cp: &ControlPlane) -> Result<TypedTree<GuardrailsVersion>, ServerError> {
    Ok(cp.store.typed_tree(VERSIONS_TREE)?)
}

fn proposals(cp: &ControlPlane) -> Result<TypedTree<GuardrailsProposal>, ServerError> {
    Ok(cp.store.typed_tree(PROPOSALS_TREE)?)
}

fn version_key(env: &str, version: u64) -> String {
    format!("{env}\0{version:020}")
}

/// The guardrails in force for `env` (its newest version).
pub fn current(cp: &ControlPlane, env: &str) -> Result<Option<GuardrailsVersion>, ServerError> {
    Ok(versions(cp)?
        .scan_prefix(&format!("{env}\0"))?
        .into_iter()
        .map(|(_, v)| v)
        .next_back())
}

/// Version `version` of `env`'s guardrails.
pub fn version(
    cp: &ControlPlane,
    env: &str,
    version: u64,
) -> Result<Option<GuardrailsVersion>, ServerError> {
    Ok(versions(cp)?.get(&version_key(env, version))?)
}

/// The proposal waiting for `env`, if any.
pub fn proposal(cp: &ControlPlane, env: &str) -> Result<Option<GuardrailsProposal>, ServerError> {
    Ok(proposals(cp)?.get(env)?)
}

/// Save `guardrails` as the next version of `env`'s and audit it.
fn save_version(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
    text: &str,
    guardrails: Guardrails,
    how: &str,
) -> Result<GuardrailsVersion, ServerError> {
    let tree = versions(cp)?;
    let mut next = current(cp, env)?.map_or(1, |v| v.version + 1);
    let saved = loop {
        let candidate = GuardrailsVersion {
            env: env.to_string(),
            version: next,
            set_by: who.person.clone(),
            set_at_ms: now_ms(),
            how: how.to_string(),
            digest: cutover_model::sha256_digest(text.as_bytes()),
            text: text.to_string(),
            guardrails: guardrails.clone(),
        };
        match tree.claim(&version_key(env, next), &candidate)? {
            Claim::Inserted => break candidate,
            Claim::Existing(_) => next += 1,
        }
    };
    let proposal = proposals(cp)?.remove(env)?;
    cp.store.flush()?;
    let audited = audit::record(
        &cp.store,
        &who.name,
        &format!("guardrails.{}", if how == "set" { "set" } else { "accept" }),
        env,
        json!({
            "version": saved.version,
            "digest": saved.digest,
            "how": how,
            "person": who.person,
        }),
    );
    if let Err(e) = audited {
        // Guardrails the audit log cannot record never take effect.
        tree.remove(&version_key(env, saved.version))?;
        if let Some(proposal) = proposal {
            proposals(cp)?.insert(env, &proposal)?;
        }
        cp.store.flush()?;
        return Err(match e {
            ServerError::AuditSink(_) => ServerError::AuditSink(format!(
                "guardrails version {} of {env} was not saved",
                saved.version
            )),
            other => other,
        });
    }
    Ok(saved)
}

/// Set `env`'s guardrails from the TOML `text` of `file` (admin).
pub fn set(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
    text: &str,
    file: &str,
) -> Result<GuardrailsVersion, ServerError> {
    who.require(Role::Admin, Some(env))?;
    check_env_name(env)?;
    let guardrails = parse(text, Path::new(file))?;
    if guardrails.requires_success_in.iter().any(|e| e == env) {
        return Err(ServerError::BadRequest(format!(
            "{file}: requires_success_in: {env} cannot require images to have soaked in {env} itself; name the environments before it (e.g. staging)"
        )));
    }
    save_version(cp, who, env, text, guardrails, "set")
}

/// Accept the proposal waiting for `env` (admin).
pub fn accept(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
) -> Result<GuardrailsVersion, ServerError> {
    who.require(Role::Admin, Some(env))?;
    let proposal = proposal(cp, env)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "environment {env} has no proposed guardrails to accept; `cutover guardrails set {env} <file>` sets them"
        ))
    })?;
    save_version(
        cp,
        who,
        env,
        &proposal.text,
        proposal.guardrails,
        "accepted",
    )
}

fn check_env_name(env: &str) -> Result<(), ServerError> {
    let ok = !env.is_empty()
        && env.len() <= 64
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !env.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ServerError::BadRequest(format!(
            "env: {env:?} is not an environment name ([a-z0-9][a-z0-9-]*)"
        )))
    }
}

// ----- the file -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardrails {
    approvals: Option<Spanned<i64>>,
    listen: Option<Spanned<String>>,
    #[serde(default)]
    build_roots: Vec<Spanned<String>>,
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
    #[serde(default)]
    gate: RawGate,
    #[serde(default)]
    container: RawContainer,
    #[serde(default)]
    requires_success_in: Vec<Spanned<String>>,
    soak: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGate {
    fail_on: Option<Spanned<String>>,
    fail_on_secrets: Option<bool>,
    exceptions_sha256: Option<Spanned<String>>,
    secret_rules_sha256: Option<Spanned<String>>,
    allow_missing_advisories: Option<bool>,
    max_advisory_age: Option<Spanned<String>>,
    fail_on_unmaintained: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    non_root: Option<bool>,
    read_only: Option<bool>,
    max_memory: Option<Spanned<toml::Value>>,
    max_cpus: Option<Spanned<f64>>,
    max_pids: Option<Spanned<i64>>,
}

/// Parse a guardrails file. Errors name `file:line:column: field: message`, every problem
/// of the file at once; unknown keys are errors.
pub fn parse(text: &str, path: &Path) -> Result<Guardrails, SpecError> {
    let raw: RawGuardrails =
        toml::from_str(text).map_err(|e| cutover_spec::toml_file_error(text, path, &e))?;
    let mut errors: Vec<SpecError> = Vec::new();
    let mut fail = |span: std::ops::Range<usize>, field: &str, message: String| {
        errors.push(cutover_spec::error_at(text, path, span, field, message));
    };
    let approvals = match raw.approvals {
        None => 0,
        Some(a) if (0..=10).contains(a.get_ref()) => *a.get_ref() as u32,
        Some(a) => {
            fail(
                a.span(),
                "approvals",
                format!(
                    "must be between 0 (no approval) and 10, got {}",
                    a.get_ref()
                ),
            );
            0
        }
    };
    if let Some(listen) = &raw.listen {
        if listen.get_ref().parse::<SocketAddr>().is_err() {
            fail(
                listen.span(),
                "listen",
                format!(
                    "must be a socket address such as \"127.0.0.1:8080\", got {:?}",
                    listen.get_ref()
                ),
            );
        }
    }
    let mut build_roots = Vec::new();
    for (i, root) in raw.build_roots.iter().enumerate() {
        let given = Path::new(root.get_ref());
        if !given.is_absolute() {
            fail(
                root.span(),
                &format!("build_roots[{i}]"),
                format!("must be an absolute directory, got {:?}", root.get_ref()),
            );
            continue;
        }
        let resolved =
            std::fs::canonicalize(given).unwrap_or_else(|_| crate::projects::lexical(given));
        build_roots.push(resolved.to_string_lossy().into_owned());
    }
    let mut trusted_keys = Vec::new();
    for (i, pem) in raw.trusted_keys.iter().enumerate() {
        match PublicKey::from_pem(pem.get_ref(), &format!("trusted_keys[{i}]")) {
            Ok(key) => trusted_keys.push(key.to_pem()),
            Err(e) => fail(
                pem.span(),
                &format!("trusted_keys[{i}]"),
                format!("is not a public key in PEM: {e}"),
            ),
        }
    }
    let max_advisory_age_ms = match &raw.gate.max_advisory_age {
        None => None,
        Some(age) => match humantime::parse_duration(age.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d.as_millis() as u64),
            Ok(_) => {
                fail(
                    age.span(),
                    "gate.max_advisory_age",
                    "must be longer than 0".to_string(),
                );
                None
            }
            Err(e) => {
                fail(
                    age.span(),
                    "gate.max_advisory_age",
                    format!(
                        "is not a duration ({}): write e.g. \"7d\" or \"36h\", got {:?}",
                        e.to_string().trim_end_matches('.').to_lowercase(),
                        age.get_ref()
                    ),
                );
                None
            }
        },
    };
    let fail_on = match &raw.gate.fail_on {
        None => "critical".to_string(),
        Some(f) if STRICTNESS.contains(&f.get_ref().as_str()) => f.get_ref().clone(),
        Some(f) => {
            fail(
                f.span(),
                "gate.fail_on",
                format!(
                    "must be \"none\", \"low\", \"medium\", \"high\" or \"critical\", got {:?}",
                    f.get_ref()
                ),
            );
            "critical".to_string()
        }
    };
    let mut digest = |value: &Option<Spanned<String>>, field: &str| -> Option<String> {
        let value = value.as_ref()?;
        let text = value.get_ref();
        let ok = text.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        });
        if !ok {
            fail(
                value.span(),
                field,
                format!("must be \"sha256:\" and 64 lowercase hex digits (`sha256sum` of the file), got {text:?}"),
            );
        }
        Some(text.clone())
    };
    let exceptions_sha256 = digest(&raw.gate.exceptions_sha256, "gate.exceptions_sha256");
    let secret_rules_sha256 = digest(&raw.gate.secret_rules_sha256, "gate.secret_rules_sha256");
    let max_memory_bytes = match &raw.container.max_memory {
        None => None,
        Some(m) => {
            let parsed = match m.get_ref() {
                toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
                toml::Value::String(s) => cutover_spec::parse_memory(s),
                other => Err(format!(
                    "must be a size such as \"256MiB\" or a number of bytes, got {other}"
                )),
            };
            match parsed {
                Ok(bytes) => Some(bytes),
                Err(message) => {
                    fail(m.span(), "container.max_memory", message);
                    None
                }
            }
        }
    };
    if let Some(c) = &raw.container.max_cpus {
        if !(*c.get_ref() > 0.0 && c.get_ref().is_finite()) {
            fail(
                c.span(),
                "container.max_cpus",
                format!("must be > 0, got {}", c.get_ref()),
            );
        }
    }
    if let Some(p) = &raw.container.max_pids {
        if *p.get_ref() < 1 {
            fail(
                p.span(),
                "container.max_pids",
                format!("must be >= 1, got {}", p.get_ref()),
            );
        }
    }
    let mut requires_success_in: Vec<String> = Vec::new();
    for (i, env) in raw.requires_success_in.iter().enumerate() {
        let name = env.get_ref();
        if check_env_name(name).is_err() {
            fail(
                env.span(),
                &format!("requires_success_in[{i}]"),
                format!("must be an environment name ([a-z0-9][a-z0-9-]*), got {name:?}"),
            );
        } else if requires_success_in.contains(name) {
            fail(
                env.span(),
                &format!("requires_success_in[{i}]"),
                format!("lists {name:?} twice"),
            );
        } else {
            requires_success_in.push(name.clone());
        }
    }
    let soak_ms = match &raw.soak {
        None => None,
        Some(soak) => match humantime::parse_duration(soak.get_ref()) {
            Ok(_) if raw.requires_success_in.is_empty() => {
                fail(
                    soak.span(),
                    "soak",
                    "needs requires_success_in: name the environments the image must have soaked in, e.g. requires_success_in = [\"staging\"]".to_string(),
                );
                None
            }
            Ok(d) => Some(d.as_millis() as u64),
            Err(e) => {
                fail(
                    soak.span(),
                    "soak",
                    format!(
                        "is not a duration ({}): write e.g. \"30m\" or \"2h\", got {:?}",
                        e.to_string().trim_end_matches('.').to_lowercase(),
                        soak.get_ref()
                    ),
                );
                None
            }
        },
    };
    errors.sort_by_key(|e| (e.line, e.column));
    let mut errors = errors.into_iter();
    if let Some(mut first) = errors.next() {
        first.others = errors.collect();
        return Err(first);
    }
    Ok(Guardrails {
        approvals,
        listen: raw.listen.map(Spanned::into_inner),
        build_roots,
        trusted_keys,
        gate: GateFloor {
            fail_on,
            fail_on_secrets: raw.gate.fail_on_secrets.unwrap_or(true),
            exceptions_sha256,
            secret_rules_sha256,
            allow_missing_advisories: raw.gate.allow_missing_advisories.unwrap_or(true),
            max_advisory_age_ms,
            fail_on_unmaintained: raw.gate.fail_on_unmaintained.unwrap_or(false),
        },
        container: ContainerFloor {
            non_root: raw.container.non_root.unwrap_or(true),
            read_only: raw.container.read_only.unwrap_or(true),
            max_memory_bytes,
            max_cpus: raw.container.max_cpus.map(Spanned::into_inner),
            max_pids: raw.container.max_pids.map(Spanned::into_inner),
        },
        requires_success_in,
        soak_ms,
    })
}

/// `guardrails` as a file `parse` reads back to the same value.
pub fn render(guardrails: &Guardrails) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = String::from("# guardrails: what every plan of this environment must meet\n");
    out.push_str(&format!("approvals = {}\n", guardrails.approvals));
    if let Some(listen) = &guardrails.listen {
        out.push_str(&format!("listen = {}\n", quote(listen)));
    }
    let roots: Vec<String> = guardrails.build_roots.iter().map(|r| quote(r)).collect();
    out.push_str(&format!("build_roots = [{}]\n", roots.join(", ")));
    let keys: Vec<String> = guardrails
        .trusted_keys
        .iter()
        .map(|k| format!("'''\n{}'''", k.trim_end().to_string() + "\n"))
        .collect();
    out.push_str(&format!("trusted_keys = [{}]\n", keys.join(", ")));
    if !guardrails.requires_success_in.is_empty() {
        let envs: Vec<String> = guardrails
            .requires_success_in
            .iter()
            .map(|e| quote(e))
            .collect();
        out.push_str(&format!("requires_success_in = [{}]\n", envs.join(", ")));
        if let Some(ms) = guardrails.soak_ms {
            out.push_str(&format!("soak = \"{ms}ms\"\n"));
        }
    }
    out.push_str("\n[gate]\n");
    out.push_str(&format!("fail_on = {}\n", quote(&guardrails.gate.fail_on)));
    out.push_str(&format!(
        "fail_on_secrets = {}\n",
        guardrails.gate.fail_on_secrets
    ));
    if let Some(d) = &guardrails.gate.exceptions_sha256 {
        out.push_str(&format!("exceptions_sha256 = {}\n", quote(d)));
    }
    if let Some(d) = &guardrails.gate.secret_rules_sha256 {
        out.push_str(&format!("secret_rules_sha256 = {}\n", quote(d)));
    }
    out.push_str(&format!(
        "allow_missing_advisories = {}\n",
        guardrails.gate.allow_missing_advisories
    ));
    if let Some(ms) = guardrails.gate.max_advisory_age_ms {
        out.push_str(&format!("max_advisory_age = \"{ms}ms\"\n"));
    }
    out.push_str(&format!(
        "fail_on_unmaintained = {}\n",
        guardrails.gate.fail_on_unmaintained
    ));
    let c = &guardrails.container;
    out.push_str("\n[container]\n");
    out.push_str(&format!("non_root = {}\n", c.non_root));
    out.push_str(&format!("read_only = {}\n", c.read_only));
    if let Some(m) = c.max_memory_bytes {
        out.push_str(&format!("max_memory = {m}\n"));
    }
    if let Some(cpus) = c.max_cpus {
        out.push_str(&format!("max_cpus = {}\n", toml::Value::Float(cpus)));
    }
    if let Some(p) = c.max_pids {
        out.push_str(&format!("max_pids = {p}\n"));
    }
    out
}

/// `guardrails` in a few lines for people (status, the web UI): (setting, requirement).
pub fn summary(guardrails: &Guardrails) -> Vec<(&'static str, String)> {
    let g = guardrails;
    let mib = |b: u64| {
        if b.is_multiple_of(1 << 20) {
            format!("{}MiB", b >> 20)
        } else {
            format!("{b} bytes")
        }
    };
    let pinned = |d: &Option<String>| d.clone().unwrap_or_else(|| "none allowed".to_string());
    let mut container = vec![
        if g.container.non_root {
            "non-root"
        } else {
            "any user"
        }
        .to_string(),
        if g.container.read_only {
            "read-only root"
        } else {
            "writable root allowed"
        }
        .to_string(),
    ];
    if let Some(m) = g.container.max_memory_bytes {
        container.push(format!("memory <= {}", mib(m)));
    }
    if let Some(c) = g.container.max_cpus {
        container.push(format!("cpus <= {c}"));
    }
    if let Some(p) = g.container.max_pids {
        container.push(format!("pids <= {p}"));
    }
    let keys: Vec<String> = g
        .trusted_keys
        .iter()
        .filter_map(|p| key_id_of_pem(p))
        .map(|id| id.chars().take(16).collect())
        .collect();
    vec![
        (
            "approval",
            match g.approvals {
                0 => "not required".to_string(),
                n => format!("{n} distinct approver(s), never the starter"),
            },
        ),
        (
            "gate",
            format!(
                "fail on {} or worse; {}",
                g.gate.fail_on,
                if g.gate.fail_on_secrets {
                    "fail on secrets"
                } else {
                    "secrets allowed"
                }
            ),
        ),
        (
            "advisories",
            format!(
                "{}{}{}",
                if g.gate.allow_missing_advisories {
                    "a spec may opt out of the advisory database"
                } else {
                    "a current advisory database is required"
                },
                g.gate
                    .max_advisory_age_ms
                    .map(|ms| format!(
                        ", at most {} old",
                        cutover_model::format_duration(std::time::Duration::from_millis(ms))
                    ))
                    .unwrap_or_default(),
                if g.gate.fail_on_unmaintained {
                    "; fail on unmaintained"
                } else {
                    ""
                }
            ),
        ),
        ("exceptions", pinned(&g.gate.exceptions_sha256)),
        (
            "secret rules",
            g.gate
                .secret_rules_sha256
                .clone()
                .unwrap_or_else(|| "built-in".to_string()),
        ),
        (
            "trusted keys",
            if keys.is_empty() {
                "the control plane's own key".to_string()
            } else {
                keys.join(", ")
            },
        ),
        (
            "listen",
            g.listen.clone().unwrap_or_else(|| "any".to_string()),
        ),
        (
            "build roots",
            if g.build_roots.is_empty() {
                "any registered project".to_string()
            } else {
                g.build_roots.join(", ")
            },
        ),
        ("container", container.join(", ")),
        (
            "soak",
            if g.requires_success_in.is_empty() {
                "not required".to_string()
            } else {
                format!(
                    "live for {} in {} without a rollback, before deploys and promotions",
                    cutover_model::format_duration_ms(g.soak_ms.unwrap_or(0)),
                    g.requires_success_in.join(", ")
                )
            },
        ),
    ]
}

// ----- checking a spec -----

/// What the check needs to know of a spec beyond its values, read from the files it names.
#[derive(Debug, Clone, Default)]
pub struct SpecFacts {
    /// Per trusted key of the spec: its key id, or why it could not be read.
    pub key_ids: Vec<Result<String, String>>,
    /// PEM of each readable trusted key of the spec.
    pub key_pems: Vec<String>,
    /// The exceptions file's bytes and digest.
    pub exceptions: Option<(Vec<u8>, String)>,
    pub secret_rules: Option<(Vec<u8>, String)>,
    /// The build source (context or manifest), symlinks resolved.
    pub build_source: PathBuf,
    pub base_dir: PathBuf,
}

fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Read what the check needs from the files `spec`'s environment `env` names.
pub fn gather(spec: &Spec, env: &str) -> SpecFacts {
    let mut facts = SpecFacts {
        build_source: resolved(match &spec.build {
            BuildSpec::Dockerfile { context, .. } => context,
            BuildSpec::Cargo { manifest, .. } => manifest,
            // A pulled image has no source here: the spec's directory stands for it.
            BuildSpec::Image { .. } => &spec.base_dir,
        }),
        base_dir: resolved(&spec.base_dir),
        ..SpecFacts::default()
    };
    let Some(env) = spec.environments.get(env) else {
        return facts;
    };
    for path in &env.trusted_keys {
        match PublicKey::from_pem_file(path) {
            Ok(key) => {
                facts.key_ids.push(Ok(key.key_id().to_string()));
                facts.key_pems.push(key.to_pem());
            }
            Err(e) => facts.key_ids.push(Err(e.to_string())),
        }
    }
    let file = |path: &Option<PathBuf>| {
        let bytes = std::fs::read(path.as_ref()?).ok()?;
        let digest = cutover_model::sha256_digest(&bytes);
        Some((bytes, digest))
    };
    facts.exceptions = file(&env.gate.exceptions);
    facts.secret_rules = file(&env.gate.secret_rules);
    facts
}

fn key_id_of_pem(pem: &str) -> Option<String> {
    PublicKey::from_pem(pem, "guardrail key")
        .ok()
        .map(|k| k.key_id().to_string())
}

fn is_root_user(user: &str) -> bool {
    let uid = user.split(':').next().unwrap_or("");
    uid == "root"
        || (!uid.is_empty()
            && uid.chars().all(|c| c.is_ascii_digit())
            && uid.parse::<u64>() == Ok(0))
}

/// Each setting of `spec`'s environment `env` that is weaker than `rails` (pure).
pub fn violations(
    spec: &Spec,
    env_name: &str,
    rails: &Guardrails,
    facts: &SpecFacts,
) -> Vec<GuardrailViolation> {
    let mut out = Vec::new();
    let mut push = |field: String, spec: String, required: String| {
        out.push(GuardrailViolation {
            field,
            spec,
            required,
        })
    };
    let Some(env) = spec.environments.get(env_name) else {
        return out;
    };
    let at = |field: &str| format!("environments.{env_name}.{field}");
    let approval_on = env.approval || env.protected;
    if rails.approvals > 0 {
        if !approval_on {
            push(
                at("approval"),
                "false".into(),
                format!("true ({} approval(s))", rails.approvals),
            );
        } else if env.approvals.required < rails.approvals {
            push(
                at("approvals.required"),
                env.approvals.required.to_string(),
                format!("at least {}", rails.approvals),
            );
        }
    }
    let rank = |f: &str| STRICTNESS.iter().position(|s| *s == f).unwrap_or(0);
    if rank(&env.gate.fail_on) < rank(&rails.gate.fail_on) {
        push(
            at("gate.fail_on"),
            format!("{:?}", env.gate.fail_on),
            format!("{:?} or stricter", rails.gate.fail_on),
        );
    }
    if rails.gate.fail_on_secrets && !env.gate.fail_on_secrets {
        push(at("gate.fail_on_secrets"), "false".into(), "true".into());
    }
    if !rails.gate.allow_missing_advisories && env.gate.allow_missing_advisories {
        push(
            at("gate.allow_missing_advisories"),
            "true".into(),
            "false (a current advisory database is required)".into(),
        );
    }
    if let Some(max) = rails.gate.max_advisory_age_ms {
        if env.gate.max_advisory_age.as_millis() > u128::from(max) {
            push(
                at("gate.max_advisory_age"),
                cutover_model::format_duration(env.gate.max_advisory_age),
                format!(
                    "at most {}",
                    cutover_model::format_duration(std::time::Duration::from_millis(max))
                ),
            );
        }
    }
    if rails.gate.fail_on_unmaintained && !env.gate.fail_on_unmaintained {
        push(
            at("gate.fail_on_unmaintained"),
            "false".into(),
            "true".into(),
        );
    }
    let pinned = |field: &str,
                  given: &Option<PathBuf>,
                  digest: &Option<(Vec<u8>, String)>,
                  required: &Option<String>,
                  push: &mut dyn FnMut(String, String, String)| {
        let Some(path) = given else { return };
        let actual = digest
            .as_ref()
            .map_or("an unreadable file".to_string(), |(_, d)| d.clone());
        match required {
            None => push(
                at(field),
                path.display().to_string(),
                "none (the guardrails allow no such file)".into(),
            ),
            Some(required) if *required != actual => push(
                at(field),
                format!("{} ({actual})", path.display()),
                required.clone(),
            ),
            Some(_) => {}
        }
    };
    pinned(
        "gate.exceptions",
        &env.gate.exceptions,
        &facts.exceptions,
        &rails.gate.exceptions_sha256,
        &mut push,
    );
    pinned(
        "gate.secret_rules",
        &env.gate.secret_rules,
        &facts.secret_rules,
        &rails.gate.secret_rules_sha256,
        &mut push,
    );
    let allowed: Vec<String> = rails
        .trusted_keys
        .iter()
        .filter_map(|p| key_id_of_pem(p))
        .collect();
    for (i, id) in facts.key_ids.iter().enumerate() {
        let field = at(&format!("trusted_keys[{i}]"));
        match id {
            Ok(id) if allowed.contains(id) => {}
            Ok(id) => push(
                field,
                format!("key {id}"),
                if allowed.is_empty() {
                    "no keys but the control plane's own".to_string()
                } else {
                    format!("one of the keys {}", allowed.join(", "))
                },
            ),
            Err(e) => push(
                field,
                format!("an unreadable key ({e})"),
                "a trusted key".into(),
            ),
        }
    }
    if let Some(listen) = &rails.listen {
        if env.listen != *listen {
            push(at("listen"), env.listen.clone(), listen.clone());
        }
    }
    if !rails.build_roots.is_empty() {
        let inside = |p: &Path| rails.build_roots.iter().any(|r| p.starts_with(r));
        let required = rails.build_roots.join(" or ");
        let field = match &spec.build {
            BuildSpec::Dockerfile { .. } => "build.context",
            BuildSpec::Cargo { .. } => "build.cargo.manifest",
            BuildSpec::Image { .. } => "base_dir",
        };
        if !inside(&facts.build_source) && !matches!(spec.build, BuildSpec::Image { .. }) {
            push(
                field.into(),
                facts.build_source.display().to_string(),
                format!("inside {required}"),
            );
        }
        // A spec sent without base_dir has no directory here: it names no file and its
        // strategies are the built-in ones, so there is nothing to hold inside the roots.
        if !inside(&facts.base_dir) && !crate::projects::is_without_base(&spec.base_dir) {
            push(
                "base_dir".into(),
                facts.base_dir.display().to_string(),
                format!("inside {required}"),
            );
        }
    }
    let c = &spec.container;
    if rails.container.non_root && is_root_user(&c.user) {
        push(
            "container.user".into(),
            c.user.clone(),
            "a user other than root".into(),
        );
    }
    if rails.container.read_only && !c.read_only {
        push("container.read_only".into(), "false".into(), "true".into());
    }
    if let Some(max) = rails.container.max_memory_bytes {
        if c.memory_bytes > max {
            push(
                "container.memory".into(),
                format!("{} bytes", c.memory_bytes),
                format!("at most {max} bytes"),
            );
        }
    }
    if let Some(max) = rails.container.max_cpus {
        if c.cpus > max {
            push(
                "container.cpus".into(),
                c.cpus.to_string(),
                format!("at most {max}"),
            );
        }
    }
    if let Some(max) = rails.container.max_pids {
        if c.pids_limit > max {
            push(
                "container.pids_limit".into(),
                c.pids_limit.to_string(),
                format!("at most {max}"),
            );
        }
    }
    out
}

/// Guardrails derived from a spec (what its first deploy proposes): exactly its settings.
pub fn derive(spec: &Spec, env_name: &str, facts: &SpecFacts) -> Guardrails {
    let env = &spec.environments[env_name];
    Guardrails {
        approvals: if env.approval || env.protected {
            env.approvals.required
        } else {
            0
        },
        listen: Some(env.listen.clone()),
        build_roots: {
            // The spec's directory and the build source's.
            let source_dir = match &spec.build {
                BuildSpec::Dockerfile { .. } | BuildSpec::Image { .. } => {
                    facts.build_source.clone()
                }
                BuildSpec::Cargo { .. } => facts
                    .build_source
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            };
            let mut roots = vec![facts.base_dir.to_string_lossy().into_owned()];
            if !source_dir.starts_with(&facts.base_dir) {
                roots.push(source_dir.to_string_lossy().into_owned());
            }
            roots
        },
        trusted_keys: facts.key_pems.clone(),
        gate: GateFloor {
            fail_on: env.gate.fail_on.clone(),
            fail_on_secrets: env.gate.fail_on_secrets,
            exceptions_sha256: facts.exceptions.as_ref().map(|(_, d)| d.clone()),
            secret_rules_sha256: facts.secret_rules.as_ref().map(|(_, d)| d.clone()),
            allow_missing_advisories: env.gate.allow_missing_advisories,
            max_advisory_age_ms: Some(env.gate.max_advisory_age.as_millis() as u64),
            fail_on_unmaintained: env.gate.fail_on_unmaintained,
        },
        container: ContainerFloor {
            non_root: true,
            read_only: spec.container.read_only,
            max_memory_bytes: Some(spec.container.memory_bytes),
            max_cpus: Some(spec.container.cpus),
            max_pids: Some(spec.container.pids_limit),
        },
        // A spec says nothing of soaking: only an admin's guardrails file asks for it.
        requires_success_in: Vec::new(),
        soak_ms: None,
    }
}

/// Where the control plane keeps its copies of guardrail keys and pinned files.
fn files_dir(cp: &ControlPlane) -> Result<PathBuf, ServerError> {
    let store = cp.store.dir();
    if !store.is_absolute() {
        return Err(ServerError::Internal(
            "guardrail files need a store on disk".to_string(),
        ));
    }
    Ok(store.with_file_name("guardrails"))
}

/// Write `bytes` as `<dir>/<name>` (private) unless it is there with these bytes.
fn materialize(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, ServerError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|held| held == bytes) {
        return Ok(path);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ServerError::io(dir, e))?;
    let temp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| ServerError::io(&temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ServerError::io(&temp, e))?;
    std::fs::rename(&temp, &path).map_err(|e| ServerError::io(&path, e))?;
    Ok(path)
}

/// Check `spec` (for environment `env`) against the environment's guardrails and return
/// the spec to plan (its trusted keys replaced by the guardrails' copies, pinned files by
/// the control plane's copies) with the version of the guardrails it met. Without guardrails: an admin's start accepts the ones the
/// spec proposes (an admin's plan checks against them without saving); anyone else is
/// refused and the proposal is kept for an admin.
pub fn enforce(
    cp: &ControlPlane,
    who: &Principal,
    mut spec: Spec,
    env: &str,
    starting: bool,
) -> Result<(Spec, Option<u64>), ServerError> {
    let facts = gather(&spec, env);
    let (rails, met) = match current(cp, env)? {
        Some(v) => (v.guardrails, Some(v.version)),
        None => {
            let derived = derive(&spec, env, &facts);
            if who.can(Role::Admin, Some(env)) {
                let saved = if starting {
                    Some(
                        save_version(
                            cp,
                            who,
                            env,
                            &render(&derived),
                            derived.clone(),
                            "accepted-at-first-deploy",
                        )?
                        .version,
                    )
                } else {
                    None
                };
                (derived, saved)
            } else {
                let proposal = GuardrailsProposal {
                    env: env.to_string(),
                    proposed_by: who.person.clone(),
                    proposed_at_ms: now_ms(),
                    spec_digest: cutover_spec::spec_digest(&spec),
                    text: render(&derived),
                    guardrails: derived,
                };
                if proposals(cp)?.insert_if_absent(env, &proposal)? == proposal {
                    cp.store.flush()?;
                    audit::record(
                        &cp.store,
                        &who.name,
                        "guardrails.propose",
                        env,
                        json!({"spec_digest": proposal.spec_digest, "person": who.person}),
                    )
                    .inspect_err(|_| {
                        // An unaudited proposal is withdrawn (the next deploy proposes again).
                        let _ = proposals(cp).map(|t| t.remove(env));
                        let _ = cp.store.flush();
                    })?;
                }
                return Err(ServerError::Forbidden(format!(
                    "environment {env} has no guardrails yet; an admin reviews the ones proposed from this spec (`cutover guardrails show {env}`) and accepts them with `cutover guardrails accept {env}`, or sets them with `cutover guardrails set {env} <file>`"
                )));
            }
        }
    };
    let found = violations(&spec, env, &rails, &facts);
    if !found.is_empty() {
        let lines: Vec<String> = found
            .iter()
            .map(|v| format!("  {}: spec {}, required {}", v.field, v.spec, v.required))
            .collect();
        return Err(ServerError::Guardrails {
            message: format!(
                "the spec loosens the guardrails of environment {env} (`cutover guardrails show {env}`); nothing was planned:\n{}",
                lines.join("\n")
            ),
            violations: found,
        });
    }
    // Verification and the gate use the control plane's copies of what was checked.
    let needs_files = !rails.trusted_keys.is_empty()
        || facts.exceptions.is_some()
        || facts.secret_rules.is_some();
    if !needs_files {
        return Ok((spec, met));
    }
    let dir = files_dir(cp)?;
    let env_spec = spec.environments.get_mut(env).ok_or_else(|| {
        ServerError::Internal(format!("environment {env} vanished from the spec"))
    })?;
    if !rails.trusted_keys.is_empty() {
        let wanted: Vec<String> = facts
            .key_ids
            .iter()
            .filter_map(|k| k.clone().ok())
            .collect();
        let mut paths = Vec::new();
        for pem in &rails.trusted_keys {
            let Some(id) = key_id_of_pem(pem) else {
                continue;
            };
            if wanted.is_empty() || wanted.contains(&id) {
                paths.push(materialize(&dir, &format!("key-{id}.pem"), pem.as_bytes())?);
            }
        }
        env_spec.trusted_keys = paths;
    }
    if let Some((bytes, digest)) = &facts.exceptions {
        let name = format!("exceptions-{}.toml", digest.trim_start_matches("sha256:"));
        env_spec.gate.exceptions = Some(materialize(&dir, &name, bytes)?);
    }
    if let Some((bytes, digest)) = &facts.secret_rules {
        let name = format!("secret-rules-{}.toml", digest.trim_start_matches("sha256:"));
        env_spec.gate.secret_rules = Some(materialize(&dir, &name, bytes)?);
    }
    Ok((spec, met))
}

// ----- soaking -----

/// Refuse a deploy or promotion to `env` of `image_id` (`None`: an image the deployment
/// would build) unless the environment's soak guardrail is met: the image was live in
/// each of `requires_success_in` for `soak` at a stretch and never rolled back there.
/// Rollbacks do not come here: they restore what this environment already ran.
pub fn enforce_soak(
    cp: &ControlPlane,
    env: &str,
    image_id: Option<&String>,
) -> Result<(), ServerError> {
    let Some(version) = current(cp, env)? else {
        return Ok(());
    };
    let rails = &version.guardrails;
    if rails.requires_success_in.is_empty() {
        return Ok(());
    }
    let path = match image_id {
        Some(id) => cp.store.image_path(id)?,
        None => Vec::new(),
    };
    match soak_refusal(env, rails, image_id.map(String::as_str), &path, now_ms()) {
        None => Ok(()),
        Some((message, violations)) => Err(ServerError::Guardrails {
            message,
            violations,
        }),
    }
}

/// Why `image_id` may not go to `env` yet under `rails`, given where it has been
/// (`path`, [`cutover_model::image_path`]); `None` when it may. Pure.
pub fn soak_refusal(
    env: &str,
    rails: &Guardrails,
    image_id: Option<&str>,
    path: &[LivePeriod],
    now_ms: u64,
) -> Option<(String, Vec<GuardrailViolation>)> {
    if rails.requires_success_in.is_empty() {
        return None;
    }
    let soak_ms = rails.soak_ms.unwrap_or(0);
    let soak = format_duration_ms(soak_ms);
    let required = |other: &str| format!("{soak} live in {other} without a rollback");
    let mut problems = Vec::new();
    let mut violations = Vec::new();
    for other in &rails.requires_success_in {
        let periods: Vec<&LivePeriod> = path.iter().filter(|p| p.env == *other).collect();
        let rolled_back = periods.iter().find(|p| p.rolled_back());
        let longest = periods.iter().map(|p| p.live_ms(now_ms)).max();
        let problem = match (image_id, rolled_back, longest) {
            (None, _, _) => Some(format!(
                "a deploy builds a new image, which was never live in {other}"
            )),
            (Some(_), Some(p), _) => Some(format!(
                "it was rolled back in {other}: {}",
                cutover_model::live::describe_period(p, now_ms)
            )),
            (Some(_), None, None) => Some(format!("it was never live in {other}")),
            (Some(_), None, Some(ms)) if ms < soak_ms => {
                let lines: Vec<String> = periods
                    .iter()
                    .map(|p| cutover_model::live::describe_period(p, now_ms))
                    .collect();
                Some(format!(
                    "it was live in {}; {} more to go",
                    lines.join("; "),
                    format_duration_ms(soak_ms - ms)
                ))
            }
            (Some(_), None, Some(_)) => None,
        };
        if let Some(problem) = problem {
            violations.push(GuardrailViolation {
                field: "requires_success_in".to_string(),
                spec: problem.clone(),
                required: required(other),
            });
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        return None;
    }
    let wanted: Vec<String> = rails
        .requires_success_in
        .iter()
        .map(|o| required(o))
        .collect();
    let been = if path.is_empty() {
        "nowhere yet".to_string()
    } else {
        path.iter()
            .map(|p| cutover_model::live::describe_period(p, now_ms))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let what = match image_id {
        Some(id) => format!("image {id}"),
        None => "a new build".to_string(),
    };
    let hint = match image_id {
        None => format!(
            "; promote a release that soaked there instead (`cutover promote <release> --to {env}`)"
        ),
        Some(_) => String::new(),
    };
    Some((
        format!(
            "{what} may not go to {env}: {}; {env} requires {} (`cutover guardrails show {env}`). where it has been: {been}; nothing was planned{hint}",
            problems.join("; "),
            wanted.join(" and "),
        ),
        violations,
    ))
}

// ----- handlers -----

type Cp = State<std::sync::Arc<ControlPlane>>;
type Who = Extension<Principal>;

/// The guardrails of an environment (the current version, or `?version=N`), and the
/// proposal waiting for an admin, if any.
#[utoipa::path(get, path = "/api/v1/guardrails/{env}", tag = "guardrails",
    params(("env" = String, Path, description = "Environment name"), GuardrailsQuery),
    responses(
        (status = 200, body = GuardrailsShow),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn show_guardrails(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(env): ApiPath<String>,
    ApiQuery(q): ApiQuery<GuardrailsQuery>,
) -> Result<Json<GuardrailsShow>, ServerError> {
    who.require(Role::Viewer, Some(&env))?;
    let latest = current(&cp, &env)?;
    let shown = match q.version {
        None => latest.clone(),
        Some(n) => Some(version(&cp, &env, n)?.ok_or_else(|| {
            ServerError::NotFound(format!(
                "environment {env} has no guardrails version {n}; the newest is {}",
                latest
                    .as_ref()
                    .map_or("none".to_string(), |v| v.version.to_string())
            ))
        })?),
    };
    Ok(Json(GuardrailsShow {
        current: shown,
        latest_version: latest.map(|v| v.version),
        proposal: proposal(&cp, &env)?,
        env,
    }))
}

/// Set an environment's guardrails from a guardrails file (admin): a new version.
#[utoipa::path(put, path = "/api/v1/guardrails/{env}", tag = "guardrails",
    params(("env" = String, Path, description = "Environment name")),
    request_body = SetGuardrails,
    responses(
        (status = 200, body = GuardrailsVersion),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub(crate) async fn set_guardrails(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(env): ApiPath<String>,
    ApiJson(req): ApiJson<SetGuardrails>,
) -> Result<Json<GuardrailsVersion>, ServerError> {
    let file = req.file.as_deref().unwrap_or("guardrails.toml");
    Ok(Json(set(&cp, &who, &env, &req.text, file)?))
}

/// Accept the guardrails proposed from the first spec sent for an environment (admin).
#[utoipa::path(post, path = "/api/v1/guardrails/{env}/accept", tag = "guardrails",
    params(("env" = String, Path, description = "Environment name")),
    responses(
        (status = 200, body = GuardrailsVersion),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn accept_guardrails(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<GuardrailsVersion>, ServerError> {
    Ok(Json(accept(&cp, &who, &env)?))
}

#[cfg(test)]
mod tests;
