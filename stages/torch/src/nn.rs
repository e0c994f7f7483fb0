//! The inference side of the layers the backbones share: loading train's [`Linear`] and
//! [`LayerNorm`] (one definition for training and inference) from shape-checked [`Weights`], and
//! the activations transformers' configs name.

use tch::Tensor;

pub use train::nn::{LayerNorm, Linear, Mode};

use crate::error::Result;
use crate::weights::Weights;

/// Loading a [`Linear`] (`y = x Wᵀ + b`, `W: [out, in]`) from a checkpoint.
pub trait LoadLinear: Sized {
    /// `{prefix}.weight` `[out, in]` and, with `bias`, `{prefix}.bias` `[out]`.
    fn load(w: &Weights, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Self> {
        Self::load_any(w, &[prefix], out, inp, bias)
    }

    /// The first of several names the layer goes by (checkpoint layouts differ).
    fn load_any(w: &Weights, prefixes: &[&str], out: i64, inp: i64, bias: bool) -> Result<Self>;
}

impl LoadLinear for Linear {
    fn load_any(w: &Weights, prefixes: &[&str], out: i64, inp: i64, bias: bool) -> Result<Self> {
        let prefix = prefixes
            .iter()
            .copied()
            .find(|p| w.contains(&format!("{p}.weight")))
            .unwrap_or(prefixes[0]);
        Ok(Linear {
            weight: w.get(&format!("{prefix}.weight"), &[out, inp])?,
            bias: if bias {
                Some(w.get(&format!("{prefix}.bias"), &[out])?)
            } else {
                None
            },
        })
    }
}

/// Loading a [`LayerNorm`] over the last `dim` features from a checkpoint.
pub trait LoadLayerNorm: Sized {
    fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self>;
}

impl LoadLayerNorm for LayerNorm {
    fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }
}

/// The activations transformers' configs name (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu`.
    Gelu,
    /// tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub const NAMES: &'static [&'static str] = &[
        "gelu",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "relu",
        "silu",
        "swish",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}
