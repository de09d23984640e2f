//! Reading and checking strategies (`plans/*.toml`).

use std::collections::{BTreeMap, BTreeSet};

use cutover_model::{StepKind, Strategy, StrategyStep};
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::DiGraph;
use serde::Deserialize;

use crate::PlanError;

/// The file as written; unlike [`Strategy`] it refuses unknown top-level keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "step", default)]
    steps: Vec<StrategyStep>,
}

/// Read a strategy file and check it: ids unique, `after` references exist, no cycle,
/// per-replica flags and weights fit the kinds, and the order keeps traffic safe (traffic
/// moves only after every health check; drain, retire and record come after the shift).
/// `file` names the file in messages.
pub fn parse_strategy(text: &str, file: &str) -> Result<Strategy, PlanError> {
    let raw: RawStrategy = toml::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
    let strategy = Strategy {
        name: raw.name,
        description: raw.description,
        steps: raw.steps,
    };
    validate(&strategy, file)?;
    Ok(strategy)
}

fn syntax_error(text: &str, file: &str, error: &toml::de::Error) -> PlanError {
    let offset = error.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    let message = error
        .message()
        .lines()
        .next()
        .unwrap_or("invalid toml")
        .trim();
    let message = message.trim_end_matches('.');
    let mut chars = message.chars();
    let message = match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "invalid toml".to_string(),
    };
    PlanError::StrategySyntax {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

/// Kinds that exist once per instance.
pub(crate) fn is_per_replica_kind(kind: StepKind) -> bool {
    matches!(
        kind,
        StepKind::Provision | StepKind::Adopt | StepKind::HealthCheck
    )
}

/// Kinds a strategy may use at most once.
const SINGLE_KINDS: &[StepKind] = &[
    StepKind::Build,
    StepKind::Scan,
    StepKind::Sign,
    StepKind::Verify,
    StepKind::Approval,
    StepKind::Provision,
    StepKind::Adopt,
    StepKind::Drain,
    StepKind::Retire,
    StepKind::Record,
];

/// Every check of [`parse_strategy`] after reading; `plan` runs it again on strategies
/// built in code.
pub(crate) fn validate(strategy: &Strategy, file: &str) -> Result<(), PlanError> {
    let whole = |message: String| PlanError::Strategy {
        file: file.to_string(),
        message,
    };
    let step_error = |step: &str, message: String| PlanError::StrategyStep {
        file: file.to_string(),
        step: step.to_string(),
        message,
    };

    if !is_name(&strategy.name) {
        return Err(whole(format!(
            "name {:?} must be lowercase letters, digits and '-', starting with a letter or digit",
            strategy.name
        )));
    }
    if strategy.steps.is_empty() {
        return Err(whole(
            "has no steps: add [[step]] tables with `id` and `kind`".to_string(),
        ));
    }

    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in strategy.steps.iter().enumerate() {
        if !is_name(&step.id) {
            return Err(step_error(
                &step.id,
                "ids must be lowercase letters, digits and '-', starting with a letter or digit"
                    .to_string(),
            ));
        }
        if index.insert(step.id.as_str(), i).is_some() {
            return Err(step_error(
                &step.id,
                "the id is used twice: give every step its own id".to_string(),
            ));
        }
    }

    for kind in SINGLE_KINDS {
        let ids: Vec<&str> = strategy
            .steps
            .iter()
            .filter(|s| s.kind == *kind)
            .map(|s| s.id.as_str())
            .collect();
        if ids.len() > 1 {
            return Err(whole(format!(
                "steps {} all have kind {}: a strategy has at most one",
                quote_list(&ids),
                kind.as_str()
            )));
        }
    }

    for step in &strategy.steps {
        let wanted = is_per_replica_kind(step.kind);
        if step.per_replica != wanted {
            return Err(step_error(
                &step.id,
                format!("kind {} needs per_replica = {wanted}", step.kind.as_str()),
            ));
        }
        match (step.kind, step.weight) {
            (StepKind::ShiftTraffic, Some(w)) if !(1..=100).contains(&w) => {
                return Err(step_error(
                    &step.id,
                    format!("weight must be between 1 and 100 (percent), got {w}"),
                ));
            }
            (StepKind::ShiftTraffic, _) | (_, None) => {}
            (kind, Some(_)) => {
                return Err(step_error(
                    &step.id,
                    format!(
                        "weight only applies to shift-traffic steps, not {}: remove it",
                        kind.as_str()
                    ),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for after in &step.after {
            if after == &step.id {
                return Err(step_error(
                    &step.id,
                    "cannot run after itself: remove its own id from `after`".to_string(),
                ));
            }
            if !index.contains_key(after.as_str()) {
                return Err(step_error(
                    &step.id,
                    format!(
                        "`after` names `{after}`, which is not a step of this strategy (steps: {})",
                        quote_list(
                            &strategy
                                .steps
                                .iter()
                                .map(|s| s.id.as_str())
                                .collect::<Vec<_>>()
                        )
                    ),
                ));
            }
            if !seen.insert(after) {
                return Err(step_error(
                    &step.id,
                    format!("`after` lists `{after}` twice"),
                ));
            }
        }
        if step.per_replica {
            // `provision` expands to `provision-0`, …; another step must not take such an id.
            let prefix = format!("{}-", step.id);
            if let Some(clash) = strategy.steps.iter().find(|s| {
                s.id.strip_prefix(&prefix).is_some_and(|rest| {
                    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
                })
            }) {
                return Err(step_error(
                    &clash.id,
                    format!(
                        "clashes with the per-replica ids of step `{}`: rename it",
                        step.id
                    ),
                ));
            }
        }
    }

    check_acyclic(strategy, &index, file)?;
    let ancestors = ancestors(strategy, &index);
    check_order(strategy, &ancestors, file)
}

fn check_acyclic(
    strategy: &Strategy,
    index: &BTreeMap<&str, usize>,
    file: &str,
) -> Result<(), PlanError> {
    let mut graph = DiGraph::<usize, ()>::new();
    let nodes: Vec<_> = (0..strategy.steps.len())
        .map(|i| graph.add_node(i))
        .collect();
    for (i, step) in strategy.steps.iter().enumerate() {
        for after in &step.after {
            graph.add_edge(nodes[index[after.as_str()]], nodes[i], ());
        }
    }
    let Err(cycle) = toposort(&graph, None) else {
        return Ok(());
    };
    let start = cycle.node_id();
    let members = tarjan_scc(&graph)
        .into_iter()
        .find(|scc| scc.contains(&start))
        .unwrap_or_else(|| vec![start]);
    let mut members: Vec<usize> = members.into_iter().map(|n| graph[n]).collect();
    members.sort_unstable();
    let ids: Vec<&str> = members
        .iter()
        .map(|&i| strategy.steps[i].id.as_str())
        .collect();
    Err(PlanError::StrategyStep {
        file: file.to_string(),
        step: ids.first().copied().unwrap_or_default().to_string(),
        message: format!(
            "is part of a dependency cycle between steps {}: remove one of their `after` entries",
            quote_list(&ids)
        ),
    })
}

/// For each template, the indexes of every template it runs after, directly or not.
/// The strategy must be acyclic.
pub(crate) fn ancestors(
    strategy: &Strategy,
    index: &BTreeMap<&str, usize>,
) -> Vec<BTreeSet<usize>> {
    fn visit(
        i: usize,
        strategy: &Strategy,
        index: &BTreeMap<&str, usize>,
        memo: &mut Vec<Option<BTreeSet<usize>>>,
    ) -> BTreeSet<usize> {
        if let Some(done) = &memo[i] {
            return done.clone();
        }
        let mut set = BTreeSet::new();
        for after in &strategy.steps[i].after {
            if let Some(&j) = index.get(after.as_str()) {
                set.insert(j);
                set.extend(visit(j, strategy, index, memo));
            }
        }
        memo[i] = Some(set.clone());
        set
    }
    let mut memo = vec![None; strategy.steps.len()];
    (0..strategy.steps.len())
        .map(|i| visit(i, strategy, index, &mut memo))
        .collect()
}

/// The orderings that keep a deployment safe, whatever else a strategy does.
fn check_order(
    strategy: &Strategy,
    ancestors: &[BTreeSet<usize>],
    file: &str,
) -> Result<(), PlanError> {
    let of_kind = |kinds: &[StepKind]| -> Vec<usize> {
        (0..strategy.steps.len())
            .filter(|&i| kinds.contains(&strategy.steps[i].kind))
            .collect()
    };
    let id = |i: usize| strategy.steps[i].id.as_str();
    let must_follow = |later: usize, earlier: usize, why: &str| -> Result<(), PlanError> {
        if ancestors[later].contains(&earlier) {
            Ok(())
        } else {
            Err(PlanError::StrategyStep {
                file: file.to_string(),
                step: id(later).to_string(),
                message: format!(
                    "must run after `{}` ({why}): add it (or a step after it) to `after`",
                    id(earlier)
                ),
            })
        }
    };

    let builds = of_kind(&[StepKind::Build]);
    let instances = of_kind(&[StepKind::Provision, StepKind::Adopt]);
    let healths = of_kind(&[StepKind::HealthCheck]);
    let shifts = of_kind(&[StepKind::ShiftTraffic]);

    for &p in &of_kind(&[StepKind::Provision]) {
        for &b in &builds {
            must_follow(p, b, "instances start from the image it builds")?;
        }
    }
    let scans = of_kind(&[StepKind::Scan]);
    let signs = of_kind(&[StepKind::Sign]);
    let verifies = of_kind(&[StepKind::Verify]);
    let approvals = of_kind(&[StepKind::Approval]);
    for &s in &of_kind(&[
        StepKind::Scan,
        StepKind::Sign,
        StepKind::Verify,
        StepKind::Approval,
    ]) {
        for &b in &builds {
            must_follow(s, b, "it works on the image that step builds")?;
        }
    }
    for &s in &signs {
        for &scan in &scans {
            must_follow(s, scan, "the signature attests the scan verdict")?;
        }
    }
    for &v in &verifies {
        for &s in &signs {
            must_follow(v, s, "it checks the signature that step makes")?;
        }
    }
    // An image that fails the gate never runs (a rollback's rescan has no sign after it).
    for &i in &instances {
        for &scan in &scans {
            must_follow(i, scan, "an image that fails the gate never runs")?;
        }
    }
    // Nothing unsigned runs: every instance step comes after a verify step.
    for &i in &instances {
        if verifies.iter().any(|v| ancestors[i].contains(v)) {
            continue;
        }
        let kind = strategy.steps[i].kind.as_str();
        let fix = match verifies.first() {
            Some(&v) => format!("add `{}` (or a step after it) to the `after` of", id(v)),
            None => {
                "add a [[step]] with kind = \"verify\" and list it in the `after` of".to_string()
            }
        };
        return Err(PlanError::Strategy {
            file: file.to_string(),
            message: format!(
                "{kind} must come after verify so nothing unsigned runs: {fix} step `{}`",
                id(i)
            ),
        });
    }
    for &h in &healths {
        if !instances.iter().any(|i| ancestors[h].contains(i)) {
            return Err(PlanError::StrategyStep {
                file: file.to_string(),
                step: id(h).to_string(),
                message: "must run after a provision or adopt step, whose instance it checks"
                    .to_string(),
            });
        }
    }
    for &s in &shifts {
        for &h in &healths {
            must_follow(
                s,
                h,
                "traffic only moves to instances that passed their health check",
            )?;
        }
    }
    for &s in &shifts {
        for &a in &approvals {
            must_follow(s, a, "traffic moves only once the release is approved")?;
        }
    }
    // The shift to 100% is the last one; drain, retire and record follow it.
    let full: Vec<usize> = shifts
        .iter()
        .copied()
        .filter(|&s| strategy.steps[s].weight.unwrap_or(100) == 100)
        .collect();
    if !shifts.is_empty() {
        match full.as_slice() {
            [last] => {
                for &s in &shifts {
                    if s != *last {
                        must_follow(*last, s, "the shift to 100% is the last traffic move")?;
                    }
                }
            }
            [] => {
                return Err(PlanError::Strategy {
                    file: file.to_string(),
                    message: "no shift-traffic step moves 100% of traffic: give the last one weight = 100".to_string(),
                });
            }
            several => {
                let ids: Vec<&str> = several.iter().map(|&i| id(i)).collect();
                return Err(PlanError::Strategy {
                    file: file.to_string(),
                    message: format!(
                        "steps {} all shift 100% of traffic: keep one, give the others smaller weights",
                        quote_list(&ids)
                    ),
                });
            }
        }
    }
    for &d in &of_kind(&[StepKind::Drain]) {
        for &s in &full {
            must_follow(d, s, "the old release drains once traffic has left it")?;
        }
    }
    for &r in &of_kind(&[StepKind::Retire]) {
        for &d in &of_kind(&[StepKind::Drain]) {
            must_follow(
                r,
                d,
                "instances are removed only after their requests finished",
            )?;
        }
        for &s in &full {
            must_follow(
                r,
                s,
                "the old release is retired only once traffic has left it",
            )?;
        }
    }
    for &rec in &of_kind(&[StepKind::Record]) {
        for &s in &full {
            must_follow(
                rec,
                s,
                "a release is recorded as current once it serves traffic",
            )?;
        }
    }
    Ok(())
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(crate) fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
