//! What `retrieve` writes as `result.json` ([`RetrievalResult`]) and the report's retrieval
//! section: one table per backbone pair (vision, text), a row per adaptor (pre-trained,
//! random-init, none), measured recall and median rank beside the chance levels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

use super::html::{HtmlCell, HtmlTable};

/// Recall@1/5/10 (fractions) and the median rank (1-based) of one retrieval direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalScores {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub median_rank: f64,
}

/// One `retrieve` run: both directions, measured and at chance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalResult {
    pub instance: String,
    /// `mimic-cxr`.
    pub dataset: String,
    /// `test`, `validate` or `valid` (the rows searched).
    pub split: String,
    pub vision: String,
    pub text: String,
    /// `pretrained`, `random` or `none`.
    pub adaptor: String,
    pub seed: i64,
    /// Images searched and queried, reports (one per study) searched and queried.
    pub images: usize,
    pub reports: usize,
    pub image_to_text: RetrievalScores,
    pub text_to_image: RetrievalScores,
    /// A random ranking's expected recall@k and expected first-hit rank (its median over the
    /// queries), for the same queries and candidates.
    pub chance_image_to_text: RetrievalScores,
    pub chance_text_to_image: RetrievalScores,
    pub seconds: f64,
}

impl RetrievalResult {
    pub fn read(path: &Path) -> Result<Self> {
        super::read_result(path)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        super::write_result(self, path)
    }

    /// The row label in its backbone pair's table.
    pub fn row_label(&self) -> String {
        match self.adaptor.as_str() {
            "pretrained" => "pre-trained adaptor".into(),
            "random" => format!("random-init adaptor (seed {})", self.seed),
            _ => "no adaptor (backbone spaces)".into(),
        }
    }
}

/// The report's retrieval tables: (vision, text) → its runs, pre-trained first, then by label.
pub fn retrieval_tables(
    runs: &[RetrievalResult],
) -> BTreeMap<(String, String), Vec<RetrievalResult>> {
    let mut out: BTreeMap<(String, String), Vec<RetrievalResult>> = BTreeMap::new();
    for r in runs {
        out.entry((r.vision.clone(), r.text.clone()))
            .or_default()
            .push(r.clone());
    }
    for rows in out.values_mut() {
        rows.sort_by_key(|r| (r.adaptor != "pretrained", r.row_label(), r.instance.clone()));
    }
    out
}

fn cells(s: &RetrievalScores) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} | {:.1}",
        s.r1 * 100.0,
        s.r5 * 100.0,
        s.r10 * 100.0,
        s.median_rank
    )
}

/// The retrieval section of `results.md` (empty without runs).
pub fn retrieval_markdown(runs: &[RetrievalResult]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Retrieval\n\nMIMIC-CXR, image→report and report→image through the frozen adaptor: \
         recall@1/5/10 in % and the median rank of the first hit; a hit is a report of the \
         image's study (a study's images share its report). *chance* is a random ranking of the \
         same candidates (expected recall; median over queries of the expected first-hit rank).\n",
    );
    for ((vision, text), rows) in retrieval_tables(runs) {
        let _ = writeln!(md, "\n### {vision} + {text}\n");
        md.push_str(
            "| adaptor | split | images | reports | R@1/5/10 image→text | median rank | \
             R@1/5/10 text→image | median rank |\n|---|---|---|---|---|---|---|---|\n",
        );
        for r in &rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.row_label(),
                r.split,
                r.images,
                r.reports,
                cells(&r.image_to_text),
                cells(&r.text_to_image)
            );
        }
        for r in chance_levels(&rows) {
            let _ = writeln!(
                md,
                "| *chance* | {} | {} | {} | {} | {} |",
                r.split,
                r.images,
                r.reports,
                cells(&r.chance_image_to_text),
                cells(&r.chance_text_to_image)
            );
        }
    }
    md
}

/// Chance depends on the candidates only: the first run of each distinct split and size, whose
/// chance levels stand for all runs over the same candidates.
fn chance_levels(rows: &[RetrievalResult]) -> Vec<&RetrievalResult> {
    let mut seen = Vec::new();
    rows.iter()
        .filter(|r| {
            let k = (r.split.as_str(), r.images, r.reports);
            let new = !seen.contains(&k);
            if new {
                seen.push(k);
            }
            new
        })
        .collect()
}

/// The same tables for `report.html`: one per backbone pair, a row per run and one per distinct
/// chance level, each cell linked to the run behind it.
pub fn retrieval_html_tables(runs: &[RetrievalResult]) -> Vec<HtmlTable> {
    let scores = |s: &RetrievalScores, instance: Option<&str>| HtmlCell {
        value: format!(
            "{:.1} / {:.1} / {:.1}",
            s.r1 * 100.0,
            s.r5 * 100.0,
            s.r10 * 100.0
        ),
        detail: format!("median rank {:.1}", s.median_rank),
        published: None,
        runs: instance
            .map(|i| vec![(i.to_string(), "run".to_string())])
            .unwrap_or_default(),
    };
    retrieval_tables(runs)
        .into_iter()
        .enumerate()
        .map(|(i, ((vision, text), rows))| {
            let mut out: Vec<(String, Vec<Option<HtmlCell>>)> = Vec::new();
            for r in &rows {
                out.push((
                    format!("{} ({}, {} images)", r.row_label(), r.split, r.images),
                    vec![
                        Some(scores(&r.image_to_text, Some(&r.instance))),
                        Some(scores(&r.text_to_image, Some(&r.instance))),
                    ],
                ));
            }
            for r in chance_levels(&rows) {
                out.push((
                    format!("chance ({}, {} images)", r.split, r.images),
                    vec![
                        Some(scores(&r.chance_image_to_text, None)),
                        Some(scores(&r.chance_text_to_image, None)),
                    ],
                ));
            }
            HtmlTable {
                id: format!("retrieval-{i}"),
                title: format!("Retrieval: {vision} + {text} (MIMIC-CXR, recall@1/5/10 in %)"),
                corner: "adaptor".into(),
                columns: vec!["image → report".into(), "report → image".into()],
                rows: out,
                figure: None,
            }
        })
        .collect()
}
