//! `adaptor dag`: the instance graph with each instance's state, as Graphviz dot or as a mermaid
//! block for a markdown page; one colour (dot) or class (mermaid) per state.

use std::fmt::Write as _;

/// One node: an external input (a dataset or backbone folder) or a stage instance.
pub struct DagNode {
    pub label: String,
    /// The instance's state label (`up-to-date`, `stale`, ...); `None` for an external input.
    pub state: Option<&'static str>,
}

/// Nodes in plan order (external inputs first) and edges `(from, to)` between them.
pub struct Dag {
    pub nodes: Vec<DagNode>,
    pub edges: Vec<(usize, usize)>,
}

/// Fill colour and border per state (`None`: an external input).
fn colours(state: Option<&str>) -> (&'static str, &'static str) {
    match state {
        None => ("#ffffff", "#607d8b"),
        Some("up-to-date") => ("#c8e6c9", "#2e7d32"),
        Some("stale") => ("#fff3b0", "#b08d00"),
        Some("failed") => ("#ffcdd2", "#c62828"),
        Some("corrupt") => ("#ffccbc", "#d84315"),
        Some("running" | "queued") => ("#bbdefb", "#1565c0"),
        Some(_) => ("#eeeeee", "#757575"), // missing
    }
}

/// Every state a node can have, in the order the legends list them.
const STATES: [&str; 7] = [
    "up-to-date",
    "stale",
    "missing",
    "failed",
    "running",
    "queued",
    "corrupt",
];

fn node_id(dag: &Dag, i: usize) -> String {
    match dag.nodes[i].state {
        None => format!("x{i}"),
        Some(_) => format!("n{i}"),
    }
}

/// Graphviz dot: `adaptor dag m.toml | dot -Tsvg > dag.svg`.
pub fn render_dot(dag: &Dag) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut s = String::from("digraph adaptor {\n  rankdir=LR;\n");
    s += "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n";
    for (i, n) in dag.nodes.iter().enumerate() {
        let (fill, border) = colours(n.state);
        let _ = match n.state {
            None => writeln!(
                s,
                "  {} [label=\"{}\", shape=cylinder, style=filled, fillcolor=\"{fill}\", color=\"{border}\"];",
                node_id(dag, i),
                esc(&n.label)
            ),
            Some(state) => writeln!(
                s,
                "  {} [label=\"{}\\n{state}\", fillcolor=\"{fill}\", color=\"{border}\", class=\"{state}\"];",
                node_id(dag, i),
                esc(&n.label)
            ),
        };
    }
    for &(a, b) in &dag.edges {
        let _ = writeln!(s, "  {} -> {};", node_id(dag, a), node_id(dag, b));
    }
    s += "}\n";
    s
}

/// A fenced mermaid flowchart, one class per state.
pub fn render_mermaid(dag: &Dag) -> String {
    let esc = |s: &str| s.replace('"', "#quot;");
    let class = |state: &str| state.replace('-', "_");
    let mut s = String::from("```mermaid\nflowchart LR\n");
    for (i, n) in dag.nodes.iter().enumerate() {
        let _ = match n.state {
            None => writeln!(
                s,
                "  {}[(\"{}\")]:::external",
                node_id(dag, i),
                esc(&n.label)
            ),
            Some(state) => writeln!(
                s,
                "  {}[\"{}<br/>{state}\"]:::{}",
                node_id(dag, i),
                esc(&n.label),
                class(state)
            ),
        };
    }
    for &(a, b) in &dag.edges {
        let _ = writeln!(s, "  {} --> {}", node_id(dag, a), node_id(dag, b));
    }
    let (fill, border) = colours(None);
    let _ = writeln!(s, "  classDef external fill:{fill},stroke:{border}");
    for state in STATES {
        let (fill, border) = colours(Some(state));
        let _ = writeln!(s, "  classDef {} fill:{fill},stroke:{border}", class(state));
    }
    s += "```\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset, an ingest, two encodes (one stale, one failed) and a report that is missing;
    /// a name with a quote, to see it escaped.
    fn dag() -> Dag {
        let node = |label: &str, state| DagNode {
            label: label.into(),
            state,
        };
        Dag {
            nodes: vec![
                node("datasets.rsna", None),
                node("ingest", Some("up-to-date")),
                node("encode[text=bert]", Some("stale")),
                node("encode[text=\"odd\"]", Some("failed")),
                node("report", Some("missing")),
            ],
            edges: vec![(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)],
        }
    }

    #[test]
    fn dot() {
        insta::assert_snapshot!(render_dot(&dag()));
    }

    #[test]
    fn mermaid() {
        insta::assert_snapshot!(render_mermaid(&dag()));
    }
}
