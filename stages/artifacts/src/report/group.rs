//! The report's grouping of results: one table per task (dataset, task, metric, head), rows by
//! text encoder (or ablation), columns by vision backbone × label fraction, cells over seeds.

use std::collections::BTreeMap;

use super::EvalResult;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TaskKey {
    pub dataset: String,
    pub task: String,
    pub metric: String,
    pub head: String,
}

impl TaskKey {
    pub fn title(&self) -> String {
        let dataset = match self.dataset.as_str() {
            "rsna" => "RSNA Pneumonia",
            "covidx" => "COVIDx",
            "siim" => "SIIM-ACR Pneumothorax",
            other => other,
        };
        format!(
            "{dataset} {}, {} ({} head)",
            self.task,
            metric_name(&self.metric),
            self.head
        )
    }

    pub fn file_stem(&self) -> String {
        format!("{}-{}-{}", self.dataset, self.task, self.head)
    }
}

pub(super) fn metric_name(m: &str) -> &str {
    match m {
        "auroc" => "AUROC",
        "accuracy" => "accuracy",
        "dice" => "Dice",
        other => other,
    }
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Cells of one table: row label → (vision, fraction) → the metric over seeds.
pub(super) type Cells = BTreeMap<String, BTreeMap<(String, FractionKey), Vec<f64>>>;

/// A fraction usable as a map key (parts per million).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct FractionKey(i64);

impl FractionKey {
    pub fn of(f: f64) -> Self {
        FractionKey((f * 1e6).round() as i64)
    }
    pub fn value(self) -> f64 {
        self.0 as f64 / 1e6
    }
    pub fn label(self) -> String {
        let pct = self.value() * 100.0;
        if (pct - pct.round()).abs() < 1e-9 {
            format!("{} %", pct.round())
        } else {
            format!("{pct} %")
        }
    }
}

pub(super) fn group(results: &[EvalResult]) -> BTreeMap<TaskKey, Cells> {
    let mut out: BTreeMap<TaskKey, Cells> = BTreeMap::new();
    for r in results {
        let Some(v) = r.test.get(&r.metric) else {
            continue;
        };
        out.entry(r.task_key())
            .or_default()
            .entry(r.row_label())
            .or_default()
            .entry((r.vision.clone(), FractionKey::of(r.fraction)))
            .or_default()
            .push(*v);
    }
    out
}
