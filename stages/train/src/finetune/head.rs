//! Training one classification head on cached features (reference D.1): the label-fraction
//! subset, AdamW with the configured schedule, epoch selection on the validation metric with
//! early stopping, and test scores of the selected epoch only.

use std::collections::BTreeMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::outputs::{write_epochs, write_predictions};
use super::{
    HeadConfig, Selection, HEAD_CHECKPOINT, HEAD_CURVE, HEAD_EPOCH_METRICS, HEAD_REPORT,
    PREDICTIONS,
};

use crate::error::{io_err, Error, Result};
use crate::heads::{decays, ClassificationHead, HeadKind};
use crate::optim::AdamW;
use crate::plot::{head_curve, HeadCurvePoint};
use crate::pretrain::{Silent, StopReason, TORCH_RNG};
use crate::rng::{derive_seed, permutation};
use crate::scores::classification_scores;

/// Rows per forward pass when evaluating (evaluation is per sample, so this only bounds memory).
const EVAL_CHUNK: i64 = 8192;

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

/// A split moved to the device, checked.
pub(super) struct Prepared {
    pub(super) features: Tensor,
    pub(super) labels: Tensor,
    pub(super) labels_vec: Vec<i64>,
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

    let rows = crate::rng::label_subset(
        data.train.len(),
        cfg.label_fraction,
        cfg.seed,
        crate::rng::LabelStream::Classify,
    );
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
    let mut selection = Selection::new(cfg.patience, cfg.min_delta);
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
                return Err(Error::NonFiniteLoss {
                    loss: l,
                    step,
                    epoch: epoch + 1,
                });
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
        let improved = selection.record(epoch + 1, value, || head.state_dict());
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
        if selection.exhausted() {
            observer.log(&format!(
                "early stop after epoch {}: validation {metric} has not beaten {:.6} by {} for {} epochs",
                epoch + 1,
                selection.patience_best(),
                cfg.min_delta,
                selection.without_improvement()
            ));
            stop = StopReason::EarlyStopped;
            break;
        }
    }

    let (best_epoch, _, weights) = selection.into_best().expect("at least one epoch ran");
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
