//! Training and evaluation of a decoder over a frozen backbone (and frozen adaptor): AdamW with a
//! per-step cosine schedule, model selection on validation Dice, test metrics at the selected
//! epoch. The frozen features are computed once per image and kept in memory (no augmentation,
//! nothing upstream of the decoder changes), unless `cache_features` is off.
//! The kept epoch and early stopping are `train::finetune::Selection` and the schedule is
//! `train::finetune::cosine`, the classification heads' own (one epoch-selection rule for both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{Field, Schema};
use serde::{Deserialize, Serialize};
use train::finetune::{cosine, Selection};
use train::optim::{AdamW, DecayPolicy};
use train::params::write_safetensors;
use train::rng::{derive_seed, permutation};
use train::Adaptor;

use super::augment::ShiftScaleRotate;
use super::cache::{Frozen, SplitFeatures};
use super::data::SegData;
use super::decoders::Decoder;
use super::features::SegBackbone;
use super::loss::SegLoss;
use super::metrics::{dice_per_image, DiceSummary};
use crate::encoder::{pick_device, Reporter};
use crate::error::{Error, Result};
use crate::preprocess::Normalize;

/// Everything a segmentation run needs besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegConfig {
    /// `resnet-ae` (→ U-Net) or `dinov2` (→ ViT decoder).
    pub backbone: String,
    /// The backbone folder (as for the encode stages).
    pub backbone_dir: PathBuf,
    /// A frozen adaptor checkpoint (`Adaptor::save` layout: `.safetensors` + `.json`); `None`
    /// is `no_adaptor` (backbone features straight into the decoder).
    pub adaptor: Option<PathBuf>,
    /// DINOv2 input normalisation: `imagenet` or `half` (the original's).
    pub normalize: String,
    /// Input side: 224 (RSNA) or 896 (SIIM); the U-Net also takes 448.
    pub crop: u32,
    pub batch_size: usize,
    pub epochs: usize,
    /// Stop after this many epochs without a better validation Dice.
    pub patience: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Floor of the cosine schedule (the original's `eta_min`).
    pub lr_min: f64,
    pub loss: SegLoss,
    /// U-Net at 448/896: share the repeated neck ConvT's weights (the original) or not.
    pub shared_neck: bool,
    pub seed: u64,
    /// `cpu`, `cuda` or `auto`.
    pub device: String,
    /// Keep the frozen features in memory (else recompute them for every batch).
    pub cache_features: bool,
    /// Training-image augmentation (the original's SIIM `ShiftScaleRotate`); the training
    /// features are then computed per batch from the transformed images. `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<ShiftScaleRotate>,
    /// Where cached features live: `None` in memory; `Some((budget, dir))` in memory while a
    /// split's features fit in `budget` bytes, else in row files under `dir` (the stage's scratch
    /// folder), gathered per batch. Not recorded: it never changes a result.
    #[serde(skip)]
    pub feature_store: Option<(u64, PathBuf)>,
}

impl SegConfig {
    /// The original's settings (reference D.2) for a backbone; crop 224.
    pub fn new(backbone: &str, backbone_dir: impl Into<PathBuf>) -> Self {
        SegConfig {
            backbone: backbone.to_string(),
            backbone_dir: backbone_dir.into(),
            adaptor: None,
            normalize: "imagenet".into(),
            crop: 224,
            batch_size: 4,
            epochs: 100,
            patience: 10,
            lr: 5e-4,
            weight_decay: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            lr_min: 1e-8,
            loss: SegLoss::default(),
            shared_neck: true,
            seed: 42,
            device: "cpu".into(),
            cache_features: true,
            augment: None,
            feature_store: None,
        }
    }

    /// The cosine schedule over all steps: `lr_min + (lr − lr_min)(1 + cos(π s/S))/2` at step `s`
    /// of `S` (the original stepped `CosineAnnealingWarmRestarts(T_0=100)` once per epoch).
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        cosine(self.lr, self.lr_min, step as f64 / total.max(1) as f64)
    }
}

/// One epoch of training and its validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegEpoch {
    pub epoch: usize,
    pub steps: u64,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub valid_dice: f64,
    pub valid_dice_positive: f64,
    pub improved: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegReport {
    /// `dice`, `dice_positive`, `empty_share`, `dice_all_empty_baseline` at the best epoch.
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    /// The untrained decoder's validation metrics.
    pub initial_valid: BTreeMap<String, f64>,
    /// 1-based; 0 when no epoch improved on the untrained decoder.
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub train_images: usize,
    pub trainable_params: i64,
    /// Seconds computing the frozen features (cache), and in total.
    pub feature_seconds: f64,
    pub seconds: f64,
}

/// Mean loss over batches and per-image Dice of a split, in evaluation mode.
fn evaluate(
    frozen: &Frozen,
    dec: &Decoder,
    f: &SplitFeatures,
    loss: &SegLoss,
    batch: usize,
) -> Result<(f64, DiceSummary)> {
    let _g = tch::no_grad_guard();
    let n = f.split.len();
    let all: Vec<usize> = (0..n).collect();
    let mut per_image = Vec::with_capacity(n);
    let (mut total, mut batches) = (0.0, 0usize);
    for idx in all.chunks(batch.max(1)) {
        let (x, t) = frozen.batch(f, idx)?;
        let logits = dec.forward(&x, false);
        total += loss.forward(&logits, &t).double_value(&[]);
        batches += 1;
        per_image.extend(dice_per_image(&logits, &t));
    }
    Ok((
        total / batches.max(1) as f64,
        DiceSummary::from_images(&per_image),
    ))
}

/// Trains a decoder on `data` and evaluates it; writes `decoder.safetensors`,
/// `metrics_epochs.parquet` and `curve.png` into `out_dir`.
pub fn train_segmenter(
    cfg: SegConfig,
    data: &SegData,
    out_dir: &Path,
    observer: &dyn Reporter,
) -> Result<SegReport> {
    let started = Instant::now();
    if cfg.crop != data.crop {
        return Err(Error::parameter(
            "crop",
            cfg.crop,
            format!("does not match the data, loaded at crop {}", data.crop),
        ));
    }
    if data.train.is_empty() || data.valid.is_empty() {
        return Err(Error::parameter(
            "images (train, valid)",
            format!("({}, {})", data.train.len(), data.valid.len()),
            "are too few: segmentation needs training and validation images",
        ));
    }
    if cfg.batch_size == 0 {
        return Err(Error::parameter("batch_size", 0, "must be at least 1"));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let device = pick_device(&cfg.device)?;
    let normalize = Normalize::parse(&cfg.normalize)
        .ok_or_else(|| Error::unknown("normalize", cfg.normalize.clone(), "imagenet or half"))?;
    let backbone = SegBackbone::load(&cfg.backbone_dir, &cfg.backbone, normalize, device)?;
    let adaptor = match &cfg.adaptor {
        Some(p) => Some(
            // train's errors name the file (`adaptor: <path>: ...`).
            Adaptor::from_checkpoint(p, device)?.0,
        ),
        None => None,
    };
    let dec = backbone.decoder(
        adaptor.as_ref(),
        cfg.crop,
        cfg.shared_neck,
        device,
        derive_seed(cfg.seed, "seg-decoder", 0),
    )?;
    let trainable = dec.trainable_params();
    observer.log(&format!(
        "segmentation: {} decoder, {trainable} trainable parameters, {} adaptor, crop {}, {} train / {} valid / {} test images",
        match cfg.backbone.as_str() { "resnet-ae" => "U-Net", _ => "ViT" },
        if adaptor.is_some() { "frozen" } else { "no" },
        cfg.crop,
        data.train.len(),
        data.valid.len(),
        data.test.len()
    ));
    let frozen = Frozen {
        backbone: &backbone,
        adaptor: adaptor.as_ref(),
        crop: cfg.crop,
        device,
        store: cfg.feature_store.clone(),
    };
    let t0 = Instant::now();
    let chunk = cfg.batch_size.max(8);
    // Augmented training images change every epoch: their features cannot be cached.
    let train_f = frozen.prepare(
        &data.train,
        cfg.cache_features && cfg.augment.is_none(),
        chunk,
        "train",
    )?;
    let valid_f = frozen.prepare(&data.valid, cfg.cache_features, chunk, "valid")?;
    let test_f = frozen.prepare(&data.test, cfg.cache_features, chunk, "test")?;
    let feature_seconds = t0.elapsed().as_secs_f64();
    if cfg.cache_features {
        observer.log(&format!(
            "frozen features of {} images in {feature_seconds:.1} s",
            data.train.len() + data.valid.len() + data.test.len()
        ));
    }

    let mut opt = AdamW::new(
        &dec.state.params,
        cfg.betas,
        cfg.eps,
        cfg.weight_decay,
        DecayPolicy::All,
    );
    let n = data.train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let (init_loss, init) = evaluate(&frozen, &dec, &valid_f, &cfg.loss, cfg.batch_size)?;
    observer.log(&format!(
        "untrained: valid loss {init_loss:.4}, dice {:.4}, dice_positive {:.4}",
        init.dice, init.dice_positive
    ));
    // The untrained decoder is the starting point an epoch must beat (min_delta 0).
    let mut selection = Selection::from_initial(
        init.dice,
        (dec.state.snapshot(), init),
        Some(cfg.patience),
        0.0,
    );
    let mut epochs: Vec<SegEpoch> = Vec::new();
    let mut step = 0u64;
    for epoch in 1..=cfg.epochs {
        if observer.cancelled() {
            return Err(Error::Cancelled);
        }
        let order = permutation(derive_seed(cfg.seed, "seg-shuffle", epoch as u64), n);
        let order: Vec<usize> = order.into_iter().map(|i| i as usize).collect();
        let (mut loss_sum, mut lr) = (0.0, cfg.lr);
        for idx in order.chunks(cfg.batch_size) {
            let (x, t) = match &cfg.augment {
                Some(aug) => {
                    frozen.augmented_batch(&data.train, idx, aug, cfg.seed, epoch as u64)?
                }
                None => frozen.batch(&train_f, idx)?,
            };
            let logits = dec.forward(&x, true);
            let loss = cfg.loss.forward(&logits, &t);
            opt.zero_grad();
            loss.backward();
            lr = cfg.lr_at(step, total_steps);
            opt.step(lr);
            step += 1;
            loss_sum += loss.double_value(&[]);
        }
        let (valid_loss, v) = evaluate(&frozen, &dec, &valid_f, &cfg.loss, cfg.batch_size)?;
        let improved = selection.record(epoch, v.dice, || (dec.state.snapshot(), v));
        let row = SegEpoch {
            epoch,
            steps: step,
            lr,
            train_loss: loss_sum / steps_per_epoch as f64,
            valid_loss,
            valid_dice: v.dice,
            valid_dice_positive: v.dice_positive,
            improved,
            seconds: started.elapsed().as_secs_f64(),
        };
        observer.log(&format!(
            "epoch {epoch}: train loss {:.4}, valid loss {valid_loss:.4}, dice {:.4}, dice_positive {:.4}{}",
            row.train_loss,
            v.dice,
            v.dice_positive,
            if improved { " (best)" } else { "" }
        ));
        observer.progress(epoch as u64, cfg.epochs as u64, "epochs");
        epochs.push(row);
        if selection.exhausted() {
            observer.log(&format!(
                "stopping: no better validation Dice for {} epochs",
                cfg.patience
            ));
            break;
        }
    }
    let (best_epoch, _, (snap, valid_best)) = selection
        .into_best()
        .expect("starts from the untrained decoder");
    dec.state.restore(&snap);
    let (_, test) = evaluate(&frozen, &dec, &test_f, &cfg.loss, cfg.batch_size)?;

    // The config without the folders it read from: they say where the store and the backbone
    // live, which no artifact may depend on (their contents are in the key); the names stay.
    fn name_only(p: &Path) -> PathBuf {
        PathBuf::from(p.file_name().unwrap_or_default())
    }
    let mut recorded = cfg.clone();
    recorded.backbone_dir = name_only(&cfg.backbone_dir);
    recorded.adaptor = cfg.adaptor.as_deref().map(name_only);
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "segmentation.config".to_string(),
            serde_json::to_string(&recorded).expect("config serialises"),
        ),
        (
            "segmentation.best_epoch".to_string(),
            best_epoch.to_string(),
        ),
    ]);
    let out_err = |p: &Path, e: &dyn std::fmt::Display| Error::file(p, e.to_string());
    let dec_path = out_dir.join("decoder.safetensors");
    write_safetensors(&dec_path, &snap, &meta).map_err(|e| out_err(&dec_path, &e))?;
    write_epochs(&out_dir.join("metrics_epochs.parquet"), &epochs)?;
    let curve = out_dir.join("curve.png");
    super::plot::curve(
        &curve,
        &epochs,
        (init_loss, init.dice, init.dice_positive),
        valid_best.dice_all_empty_baseline,
        &format!("segmentation: {} decoder, crop {}", cfg.backbone, cfg.crop),
    )
    .map_err(|e| out_err(&curve, &e))?;
    Ok(SegReport {
        valid: valid_best.to_map(),
        test: test.to_map(),
        initial_valid: init.to_map(),
        best_epoch,
        epochs_run: epochs.len(),
        train_images: n,
        trainable_params: trainable,
        feature_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `metrics_epochs.parquet`: one row per epoch.
fn write_epochs(path: &Path, rows: &[SegEpoch]) -> Result<()> {
    let f = |g: fn(&SegEpoch) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from(rows.iter().map(g).collect::<Vec<_>>()))
    };
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "epoch",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.epoch as i64).collect::<Vec<_>>(),
            )),
        ),
        (
            "steps",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.steps as i64).collect::<Vec<_>>(),
            )),
        ),
        ("lr", f(|r| r.lr)),
        ("train_loss", f(|r| r.train_loss)),
        ("valid_loss", f(|r| r.valid_loss)),
        ("valid_dice", f(|r| r.valid_dice)),
        ("valid_dice_positive", f(|r| r.valid_dice_positive)),
        (
            "improved",
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.improved).collect::<Vec<_>>(),
            )),
        ),
        ("seconds", f(|r| r.seconds)),
    ];
    let schema = Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    );
    let err = |e: &dyn std::fmt::Display| Error::table(path, e.to_string());
    let batch = RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|c| c.1).collect())
        .map_err(|e| err(&e))?;
    artifacts::portable::write_table(path, &batch, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_runs_from_lr_to_the_floor() {
        let c = SegConfig::new("dinov2", "x");
        assert_eq!(c.lr_at(0, 100), 5e-4);
        assert!((c.lr_at(50, 100) - (1e-8 + (5e-4 - 1e-8) / 2.0)).abs() < 1e-15);
        assert!((c.lr_at(100, 100) - 1e-8).abs() < 1e-18);
    }
}
