//! The report's tables as data, for readers other than `results.md` (the `adaptor results`
//! command): the same grouping, statistics and published numbers, one cell per row label,
//! vision backbone and label fraction, on the split and metric asked for.

use super::group::{group_by, mean_std, FractionKey};
use super::markdown::published;
use super::setting::cells_outside_published_setting;
use super::EvalResult;

pub use super::group::Split;

/// One table of the report: a task (dataset, task, metric, head) on one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    pub dataset: String,
    pub task: String,
    pub metric: String,
    pub head: String,
    /// As `results.md` titles it (`RSNA Pneumonia classification, AUROC (mlp head)`).
    pub title: String,
    /// `rsna-classification-mlp`: the report's plot is `<stem>.png`.
    pub stem: String,
    pub split: Split,
    /// In `results.md`'s order: by row label, then vision backbone, then fraction.
    pub cells: Vec<ResultCell>,
}

/// One cell: the metric over the seeds of one row label, vision backbone and fraction.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultCell {
    /// `results.md`'s row label: the text encoder the adaptor was pre-trained with, or the
    /// ablation (`random-init adaptor`, `no adaptor (backbone → head)`).
    pub row: String,
    pub vision: String,
    pub fraction: f64,
    /// The metric of each seed, in the order the results were given (0..1 like `result.json`).
    pub values: Vec<f64>,
    /// Mean and sample standard deviation of `values` (0..1).
    pub mean: f64,
    pub std: f64,
    /// The original's published number (%), on the test split only, where backbone names match and
    /// every result of the cell ran in the published setting (as in `results.md`).
    pub published: Option<f64>,
}

/// `results.md`'s label of a label fraction (`10 %`, `0.5 %`).
pub fn fraction_label(fraction: f64) -> String {
    FractionKey::of(fraction).label()
}

/// The report's tables on `split`, with `metric` instead of each result's headline metric.
pub fn tables(results: &[EvalResult], split: Split, metric: Option<&str>) -> Vec<ResultTable> {
    let other_setting = cells_outside_published_setting(results);
    group_by(results, split, metric)
        .into_iter()
        .map(|(task, rows)| {
            let mut cells = Vec::new();
            for (row, by_col) in rows {
                for ((vision, fraction), values) in by_col {
                    let (mean, std) = mean_std(&values);
                    // Only where the report's results.md shows it: the test split, the
                    // original's backbone names, every result of the cell in its setting.
                    let in_setting = !other_setting.contains(&(
                        task.clone(),
                        row.clone(),
                        vision.clone(),
                        fraction,
                    ));
                    let published = match split {
                        Split::Test if in_setting => published(
                            &task.dataset,
                            &task.task,
                            &task.metric,
                            &row,
                            &vision,
                            fraction.value(),
                        ),
                        _ => None,
                    };
                    cells.push(ResultCell {
                        row: row.clone(),
                        vision,
                        fraction: fraction.value(),
                        values,
                        mean,
                        std,
                        published,
                    });
                }
            }
            ResultTable {
                title: task.title(),
                stem: task.file_stem(),
                dataset: task.dataset,
                task: task.task,
                metric: task.metric,
                head: task.head,
                split,
                cells,
            }
        })
        .collect()
}
