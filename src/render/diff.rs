//! `adaptor diff`: the instances two manifests disagree on, by parameter or input (`params
//! diff`), then the test metrics of the evaluations among them, side by side (`metrics diff`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pipeline::ops::{InstanceDiff, PlanDiff};

use super::name_some;

/// One side of a comparison.
pub struct DiffSide {
    pub manifest: String,
    pub store: String,
}

/// Test metrics (as in `result.json`) of one evaluation, on side A and side B; `None`: not built.
pub type MetricPair = (Option<BTreeMap<String, f64>>, Option<BTreeMap<String, f64>>);

pub struct DiffView<'a> {
    pub a: DiffSide,
    pub b: DiffSide,
    pub diff: &'a PlanDiff,
    /// By instance name: the evaluations among `diff.changed`.
    pub metrics: &'a BTreeMap<String, MetricPair>,
}

/// A metric as the report writes it: % for scores, the loss as computed.
fn metric(name: &str, v: f64) -> String {
    if name == "loss" {
        format!("{v:.4}")
    } else {
        format!("{:.1}", v * 100.0)
    }
}

/// What differs in one instance's own recipe (not through its inputs), as `lr 0.001 -> 0.002`.
fn own_changes(c: &InstanceDiff) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((a, b)) = c.version {
        out.push(format!("stage version {a} -> {b}"));
    }
    for p in &c.params {
        out.push(match (&p.from, &p.to) {
            (Some(a), Some(b)) => format!("{} {a} -> {b}", p.name),
            (Some(a), None) => format!("{} removed (was {a})", p.name),
            (None, Some(b)) => format!("{} added: {b}", p.name),
            (None, None) => continue,
        });
    }
    out
}

pub fn render_diff(v: &DiffView) -> String {
    let d = v.diff;
    let mut s = String::new();
    let _ = writeln!(s, "A: {} (store {})", v.a.manifest, v.a.store);
    let _ = writeln!(s, "B: {} (store {})", v.b.manifest, v.b.store);
    let _ = writeln!(
        s,
        "{} instance(s) differ, {} the same, {} only in A, {} only in B",
        d.changed.len(),
        d.same.len(),
        d.only_a.len(),
        d.only_b.len()
    );
    if !d.only_a.is_empty() {
        let _ = writeln!(s, "only in A: {}", name_some(&d.only_a, 8));
    }
    if !d.only_b.is_empty() {
        let _ = writeln!(s, "only in B: {}", name_some(&d.only_b, 8));
    }
    if d.changed.is_empty() {
        return s;
    }

    s.push_str("\nparams diff (A -> B):\n");
    let mut through_inputs = Vec::new();
    for c in &d.changed {
        let own = own_changes(c);
        let externals: Vec<String> = c
            .inputs
            .iter()
            .filter(|i| {
                i.reference.starts_with("datasets.") || i.reference.starts_with("backbones.")
            })
            .map(|i| format!("input `{}` ({}) content changed", i.slot, i.reference))
            .collect();
        let bindings: Vec<String> = c
            .inputs
            .iter()
            .filter(|i| i.from.is_none())
            .map(|i| format!("input `{}`: {}", i.slot, i.reference))
            .collect();
        let all: Vec<String> = own.into_iter().chain(externals).chain(bindings).collect();
        if all.is_empty() {
            through_inputs.push(c.instance.clone());
        } else {
            let _ = writeln!(s, "  {}: {}", c.instance, all.join(", "));
        }
    }
    if !through_inputs.is_empty() {
        let _ = writeln!(
            s,
            "  through their inputs only: {}",
            name_some(&through_inputs, 8)
        );
    }

    if !v.metrics.is_empty() {
        s.push_str("\nmetrics diff (test split, %; the loss as computed; A -> B):\n");
        for (instance, (a, b)) in v.metrics {
            let text = match (a, b) {
                (Some(a), Some(b)) => a
                    .iter()
                    .filter_map(|(name, x)| {
                        let y = b.get(name)?;
                        let delta = if name == "loss" {
                            format!("{:+.4}", y - x)
                        } else {
                            format!("{:+.1}", (y - x) * 100.0)
                        };
                        Some(format!(
                            "{name} {} -> {} ({delta})",
                            metric(name, *x),
                            metric(name, *y)
                        ))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                (Some(_), None) => "not built in B".into(),
                (None, Some(_)) => "not built in A".into(),
                (None, None) => "built in neither".into(),
            };
            let _ = writeln!(s, "  {instance}: {text}");
        }
    }
    s
}

/// `diff --json`: `{a, b, same, only_a, only_b, changed: [{instance, kind, key_a, key_b,
/// version, params: [{name, from, to}], inputs: [{slot, reference, from, to}], metrics: {a, b}}]}`.
pub fn render_diff_json(v: &DiffView) -> String {
    let d = v.diff;
    let changed: Vec<serde_json::Value> = d
        .changed
        .iter()
        .map(|c| {
            let mut x = serde_json::json!({
                "instance": c.instance, "kind": c.kind,
                "key_a": c.key_a.as_str(), "key_b": c.key_b.as_str(),
                "version": c.version.map(|(a, b)| serde_json::json!({"from": a, "to": b})),
                "params": c.params.iter().map(|p| serde_json::json!({
                    "name": p.name, "from": p.from, "to": p.to,
                })).collect::<Vec<_>>(),
                "inputs": c.inputs.iter().map(|i| serde_json::json!({
                    "slot": i.slot, "reference": i.reference,
                    "from": i.from, "to": i.to,
                })).collect::<Vec<_>>(),
            });
            if let Some((a, b)) = v.metrics.get(&c.instance) {
                x["metrics"] = serde_json::json!({"a": a, "b": b});
            }
            x
        })
        .collect();
    let doc = serde_json::json!({
        "a": {"manifest": v.a.manifest, "store": v.a.store},
        "b": {"manifest": v.b.manifest, "store": v.b.store},
        "same": d.same, "only_a": d.only_a, "only_b": d.only_b, "changed": changed,
    });
    serde_json::to_string_pretty(&doc).expect("serialisable") + "\n"
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::key;
    use super::*;
    use pipeline::ops::{InputChange, ParamChange};

    #[test]
    fn params_and_metrics_diff() {
        let d = PlanDiff {
            only_a: vec![],
            only_b: vec!["classify[fraction=0.5,seed=0]".into()],
            same: vec!["ingest".into(), "pretrain".into()],
            changed: vec![
                InstanceDiff {
                    instance: "classify[fraction=1.0,seed=0]".into(),
                    kind: "classify".into(),
                    key_a: key('a'),
                    key_b: key('b'),
                    version: None,
                    params: vec![ParamChange {
                        name: "lr".into(),
                        from: Some("0.001".into()),
                        to: Some("0.002".into()),
                    }],
                    inputs: vec![],
                },
                InstanceDiff {
                    instance: "report".into(),
                    kind: "report".into(),
                    key_a: key('c'),
                    key_b: key('d'),
                    version: None,
                    params: vec![],
                    inputs: vec![InputChange {
                        slot: "results".into(),
                        reference: "classify[fraction=1.0,seed=0]".into(),
                        from: Some("a".repeat(64)),
                        to: Some("b".repeat(64)),
                    }],
                },
            ],
        };
        let test = |auroc: f64, loss: f64| {
            Some(
                [("auroc".to_string(), auroc), ("loss".to_string(), loss)]
                    .into_iter()
                    .collect(),
            )
        };
        let metrics: BTreeMap<String, MetricPair> = [(
            "classify[fraction=1.0,seed=0]".to_string(),
            (test(0.81, 0.52), test(0.835, 0.49)),
        )]
        .into_iter()
        .collect();
        let view = DiffView {
            a: DiffSide {
                manifest: "demo.toml".into(),
                store: "/data/artifacts".into(),
            },
            b: DiffSide {
                manifest: "demo-lr.toml".into(),
                store: "/data/artifacts".into(),
            },
            diff: &d,
            metrics: &metrics,
        };
        insta::assert_snapshot!("diff_human", render_diff(&view));
        insta::assert_snapshot!("diff_json", render_diff_json(&view));
    }
}
