//! `results.md`: one table per task in the original's shape, the original's published numbers
//! beside the cells whose backbones match, every test metric, and the pre-training section.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::group::{group, has_plot, mean_std, FractionKey};
use super::setting::cells_outside_published_setting;
use super::{EvalResult, PretrainSummary};

/// Text encoders (rows) of the published tables, names normalised.
const PUBLISHED_TEXTS: [&str; 5] = ["bert", "biobert", "clinicalbert", "pubmedbert", "cxrbert"];

/// The original's published table for a task (reference F.1): rows [`PUBLISHED_TEXTS`], columns
/// ResNet-AE, DINOv2-S, DINOv2-B × 1 / 10 / 100 %.
fn published_table(dataset: &str, task: &str, metric: &str) -> Option<&'static [[f64; 9]; 5]> {
    #[rustfmt::skip]
    const RSNA_CLS: [[f64; 9]; 5] = [
        [77.0, 79.0, 81.3, 81.3, 84.8, 86.1, 82.8, 85.3, 86.8],
        [76.8, 79.1, 81.2, 82.2, 85.1, 86.1, 84.4, 85.6, 86.7],
        [76.7, 78.9, 81.1, 81.7, 84.9, 86.1, 82.9, 85.3, 86.6],
        [76.3, 79.0, 81.1, 80.9, 84.5, 86.0, 82.3, 85.0, 86.5],
        [76.9, 79.3, 81.5, 80.8, 84.7, 86.0, 82.3, 85.1, 86.6],
    ];
    #[rustfmt::skip]
    const COVIDX_CLS: [[f64; 9]; 5] = [
        [62.0, 72.3, 79.3, 69.7, 85.0, 91.3, 71.0, 86.3, 92.3],
        [60.3, 71.5, 79.0, 69.5, 84.8, 91.8, 67.5, 84.8, 91.3],
        [50.0, 72.0, 81.7, 66.5, 83.7, 90.0, 68.8, 87.5, 92.0],
        [50.0, 74.5, 76.5, 68.3, 83.0, 89.7, 70.2, 87.3, 92.3],
        [60.0, 73.5, 77.7, 68.8, 84.0, 89.2, 61.5, 82.7, 92.0],
    ];
    #[rustfmt::skip]
    const SIIM_SEG: [[f64; 9]; 5] = [
        [73.1, 73.1, 73.0, 53.1, 58.7, 73.7, 51.8, 56.8, 73.3],
        [73.1, 73.1, 73.1, 60.8, 58.3, 72.9, 46.4, 51.3, 72.9],
        [73.1, 73.1, 73.1, 41.9, 60.1, 72.0, 44.0, 67.3, 73.2],
        [73.1, 73.1, 73.1, 55.7, 52.9, 72.1, 72.6, 64.3, 73.0],
        [73.1, 73.1, 73.1, 57.4, 66.9, 71.9, 62.1, 61.0, 73.6],
    ];
    #[rustfmt::skip]
    const RSNA_SEG: [[f64; 9]; 5] = [
        [76.5, 69.5, 76.4, 56.0, 71.6, 78.1, 55.9, 74.1, 77.2],
        [76.5, 69.9, 75.5, 61.7, 70.9, 77.8, 62.4, 74.3, 76.8],
        [76.5, 74.4, 76.4, 50.1, 73.5, 78.0, 59.5, 73.6, 77.2],
        [76.5, 74.3, 76.2, 61.6, 70.9, 77.5, 59.1, 72.8, 77.2],
        [76.5, 71.4, 76.1, 68.5, 73.6, 77.5, 52.0, 72.4, 76.7],
    ];
    Some(match (dataset, task, metric) {
        ("rsna", "classification", "auroc") => &RSNA_CLS,
        ("covidx", "classification", "accuracy") => &COVIDX_CLS,
        ("siim", "segmentation", "dice") => &SIIM_SEG,
        ("rsna", "segmentation", "dice") => &RSNA_SEG,
        _ => return None,
    })
}

/// The original's published numbers (reference F.1; test split, %, single seed, the maximum over
/// the logged test history, G.17), by task, text encoder, vision backbone and fraction.
pub(super) fn published(
    dataset: &str,
    task: &str,
    metric: &str,
    text: &str,
    vision: &str,
    fraction: f64,
) -> Option<f64> {
    let table = published_table(dataset, task, metric)?;
    let norm = |s: &str| {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let row = PUBLISHED_TEXTS.iter().position(|t| *t == norm(text))?;
    let vcol = match norm(vision).as_str() {
        "resnetae" | "ae" | "resnet101elastic" | "resnetae101elastic" => 0,
        "dinov2s" | "dinov2small" | "vits" => 1,
        "dinov2b" | "dinov2base" | "vitb" => 2,
        _ => return None,
    };
    let fcol = [0.01, 0.1, 1.0]
        .iter()
        .position(|f| (f - fraction).abs() < 1e-9)?;
    Some(table[row][vcol * 3 + fcol])
}

/// `results.md`: one section per task.
pub fn markdown(results: &[EvalResult]) -> String {
    let mut md = String::from("# Results\n\n");
    let _ = writeln!(
        md,
        "{} evaluation(s). Test split, metrics in %; cells are mean ± sample std over seeds \
         (n = seeds). Models are selected on the valid split; the test metric is read at the \
         selected epoch, never the best over epochs. *pub.* marks the original's published number \
         for the same text encoder, vision backbone and fraction (reference F.1: single seed, the \
         maximum over the logged test history), only where head, pooling and preprocessing were \
         the published setting (docs/reproduction.md).\n",
        results.len()
    );
    if results.iter().any(EvalResult::is_zero_shot) {
        md.push_str(
            "*zero-shot* rows use no labels (prompts only, `zero-shot` stages): the same test \
             value under every fraction of their vision backbone.\n\n",
        );
    }
    let by_task = group(results);
    // Cells with a result outside the published setting get no published number.
    let other_setting = cells_outside_published_setting(results);
    for (task, cells) in &by_task {
        let cols: BTreeSet<(String, FractionKey)> =
            cells.values().flat_map(|m| m.keys().cloned()).collect();
        let _ = writeln!(md, "## {}\n", task.title());
        md.push_str("| text encoder |");
        for (vision, f) in &cols {
            let _ = write!(md, " {vision} {} |", f.label());
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(cols.len()));
        md.push('\n');
        let (mut matched, mut named) = (0, 0);
        for (row, m) in cells {
            let _ = write!(md, "| {row} |");
            for col in &cols {
                match m.get(col) {
                    Some(v) => {
                        let (mean, std) = mean_std(v);
                        let _ = write!(
                            md,
                            " {:.1} ± {:.1} (n={})",
                            mean * 100.0,
                            std * 100.0,
                            v.len()
                        );
                        let same_setting = !other_setting.contains(&(
                            task.clone(),
                            row.clone(),
                            col.0.clone(),
                            col.1,
                        ));
                        if let Some(p) = published(
                            &task.dataset,
                            &task.task,
                            &task.metric,
                            row,
                            &col.0,
                            col.1.value(),
                        ) {
                            named += 1;
                            if same_setting {
                                matched += 1;
                                let _ = write!(md, " *pub. {p:.1}*");
                            }
                        }
                        md.push_str(" |");
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        md.push('\n');
        if named > matched {
            let _ = writeln!(
                md,
                "{} cell(s) name an encoder pair the original published but ran in another setting \
                 (head, pooling or preprocessing), so no published number sits beside them.\n",
                named - matched
            );
        }
        if named == 0
            && task.head != super::ZERO_SHOT_HEAD
            && published_table(&task.dataset, &task.task, &task.metric).is_some()
        {
            md.push_str(
                "The original published this task for text encoders BERT, BioBERT, \
                 ClinicalBERT, PubMedBERT, CXR-BERT and vision backbones ResNet-AE, DINOv2-S, \
                 DINOv2-B at 1/10/100 %; none of these backbone names occur here, so no published \
                 number sits beside these cells.\n\n",
            );
        }
        if has_plot(cells) {
            let _ = writeln!(md, "![{}]({}.png)\n", task.title(), task.file_stem());
        }
    }

    // Every metric of every evaluation, for what the tables do not show.
    md.push_str("## All test metrics\n\nMetrics in %, the loss as computed.\n\n| instance | adaptor | fraction | seed | best epoch | train examples | metrics |\n|---|---|---|---|---|---|---|\n");
    let mut sorted: Vec<&EvalResult> = results.iter().collect();
    sorted.sort_by(|a, b| a.instance.cmp(&b.instance));
    for r in sorted {
        let metrics = r.test_metrics_text();
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {metrics} |",
            r.instance,
            r.adaptor,
            FractionKey::of(r.fraction).label(),
            r.seed,
            r.best_epoch,
            r.train_examples
        );
    }
    md
}

/// The pre-training section of `results.md`: one row per run, variants side by side.
pub fn pretraining_markdown(runs: &[PretrainSummary], curves: &[String]) -> String {
    let mut md = String::from(
        "\n## Pre-training\n\nValid split; recall at the kept checkpoint (lowest valid loss), in %; \
         chance is 1/pairs.\n\n| instance | variant | vision | text | parameters | epochs | \
         valid loss (start → best) | R@1/5/10 image→text | R@1/5/10 text→image | chance R@1 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let _ = writeln!(md, "| `{}` | {} |", r.instance, r.row_cells().join(" | "));
    }
    md.push('\n');
    for c in curves {
        let _ = writeln!(md, "![training curve]({c})");
    }
    md.push('\n');
    md
}
