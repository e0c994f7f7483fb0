//! The original Adaptor (reference A.2–A.6), with the original's parameter names so that a
//! checkpoint loads in PyTorch with `load_state_dict`.
//!
//! Pre-training forward: bias-free projections to 768 and L2 norm; `layers` post-LN transformer
//! layers shared by both modalities, applied image-then-text (the text step uses the updated
//! image as its query, which is ignored because every sequence has length one); L2 norm.

use tch::Tensor;

use crate::config::AdaptorConfig;
use crate::error::{Error, Result};
use crate::nn::{l2_normalize, LayerNorm, Linear, Mode, MultiheadAttention};
use crate::params::{Init, ParamStore};

/// One `TransformerEncoderLayerWithCrossAttention`: post-LN, ReLU feed-forward, dropout after
/// the attention weights, after the activation, and on both residual branches.
pub struct PostLnLayer {
    pub attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub dropout: f64,
}

impl PostLnLayer {
    fn new(ps: &mut ParamStore, prefix: &str, cfg: &AdaptorConfig, seed: u64) -> Self {
        let d = cfg.projection_dim;
        let eps = cfg.layer_norm_eps;
        PostLnLayer {
            attn: MultiheadAttention::new(
                ps,
                &format!("{prefix}.attn"),
                d,
                cfg.heads,
                cfg.dropout,
                seed,
            ),
            linear1: Linear::new(ps, &format!("{prefix}.linear1"), d, cfg.ff, true, seed),
            linear2: Linear::new(ps, &format!("{prefix}.linear2"), cfg.ff, d, true, seed),
            norm1: LayerNorm::new(ps, &format!("{prefix}.norm1"), d, eps, seed),
            norm2: LayerNorm::new(ps, &format!("{prefix}.norm2"), d, eps, seed),
            dropout: cfg.dropout,
        }
    }

    /// `x = LN1(src + drop(a)); x = LN2(x + drop(W2 drop(relu(W1 x))))`.
    fn residual(&self, src: &Tensor, a: &Tensor, mode: Mode) -> Tensor {
        let x = self.norm1.forward(&(src + mode.dropout(a, self.dropout)));
        let f = self.linear1.forward(&x, mode).relu();
        let f = self.linear2.forward(&mode.dropout(&f, self.dropout), mode);
        self.norm2.forward(&(&x + mode.dropout(&f, self.dropout)))
    }

    /// The layer on `[B, d]` vectors, i.e. on `[B, 1, d]` sequences: cross- and self-attention
    /// are the same computation (see [`MultiheadAttention::forward_single`]).
    pub fn forward_single(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.residual(x, &self.attn.forward_single(x, mode), mode)
    }

    /// Self-attention over real sequences `[B, L, d]` (`run_cross_attn=False` in the original).
    pub fn forward_self(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.residual(x, &self.attn.forward(x, x, None, mode), mode)
    }
}

/// How the image-only path treats a `[B, Dv]` batch (reference A.4, G.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageOnly {
    /// Each sample on its own (`[B, 1, D]`): outputs do not depend on the rest of the batch and
    /// equal the pre-training image embeddings. The default.
    #[default]
    PerSample,
    /// The original's behaviour: `nn.MultiheadAttention` reads a 2-D input as one unbatched
    /// sequence of length B, so the samples of a batch attend to each other.
    OriginalBatchAttending,
}

pub struct OriginalAdaptor {
    pub cfg: AdaptorConfig,
    pub visual_projection: Linear,
    pub text_projection: Linear,
    pub layers: Vec<PostLnLayer>,
    pub logit_scale: Tensor,
}

impl OriginalAdaptor {
    /// Declares the parameters in the order of reference A.6, initialised like PyTorch's defaults
    /// (values from `seed`, not from libtorch's generator).
    pub fn new(ps: &mut ParamStore, cfg: &AdaptorConfig, seed: u64) -> Self {
        let d = cfg.projection_dim;
        let visual_projection = Linear::new(
            ps,
            "projection.visual_projection",
            cfg.vision_dim,
            d,
            false,
            seed,
        );
        let text_projection = Linear::new(
            ps,
            "projection.text_projection",
            cfg.text_dim,
            d,
            false,
            seed,
        );
        let layers = (0..cfg.layers)
            .map(|i| PostLnLayer::new(ps, &layer_prefix(cfg.layers, i), cfg, seed))
            .collect();
        let logit_scale = ps.add(
            "logit_scale",
            &[],
            Init::constant(cfg.logit_scale_init),
            seed,
        );
        OriginalAdaptor {
            cfg: cfg.clone(),
            visual_projection,
            text_projection,
            layers,
            logit_scale,
        }
    }

    /// Pre-training forward on pooled vectors: `(image [B, 768], text [B, 768])`, both L2-normalised.
    pub fn embed_pair(
        &self,
        image: &Tensor,
        text: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        self.check(image, self.cfg.vision_dim, "image")?;
        self.check(text, self.cfg.text_dim, "text")?;
        let mut v = l2_normalize(&self.visual_projection.forward(image, mode));
        let mut t = l2_normalize(&self.text_projection.forward(text, mode));
        for layer in &self.layers {
            // Same layer for both modalities; the query (the other modality) has no effect on a
            // length-one sequence, so the text step's use of the updated image is moot (A.2).
            v = layer.forward_single(&v, mode);
            t = layer.forward_single(&t, mode);
        }
        Ok((l2_normalize(&v), l2_normalize(&t)))
    }

    /// The text path alone on pooled vectors `[B, Dt]` → `[B, 768]`, L2-normalised: what
    /// [`OriginalAdaptor::embed_pair`] gives for the texts (the layers see each text on its own).
    pub fn embed_text(&self, text: &Tensor, mode: Mode) -> Result<Tensor> {
        self.check(text, self.cfg.text_dim, "text")?;
        let mut t = l2_normalize(&self.text_projection.forward(text, mode));
        for layer in &self.layers {
            t = layer.forward_single(&t, mode);
        }
        Ok(l2_normalize(&t))
    }

    /// The downstream image-only path (A.4): `[B, Dv]` → `[B, 768]`, or patch tokens
    /// `[B, N, Dv]` → `[B, N, 768]` with self-attention over the N tokens of each image.
    pub fn embed_image(&self, image: &Tensor, how: ImageOnly, mode: Mode) -> Result<Tensor> {
        let x = l2_normalize(&self.visual_projection.forward(image, mode));
        let x = match (image.dim(), how) {
            (2, ImageOnly::PerSample) => {
                let mut x = x;
                for layer in &self.layers {
                    x = layer.forward_single(&x, mode);
                }
                x
            }
            (2, ImageOnly::OriginalBatchAttending) => {
                let mut x = x.unsqueeze(0);
                for layer in &self.layers {
                    x = layer.forward_self(&x, mode);
                }
                x.squeeze_dim(0)
            }
            (3, _) => {
                let mut x = x;
                for layer in &self.layers {
                    x = layer.forward_self(&x, mode);
                }
                x
            }
            (_, _) => return Err(Error::image_rank(image)),
        };
        Ok(l2_normalize(&x))
    }

    fn check(&self, x: &Tensor, dim: i64, what: &str) -> Result<()> {
        match x.size().as_slice() {
            [_, d] if *d == dim => Ok(()),
            s => Err(Error::InputShape {
                what: format!("{what} input"),
                found: format!("{s:?}"),
                expected: format!("[B, {dim}]"),
            }),
        }
    }
}

/// `adaptor_module.encoder.{i}` — or, with a single layer, `adaptor_module.encoder` (A.6).
fn layer_prefix(layers: i64, i: i64) -> String {
    if layers == 1 {
        "adaptor_module.encoder".to_string()
    } else {
        format!("adaptor_module.encoder.{i}")
    }
}
