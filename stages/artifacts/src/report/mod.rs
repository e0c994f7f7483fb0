//! The `report` stage's library: every evaluation result of a manifest (`result.json` of the
//! `classify`, `segment` and `zero-shot` stages) into `results.parquet` (one row per instance,
//! split and metric), `results.md` (one table per task in the original's shape: rows are text
//! encoders, columns vision backbone × label fraction, cells mean ± std over seeds, published
//! numbers beside them where backbone names and the setting match; zero-shot rows beside the probes; a retrieval
//! table per backbone pair from `retrieve`), a PNG per task (metric against label fraction) and
//! `report.html` (all of it on one self-contained page, each cell linked to its instances).
//!
//! This module reads the inputs and runs the stage; `group` groups results into tables,
//! `retrieval` the retrieval runs, `markdown`, `parquet`, `plots` and `html` write the outputs.
//! No libtorch: the `adaptor` binary
//! runs the stage in its own process ([`run_stage`]).

mod group;
mod html;
mod markdown;
mod parquet;
mod plots;
mod retrieval;
pub mod setting;
mod tables;

use std::collections::BTreeMap;
use std::path::Path;

use pipeline::store::ArtifactManifest;
use pipeline::{InputArtifact, InputOrigin, StageContext, StageError};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::{ADAPTOR_JSON, PRETRAIN_REPORT, PROVENANCE_FILE, TRAINING_CURVE};
use group::TaskKey;

pub use group::mean_std;
pub use html::{html, HtmlCell, HtmlTable, InstanceLink, Page, REPORT_HTML};
pub use markdown::{markdown, pretraining_markdown};
pub use parquet::write_parquet;
pub use plots::plots;
pub use retrieval::{
    retrieval_html_tables, retrieval_markdown, retrieval_tables, RetrievalResult, RetrievalScores,
};
pub use tables::{fraction_label, tables, ResultCell, ResultTable, Split};

pub use crate::files::RESULT_FILE;

/// What an evaluation stage writes as `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// The stage instance that produced it.
    pub instance: String,
    /// `classification` or `segmentation` (`zero-shot` writes `classification`, head
    /// [`ZERO_SHOT_HEAD`], fraction 0).
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
    /// What decides whether this is the original's published setting, as the stage saw it:
    /// `text_pooling` (of the adaptor's text table), `backbone_kind`, `image_pooling`, `resize`
    /// and `crop` (of the features), `normalize`, `augment`. Empty in results written before it
    /// existed. See [`setting::is_published_setting`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub setting: BTreeMap<String, String>,
}

/// The `head` of a `zero-shot` result; its `fraction` is 0 (no labels seen).
pub const ZERO_SHOT_HEAD: &str = "zero-shot";

pub const RESULTS_PARQUET: &str = "results.parquet";
pub const RESULTS_MD: &str = "results.md";

impl EvalResult {
    pub fn read(path: &Path) -> Result<Self> {
        read_result(path)
    }

    /// A `result.json` read by other means (from a remote store); `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        parse_result(bytes, path)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_result(self, path)
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

    /// Every test metric as the report lists it (`auroc 81.0, loss 0.4123`): in %, the loss as
    /// computed.
    fn test_metrics_text(&self) -> String {
        self.test
            .iter()
            .map(|(k, v)| match k.as_str() {
                "loss" => format!("{k} {v:.4}"),
                _ => format!("{k} {:.1}", v * 100.0),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn row_label(&self) -> String {
        let label = match self.adaptor.as_str() {
            "pretrained" => self.text.clone(),
            "random" => "random-init adaptor".into(),
            _ => "no adaptor (backbone → head)".into(),
        };
        if self.is_zero_shot() {
            format!("zero-shot: {}", label.replace(" (backbone → head)", ""))
        } else {
            label
        }
    }

    /// A `zero-shot` result (no head, no labels): a row beside the probes of its task.
    pub fn is_zero_shot(&self) -> bool {
        self.head == ZERO_SHOT_HEAD
    }
}

/// A result file (`result.json`) as `T`; a file that is not one names itself.
fn read_result<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_result(&bytes, path)
}

fn parse_result<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::NotAResult {
        path: path.to_path_buf(),
        source,
    })
}

fn write_result<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes the three outputs into `dir`; returns the plot file names.
pub fn write_report(dir: &Path, results: &[EvalResult]) -> Result<Vec<String>> {
    write_parquet(&dir.join(RESULTS_PARQUET), results)?;
    let md = markdown(results);
    let path = dir.join(RESULTS_MD);
    std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    plots(dir, results)
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
    /// The row of the pre-training table after the instance: variant, vision, text, parameters,
    /// epochs, valid loss (start → best), recall@1/5/10 each way and chance recall@1, in %.
    fn row_cells(&self) -> [String; 9] {
        let pct = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.1}", x * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        [
            self.variant.clone(),
            self.vision.clone(),
            self.text.clone(),
            self.trainable_params.to_string(),
            self.epochs.to_string(),
            format!("{:.4} → {:.4}", self.initial_val_loss, self.best_val_loss),
            pct(&self.recall[..3]),
            pct(&self.recall[3..]),
            format!("{:.1}", self.chance * 100.0),
        ]
    }

    /// Reads a `train-adaptor` artifact (`report.json`, `adaptor.json`, `provenance.json`).
    pub fn read(dir: &Path, instance: &str) -> Result<Self> {
        let json = |f: &str| -> Result<serde_json::Value> {
            let p = dir.join(f);
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: p, source })
        };
        let (report, ckpt, prov) = (
            json(PRETRAIN_REPORT)?,
            json(ADAPTOR_JSON)?,
            json(PROVENANCE_FILE)?,
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

/// The folder of a stage input as the page links it (relative to `<store>/report/<key>/`), with
/// the parameters its `_manifest.json` records (none when the folder has no manifest).
pub fn instance_link(a: &InputArtifact) -> Result<Option<(String, InstanceLink)>> {
    let InputOrigin::Stage {
        kind,
        instance,
        key,
    } = &a.origin
    else {
        return Ok(None);
    };
    let path = a.path.join("_manifest.json");
    let params = match std::fs::read(&path) {
        Ok(bytes) => {
            let m: ArtifactManifest =
                serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })?;
            m.params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let href = format!("../../{kind}/{key}/");
    Ok(Some((instance.clone(), InstanceLink { href, params })))
}

/// Writes `report.html` into `dir`, embedding the PNGs named `images` that are in `dir`.
pub fn write_html(
    dir: &Path,
    results: &[EvalResult],
    runs: &[PretrainSummary],
    curves: &[String],
    links: &BTreeMap<String, InstanceLink>,
    images: &[String],
    extra: &[HtmlTable],
) -> Result<()> {
    let mut pngs = BTreeMap::new();
    for name in images.iter().chain(curves) {
        let p = dir.join(name);
        pngs.insert(
            name.clone(),
            std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
        );
    }
    let page = Page {
        results,
        runs,
        links,
        images: &pngs,
        curves,
        extra,
    };
    let path = dir.join(REPORT_HTML);
    std::fs::write(&path, html(&page)).map_err(|e| Error::io(&path, e))
}

/// The `report` stage: reads every bound result and pre-training run, writes the outputs.
pub fn run_stage(ctx: &StageContext) -> std::result::Result<(), StageError> {
    let out = ctx.out_dir();
    let mut results = Vec::new();
    let mut links = BTreeMap::new();
    for a in ctx
        .inputs("results")
        .iter()
        .chain(ctx.inputs("pretraining"))
        .chain(ctx.inputs("retrieval"))
    {
        links.extend(instance_link(a)?);
    }
    for a in ctx.inputs("results") {
        let mut r = EvalResult::read(&a.path.join(RESULT_FILE))?;
        if let InputOrigin::Stage { instance, .. } = &a.origin {
            r.instance = instance.clone();
        }
        results.push(r);
    }
    let mut runs = Vec::new();
    let mut curves = Vec::new();
    for (i, a) in ctx.inputs("pretraining").iter().enumerate() {
        runs.push(PretrainSummary::read(&a.path, a.name())?);
        let curve = a.path.join(TRAINING_CURVE);
        if curve.is_file() {
            let name = format!("pretraining-{i}.png");
            std::fs::copy(&curve, out.join(&name)).map_err(|e| Error::io(&curve, e))?;
            curves.push(name);
        }
    }
    let mut retrieval = Vec::new();
    for a in ctx.inputs("retrieval") {
        let mut r = RetrievalResult::read(&a.path.join(RESULT_FILE))?;
        if let InputOrigin::Stage { instance, .. } = &a.origin {
            r.instance = instance.clone();
        }
        retrieval.push(r);
    }
    let plots = write_report(out, &results)?;
    if !runs.is_empty() || !retrieval.is_empty() {
        let path = out.join(RESULTS_MD);
        let mut md = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        md.push_str(&retrieval_markdown(&retrieval));
        if !runs.is_empty() {
            md.push_str(&pretraining_markdown(&runs, &curves));
        }
        std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    }
    write_html(
        out,
        &results,
        &runs,
        &curves,
        &links,
        &plots,
        &retrieval_html_tables(&retrieval),
    )?;
    ctx.log(format!(
        "report: {} evaluation(s), {} retrieval run(s), {} pre-training run(s); {} plot(s); see {RESULTS_MD}, {REPORT_HTML}",
        results.len(),
        retrieval.len(),
        runs.len(),
        plots.len() + curves.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests;
