//! Prometheus metrics (text format at `/metrics`).
//!
//! Deployment counts (by outcome, rollbacks, stuck, running and waiting deployments) are
//! kept in memory by the background watcher: read from the store once at start (so they
//! survive restarts), then updated by its change events, so a scrape reads no store. Step
//! durations are observed by the watcher as journal entries appear. Proxy requests and
//! errors come from the proxy's admin API when the control plane has one. With audit sinks,
//! `cutover_audit_anchor_ok` says whether they agree with the store.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::api::DeploymentState;

use crate::{ControlPlane, ServerError};

/// Counters of the proxy for one (listen address, release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatLine {
    pub listen: String,
    pub release: String,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
}

/// Where proxy counters come from (the CLI wires the proxy's admin client).
#[async_trait]
pub trait ProxyStats: Send + Sync {
    async fn stats(&self) -> Result<Vec<ProxyStatLine>, String>;
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabel {
    listen: String,
    release: String,
}

/// What the metrics count of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentFacts {
    pub status: DeploymentState,
    /// A rollback deployment (a manual rollback).
    pub rollback: bool,
    pub waiting: bool,
}

/// Metrics kept in memory between scrapes.
#[derive(Clone)]
pub struct Metrics {
    step_durations: Family<KindLabel, Histogram>,
    pub(crate) webhook_failures: Counter,
    deployments: Arc<Mutex<HashMap<String, DeploymentFacts>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            step_durations: Family::new_with_constructor(|| {
                Histogram::new([
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                ])
            }),
            webhook_failures: Counter::default(),
            deployments: Arc::default(),
        }
    }
}

impl Metrics {
    /// Record what deployment `id` is now.
    pub fn set_deployment(&self, id: &str, facts: DeploymentFacts) {
        self.deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), facts);
    }

    /// Record how long a step of `kind` took.
    pub fn observe_step(&self, kind: &str, duration_ms: u64) {
        self.step_durations
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .observe(duration_ms as f64 / 1000.0);
    }
}

/// The text exposition of every metric.
pub async fn render(cp: &ControlPlane) -> Result<String, ServerError> {
    let mut registry = Registry::with_prefix("cutover");

    let outcomes: Family<OutcomeLabel, Counter> = Family::default();
    let rollbacks: Family<KindLabel, Counter> = Family::default();
    let stuck = Gauge::<i64>::default();
    let waiting = Gauge::<i64>::default();
    let running = Gauge::<i64>::default();
    for label in ["succeeded", "rolled_back", "stuck"] {
        drop(outcomes.get_or_create(&OutcomeLabel {
            outcome: label.to_string(),
        }));
    }
    for kind in ["manual", "automatic"] {
        drop(rollbacks.get_or_create(&KindLabel {
            kind: kind.to_string(),
        }));
    }
    let facts: Vec<DeploymentFacts> = cp
        .metrics
        .deployments
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .copied()
        .collect();
    for f in facts {
        if f.status.is_finished() {
            outcomes
                .get_or_create(&OutcomeLabel {
                    outcome: f.status.as_str().to_string(),
                })
                .inc();
        }
        if f.rollback {
            rollbacks
                .get_or_create(&KindLabel {
                    kind: "manual".to_string(),
                })
                .inc();
        }
        match f.status {
            DeploymentState::RolledBack => {
                rollbacks
                    .get_or_create(&KindLabel {
                        kind: "automatic".to_string(),
                    })
                    .inc();
            }
            DeploymentState::Stuck => {
                stuck.inc();
            }
            DeploymentState::Running | DeploymentState::Unwinding => {
                running.inc();
                if f.waiting {
                    waiting.inc();
                }
            }
            _ => {}
        }
    }
    registry.register(
        "deployments",
        "Finished deployments by outcome (succeeded, rolled_back, stuck)",
        outcomes,
    );
    registry.register(
        "rollbacks",
        "Rollbacks: manual (a rollback deployment) and automatic (a failed deployment undone)",
        rollbacks,
    );
    registry.register(
        "deployments_stuck",
        "Deployments stuck after a failed undo; each needs a human",
        stuck,
    );
    registry.register(
        "deployments_waiting_for_approval",
        "Deployments waiting at an approval gate",
        waiting,
    );
    registry.register(
        "deployments_running",
        "Deployments running or unwinding",
        running,
    );
    registry.register(
        "step_duration_seconds",
        "Time spent in each step's action, by step kind",
        cp.metrics.step_durations.clone(),
    );
    registry.register(
        "webhook_failures",
        "Webhook deliveries that failed after every retry",
        cp.metrics.webhook_failures.clone(),
    );

    if let Some(anchor) = crate::audit::anchor_of(&cp.store) {
        let ok = Gauge::<i64>::default();
        ok.set(i64::from(anchor.ok()));
        registry.register(
            "audit_anchor_ok",
            "1 while the audit sinks agreed with the store's chain at start and the last checkpoint was written; 0: run `cutover audit verify --against <sink>`",
            ok,
        );
    }

    if let Some(source) = &cp.proxy_stats {
        let up = Gauge::<i64>::default();
        let requests: Family<ProxyLabel, Counter> = Family::default();
        let errors: Family<ProxyLabel, Counter> = Family::default();
        let in_flight: Family<ProxyLabel, Gauge> = Family::default();
        match source.stats().await {
            Ok(lines) => {
                up.set(1);
                for line in lines {
                    let label = ProxyLabel {
                        listen: line.listen,
                        release: line.release,
                    };
                    requests.get_or_create(&label).inc_by(line.requests);
                    errors.get_or_create(&label).inc_by(line.errors);
                    in_flight
                        .get_or_create(&label)
                        .set(i64::try_from(line.in_flight).unwrap_or(i64::MAX));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the proxy's counters"),
        }
        registry.register("proxy_up", "Whether the proxy's counters could be read", up);
        registry.register(
            "proxy_requests",
            "Requests the proxy answered, by listen address and release",
            requests,
        );
        registry.register(
            "proxy_errors",
            "5xx answers the proxy generated itself (no route, upstream unreachable)",
            errors,
        );
        registry.register(
            "proxy_in_flight",
            "Requests in flight through the proxy",
            in_flight,
        );
    }

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|e| ServerError::Internal(format!("could not encode metrics: {e}")))?;
    Ok(out)
}

/// A shareable handle, for the CLI's wiring.
pub type SharedProxyStats = Arc<dyn ProxyStats>;
