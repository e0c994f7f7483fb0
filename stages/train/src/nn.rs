//! Layers with PyTorch's semantics (`nn.Linear`, `nn.LayerNorm`, `nn.MultiheadAttention`), over
//! parameters held in a [`ParamStore`], with explicit mixed precision (bf16 matrix products,
//! everything else in fp32) in place of autocast, which tch can only switch to fp16. The frozen
//! backbones of adaptor-torch run the same [`Linear`] and [`LayerNorm`] in [`Mode::EVAL`].

use tch::{Kind, Tensor};

use crate::config::Precision;
use crate::params::{Init, ParamStore};

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    /// Dropout on (training) or off (evaluation).
    pub train: bool,
    pub precision: Precision,
    /// Compute query/key projections and the softmax even where every sequence has length one
    /// (same result; for benchmarks against a PyTorch `nn.MultiheadAttention` that does).
    pub full_attention: bool,
}

impl Mode {
    pub const EVAL: Mode = Mode {
        train: false,
        precision: Precision::Fp32,
        full_attention: false,
    };
    pub const TRAIN: Mode = Mode {
        train: true,
        precision: Precision::Fp32,
        full_attention: false,
    };

    pub fn new(train: bool, precision: Precision) -> Mode {
        Mode {
            train,
            precision,
            full_attention: false,
        }
    }

    pub fn dropout(&self, x: &Tensor, p: f64) -> Tensor {
        if self.train && p > 0.0 {
            x.dropout(p, true)
        } else {
            x.shallow_clone()
        }
    }
}

/// `x Wᵀ + b`, in bf16 when asked (the output is returned in fp32).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, mode: Mode) -> Tensor {
    match mode.precision {
        Precision::Fp32 => x.linear(w, b),
        Precision::Bf16 => {
            let bf = Kind::BFloat16;
            x.to_kind(bf)
                .linear(&w.to_kind(bf), b.map(|b| b.to_kind(bf)))
                .to_kind(Kind::Float)
        }
    }
}

/// `x / ‖x‖₂` over the last dimension (the original divides by the norm, no epsilon).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1i64], true)
}

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{prefix}.weight` `[out, in]` and optionally `{prefix}.bias`, with PyTorch's default init.
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        inp: i64,
        out: i64,
        bias: bool,
        seed: u64,
    ) -> Self {
        let weight = ps.add(
            &format!("{prefix}.weight"),
            &[out, inp],
            Init::linear(inp),
            seed,
        );
        let bias = bias.then(|| ps.add(&format!("{prefix}.bias"), &[out], Init::linear(inp), seed));
        Linear { weight, bias }
    }

    /// Stacks layers with the same input along the output dimension (fused q/k/v); the bias
    /// only where every part has one.
    pub fn stack(parts: &[Linear]) -> Linear {
        let weight = Tensor::cat(&parts.iter().map(|p| &p.weight).collect::<Vec<_>>(), 0);
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let bias = biases.map(|b| Tensor::cat(&b, 0));
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        linear(x, &self.weight, self.bias.as_ref(), mode)
    }
}

pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(ps: &mut ParamStore, prefix: &str, d: i64, eps: f64, seed: u64) -> Self {
        LayerNorm {
            weight: ps.add(&format!("{prefix}.weight"), &[d], Init::ONES, seed),
            bias: ps.add(&format!("{prefix}.bias"), &[d], Init::ZEROS, seed),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = *self.weight.size().last().expect("1-D");
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `nn.MultiheadAttention(d, heads, dropout, batch_first=True)`: packed `in_proj_weight`
/// `[3d, d]` + `in_proj_bias`, `out_proj`, and dropout on the attention weights.
pub struct MultiheadAttention {
    pub in_proj_weight: Tensor,
    pub in_proj_bias: Tensor,
    pub out_proj: Linear,
    pub heads: i64,
    pub dropout: f64,
}

impl MultiheadAttention {
    /// PyTorch's init: xavier-uniform `in_proj_weight`, zero biases, `out_proj.weight` as a Linear.
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        d: i64,
        heads: i64,
        dropout: f64,
        seed: u64,
    ) -> Self {
        let in_proj_weight = ps.add(
            &format!("{prefix}.in_proj_weight"),
            &[3 * d, d],
            Init::xavier(3 * d, d),
            seed,
        );
        let in_proj_bias = ps.add(
            &format!("{prefix}.in_proj_bias"),
            &[3 * d],
            Init::ZEROS,
            seed,
        );
        let out_proj = Linear {
            weight: ps.add(
                &format!("{prefix}.out_proj.weight"),
                &[d, d],
                Init::linear(d),
                seed,
            ),
            bias: Some(ps.add(&format!("{prefix}.out_proj.bias"), &[d], Init::ZEROS, seed)),
        };
        MultiheadAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            heads,
            dropout,
        }
    }

    fn d(&self) -> i64 {
        self.in_proj_weight.size()[1]
    }

    /// Rows `part·d .. (part+1)·d` of the packed projection (0 = query, 1 = key, 2 = value).
    fn proj(&self, x: &Tensor, part: i64, mode: Mode) -> Tensor {
        let d = self.d();
        let w = self.in_proj_weight.narrow(0, part * d, d);
        let b = self.in_proj_bias.narrow(0, part * d, d);
        linear(x, &w, Some(&b), mode)
    }

    /// Attention where every sequence has length one: the softmax over a single key is exactly 1,
    /// so the output is `out_proj(value(x))` whatever the query (reference A.2); query and key
    /// projections are skipped (their gradients are exactly zero in PyTorch too). In training,
    /// dropout on the `[B, heads, 1, 1]` attention weights zeroes or rescales each head's value.
    pub fn forward_single(&self, x: &Tensor, mode: Mode) -> Tensor {
        if mode.full_attention {
            let x = x.unsqueeze(1);
            return self.forward(&x, &x, None, mode).squeeze_dim(1);
        }
        let v = self.proj(x, 2, mode);
        let v = if mode.train && self.dropout > 0.0 {
            let b = v.size()[0];
            let keep = Tensor::ones([b, self.heads, 1], (Kind::Float, v.device()))
                .dropout(self.dropout, true);
            (v.view([b, self.heads, -1]) * keep).view([b, -1])
        } else {
            v
        };
        self.out_proj.forward(&v, mode)
    }

    /// General attention: `query [B, Lq, d]` over `key_value [B, Lk, d]`. `key_mask [B, Lk]`
    /// (bool, true = a real token) hides padding, like PyTorch's `key_padding_mask` negated.
    pub fn forward(
        &self,
        query: &Tensor,
        key_value: &Tensor,
        key_mask: Option<&Tensor>,
        mode: Mode,
    ) -> Tensor {
        let (b, lq, d) = query.size3().expect("query [B, Lq, d]");
        let lk = key_value.size()[1];
        let h = self.heads;
        let hd = d / h;
        let split = |t: Tensor, l: i64| t.view([b, l, h, hd]).transpose(1, 2);
        let q = split(self.proj(query, 0, mode), lq);
        let k = split(self.proj(key_value, 1, mode), lk);
        let v = split(self.proj(key_value, 2, mode), lk);
        // PyTorch scales the query before the product.
        let q = q * (1.0 / (hd as f64).sqrt());
        let scores = match mode.precision {
            Precision::Fp32 => q.matmul(&k.transpose(-2, -1)),
            Precision::Bf16 => q
                .to_kind(Kind::BFloat16)
                .matmul(&k.to_kind(Kind::BFloat16).transpose(-2, -1))
                .to_kind(Kind::Float),
        };
        let scores = match key_mask {
            Some(m) => scores.masked_fill(&m.logical_not().view([b, 1, 1, lk]), f64::NEG_INFINITY),
            None => scores,
        };
        let attn = mode.dropout(&scores.softmax(-1, Kind::Float), self.dropout);
        let out = match mode.precision {
            Precision::Fp32 => attn.matmul(&v),
            Precision::Bf16 => attn
                .to_kind(Kind::BFloat16)
                .matmul(&v.to_kind(Kind::BFloat16))
                .to_kind(Kind::Float),
        };
        let out = out.transpose(1, 2).contiguous().view([b, lq, d]);
        self.out_proj.forward(&out, mode)
    }
}

/// Mean over the positions where `mask` is true: `x [B, L, d]`, `mask [B, L]` → `[B, d]`.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let keep = mask.unsqueeze(-1);
    let count = keep
        .to_kind(Kind::Float)
        .sum_dim_intlist(&[1i64][..], false, Kind::Float);
    x.masked_fill(&keep.logical_not(), 0.0)
        .sum_dim_intlist(&[1i64][..], false, Kind::Float)
        / count
}
