//! Retention: which local images (and their attestations under `supply/`) a rollback may
//! still need, and `cutover gc`, which removes the rest.
//!
//! An image is kept when it is the current image of an environment, used by an instance
//! (running or stopped: warm releases, and anything the engine would refuse to remove
//! anyway), one of the newest `keep_releases` releases of an environment, pinned
//! (`cutover pin`), or used by a deployment that is running, unwinding or stuck. Every
//! other image cutover built for an app of this control plane is removed through the
//! image provider (never forced: the engine refuses an image a container uses), with its
//! `supply/<image>` directory. Images of apps this store never deployed are not looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::json;

use cutover_model::spec::DEFAULT_KEEP_RELEASES;
use cutover_model::{now_ms, ImageSource, Instance, LocalImage, Release};
use cutover_store::TypedTree;

use crate::api::{ErrorBody, GcFailed, GcKept, GcRemoved, GcReport, GcRequest, Pin};
use crate::auth::{Principal, Role};
use crate::http::{ApiJson, ApiPath};
use crate::{audit, ControlPlane, ServerError};

const PINS_TREE: &str = "pins";

fn pins(cp: &ControlPlane) -> Result<TypedTree<Pin>, ServerError> {
    Ok(cp.store.typed_tree(PINS_TREE)?)
}

fn pin_key(env: &str, release: &str) -> String {
    format!("{env}\0{release}")
}

/// Every pin, by environment and release.
pub fn list_pins(cp: &ControlPlane) -> Result<Vec<Pin>, ServerError> {
    Ok(pins(cp)?.values()?)
}

/// Pin `release` of `env` (deployer of `env`): `cutover gc` keeps its image. Audited;
/// pinning a pinned release changes nothing.
pub async fn pin(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
    release: &str,
) -> Result<Pin, ServerError> {
    who.require(Role::Deployer, Some(env))?;
    let found = cp.store.release(env, release)?.ok_or_else(|| {
        ServerError::NotFound(format!(
            "release {release} of environment {env} not found; `cutover history --env {env}` lists releases"
        ))
    })?;
    let tree = pins(cp)?;
    if let Some(existing) = tree.get(&pin_key(env, release))? {
        return Ok(existing);
    }
    let pin = Pin {
        env: env.to_string(),
        release: release.to_string(),
        image_id: found.image.id,
        by: who.name.clone(),
        at_ms: now_ms(),
    };
    tree.insert(&pin_key(env, release), &pin)?;
    cp.store.flush()?;
    let audited = audit::record_async(
        &cp.store,
        &who.name,
        "pin",
        &format!("{env}/{release}"),
        json!({"env": env, "release": release, "image_id": pin.image_id}),
    )
    .await;
    if let Err(e) = audited {
        // An unaudited pin is withdrawn.
        tree.remove(&pin_key(env, release))?;
        cp.store.flush()?;
        return Err(e);
    }
    Ok(pin)
}

/// Unpin `release` of `env` (deployer of `env`). Audited; 404 when it is not pinned.
pub async fn unpin(
    cp: &ControlPlane,
    who: &Principal,
    env: &str,
    release: &str,
) -> Result<Pin, ServerError> {
    who.require(Role::Deployer, Some(env))?;
    let tree = pins(cp)?;
    let Some(pin) = tree.get(&pin_key(env, release))? else {
        return Err(ServerError::NotFound(format!(
            "release {release} of environment {env} is not pinned; `cutover pin --list` lists pins"
        )));
    };
    let audited = audit::record_async(
        &cp.store,
        &who.name,
        "unpin",
        &format!("{env}/{release}"),
        json!({"env": env, "release": release, "image_id": pin.image_id}),
    )
    .await;
    audited?;
    tree.remove(&pin_key(env, release))?;
    cp.store.flush()?;
    Ok(pin)
}

/// What retention decides from: gathered by [`gather`], judged by [`decide`].
#[derive(Debug, Default)]
pub struct Facts {
    /// Local images cutover built, by app.
    pub images: Vec<(String, LocalImage)>,
    /// Every release of every environment.
    pub releases: Vec<Release>,
    /// Current release id per environment.
    pub current: BTreeMap<String, String>,
    /// `keep_releases` per environment (missing: the default).
    pub keep: BTreeMap<String, u32>,
    /// Every instance of the apps, in any state.
    pub instances: Vec<Instance>,
    pub pins: Vec<Pin>,
    /// Deployments running, unwinding or stuck: (id, status, env, release, image ids its
    /// plan names).
    pub busy: Vec<BusyDeployment>,
}

#[derive(Debug, Clone)]
pub struct BusyDeployment {
    pub id: String,
    pub status: String,
    pub env: String,
    pub release: String,
    pub images: Vec<String>,
}

/// One image and the verdict on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub app: String,
    pub image: LocalImage,
    /// The releases that ran it (`env/release`).
    pub releases: Vec<String>,
    /// Why it is kept; empty: it goes.
    pub reasons: Vec<String>,
}

/// Keep or remove each local image. Pure.
pub fn decide(facts: &Facts) -> Vec<Verdict> {
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |id: &str, why: String| {
        let list = reasons.entry(id.to_string()).or_default();
        if !list.contains(&why) {
            list.push(why);
        }
    };
    let by_id: BTreeMap<(&str, &str), &Release> = facts
        .releases
        .iter()
        .map(|r| ((r.env.as_str(), r.id.as_str()), r))
        .collect();
    for (env, release) in &facts.current {
        if let Some(r) = by_id.get(&(env.as_str(), release.as_str())) {
            add(&r.image.id, format!("current in {env} ({release})"));
        }
    }
    for i in &facts.instances {
        let state = match &i.state {
            cutover_model::InstanceState::Running => "running".to_string(),
            cutover_model::InstanceState::Restarting => "restarting".to_string(),
            cutover_model::InstanceState::Exited { code } => format!("exited with {code}"),
            cutover_model::InstanceState::Other { detail } => detail.clone(),
        };
        add(
            &i.image_id,
            format!("instance {} of {} ({state}) uses it", i.name, i.release),
        );
    }
    let mut envs: BTreeMap<&str, Vec<&Release>> = BTreeMap::new();
    for r in &facts.releases {
        envs.entry(r.env.as_str()).or_default().push(r);
    }
    for (env, list) in &mut envs {
        list.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        let keep = facts
            .keep
            .get(*env)
            .copied()
            .unwrap_or(DEFAULT_KEEP_RELEASES);
        for r in list.iter().take(keep as usize) {
            add(
                &r.image.id,
                format!("one of the last {keep} releases of {env} ({})", r.id),
            );
        }
    }
    for p in &facts.pins {
        add(
            &p.image_id,
            format!("{}/{} pinned by {}", p.env, p.release, p.by),
        );
    }
    for d in &facts.busy {
        for id in &d.images {
            add(id, format!("used by deployment {} ({})", d.id, d.status));
        }
    }
    let mut out: Vec<Verdict> = facts
        .images
        .iter()
        .map(|(app, image)| {
            let mut why = reasons.get(&image.id).cloned().unwrap_or_default();
            // The image a busy deployment builds carries its release label.
            for d in &facts.busy {
                if image.env.as_deref() == Some(d.env.as_str())
                    && image.release.as_deref() == Some(d.release.as_str())
                {
                    let line = format!("built by deployment {} ({})", d.id, d.status);
                    if !why.contains(&line) {
                        why.push(line);
                    }
                }
            }
            let releases = facts
                .releases
                .iter()
                .filter(|r| r.image.id == image.id)
                .map(|r| format!("{}/{}", r.env, r.id))
                .collect();
            Verdict {
                app: app.clone(),
                image: image.clone(),
                releases,
                reasons: why,
            }
        })
        .collect();
    out.sort_by(|a, b| a.app.cmp(&b.app).then_with(|| a.image.id.cmp(&b.image.id)));
    out
}

/// Read the store and the providers.
async fn gather(cp: &ControlPlane, who: &Principal) -> Result<Facts, ServerError> {
    let mut facts = Facts::default();
    let mut apps = BTreeSet::new();
    for env in cp.store.environments()? {
        let releases = cp.store.releases(&env)?;
        for r in &releases {
            apps.insert(r.app.clone());
        }
        if let Some(current) = cp.store.current_release_id(&env)? {
            facts.current.insert(env.clone(), current);
        }
        facts.keep.insert(env.clone(), keep_releases(cp, who, &env));
        facts.releases.extend(releases);
    }
    for record in cp.store.unfinished()? {
        apps.insert(record.app.clone());
        let mut images = Vec::new();
        if let Some(plan) = cp.store.plan(&record.id)? {
            for step in &plan.steps {
                if let cutover_model::Action::Provision { instance } = &step.action {
                    if let ImageSource::Pinned { id, .. } = &instance.image {
                        images.push(id.clone());
                    }
                }
            }
        }
        if let Some(previous) = &record.previous_release {
            if let Some(r) = cp.store.release(&record.env, previous)? {
                images.push(r.image.id);
            }
        }
        images.sort();
        images.dedup();
        facts.busy.push(BusyDeployment {
            id: record.id.clone(),
            status: record.status.label().to_string(),
            env: record.env.clone(),
            release: record.release_id.clone(),
            images,
        });
    }
    for app in &apps {
        for image in cp.providers.images.list_images(app).await? {
            facts.images.push((app.clone(), image));
        }
        facts
            .instances
            .extend(cp.providers.compute.list(app, None).await?);
    }
    facts.pins = list_pins(cp)?;
    Ok(facts)
}

/// `keep_releases` of `env` from the spec it was last deployed with; the default when that
/// spec cannot be read now.
fn keep_releases(cp: &ControlPlane, who: &Principal, env: &str) -> u32 {
    let read = || -> Result<Option<u32>, ServerError> {
        let Some(source) = crate::deploy::remembered_source(cp, env)? else {
            return Ok(None);
        };
        let admitted = crate::projects::admit(cp, who, &source)?;
        let spec = crate::projects::load(cp, who, &admitted)?;
        Ok(spec.environments.get(env).map(|e| e.keep_releases))
    };
    match read() {
        Ok(Some(n)) => n,
        Ok(None) => DEFAULT_KEEP_RELEASES,
        Err(e) => {
            tracing::warn!(env, error = %e, "gc: the spec of the environment cannot be read; keeping the default number of releases");
            DEFAULT_KEEP_RELEASES
        }
    }
}

/// Bytes of the files under `dir` (0 when missing).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// `supply/<hex>` of an image, beside the store.
fn supply_dir(cp: &ControlPlane, image_id: &str) -> Option<PathBuf> {
    supply_dir_beside(cp.store.dir(), image_id)
}

/// `<store>/../supply/<hex>` when `image_id` is `sha256:<hex>` (nothing else names a
/// directory to remove) and the store is on disk.
fn supply_dir_beside(store: &Path, image_id: &str) -> Option<PathBuf> {
    if !store.is_absolute() {
        return None;
    }
    let hex = image_id.strip_prefix("sha256:")?;
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(store.with_file_name("supply").join(hex))
}

/// Remove what no rollback needs (admin of every environment). `dry_run` removes nothing.
pub async fn gc(
    cp: &ControlPlane,
    who: &Principal,
    dry_run: bool,
) -> Result<GcReport, ServerError> {
    who.require(Role::Admin, None)?;
    let facts = gather(cp, who).await?;
    let mut report = GcReport {
        dry_run,
        kept: Vec::new(),
        removed: Vec::new(),
        failed: Vec::new(),
        bytes_freed: 0,
    };
    for verdict in decide(&facts) {
        if !verdict.reasons.is_empty() {
            report.kept.push(GcKept {
                image_id: verdict.image.id.clone(),
                app: verdict.app.clone(),
                tags: verdict.image.tags.clone(),
                reasons: verdict.reasons,
            });
            continue;
        }
        let dir = supply_dir(cp, &verdict.image.id);
        let attestation_bytes = dir.as_deref().map(dir_bytes).unwrap_or(0);
        if !dry_run {
            if let Err(e) = cp.providers.images.remove_image(&verdict.image.id).await {
                report.failed.push(GcFailed {
                    image_id: verdict.image.id.clone(),
                    error: e.message,
                });
                continue;
            }
            if let Some(dir) = dir.as_deref().filter(|d| d.exists()) {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    report.failed.push(GcFailed {
                        image_id: verdict.image.id.clone(),
                        error: format!(
                            "the image is gone but its attestations in {} stay: {e}",
                            dir.display()
                        ),
                    });
                }
            }
        }
        report.bytes_freed += verdict.image.size_bytes + attestation_bytes;
        report.removed.push(GcRemoved {
            image_id: verdict.image.id.clone(),
            app: verdict.app,
            tags: verdict.image.tags,
            releases: verdict.releases,
            image_bytes: verdict.image.size_bytes,
            attestation_bytes,
        });
    }
    if !dry_run {
        let removed: Vec<&str> = report.removed.iter().map(|r| r.image_id.as_str()).collect();
        audit::record_async(
            &cp.store,
            &who.name,
            "gc",
            "images",
            json!({"removed": removed, "bytes_freed": report.bytes_freed, "kept": report.kept.len()}),
        )
        .await?;
    }
    Ok(report)
}

// ----- handlers -----

type Cp = State<std::sync::Arc<ControlPlane>>;
type Who = Extension<Principal>;

/// Pin a release: `cutover gc` keeps its image and attestations (deployer of the
/// environment; audited).
#[utoipa::path(post, path = "/api/v1/environments/{env}/releases/{release}/pin", tag = "retention",
    params(("env" = String, Path, description = "Environment name"), ("release" = String, Path, description = "Release id")),
    responses(
        (status = 200, body = Pin),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn pin_release(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath((env, release)): ApiPath<(String, String)>,
) -> Result<Json<Pin>, ServerError> {
    Ok(Json(pin(&cp, &who, &env, &release).await?))
}

/// Unpin a release (deployer of the environment; audited).
#[utoipa::path(delete, path = "/api/v1/environments/{env}/releases/{release}/pin", tag = "retention",
    params(("env" = String, Path, description = "Environment name"), ("release" = String, Path, description = "Release id")),
    responses(
        (status = 200, body = Pin),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn unpin_release(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath((env, release)): ApiPath<(String, String)>,
) -> Result<Json<Pin>, ServerError> {
    Ok(Json(unpin(&cp, &who, &env, &release).await?))
}

/// Pinned releases of the environments the caller may view.
#[utoipa::path(get, path = "/api/v1/pins", tag = "retention",
    responses(
        (status = 200, body = Vec<Pin>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub(crate) async fn get_pins(
    State(cp): Cp,
    Extension(who): Who,
) -> Result<Json<Vec<Pin>>, ServerError> {
    let all = list_pins(&cp)?;
    Ok(Json(
        all.into_iter()
            .filter(|p| who.can(Role::Viewer, Some(&p.env)))
            .collect(),
    ))
}

/// Where an image has been live, oldest first: the environments the caller may view.
#[utoipa::path(get, path = "/api/v1/images/{image}/path", tag = "retention",
    params(("image" = String, Path, description = "Image id, sha256:<hex>")),
    responses(
        (status = 200, body = Vec<crate::api::ImagePathStep>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub(crate) async fn image_path(
    State(cp): Cp,
    Extension(who): Who,
    ApiPath(image): ApiPath<String>,
) -> Result<Json<Vec<crate::api::ImagePathStep>>, ServerError> {
    if !cutover_signing::is_image_digest(&image) {
        return Err(ServerError::BadRequest(format!(
            "image: {image:?} is not an image id (sha256:<64 hex digits>)"
        )));
    }
    Ok(Json(
        cp.store
            .image_path(&image)?
            .iter()
            .filter(|p| who.can(Role::Viewer, Some(&p.env)))
            .map(crate::api::ImagePathStep::of)
            .collect(),
    ))
}

/// Remove local images (and their attestations) no rollback needs; report what was kept
/// and why (admin).
#[utoipa::path(post, path = "/api/v1/gc", tag = "retention", request_body = GcRequest,
    responses(
        (status = 200, body = GcReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub(crate) async fn run_gc(
    State(cp): Cp,
    Extension(who): Who,
    ApiJson(req): ApiJson<GcRequest>,
) -> Result<Json<GcReport>, ServerError> {
    Ok(Json(gc(&cp, &who, req.dry_run).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_model::{ContainerSpec, HealthSpec, ImageInfo, InstanceState};

    fn image(n: u32) -> String {
        format!("sha256:{n:064}")
    }

    fn release(env: &str, n: u32) -> Release {
        Release {
            id: format!("{env}-{n}"),
            app: "hello".to_string(),
            env: env.to_string(),
            deployment_id: format!("{env}-{n}"),
            image: ImageInfo {
                id: image(n),
                tag: format!("cutover/hello:{env}-{n}"),
                warning: None,
            },
            plan_digest: String::new(),
            spec_digest: String::new(),
            created_by: "alice".to_string(),
            created_at_ms: u64::from(n) * 1000,
            replicas: 1,
            container: ContainerSpec::default(),
            health: HealthSpec::default(),
            instances: Vec::new(),
        }
    }

    fn local(n: u32, env: &str) -> (String, LocalImage) {
        (
            "hello".to_string(),
            LocalImage {
                id: image(n),
                tags: vec![format!("cutover/hello:{env}-{n}")],
                size_bytes: 100,
                env: Some(env.to_string()),
                release: Some(format!("{env}-{n}")),
            },
        )
    }

    /// staging-1..=8 (image n each), staging-8 current, keep 3.
    fn facts() -> Facts {
        Facts {
            images: (1..=8).map(|n| local(n, "staging")).collect(),
            releases: (1..=8).map(|n| release("staging", n)).collect(),
            current: [("staging".to_string(), "staging-8".to_string())].into(),
            keep: [("staging".to_string(), 3)].into(),
            ..Facts::default()
        }
    }

    fn kept(verdicts: &[Verdict]) -> Vec<String> {
        verdicts
            .iter()
            .filter(|v| !v.reasons.is_empty())
            .map(|v| v.image.id.clone())
            .collect()
    }

    fn reasons_of(verdicts: &[Verdict], n: u32) -> Vec<String> {
        verdicts
            .iter()
            .find(|v| v.image.id == image(n))
            .map(|v| v.reasons.clone())
            .unwrap_or_default()
    }

    #[test]
    fn the_newest_releases_and_the_current_one_are_kept() {
        let verdicts = decide(&facts());
        assert_eq!(kept(&verdicts), [image(6), image(7), image(8)]);
        assert_eq!(
            reasons_of(&verdicts, 8),
            [
                "current in staging (staging-8)",
                "one of the last 3 releases of staging (staging-8)"
            ]
        );
        let gone = verdicts.iter().find(|v| v.image.id == image(1)).unwrap();
        assert_eq!(gone.releases, ["staging/staging-1"]);
    }

    #[test]
    fn pinned_warm_and_busy_images_are_kept_whatever_their_age() {
        let mut facts = facts();
        facts.pins.push(Pin {
            env: "staging".to_string(),
            release: "staging-1".to_string(),
            image_id: image(1),
            by: "bob".to_string(),
            at_ms: 0,
        });
        facts.instances.push(Instance {
            name: "cutover-hello-staging-2-0".to_string(),
            id: "c2".to_string(),
            app: "hello".to_string(),
            env: "staging".to_string(),
            release: "staging-2".to_string(),
            deployment_id: "staging-2".to_string(),
            replica: 0,
            addr: String::new(),
            image_id: image(2),
            state: InstanceState::Exited { code: 0 },
            restart_count: 0,
        });
        // A stuck rollback to staging-3, and a deploy building staging-9's image.
        facts.busy.push(BusyDeployment {
            id: "staging-10".to_string(),
            status: "stuck".to_string(),
            env: "staging".to_string(),
            release: "staging-3".to_string(),
            images: vec![image(3)],
        });
        facts.images.push(local(9, "staging"));
        facts.busy.push(BusyDeployment {
            id: "staging-9".to_string(),
            status: "running".to_string(),
            env: "staging".to_string(),
            release: "staging-9".to_string(),
            images: Vec::new(),
        });
        let verdicts = decide(&facts);
        assert_eq!(
            reasons_of(&verdicts, 1),
            ["staging/staging-1 pinned by bob"]
        );
        assert_eq!(
            reasons_of(&verdicts, 2),
            ["instance cutover-hello-staging-2-0 of staging-2 (exited with 0) uses it"]
        );
        assert!(reasons_of(&verdicts, 3)
            .iter()
            .any(|r| r == "used by deployment staging-10 (stuck)"));
        assert_eq!(
            reasons_of(&verdicts, 9),
            ["built by deployment staging-9 (running)"]
        );
        assert!(reasons_of(&verdicts, 4).is_empty() && reasons_of(&verdicts, 5).is_empty());
    }

    #[test]
    fn an_image_promoted_elsewhere_is_kept_by_the_other_environment() {
        let mut facts = facts();
        let mut promoted = release("production", 1);
        promoted.image.id = image(2);
        facts.releases.push(promoted);
        let verdicts = decide(&facts);
        assert_eq!(
            reasons_of(&verdicts, 2),
            ["one of the last 5 releases of production (production-1)"],
            "production's default keep_releases keeps it"
        );
        let v = verdicts.iter().find(|v| v.image.id == image(2)).unwrap();
        assert_eq!(v.releases, ["staging/staging-2", "production/production-1"]);
    }

    #[test]
    fn supply_dirs_are_named_by_hex_only() {
        let store = Path::new("/state/.cutover/db");
        assert_eq!(
            supply_dir_beside(store, &image(7)),
            Some(PathBuf::from(format!("/state/.cutover/supply/{:064}", 7)))
        );
        for bad in ["sha256:../../etc", "sha256:", "md5:abc", "../x"] {
            assert_eq!(supply_dir_beside(store, bad), None, "{bad}");
        }
        assert_eq!(supply_dir_beside(Path::new("<temporary>"), &image(7)), None);
    }
}
