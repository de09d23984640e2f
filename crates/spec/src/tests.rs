use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_model::{
    ApprovalSpec, BuildSpec, ContainerSpec, EnvironmentSpec, GateSpec, HealthSpec, SupplySpec,
};

use super::*;

/// A directory with a cargo package (`app/Cargo.toml`) and a build context
/// (`ctx/Dockerfile`), removed when dropped.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("create temp dir");
        std::fs::create_dir_all(dir.path().join("app")).expect("create app dir");
        std::fs::write(
            dir.path().join("app/Cargo.toml"),
            "[package]\nname = \"hello\"\n",
        )
        .expect("write manifest");
        std::fs::create_dir_all(dir.path().join("ctx")).expect("create ctx dir");
        std::fs::write(dir.path().join("ctx/Dockerfile"), "FROM scratch\n")
            .expect("write dockerfile");
        Fixture { dir }
    }

    fn spec_path(&self) -> PathBuf {
        self.dir.path().join("deploy.toml")
    }

    fn parse(&self, text: &str) -> Result<Spec, SpecError> {
        parse(text, &self.spec_path())
    }
}

const MINIMAL: &str = r#"app = "hello"
[build]
cargo = { manifest = "app/Cargo.toml" }
[environments.production]
listen = "127.0.0.1:8080"
"#;

/// (name, text, line, column, field, message fragment)
const MALFORMED: &[(&str, &str, usize, usize, &str, &str)] = &[
    (
        "syntax error",
        "app = \"hello\n[build]\n",
        1,
        13,
        "",
        "invalid basic string",
    ),
    (
        "unknown key at top level",
        "app = \"hello\"\napps = 2\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        2,
        1,
        "apps",
        "unknown field `apps`",
    ),
    (
        "unknown key nested",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\nreplica = 3\n",
        6,
        1,
        "environments.production.replica",
        "unknown field `replica`",
    ),
    (
        "unknown key in inline table",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\", binary = \"x\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        3,
        40,
        "build.cargo.binary",
        "unknown field `binary`",
    ),
    (
        "wrong type",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nport = \"8080\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        8,
        "container.port",
        "invalid type: string \"8080\", expected i64",
    ),
    (
        "replicas = 0",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\nreplicas = 0\n",
        6,
        12,
        "environments.production.replicas",
        "must be between 1 and 64, got 0",
    ),
    (
        "keep_releases = 0",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\nkeep_releases = 0\n",
        6,
        17,
        "environments.production.keep_releases",
        "must be between 1 and 1000 (the newest releases `cutover gc` keeps for rollbacks), got 0",
    ),
    (
        "bad listen",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"localhost\"\n",
        5,
        10,
        "environments.production.listen",
        "must be a socket address",
    ),
    (
        "missing listen",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nreplicas = 2\n",
        4,
        1,
        "environments.production.listen",
        "is required",
    ),
    (
        "root user by name",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nuser = \"root\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        8,
        "container.user",
        "containers never run as root",
    ),
    (
        "root user by id",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nuser = \"0:1000\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        8,
        "container.user",
        "containers never run as root",
    ),
    (
        "duplicate listen",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.staging]\nlisten = \"127.0.0.1:8080\"\n",
        7,
        10,
        "environments.staging.listen",
        "already the listen address of environment production",
    ),
    (
        "missing build",
        "app = \"hello\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        1,
        1,
        "build",
        "is required",
    ),
    (
        "both cargo and context",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\ncontext = \"ctx\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        4,
        11,
        "build.context",
        "cannot be used together with build.cargo",
    ),
    (
        "bad duration",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[health]\ninterval = \"fast\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        12,
        "health.interval",
        "is not a duration",
    ),
    (
        "zero duration",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[health]\ntimeout = \"0s\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        11,
        "health.timeout",
        "must be longer than 0",
    ),
    (
        "interval not below deadline",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[health]\ninterval = \"5s\"\ntimeout = \"1s\"\ndeadline = \"5s\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        12,
        "health.interval",
        "must be shorter than health.deadline",
    ),
    (
        "deadline below the default interval",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[health]\ndeadline = \"100ms\"\ntimeout = \"50ms\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        12,
        "health.deadline",
        "health.interval must be shorter than health.deadline (200ms >= 100ms)",
    ),
    (
        "bad memory",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nmemory = \"64 parsecs\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        10,
        "container.memory",
        "is not a size",
    ),
    (
        "memory too small",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nmemory = \"1m\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        10,
        "container.memory",
        "must be at least 4MiB",
    ),
    (
        "bad app name",
        "app = \"Hello_World\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        1,
        7,
        "app",
        "lowercase letters, digits and '-'",
    ),
    (
        "no environments",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n",
        1,
        1,
        "environments",
        "at least one environment is required",
    ),
    (
        "bad strategy name",
        "app = \"hello\"\nstrategy = \"../etc\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        2,
        12,
        "strategy",
        "must name a file in plans/",
    ),
    (
        "dockerfile with a cargo build",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\ndockerfile = \"Dockerfile\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        4,
        14,
        "build.dockerfile",
        "only applies to `context` builds",
    ),
    (
        "environments as an array",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[[environments]]\nlisten = \"127.0.0.1:8080\"\n",
        4,
        1,
        "environments[0]",
        "invalid type: sequence, expected a map",
    ),
    (
        "bad environment name",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.Prod]\nlisten = \"127.0.0.1:8080\"\n",
        4,
        15,
        "environments.Prod",
        "environment names must be lowercase",
    ),
    (
        "bad env var name",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nenv = { \"1X\" = \"v\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        9,
        "container.env.1X",
        "is not a valid environment variable name",
    ),
    (
        "port out of range",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nport = 0\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        8,
        "container.port",
        "must be between 1 and 65535, got 0",
    ),
    (
        "cpus zero",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\ncpus = 0\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        8,
        "container.cpus",
        "must be greater than 0",
    ),
    (
        "health path without slash",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[health]\npath = \"healthz\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        8,
        "health.path",
        "must start with '/'",
    ),
    (
        "threshold zero",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[health]\nhealthy_threshold = 0\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        5,
        21,
        "health.healthy_threshold",
        "must be between 1 and 1000, got 0",
    ),
    (
        "missing manifest file",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"nope/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        3,
        22,
        "build.cargo.manifest",
        "does not exist or is not a file",
    ),
    (
        "missing context dir",
        "app = \"hello\"\n[build]\ncontext = \"nope\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n",
        3,
        11,
        "build.context",
        "does not exist or is not a directory",
    ),
    (
        "approvals without approval",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.approvals]\nrequired = 2\n",
        6,
        1,
        "environments.production.approvals",
        "has no effect because the environment does not require approval",
    ),
    (
        "approvals.required zero",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\napproval = true\n[environments.production.approvals]\nrequired = 0\n",
        8,
        12,
        "environments.production.approvals.required",
        "must be between 1 and 10",
    ),
    (
        "approvals.required too many",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\napproval = true\n[environments.production.approvals]\nrequired = 11\n",
        8,
        12,
        "environments.production.approvals.required",
        "must be between 1 and 10 (distinct approvers), got 11",
    ),
    (
        "response_timeout zero",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\nresponse_timeout = \"0s\"\n",
        6,
        20,
        "environments.production.response_timeout",
        "must be longer than 0",
    ),
    (
        "approvals.timeout zero",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\napproval = true\n[environments.production.approvals]\ntimeout = \"0s\"\n",
        8,
        11,
        "environments.production.approvals.timeout",
        "must be longer than 0",
    ),
    (
        "approvals.timeout too long",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\napproval = true\n[environments.production.approvals]\ntimeout = \"40days\"\n",
        8,
        11,
        "environments.production.approvals.timeout",
        "must be at most 30 days",
    ),
    (
        "approvals.timeout not a duration",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\napproval = true\n[environments.production.approvals]\ntimeout = \"soon\"\n",
        8,
        11,
        "environments.production.approvals.timeout",
        "is not a duration",
    ),
    (
        "approvals unknown key",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\napproval = true\n[environments.production.approvals]\nrequire = 2\n",
        8,
        1,
        "environments.production.approvals.require",
        "unknown field `require`",
    ),
    (
        "gate.fail_on unknown level",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nfail_on = \"severe\"\n",
        7,
        11,
        "environments.production.gate.fail_on",
        "must be one of \"none\", \"low\", \"medium\", \"high\", \"critical\", got \"severe\"",
    ),
    (
        "gate.fail_on_secrets wrong type",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nfail_on_secrets = \"yes\"\n",
        7,
        19,
        "environments.production.gate.fail_on_secrets",
        "invalid type",
    ),
    (
        "gate.exceptions missing file",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nexceptions = \"security/exceptions.toml\"\n",
        7,
        14,
        "environments.production.gate.exceptions",
        "security/exceptions.toml does not exist or is not a file",
    ),
    (
        "gate.secret_rules missing file",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nsecret_rules = \"rules.toml\"\n",
        7,
        16,
        "environments.production.gate.secret_rules",
        "remove the key to use the built-in rules",
    ),
    (
        "gate.max_advisory_age not a duration",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nmax_advisory_age = \"a week\"\n",
        7,
        20,
        "environments.production.gate.max_advisory_age",
        "is not a duration",
    ),
    (
        "gate.max_advisory_age too long",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nmax_advisory_age = \"1y\"\n",
        7,
        20,
        "environments.production.gate.max_advisory_age",
        "must be at most 90 days",
    ),
    (
        "gate.max_advisory_age zero",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nmax_advisory_age = \"0s\"\n",
        7,
        20,
        "environments.production.gate.max_advisory_age",
        "must be longer than 0",
    ),
    (
        "gate.allow_missing_advisories wrong type",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nallow_missing_advisories = \"yes\"\n",
        7,
        28,
        "environments.production.gate.allow_missing_advisories",
        "invalid type",
    ),
    (
        "gate.fail_on_unmaintained wrong type",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[environments.production.gate]\nfail_on_unmaintained = 1\n",
        7,
        24,
        "environments.production.gate.fail_on_unmaintained",
        "invalid type",
    ),
    (
        "trusted key missing",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\ntrusted_keys = [\"app/Cargo.toml\", \"keys/ci.pub\"]\n",
        6,
        35,
        "environments.production.trusted_keys[1]",
        "keys/ci.pub does not exist or is not a file",
    ),
    (
        "trusted key twice",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\ntrusted_keys = [\"app/Cargo.toml\", \"./app/Cargo.toml\"]\n",
        6,
        35,
        "environments.production.trusted_keys[1]",
        "is listed twice",
    ),
    (
        "trusted key empty",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\ntrusted_keys = [\"\"]\n",
        6,
        17,
        "environments.production.trusted_keys[0]",
        "is empty",
    ),
    (
        "signing key missing",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[supply]\nsigning_key = \"keys/release.key\"\n",
        7,
        15,
        "supply.signing_key",
        "keys/release.key does not exist or is not a file",
    ),
    (
        "supply unknown key",
        "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n[supply]\nkey = \"x\"\n",
        7,
        1,
        "supply.key",
        "unknown field `key`",
    ),
];

#[test]
fn malformed_specs_name_line_column_field_and_problem() {
    let fixture = Fixture::new();
    let mut failures = Vec::new();
    for (name, text, line, column, field, fragment) in MALFORMED {
        let error = match fixture.parse(text) {
            Ok(_) => {
                failures.push(format!("{name}: parsed but should fail"));
                continue;
            }
            Err(e) => e,
        };
        let got = (error.line, error.column, error.field.as_str());
        if got != (*line, *column, *field) || !error.message.contains(fragment) {
            failures.push(format!(
                "{name}: expected {line}:{column} {field:?} containing {fragment:?}, got {}:{} {:?} {:?}",
                error.line, error.column, error.field, error.message
            ));
        }
        if !error.others.is_empty() {
            failures.push(format!("{name}: expected one problem, got:\n{error}"));
        }
        let first_char = error.message.chars().next().unwrap_or('x');
        if first_char.is_uppercase() || error.message.ends_with('.') {
            failures.push(format!(
                "{name}: message not lowercase without period: {error}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn display_is_file_line_column_field_message() {
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"127.0.0.1:8080\"\nreplicas = 0\n",
    );
    let error = parse(&text, Path::new("deploy.toml")).unwrap_err();
    // The manifest is relative to the current directory here, so only look at the replicas line.
    let line = error
        .to_string()
        .lines()
        .find(|l| l.contains("replicas"))
        .map(str::to_string);
    assert_eq!(
        line.as_deref(),
        Some("deploy.toml:6:12: environments.production.replicas: must be between 1 and 64, got 0")
    );
}

#[test]
fn several_problems_are_reported_in_file_order() {
    let fixture = Fixture::new();
    let text = "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container]\nport = 0\nuser = \"root\"\n[environments.production]\nlisten = \"nowhere\"\nreplicas = 100\n";
    let error = fixture.parse(text).unwrap_err();
    let fields: Vec<&str> = error.all().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "container.port",
            "container.user",
            "environments.production.listen",
            "environments.production.replicas"
        ]
    );
    assert_eq!(error.to_string().lines().count(), 4);
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let fixture = Fixture::new();
    let spec = fixture.parse(MINIMAL).expect("minimal spec parses");
    assert_eq!(spec.app, "hello");
    assert_eq!(spec.strategy, "blue-green");
    assert_eq!(spec.base_dir, fixture.dir.path());
    assert_eq!(
        spec.build,
        BuildSpec::Cargo {
            manifest: fixture.dir.path().join("app/Cargo.toml"),
            bin: "hello".to_string(),
            profile: "release".to_string(),
        }
    );
    assert_eq!(spec.container, ContainerSpec::default());
    assert_eq!(spec.health, HealthSpec::default());
    assert_eq!(
        spec.environments.get("production"),
        Some(&EnvironmentSpec::with_listen("127.0.0.1:8080"))
    );
    // The supply chain defaults: the local key signs and is trusted, the gate fails on
    // critical findings and on secrets, nobody has to approve.
    assert_eq!(spec.supply, SupplySpec::default());
    let production = &spec.environments["production"];
    assert_eq!(production.gate, GateSpec::default());
    assert_eq!(production.gate.fail_on, "critical");
    assert!(production.gate.fail_on_secrets);
    assert_eq!(
        production.gate.max_advisory_age,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert!(!production.gate.allow_missing_advisories);
    assert!(!production.gate.fail_on_unmaintained);
    assert!(production.trusted_keys.is_empty());
    assert!(!production.approval && !production.protected);
    assert_eq!(production.approvals.required, 1);
    assert_eq!(production.approvals.timeout, Duration::from_secs(24 * 3600));
}

#[test]
fn protected_implies_approval() {
    let fixture = Fixture::new();
    for extra in ["protected = true\n", "protected = true\napproval = false\n"] {
        let text = format!("{MINIMAL}{extra}");
        let spec = fixture.parse(&text).expect("parses");
        let production = &spec.environments["production"];
        assert!(production.protected && production.approval, "{extra}");
    }
}

#[test]
fn supply_chain_problems_are_all_reported() {
    let fixture = Fixture::new();
    let text = format!(
        "{MINIMAL}approval = true\ntrusted_keys = [\"nope.pub\"]\n[environments.production.approvals]\nrequired = 0\n[environments.production.gate]\nfail_on = \"bad\"\n[supply]\nsigning_key = \"nope.key\"\n"
    );
    let error = fixture.parse(&text).unwrap_err();
    let fields: Vec<&str> = error.all().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "environments.production.trusted_keys[0]",
            "environments.production.approvals.required",
            "environments.production.gate.fail_on",
            "supply.signing_key"
        ]
    );
}

#[test]
fn full_file_round_trips_every_key() {
    let fixture = Fixture::new();
    let root = fixture.dir.path();
    for file in [
        "keys/release.key",
        "keys/release.pub",
        "keys/ci.pub",
        "security/exceptions.toml",
        "security/gitleaks.toml",
    ] {
        std::fs::create_dir_all(root.join(file).parent().expect("has a parent"))
            .expect("create dir");
        std::fs::write(root.join(file), "x\n").expect("write file");
    }
    let text = r#"
app = "shop-api"
strategy = "canary"

[supply]
signing_key = "keys/release.key"

[build]
context = "ctx"
dockerfile = "Dockerfile"
args = { RUST_VERSION = "1.85" }

[container]
port = 9000
command = ["/shop", "--serve"]
env = { VERSION = "v2", RUST_LOG = "info" }
memory = "1g"
cpus = 2
pids_limit = 64
user = "1000:1000"
read_only = false
tmpfs = ["/tmp", "/run"]

[health]
path = "/ready"
interval = "500ms"
timeout = "2s"
healthy_threshold = 3
unhealthy_threshold = 5
deadline = "1m"

[environments.production]
listen = "0.0.0.0:80"
replicas = 4
retire_after = "1h"
drain_timeout = "30s"
response_timeout = "2m"
protected = true
approval = false
trusted_keys = ["keys/release.pub", "./keys/ci.pub"]

[environments.production.approvals]
required = 2
timeout = "4h"

[environments.production.gate]
fail_on = "high"
fail_on_secrets = true
exceptions = "security/exceptions.toml"
secret_rules = "security/../security/gitleaks.toml"
max_advisory_age = "2d"
fail_on_unmaintained = true

[environments.staging]
listen = "[::1]:8081"
replicas = 1
keep_releases = 12
retire_after = "0s"
drain_timeout = "1s"
approval = true

[environments.staging.gate]
fail_on = "none"
fail_on_secrets = false
allow_missing_advisories = true
"#;
    let spec = fixture.parse(text).expect("full spec parses");
    assert_eq!(spec.app, "shop-api");
    assert_eq!(spec.strategy, "canary");
    assert_eq!(
        spec.supply,
        SupplySpec {
            signing_key: Some(root.join("keys/release.key"))
        }
    );
    assert_eq!(
        spec.build,
        BuildSpec::Dockerfile {
            context: fixture.dir.path().join("ctx"),
            dockerfile: "Dockerfile".to_string(),
            args: [("RUST_VERSION".to_string(), "1.85".to_string())].into(),
        }
    );
    assert_eq!(
        spec.container,
        ContainerSpec {
            port: 9000,
            command: vec!["/shop".to_string(), "--serve".to_string()],
            env: [
                ("RUST_LOG".to_string(), "info".to_string()),
                ("VERSION".to_string(), "v2".to_string()),
            ]
            .into(),
            memory_bytes: 1 << 30,
            cpus: 2.0,
            pids_limit: 64,
            user: "1000:1000".to_string(),
            read_only: false,
            tmpfs: vec!["/tmp".to_string(), "/run".to_string()],
            secrets: Default::default(),
        }
    );
    assert_eq!(
        spec.health,
        HealthSpec {
            path: "/ready".to_string(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            healthy_threshold: 3,
            unhealthy_threshold: 5,
            deadline: Duration::from_secs(60),
        }
    );
    assert_eq!(
        spec.environments.get("production"),
        Some(&EnvironmentSpec {
            listen: "0.0.0.0:80".to_string(),
            replicas: 4,
            retire_after: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(120),
            // Protected wins over `approval = false`.
            approval: true,
            protected: true,
            approvals: ApprovalSpec {
                required: 2,
                timeout: Duration::from_secs(4 * 3600),
            },
            gate: GateSpec {
                fail_on: "high".to_string(),
                fail_on_secrets: true,
                exceptions: Some(root.join("security/exceptions.toml")),
                secret_rules: Some(root.join("security/gitleaks.toml")),
                max_advisory_age: Duration::from_secs(2 * 24 * 3600),
                fail_on_unmaintained: true,
                ..GateSpec::default()
            },
            trusted_keys: vec![root.join("keys/release.pub"), root.join("keys/ci.pub")],
            keep_releases: 5,
        })
    );
    assert_eq!(
        spec.environments.get("staging"),
        Some(&EnvironmentSpec {
            listen: "[::1]:8081".to_string(),
            replicas: 1,
            retire_after: Duration::ZERO,
            drain_timeout: Duration::from_secs(1),
            response_timeout: cutover_model::spec::DEFAULT_RESPONSE_TIMEOUT,
            approval: true,
            protected: false,
            approvals: ApprovalSpec::default(),
            gate: GateSpec {
                fail_on: "none".to_string(),
                fail_on_secrets: false,
                exceptions: None,
                secret_rules: None,
                allow_missing_advisories: true,
                ..GateSpec::default()
            },
            trusted_keys: Vec::new(),
            keep_releases: 12,
        })
    );
    // The model's serialized form reads back to the same spec, and the digest is stable.
    let json = toml_roundtrip(&spec);
    assert_eq!(json, spec);
    assert_eq!(spec_digest(&spec), spec_digest(&json));
    assert!(spec_digest(&spec).starts_with("sha256:"));
}

fn toml_roundtrip(spec: &Spec) -> Spec {
    let text = toml::to_string(spec).expect("spec serializes");
    toml::from_str(&text).expect("spec deserializes")
}

#[test]
fn memory_sizes_accept_units_and_bytes() {
    use crate::raw::RawSize;
    let cases = [
        (RawSize::Text("64MiB".into()), Some(64 << 20)),
        (RawSize::Text("128m".into()), Some(128 << 20)),
        (RawSize::Text("1g".into()), Some(1 << 30)),
        (RawSize::Text("512K".into()), Some(512 << 10)),
        (RawSize::Text("4194304".into()), Some(4 << 20)),
        (RawSize::Bytes(8 << 20), Some(8 << 20)),
        (RawSize::Bytes(-1), None),
        (RawSize::Text("1.5g".into()), None),
        (RawSize::Text("lots".into()), None),
        (RawSize::Text("99999999999999g".into()), None),
    ];
    for (raw, expected) in cases {
        assert_eq!(convert::parse_size(&raw).ok(), expected, "{raw:?}");
    }
}

#[test]
fn relative_spec_path_gets_an_absolute_base_dir() {
    let fixture = Fixture::new();
    let error = parse(MINIMAL, Path::new("deploy.toml")).unwrap_err();
    // Resolved against the current directory, where app/Cargo.toml does not exist.
    assert_eq!(error.field, "build.cargo.manifest");
    assert!(error.message.starts_with('/'), "{error}");
    let spec = fixture.parse(MINIMAL).expect("parses");
    assert!(spec.base_dir.is_absolute());
}

#[test]
fn load_reports_a_missing_file() {
    let fixture = Fixture::new();
    let error = load(&fixture.dir.path().join("missing.toml")).unwrap_err();
    assert!(
        error.message.starts_with("cannot read the spec file"),
        "{error}"
    );
}

#[test]
fn the_repository_example_spec_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec = load(&root.join("deploy.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.app, "hello");
    let production = &spec.environments["production"];
    assert_eq!(production.listen, "127.0.0.1:8080");
    assert_eq!(production.replicas, 2);
    assert_eq!(production.retire_after, Duration::from_secs(300));
    assert_eq!(
        spec.container.env.get("VERSION").map(String::as_str),
        Some("v1")
    );
    match &spec.build {
        BuildSpec::Cargo { manifest, bin, .. } => {
            assert!(manifest.ends_with("examples/hello/Cargo.toml"));
            assert!(!manifest.to_string_lossy().contains(".."));
            assert_eq!(bin, "hello");
        }
        other => panic!("expected a cargo build, got {other:?}"),
    }
    assert_eq!(
        strategy_path(&spec),
        spec.base_dir.join("plans/blue-green.toml")
    );
}

#[test]
fn readme_examples_parse() {
    let fixture = Fixture::new();
    let root = fixture.dir.path();
    for file in [
        "keys/release.key",
        "keys/release.pub",
        "security/exceptions.toml",
        "examples/hello/Cargo.toml",
    ] {
        std::fs::create_dir_all(root.join(file).parent().expect("has a parent"))
            .expect("create dir");
        std::fs::write(root.join(file), "x\n").expect("write file");
    }
    let readme = include_str!("../README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(blocks.len() >= 2, "the readme has spec examples");
    for block in blocks {
        // Fragments get the two required top-level keys.
        let text = if block.contains("app = ") {
            block.to_string()
        } else {
            format!("app = \"hello\"\n[build]\ncargo = {{ manifest = \"examples/hello/Cargo.toml\" }}\n{block}")
        };
        if let Err(e) = fixture.parse(&text) {
            panic!("readme example does not parse: {e}\n{text}");
        }
    }
}

const WITH_SECRETS: &str = r#"app = "hello"
[build]
cargo = { manifest = "app/Cargo.toml" }
[container.secrets]
db-password = "secret://db-password"
API_TOKEN = { source = "env://CI_API_TOKEN", as_env = true }
tls = { source = "file:///run/keys/tls.pem", path = "/etc/app/tls.pem" }
[environments.production]
listen = "127.0.0.1:8080"
"#;

#[test]
fn container_secrets_parse_with_default_and_given_paths() {
    let f = Fixture::new();
    let spec = f.parse(WITH_SECRETS).expect("valid");
    let secrets = &spec.container.secrets;
    assert_eq!(secrets.len(), 3);
    let db = &secrets["db-password"];
    assert_eq!(db.source, "secret://db-password");
    assert_eq!(db.path, "/run/secrets/db-password");
    assert!(!db.as_env);
    assert_eq!(db.pin, None);
    assert!(secrets["API_TOKEN"].as_env);
    assert_eq!(secrets["API_TOKEN"].path, "/run/secrets/API_TOKEN");
    assert_eq!(secrets["tls"].path, "/etc/app/tls.pem");
}

#[test]
fn bad_secret_references_name_line_column_and_field() {
    let f = Fixture::new();
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "x = \"vault://x\"",
            5,
            "container.secrets.x",
            "unknown scheme",
        ),
        (
            "x = \"aws-sm://prod/db\"",
            5,
            "container.secrets.x",
            "comes with the AWS provider",
        ),
        (
            "x = \"secret://../etc\"",
            5,
            "container.secrets.x",
            "letters, digits",
        ),
        (
            "\"../x\" = \"secret://x\"",
            1,
            "container.secrets.../x",
            "not a valid secret name",
        ),
        (
            "x = \"env://1BAD\"",
            5,
            "container.secrets.x",
            "not an environment variable name",
        ),
        (
            "x = \"file://relative/path\"",
            5,
            "container.secrets.x",
            "absolute path",
        ),
        (
            "x = { source = \"secret://x\", path = \"run/x\" }",
            37,
            "container.secrets.x.path",
            "absolute file path",
        ),
        (
            "x = { path = \"/run/x\" }",
            5,
            "container.secrets.x",
            "needs a source",
        ),
        (
            "x = { source = \"secret://x\", mode = 1 }",
            30,
            "",
            "unknown field `mode`",
        ),
        ("x = 3", 5, "", "a source such as"),
        (
            "my-key = { source = \"secret://x\", as_env = true }",
            44,
            "container.secrets.my-key.as_env",
            "not an environment variable name",
        ),
    ];
    for (entry, column, field, fragment) in cases {
        let text = format!(
            "app = \"hello\"\n[build]\ncargo = {{ manifest = \"app/Cargo.toml\" }}\n[container.secrets]\n{entry}\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n"
        );
        let err = f.parse(&text).expect_err(entry);
        assert_eq!(err.line, 5, "{entry}: {err}");
        assert_eq!(err.column, *column, "{entry}: {err}");
        if !field.is_empty() {
            assert_eq!(err.field, *field, "{entry}: {err}");
        }
        assert!(err.to_string().contains(fragment), "{entry}: {err}");
        assert!(err.to_string().contains("deploy.toml:5:"), "{entry}: {err}");
    }
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn a_prebuilt_image_by_digest_is_a_build() {
    let f = Fixture::new();
    let text = format!(
        "app = \"hello\"\n[build]\nimage = \"127.0.0.1:5000/team/hello@{DIGEST}\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n"
    );
    let spec = f.parse(&text).expect("valid spec");
    match spec.build {
        BuildSpec::Image { reference } => {
            assert_eq!(reference.registry, "127.0.0.1:5000");
            assert_eq!(reference.repository, "team/hello");
            assert_eq!(reference.digest, DIGEST);
        }
        other => panic!("expected an image build, got {other:?}"),
    }
}

#[test]
fn two_secrets_on_one_path_or_a_secret_shadowing_env_are_refused() {
    let f = Fixture::new();
    let text = "app = \"hello\"\n[build]\ncargo = { manifest = \"app/Cargo.toml\" }\n[container.env]\nTOKEN = \"x\"\n[container.secrets]\na = { source = \"secret://a\", path = \"/run/secrets/b\" }\nb = \"secret://b\"\nTOKEN = { source = \"secret://t\", as_env = true }\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n";
    let err = f.parse(text).expect_err("collisions");
    let all: Vec<String> = err.all().map(ToString::to_string).collect();
    assert!(
        all.iter().any(|e| e.contains("container.secrets.b.path")
            && e.contains("already the path of secret a")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|e| e.contains("container.secrets.TOKEN.as_env")
                && e.contains("container.env sets TOKEN")),
        "{all:?}"
    );
}

#[test]
fn a_late_secret_error_points_at_its_entry() {
    let f = Fixture::new();
    let err = secret_error(
        WITH_SECRETS,
        &f.spec_path(),
        "API_TOKEN",
        "env://CI_API_TOKEN is not set",
    );
    assert_eq!((err.line, err.column), (6, 13), "{err}");
    assert_eq!(err.field, "container.secrets.API_TOKEN");
}

#[test]
fn a_tag_without_digest_is_refused_at_build_image_saying_why() {
    let f = Fixture::new();
    let text = "app = \"hello\"\n[build]\nimage = \"127.0.0.1:5000/hello:latest\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n";
    let err = f.parse(text).unwrap_err();
    assert_eq!(err.field, "build.image");
    assert_eq!((err.line, err.column), (3, 9));
    assert!(
        err.message.contains("a tag can be moved"),
        "{}",
        err.message
    );
    assert!(err.message.contains("by digest"), "{}", err.message);
}

#[test]
fn an_image_excludes_the_other_build_fields() {
    let f = Fixture::new();
    let text = format!(
        "app = \"hello\"\n[build]\nimage = \"127.0.0.1:5000/hello@{DIGEST}\"\ncontext = \"ctx\"\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n"
    );
    let err = f.parse(&text).unwrap_err();
    assert_eq!(err.field, "build.context");
    assert!(err.message.contains("build.image"), "{}", err.message);
}
