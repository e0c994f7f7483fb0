//! `adaptor results`: the report's tables in the terminal (rows: vision backbone and text
//! encoder or ablation; columns: label fractions; cells mean ± std over seeds with n and the
//! published number beside), as JSON or as CSV (one line per cell).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use artifacts::report::{fraction_label, ResultCell, ResultTable};

/// What `adaptor results` shows.
pub struct ResultsView<'a> {
    pub manifest: &'a str,
    pub store: &'a str,
    pub tables: &'a [ResultTable],
    /// Evaluation instances in the manifest.
    pub evaluations: usize,
    /// Those not built (for their current key) in the store.
    pub missing: &'a [String],
}

/// `a, b, c and 4 more`.
pub fn name_some(names: &[String], at_most: usize) -> String {
    let shown = names
        .iter()
        .take(at_most)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > at_most {
        format!("{shown} and {} more", names.len() - at_most)
    } else {
        shown
    }
}

fn percent(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// A cell as `results.md` writes it, without the markdown.
fn cell_text(c: &ResultCell) -> String {
    let mut s = format!(
        "{} ± {} (n={})",
        percent(c.mean),
        percent(c.std),
        c.values.len()
    );
    if let Some(p) = c.published {
        let _ = write!(s, "  pub. {p:.1}");
    }
    s
}

/// One block per table: a title line, then rows (vision, text or ablation) by fractions.
pub fn render_results(v: &ResultsView) -> String {
    let mut s = String::new();
    for t in v.tables {
        let _ = writeln!(
            s,
            "{}: {} split, % (mean ± std over seeds, n seeds{})",
            t.title,
            t.split.name(),
            if t.cells.iter().any(|c| c.published.is_some()) {
                "; pub.: the original's published number"
            } else {
                ""
            }
        );
        // Fractions as keys in parts per million, so they sort and compare exactly.
        let ppm = |f: f64| (f * 1e6).round() as i64;
        let fractions: BTreeSet<i64> = t.cells.iter().map(|c| ppm(c.fraction)).collect();
        let rows: BTreeSet<(&str, &str)> = t
            .cells
            .iter()
            .map(|c| (c.vision.as_str(), c.row.as_str()))
            .collect();
        let mut grid: Vec<Vec<String>> = vec![std::iter::once("vision".to_string())
            .chain(std::iter::once("text encoder / adaptor".to_string()))
            .chain(fractions.iter().map(|&f| fraction_label(f as f64 / 1e6)))
            .collect()];
        for (vision, row) in &rows {
            let mut line = vec![vision.to_string(), row.to_string()];
            for &f in &fractions {
                line.push(
                    t.cells
                        .iter()
                        .find(|c| c.vision == *vision && c.row == *row && ppm(c.fraction) == f)
                        .map_or_else(|| "–".to_string(), cell_text),
                );
            }
            grid.push(line);
        }
        let widths: Vec<usize> = (0..grid[0].len())
            .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for line in &grid {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(s, "  {}", cells.join("  ").trim_end());
        }
        s.push('\n');
    }
    let built = v.evaluations - v.missing.len();
    if v.missing.is_empty() {
        let _ = writeln!(s, "{built} evaluation(s) of {} in {}", v.manifest, v.store);
    } else {
        let _ = writeln!(
            s,
            "{built} of {} evaluation(s) of {} in {}; not built yet: {} (`adaptor run {}` builds them)",
            v.evaluations,
            v.manifest,
            v.store,
            name_some(v.missing, 5),
            v.manifest
        );
    }
    s
}

/// `results --json`: `{manifest, store, evaluations, missing, tables: [{dataset, task, metric,
/// head, title, split, cells: [{row, vision, fraction, n, values, mean, std, published}]}]}`.
/// Metrics as in `result.json` (0..1); `published` in the same unit.
pub fn render_results_json(v: &ResultsView) -> String {
    let tables: Vec<serde_json::Value> = v
        .tables
        .iter()
        .map(|t| {
            serde_json::json!({
                "dataset": t.dataset, "task": t.task, "metric": t.metric, "head": t.head,
                "title": t.title, "split": t.split.name(),
                "cells": t.cells.iter().map(|c| serde_json::json!({
                    "row": c.row, "vision": c.vision, "fraction": c.fraction,
                    "n": c.values.len(), "values": c.values, "mean": c.mean, "std": c.std,
                    "published": c.published.map(|p| p / 100.0),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "manifest": v.manifest, "store": v.store, "evaluations": v.evaluations,
        "missing": v.missing, "tables": tables,
    });
    serde_json::to_string_pretty(&doc).expect("serialisable") + "\n"
}

/// `results --csv`: one line per cell, metrics as in `result.json` (0..1).
pub fn render_results_csv(v: &ResultsView) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut s =
        String::from("dataset,task,metric,head,split,vision,row,fraction,n,mean,std,published\n");
    for t in v.tables {
        for c in &t.cells {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                field(&t.dataset),
                field(&t.task),
                field(&t.metric),
                field(&t.head),
                t.split.name(),
                field(&c.vision),
                field(&c.row),
                c.fraction,
                c.values.len(),
                c.mean,
                c.std,
                c.published
                    .map(|p| (p / 100.0).to_string())
                    .unwrap_or_default()
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifacts::report::Split;

    fn cell(
        row: &str,
        vision: &str,
        fraction: f64,
        values: &[f64],
        published: Option<f64>,
    ) -> ResultCell {
        let (mean, std) = artifacts::report::mean_std(values);
        ResultCell {
            row: row.into(),
            vision: vision.into(),
            fraction,
            values: values.to_vec(),
            mean,
            std,
            published,
        }
    }

    fn tables() -> Vec<ResultTable> {
        vec![ResultTable {
            dataset: "rsna".into(),
            task: "classification".into(),
            metric: "auroc".into(),
            head: "mlp".into(),
            title: "RSNA Pneumonia classification, AUROC (mlp head)".into(),
            stem: "rsna-classification-mlp".into(),
            split: Split::Test,
            cells: vec![
                cell("bert", "dinov2-s", 0.01, &[0.80, 0.82, 0.84], Some(81.3)),
                cell("bert", "dinov2-s", 1.0, &[0.86, 0.87, 0.88], Some(86.1)),
                cell(
                    "no adaptor (backbone → head)",
                    "dinov2-s",
                    1.0,
                    &[0.8],
                    None,
                ),
                cell("random-init adaptor", "dinov2-s", 0.01, &[0.7, 0.72], None),
            ],
        }]
    }

    #[test]
    fn results_table_json_and_csv() {
        let tables = tables();
        let missing = vec!["classify[fraction=0.1,seed=0]".to_string()];
        let view = ResultsView {
            manifest: "demo.toml",
            store: "/data/artifacts",
            tables: &tables,
            evaluations: 10,
            missing: &missing,
        };
        insta::assert_snapshot!("results_human", render_results(&view));
        insta::assert_snapshot!("results_csv", render_results_csv(&view));
        let json: serde_json::Value = serde_json::from_str(&render_results_json(&view)).unwrap();
        assert_eq!(json["tables"][0]["cells"][1]["published"], 0.861);
        assert_eq!(json["tables"][0]["cells"][0]["n"], 3);
        assert_eq!(json["missing"][0], "classify[fraction=0.1,seed=0]");
    }
}
