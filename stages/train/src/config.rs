//! Model and training configuration, serialised as JSON beside every checkpoint. Defaults are the
//! original's values (reference section A.1) except where the issue asks for a fix; each fix has
//! an `original_*` switch that restores the original behaviour.

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Error, Result};

/// Which Adaptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The original module, exactly (reference A.2): pooled vectors, shared post-LN layers whose
    /// "cross-attention" attends over length-one sequences.
    Original,
    /// Token-level cross-modal fusion (docs/adaptor.md).
    Fusion,
}

/// The fusion variant's sizes (docs/adaptor.md, "The fusion variant").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FusionConfig {
    /// Width of the token streams and of the output embedding.
    pub d_model: i64,
    pub heads: i64,
    pub ff: i64,
    /// Unimodal (self-attention) layers per modality, before fusion.
    pub unimodal_layers: i64,
    /// Co-attention layers (text ← image and image ← text, in parallel).
    pub fusion_layers: i64,
    /// Weight of the image–text matching loss next to the contrastive loss.
    pub itm_weight: f64,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            d_model: 512,
            heads: 8,
            ff: 1536,
            unimodal_layers: 1,
            fusion_layers: 1,
            itm_weight: 1.0,
        }
    }
}

/// The model. For `original` the defaults are the reference's A.1 values; `vision_dim` is the
/// vision backbone's output width (resnet-ae 512, dinov2-s 384, dinov2-b 768).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptorConfig {
    pub variant: Variant,
    pub vision_dim: i64,
    #[serde(default = "d768")]
    pub text_dim: i64,
    /// `projection_dim` of the original (= the layers' d_model).
    #[serde(default = "d768")]
    pub projection_dim: i64,
    #[serde(default = "two")]
    pub layers: i64,
    #[serde(default = "twelve")]
    pub heads: i64,
    #[serde(default = "ff2048")]
    pub ff: i64,
    #[serde(default = "p01")]
    pub dropout: f64,
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    /// ln(1/0.07); learnable, `exp()` applied, never clamped (as the original).
    #[serde(default = "logit_scale_init")]
    pub logit_scale_init: f64,
    /// Weight of the text→image term of the InfoNCE loss (A.3): 0.75.
    #[serde(default = "image_weight")]
    pub image_weight: f64,
    #[serde(default)]
    pub fusion: FusionConfig,
}

fn d768() -> i64 {
    768
}
fn two() -> i64 {
    2
}
fn twelve() -> i64 {
    12
}
fn ff2048() -> i64 {
    2048
}
fn p01() -> f64 {
    0.1
}
fn ln_eps() -> f64 {
    1e-5
}
fn logit_scale_init() -> f64 {
    (1.0f64 / 0.07).ln()
}
fn image_weight() -> f64 {
    0.75
}

impl AdaptorConfig {
    /// The original module for a vision backbone of width `vision_dim`.
    pub fn original(vision_dim: i64) -> Self {
        AdaptorConfig {
            variant: Variant::Original,
            vision_dim,
            text_dim: 768,
            projection_dim: 768,
            layers: 2,
            heads: 12,
            ff: 2048,
            dropout: 0.1,
            layer_norm_eps: 1e-5,
            logit_scale_init: logit_scale_init(),
            image_weight: 0.75,
            fusion: FusionConfig::default(),
        }
    }

    /// The fusion variant with its default sizes.
    pub fn fusion(vision_dim: i64) -> Self {
        AdaptorConfig {
            variant: Variant::Fusion,
            ..Self::original(vision_dim)
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vision_dim <= 0 || self.text_dim <= 0 {
            return bad("`vision_dim` and `text_dim` must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("`dropout` = {} is not in [0, 1)", self.dropout));
        }
        if !(0.0..=1.0).contains(&self.image_weight) {
            return bad(format!(
                "`image_weight` = {} is not in [0, 1]",
                self.image_weight
            ));
        }
        match self.variant {
            Variant::Original => {
                if self.layers < 1 || self.projection_dim % self.heads != 0 {
                    return bad(format!(
                        "`layers` must be ≥ 1 and `projection_dim` ({}) divisible by `heads` ({})",
                        self.projection_dim, self.heads
                    ));
                }
            }
            Variant::Fusion => {
                let f = &self.fusion;
                if f.d_model % f.heads != 0 || f.unimodal_layers < 0 || f.fusion_layers < 1 {
                    return bad(format!(
                        "fusion: `d_model` ({}) must be divisible by `heads` ({}), \
                         `unimodal_layers` ≥ 0 and `fusion_layers` ≥ 1",
                        f.d_model, f.heads
                    ));
                }
            }
        }
        Ok(())
    }

    /// Width of the embeddings the model outputs.
    pub fn embed_dim(&self) -> i64 {
        match self.variant {
            Variant::Original => self.projection_dim,
            Variant::Fusion => self.fusion.d_model,
        }
    }
}

/// Arithmetic precision of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    /// Matrix products in bfloat16, everything else (norms, softmax, loss, optimizer, master
    /// weights) in float32: what `torch.autocast(dtype=bfloat16)` does for this model. GPU only.
    Bf16,
}

/// Everything that determines a training run's result. Saved as JSON in every checkpoint folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: AdaptorConfig,
    /// AdamW learning rate (the original's runs: 2e-5).
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Linear warm-up over this fraction of all steps (`int(fraction · steps)`, as the original),
    /// then linear decay to zero.
    pub warmup_fraction: f64,
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub precision: Precision,
    /// Early stopping: stop after this many epochs without a validation improvement larger than
    /// `min_delta`. `None` trains all epochs.
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// Drop the last partial batch of each epoch (the original keeps it).
    pub drop_last: bool,
    /// The original applies weight decay 0.01 to every parameter, LayerNorm, biases and the
    /// logit scale included (A.1, G.9). Default: no decay on those.
    pub original_weight_decay: bool,
    /// The original's scheduler is also stepped once per epoch by Lightning (A.1, G.8), so in
    /// epoch `e` the schedule is `e` steps ahead. Default: per-step only.
    pub original_scheduler_stepping: bool,
    /// The original shuffles once (G.10): numpy's `seed(42)` permutation of the training rows,
    /// the same batches every epoch ([`crate::rng::original_order`]). Default: a fresh
    /// permutation every epoch, from the seed.
    pub original_no_shuffle: bool,
}

impl TrainConfig {
    /// The original's hyper-parameters (A.1) with the fixes on: lr 2e-5, batch 1024, 50 epochs,
    /// AdamW (0.9, 0.999, 1e-8, wd 0.01), warm-up 2 %, seed 42, patience 10 / min_delta 1e-5.
    pub fn new(model: AdaptorConfig) -> Self {
        TrainConfig {
            model,
            lr: 2e-5,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            batch_size: 1024,
            epochs: 50,
            warmup_fraction: 0.02,
            seed: 42,
            device: "cpu".into(),
            precision: Precision::Fp32,
            patience: Some(10),
            min_delta: 1e-5,
            drop_last: false,
            original_weight_decay: false,
            original_scheduler_stepping: false,
            original_no_shuffle: false,
        }
    }

    /// All three `original_*` switches on: the original's training defects, for a reproduction.
    pub fn with_original_defects(mut self) -> Self {
        self.original_weight_decay = true;
        self.original_scheduler_stepping = true;
        self.original_no_shuffle = true;
        self
    }

    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |m: String| Err(Error::Config(m));
        if self.batch_size < 2 {
            return bad(format!(
                "`batch_size` = {}: a contrastive batch needs at least 2 pairs",
                self.batch_size
            ));
        }
        if self.epochs == 0 {
            return bad("`epochs` must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("`lr` = {} must be positive", self.lr));
        }
        let adamw = (self.betas, self.eps, self.weight_decay);
        check_adamw(adamw, self.min_delta, self.warmup_fraction)?;
        let device = self.device()?;
        if self.precision == Precision::Bf16 && !device.is_cuda() {
            return bad("`precision = bf16` needs a CUDA device (on CPU use fp32)".into());
        }
        if device.is_cuda() && !tch::Cuda::is_available() {
            return bad(format!(
                "`device = {}` but CUDA is not available",
                self.device
            ));
        }
        Ok(())
    }
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                Error::Config(format!("`device` = `{s}`: expected cpu, cuda or cuda:N"))
            }),
    }
}

/// The optimizer settings pre-training and head training share: AdamW's `betas` in [0, 1), a
/// positive `eps`, non-negative `weight_decay` and `min_delta` (early stopping), and a
/// `warmup_fraction` in [0, 1).
pub(crate) fn check_adamw(
    (betas, eps, weight_decay): ((f64, f64), f64, f64),
    min_delta: f64,
    warmup_fraction: f64,
) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    if !(0.0..1.0).contains(&betas.0) || !(0.0..1.0).contains(&betas.1) {
        return bad(format!("`betas` = {betas:?} must lie in [0, 1)"));
    }
    if eps <= 0.0 || weight_decay < 0.0 || min_delta < 0.0 {
        return bad("`eps` must be positive, `weight_decay` and `min_delta` non-negative".into());
    }
    if !(0.0..1.0).contains(&warmup_fraction) {
        return bad(format!(
            "`warmup_fraction` = {warmup_fraction} must lie in [0, 1)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_json_with_defaults() {
        let c = TrainConfig::new(AdaptorConfig::original(512));
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&s).unwrap(), c);
        let m: AdaptorConfig =
            serde_json::from_str(r#"{"variant": "original", "vision_dim": 384}"#).unwrap();
        assert_eq!(m, AdaptorConfig::original(384));
        assert!((m.logit_scale_init - 2.659_260_036_932_778).abs() < 1e-15);
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let mut c = TrainConfig::new(AdaptorConfig::original(512));
        c.precision = Precision::Bf16;
        assert!(c.validate().unwrap_err().to_string().contains("bf16"));
        c.precision = Precision::Fp32;
        c.device = "tpu".into();
        assert!(c.validate().unwrap_err().to_string().contains("device"));
        c.device = "cpu".into();
        c.batch_size = 1;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
    }
}
