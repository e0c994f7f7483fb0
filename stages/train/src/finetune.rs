//! Training a classification head on cached features (reference D.1): label-fraction
//! subsampling, AdamW with a per-step warm-up + cosine schedule, model selection on the
//! validation metric with early stopping, and test scores of the selected epoch only.
//!
//! Determinism: initialisation, the label subset and the per-epoch shuffles come from
//! [`crate::rng`]; dropout uses libtorch's generator re-seeded from `(seed, epoch)` at every epoch
//! start, under the same process-wide lock as [`crate::train`]. On a CPU, the same seed and thread
//! count give byte-identical `head.safetensors`, `metrics_epochs.parquet` and `predictions.parquet`.

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::PI;
use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::parse_device;
use crate::error::{io_err, Error, Result};
use crate::heads::{decays, ClassificationHead, HeadKind};
use crate::metrics::{write_parquet, Column};
use crate::optim::AdamW;
use crate::plot::{head_curve, HeadCurvePoint};
use crate::pretrain::{Silent, StopReason, TORCH_RNG};
use crate::rng::{self, derive_seed, permutation};
use crate::scores::classification_scores;

pub const HEAD_CHECKPOINT: &str = "head.safetensors";
pub const HEAD_EPOCH_METRICS: &str = "metrics_epochs.parquet";
pub const PREDICTIONS: &str = "predictions.parquet";
pub const HEAD_CURVE: &str = "curve.png";
pub const HEAD_REPORT: &str = "report.json";

/// Rows per forward pass when evaluating (evaluation is per sample, so this only bounds memory).
const EVAL_CHUNK: i64 = 8192;

/// How the learning rate moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadSchedule {
    /// Per optimizer step: linear warm-up over `int(warmup_fraction · total)` steps (the k-th
    /// warm-up step uses `k / warmup` of the rate), then a half cosine from `lr` to `min_lr` over
    /// the remaining steps.
    WarmupCosine,
    /// `lr` throughout.
    Constant,
    /// The original (reference D.1, G.9): `CosineAnnealingWarmRestarts(T_0 = int(0.4 · total
    /// steps), T_mult 1, eta_min = min_lr)` advanced once per *epoch*, so with more than a few
    /// steps per epoch the rate barely moves. Total steps count one device.
    OriginalPerEpochRestarts,
}

/// Everything that decides a head-training run. In JSON every field is optional: missing fields
/// take [`HeadConfig::default`] (the MLP head on a binary task, the rest as [`HeadConfig::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    pub head: HeadKind,
    /// 1: a binary task (BCE-with-logits on one logit, sigmoid); ≥ 2: cross-entropy, softmax.
    pub classes: i64,
    /// Hidden width of the MLP head (the original: 512).
    pub hidden: i64,
    /// Dropout `p` before each Linear; `None`: the head's own default, 0.1 for the MLP head (the
    /// original `SSLEvaluator(p=0.1)`) and 0.0 for the linear probe (MGCA's `dropout=0.0`).
    pub dropout: Option<f64>,
    /// Fraction of the training rows used (1.0, 0.1, 0.01 in the paper): `max(1, round(f · n))`
    /// rows, rounding half to even like pandas, drawn without stratification from `seed`.
    pub label_fraction: f64,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub schedule: HeadSchedule,
    pub warmup_fraction: f64,
    pub min_lr: f64,
    /// Weight decay on every head parameter, as the original; otherwise weight matrices only.
    pub original_weight_decay: bool,
    /// Stop after this many epochs without the validation metric improving by more than
    /// `min_delta` (the original: patience 5, min_delta 1e-3).
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig::new(HeadKind::Mlp, 1)
    }
}

impl HeadConfig {
    /// The original's settings for a head on `classes` outputs (COVIDx-style lr 5e-4, weight
    /// decay 1e-4, batch 512, 100 epochs), with the fixed schedule and decay groups.
    pub fn new(head: HeadKind, classes: i64) -> Self {
        HeadConfig {
            head,
            classes,
            hidden: 512,
            dropout: None,
            label_fraction: 1.0,
            seed: 0,
            epochs: 100,
            batch_size: 512,
            lr: 5e-4,
            weight_decay: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            schedule: HeadSchedule::WarmupCosine,
            warmup_fraction: 0.05,
            min_lr: 1e-8,
            original_weight_decay: false,
            patience: Some(5),
            min_delta: 1e-3,
            device: "cpu".into(),
        }
    }

    /// MGCA's linear-probe protocol (reference F.2): a bare Linear (dropout 0), AdamW lr 5e-4,
    /// weight decay 1e-6 on every parameter, constant rate, 50 epochs.
    pub fn mgca_linear_probe(classes: i64) -> Self {
        HeadConfig {
            lr: 5e-4,
            weight_decay: 1e-6,
            original_weight_decay: true,
            schedule: HeadSchedule::Constant,
            epochs: 50,
            ..HeadConfig::new(HeadKind::Linear, classes)
        }
    }

    /// The dropout `p` the head uses (see [`HeadConfig::dropout`]).
    pub fn dropout_p(&self) -> f64 {
        self.dropout.unwrap_or(match self.head {
            HeadKind::Mlp => 0.1,
            HeadKind::Linear => 0.0,
        })
    }

    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.classes < 1 {
            return bad(format!("`classes` = {} must be at least 1", self.classes));
        }
        if !(self.label_fraction > 0.0 && self.label_fraction <= 1.0) {
            return bad(format!(
                "`label_fraction` = {} must lie in (0, 1]",
                self.label_fraction
            ));
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("`epochs` and `batch_size` must be at least 1".into());
        }
        let rates_ok =
            self.lr > 0.0 && self.lr.is_finite() && (0.0..=self.lr).contains(&self.min_lr);
        if !rates_ok {
            return bad(format!(
                "`lr` = {} must be positive and `min_lr` = {} in [0, lr]",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.betas.0) || !(0.0..1.0).contains(&self.betas.1) {
            return bad(format!("`betas` = {:?} must lie in [0, 1)", self.betas));
        }
        if self.eps <= 0.0 || self.weight_decay < 0.0 || self.min_delta < 0.0 {
            return bad(
                "`eps` must be positive, `weight_decay` and `min_delta` non-negative".into(),
            );
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad(format!(
                "`warmup_fraction` = {} must lie in [0, 1)",
                self.warmup_fraction
            ));
        }
        if self.patience == Some(0) {
            return bad("`patience` must be at least 1 (or absent)".into());
        }
        self.device()?;
        Ok(())
    }

    /// The validation score that selects the epoch: AUROC for a binary task, accuracy otherwise
    /// (as the original's `ModelCheckpoint` monitors).
    pub fn selection_metric(&self) -> &'static str {
        if self.classes == 1 {
            "auroc"
        } else {
            "accuracy"
        }
    }

    /// The learning rate of update `step` (0-based) in `epoch` (0-based).
    pub fn lr_at(&self, step: u64, epoch: usize, steps_per_epoch: u64) -> f64 {
        let total = steps_per_epoch * self.epochs as u64;
        match self.schedule {
            HeadSchedule::Constant => self.lr,
            HeadSchedule::WarmupCosine => {
                let warmup = (self.warmup_fraction * total as f64) as u64;
                if step < warmup {
                    self.lr * (step + 1) as f64 / warmup as f64
                } else {
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    let progress = ((step - warmup) as f64 / span).min(1.0);
                    self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (PI * progress).cos())
                }
            }
            HeadSchedule::OriginalPerEpochRestarts => {
                let t0 = ((0.4 * total as f64) as u64).max(1);
                let t = (epoch as u64 % t0) as f64 / t0 as f64;
                self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (PI * t).cos())
            }
        }
    }
}

/// One split of cached features.
pub struct HeadSplit {
    /// `[N, D]` floating point (converted to float32).
    pub features: Tensor,
    /// Class index per row (0/1 for a binary task).
    pub labels: Vec<i64>,
    /// Row identifiers written to `predictions.parquet` (e.g. the image id), if known.
    pub keys: Option<Vec<String>>,
}

impl HeadSplit {
    pub fn new(features: Tensor, labels: Vec<i64>) -> Self {
        HeadSplit {
            features,
            labels,
            keys: None,
        }
    }

    pub fn with_keys(mut self, keys: Vec<String>) -> Self {
        self.keys = Some(keys);
        self
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The three splits a head trains, selects and is tested on.
pub struct HeadData {
    pub train: HeadSplit,
    pub valid: HeadSplit,
    pub test: HeadSplit,
}

/// One epoch, as recorded in `metrics_epochs.parquet` and passed to the observer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub steps: u64,
    /// The learning rate of the epoch's last update.
    pub lr: f64,
    /// Mean training loss over the epoch's examples (training mode, dropout on).
    pub train_loss: f64,
    pub valid_loss: f64,
    pub valid: BTreeMap<String, f64>,
    /// Whether the selection metric beat every earlier epoch (this epoch's weights are kept).
    pub improved: bool,
}

/// Receives progress; returning `Break` stops training, which then finishes with the best epoch
/// so far (reported as [`StopReason::Interrupted`]).
pub trait HeadObserver {
    fn on_epoch(&mut self, _e: &HeadEpoch) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    fn log(&mut self, _line: &str) {}
}

impl HeadObserver for Silent {}

/// What [`train_head`] returns and writes as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadReport {
    pub head: HeadKind,
    pub classes: i64,
    pub n_input: i64,
    /// `auroc` (binary) or `accuracy` (multiclass).
    pub selection_metric: String,
    pub stop: StopReason,
    /// Scores of the selected weights; `loss` included. Keys: `auroc`, `accuracy`, `macro_f1`,
    /// `auroc_class_K` (multiclass), `loss`; an undefined score is absent.
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    /// The 1-based epoch whose weights were selected (on the validation metric only).
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub steps: u64,
    pub train_examples: usize,
    pub valid_examples: usize,
    pub test_examples: usize,
    pub trainable_params: i64,
    /// libtorch's intra-op threads (bit-identical CPU results need the same count).
    pub threads: i32,
    pub device: String,
    pub seconds: f64,
}

/// The training rows used at `fraction`: all rows in order at 1.0, else `max(1, round(f · n))`
/// rows (half to even, [`rng::labelled_count`]) of a permutation drawn from `seed`, in
/// ascending row order.
pub fn label_subset(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    rng::label_subset(n, fraction, seed, "label_fraction")
}

type Kept = (usize, f64, Vec<(String, Tensor)>);

/// A split moved to the device, checked.
struct Prepared {
    features: Tensor,
    labels: Tensor,
    labels_vec: Vec<i64>,
}

fn prepare(
    name: &str,
    split: &HeadSplit,
    cfg: &HeadConfig,
    dim: Option<i64>,
    device: Device,
) -> Result<Prepared> {
    let bad = |m: String| Err(Error::Data(format!("{name} split: {m}")));
    let size = split.features.size();
    if size.len() != 2 {
        return bad(format!("features have shape {size:?}, expected [N, D]"));
    }
    if !split.features.is_floating_point() {
        return bad(format!("features have kind {:?}", split.features.kind()));
    }
    if size[0] as usize != split.labels.len() {
        return bad(format!(
            "{} feature rows but {} labels",
            size[0],
            split.labels.len()
        ));
    }
    if let Some(keys) = &split.keys {
        if keys.len() != split.labels.len() {
            return bad(format!(
                "{} keys for {} rows",
                keys.len(),
                split.labels.len()
            ));
        }
    }
    if let Some(d) = dim {
        if size[1] != d {
            return bad(format!(
                "feature width {}, the train split has {d}",
                size[1]
            ));
        }
    }
    if split.is_empty() {
        return bad("no rows".into());
    }
    let max_label = if cfg.classes == 1 { 1 } else { cfg.classes - 1 };
    if let Some((row, l)) = split
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l > max_label)
    {
        return bad(format!("row {row}: label {l} outside 0..={max_label}"));
    }
    let features = split.features.to_kind(Kind::Float).to_device(device);
    let finite = features.isfinite().all_dim(1, false);
    if finite.all().int64_value(&[]) == 0 {
        let row = finite.logical_not().nonzero().int64_value(&[0, 0]);
        let values = features.get(row);
        let col = values
            .isfinite()
            .logical_not()
            .nonzero()
            .int64_value(&[0, 0]);
        let v = values.double_value(&[col]);
        return bad(format!("row {row}, column {col}: feature value {v}"));
    }
    let labels = Tensor::from_slice(&split.labels).to_device(device);
    Ok(Prepared {
        features,
        labels,
        labels_vec: split.labels.clone(),
    })
}

/// Evaluation-mode loss and probabilities (`[N]` or `[N, C]`, row-major, on the host).
fn evaluate(head: &ClassificationHead, p: &Prepared) -> (f64, Vec<f64>) {
    let _guard = tch::no_grad_guard();
    let n = p.features.size()[0];
    let mut logits = Vec::new();
    let mut start = 0;
    while start < n {
        let len = EVAL_CHUNK.min(n - start);
        logits.push(head.forward(&p.features.narrow(0, start, len), false));
        start += len;
    }
    let logits = Tensor::cat(&logits, 0);
    let loss = head.loss(&logits, &p.labels).double_value(&[]);
    let probs = head
        .probabilities(&logits)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .flatten(0, -1);
    let v: Vec<f64> = Vec::try_from(&probs).expect("a double tensor converts");
    (loss, v)
}

fn scores(cfg: &HeadConfig, p: &Prepared, loss: f64, probs: &[f64]) -> BTreeMap<String, f64> {
    let mut s = classification_scores(&p.labels_vec, probs, cfg.classes as usize);
    s.insert("loss".into(), loss);
    s
}

/// Trains a head on `data.train` (its `label_fraction` subset), selects the epoch with the best
/// validation metric, and scores that epoch's weights on `data.test`. Writes into `out_dir`:
/// `head.safetensors` (the selected weights, `SSLEvaluator` state-dict names),
/// `metrics_epochs.parquet`, `predictions.parquet` (test rows: `row`, `key` if given, `label`,
/// `prob` or `prob_K`, `predicted`), `curve.png` and `report.json`.
pub fn train_head(
    cfg: &HeadConfig,
    data: &HeadData,
    out_dir: &Path,
    observer: &mut dyn HeadObserver,
) -> Result<HeadReport> {
    cfg.validate()?;
    let device = cfg.device()?;
    let train_all = prepare("train", &data.train, cfg, None, device)?;
    let dim = train_all.features.size()[1];
    let valid = prepare("valid", &data.valid, cfg, Some(dim), device)?;
    let test = prepare("test", &data.test, cfg, Some(dim), device)?;
    if cfg.classes == 1 && valid.labels_vec.iter().all(|&l| l == valid.labels_vec[0]) {
        return Err(Error::Data(
            "valid split: only one class present, so the selection metric (AUROC) is undefined"
                .into(),
        ));
    }
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let clock = Instant::now();

    let rows = label_subset(data.train.len(), cfg.label_fraction, cfg.seed);
    let n = rows.len();
    let index =
        Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(device);
    let train = Prepared {
        features: train_all.features.index_select(0, &index),
        labels: train_all.labels.index_select(0, &index),
        labels_vec: rows.iter().map(|&r| train_all.labels_vec[r]).collect(),
    };
    drop(train_all);
    // BatchNorm cannot train on one row (PyTorch raises): the MLP head skips a final batch of one.
    let mlp = cfg.head == HeadKind::Mlp;
    if mlp && n < 2 {
        return Err(Error::Data(format!(
            "train split: {n} example at label fraction {} — the MLP head's BatchNorm needs 2",
            cfg.label_fraction
        )));
    }
    let batches_per_epoch = {
        let full = n / cfg.batch_size;
        let rest = n % cfg.batch_size;
        full + usize::from(rest > 1 || (rest == 1 && !mlp))
    } as u64;

    let head = ClassificationHead::new(
        cfg.head,
        dim,
        cfg.classes,
        cfg.hidden,
        cfg.dropout_p(),
        device,
        derive_seed(cfg.seed, "head_init", 0),
    )?;
    let mut opt = if cfg.original_weight_decay {
        AdamW::with_decay(
            head.params(),
            cfg.betas,
            cfg.eps,
            cfg.weight_decay,
            |_, _| true,
        )
    } else {
        AdamW::with_decay(head.params(), cfg.betas, cfg.eps, cfg.weight_decay, decays)
    };

    let metric = cfg.selection_metric();
    let mut epochs: Vec<HeadEpoch> = Vec::new();
    // (epoch, selection metric, state dict) of the kept weights.
    let mut best: Option<Kept> = None;
    let (mut patience_best, mut without_improvement) = (f64::NEG_INFINITY, 0usize);
    let mut stop = StopReason::Completed;
    let mut step = 0u64;
    for epoch in 0..cfg.epochs {
        tch::manual_seed(derive_seed(cfg.seed, "dropout", epoch as u64) as i64);
        let order = permutation(derive_seed(cfg.seed, "shuffle", epoch as u64), n);
        let (mut loss_sum, mut seen, mut lr) = (0.0, 0usize, cfg.lr);
        for chunk in order.chunks(cfg.batch_size) {
            if mlp && chunk.len() < 2 {
                continue;
            }
            lr = cfg.lr_at(step, epoch, batches_per_epoch);
            let idx = Tensor::from_slice(chunk).to_device(device);
            let x = train.features.index_select(0, &idx);
            let y = train.labels.index_select(0, &idx);
            opt.zero_grad();
            let loss = head.loss(&head.forward(&x, true), &y);
            loss.backward();
            opt.step(lr);
            step += 1;
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                return Err(Error::Data(format!(
                    "training loss is {l} at step {step} (epoch {})",
                    epoch + 1
                )));
            }
            loss_sum += l * chunk.len() as f64;
            seen += chunk.len();
        }
        let (valid_loss, probs) = evaluate(&head, &valid);
        let valid_scores = classification_scores(&valid.labels_vec, &probs, cfg.classes as usize);
        let value = valid_scores
            .get(metric)
            .copied()
            .unwrap_or(f64::NEG_INFINITY);
        let improved = best.as_ref().is_none_or(|b| value > b.1);
        if improved {
            best = Some((epoch + 1, value, head.state_dict()));
        }
        // Early stopping like Lightning's `EarlyStopping(min_delta)`: only a gain above
        // `min_delta` resets the count (the kept weights follow any gain, like `ModelCheckpoint`).
        if value > patience_best + cfg.min_delta {
            patience_best = value;
            without_improvement = 0;
        } else {
            without_improvement += 1;
        }
        let e = HeadEpoch {
            epoch: epoch + 1,
            steps: step,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            valid_loss,
            valid: valid_scores,
            improved,
        };
        epochs.push(e.clone());
        if observer.on_epoch(&e).is_break() {
            stop = StopReason::Interrupted;
            break;
        }
        if cfg.patience.is_some_and(|p| without_improvement >= p) {
            observer.log(&format!(
                "early stop after epoch {}: validation {metric} has not beaten {patience_best:.6} by {} for {without_improvement} epochs",
                epoch + 1,
                cfg.min_delta
            ));
            stop = StopReason::EarlyStopped;
            break;
        }
    }

    let (best_epoch, _, weights) = best.expect("at least one epoch ran");
    head.load_state_dict(&weights, &out_dir.join(HEAD_CHECKPOINT))?;
    let (vl, vp) = evaluate(&head, &valid);
    let (tl, tp) = evaluate(&head, &test);
    let valid_final = scores(cfg, &valid, vl, &vp);
    let test_final = scores(cfg, &test, tl, &tp);

    let mut meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("module".to_string(), "SSLEvaluator".to_string()),
        ("best_epoch".to_string(), best_epoch.to_string()),
        ("n_input".to_string(), dim.to_string()),
    ]);
    meta.insert(
        "config".into(),
        serde_json::to_string(cfg).expect("config serialises"),
    );
    head.save(&out_dir.join(HEAD_CHECKPOINT), &meta)?;
    write_epochs(&out_dir.join(HEAD_EPOCH_METRICS), &epochs)?;
    write_predictions(&out_dir.join(PREDICTIONS), cfg, &data.test, &test, &tp)?;
    let points: Vec<HeadCurvePoint> = epochs
        .iter()
        .map(|e| HeadCurvePoint {
            epoch: e.epoch,
            train_loss: e.train_loss,
            valid_loss: e.valid_loss,
            valid_metric: e.valid.get(metric).copied(),
        })
        .collect();
    let title = format!(
        "{:?} head · {} classes · {} train ({}%) · batch {} · lr {:e}",
        cfg.head,
        cfg.classes,
        n,
        cfg.label_fraction * 100.0,
        cfg.batch_size,
        cfg.lr
    )
    .to_lowercase();
    head_curve(
        &out_dir.join(HEAD_CURVE),
        &points,
        metric,
        Some(best_epoch),
        &title,
    )?;
    let report = HeadReport {
        head: cfg.head,
        classes: cfg.classes,
        n_input: dim,
        selection_metric: metric.to_string(),
        stop,
        valid: valid_final,
        test: test_final,
        best_epoch,
        epochs_run: epochs.len(),
        steps: step,
        train_examples: n,
        valid_examples: data.valid.len(),
        test_examples: data.test.len(),
        trainable_params: head.num_trainable_params(),
        threads: tch::get_num_threads(),
        device: cfg.device.clone(),
        seconds: clock.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).expect("report serialises") + "\n";
    let path = out_dir.join(HEAD_REPORT);
    fs::write(&path, json).map_err(io_err(&path))?;
    Ok(report)
}

/// `metrics_epochs.parquet`: `epoch, steps, lr, train_loss, valid_loss, valid_<score>...,
/// improved` (no wall-clock column, so the file is reproducible byte for byte).
fn write_epochs(path: &Path, rows: &[HeadEpoch]) -> Result<()> {
    let keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.valid.keys()).collect();
    let f = |g: fn(&HeadEpoch) -> f64| Column::F64(rows.iter().map(|r| Some(g(r))).collect());
    let names: Vec<String> = keys.iter().map(|k| format!("valid_{k}")).collect();
    let mut cols = vec![
        (
            "epoch",
            Column::I64(rows.iter().map(|r| r.epoch as i64).collect()),
        ),
        (
            "steps",
            Column::I64(rows.iter().map(|r| r.steps as i64).collect()),
        ),
        ("lr", f(|r| r.lr)),
        ("train_loss", f(|r| r.train_loss)),
        ("valid_loss", f(|r| r.valid_loss)),
    ];
    for (k, name) in keys.iter().zip(&names) {
        cols.push((
            name.as_str(),
            Column::F64(rows.iter().map(|r| r.valid.get(*k).copied()).collect()),
        ));
    }
    cols.push((
        "improved",
        Column::Bool(rows.iter().map(|r| r.improved).collect()),
    ));
    write_parquet(path, cols)
}

fn write_predictions(
    path: &Path,
    cfg: &HeadConfig,
    split: &HeadSplit,
    p: &Prepared,
    probs: &[f64],
) -> Result<()> {
    let c = cfg.classes as usize;
    let predicted = if c == 1 {
        crate::scores::binary_predictions(probs)
    } else {
        crate::scores::argmax_predictions(probs, c)
    };
    let names: Vec<String> = (0..c).map(|k| format!("prob_{k}")).collect();
    let mut cols = vec![("row", Column::I64((0..p.labels_vec.len() as i64).collect()))];
    if let Some(keys) = &split.keys {
        cols.push(("key", Column::Str(keys.clone())));
    }
    cols.push(("label", Column::I64(p.labels_vec.clone())));
    if c == 1 {
        cols.push((
            "prob",
            Column::F64(probs.iter().map(|&v| Some(v)).collect()),
        ));
    } else {
        for (k, name) in names.iter().enumerate() {
            cols.push((
                name.as_str(),
                Column::F64(probs.iter().skip(k).step_by(c).map(|&v| Some(v)).collect()),
            ));
        }
    }
    cols.push(("predicted", Column::I64(predicted)));
    write_parquet(path, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_subset_is_deterministic_and_sized() {
        assert_eq!(label_subset(10, 1.0, 3), (0..10).collect::<Vec<_>>());
        let a = label_subset(1000, 0.1, 3);
        assert_eq!(a.len(), 100);
        assert_eq!(a, label_subset(1000, 0.1, 3));
        assert_ne!(a, label_subset(1000, 0.1, 4));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(label_subset(30, 0.01, 0).len(), 1); // max(1, round(0.3))
        assert_eq!(label_subset(250, 0.01, 0).len(), 2); // round(2.5) = 2, half to even
        assert_eq!(label_subset(350, 0.01, 0).len(), 4); // round(3.5) = 4
    }

    #[test]
    fn config_fills_missing_fields_and_rejects_unknown_ones() {
        let c: HeadConfig =
            serde_json::from_str(r#"{"head": "linear", "classes": 3, "label_fraction": 0.1}"#)
                .unwrap();
        assert_eq!(
            c,
            HeadConfig {
                label_fraction: 0.1,
                ..HeadConfig::new(HeadKind::Linear, 3)
            }
        );
        let back: HeadConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<HeadConfig>(r#"{"lr_max": 1}"#).is_err());
        assert_eq!(c.dropout_p(), 0.0);
        assert_eq!(HeadConfig::default().dropout_p(), 0.1);
        let probe = HeadConfig::mgca_linear_probe(3);
        assert_eq!(
            (probe.head, probe.dropout_p(), probe.weight_decay),
            (HeadKind::Linear, 0.0, 1e-6)
        );
        let bad = HeadConfig {
            label_fraction: 0.0,
            ..c
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("label_fraction"));
    }

    #[test]
    fn warmup_cosine_reaches_lr_then_decays_to_min() {
        let cfg = HeadConfig {
            epochs: 10,
            warmup_fraction: 0.1,
            lr: 1.0,
            min_lr: 0.0,
            ..HeadConfig::new(HeadKind::Linear, 2)
        };
        // 10 steps per epoch: 100 steps, 10 of warm-up.
        assert!((cfg.lr_at(0, 0, 10) - 0.1).abs() < 1e-15);
        assert!((cfg.lr_at(9, 0, 10) - 1.0).abs() < 1e-15);
        assert!((cfg.lr_at(10, 1, 10) - 1.0).abs() < 1e-15);
        assert!((cfg.lr_at(55, 5, 10) - 0.5).abs() < 1e-12);
        assert!(cfg.lr_at(99, 9, 10) < 1e-3);
        let orig = HeadConfig {
            schedule: HeadSchedule::OriginalPerEpochRestarts,
            ..cfg.clone()
        };
        // T_0 = int(0.4 · 100) = 40 epochs: over 10 epochs the rate stays near lr.
        assert_eq!(orig.lr_at(0, 0, 10), 1.0);
        assert_eq!(orig.lr_at(99, 0, 10), 1.0);
        assert!(orig.lr_at(95, 9, 10) > 0.6);
    }
}
