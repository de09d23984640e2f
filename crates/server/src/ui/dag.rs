//! Layout of a plan's DAG for the deployment page: layered by dependency depth, top to
//! bottom (long chains stay readable on a phone), in plan order within a layer, each layer
//! centred. Pure and deterministic: the same steps give the
//! same picture. The template draws it as inline SVG (askama escapes every text).

use std::collections::HashMap;

use crate::api::{StepLine, StepState};

pub const NODE_WIDTH: u32 = 168;
pub const NODE_HEIGHT: u32 = 46;
/// Vertical space between layers (edges run there).
pub const LAYER_GAP: u32 = 26;
/// Horizontal space between the nodes of one layer.
pub const ROW_GAP: u32 = 16;
pub const MARGIN: u32 = 8;

/// One box of the drawing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub kind: String,
    /// CSS class for the state: `pending`, `running`, `waiting`, `succeeded`, `failed`,
    /// `undone`.
    pub class: &'static str,
    /// State and timing for people, e.g. `succeeded · 1.2s`.
    pub summary: String,
    pub layer: u32,
    pub row: u32,
    pub x: u32,
    pub y: u32,
}

/// One dependency arrow, from `from` (runs first) to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// SVG path data (numbers only).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub width: u32,
    pub height: u32,
}

impl Layout {
    pub fn node_width(&self) -> u32 {
        NODE_WIDTH
    }

    pub fn node_height(&self) -> u32 {
        NODE_HEIGHT
    }
}

/// The CSS class of a step state. An approval step that has started is `waiting` (for
/// people, not machines).
pub fn state_class(kind: &str, state: StepState) -> &'static str {
    match state {
        StepState::NotStarted => "pending",
        StepState::Started if kind == "approval" => "waiting",
        StepState::Started | StepState::UndoStarted => "running",
        StepState::Succeeded => "succeeded",
        StepState::Failed | StepState::UndoFailed => "failed",
        StepState::Undone => "undone",
    }
}

/// The state of a step for people.
pub fn state_label(kind: &str, state: StepState) -> &'static str {
    match state {
        StepState::NotStarted => "pending",
        StepState::Started if kind == "approval" => "waiting for approval",
        StepState::Started => "running",
        StepState::Succeeded => "succeeded",
        StepState::Failed => "failed",
        StepState::UndoStarted => "undoing",
        StepState::Undone => "undone",
        StepState::UndoFailed => "undo failed",
    }
}

/// A duration for people; the one formatter of the workspace.
pub use cutover_model::format_duration_ms;

/// State and timing in one line: `succeeded · 1.2s`.
pub fn step_summary(step: &StepLine) -> String {
    let label = state_label(&step.kind, step.state);
    match step.duration_ms {
        Some(ms) => format!("{label} · {}", format_duration_ms(ms)),
        None => label.to_string(),
    }
}

/// Lay out `steps` (in plan order). Unknown dependencies are ignored; a cycle (which a
/// saved plan never has) is broken by treating the back edge's target as depth 0.
pub fn layout(steps: &[StepLine]) -> Layout {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut depth: Vec<Option<u32>> = vec![None; steps.len()];
    for i in 0..steps.len() {
        let mut visiting = vec![false; steps.len()];
        compute_depth(i, steps, &index, &mut depth, &mut visiting);
    }
    let layers = depth.iter().map(|d| d.unwrap_or(0) + 1).max().unwrap_or(0) as usize;
    let mut per_layer = vec![0u32; layers];
    for d in &depth {
        per_layer[d.unwrap_or(0) as usize] += 1;
    }
    let widest = per_layer.iter().copied().max().unwrap_or(0);
    let mut rows_used = vec![0u32; layers];
    let mut nodes = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let layer = depth[i].unwrap_or(0);
        let row = rows_used[layer as usize];
        rows_used[layer as usize] += 1;
        // Centre the layer: shift it by half the width it lacks against the widest one.
        let lack = widest - per_layer[layer as usize];
        let x2 = 2 * MARGIN + lack * (NODE_WIDTH + ROW_GAP) + 2 * row * (NODE_WIDTH + ROW_GAP);
        nodes.push(Node {
            id: step.id.clone(),
            kind: step.kind.clone(),
            class: state_class(&step.kind, step.state),
            summary: step_summary(step),
            layer,
            row,
            x: x2 / 2,
            y: MARGIN + layer * (NODE_HEIGHT + LAYER_GAP),
        });
    }
    let mut edges = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        for dep in &step.depends_on {
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            let (from, to) = (&nodes[j], &nodes[i]);
            let x1 = from.x + NODE_WIDTH / 2;
            let y1 = from.y + NODE_HEIGHT;
            let x2 = to.x + NODE_WIDTH / 2;
            let y2 = to.y;
            let mid = (y1 + y2) / 2;
            edges.push(Edge {
                from: dep.clone(),
                to: step.id.clone(),
                path: format!("M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}"),
            });
        }
    }
    let layers = layers as u32;
    Layout {
        width: 2 * MARGIN + widest * NODE_WIDTH + widest.saturating_sub(1) * ROW_GAP,
        height: 2 * MARGIN + layers * NODE_HEIGHT + layers.saturating_sub(1) * LAYER_GAP,
        nodes,
        edges,
    }
}

fn compute_depth(
    i: usize,
    steps: &[StepLine],
    index: &HashMap<&str, usize>,
    depth: &mut Vec<Option<u32>>,
    visiting: &mut Vec<bool>,
) -> u32 {
    if let Some(d) = depth[i] {
        return d;
    }
    if visiting[i] {
        return 0;
    }
    visiting[i] = true;
    let mut d = 0;
    for dep in &steps[i].depends_on {
        if let Some(&j) = index.get(dep.as_str()) {
            d = d.max(compute_depth(j, steps, index, depth, visiting) + 1);
        }
    }
    visiting[i] = false;
    depth[i] = Some(d);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, kind: &str, deps: &[&str], state: &str) -> StepLine {
        StepLine {
            id: id.to_string(),
            kind: kind.to_string(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            state: serde_json::from_value(serde_json::Value::from(state)).expect("a step state"),
            attempts: 0,
            started_at_ms: None,
            finished_at_ms: None,
            duration_ms: None,
            error: None,
            output: None,
        }
    }

    fn blue_green() -> Vec<StepLine> {
        vec![
            step("build", "build", &[], "succeeded"),
            step("approval", "approval", &["build"], "started"),
            step("provision-0", "provision", &["approval"], "not-started"),
            step("provision-1", "provision", &["approval"], "not-started"),
            step(
                "health-check-0",
                "health-check",
                &["provision-0"],
                "not-started",
            ),
            step(
                "health-check-1",
                "health-check",
                &["provision-1"],
                "not-started",
            ),
            step(
                "shift-traffic",
                "shift-traffic",
                &["health-check-0", "health-check-1"],
                "not-started",
            ),
            step("drain", "drain", &["shift-traffic"], "not-started"),
            step("record", "record", &["shift-traffic"], "not-started"),
            step("retire", "retire", &["drain", "record"], "not-started"),
        ]
    }

    #[test]
    fn layers_follow_dependency_depth_and_rows_follow_plan_order() {
        let layout = layout(&blue_green());
        let place: Vec<(&str, u32, u32)> = layout
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.layer, n.row))
            .collect();
        assert_eq!(
            place,
            vec![
                ("build", 0, 0),
                ("approval", 1, 0),
                ("provision-0", 2, 0),
                ("provision-1", 2, 1),
                ("health-check-0", 3, 0),
                ("health-check-1", 3, 1),
                ("shift-traffic", 4, 0),
                ("drain", 5, 0),
                ("record", 5, 1),
                ("retire", 6, 0),
            ]
        );
        // Two nodes in the widest layer; single nodes are centred between them.
        let build = &layout.nodes[0];
        assert_eq!((build.x, build.y), (8 + 92, 8));
        let p0 = &layout.nodes[2];
        let p1 = &layout.nodes[3];
        assert_eq!((p0.x, p0.y), (8, 8 + 2 * 72));
        assert_eq!((p1.x, p1.y), (8 + 184, 8 + 2 * 72));
        assert_eq!(layout.width, 16 + 2 * 168 + 16);
        assert_eq!(layout.height, 16 + 7 * 46 + 6 * 26);
    }

    #[test]
    fn positions_are_deterministic() {
        assert_eq!(layout(&blue_green()), layout(&blue_green()));
    }

    #[test]
    fn one_edge_per_dependency() {
        let steps = blue_green();
        let layout = layout(&steps);
        let mut expected: Vec<(String, String)> = steps
            .iter()
            .flat_map(|s| s.depends_on.iter().map(move |d| (d.clone(), s.id.clone())))
            .collect();
        let mut got: Vec<(String, String)> = layout
            .edges
            .iter()
            .map(|e| (e.from.clone(), e.to.clone()))
            .collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 11);
        let edge = &layout.edges[0];
        // build (centred) to approval (centred): straight down.
        assert_eq!(edge.path, "M184,54 C184,67 184,67 184,80");
    }

    #[test]
    fn states_map_to_classes() {
        let layout = layout(&blue_green());
        assert_eq!(layout.nodes[0].class, "succeeded");
        assert_eq!(layout.nodes[1].class, "waiting");
        assert_eq!(layout.nodes[2].class, "pending");
        assert_eq!(state_class("provision", StepState::Started), "running");
        assert_eq!(state_class("provision", StepState::UndoFailed), "failed");
        assert_eq!(state_class("provision", StepState::Undone), "undone");
        assert_eq!(layout.nodes[1].summary, "waiting for approval");
    }

    #[test]
    fn summaries_carry_durations() {
        let mut s = step("build", "build", &[], "succeeded");
        s.duration_ms = Some(1234);
        assert_eq!(step_summary(&s), "succeeded · 1.23s");
        assert_eq!(format_duration_ms(250), "250ms");
        assert_eq!(format_duration_ms(125_000), "2m 5s");
    }

    #[test]
    fn unknown_dependencies_and_cycles_do_not_break_the_layout() {
        let steps = vec![
            step("a", "build", &["b", "missing"], "not-started"),
            step("b", "build", &["a"], "not-started"),
        ];
        let layout = layout(&steps);
        assert_eq!(layout.nodes.len(), 2);
        assert_eq!(layout.edges.len(), 2);
        assert_eq!(layout, super::layout(&steps));
    }

    #[test]
    fn empty_plan_draws_nothing() {
        let layout = layout(&[]);
        assert!(layout.nodes.is_empty());
        assert_eq!((layout.width, layout.height), (16, 16));
        assert!(layout.edges.is_empty());
    }
}
