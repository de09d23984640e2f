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
fn a_prebuilt_image_sent_without_base_dir_has_no_directory_to_hold_in_the_build_roots() {
    let mut rails = derive(&spec(), "production", &facts());
    rails.build_roots = vec!["/srv/app".to_string()];
    let mut remote = spec();
    remote.base_dir = "/dev/null".into();
    remote.build = BuildSpec::Image {
        reference: cutover_model::ImageRef::parse(&format!(
            "127.0.0.1:5000/hello@sha256:{}",
            "ab".repeat(32)
        ))
        .unwrap(),
    };
    let mut f = facts();
    f.base_dir = "/dev/null".into();
    assert!(violations(&remote, "production", &rails, &f).is_empty());
    // A real directory outside the roots still is one.
    remote.base_dir = "/srv/other".into();
    f.base_dir = "/srv/other".into();
    let fields: Vec<String> = violations(&remote, "production", &rails, &f)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["base_dir"]);
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

// ----- soaking -----

const MIN: u64 = 60_000;

fn soaking(envs: &[&str], soak_ms: u64) -> Guardrails {
    let mut rails = derive(&spec(), "production", &facts());
    rails.requires_success_in = envs.iter().map(|e| e.to_string()).collect();
    rails.soak_ms = Some(soak_ms);
    rails
}

fn period(
    env: &str,
    release: &str,
    from: u64,
    until: Option<u64>,
    ended: cutover_model::LiveEnd,
) -> LivePeriod {
    LivePeriod {
        env: env.to_string(),
        release_id: release.to_string(),
        image_id: "sha256:img".to_string(),
        from_ms: from,
        until_ms: until,
        ended,
    }
}

fn replaced(by: &str) -> cutover_model::LiveEnd {
    cutover_model::LiveEnd::Replaced { by: by.to_string() }
}

#[test]
fn soak_files_read_back_and_bad_values_name_their_place() {
    let text = "requires_success_in = [\"staging\", \"qa\"]\nsoak = \"30m\"\n";
    let rails = parse(text, Path::new("p.toml")).unwrap();
    assert_eq!(rails.requires_success_in, ["staging", "qa"]);
    assert_eq!(rails.soak_ms, Some(30 * MIN));
    let again = parse(&render(&rails), Path::new("p.toml")).unwrap();
    assert_eq!(again, rails);
    assert!(summary(&rails)
        .iter()
        .any(|(k, v)| *k == "soak" && v.contains("30m in staging, qa")));
    let err = parse(
        "requires_success_in = [\"staging\"]\nsoak = \"soon\"\n",
        Path::new("p.toml"),
    )
    .unwrap_err();
    assert_eq!(
        (err.line, err.column, err.field.as_str()),
        (2, 8, "soak"),
        "{err}"
    );
    let err = parse("soak = \"1h\"\n", Path::new("p.toml")).unwrap_err();
    assert!(
        err.to_string().contains("needs requires_success_in"),
        "{err}"
    );
    let err = parse("requires_success_in = [\"Staging\"]\n", Path::new("p.toml")).unwrap_err();
    assert_eq!(err.field, "requires_success_in[0]", "{err}");
    let err = parse(
        "requires_success_in = [\"qa\", \"qa\"]\n",
        Path::new("p.toml"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    // Old versions without the fields read as no soak requirement.
    let old: Guardrails = serde_json::from_value({
        let mut v = serde_json::to_value(derive(&spec(), "production", &facts())).unwrap();
        v.as_object_mut().unwrap().remove("requires_success_in");
        v.as_object_mut().unwrap().remove("soak_ms");
        v
    })
    .unwrap();
    assert!(old.requires_success_in.is_empty());
    assert!(soak_refusal("production", &old, None, &[], 0).is_none());
}

#[test]
fn an_image_never_live_in_staging_is_refused() {
    let rails = soaking(&["staging"], 30 * MIN);
    let elsewhere = [period(
        "dev",
        "dev-3",
        0,
        None,
        cutover_model::LiveEnd::StillLive,
    )];
    let (message, violations) = soak_refusal(
        "production",
        &rails,
        Some("sha256:img"),
        &elsewhere,
        90 * MIN,
    )
    .unwrap();
    assert!(
        message
            .starts_with("image sha256:img may not go to production: it was never live in staging"),
        "{message}"
    );
    assert!(
        message.contains("production requires 30m live in staging without a rollback"),
        "{message}"
    );
    assert!(
        message.contains("where it has been: dev as dev-3 for 1h 30m"),
        "{message}"
    );
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "requires_success_in");
    // A deploy (a new build) is never live anywhere.
    let (message, _) = soak_refusal("production", &rails, None, &[], 0).unwrap();
    assert!(
        message.contains("a deploy builds a new image, which was never live in staging"),
        "{message}"
    );
    assert!(
        message.contains("where it has been: nowhere yet"),
        "{message}"
    );
    assert!(
        message.contains("cutover promote <release> --to production"),
        "{message}"
    );
}

#[test]
fn too_short_a_stay_is_refused_with_how_long_and_what_is_left() {
    let rails = soaking(&["staging"], 30 * MIN);
    let path = [period(
        "staging",
        "staging-7",
        0,
        None,
        cutover_model::LiveEnd::StillLive,
    )];
    let now = 12 * MIN + 3_000;
    let (message, _) = soak_refusal("production", &rails, Some("sha256:img"), &path, now).unwrap();
    assert!(
        message.contains("it was live in staging as staging-7 for 12m 3s (since 1970-01-01T00:00:00Z, still live); 17m 57s more to go"),
        "{message}"
    );
    // Two short stays do not add up: the soak is continuous.
    let path = [
        period(
            "staging",
            "staging-7",
            0,
            Some(20 * MIN),
            replaced("staging-8"),
        ),
        period(
            "staging",
            "staging-9",
            40 * MIN,
            None,
            cutover_model::LiveEnd::StillLive,
        ),
    ];
    assert!(soak_refusal("production", &rails, Some("sha256:img"), &path, 60 * MIN).is_some());
}

#[test]
fn a_rolled_back_image_is_refused_however_long_it_was_live() {
    let rails = soaking(&["staging"], 30 * MIN);
    let path = [period(
        "staging",
        "staging-7",
        0,
        Some(120 * MIN),
        cutover_model::LiveEnd::RolledBack {
            by: "staging-9".to_string(),
        },
    )];
    let (message, _) =
        soak_refusal("production", &rails, Some("sha256:img"), &path, 200 * MIN).unwrap();
    assert!(
        message.contains("it was rolled back in staging: staging as staging-7 for 2h"),
        "{message}"
    );
    assert!(message.contains("rolled back by staging-9"), "{message}");
}

#[test]
fn long_enough_stays_pass_still_live_or_replaced() {
    let rails = soaking(&["staging"], 30 * MIN);
    let live = [period(
        "staging",
        "staging-7",
        0,
        None,
        cutover_model::LiveEnd::StillLive,
    )];
    assert!(soak_refusal("production", &rails, Some("sha256:img"), &live, 30 * MIN).is_none());
    let done = [period(
        "staging",
        "staging-7",
        0,
        Some(45 * MIN),
        replaced("staging-8"),
    )];
    assert!(soak_refusal("production", &rails, Some("sha256:img"), &done, 500 * MIN).is_none());
    // No soak time: any stay counts, none does not.
    let any = soaking(&["staging"], 0);
    assert!(soak_refusal("production", &any, Some("sha256:img"), &live, 0).is_none());
    assert!(soak_refusal("production", &any, Some("sha256:img"), &[], 0).is_some());
}

#[test]
fn every_named_environment_must_be_met() {
    let rails = soaking(&["staging", "qa"], 30 * MIN);
    let staging_only = [period(
        "staging",
        "staging-7",
        0,
        None,
        cutover_model::LiveEnd::StillLive,
    )];
    let (message, violations) = soak_refusal(
        "production",
        &rails,
        Some("sha256:img"),
        &staging_only,
        60 * MIN,
    )
    .unwrap();
    assert!(message.contains("it was never live in qa"), "{message}");
    assert!(!message.contains("never live in staging"), "{message}");
    assert!(
        message.contains("production requires 30m live in staging without a rollback and 30m live in qa without a rollback"),
        "{message}"
    );
    assert_eq!(violations.len(), 1);
    let both = [
        staging_only[0].clone(),
        period(
            "qa",
            "qa-2",
            10 * MIN,
            None,
            cutover_model::LiveEnd::StillLive,
        ),
    ];
    assert!(soak_refusal("production", &rails, Some("sha256:img"), &both, 60 * MIN).is_none());
}
