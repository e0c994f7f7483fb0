//! The few inference-only layers the backbones share, built from shape-checked [`Weights`].

use tch::Tensor;

use crate::error::Result;
use crate::weights::Weights;

/// `y = x Wᵀ + b` with `W: [out, in]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{prefix}.weight` `[out, in]` and, with `bias`, `{prefix}.bias` `[out]`.
    pub fn load(w: &Weights, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Self> {
        Self::load_any(w, &[prefix], out, inp, bias)
    }

    /// The first of several names the layer goes by (checkpoint layouts differ).
    pub fn load_any(
        w: &Weights,
        prefixes: &[&str],
        out: i64,
        inp: i64,
        bias: bool,
    ) -> Result<Self> {
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

    /// Stacks layers with the same input along the output dimension (fused q/k/v).
    pub fn stack(parts: &[Linear]) -> Linear {
        let weight = Tensor::cat(&parts.iter().map(|p| &p.weight).collect::<Vec<_>>(), 0);
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(Tensor::cat(
                &parts
                    .iter()
                    .map(|p| p.bias.as_ref().expect("checked"))
                    .collect::<Vec<_>>(),
                0,
            ))
        } else {
            None
        };
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
            eps,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
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
