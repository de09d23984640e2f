//! Validation of the raw file and conversion into the model's [`Spec`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use cutover_model::{
    check_secret_name, ApprovalSpec, BuildSpec, ContainerSpec, EnvironmentSpec, GateSpec,
    HealthSpec, ImageRef, SecretMount, SecretSourceRef, Spec, SupplySpec, SECRETS_DIR,
};

use crate::raw::{
    RawApprovals, RawBuild, RawContainer, RawEnvironment, RawGate, RawHealth, RawSecret, RawSize,
    RawSpec, RawSupply, S,
};
use crate::Errors;

const DEFAULT_STRATEGY: &str = "blue-green";
const MAX_REPLICAS: i64 = 64;
/// Most releases `keep_releases` may keep per environment.
const MAX_KEEP_RELEASES: i64 = 1000;
const MIN_MEMORY: u64 = 4 * 1024 * 1024;
const MAX_APPROVERS: i64 = 10;
const MAX_APPROVAL_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Gate levels, mildest first; `none` never fails on vulnerabilities.
const FAIL_ON_LEVELS: &[&str] = &["none", "low", "medium", "high", "critical"];

/// Validate `raw`, recording every problem in `errors`. Returns the spec when the parts
/// needed to build it are present (callers still check `errors`).
pub(crate) fn convert(raw: RawSpec, base_dir: PathBuf, errors: &mut Errors) -> Option<Spec> {
    let app = match &raw.app {
        Some(app) => {
            if !is_app_name(app.get_ref()) {
                errors.at(
                    app.span(),
                    "app",
                    format!(
                        "must be 1 to 31 characters of lowercase letters, digits and '-', starting with a letter or digit, got {:?}",
                        app.get_ref()
                    ),
                );
            }
            Some(app.get_ref().clone())
        }
        None => {
            errors.at(
                0..0,
                "app",
                "is required: add `app = \"<name>\"` at the top of the file",
            );
            None
        }
    };

    let strategy = match &raw.strategy {
        Some(s) => {
            if !is_dns_label(s.get_ref()) {
                errors.at(
                    s.span(),
                    "strategy",
                    format!(
                        "must name a file in plans/ without .toml (lowercase letters, digits and '-'), got {:?}",
                        s.get_ref()
                    ),
                );
            }
            s.get_ref().clone()
        }
        None => DEFAULT_STRATEGY.to_string(),
    };

    let build = match &raw.build {
        Some(build) => convert_build(build, app.as_deref(), &base_dir, errors),
        None => {
            errors.at(
                0..0,
                "build",
                "is required: add a [build] table with `cargo = { manifest = \"…\" }` or `context = \"<dir>\"`",
            );
            None
        }
    };

    let container = convert_container(raw.container.unwrap_or_default(), errors);
    let health = convert_health(raw.health.unwrap_or_default(), errors);
    let supply = convert_supply(raw.supply.unwrap_or_default(), &base_dir, errors);
    let environments = convert_environments(raw.environments.as_ref(), &base_dir, errors);

    Some(Spec {
        app: app?,
        strategy,
        base_dir,
        build: build?,
        container,
        health,
        supply,
        environments,
    })
}

fn convert_build(
    build: &S<RawBuild>,
    app: Option<&str>,
    base_dir: &Path,
    errors: &mut Errors,
) -> Option<BuildSpec> {
    let raw = build.get_ref();
    if let Some(image) = &raw.image {
        let others = [
            ("build.cargo", raw.cargo.as_ref().map(|c| c.span())),
            ("build.context", raw.context.as_ref().map(|c| c.span())),
            (
                "build.dockerfile",
                raw.dockerfile.as_ref().map(|c| c.span()),
            ),
            ("build.args", raw.args.as_ref().map(|c| c.span())),
        ];
        let mut clash = false;
        for (field, span) in others {
            if let Some(span) = span {
                clash = true;
                errors.at(
                    span,
                    field,
                    "cannot be used together with build.image: a prebuilt image is pulled, not built; keep one of them",
                );
            }
        }
        return match ImageRef::parse(image.get_ref()) {
            Ok(reference) if !clash => Some(BuildSpec::Image { reference }),
            Ok(_) => None,
            Err(e) => {
                errors.at(image.span(), "build.image", e.to_string());
                None
            }
        };
    }
    match (&raw.cargo, &raw.context) {
        (Some(_), Some(context)) => {
            errors.at(
                context.span(),
                "build.context",
                "cannot be used together with build.cargo: keep exactly one of them",
            );
            None
        }
        (None, None) => {
            errors.at(
                build.span(),
                "build",
                "needs exactly one of `cargo = { manifest = \"…\" }`, `context = \"<dir>\"` or `image = \"HOST[:PORT]/REPO@sha256:…\"`",
            );
            None
        }
        (Some(cargo), None) => {
            if let Some(dockerfile) = &raw.dockerfile {
                errors.at(
                    dockerfile.span(),
                    "build.dockerfile",
                    "only applies to `context` builds: remove it or build from a context",
                );
            }
            if let Some(args) = &raw.args {
                errors.at(
                    args.span(),
                    "build.args",
                    "only applies to `context` builds: remove it or build from a context",
                );
            }
            let cargo_raw = cargo.get_ref();
            let manifest = match &cargo_raw.manifest {
                Some(m) => {
                    let path = resolve(base_dir, m.get_ref());
                    if !path.is_file() {
                        errors.at(
                            m.span(),
                            "build.cargo.manifest",
                            format!(
                                "{} does not exist or is not a file: point it at the package's Cargo.toml, relative to deploy.toml",
                                path.display()
                            ),
                        );
                    }
                    Some(path)
                }
                None => {
                    errors.at(
                        cargo.span(),
                        "build.cargo.manifest",
                        "is required: the path of the package's Cargo.toml, relative to deploy.toml",
                    );
                    None
                }
            };
            let bin = match &cargo_raw.bin {
                Some(bin) => {
                    if !is_cargo_name(bin.get_ref()) {
                        errors.at(
                            bin.span(),
                            "build.cargo.bin",
                            format!("is not a valid binary target name: {:?}", bin.get_ref()),
                        );
                    }
                    Some(bin.get_ref().clone())
                }
                None => app.map(str::to_string),
            };
            let profile = match &cargo_raw.profile {
                Some(p) => {
                    if !is_cargo_name(p.get_ref()) {
                        errors.at(
                            p.span(),
                            "build.cargo.profile",
                            format!("is not a valid cargo profile name: {:?}", p.get_ref()),
                        );
                    }
                    p.get_ref().clone()
                }
                None => "release".to_string(),
            };
            Some(BuildSpec::Cargo {
                manifest: manifest?,
                bin: bin?,
                profile,
            })
        }
        (None, Some(context)) => {
            let dir = resolve(base_dir, context.get_ref());
            let dir_ok = dir.is_dir();
            if !dir_ok {
                errors.at(
                    context.span(),
                    "build.context",
                    format!(
                        "{} does not exist or is not a directory: point it at the build context, relative to deploy.toml",
                        dir.display()
                    ),
                );
            }
            let dockerfile = match &raw.dockerfile {
                Some(d) => {
                    if d.get_ref().is_empty() || Path::new(d.get_ref()).is_absolute() {
                        errors.at(
                            d.span(),
                            "build.dockerfile",
                            "must be a path relative to the build context",
                        );
                    }
                    d.get_ref().clone()
                }
                None => "Dockerfile".to_string(),
            };
            if dir_ok && !dir.join(&dockerfile).is_file() {
                let span = raw
                    .dockerfile
                    .as_ref()
                    .map(|d| d.span())
                    .unwrap_or_else(|| context.span());
                errors.at(
                    span,
                    "build.dockerfile",
                    format!(
                        "{} does not exist: add it or set `dockerfile` to its path inside the context",
                        dir.join(&dockerfile).display()
                    ),
                );
            }
            let mut args = BTreeMap::new();
            if let Some(raw_args) = &raw.args {
                for (key, value) in raw_args.get_ref() {
                    if !is_env_name(key.get_ref()) {
                        errors.at(
                            key.span(),
                            &format!("build.args.{}", key.get_ref()),
                            "is not a valid build argument name: use letters, digits and '_', not starting with a digit",
                        );
                    }
                    args.insert(key.get_ref().clone(), value.get_ref().clone());
                }
            }
            Some(BuildSpec::Dockerfile {
                context: dir,
                dockerfile,
                args,
            })
        }
    }
}

fn convert_container(raw: RawContainer, errors: &mut Errors) -> ContainerSpec {
    let mut c = ContainerSpec::default();
    if let Some(port) = raw.port {
        match u16::try_from(*port.get_ref()) {
            Ok(p) if p >= 1 => c.port = p,
            _ => errors.at(
                port.span(),
                "container.port",
                format!("must be between 1 and 65535, got {}", port.get_ref()),
            ),
        }
    }
    if let Some(command) = raw.command {
        c.command = command
            .into_inner()
            .into_iter()
            .map(|s| s.into_inner())
            .collect();
    }
    if let Some(env) = raw.env {
        for (key, value) in env {
            if !is_env_name(key.get_ref()) {
                errors.at(
                    key.span(),
                    &format!("container.env.{}", key.get_ref()),
                    "is not a valid environment variable name: use letters, digits and '_', not starting with a digit",
                );
            }
            c.env.insert(key.into_inner(), value.into_inner());
        }
    }
    if let Some(memory) = raw.memory {
        match parse_size(memory.get_ref()) {
            Ok(bytes) if bytes >= MIN_MEMORY => c.memory_bytes = bytes,
            Ok(bytes) => errors.at(
                memory.span(),
                "container.memory",
                format!("must be at least 4MiB, got {bytes} bytes"),
            ),
            Err(message) => errors.at(memory.span(), "container.memory", message),
        }
    }
    if let Some(cpus) = raw.cpus {
        let v = *cpus.get_ref();
        if v.is_finite() && v > 0.0 && v <= 1024.0 {
            c.cpus = v;
        } else {
            errors.at(
                cpus.span(),
                "container.cpus",
                format!("must be greater than 0 (e.g. 0.5), got {v}"),
            );
        }
    }
    if let Some(pids) = raw.pids_limit {
        if *pids.get_ref() >= 1 {
            c.pids_limit = *pids.get_ref();
        } else {
            errors.at(
                pids.span(),
                "container.pids_limit",
                format!("must be at least 1, got {}", pids.get_ref()),
            );
        }
    }
    if let Some(user) = raw.user {
        match check_user(user.get_ref()) {
            Ok(()) => c.user = user.get_ref().clone(),
            Err(message) => errors.at(user.span(), "container.user", message),
        }
    }
    if let Some(read_only) = raw.read_only {
        c.read_only = *read_only.get_ref();
    }
    if let Some(tmpfs) = raw.tmpfs {
        let mut paths = Vec::new();
        for (index, path) in tmpfs.into_inner().into_iter().enumerate() {
            if !path.get_ref().starts_with('/') {
                errors.at(
                    path.span(),
                    &format!("container.tmpfs[{index}]"),
                    format!("must be an absolute path, got {:?}", path.get_ref()),
                );
            }
            paths.push(path.into_inner());
        }
        c.tmpfs = paths;
    }
    if let Some(secrets) = raw.secrets {
        convert_secrets(secrets, &mut c, errors);
    }
    c
}

/// `[container.secrets]`: names that are file names, sources with a known scheme, absolute
/// mount paths that do not collide, and `as_env` names that are environment names not
/// already in `container.env`.
fn convert_secrets(
    secrets: crate::raw::SpannedMap<RawSecret>,
    c: &mut ContainerSpec,
    errors: &mut Errors,
) {
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    for (name, entry) in secrets {
        let field = format!("container.secrets.{}", name.get_ref());
        if let Err(why) = check_secret_name(name.get_ref()) {
            errors.at(
                name.span(),
                &field,
                format!("{:?} is not a valid secret name: {why}", name.get_ref()),
            );
            continue;
        }
        let span = entry.span();
        let (source, as_env, path) = match entry.into_inner() {
            RawSecret::Short(source) => (Some(S::new(span.clone(), source)), None, None),
            RawSecret::Table(t) => (t.source, t.as_env, t.path),
        };
        let Some(source) = source else {
            errors.at(
                span,
                &field,
                "needs a source, e.g. { source = \"secret://db-password\" }",
            );
            continue;
        };
        let source_field = match path.is_some() || as_env.is_some() {
            true => format!("{field}.source"),
            false => field.clone(),
        };
        if let Err(message) = SecretSourceRef::parse(source.get_ref()) {
            errors.at(source.span(), &source_field, message);
            continue;
        }
        let mount_path = match &path {
            Some(p) => {
                let text = p.get_ref();
                if !text.starts_with('/')
                    || text.split('/').any(|c| c == ".." || c == ".")
                    || text.ends_with('/')
                {
                    errors.at(
                        p.span(),
                        &format!("{field}.path"),
                        format!("must be an absolute file path without `.` or `..`, got {text:?}"),
                    );
                    continue;
                }
                text.clone()
            }
            None => format!("{SECRETS_DIR}/{}", name.get_ref()),
        };
        if let Some(other) = paths.insert(mount_path.clone(), name.get_ref().clone()) {
            let at = path.as_ref().map(|p| p.span()).unwrap_or(span.clone());
            errors.at(
                at,
                &format!("{field}.path"),
                format!("{mount_path} is already the path of secret {other}; give each secret its own path"),
            );
            continue;
        }
        let as_env_value = as_env.as_ref().is_some_and(|a| *a.get_ref());
        if as_env_value {
            let at = as_env.as_ref().map(|a| a.span()).unwrap_or(span.clone());
            if !is_env_name(name.get_ref()) {
                errors.at(
                    at,
                    &format!("{field}.as_env"),
                    format!("{:?} is not an environment variable name, so it cannot be set as one; rename the secret or drop as_env", name.get_ref()),
                );
                continue;
            }
            if c.env.contains_key(name.get_ref()) {
                errors.at(
                    at,
                    &format!("{field}.as_env"),
                    format!(
                        "container.env sets {} too; keep one of them",
                        name.get_ref()
                    ),
                );
                continue;
            }
        }
        c.secrets.insert(
            name.into_inner(),
            SecretMount {
                source: source.into_inner(),
                path: mount_path,
                as_env: as_env_value,
                pin: None,
            },
        );
    }
}

fn convert_health(raw: RawHealth, errors: &mut Errors) -> HealthSpec {
    let mut h = HealthSpec::default();
    if let Some(path) = &raw.path {
        if path.get_ref().starts_with('/') && !path.get_ref().chars().any(char::is_whitespace) {
            h.path = path.get_ref().clone();
        } else {
            errors.at(
                path.span(),
                "health.path",
                format!(
                    "must start with '/' and contain no spaces, got {:?}",
                    path.get_ref()
                ),
            );
        }
    }
    if let Some(d) = positive_duration(raw.interval.as_ref(), "health.interval", errors) {
        h.interval = d;
    }
    if let Some(d) = positive_duration(raw.timeout.as_ref(), "health.timeout", errors) {
        h.timeout = d;
    }
    if let Some(d) = positive_duration(raw.deadline.as_ref(), "health.deadline", errors) {
        h.deadline = d;
    }
    for (value, name, target) in [
        (
            &raw.healthy_threshold,
            "health.healthy_threshold",
            &mut h.healthy_threshold,
        ),
        (
            &raw.unhealthy_threshold,
            "health.unhealthy_threshold",
            &mut h.unhealthy_threshold,
        ),
    ] {
        if let Some(v) = value {
            match u32::try_from(*v.get_ref()) {
                Ok(n) if (1..=1000).contains(&n) => *target = n,
                _ => errors.at(
                    v.span(),
                    name,
                    format!("must be between 1 and 1000, got {}", v.get_ref()),
                ),
            }
        }
    }
    if h.interval >= h.deadline {
        let (span, field) = match (span_of(&raw.interval), span_of(&raw.deadline)) {
            (Some(span), _) => (span, "health.interval"),
            (None, Some(span)) => (span, "health.deadline"),
            (None, None) => (0..0, "health.interval"),
        };
        errors.at(
            span,
            field,
            format!(
                "health.interval must be shorter than health.deadline ({} >= {})",
                humantime::format_duration(h.interval),
                humantime::format_duration(h.deadline)
            ),
        );
    }
    if h.timeout > h.deadline {
        let (span, field) = match (span_of(&raw.timeout), span_of(&raw.deadline)) {
            (Some(span), _) => (span, "health.timeout"),
            (None, Some(span)) => (span, "health.deadline"),
            (None, None) => (0..0, "health.timeout"),
        };
        errors.at(
            span,
            field,
            format!(
                "health.timeout must not be longer than health.deadline ({} > {})",
                humantime::format_duration(h.timeout),
                humantime::format_duration(h.deadline)
            ),
        );
    }
    h
}

fn convert_supply(raw: RawSupply, base_dir: &Path, errors: &mut Errors) -> SupplySpec {
    SupplySpec {
        signing_key: raw.signing_key.as_ref().and_then(|key| {
            existing_file(
                base_dir,
                key,
                "supply.signing_key",
                "point it at the encrypted key from `cutover keys generate`, or remove it to sign with the control plane's local key",
                errors,
            )
        }),
    }
}

/// The absolute path of `value` (relative to deploy.toml) when it names an existing file;
/// otherwise records an error that ends with `hint`.
fn existing_file(
    base_dir: &Path,
    value: &S<String>,
    field: &str,
    hint: &str,
    errors: &mut Errors,
) -> Option<PathBuf> {
    if value.get_ref().trim().is_empty() {
        errors.at(value.span(), field, format!("is empty: {hint}"));
        return None;
    }
    let path = resolve(base_dir, value.get_ref());
    if path.is_file() {
        Some(path)
    } else {
        errors.at(
            value.span(),
            field,
            format!(
                "{} does not exist or is not a file (paths are relative to deploy.toml): {hint}",
                path.display()
            ),
        );
        None
    }
}

fn convert_approvals(
    raw: &RawApprovals,
    field: &dyn Fn(&str) -> String,
    errors: &mut Errors,
) -> ApprovalSpec {
    let mut approvals = ApprovalSpec::default();
    if let Some(required) = &raw.required {
        let n = *required.get_ref();
        if (1..=MAX_APPROVERS).contains(&n) {
            approvals.required = n as u32;
        } else {
            errors.at(
                required.span(),
                &field("approvals.required"),
                format!("must be between 1 and {MAX_APPROVERS} (distinct approvers), got {n}"),
            );
        }
    }
    let timeout_field = field("approvals.timeout");
    if let Some(timeout) = positive_duration(raw.timeout.as_ref(), &timeout_field, errors) {
        if timeout > MAX_APPROVAL_TIMEOUT {
            if let Some(raw_timeout) = &raw.timeout {
                errors.at(
                    raw_timeout.span(),
                    &timeout_field,
                    format!(
                        "must be at most 30 days, got {}: a deployment waiting longer than that should be planned again",
                        humantime::format_duration(timeout)
                    ),
                );
            }
        } else {
            approvals.timeout = timeout;
        }
    }
    approvals
}

/// The most a gate may accept as the age of the advisory database.
const MAX_ADVISORY_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

fn convert_gate(
    raw: &RawGate,
    base_dir: &Path,
    field: &dyn Fn(&str) -> String,
    errors: &mut Errors,
) -> GateSpec {
    let mut gate = GateSpec::default();
    if let Some(fail_on) = &raw.fail_on {
        let level = fail_on.get_ref();
        if FAIL_ON_LEVELS.contains(&level.as_str()) {
            gate.fail_on = level.clone();
        } else {
            errors.at(
                fail_on.span(),
                &field("gate.fail_on"),
                format!(
                    "must be one of {}, got {level:?}",
                    FAIL_ON_LEVELS
                        .iter()
                        .map(|l| format!("\"{l}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    if let Some(secrets) = &raw.fail_on_secrets {
        gate.fail_on_secrets = *secrets.get_ref();
    }
    let age_field = field("gate.max_advisory_age");
    if let Some(age) = positive_duration(raw.max_advisory_age.as_ref(), &age_field, errors) {
        if age > MAX_ADVISORY_AGE {
            if let Some(raw_age) = &raw.max_advisory_age {
                errors.at(
                    raw_age.span(),
                    &age_field,
                    format!(
                        "must be at most 90 days, got {}: import the advisories more often (`cutover advisories import osv.zip`)",
                        humantime::format_duration(age)
                    ),
                );
            }
        } else {
            gate.max_advisory_age = age;
        }
    }
    if let Some(allow) = &raw.allow_missing_advisories {
        gate.allow_missing_advisories = *allow.get_ref();
    }
    if let Some(fail) = &raw.fail_on_unmaintained {
        gate.fail_on_unmaintained = *fail.get_ref();
    }
    gate.exceptions = raw.exceptions.as_ref().and_then(|path| {
        existing_file(
            base_dir,
            path,
            &field("gate.exceptions"),
            "point it at the reviewed exceptions file or remove the key",
            errors,
        )
    });
    gate.secret_rules = raw.secret_rules.as_ref().and_then(|path| {
        existing_file(
            base_dir,
            path,
            &field("gate.secret_rules"),
            "point it at the secret rule file or remove the key to use the built-in rules",
            errors,
        )
    });
    gate
}

fn convert_trusted_keys(
    raw: &S<Vec<S<String>>>,
    base_dir: &Path,
    field: &dyn Fn(&str) -> String,
    errors: &mut Errors,
) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = Vec::new();
    for (index, key) in raw.get_ref().iter().enumerate() {
        let name = field(&format!("trusted_keys[{index}]"));
        let Some(path) = existing_file(
            base_dir,
            key,
            &name,
            "point it at a public key (PEM) from `cutover keys generate`, or remove it",
            errors,
        ) else {
            continue;
        };
        if keys.contains(&path) {
            errors.at(
                key.span(),
                &name,
                format!("{} is listed twice: remove one", path.display()),
            );
        } else {
            keys.push(path);
        }
    }
    keys
}

fn convert_environments(
    raw: Option<&S<BTreeMap<S<String>, S<RawEnvironment>>>>,
    base_dir: &Path,
    errors: &mut Errors,
) -> BTreeMap<String, EnvironmentSpec> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw else {
        errors.at(
            0..0,
            "environments",
            "at least one environment is required: add e.g. [environments.production] with `listen = \"127.0.0.1:8080\"`",
        );
        return out;
    };
    if raw.get_ref().is_empty() {
        errors.at(
            raw.span(),
            "environments",
            "at least one environment is required: add e.g. [environments.production] with `listen = \"127.0.0.1:8080\"`",
        );
    }
    // Listen addresses seen so far, to refuse two environments on one address.
    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
    // Visit environments in file order so "first" and "second" mean what the reader sees.
    let mut entries: Vec<_> = raw.get_ref().iter().collect();
    entries.sort_by_key(|(name, _)| name.span().start);
    for (name, env) in entries {
        let name_str = name.get_ref();
        let field = |key: &str| format!("environments.{name_str}.{key}");
        if !is_dns_label(name_str) {
            errors.at(
                name.span(),
                &format!("environments.{name_str}"),
                "environment names must be lowercase letters, digits and '-', starting with a letter or digit",
            );
        }
        let raw_env = env.get_ref();
        let mut spec = EnvironmentSpec::with_listen("");
        match &raw_env.listen {
            Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Some(other) = listens.get(&addr) {
                        errors.at(
                            listen.span(),
                            &field("listen"),
                            format!(
                                "{addr} is already the listen address of environment {other}: give each environment its own address"
                            ),
                        );
                    } else {
                        listens.insert(addr, name_str.clone());
                    }
                    spec.listen = listen.get_ref().clone();
                }
                Err(_) => errors.at(
                    listen.span(),
                    &field("listen"),
                    format!(
                        "must be a socket address like \"127.0.0.1:8080\" or \"[::1]:8080\", got {:?}",
                        listen.get_ref()
                    ),
                ),
            },
            None => errors.at(
                env.span(),
                &field("listen"),
                "is required: the address the proxy serves this environment on, e.g. \"127.0.0.1:8080\"",
            ),
        }
        if let Some(replicas) = &raw_env.replicas {
            let n = *replicas.get_ref();
            if (1..=MAX_REPLICAS).contains(&n) {
                spec.replicas = n as u32;
            } else {
                errors.at(
                    replicas.span(),
                    &field("replicas"),
                    format!("must be between 1 and {MAX_REPLICAS}, got {n}"),
                );
            }
        }
        if let Some(keep) = &raw_env.keep_releases {
            let n = *keep.get_ref();
            if (1..=MAX_KEEP_RELEASES).contains(&n) {
                spec.keep_releases = n as u32;
            } else {
                errors.at(
                    keep.span(),
                    &field("keep_releases"),
                    format!(
                        "must be between 1 and {MAX_KEEP_RELEASES} (the newest releases `cutover gc` keeps for rollbacks), got {n}"
                    ),
                );
            }
        }
        if let Some(d) = duration(
            raw_env.retire_after.as_ref(),
            &field("retire_after"),
            errors,
        ) {
            spec.retire_after = d;
        }
        if let Some(d) = positive_duration(
            raw_env.drain_timeout.as_ref(),
            &field("drain_timeout"),
            errors,
        ) {
            spec.drain_timeout = d;
        }
        if let Some(d) = positive_duration(
            raw_env.response_timeout.as_ref(),
            &field("response_timeout"),
            errors,
        ) {
            spec.response_timeout = d;
        }
        spec.protected = raw_env
            .protected
            .as_ref()
            .map(|p| *p.get_ref())
            .unwrap_or(false);
        // Protected environments always wait for approval, whatever `approval` says.
        spec.approval = spec.protected
            || raw_env
                .approval
                .as_ref()
                .map(|a| *a.get_ref())
                .unwrap_or(false);
        if let Some(approvals) = &raw_env.approvals {
            spec.approvals = convert_approvals(approvals.get_ref(), &field, errors);
            if !spec.approval {
                // Settings that gate nothing would give a false sense of safety.
                errors.at(
                    approvals.span(),
                    &field("approvals"),
                    "has no effect because the environment does not require approval: set approval = true (or protected = true), or remove the table",
                );
            }
        }
        if let Some(gate) = &raw_env.gate {
            spec.gate = convert_gate(gate.get_ref(), base_dir, &field, errors);
        }
        if let Some(keys) = &raw_env.trusted_keys {
            spec.trusted_keys = convert_trusted_keys(keys, base_dir, &field, errors);
        }
        out.insert(name_str.clone(), spec);
    }
    out
}

fn span_of<T>(value: &Option<S<T>>) -> Option<std::ops::Range<usize>> {
    value.as_ref().map(|v| v.span())
}

fn duration(value: Option<&S<String>>, field: &str, errors: &mut Errors) -> Option<Duration> {
    let value = value?;
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.at(
                value.span(),
                field,
                format!(
                    "is not a duration ({}): write e.g. \"200ms\", \"10s\" or \"5m\", got {:?}",
                    lower(&e.to_string()),
                    value.get_ref()
                ),
            );
            None
        }
    }
}

fn positive_duration(
    value: Option<&S<String>>,
    field: &str,
    errors: &mut Errors,
) -> Option<Duration> {
    let d = duration(value, field, errors)?;
    if d.is_zero() {
        if let Some(v) = value {
            errors.at(v.span(), field, "must be longer than 0");
        }
        return None;
    }
    Some(d)
}

fn lower(message: &str) -> String {
    message.trim_end_matches('.').to_lowercase()
}

/// Bytes of a size written as an integer or a string with an optional binary unit
/// (`k`, `m`, `g`, with or without `b`/`ib`, any case). Units are powers of 1024, as Docker
/// reads `--memory`.
pub(crate) fn parse_size(raw: &RawSize) -> Result<u64, String> {
    let text = match raw {
        RawSize::Bytes(n) => {
            return u64::try_from(*n).map_err(|_| format!("must not be negative, got {n}"));
        }
        RawSize::Text(text) => text.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "is not a size: write e.g. \"64MiB\", \"128m\", \"1g\" or a number of bytes, got {text:?}"
        )
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" | "ki" => 1 << 10,
        "m" | "mb" | "mib" | "mi" => 1 << 20,
        "g" | "gb" | "gib" | "gi" => 1 << 30,
        _ => return Err(bad()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("is too large, got {text:?}"))
}

/// `uid[:gid]` or `name[:group]`, never root.
fn check_user(user: &str) -> Result<(), String> {
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let valid_part = |part: &str| {
        !part.is_empty()
            && (part.chars().all(|c| c.is_ascii_digit())
                || (part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                    })))
    };
    if !valid_part(uid) || gid.is_some_and(|g| !valid_part(g)) {
        return Err(format!(
            "must be `uid[:gid]` (e.g. \"65534:65534\") or `name[:group]`, got {user:?}"
        ));
    }
    let is_root =
        uid == "root" || (uid.chars().all(|c| c.is_ascii_digit()) && uid.parse::<u64>() == Ok(0));
    if is_root {
        return Err(format!(
            "containers never run as root, got {user:?}: use an unprivileged user such as \"65534:65534\""
        ));
    }
    Ok(())
}

fn is_app_name(name: &str) -> bool {
    is_dns_label(name) && name.len() <= 31
}

/// `[a-z0-9][a-z0-9-]*`
fn is_dns_label(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Cargo target and profile names: letters, digits, `-` and `_`.
fn is_cargo_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `base.join(relative)`, lexically normalized (no `.` or `..` left), without touching the
/// file system.
fn resolve(base: &Path, relative: &str) -> PathBuf {
    normalize(&base.join(relative))
}

pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
