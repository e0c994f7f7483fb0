//! The `report` stage's library: every evaluation result of a manifest (`result.json` of the
//! `classify` and `segment` stages) into `results.parquet` (one row per instance, split and
//! metric), `results.md` (one table per task in the original's shape: rows are text encoders,
//! columns vision backbone × label fraction, cells mean ± std over seeds, published numbers beside
//! them where backbone names match) and a PNG per task (metric against label fraction).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What an evaluation stage writes as `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// The stage instance that produced it.
    pub instance: String,
    /// `classification` or `segmentation`.
    pub task: String,
    /// `rsna`, `covidx` or `siim`.
    pub dataset: String,
    /// The headline metric, a key of `test`: `auroc`, `accuracy` or `dice`.
    pub metric: String,
    /// The vision backbone's name in the manifest.
    pub vision: String,
    /// The text backbone the adaptor was pre-trained with (`none` without an adaptor).
    pub text: String,
    /// `pretrained`, `random` (a random-initialised adaptor) or `none` (backbone features
    /// straight into the head: the ablation).
    pub adaptor: String,
    /// `mlp`, `linear`, `unet` or `vit-decoder`.
    pub head: String,
    pub fraction: f64,
    pub seed: i64,
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub train_examples: usize,
    pub trainable_params: i64,
    pub seconds: f64,
}

pub const RESULT_FILE: &str = "result.json";
pub const RESULTS_PARQUET: &str = "results.parquet";
pub const RESULTS_MD: &str = "results.md";

impl EvalResult {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!("{}: not an evaluation result: {e}", path.display()))
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("serialisable");
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }

    /// The table this result belongs to.
    fn task_key(&self) -> TaskKey {
        TaskKey {
            dataset: self.dataset.clone(),
            task: self.task.clone(),
            metric: self.metric.clone(),
            head: self.head.clone(),
        }
    }

    fn row_label(&self) -> String {
        match self.adaptor.as_str() {
            "pretrained" => self.text.clone(),
            "random" => "random-init adaptor".into(),
            _ => "no adaptor (backbone → head)".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TaskKey {
    dataset: String,
    task: String,
    metric: String,
    head: String,
}

impl TaskKey {
    fn title(&self) -> String {
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

    fn file_stem(&self) -> String {
        format!("{}-{}-{}", self.dataset, self.task, self.head)
    }
}

fn metric_name(m: &str) -> &str {
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
fn published(
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

/// Cells of one table: row label → (vision, fraction) → the metric over seeds.
type Cells = BTreeMap<String, BTreeMap<(String, FractionKey), Vec<f64>>>;

/// A fraction usable as a map key (parts per million).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FractionKey(i64);

impl FractionKey {
    fn of(f: f64) -> Self {
        FractionKey((f * 1e6).round() as i64)
    }
    fn value(self) -> f64 {
        self.0 as f64 / 1e6
    }
    fn label(self) -> String {
        let pct = self.value() * 100.0;
        if (pct - pct.round()).abs() < 1e-9 {
            format!("{} %", pct.round())
        } else {
            format!("{pct} %")
        }
    }
}

fn group(results: &[EvalResult]) -> BTreeMap<TaskKey, Cells> {
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

/// `results.md`: one section per task.
pub fn markdown(results: &[EvalResult]) -> String {
    let mut md = String::from("# Results\n\n");
    let _ = writeln!(
        md,
        "{} evaluation(s). Test split, metrics in %; cells are mean ± sample std over seeds \
         (n = seeds). Models are selected on the valid split; the test metric is read at the \
         selected epoch, never the best over epochs. *pub.* marks the original's published number \
         for the same text encoder, vision backbone and fraction (reference F.1: single seed, the \
         maximum over the logged test history).\n",
        results.len()
    );
    let by_task = group(results);
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
        let mut matched = 0;
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
                        if let Some(p) = published(
                            &task.dataset,
                            &task.task,
                            &task.metric,
                            row,
                            &col.0,
                            col.1.value(),
                        ) {
                            matched += 1;
                            let _ = write!(md, " *pub. {p:.1}*");
                        }
                        md.push_str(" |");
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        md.push('\n');
        if matched == 0 && published_table(&task.dataset, &task.task, &task.metric).is_some() {
            md.push_str(
                "The original published this task for text encoders BERT, BioBERT, \
                 ClinicalBERT, PubMedBERT, CXR-BERT and vision backbones ResNet-AE, DINOv2-S, \
                 DINOv2-B at 1/10/100 %; none of these backbone names occur here, so no published \
                 number sits beside these cells.\n\n",
            );
        }
        let _ = writeln!(md, "![{}]({}.png)\n", task.title(), task.file_stem());
    }

    // Every metric of every evaluation, for what the tables do not show.
    md.push_str("## All test metrics\n\nMetrics in %, the loss as computed.\n\n| instance | adaptor | fraction | seed | best epoch | train examples | metrics |\n|---|---|---|---|---|---|---|\n");
    let mut sorted: Vec<&EvalResult> = results.iter().collect();
    sorted.sort_by(|a, b| a.instance.cmp(&b.instance));
    for r in sorted {
        let metrics = r
            .test
            .iter()
            .map(|(k, v)| match k.as_str() {
                "loss" => format!("{k} {v:.4}"),
                _ => format!("{k} {:.1}", v * 100.0),
            })
            .collect::<Vec<_>>()
            .join(", ");
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

/// One row of `results.parquet`: (result, split, metric, value).
type Row<'a> = (&'a EvalResult, &'a str, &'a str, f64);

/// `results.parquet`: one row per (instance, split, metric).
pub fn write_parquet(path: &Path, results: &[EvalResult]) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for r in results {
        for (split, m) in [("valid", &r.valid), ("test", &r.test)] {
            for (name, v) in m {
                rows.push((r, split, name, *v));
            }
        }
    }
    let s = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("instance", s(&|r| r.0.instance.clone())),
        ("task", s(&|r| r.0.task.clone())),
        ("dataset", s(&|r| r.0.dataset.clone())),
        ("head", s(&|r| r.0.head.clone())),
        ("vision", s(&|r| r.0.vision.clone())),
        ("text", s(&|r| r.0.text.clone())),
        ("adaptor", s(&|r| r.0.adaptor.clone())),
        (
            "fraction",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.0.fraction).collect::<Vec<_>>(),
            )),
        ),
        (
            "seed",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0.seed).collect::<Vec<_>>(),
            )),
        ),
        ("split", s(&|r| r.1.to_string())),
        ("metric", s(&|r| r.2.to_string())),
        (
            "value",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
        (
            "best_epoch",
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|r| r.0.best_epoch as i64)
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "train_examples",
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|r| r.0.train_examples as i64)
                    .collect::<Vec<_>>(),
            )),
        ),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    debug_assert!(schema
        .fields()
        .iter()
        .all(|f| f.data_type() != &DataType::Null));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = ArrowWriter::try_new(file, schema, None)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    w.write(&batch)
        .and_then(|_| w.close().map(|_| ()))
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// One PNG per task: the metric (mean over seeds, error bars ± std) against the label fraction
/// (log axis), one line per (vision backbone, row).
pub fn plots(dir: &Path, results: &[EvalResult]) -> Result<Vec<String>> {
    use plotters::prelude::*;
    train::plot::register_embedded_font();
    let mut files = Vec::new();
    for (task, cells) in group(results) {
        let name = format!("{}.png", task.file_stem());
        let path = dir.join(&name);
        let err = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: {e}", path.display()));
        let (w, h) = (900u32, 560u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let fractions: Vec<f64> = cells
                .values()
                .flat_map(|m| m.keys().map(|k| k.1.value()))
                .collect();
            let lo = fractions.iter().cloned().fold(1.0f64, f64::min).min(0.01);
            let mut chart = ChartBuilder::on(&root)
                .caption(task.title(), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d((lo * 0.7..1.4f64).log_scale(), 0.0..100.0f64)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("label fraction")
                .y_desc(format!("{} (%)", metric_name(&task.metric)))
                .x_label_formatter(&|x| format!("{}%", x * 100.0))
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| err(&e))?;
            let lines: BTreeSet<(String, String)> = cells
                .iter()
                .flat_map(|(row, m)| m.keys().map(move |(v, _)| (v.clone(), row.clone())))
                .collect();
            for (i, (vision, row)) in lines.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let mut pts: Vec<(f64, f64, f64)> = cells[row]
                    .iter()
                    .filter(|((v, _), _)| v == vision)
                    .map(|((_, f), vals)| {
                        let (m, s) = mean_std(vals);
                        (f.value(), m * 100.0, s * 100.0)
                    })
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().map(|p| (p.0, p.1)),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(format!("{vision} + {row}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
                chart
                    .draw_series(pts.iter().map(|p| {
                        ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.filled(), 6)
                    }))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }
        train::plot::write_png(&path, &buf, w, h).map_err(|e| err(&e))?;
        files.push(name);
    }
    Ok(files)
}

/// Writes the three outputs into `dir`; returns the plot file names.
pub fn write_report(dir: &Path, results: &[EvalResult]) -> Result<Vec<String>> {
    write_parquet(&dir.join(RESULTS_PARQUET), results)?;
    let md = markdown(results);
    let path = dir.join(RESULTS_MD);
    std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    plots(dir, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        text: &str,
        vision: &str,
        adaptor: &str,
        fraction: f64,
        seed: i64,
        v: f64,
    ) -> EvalResult {
        EvalResult {
            instance: format!(
                "classify[text={text},vision={vision},fraction={fraction},seed={seed}]"
            ),
            task: "classification".into(),
            dataset: "rsna".into(),
            metric: "auroc".into(),
            vision: vision.into(),
            text: text.into(),
            adaptor: adaptor.into(),
            head: "mlp".into(),
            fraction,
            seed,
            valid: [("auroc".to_string(), v - 0.01)].into_iter().collect(),
            test: [("auroc".to_string(), v), ("macro_f1".to_string(), v - 0.1)]
                .into_iter()
                .collect(),
            best_epoch: 3,
            epochs_run: 5,
            train_examples: 100,
            trainable_params: 394_753,
            seconds: 1.0,
        }
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[0.8, 0.9, 1.0]);
        assert!((m - 0.9).abs() < 1e-12 && (s - 0.1).abs() < 1e-12);
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
    }

    #[test]
    fn published_numbers_match_by_normalised_names() {
        assert_eq!(
            published(
                "rsna",
                "classification",
                "auroc",
                "BioBERT",
                "dinov2-b",
                0.01
            ),
            Some(84.4)
        );
        assert_eq!(
            published(
                "covidx",
                "classification",
                "accuracy",
                "cxr-bert",
                "resnet-ae",
                1.0
            ),
            Some(77.7)
        );
        assert_eq!(
            published(
                "rsna",
                "classification",
                "auroc",
                "minilm",
                "dinov2-b",
                0.01
            ),
            None
        );
        assert_eq!(
            published("rsna", "classification", "auroc", "bert", "dinov2-s", 0.5),
            None
        );
    }

    #[test]
    fn markdown_report_snapshot() {
        let results = vec![
            result("bert", "dinov2-s", "pretrained", 0.01, 0, 0.80),
            result("bert", "dinov2-s", "pretrained", 0.01, 1, 0.82),
            result("bert", "dinov2-s", "pretrained", 1.0, 0, 0.86),
            result("minilm", "tiny-vit", "pretrained", 0.1, 0, 0.75),
            result("none", "tiny-vit", "none", 0.1, 0, 0.70),
            result("minilm", "tiny-vit", "random", 0.1, 0, 0.65),
        ];
        insta::assert_snapshot!(markdown(&results));
    }

    #[test]
    fn outputs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let results = vec![
            result("bert", "dinov2-s", "pretrained", 0.01, 0, 0.80),
            result("bert", "dinov2-s", "pretrained", 0.1, 0, 0.84),
        ];
        let plots = write_report(dir.path(), &results).unwrap();
        assert_eq!(plots, vec!["rsna-classification-mlp.png".to_string()]);
        for f in [RESULTS_PARQUET, RESULTS_MD, "rsna-classification-mlp.png"] {
            assert!(
                std::fs::metadata(dir.path().join(f)).unwrap().len() > 0,
                "{f}"
            );
        }
    }
}

/// One pre-training run as the report's pre-training section shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainSummary {
    pub instance: String,
    pub variant: String,
    pub vision: String,
    pub text: String,
    pub trainable_params: i64,
    pub epochs: u64,
    pub initial_val_loss: f64,
    pub best_val_loss: f64,
    /// recall@1/5/10 image→text, then text→image, at the kept checkpoint.
    pub recall: [f64; 6],
    pub chance: f64,
}

impl PretrainSummary {
    /// Reads a `train-adaptor` artifact (`report.json`, `adaptor.json`, `provenance.json`).
    pub fn read(dir: &Path, instance: &str) -> Result<Self> {
        let json = |f: &str| -> Result<serde_json::Value> {
            let p = dir.join(f);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
        };
        let (report, ckpt, prov) = (
            json("report.json")?,
            json("adaptor.json")?,
            json(stages::pretrain::PROVENANCE_FILE)?,
        );
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let rec = &report["best_recall"];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        Ok(PretrainSummary {
            instance: instance.to_string(),
            variant: s(&ckpt["model"]["variant"]),
            vision: s(&prov["image"]["backbone"]),
            text: s(&prov["text"]["backbone"]),
            trainable_params: report["trainable_params"].as_i64().unwrap_or(0),
            epochs: report["epochs_completed"].as_u64().unwrap_or(0),
            initial_val_loss: f(&report["initial_val_loss"]),
            best_val_loss: f(&report["best_val_loss"]),
            recall: [
                f(&rec["image_to_text_r1"]),
                f(&rec["image_to_text_r5"]),
                f(&rec["image_to_text_r10"]),
                f(&rec["text_to_image_r1"]),
                f(&rec["text_to_image_r5"]),
                f(&rec["text_to_image_r10"]),
            ],
            chance: 1.0 / rec["pairs"].as_f64().unwrap_or(f64::NAN),
        })
    }
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
        let pct = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.1}", x * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {:.4} → {:.4} | {} | {} | {:.1} |",
            r.instance,
            r.variant,
            r.vision,
            r.text,
            r.trainable_params,
            r.epochs,
            r.initial_val_loss,
            r.best_val_loss,
            pct(&r.recall[..3]),
            pct(&r.recall[3..]),
            r.chance * 100.0
        );
    }
    md.push('\n');
    for c in curves {
        let _ = writeln!(md, "![training curve]({c})");
    }
    md.push('\n');
    md
}

/// The `report` stage: reads every bound result and pre-training run, writes the outputs.
pub fn run_stage(
    _: &stages::kinds::report::ReportParams,
    ctx: &pipeline::StageContext,
) -> std::result::Result<(), pipeline::StageError> {
    let out = ctx.out_dir();
    let mut results = Vec::new();
    for a in ctx.inputs("results") {
        let mut r = EvalResult::read(&a.path.join(RESULT_FILE))?;
        if let pipeline::InputOrigin::Stage { instance, .. } = &a.origin {
            r.instance = instance.clone();
        }
        results.push(r);
    }
    let mut runs = Vec::new();
    let mut curves = Vec::new();
    for (i, a) in ctx.inputs("pretraining").iter().enumerate() {
        runs.push(PretrainSummary::read(&a.path, a.name())?);
        let curve = a.path.join(train::train::CURVE);
        if curve.is_file() {
            let name = format!("pretraining-{i}.png");
            std::fs::copy(&curve, out.join(&name)).map_err(|e| Error::io(&curve, e))?;
            curves.push(name);
        }
    }
    let plots = write_report(out, &results)?;
    if !runs.is_empty() {
        let path = out.join(RESULTS_MD);
        let mut md = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        md.push_str(&pretraining_markdown(&runs, &curves));
        std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    }
    ctx.log(format!(
        "report: {} evaluation(s), {} pre-training run(s); {} plot(s); see {RESULTS_MD}",
        results.len(),
        runs.len(),
        plots.len() + curves.len()
    ));
    Ok(())
}
