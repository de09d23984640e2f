//! Readable renderings of a plan: a text listing for people and Graphviz for pictures.

use std::fmt::Write;
use std::time::Duration;

use cutover_model::{
    format_ms, Action, BuildSpec, ContainerSpec, DeploymentKind, ImageSource, Plan,
};

/// A listing of the plan: what it does, then each step with its dependencies and the
/// parameters it will use, ending with the digest.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let what = match &plan.kind {
        DeploymentKind::Deploy => format!("deploy {} to {}", plan.app, plan.env),
        DeploymentKind::Build => format!(
            "build {} for {} (scan, sign and verify; nothing is deployed)",
            plan.app, plan.env
        ),
        DeploymentKind::Rollback { target, warm } => format!(
            "roll {} in {} back to {target} ({})",
            plan.app,
            plan.env,
            if *warm {
                "warm: adopt its running instances"
            } else {
                "cold: start it again"
            }
        ),
        DeploymentKind::Rotate { from } => format!(
            "rotate the secrets of {} in {}: a new release of {from}'s image with the latest secret versions",
            plan.app, plan.env
        ),
        DeploymentKind::Promote {
            from_release,
            from_env,
        } => format!(
            "promote {} to {}, promoted from {from_release} ({from_env}): its image, no build",
            plan.app, plan.env
        ),
    };
    let _ = writeln!(out, "plan {}: {what}", plan.deployment_id);
    let _ = writeln!(
        out,
        "  release       {}{}",
        plan.release_id,
        match &plan.previous_release {
            Some(p) => format!(" (replaces {p})"),
            None => " (first release)".to_string(),
        }
    );
    let _ = writeln!(out, "  strategy      {}", plan.strategy);
    let _ = writeln!(
        out,
        "  requested by  {} at {}",
        plan.requested_by,
        format_ms(plan.created_at_ms)
    );
    let _ = writeln!(out, "  spec          {}", plan.spec_digest);
    let _ = writeln!(out);
    let _ = writeln!(out, "steps ({}):", plan.steps.len());
    let width = plan.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let indent = " ".repeat(width + 4);
    for (n, step) in plan.steps.iter().enumerate() {
        let mut lines = describe(&step.action);
        if !step.depends_on.is_empty() {
            lines.push(format!("after {}", step.depends_on.join(", ")));
        }
        let _ = writeln!(
            out,
            "{:>3}. {:<width$}  {}",
            n + 1,
            step.id,
            lines.first().map(String::as_str).unwrap_or("")
        );
        for line in lines.iter().skip(1) {
            let _ = writeln!(out, "     {indent}{line}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "digest {}", plan.digest);
    out
}

/// The plan's DAG in Graphviz `dot` syntax: one box per step, an edge per dependency.
pub fn render_dot(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "digraph {} {{",
        quote(&format!("plan {}", plan.deployment_id))
    );
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(
        out,
        "  label={};",
        quote(&format!(
            "{} {} / {}\n{}",
            plan.deployment_id, plan.app, plan.env, plan.digest
        ))
    );
    let _ = writeln!(out, "  node [shape=box, fontname=\"monospace\"];");
    for step in &plan.steps {
        let summary = describe(&step.action)
            .into_iter()
            .next()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} [label={}];",
            quote(&step.id),
            quote(&format!("{}\n{summary}", step.id))
        );
    }
    for step in &plan.steps {
        for dep in &step.depends_on {
            let _ = writeln!(out, "  {} -> {};", quote(dep), quote(&step.id));
        }
    }
    out.push_str("}\n");
    out
}

/// A quoted Graphviz id; newlines become `\n` line breaks.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lines describing an action: a summary first, then details.
fn describe(action: &Action) -> Vec<String> {
    match action {
        Action::Build { tag, source, .. } => {
            let from = match source {
                BuildSpec::Cargo {
                    manifest,
                    bin,
                    profile,
                } => format!(
                    "from cargo {} (bin {bin}, profile {profile})",
                    manifest.display()
                ),
                BuildSpec::Dockerfile {
                    context,
                    dockerfile,
                    args,
                } => {
                    let mut s = format!("from {} in {}", dockerfile, context.display());
                    if !args.is_empty() {
                        let keys: Vec<&str> = args.keys().map(String::as_str).collect();
                        let _ = write!(s, " (args {})", keys.join(", "));
                    }
                    s
                }
                BuildSpec::Image { reference } => format!("pull {reference}"),
            };
            vec![format!("build image {tag}"), from]
        }
        Action::Pull { reference, tag } => vec![
            format!("pull image {reference}"),
            format!(
                "check its manifest (linux/amd64), fetch its attestations ({}), tag it {tag}",
                reference.attestation_tag()
            ),
        ],
        Action::Scan {
            image: source,
            gate,
            ..
        } => {
            let mut verdict = match gate.fail_on.as_str() {
                "none" => "never fail on vulnerabilities".to_string(),
                "critical" => "fail on critical".to_string(),
                level => format!("fail on {level} or worse"),
            };
            verdict.push_str(if gate.fail_on_secrets {
                ", fail on secrets"
            } else {
                ", report secrets without failing"
            });
            let mut lines = vec![format!("scan {}", image(source)), verdict];
            if let Some(path) = &gate.exceptions {
                lines.push(format!("exceptions {}", path.display()));
            }
            if let Some(path) = &gate.secret_rules {
                lines.push(format!("secret rules {}", path.display()));
            }
            if gate.allow_missing_advisories {
                lines.push("passes without a current advisory database".to_string());
            }
            if gate.fail_on_unmaintained {
                lines.push(
                    "fail on informational advisories (unmaintained, unsound, notice)".to_string(),
                );
            }
            lines
        }
        Action::Sign {
            image: source,
            key,
            spec_digest,
            source: dir,
            ..
        } => vec![
            format!(
                "sign {} with {}",
                image(source),
                match key {
                    Some(path) => format!("key {}", path.display()),
                    None => "the local key".to_string(),
                }
            ),
            format!("provenance: spec {spec_digest}, source {}", dir.display()),
        ],
        Action::Verify {
            image: source,
            trusted_keys,
            ..
        } => vec![format!(
            "verify {} against {}",
            image(source),
            if trusted_keys.is_empty() {
                "the local key".to_string()
            } else {
                trusted_keys
                    .iter()
                    .map(|k| k.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )],
        Action::Approval {
            image: source,
            gate,
        } => vec![
            format!(
                "wait for {} approval{} (timeout {})",
                gate.required,
                if gate.required == 1 { "" } else { "s" },
                dur(gate.timeout)
            ),
            format!("of {} and this plan", image(source)),
        ],
        Action::Provision { instance } => vec![
            format!("start {} from {}", instance.name, image(&instance.image)),
            container(&instance.container),
        ],
        Action::Adopt { name, release } => {
            vec![format!("adopt running {name} of release {release}")]
        }
        Action::HealthCheck {
            instance_step,
            health,
        } => vec![
            format!(
                "check GET {} on the instance of {instance_step}",
                health.path
            ),
            format!(
                "every {}, timeout {}, healthy after {}, unhealthy after {}, deadline {}",
                dur(health.interval),
                dur(health.timeout),
                health.healthy_threshold,
                health.unhealthy_threshold,
                dur(health.deadline)
            ),
        ],
        Action::ShiftTraffic {
            listen,
            release,
            instance_steps,
            weight,
            response_timeout,
            restore,
        } => vec![
            format!(
                "send {weight}% of {listen} to release {release}, response timeout {}",
                dur(*response_timeout)
            ),
            format!("instances of {}", instance_steps.join(", ")),
            match restore.recorded() {
                None => "undo restores the route found when it runs".to_string(),
                Some(None) => "undo removes the route".to_string(),
                Some(Some(route)) => format!(
                    "undo restores {}",
                    route
                        .backends
                        .iter()
                        .map(|b| format!("{}% to release {}", b.weight, b.release))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        ],
        Action::Drain {
            listen,
            release,
            timeout,
        } => vec![match release {
            Some(r) => format!(
                "wait for in-flight requests of {r} on {listen}, at most {}",
                dur(*timeout)
            ),
            None => "nothing to drain (no previous release)".to_string(),
        }],
        Action::Retire {
            release,
            instances,
            after,
        } => match release {
            Some(r) => vec![
                format!("retire release {r} in {}", dur(*after)),
                if instances.is_empty() {
                    "no instances recorded".to_string()
                } else {
                    format!("remove {}", instances.join(", "))
                },
            ],
            None => vec!["nothing to retire (no previous release)".to_string()],
        },
        Action::Record {
            release,
            image: source,
            instance_steps,
            container: c,
            replicas,
            ..
        } => vec![
            format!("record release {release} as current ({replicas} replicas)"),
            format!("with {}", image(source)),
            format!("instances of {}", instance_steps.join(", ")),
            container(c),
        ],
    }
}

fn image(source: &ImageSource) -> String {
    match source {
        ImageSource::Step { step } => format!("the image built by {step}"),
        ImageSource::Pinned { id, tag } => format!("pinned image {tag} ({id})"),
    }
}

fn container(c: &ContainerSpec) -> String {
    let mut s = format!(
        "port {}, memory {}, cpus {}, pids {}, user {}",
        c.port,
        bytes(c.memory_bytes),
        c.cpus,
        c.pids_limit,
        c.user
    );
    if c.read_only {
        s.push_str(", read-only");
    }
    if !c.tmpfs.is_empty() {
        let _ = write!(s, ", tmpfs {}", c.tmpfs.join(" "));
    }
    if !c.command.is_empty() {
        let _ = write!(s, ", command {:?}", c.command);
    }
    if !c.env.is_empty() {
        // Names and value digests: the listing reaches clients, values must not.
        let vars: Vec<String> = c
            .env_digests()
            .iter()
            .map(|(k, digest)| format!("{k}={digest}"))
            .collect();
        let _ = write!(s, ", env {}", vars.join(" "));
    }
    s
}

fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && (n / size) * size == n {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

/// `1m 30s`, `200ms`, `5m`: whole units, largest first.
fn dur(d: Duration) -> String {
    cutover_model::format_duration_exact(d)
}
