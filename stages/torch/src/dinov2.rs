//! DINOv2 ViTs in transformers' `Dinov2Model` layout (`facebook/dinov2-small`, `-base`), as
//! transformers computes them: patch embedding, CLS token, position embeddings interpolated
//! bicubically to the input's patch grid (transformers' `interpolate_pos_encoding`), pre-norm
//! blocks with LayerScale, final LayerNorm. Outputs: the CLS token after the final norm (the
//! original's embedding, reference B.1) and the patch tokens.

use std::cell::RefCell;
use std::path::Path;

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use crate::bert::{float_field, int_field, read_config_json};
use crate::error::{shape_str, Error, Result};
use crate::nn::{Activation, LayerNorm, Linear, LoadLayerNorm, LoadLinear, Mode};
use crate::weights::Weights;

pub const MODEL_TYPES: &[&str] = &["dinov2"];

#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub mlp_ratio: f64,
    pub patch_size: i64,
    pub image_size: i64,
    pub num_channels: i64,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub qkv_bias: bool,
}

impl Dinov2Config {
    pub fn load(dir: &Path) -> Result<Self> {
        let (path, m) = read_config_json(dir)?;
        let model_type = m.get("model_type").and_then(Json::as_str).unwrap_or("");
        if !MODEL_TYPES.contains(&model_type) {
            return Err(Error::UnknownModelType {
                path,
                found: model_type.to_string(),
                supported: MODEL_TYPES.join(", "),
            });
        }
        if m.get("use_swiglu_ffn").and_then(Json::as_bool) == Some(true) {
            return Err(Error::file(
                &path,
                "use_swiglu_ffn (DINOv2-giant) is not supported; use dinov2-small or -base",
            ));
        }
        let act = m.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu");
        let hidden_act = Activation::parse(act)
            .ok_or_else(|| Error::file(&path, format!("hidden_act `{act}` is not supported")))?;
        let c = Dinov2Config {
            hidden_size: int_field(&path, &m, "hidden_size", 768)?,
            num_hidden_layers: int_field(&path, &m, "num_hidden_layers", 12)?,
            num_attention_heads: int_field(&path, &m, "num_attention_heads", 12)?,
            mlp_ratio: float_field(&path, &m, "mlp_ratio", 4.0)?,
            patch_size: int_field(&path, &m, "patch_size", 14)?,
            image_size: int_field(&path, &m, "image_size", 518)?,
            num_channels: int_field(&path, &m, "num_channels", 3)?,
            layer_norm_eps: float_field(&path, &m, "layer_norm_eps", 1e-6)?,
            hidden_act,
            qkv_bias: m.get("qkv_bias").and_then(Json::as_bool).unwrap_or(true),
        };
        if c.num_attention_heads == 0
            || c.hidden_size % c.num_attention_heads != 0
            || c.patch_size == 0
        {
            return Err(Error::file(
                &path,
                "inconsistent hidden_size / num_attention_heads / patch_size",
            ));
        }
        Ok(c)
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
}

pub struct Dinov2Model {
    pub config: Dinov2Config,
    patch_w: Tensor,
    patch_b: Tensor,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    device: Device,
    kind: Kind,
    /// The position embeddings interpolated for the last input size (pixels).
    pos_cache: RefCell<Option<((i64, i64), Tensor)>>,
}

impl Dinov2Model {
    pub fn new(config: Dinov2Config, w: &Weights, device: Device, kind: Kind) -> Result<Self> {
        let d = config.hidden_size;
        let p = config.patch_size;
        let grid = config.image_size / p;
        let hidden = (d as f64 * config.mlp_ratio) as i64;
        let eps = config.layer_norm_eps;
        let mut blocks = Vec::new();
        for l in 0..config.num_hidden_layers {
            let b = format!("encoder.layer.{l}");
            // The published layout (attention.attention.query) and transformers 5's in-memory
            // names (attention.q_proj) are both accepted.
            let q = Linear::load_any(
                w,
                &[
                    &format!("{b}.attention.attention.query"),
                    &format!("{b}.attention.q_proj"),
                ],
                d,
                d,
                config.qkv_bias,
            )?;
            let k = Linear::load_any(
                w,
                &[
                    &format!("{b}.attention.attention.key"),
                    &format!("{b}.attention.k_proj"),
                ],
                d,
                d,
                config.qkv_bias,
            )?;
            let v = Linear::load_any(
                w,
                &[
                    &format!("{b}.attention.attention.value"),
                    &format!("{b}.attention.v_proj"),
                ],
                d,
                d,
                config.qkv_bias,
            )?;
            blocks.push(Block {
                norm1: LayerNorm::load(w, &format!("{b}.norm1"), d, eps)?,
                qkv: Linear::stack(&[q, k, v]),
                proj: Linear::load_any(
                    w,
                    &[
                        &format!("{b}.attention.output.dense"),
                        &format!("{b}.attention.o_proj"),
                    ],
                    d,
                    d,
                    true,
                )?,
                ls1: w.get(&format!("{b}.layer_scale1.lambda1"), &[d])?,
                norm2: LayerNorm::load(w, &format!("{b}.norm2"), d, eps)?,
                fc1: Linear::load(w, &format!("{b}.mlp.fc1"), hidden, d, true)?,
                fc2: Linear::load(w, &format!("{b}.mlp.fc2"), d, hidden, true)?,
                ls2: w.get(&format!("{b}.layer_scale2.lambda1"), &[d])?,
            });
        }
        Ok(Dinov2Model {
            patch_w: w.get(
                "embeddings.patch_embeddings.projection.weight",
                &[d, config.num_channels, p, p],
            )?,
            patch_b: w.get("embeddings.patch_embeddings.projection.bias", &[d])?,
            cls: w.get("embeddings.cls_token", &[1, 1, d])?,
            pos: w.get("embeddings.position_embeddings", &[1, 1 + grid * grid, d])?,
            blocks,
            norm: LayerNorm::load(w, "layernorm", d, eps)?,
            config,
            device,
            kind,
            pos_cache: RefCell::new(None),
        })
    }

    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = Dinov2Config::load(dir)?;
        let mut w = Weights::load_dir(dir)?.with_target(device, kind);
        w.strip_prefix("dinov2.");
        Self::new(config, &w, device, kind)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// transformers' `interpolate_pos_encoding`: unchanged when the patch count and the pixel
    /// aspect match the pre-training grid, else bicubic (align_corners=False) in float32 to
    /// `(H // patch, W // patch)`.
    fn position_embeddings(&self, height: i64, width: i64) -> Tensor {
        if let Some((size, t)) = self.pos_cache.borrow().as_ref() {
            if *size == (height, width) {
                return t.shallow_clone();
            }
        }
        let p = self.config.patch_size;
        let num_positions = self.pos.size()[1] - 1;
        let (nh, nw) = (height / p, width / p);
        let t = if nh * nw == num_positions && height == width {
            self.pos.shallow_clone()
        } else {
            let d = self.config.hidden_size;
            let s = (num_positions as f64).sqrt() as i64;
            let cls_pos = self.pos.narrow(1, 0, 1);
            let patch = self
                .pos
                .narrow(1, 1, num_positions)
                .reshape([1, s, s, d])
                .permute([0, 3, 1, 2])
                .to_kind(Kind::Float)
                .upsample_bicubic2d([nh, nw], false, None, None)
                .to_kind(self.kind)
                .permute([0, 2, 3, 1])
                .reshape([1, nh * nw, d]);
            Tensor::cat(&[cls_pos, patch], 1)
        };
        *self.pos_cache.borrow_mut() = Some(((height, width), t.shallow_clone()));
        t
    }

    /// `pixels: [B, C, H, W]` → (CLS after the final norm `[B, D]`, patch tokens `[B, N, D]`).
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let size = pixels.size();
        let (c, h, wd) = (size[1], size[2], size[3]);
        if c != self.config.num_channels
            || h < self.config.patch_size
            || wd < self.config.patch_size
        {
            return Err(Error::InputShape {
                model: "DINOv2",
                expected: format!(
                    "[B, {}, H, W] with H, W at least {} px",
                    self.config.num_channels, self.config.patch_size
                ),
                found: shape_str(&size),
            });
        }
        let b = size[0];
        let d = self.config.hidden_size;
        let p = self.config.patch_size;
        let x = pixels
            .to_device(self.device)
            .to_kind(self.kind)
            .conv2d(
                &self.patch_w,
                Some(&self.patch_b),
                [p, p],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, 3)
            .transpose(1, 2);
        let x = Tensor::cat(&[self.cls.expand([b, 1, d], false), x], 1);
        let mut x = x + self.position_embeddings(h, wd);
        let heads = self.config.num_attention_heads;
        let hd = d / heads;
        let n = x.size()[1];
        for blk in &self.blocks {
            let y = blk.norm1.forward(&x);
            let qkv = blk
                .qkv
                .forward(&y, Mode::EVAL)
                .view([b, n, 3, heads, hd])
                .permute([2, 0, 3, 1, 4]);
            let a = Tensor::scaled_dot_product_attention::<Tensor>(
                &qkv.get(0),
                &qkv.get(1),
                &qkv.get(2),
                None,
                0.0,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .reshape([b, n, d]);
            x = blk.proj.forward(&a, Mode::EVAL) * &blk.ls1 + &x;
            let y = blk.norm2.forward(&x);
            let y = blk.fc2.forward(
                &self
                    .config
                    .hidden_act
                    .apply(&blk.fc1.forward(&y, Mode::EVAL)),
                Mode::EVAL,
            );
            x = y * &blk.ls2 + &x;
        }
        let x = self.norm.forward(&x);
        Ok((x.select(1, 0), x.narrow(1, 1, n - 1)))
    }
}
