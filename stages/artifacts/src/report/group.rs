//! The report's grouping of results: one table per task (dataset, task, metric, head), rows by
//! text encoder (or ablation, or zero-shot), columns by vision backbone × label fraction, cells
//! over seeds.

use std::collections::{BTreeMap, BTreeSet};

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
        let how = if self.head == super::ZERO_SHOT_HEAD {
            "zero-shot, no labels".to_string()
        } else {
            format!("{} head", self.head)
        };
        format!(
            "{dataset} {}, {} ({how})",
            self.task,
            metric_name(&self.metric),
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

/// The split a table reads its metric from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Test,
    Valid,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Valid => "valid",
        }
    }
}

/// The report's tables: the headline metric of the test split. A `zero-shot` result (no labels,
/// fraction 0) is a row of every probe table of its dataset, task and metric, repeated under each fraction column of its vision
/// backbone, so that it reads beside the probes; without such a table it gets its own (head
/// `zero-shot`, one `0 %` column).
pub(super) fn group(results: &[EvalResult]) -> BTreeMap<TaskKey, Cells> {
    group_by(results, Split::Test, None)
}

/// The same grouping on `split`, with `metric` instead of each result's headline metric (a
/// result without it is left out, as the report leaves out one without its headline metric).
pub(super) fn group_by(
    results: &[EvalResult],
    split: Split,
    metric: Option<&str>,
) -> BTreeMap<TaskKey, Cells> {
    let mut out: BTreeMap<TaskKey, Cells> = BTreeMap::new();
    let add = |out: &mut BTreeMap<TaskKey, Cells>, key: TaskKey, r: &EvalResult, f, v: f64| {
        out.entry(key)
            .or_default()
            .entry(r.row_label())
            .or_default()
            .entry((r.vision.clone(), f))
            .or_default()
            .push(v);
    };
    // The value a result contributes, and its table: `metric` (else its headline metric) of
    // `split`; a result without it is left out.
    let value = |r: &EvalResult| -> Option<(TaskKey, f64)> {
        let metric = metric.unwrap_or(&r.metric);
        let values = match split {
            Split::Test => &r.test,
            Split::Valid => &r.valid,
        };
        let v = *values.get(metric)?;
        let mut task = r.task_key();
        task.metric = metric.to_string();
        Some((task, v))
    };
    for r in results.iter().filter(|r| !r.is_zero_shot()) {
        if let Some((task, v)) = value(r) {
            add(&mut out, task, r, FractionKey::of(r.fraction), v);
        }
    }
    for r in results.iter().filter(|r| r.is_zero_shot()) {
        let Some((own, v)) = value(r) else {
            continue;
        };
        let targets: Vec<(TaskKey, BTreeSet<FractionKey>)> = out
            .iter()
            .filter(|(k, _)| {
                (&k.dataset, &k.task, &k.metric) == (&own.dataset, &own.task, &own.metric)
                    && k.head != own.head
            })
            .map(|(k, cells)| {
                let fractions = cells
                    .values()
                    .flat_map(|m| m.keys())
                    .filter(|(vision, _)| *vision == r.vision)
                    .map(|(_, f)| *f)
                    .collect();
                (k.clone(), fractions)
            })
            .filter(|(_, f): &(TaskKey, BTreeSet<FractionKey>)| !f.is_empty())
            .collect();
        if targets.is_empty() {
            add(&mut out, own, r, FractionKey::of(r.fraction), v);
        }
        for (key, fractions) in targets {
            for f in fractions {
                add(&mut out, key.clone(), r, f, v);
            }
        }
    }
    out
}

/// Whether a table has a column a log-scale plot can show (a fraction above 0).
pub(super) fn has_plot(cells: &Cells) -> bool {
    cells
        .values()
        .any(|m| m.keys().any(|(_, f)| f.value() > 0.0))
}
