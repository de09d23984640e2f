use std::path::Path;

use cutover_model::{EnvironmentSpec, Spec};

use super::*;

fn spec() -> Spec {
    let mut env = EnvironmentSpec::with_listen("127.0.0.1:8080");
    env.approval = true;
    env.approvals.required = 2;
    env.gate.fail_on = "high".to_string();
    Spec {
        app: "hello".to_string(),
        strategy: "blue-green".to_string(),
        base_dir: "/srv/app".into(),
        build: BuildSpec::Cargo {
            manifest: "/srv/app/Cargo.toml".into(),
            bin: "hello".to_string(),
            profile: "release".to_string(),
        },
        container: Default::default(),
        health: Default::default(),
        supply: Default::default(),
        environments: [("production".to_string(), env)].into_iter().collect(),
    }
}

fn facts() -> SpecFacts {
    SpecFacts {
        build_source: "/srv/app/Cargo.toml".into(),
        base_dir: "/srv/app".into(),
        ..SpecFacts::default()
    }
}

#[test]
fn a_derived_proposal_is_met_by_its_spec_and_reads_back() {
    let rails = derive(&spec(), "production", &facts());
    assert_eq!(rails.approvals, 2);
    assert!(violations(&spec(), "production", &rails, &facts()).is_empty());
    let text = render(&rails);
    assert_eq!(parse(&text, Path::new("g.toml")).unwrap(), rails, "{text}");
}

#[test]
fn each_loosened_setting_is_listed() {
    let rails = derive(&spec(), "production", &facts());
    let mut weak = spec();
    let env = weak.environments.get_mut("production").unwrap();
    env.approval = false;
    env.gate.fail_on = "none".to_string();
    env.gate.fail_on_secrets = false;
    env.listen = "127.0.0.1:9999".to_string();
    weak.container.read_only = false;
    weak.container.memory_bytes *= 2;
    weak.container.cpus = 4.0;
    weak.container.pids_limit = 4096;
    let fields: Vec<String> = violations(&weak, "production", &rails, &facts())
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "environments.production.approval",
            "environments.production.gate.fail_on",
            "environments.production.gate.fail_on_secrets",
            "environments.production.listen",
            "container.read_only",
            "container.memory",
            "container.cpus",
            "container.pids_limit",
        ]
    );
}

#[test]
fn a_stricter_spec_passes() {
    let rails = derive(&spec(), "production", &facts());
    let mut strict = spec();
    let env = strict.environments.get_mut("production").unwrap();
    env.approvals.required = 3;
    env.gate.fail_on = "low".to_string();
    strict.container.memory_bytes /= 2;
    strict.container.cpus = 0.25;
    strict.container.pids_limit = 16;
    assert!(violations(&strict, "production", &rails, &facts()).is_empty());
}

#[test]
fn fewer_approvals_root_user_pinned_files_and_build_roots() {
    let mut rails = derive(&spec(), "production", &facts());
    rails.build_roots = vec!["/srv/other".to_string()];
    let mut weak = spec();
    weak.environments
        .get_mut("production")
        .unwrap()
        .approvals
        .required = 1;
    weak.environments
        .get_mut("production")
        .unwrap()
        .gate
        .exceptions = Some("/srv/app/exceptions.toml".into());
    weak.container.user = "0:0".to_string();
    let mut f = facts();
    f.exceptions = Some((b"x".to_vec(), cutover_model::sha256_digest(b"x")));
    f.key_ids = vec![Ok("abc".to_string())];
    let found = violations(&weak, "production", &rails, &f);
    let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "environments.production.approvals.required",
            "environments.production.gate.exceptions",
            "environments.production.trusted_keys[0]",
            "build.cargo.manifest",
            "base_dir",
            "container.user",
        ]
    );
    assert_eq!(found[0].required, "at least 2");
}

#[test]
fn file_errors_name_line_column_and_field() {
    let text =
        "approvals = 1\n[gate]\nfail_on = \"sometimes\"\n[container]\nmax_memory = \"lots\"\n";
    let err = parse(text, Path::new("prod.toml")).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("prod.toml:3:11: gate.fail_on: must be"),
        "{shown}"
    );
    assert!(
        shown.contains("prod.toml:5:14: container.max_memory: is not a size"),
        "{shown}"
    );
    let err = parse("[gate]\nfail_on_secret = true\n", Path::new("prod.toml")).unwrap_err();
    assert_eq!((err.line, err.column), (2, 1), "{err}");
    assert!(
        err.to_string().contains("unknown field `fail_on_secret`"),
        "{err}"
    );
    let err = parse("trusted_keys = [\"not a key\"]\n", Path::new("p.toml")).unwrap_err();
    assert_eq!(err.field, "trusted_keys[0]");
}
