//! The fusion variant: token-level cross-modal attention within about the original's budget
//! (docs/adaptor.md, "The fusion variant").
//!
//! Image patch tokens and text token states are projected to `d`, each modality runs pre-LN
//! self-attention layers (its *unimodal* stream), then co-attention layers in which text tokens
//! attend to image tokens and image tokens attend to text tokens (masks respected). The
//! contrastive loss uses the pooled unimodal streams: pooling the *fused* streams of a pair would
//! let each side copy its partner and make the InfoNCE task trivial (and retrieval impossible,
//! since a query has no partner at test time). The fused streams are trained with image–text
//! matching on in-batch hard negatives (ALBEF, Li et al. 2021), whose gradients reach the
//! projections and unimodal layers through the cross-attention.

use tch::{Kind, Tensor};

use crate::config::AdaptorConfig;
use crate::error::{Error, Result};
use crate::loss::{clip_loss, logits_per_text};
use crate::nn::{l2_normalize, masked_mean, LayerNorm, Linear, Mode, MultiheadAttention};
use crate::params::{Init, ParamStore};

/// Pre-LN block: `x = x + drop(attn(LN_q(x), LN_kv(m)))`, `x = x + drop(FFN(LN(x)))`. With no
/// `norm_kv` it is self-attention.
struct PreLnBlock {
    norm_q: LayerNorm,
    norm_kv: Option<LayerNorm>,
    attn: MultiheadAttention,
    norm2: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    dropout: f64,
}

impl PreLnBlock {
    fn new(ps: &mut ParamStore, prefix: &str, cfg: &AdaptorConfig, cross: bool, seed: u64) -> Self {
        let f = &cfg.fusion;
        let (d, eps) = (f.d_model, cfg.layer_norm_eps);
        PreLnBlock {
            norm_q: LayerNorm::new(ps, &format!("{prefix}.norm_q"), d, eps, seed),
            norm_kv: cross.then(|| LayerNorm::new(ps, &format!("{prefix}.norm_kv"), d, eps, seed)),
            attn: MultiheadAttention::new(
                ps,
                &format!("{prefix}.attn"),
                d,
                f.heads,
                cfg.dropout,
                seed,
            ),
            norm2: LayerNorm::new(ps, &format!("{prefix}.norm2"), d, eps, seed),
            linear1: Linear::new(ps, &format!("{prefix}.linear1"), d, f.ff, true, seed),
            linear2: Linear::new(ps, &format!("{prefix}.linear2"), f.ff, d, true, seed),
            dropout: cfg.dropout,
        }
    }

    /// `x [B, Lq, d]` attends to `memory [B, Lk, d]` (itself when `memory` is `None`), whose
    /// padding `memory_mask [B, Lk]` is hidden.
    fn forward(
        &self,
        x: &Tensor,
        memory: Option<&Tensor>,
        memory_mask: &Tensor,
        mode: Mode,
    ) -> Tensor {
        let q = self.norm_q.forward(x);
        let kv = match (memory, &self.norm_kv) {
            (Some(m), Some(norm)) => norm.forward(m),
            (None, None) => q.shallow_clone(),
            _ => unreachable!("self blocks take no memory, cross blocks need one"),
        };
        let a = self.attn.forward(&q, &kv, Some(memory_mask), mode);
        let x = x + mode.dropout(&a, self.dropout);
        let h = self.linear1.forward(&self.norm2.forward(&x), mode).relu();
        let h = self.linear2.forward(&mode.dropout(&h, self.dropout), mode);
        &x + mode.dropout(&h, self.dropout)
    }
}

/// One modality's unimodal stream: projection, self-attention blocks, final LayerNorm.
struct Stream {
    proj: Linear,
    blocks: Vec<PreLnBlock>,
    norm: LayerNorm,
}

impl Stream {
    fn new(
        ps: &mut ParamStore,
        name: &str,
        input_dim: i64,
        cfg: &AdaptorConfig,
        seed: u64,
    ) -> Self {
        let f = &cfg.fusion;
        Stream {
            proj: Linear::new(
                ps,
                &format!("{name}.proj"),
                input_dim,
                f.d_model,
                true,
                seed,
            ),
            blocks: (0..f.unimodal_layers)
                .map(|i| PreLnBlock::new(ps, &format!("{name}.layers.{i}"), cfg, false, seed))
                .collect(),
            norm: LayerNorm::new(
                ps,
                &format!("{name}.norm"),
                f.d_model,
                cfg.layer_norm_eps,
                seed,
            ),
        }
    }

    fn forward(&self, tokens: &Tensor, mask: &Tensor, mode: Mode) -> Tensor {
        // Padding may hold anything (even NaN); zero it so it cannot leak through 0 · x.
        let tokens = tokens.masked_fill(&mask.logical_not().unsqueeze(-1), 0.0);
        let mut x = self.proj.forward(&tokens, mode);
        for b in &self.blocks {
            x = b.forward(&x, None, mask, mode);
        }
        self.norm.forward(&x)
    }
}

/// The unimodal token streams of a batch (what the fusion layers consume).
pub struct Streams {
    pub image: Tensor,
    pub image_mask: Tensor,
    pub text: Tensor,
    pub text_mask: Tensor,
}

pub struct FusionAdaptor {
    pub cfg: AdaptorConfig,
    image: Stream,
    text: Stream,
    /// Per fusion layer: (image ← text, text ← image).
    fusion: Vec<(PreLnBlock, PreLnBlock)>,
    fused_image_norm: LayerNorm,
    fused_text_norm: LayerNorm,
    itm_head: Linear,
    pub logit_scale: Tensor,
}

/// What a training forward pass gives.
pub struct FusionOutput {
    pub contrastive: Tensor,
    /// Image–text matching loss (absent for a batch of one: no negatives).
    pub itm: Option<Tensor>,
    pub image: Tensor,
    pub text: Tensor,
    pub logits_per_text: Tensor,
}

impl FusionAdaptor {
    pub fn new(ps: &mut ParamStore, cfg: &AdaptorConfig, seed: u64) -> Self {
        let d = cfg.fusion.d_model;
        let eps = cfg.layer_norm_eps;
        let image = Stream::new(ps, "image", cfg.vision_dim, cfg, seed);
        let text = Stream::new(ps, "text", cfg.text_dim, cfg, seed);
        let fusion = (0..cfg.fusion.fusion_layers)
            .map(|i| {
                (
                    PreLnBlock::new(ps, &format!("fusion.{i}.image_from_text"), cfg, true, seed),
                    PreLnBlock::new(ps, &format!("fusion.{i}.text_from_image"), cfg, true, seed),
                )
            })
            .collect();
        FusionAdaptor {
            cfg: cfg.clone(),
            image,
            text,
            fusion,
            fused_image_norm: LayerNorm::new(ps, "fused_image_norm", d, eps, seed),
            fused_text_norm: LayerNorm::new(ps, "fused_text_norm", d, eps, seed),
            itm_head: Linear::new(ps, "itm_head", 2 * d, 2, true, seed),
            logit_scale: ps.add(
                "logit_scale",
                &[],
                Init::constant(cfg.logit_scale_init),
                seed,
            ),
        }
    }

    fn check(&self, x: &Tensor, mask: &Tensor, dim: i64, what: &str) -> Result<()> {
        let s = x.size();
        if s.len() != 3 || s[2] != dim || mask.size() != s[..2] {
            return Err(Error::InputShape {
                what: format!("{what} tokens"),
                found: format!("{s:?} (mask {:?})", mask.size()),
                expected: format!("[B, L, {dim}] with a [B, L] mask"),
            });
        }
        Ok(())
    }

    /// The unimodal streams.
    pub fn streams(
        &self,
        image: &Tensor,
        image_mask: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
        mode: Mode,
    ) -> Result<Streams> {
        self.check(image, image_mask, self.cfg.vision_dim, "image")?;
        self.check(text, text_mask, self.cfg.text_dim, "text")?;
        let image_mask = image_mask.to_kind(Kind::Bool);
        let text_mask = text_mask.to_kind(Kind::Bool);
        Ok(Streams {
            image: self.image.forward(image, &image_mask, mode),
            text: self.text.forward(text, &text_mask, mode),
            image_mask,
            text_mask,
        })
    }

    /// Contrastive (retrieval) embeddings: L2-normalised masked means of the unimodal streams.
    pub fn embeddings(s: &Streams) -> (Tensor, Tensor) {
        (
            l2_normalize(&masked_mean(&s.image, &s.image_mask)),
            l2_normalize(&masked_mean(&s.text, &s.text_mask)),
        )
    }

    /// Co-attention over paired rows of `s`: returns the pooled fused `(image, text)` vectors
    /// `[B, d]` (LayerNorm'd masked means, not normalised). The fused text depends on the image
    /// tokens and vice versa.
    pub fn fuse(&self, s: &Streams, mode: Mode) -> (Tensor, Tensor) {
        let (mut xi, mut xt) = (s.image.shallow_clone(), s.text.shallow_clone());
        for (image_from_text, text_from_image) in &self.fusion {
            let ni = image_from_text.forward(&xi, Some(&xt), &s.text_mask, mode);
            let nt = text_from_image.forward(&xt, Some(&xi), &s.image_mask, mode);
            xi = ni;
            xt = nt;
        }
        (
            masked_mean(&self.fused_image_norm.forward(&xi), &s.image_mask),
            masked_mean(&self.fused_text_norm.forward(&xt), &s.text_mask),
        )
    }

    /// Matching logits `[B, 2]` (class 1 = the image and text belong together).
    pub fn itm_logits(&self, s: &Streams, mode: Mode) -> Tensor {
        let (fi, ft) = self.fuse(s, mode);
        self.itm_head.forward(&Tensor::cat(&[fi, ft], 1), mode)
    }

    /// Training/validation forward: contrastive loss on the unimodal embeddings plus, for
    /// batches of two or more, ITM on the positives and one hardest in-batch negative per image
    /// and per text (mined without gradient from the contrastive similarities).
    pub fn forward(
        &self,
        image: &Tensor,
        image_mask: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
        mode: Mode,
    ) -> Result<FusionOutput> {
        let s = self.streams(image, image_mask, text, text_mask, mode)?;
        let (ei, et) = Self::embeddings(&s);
        let logits = logits_per_text(&et, &ei, &self.logit_scale);
        let contrastive = clip_loss(&logits, self.cfg.image_weight);
        let b = ei.size()[0];
        let itm = (b >= 2).then(|| {
            let (hard_text, hard_image) = tch::no_grad(|| {
                let eye = Tensor::eye(b, (Kind::Bool, logits.device()));
                let sim = logits.detach().masked_fill(&eye, f64::NEG_INFINITY);
                // sim[i, j]: text i vs image j. For image j the hardest text is argmax over i.
                (sim.argmax(0, false), sim.argmax(1, false))
            });
            let arange = Tensor::arange(b, (Kind::Int64, ei.device()));
            let img_rows = Tensor::cat(&[&arange, &arange, &hard_image], 0);
            let txt_rows = Tensor::cat(&[&arange, &hard_text, &arange], 0);
            let pairs = Streams {
                image: s.image.index_select(0, &img_rows),
                image_mask: s.image_mask.index_select(0, &img_rows),
                text: s.text.index_select(0, &txt_rows),
                text_mask: s.text_mask.index_select(0, &txt_rows),
            };
            let labels = Tensor::cat(
                &[
                    Tensor::ones([b], (Kind::Int64, ei.device())),
                    Tensor::zeros([2 * b], (Kind::Int64, ei.device())),
                ],
                0,
            );
            self.itm_logits(&pairs, mode)
                .cross_entropy_for_logits(&labels)
        });
        Ok(FusionOutput {
            contrastive,
            itm,
            image: ei,
            text: et,
            logits_per_text: logits,
        })
    }

    /// Image-only path for downstream use: the unimodal image embedding (no text needed).
    pub fn embed_image(&self, image: &Tensor, image_mask: &Tensor, mode: Mode) -> Result<Tensor> {
        self.check(image, image_mask, self.cfg.vision_dim, "image")?;
        let m = image_mask.to_kind(Kind::Bool);
        Ok(l2_normalize(&masked_mean(
            &self.image.forward(image, &m, mode),
            &m,
        )))
    }
}
