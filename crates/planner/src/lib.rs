//! The pure planner: spec + strategy + current release -> an immutable, digested plan DAG.
//!
//! Nothing here does I/O, reads a clock or draws a random number: the same [`PlanInput`]
//! always gives a byte-identical [`Plan`](cutover_model::Plan) with the same digest. Every
//! name the executor will use is decided here:
//!
//! - release id of a deploy: the deployment id (callers pass ids like `production-7`);
//! - image tag: `cutover/<app>:<release>`;
//! - container: `cutover-<app>-<release>-<replica>`; a cold rollback starts new ones named
//!   `cutover-<app>-<release>-<deployment>-<replica>` so they never clash with old names;
//! - labels: `cutover.managed`, `cutover.app`, `cutover.env`, `cutover.release`,
//!   `cutover.deployment`, `cutover.step` and, on instances, `cutover.replica`;
//! - step ids: the strategy's template id, or `<template id>-<replica>` when per replica;
//! - idempotency key: `<deployment id>/<step id>`;
//! - digest: `json_digest` of the plan with `digest` set to "".
//!
//! A promotion deploys the pinned image of a release of another environment: the deploy
//! strategy without its build step, the image by id, scanned against the target's gate.
//!
//! Supply chain and approval: a deploy scans, signs and verifies the built image before any
//! instance starts; a rollback verifies the target's pinned image first (in a protected environment after
//! rescanning it against today's advisory database with the environment's gate, so a
//! release found vulnerable since is refused before anything changes). Nothing unsigned
//! runs: every strategy must put a `verify` step before `provision`/`adopt`. An `approval`
//! step is planned only where the environment requires approval (`approval` or
//! `protected`), and such an environment refuses a deploy strategy without one.
//!
//! Strategies are data (`plans/*.toml`, see `plans/README.md`); [`parse_strategy`] reads
//! and checks one, [`builtin_strategy`] gives the shipped ones.

mod expand;
mod render;
mod strategy;

use cutover_model::{Instance, Release, Route, Spec, Strategy};
use thiserror::Error;

pub use expand::plan;
pub use render::{render_dot, render_text};
pub use strategy::parse_strategy;

/// The strategies shipped in `plans/`, embedded so the binary works outside the repo.
/// The CLI prefers `plans/<name>.toml` next to `deploy.toml` when it exists.
pub const BUILTIN_STRATEGIES: &[(&str, &str)] = &[
    ("blue-green", include_str!("../../../plans/blue-green.toml")),
    ("rollback", include_str!("../../../plans/rollback.toml")),
];

/// The text of the shipped strategy `name` (e.g. `blue-green`, `rollback`).
pub fn builtin_strategy(name: &str) -> Option<&'static str> {
    BUILTIN_STRATEGIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// Everything a plan is made from. The caller reads the store and the world; the planner
/// only decides.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub spec: &'a Spec,
    /// Environment name, a key of `spec.environments`.
    pub env: &'a str,
    pub strategy: &'a Strategy,
    /// Unique per environment, e.g. `production-7`; a deploy's release gets this id.
    pub deployment_id: &'a str,
    pub requested_by: &'a str,
    pub created_at_ms: u64,
    /// The release serving traffic now (blue), `None` on a first deploy.
    pub current: Option<&'a Release>,
    /// The route the traffic layer serves for `env` now, as the caller read it (`None`:
    /// no route). Every shift step records it as the route its undo restores, so nothing
    /// about the old route is looked up at execution time.
    pub current_route: Option<&'a Route>,
    pub kind: PlanKind<'a>,
}

/// What to plan.
#[derive(Debug, Clone, Copy)]
pub enum PlanKind<'a> {
    /// Build and roll out a new release.
    Deploy,
    /// Build (or pull), scan, sign and verify only: no instance, route or release
    /// (`cutover build`, e.g. in CI before the image is pushed). `invoked_by`: the CI job
    /// that asked for it (its URL), recorded in the provenance as who ran the build.
    Build { invoked_by: Option<&'a str> },
    /// Go back to `target`. `warm_instances`: the target's instances still running, as
    /// found by the caller (all of them running makes the rollback warm).
    Rollback {
        target: &'a Release,
        warm_instances: &'a [Instance],
    },
    /// A new release (id: the deployment id) of `source`'s pinned image and settings, whose
    /// container the caller re-pinned to the latest secret versions: fresh instances,
    /// health-checked, then shifted to, like a cold rollback; nothing is built. Planned
    /// with the rollback strategy.
    Rotate { source: &'a Release },
    /// Roll out exactly the image of `source`, a release of another environment, as a new
    /// release of this one: no build step; scan (this environment's gate), sign, verify,
    /// then provision and shift like a deploy.
    Promote { source: &'a Release },
}

/// Why a strategy or plan was refused. Messages are lowercase and say what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// The strategy file is not valid TOML or does not match the strategy format.
    #[error("{file}:{line}:{column}: {message}")]
    StrategySyntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// One step of a strategy is wrong (bad reference, kind, flag or order).
    #[error("{file}: step `{step}`: {message}")]
    StrategyStep {
        file: String,
        step: String,
        message: String,
    },
    /// The strategy as a whole is wrong (cycle, missing or duplicated kinds).
    #[error("{file}: {message}")]
    Strategy { file: String, message: String },
    #[error("environment `{env}` is not in the spec (it has: {known}): add [environments.{env}] to deploy.toml or pick one of those")]
    UnknownEnvironment { env: String, known: String },
    /// The inputs cannot make a plan (e.g. rolling back to the current release).
    #[error("{message}")]
    Invalid { message: String },
}

#[cfg(test)]
mod tests;
