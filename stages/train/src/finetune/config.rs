//! What decides a head-training run ([`HeadConfig`]) and its learning-rate schedules.

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::{check_adamw, parse_device};
use crate::error::{Error, Result};
use crate::heads::HeadKind;

use super::cosine;

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
        let adamw = (self.betas, self.eps, self.weight_decay);
        check_adamw(adamw, self.min_delta, self.warmup_fraction)?;
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
                    cosine(self.lr, self.min_lr, progress)
                }
            }
            HeadSchedule::OriginalPerEpochRestarts => {
                let t0 = ((0.4 * total as f64) as u64).max(1);
                let t = (epoch as u64 % t0) as f64 / t0 as f64;
                cosine(self.lr, self.min_lr, t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
