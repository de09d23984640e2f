//! The approval view: what an approver approves, computed in one place for the API
//! (`GET /api/v1/deployments/{id}/approval-view`), the web UI and the CLI.
//!
//! It compares the settings of the new plan with those of the release it replaces (the
//! plan's `previous_release`, through the plan that created it), adds the supply chain's
//! recorded scan verdict and signed provenance of the image (read back, never scanned
//! again) and the signing key from the journal, and digests the whole. Approvals name that
//! digest ([`crate::approvals::decide`] refuses one that no longer matches).
//!
//! Environment variables are compared by the digests of their values and shown by name
//! only: values can be secrets.

use std::collections::BTreeMap;

use cutover_model::{
    Action, BuildSpec, ContainerSpec, HealthSpec, ImageSource, Plan, Release, StepOutput,
    SupplyEvidence,
};

use crate::api::{
    ApprovalView, EnvVarChanges, ExceptionLine, FindingLine, GuardrailsInForce, ImagePathStep,
    ProvenanceView, RunningRelease, ScanVerdictView, SettingChange,
};
use crate::{ControlPlane, ServerError};

/// The settings of a release that approvers compare, as text for people, in the order
/// they are shown. A `None` value is unknown (a release recorded without its plan).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub values: Vec<(&'static str, Option<String>)>,
    /// Environment variables: name → digest of the value.
    pub env: BTreeMap<String, String>,
}

impl Settings {
    fn get(&self, name: &str) -> Option<&Option<String>> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

fn duration(d: std::time::Duration) -> String {
    cutover_model::format_duration_exact(d)
}

fn bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n > 0 && n.is_multiple_of(1024 * MIB) {
        format!("{} GiB", n / (1024 * MIB))
    } else if n > 0 && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

fn container_values(c: &ContainerSpec) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("container.port", Some(c.port.to_string())),
        (
            "container.command",
            Some(if c.command.is_empty() {
                "(the image's)".to_string()
            } else {
                c.command.join(" ")
            }),
        ),
        ("container.memory", Some(bytes(c.memory_bytes))),
        ("container.cpus", Some(c.cpus.to_string())),
        ("container.pids_limit", Some(c.pids_limit.to_string())),
        ("container.user", Some(c.user.clone())),
        ("container.read_only", Some(c.read_only.to_string())),
        ("container.tmpfs", Some(c.tmpfs.join(", "))),
    ]
}

fn health_values(h: &HealthSpec) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("health.path", Some(h.path.clone())),
        ("health.interval", Some(duration(h.interval))),
        ("health.timeout", Some(duration(h.timeout))),
        (
            "health.healthy_threshold",
            Some(h.healthy_threshold.to_string()),
        ),
        (
            "health.unhealthy_threshold",
            Some(h.unhealthy_threshold.to_string()),
        ),
        ("health.deadline", Some(duration(h.deadline))),
    ]
}

/// How a build is described: kind and source, with build-argument names only (their
/// values can be secrets).
pub fn build_source(source: &BuildSpec) -> (&'static str, String) {
    match source {
        BuildSpec::Cargo {
            manifest,
            bin,
            profile,
        } => (
            "cargo",
            format!("{} (bin {bin}, profile {profile})", manifest.display()),
        ),
        BuildSpec::Dockerfile {
            context,
            dockerfile,
            args,
        } => {
            let mut text = format!("{} ({dockerfile})", context.display());
            if !args.is_empty() {
                let names: Vec<&str> = args.keys().map(String::as_str).collect();
                text.push_str(&format!(", build args {}", names.join(", ")));
            }
            ("dockerfile", text)
        }
        BuildSpec::Image { reference } => ("image", reference.to_string()),
    }
}

/// The settings a plan gives the release it makes current.
pub fn settings_of_plan(plan: &Plan) -> Settings {
    let mut build = None;
    let mut scan_gate = None;
    let mut trusted = None;
    let mut approval = None;
    let mut container = None;
    let mut health = None;
    let mut replicas = None;
    let mut listen = None;
    let mut drain = None;
    let mut retire = None;
    for step in &plan.steps {
        match &step.action {
            Action::Build { source, .. } => build = Some(source.clone()),
            Action::Pull { reference, .. } => {
                build = Some(BuildSpec::Image {
                    reference: reference.clone(),
                })
            }
            Action::Scan { gate, .. } => scan_gate = Some(gate),
            Action::Verify { trusted_keys, .. } => trusted = Some(trusted_keys),
            Action::Approval { gate, .. } => approval = Some(gate),
            Action::Provision { instance } => {
                container.get_or_insert(&instance.container);
            }
            Action::HealthCheck { health: h, .. } => {
                health.get_or_insert(h);
            }
            Action::Record {
                container: c,
                health: h,
                replicas: r,
                ..
            } => {
                container = Some(c);
                health = Some(h);
                replicas = Some(*r);
            }
            Action::ShiftTraffic {
                listen: l,
                response_timeout,
                ..
            } => listen = Some((l, *response_timeout)),
            Action::Drain { timeout, .. } => drain = Some(*timeout),
            Action::Retire { after, .. } => retire = Some(*after),
            Action::Sign { .. } | Action::Adopt { .. } => {}
        }
    }
    let mut values = vec![("replicas", replicas.map(|r| r.to_string()))];
    match container {
        Some(c) => values.extend(container_values(c)),
        None => values.extend(
            container_values(&ContainerSpec::default())
                .into_iter()
                .map(|(n, _)| (n, None)),
        ),
    }
    match health {
        Some(h) => values.extend(health_values(h)),
        None => values.extend(
            health_values(&HealthSpec::default())
                .into_iter()
                .map(|(n, _)| (n, None)),
        ),
    }
    values.extend([
        ("listen", listen.map(|(l, _)| l.clone())),
        ("response_timeout", listen.map(|(_, t)| duration(t))),
        ("drain_timeout", drain.map(duration)),
        ("retire_after", retire.map(duration)),
        ("strategy", Some(plan.strategy.clone())),
        (
            "approval.required",
            Some(approval.map_or("none (no approval gate)".to_string(), |g| {
                g.required.max(1).to_string()
            })),
        ),
        (
            "approval.timeout",
            Some(approval.map_or("-".to_string(), |g| duration(g.timeout))),
        ),
        ("gate.fail_on", scan_gate.map(|g| g.fail_on.clone())),
        (
            "gate.fail_on_secrets",
            scan_gate.map(|g| g.fail_on_secrets.to_string()),
        ),
        (
            "gate.exceptions",
            scan_gate.map(|g| {
                g.exceptions
                    .as_ref()
                    .map_or("none".to_string(), |p| p.display().to_string())
            }),
        ),
        (
            "gate.secret_rules",
            scan_gate.map(|g| {
                g.secret_rules
                    .as_ref()
                    .map_or("built-in".to_string(), |p| p.display().to_string())
            }),
        ),
        (
            "trusted_keys",
            trusted.map(|keys| {
                if keys.is_empty() {
                    "the local key".to_string()
                } else {
                    keys.iter()
                        .map(|k| k.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }),
        ),
        (
            "build",
            build.map(|b| {
                let (kind, source) = build_source(&b);
                format!("{kind}: {source}")
            }),
        ),
    ]);
    Settings {
        values,
        env: container
            .map(ContainerSpec::env_digests)
            .unwrap_or_default(),
    }
}

/// The settings of a running release: from the plan that created it when the store still
/// has it, else what the release itself records (container, health, replicas).
pub fn settings_of_release(release: &Release, plan: Option<&Plan>) -> Settings {
    if let Some(plan) = plan {
        return settings_of_plan(plan);
    }
    let mut values = vec![("replicas", Some(release.replicas.to_string()))];
    values.extend(container_values(&release.container));
    values.extend(health_values(&release.health));
    Settings {
        values,
        env: release.container.env_digests(),
    }
}

/// What changes from `before` (the running release; `None` on a first release) to
/// `after`. On a first release every known setting is listed, with no value before. A
/// setting unknown on either side is left out.
pub fn diff(before: Option<&Settings>, after: &Settings) -> (Vec<SettingChange>, EnvVarChanges) {
    let mut changes = Vec::new();
    for (name, value) in &after.values {
        let Some(value) = value else { continue };
        match before {
            None => changes.push(SettingChange {
                setting: name.to_string(),
                before: None,
                after: Some(value.clone()),
            }),
            Some(before) => match before.get(name) {
                Some(Some(old)) if old != value => changes.push(SettingChange {
                    setting: name.to_string(),
                    before: Some(old.clone()),
                    after: Some(value.clone()),
                }),
                _ => {}
            },
        }
    }
    let empty = BTreeMap::new();
    let old_env = before.map_or(&empty, |b| &b.env);
    let mut env = EnvVarChanges::default();
    for (name, digest) in &after.env {
        match old_env.get(name) {
            None => env.added.push(name.clone()),
            Some(old) if old != digest => env.changed.push(name.clone()),
            Some(_) => env.unchanged += 1,
        }
    }
    env.removed = old_env
        .keys()
        .filter(|name| !after.env.contains_key(*name))
        .cloned()
        .collect();
    (changes, env)
}

/// `sha256:<hex>` of the canonical JSON of `view` with its `view_digest` empty (object
/// keys sorted, no whitespace).
pub fn digest(view: &ApprovalView) -> String {
    let mut bare = view.clone();
    bare.view_digest = String::new();
    let value = serde_json::to_value(&bare).unwrap_or_default();
    cutover_model::json_digest(&value)
}

fn scan_view(evidence: &SupplyEvidence) -> Option<ScanVerdictView> {
    let scan = evidence.scan.as_ref()?;
    Some(ScanVerdictView {
        passed: scan.passed,
        reasons: scan.reasons.clone(),
        counts: scan.counts.clone(),
        secrets: scan.secrets,
        advisory_database: scan.advisory_database,
        fail_on: scan.fail_on.clone(),
        fail_on_secrets: scan.fail_on_secrets,
        findings: scan.findings.as_ref().map(|all| {
            all.iter()
                .map(|f| match f {
                    cutover_model::FindingEvidence::Vulnerability {
                        severity,
                        id,
                        package,
                        version,
                        fixed,
                    } => FindingLine {
                        kind: "vulnerability".to_string(),
                        severity: Some(severity.clone()),
                        id: id.clone(),
                        package: Some(package.clone()),
                        version: Some(version.clone()),
                        fixed: fixed.clone(),
                        location: None,
                        fingerprint: None,
                    },
                    cutover_model::FindingEvidence::Secret {
                        rule,
                        location,
                        fingerprint,
                    } => FindingLine {
                        kind: "secret".to_string(),
                        severity: None,
                        id: rule.clone(),
                        package: None,
                        version: None,
                        fixed: None,
                        location: Some(location.clone()),
                        fingerprint: Some(fingerprint.clone()),
                    },
                })
                .collect()
        }),
        exceptions: scan
            .exceptions
            .iter()
            .map(|e| ExceptionLine {
                finding: e.finding.clone(),
                exception: e.exception.clone(),
                reason: e.reason.clone(),
                owner: e.owner.clone(),
                expires: e.expires.clone(),
            })
            .collect(),
    })
}

/// The image a plan deploys: built by one of its steps (known once that step succeeded)
/// or pinned (rollback).
fn image_of(
    plan: &Plan,
    replayed: Option<&cutover_executor::Replayed>,
) -> Option<cutover_model::ImageInfo> {
    let source = plan.steps.iter().find_map(|s| match &s.action {
        Action::Approval { image, .. }
        | Action::Scan { image, .. }
        | Action::Verify { image, .. }
        | Action::Record { image, .. } => Some(image),
        _ => None,
    })?;
    match source {
        ImageSource::Pinned { id, tag } => Some(cutover_model::ImageInfo {
            id: id.clone(),
            tag: tag.clone(),
            warning: None,
        }),
        ImageSource::Step { step } => match replayed?.steps.get(step)?.output.as_ref()? {
            StepOutput::Image(info) => Some(info.clone()),
            _ => None,
        },
    }
}

/// The approval view of deployment `id` (any deployment; approvers decide on it while
/// `waiting`). Callers check the caller may view the deployment's environment.
pub async fn approval_view(cp: &ControlPlane, id: &str) -> Result<ApprovalView, ServerError> {
    let not_found = || {
        ServerError::NotFound(format!(
            "deployment {id} not found; `cutover history` lists deployments"
        ))
    };
    let record = cp.store.deployment(id)?.ok_or_else(not_found)?;
    let plan = cp.store.plan(id)?.ok_or_else(not_found)?;
    let journal = cp.store.journal(id)?;
    let replayed = cutover_executor::replay(&plan, &journal).ok();
    let gate = cutover_executor::deployment_view(&cp.store, id)?.approval;
    let image = image_of(&plan, replayed.as_ref());

    let running = match &plan.previous_release {
        Some(release_id) => cp.store.release(&plan.env, release_id)?,
        None => None,
    };
    let after = settings_of_plan(&plan);
    let before = match &running {
        Some(release) => {
            let plan = cp.store.plan(&release.deployment_id)?;
            Some(settings_of_release(release, plan.as_ref()))
        }
        None => None,
    };
    let (mut changes, env_vars) = diff(before.as_ref(), &after);
    let image_text = |id: &str, tag: &str| format!("{tag} ({id})");
    let new_image = image.as_ref().map(|i| image_text(&i.id, &i.tag));
    let old_image = running
        .as_ref()
        .map(|r| image_text(&r.image.id, &r.image.tag));
    if new_image.is_some() && new_image != old_image {
        changes.insert(
            0,
            SettingChange {
                setting: "image".to_string(),
                before: old_image,
                after: new_image,
            },
        );
    }

    let evidence = match (&cp.providers.supply, &image) {
        (Some(supply), Some(image)) => supply.evidence(image, &plan.env).await.unwrap_or_else(|e| {
            tracing::warn!(deployment = id, error = %e, "the supply chain's records could not be read for the approval view");
            SupplyEvidence::default()
        }),
        _ => SupplyEvidence::default(),
    };
    let mut provenance = ProvenanceView::default();
    if let Some(p) = &evidence.provenance {
        provenance.builder_id = Some(p.builder_id.clone()).filter(|b| !b.is_empty());
        provenance.builder_version = p.builder_version.clone();
        provenance.source_path = p.source_path.clone();
        provenance.git_commit = p.git_commit.clone();
        provenance.git_dirty = p.git_dirty;
        provenance.repository = p.repository.clone();
        provenance.invoked_by = p.invoked_by.clone();
        provenance.pulled_from = p.pulled_from.clone();
        provenance.provenance_key_ids = p.key_ids.clone();
    }
    if let Some(build) = plan.steps.iter().find_map(|s| match &s.action {
        Action::Build { source, .. } => Some(source.clone()),
        Action::Pull { reference, .. } => Some(BuildSpec::Image {
            reference: reference.clone(),
        }),
        _ => None,
    }) {
        let (kind, source) = build_source(&build);
        provenance.build_kind = Some(kind.to_string());
        provenance.build_source = Some(source);
    }
    if let Some(replayed) = &replayed {
        for step in &plan.steps {
            match replayed.steps.get(&step.id).and_then(|r| r.output.as_ref()) {
                Some(StepOutput::Signed { key_id }) => {
                    provenance.signing_key_id = Some(key_id.clone())
                }
                Some(StepOutput::Verified { key_ids }) => {
                    provenance.verified_key_ids = key_ids.clone()
                }
                _ => {}
            }
        }
    }

    let mut view = ApprovalView {
        deployment_id: id.to_string(),
        app: plan.app.clone(),
        env: plan.env.clone(),
        kind: plan.kind.label().to_string(),
        release_id: record.release_id.clone(),
        requested_by: plan.requested_by.clone(),
        waiting: gate.as_ref().is_some_and(|g| g.waiting),
        plan_digest: plan.digest.clone(),
        image_id: image.as_ref().map(|i| i.id.clone()),
        image_tag: image.as_ref().map(|i| i.tag.clone()),
        first_release: running.is_none(),
        running: running.as_ref().map(|r| RunningRelease {
            release_id: r.id.clone(),
            deployment_id: r.deployment_id.clone(),
            image_id: r.image.id.clone(),
            image_tag: r.image.tag.clone(),
            plan_digest: r.plan_digest.clone(),
        }),
        changes,
        env_vars,
        scan: scan_view(&evidence),
        provenance,
        guardrails: crate::guardrails::current(cp, &plan.env)?.map(|g| GuardrailsInForce {
            version: g.version,
            digest: g.digest,
            set_by: g.set_by,
        }),
        promoted_from: crate::api::PromotedFrom::of(&plan.kind),
        image_path: match &image {
            Some(image) => cp
                .store
                .image_path(&image.id)?
                .iter()
                .map(ImagePathStep::of)
                .collect(),
            None => Vec::new(),
        },
        view_digest: String::new(),
    };
    view.view_digest = digest(&view);
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_executor::fake;

    const CANARY: &str = "CANARY-5d1f0c9e7a";

    fn plan_with(env: &[(&str, &str)], replicas: u32, memory: u64) -> Plan {
        let mut spec = fake::spec_for("prod", replicas, None);
        spec.container.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec.container.memory_bytes = memory;
        fake::planned_deploy_of(&spec, "prod-1", None)
    }

    #[test]
    fn env_names_added_removed_and_changed_without_values() {
        let old = plan_with(
            &[("KEEP", "same"), ("GONE", "x"), ("TOKEN", "old-secret")],
            2,
            1 << 27,
        );
        let new = plan_with(
            &[("KEEP", "same"), ("NEW", CANARY), ("TOKEN", CANARY)],
            2,
            1 << 27,
        );
        let (changes, env) = diff(Some(&settings_of_plan(&old)), &settings_of_plan(&new));
        assert_eq!(env.added, vec!["NEW"]);
        assert_eq!(env.removed, vec!["GONE"]);
        assert_eq!(env.changed, vec!["TOKEN"]);
        assert_eq!(env.unchanged, 1);
        assert!(changes.is_empty(), "{changes:?}");
        let shown = format!("{changes:?} {env:?} {:?}", settings_of_plan(&new));
        assert!(!shown.contains(CANARY), "a value leaked: {shown}");
        assert!(!shown.contains("old-secret"), "a value leaked: {shown}");
    }

    #[test]
    fn replicas_and_limits_that_change_are_listed_with_both_values() {
        let old = plan_with(&[], 2, 128 * 1024 * 1024);
        let new = plan_with(&[], 3, 256 * 1024 * 1024);
        let (changes, _) = diff(Some(&settings_of_plan(&old)), &settings_of_plan(&new));
        let get = |name: &str| changes.iter().find(|c| c.setting == name).cloned();
        assert_eq!(
            get("replicas").map(|c| (c.before, c.after)),
            Some((Some("2".to_string()), Some("3".to_string())))
        );
        assert_eq!(
            get("container.memory").map(|c| (c.before, c.after)),
            Some((Some("128 MiB".to_string()), Some("256 MiB".to_string())))
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
    }

    #[test]
    fn a_first_release_lists_every_setting_with_nothing_before() {
        let new = plan_with(&[("A", CANARY)], 2, 1 << 27);
        let (changes, env) = diff(None, &settings_of_plan(&new));
        assert!(changes.iter().all(|c| c.before.is_none()));
        for name in [
            "replicas",
            "container.memory",
            "container.cpus",
            "container.pids_limit",
            "container.user",
            "container.read_only",
            "health.path",
            "listen",
            "strategy",
            "approval.required",
        ] {
            assert!(
                changes.iter().any(|c| c.setting == name),
                "{name} missing: {changes:?}"
            );
        }
        assert_eq!(env.added, vec!["A"]);
    }

    #[test]
    fn a_release_without_its_plan_compares_what_it_records() {
        let old_plan = plan_with(&[("A", "1")], 2, 1 << 27);
        let mut spec = fake::spec_for("prod", 2, None);
        spec.container.env.insert("A".to_string(), "1".to_string());
        spec.container.memory_bytes = 1 << 27;
        let release = Release {
            id: "prod-1".to_string(),
            app: "hello".to_string(),
            env: "prod".to_string(),
            deployment_id: "prod-1".to_string(),
            image: cutover_model::ImageInfo {
                id: "sha256:1".to_string(),
                tag: "t".to_string(),
                warning: None,
            },
            plan_digest: old_plan.digest.clone(),
            spec_digest: String::new(),
            created_by: "x".to_string(),
            created_at_ms: 0,
            replicas: 2,
            container: spec.container.clone(),
            health: spec.health.clone(),
            instances: Vec::new(),
        };
        let new = plan_with(&[("A", "2")], 2, 1 << 28);
        let (changes, env) = diff(
            Some(&settings_of_release(&release, None)),
            &settings_of_plan(&new),
        );
        assert_eq!(env.changed, vec!["A"]);
        let names: Vec<&str> = changes.iter().map(|c| c.setting.as_str()).collect();
        assert_eq!(names, vec!["container.memory"]);
    }

    #[test]
    fn the_digest_covers_the_view_but_not_itself() {
        let view = ApprovalView {
            deployment_id: "d".to_string(),
            app: "a".to_string(),
            env: "e".to_string(),
            kind: "deploy".to_string(),
            release_id: "r".to_string(),
            requested_by: "x".to_string(),
            waiting: true,
            plan_digest: "sha256:p".to_string(),
            image_id: None,
            image_tag: None,
            running: None,
            first_release: true,
            changes: Vec::new(),
            env_vars: EnvVarChanges::default(),
            scan: None,
            provenance: ProvenanceView::default(),
            guardrails: None,
            promoted_from: None,
            image_path: Vec::new(),
            view_digest: String::new(),
        };
        let d = digest(&view);
        let mut with = view.clone();
        with.view_digest = d.clone();
        assert_eq!(digest(&with), d);
        let mut other = view.clone();
        other.env_vars.added.push("X".to_string());
        assert_ne!(digest(&other), d);
        // Where the image has been is part of what is approved.
        let mut moved = view;
        moved
            .image_path
            .push(ImagePathStep::of(&cutover_model::LivePeriod {
                env: "staging".to_string(),
                release_id: "staging-7".to_string(),
                image_id: "sha256:i".to_string(),
                from_ms: 1,
                until_ms: None,
                ended: cutover_model::LiveEnd::StillLive,
            }));
        assert_ne!(digest(&moved), d);
    }
}
