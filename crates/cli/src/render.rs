//! Text renderings for people. JSON output is serde's, straight from the API types.

use std::fmt::Write;

use cutover_model::{
    format_duration_ms, format_ms, ImageInfo, JournalEntry, JournalEvent, StepOutput,
};
use cutover_server::api::{ApprovalView, DeploymentDetail, EnvStatus, HistoryLine};

/// `error: a: b: c` from an error and its causes, without repeating a cause that the
/// message already contains.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// One progress line for a journal entry, timed from the deployment's start.
pub fn journal_line(entry: &JournalEntry, start_ms: u64) -> String {
    let at = format!(
        "+{}",
        format_duration_ms(entry.at_ms.saturating_sub(start_ms))
    );
    let what = match &entry.event {
        JournalEvent::DeploymentStarted { resumed: 0 } => "deployment started".to_string(),
        JournalEvent::DeploymentStarted { resumed } => {
            format!("deployment resumed (restart {resumed})")
        }
        JournalEvent::StepStarted { step, attempt: 1 } => format!("{step:<16} started"),
        JournalEvent::StepStarted { step, attempt } => {
            format!("{step:<16} started (attempt {attempt})")
        }
        JournalEvent::StepSucceeded {
            step,
            duration_ms,
            output,
        } => {
            let warning = match output {
                StepOutput::Image(ImageInfo {
                    warning: Some(warning),
                    ..
                }) => format!("; warning: {warning}"),
                _ => String::new(),
            };
            format!(
                "{step:<16} succeeded in {}{warning}",
                format_duration_ms(*duration_ms)
            )
        }
        JournalEvent::StepFailed {
            step,
            error,
            transient: true,
            ..
        } => {
            format!("{step:<16} failed, will retry: {error}")
        }
        JournalEvent::StepFailed { step, error, .. } => format!("{step:<16} failed: {error}"),
        JournalEvent::UnwindStarted { reason } => format!("rolling back: {reason}"),
        JournalEvent::UndoStarted { step } => format!("{step:<16} undoing"),
        JournalEvent::UndoSucceeded { step } => format!("{step:<16} undone"),
        JournalEvent::UndoFailed { step, error } => format!("{step:<16} UNDO FAILED: {error}"),
        JournalEvent::DeploymentFinished { status } => format!("deployment {}", status.label()),
    };
    format!("{at:>9}  {what}")
}

/// The closing line of `cutover deploy` / `rollback`.
pub fn outcome(d: &DeploymentDetail) -> String {
    let took = d
        .finished_at_ms
        .map(|f| {
            format!(
                " in {}",
                format_duration_ms(f.saturating_sub(d.created_at_ms))
            )
        })
        .unwrap_or_default();
    match d.status.as_str() {
        "succeeded" if d.kind == "build" => format!(
            "build {} succeeded{took}: the image is scanned, signed and verified for {}; nothing was deployed",
            d.id, d.env
        ),
        "rolled_back" if d.kind == "build" => format!(
            "build {} failed{took}: {}; nothing was deployed",
            d.id,
            d.reason.as_deref().unwrap_or("no reason recorded")
        ),
        "succeeded" => format!(
            "{} {} succeeded{took}: release {} is live in {}",
            d.kind, d.id, d.release_id, d.env
        ),
        "rolled_back" => format!(
            "{} {} failed and was rolled back{took}: {}; traffic is on {}",
            d.kind,
            d.id,
            d.reason.as_deref().unwrap_or("no reason recorded"),
            d.previous_release
                .as_deref()
                .unwrap_or("no release (none was live before)")
        ),
        "stuck" => format!(
            "{} {} is STUCK: {}; fix the cause, then run `cutover resume` to finish undoing it",
            d.kind,
            d.id,
            d.reason.as_deref().unwrap_or("an undo failed")
        ),
        other => format!("{} {} is {other}", d.kind, d.id),
    }
}

/// `cutover status --deployment ID`.
pub fn deployment(d: &DeploymentDetail) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deployment {} ({}) of {}: {}",
        d.id, d.kind, d.env, d.status
    );
    if let Some(reason) = &d.reason {
        let _ = writeln!(out, "  reason    {reason}");
    }
    let _ = writeln!(out, "  release   {}", d.release_id);
    if let Some(from) = &d.promoted_from {
        let _ = writeln!(
            out,
            "  promoted  from {} ({}): its image, no build",
            from.release, from.env
        );
    }
    if let Some(prev) = &d.previous_release {
        let _ = writeln!(out, "  previous  {prev}");
    }
    let _ = writeln!(out, "  plan      {}", d.plan_digest);
    let _ = writeln!(
        out,
        "  by        {} at {}",
        d.requested_by,
        format_ms(d.created_at_ms)
    );
    if let Some(f) = d.finished_at_ms {
        let _ = writeln!(
            out,
            "  took      {}",
            format_duration_ms(f.saturating_sub(d.created_at_ms))
        );
    }
    let _ = writeln!(out, "  steps");
    for s in &d.steps {
        let took = s.duration_ms.map(format_duration_ms).unwrap_or_default();
        let attempts = if s.attempts > 1 {
            format!(" ({} attempts)", s.attempts)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "    {:<16} {:<12} {:>8}{attempts}",
            s.id, s.state, took
        );
        if let Some(e) = &s.error {
            let _ = writeln!(out, "      error: {e}");
        }
    }
    out
}

/// `cutover status`.
pub fn status(envs: &[EnvStatus]) -> String {
    let mut out = String::new();
    if envs.is_empty() {
        out.push_str("no environments yet: run `cutover deploy`\n");
    }
    for e in envs {
        match &e.current {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "{}: release {} (image {}, by {} at {})",
                    e.env,
                    r.id,
                    short(&r.image.id),
                    r.created_by,
                    format_ms(r.created_at_ms)
                );
                let promoted = e
                    .latest
                    .as_ref()
                    .filter(|d| d.release_id == r.id)
                    .and_then(|d| d.promoted_from.as_ref());
                if let Some(from) = promoted {
                    let _ = writeln!(out, "  promoted   from {} ({})", from.release, from.env);
                }
            }
            None => {
                let _ = writeln!(out, "{}: no release yet", e.env);
            }
        }
        for warning in &e.secret_warnings {
            let _ = writeln!(out, "  warning: {warning}");
        }
        match &e.route {
            Some(route) => {
                let backends: Vec<String> = route
                    .backends
                    .iter()
                    .map(|b| format!("{} ({}%, {} upstreams)", b.release, b.weight, b.addrs.len()))
                    .collect();
                let _ = writeln!(
                    out,
                    "  traffic    {} -> {}",
                    route.listen,
                    backends.join(", ")
                );
            }
            None => {
                let _ = writeln!(out, "  traffic    not served");
            }
        }
        match &e.guardrails {
            Some(g) => {
                let _ = writeln!(
                    out,
                    "  guardrails version {} by {} at {}",
                    g.version,
                    g.set_by,
                    format_ms(g.set_at_ms)
                );
                for (what, required) in cutover_server::guardrails::summary(&g.guardrails) {
                    let _ = writeln!(out, "    {what:<13} {required}");
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "  guardrails none: an admin sets them (`cutover guardrails set {} <file>`)",
                    e.env
                );
            }
        }
        if let Some(active) = &e.active {
            let _ = writeln!(out, "  active     deployment {active} in progress");
        }
        for i in &e.instances {
            let _ = writeln!(
                out,
                "  instance   {:<36} {:<16} {:<10} {}",
                i.name, i.release, i.state, i.addr
            );
        }
        for w in &e.warm {
            let _ = writeln!(
                out,
                "  warm       {} until {}",
                w.release,
                format_ms(w.retire_at_ms)
            );
        }
        if let Some(d) = &e.latest {
            let _ = writeln!(out, "  latest     {}", outcome(d));
            for s in &d.steps {
                let took = s.duration_ms.map(format_duration_ms).unwrap_or_default();
                let _ = writeln!(out, "    {:<16} {:<12} {:>8}", s.id, s.state, took);
            }
        }
    }
    out
}

/// `cutover history`.
pub fn history(lines: &[HistoryLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:<20} {:<20} {:<12} {:<20} {:>8}  OUTCOME",
        "DEPLOYMENT", "KIND", "RELEASE", "IMAGE", "BY", "WHEN", "TOOK"
    );
    for l in lines {
        let took = l
            .finished_at_ms
            .map(|f| format_duration_ms(f.saturating_sub(l.created_at_ms)))
            .unwrap_or_else(|| "-".to_string());
        let mut outcome = match &l.reason {
            Some(r) => format!("{}: {r}", l.status),
            None => l.status.to_string(),
        };
        if let Some(from) = &l.promoted_from {
            outcome = format!("{outcome} (promoted from {})", from.release);
        }
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:<20} {:<20} {:<12} {:<20} {:>8}  {}",
            l.deployment_id,
            l.kind,
            l.release_id,
            l.image_id.as_deref().map(short).unwrap_or("-"),
            l.requested_by,
            format_ms(l.created_at_ms),
            took,
            outcome
        );
    }
    out
}

/// `cutover gc`: each image removed with the bytes freed, each kept with its reasons.
pub fn gc(report: &cutover_server::api::GcReport) -> String {
    let mut out = String::new();
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for r in &report.removed {
        let names = if r.tags.is_empty() {
            r.releases.join(", ")
        } else {
            r.tags.join(", ")
        };
        let _ = writeln!(
            out,
            "{verb} {} ({names}): image {}, attestations {}",
            short(&r.image_id),
            mib(r.image_bytes),
            mib(r.attestation_bytes)
        );
    }
    for k in &report.kept {
        let _ = writeln!(
            out,
            "kept {} ({}): {}",
            short(&k.image_id),
            k.tags.join(", "),
            k.reasons.join("; ")
        );
    }
    for f in &report.failed {
        let _ = writeln!(out, "could not remove {}: {}", short(&f.image_id), f.error);
    }
    let _ = writeln!(
        out,
        "{} image(s) {verb}, {} kept, {} freed{}",
        report.removed.len(),
        report.kept.len(),
        mib(report.bytes_freed),
        if report.dry_run {
            " (dry run: nothing removed)"
        } else {
            ""
        }
    );
    out
}

/// `sha256:0123456789ab` (12 hex digits).
fn short(id: &str) -> &str {
    let end = id.find(':').map(|i| i + 13).unwrap_or(12).min(id.len());
    &id[..end]
}

/// The approval view of a deployment (`cutover approve`, `cutover status --deployment`):
/// what changes from the running release, the scan verdict with its findings and used
/// exceptions, the provenance, and the digest an approval names. Values of environment
/// variables are never in the view.
pub fn approval_view(v: &ApprovalView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "approval view of {} ({} of {} to {}){}",
        v.deployment_id,
        v.kind,
        v.release_id,
        v.env,
        if v.waiting {
            ", waiting for approval"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "  plan      {}", v.plan_digest);
    let _ = writeln!(
        out,
        "  image     {}",
        match (&v.image_id, &v.image_tag) {
            (Some(id), Some(tag)) => format!("{id} ({tag})"),
            (Some(id), None) => id.clone(),
            _ => "not built yet".to_string(),
        }
    );
    let _ = writeln!(out, "  view      {}", v.view_digest);
    if let Some(from) = &v.promoted_from {
        let _ = writeln!(
            out,
            "  promoted  from {} ({}): its image, not rebuilt",
            from.release, from.env
        );
    }
    if v.image_path.is_empty() {
        let _ = writeln!(out, "  path      not live in any environment yet");
    } else {
        let _ = writeln!(out, "  path through environments");
        for step in &v.image_path {
            let _ = writeln!(out, "    {}", step.summary);
        }
    }
    match &v.running {
        Some(r) => {
            let _ = writeln!(
                out,
                "  changes from the running release {} (image {})",
                r.release_id, r.image_id
            );
        }
        None => {
            let _ = writeln!(out, "  first release of {}: every setting is new", v.env);
        }
    }
    if v.changes.is_empty() {
        let _ = writeln!(out, "    no setting changes");
    }
    for c in &v.changes {
        let _ = match &c.before {
            Some(before) => writeln!(
                out,
                "    {:<26} {before} -> {}",
                c.setting,
                c.after.as_deref().unwrap_or("-")
            ),
            None => writeln!(
                out,
                "    {:<26} {}",
                c.setting,
                c.after.as_deref().unwrap_or("-")
            ),
        };
    }
    let names = |list: &[String]| {
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "  environment variables (names only): added {}; removed {}; changed {}; {} unchanged",
        names(&v.env_vars.added),
        names(&v.env_vars.removed),
        names(&v.env_vars.changed),
        v.env_vars.unchanged
    );
    match &v.scan {
        None => {
            let _ = writeln!(out, "  scan      not scanned yet");
        }
        Some(s) => {
            let counts: Vec<String> = s
                .counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(sev, n)| format!("{n} {sev}"))
                .collect();
            let _ = writeln!(
                out,
                "  scan      {} (gate: fail on {}{}){}{}",
                if s.passed { "passed" } else { "failed" },
                s.fail_on,
                if s.fail_on_secrets {
                    " and secrets"
                } else {
                    ""
                },
                if counts.is_empty() {
                    String::new()
                } else {
                    format!(": {}", counts.join(", "))
                },
                if s.advisory_database {
                    ""
                } else {
                    " [no advisory database]"
                }
            );
            for r in &s.reasons {
                let _ = writeln!(out, "    reason: {r}");
            }
            match &s.findings {
                None => {
                    let _ = writeln!(out, "    findings were not recorded with this verdict");
                }
                Some(f) if f.is_empty() => {
                    let _ = writeln!(out, "    no findings");
                }
                Some(findings) => {
                    for f in findings {
                        let _ = if f.kind == "secret" {
                            writeln!(
                                out,
                                "    secret {} at {} [fingerprint {}]",
                                f.id,
                                f.location.as_deref().unwrap_or("?"),
                                f.fingerprint.as_deref().unwrap_or("?")
                            )
                        } else {
                            writeln!(
                                out,
                                "    {} {} in {} {}{}",
                                f.severity.as_deref().unwrap_or("?"),
                                f.id,
                                f.package.as_deref().unwrap_or("?"),
                                f.version.as_deref().unwrap_or("?"),
                                f.fixed
                                    .as_deref()
                                    .map(|x| format!(" (fixed in {x})"))
                                    .unwrap_or_default()
                            )
                        };
                    }
                }
            }
            for e in &s.exceptions {
                let _ = writeln!(
                    out,
                    "    exception {} used for {}: {} (owner {}, expires {})",
                    e.exception, e.finding, e.reason, e.owner, e.expires
                );
            }
        }
    }
    let p = &v.provenance;
    let _ = writeln!(
        out,
        "  built by  {}{}",
        p.builder_id.as_deref().unwrap_or("(not signed yet)"),
        p.builder_version
            .as_deref()
            .map(|x| format!(" version {x}"))
            .unwrap_or_default()
    );
    if let Some(by) = &p.invoked_by {
        let _ = writeln!(out, "  run by    {by}");
    }
    if let (Some(kind), Some(source)) = (&p.build_kind, &p.build_source) {
        let _ = writeln!(out, "  source    {kind}: {source}");
    }
    if let Some(repository) = &p.repository {
        let _ = writeln!(out, "  repo      {repository}");
    }
    if let Some(reference) = &p.pulled_from {
        let _ = writeln!(
            out,
            "  pulled    {reference}, provenance signed by {}",
            p.provenance_key_ids.join(", ")
        );
    }
    if let Some(commit) = &p.git_commit {
        let _ = writeln!(
            out,
            "  commit    {commit}{}",
            match p.git_dirty {
                Some(true) => " (with uncommitted changes)",
                Some(false) => " (clean)",
                None => "",
            }
        );
    }
    let _ = writeln!(
        out,
        "  signed by {}",
        p.signing_key_id.as_deref().unwrap_or("(not signed yet)")
    );
    let _ = match &v.guardrails {
        Some(g) => writeln!(
            out,
            "  guardrails version {} ({}), set by {}",
            g.version, g.digest, g.set_by
        ),
        None => writeln!(out, "  guardrails none for {}", v.env),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_time_steps_with_the_shared_duration_format() {
        let entry = JournalEntry {
            seq: 3,
            at_ms: 126_000,
            event: JournalEvent::StepSucceeded {
                step: "build".to_string(),
                output: StepOutput::None,
                duration_ms: 1234,
            },
        };
        assert_eq!(
            journal_line(&entry, 1000),
            format!("{:>9}  {:<16} succeeded in 1.23s", "+2m 5s", "build")
        );
        let started = JournalEntry {
            seq: 1,
            at_ms: 1350,
            event: JournalEvent::DeploymentStarted { resumed: 0 },
        };
        assert_eq!(
            journal_line(&started, 1000),
            format!("{:>9}  deployment started", "+350ms")
        );
    }

    /// A deployment waiting at its gate in an in-process control plane over the fakes.
    async fn waiting(
        cp: &std::sync::Arc<cutover_server::ControlPlane>,
        plan: &cutover_model::Plan,
    ) {
        cp.store.next_deployment_seq(&plan.env).unwrap();
        cp.store
            .acquire_lease(
                &plan.env,
                cutover_store::Lease {
                    deployment_id: plan.deployment_id.clone(),
                    holder: plan.requested_by.clone(),
                    acquired_at_ms: cutover_model::now_ms(),
                },
            )
            .unwrap();
        cp.store
            .save_plan(plan, &cutover_store::DeploymentRecord::from_plan(plan))
            .unwrap();
        cp.spawn_run(&plan.deployment_id);
        for _ in 0..1000 {
            let detail = cutover_server::detail(&cp.store, &plan.deployment_id).unwrap();
            if detail.waiting_for_approval() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{} never reached its gate", plan.deployment_id);
    }

    #[tokio::test]
    async fn the_approval_view_prints_variable_names_never_their_values() {
        use cutover_executor::fake;
        const CANARY: &str = "CANARY-5d1f42c0ffee";
        let fakes = fake::FakeProviders::new();
        let cp = cutover_server::ControlPlane::new(
            cutover_store::Store::temporary().unwrap(),
            fakes.providers(),
            cutover_executor::ExecutorConfig::default(),
        );
        let mut spec = fake::spec_for("prod", 1, Some(cutover_model::ApprovalSpec::default()));
        spec.container
            .env
            .insert("SESSION_KEY".to_string(), CANARY.to_string());
        let plan = fake::planned_deploy_of(&spec, "prod-1", None);
        waiting(&cp, &plan).await;
        let view = cutover_server::approval_view::approval_view(&cp, "prod-1")
            .await
            .unwrap();
        let text = approval_view(&view);
        let json = serde_json::to_string_pretty(&view).unwrap();
        for out in [&text, &json] {
            assert!(!out.contains(CANARY), "a value leaked: {out}");
            assert!(out.contains("SESSION_KEY"), "{out}");
        }
        assert!(text.contains("first release of prod"), "{text}");
        assert!(text.contains(&view.view_digest), "{text}");
        assert!(text.contains("signed by fake-key-1"), "{text}");
        assert!(text.contains("scan      passed"), "{text}");
        cp.abort_runs();
    }

    #[tokio::test]
    async fn the_approval_view_says_where_a_pulled_image_and_its_provenance_came_from() {
        use cutover_executor::fake;
        let fakes = fake::FakeProviders::new();
        let cp = cutover_server::ControlPlane::new(
            cutover_store::Store::temporary().unwrap(),
            fakes.providers(),
            cutover_executor::ExecutorConfig::default(),
        );
        let spec = fake::spec_for("prod", 1, Some(cutover_model::ApprovalSpec::default()));
        let plan = fake::planned_deploy_of(&spec, "prod-1", None);
        waiting(&cp, &plan).await;
        let mut view = cutover_server::approval_view::approval_view(&cp, "prod-1")
            .await
            .unwrap();
        let reference = format!("127.0.0.1:5000/team/hello@sha256:{}", "ab".repeat(32));
        view.provenance.pulled_from = Some(reference.clone());
        view.provenance.invoked_by = Some("https://ci.example/team/hello/jobs/7".to_string());
        view.provenance.repository = Some("https://git.example/team/hello".to_string());
        view.provenance.provenance_key_ids = vec!["ci-key".to_string()];
        let text = approval_view(&view);
        assert!(
            text.contains(&format!(
                "pulled    {reference}, provenance signed by ci-key"
            )),
            "{text}"
        );
        assert!(
            text.contains("run by    https://ci.example/team/hello/jobs/7"),
            "{text}"
        );
        assert!(
            text.contains("repo      https://git.example/team/hello"),
            "{text}"
        );
        cp.abort_runs();
    }

    #[test]
    fn an_unsandboxed_build_says_so_in_its_step_line() {
        let entry = |warning: Option<&str>| JournalEntry {
            seq: 3,
            at_ms: 2000,
            event: JournalEvent::StepSucceeded {
                step: "build".to_string(),
                output: StepOutput::Image(ImageInfo {
                    id: "sha256:abc".to_string(),
                    tag: "cutover/hello:production-1".to_string(),
                    warning: warning.map(str::to_string),
                }),
                duration_ms: 1000,
            },
        };
        let line = journal_line(&entry(None), 1000);
        assert!(line.contains("build            succeeded in "), "{line}");
        assert!(!line.contains("warning"), "{line}");
        let line = journal_line(&entry(Some(cutover_docker::UNSANDBOXED_WARNING)), 1000);
        assert!(
            line.ends_with(&format!(
                "; warning: {}",
                cutover_docker::UNSANDBOXED_WARNING
            )),
            "{line}"
        );
    }
}
