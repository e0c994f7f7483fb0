//! The trainable layers of the segmentation decoders (`nn.Conv2d`, `nn.ConvTranspose2d`,
//! `nn.BatchNorm2d`) over a [`ParamStore`], with the original's initialisation drawn from this
//! project's SplitMix64 streams, so `tools/segment_reference.py` rebuilds the same weights in numpy.

use tch::{Device, Kind, Tensor};
use train::params::{Init, ParamStore};
use train::rng::{derive_seed, SplitMix64};

/// `nn.BatchNorm2d` defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// `n` draws of `N(0, std²)`: Box–Muller over pairs of 24-bit uniforms of the stream
/// `derive_seed(seed, name, 0)`, `z = √(−2 ln(1 − u₁)) · cos(2π u₂)`, in f64, rounded to f32.
pub fn normal_values(seed: u64, name: &str, n: usize, std: f64) -> Vec<f32> {
    let mut rng = SplitMix64::new(derive_seed(seed, name, 0));
    (0..n)
        .map(|_| {
            let u1 = rng.next_unit24();
            let u2 = rng.next_unit24();
            let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (std * z) as f32
        })
        .collect()
}

/// The decoder's state: trainable parameters (in state-dict order) and BatchNorm buffers.
pub struct DecoderState {
    pub params: ParamStore,
    /// `running_mean`, `running_var` (f32) and `num_batches_tracked` (i64), state-dict names.
    pub buffers: Vec<(String, Tensor)>,
    seed: u64,
}

impl DecoderState {
    pub fn new(device: Device, seed: u64) -> Self {
        DecoderState {
            params: ParamStore::new(device),
            buffers: Vec::new(),
            seed,
        }
    }

    pub fn device(&self) -> Device {
        self.params.device()
    }

    /// `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`: `std = √(2 / fan_out)`.
    fn kaiming_normal(&mut self, name: &str, shape: &[i64], fan_out: i64) -> Tensor {
        let t = self.params.add(name, shape, Init::ZEROS, self.seed);
        let n: i64 = shape.iter().product();
        let std = (2.0 / fan_out as f64).sqrt();
        let v = normal_values(self.seed, name, n as usize, std);
        tch::no_grad(|| {
            t.shallow_clone()
                .copy_(&Tensor::from_slice(&v).reshape(shape).to_device(t.device()))
        });
        t
    }

    fn uniform(&mut self, name: &str, shape: &[i64], fan_in: i64) -> Tensor {
        self.params
            .add(name, shape, Init::linear(fan_in), self.seed)
    }

    fn buffer(&mut self, name: &str, t: Tensor) -> Tensor {
        let t = t.to_device(self.device());
        self.buffers.push((name.to_string(), t.shallow_clone()));
        t
    }

    /// Parameters and buffers, detached on the CPU, in state-dict order (parameters first).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        let mut out = self.params.snapshot();
        out.extend(
            self.buffers
                .iter()
                .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).copy())),
        );
        out
    }

    /// Restores a [`DecoderState::snapshot`] (same names and shapes).
    pub fn restore(&self, snap: &[(String, Tensor)]) {
        tch::no_grad(|| {
            for (name, src) in snap {
                let dst = self
                    .params
                    .get(name)
                    .or_else(|| self.buffers.iter().find(|(n, _)| n == name).map(|(_, t)| t))
                    .unwrap_or_else(|| panic!("snapshot tensor `{name}` is not in this decoder"));
                dst.shallow_clone().copy_(src);
            }
        })
    }

    /// Loads tensors by name (every parameter and buffer must be present, nothing else).
    pub fn load(
        &self,
        tensors: &[(String, Tensor)],
        origin: &std::path::Path,
    ) -> crate::Result<()> {
        let is_buffer = |n: &str| self.buffers.iter().any(|(b, _)| b == n);
        let params: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(n, _)| !is_buffer(n))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        // train's error names `origin` and the tensor.
        self.params.load(&params, origin)?;
        tch::no_grad(|| {
            for (name, dst) in &self.buffers {
                let src = tensors
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| {
                        crate::Error::file(origin, format!("missing buffer `{name}`"))
                    })?;
                dst.shallow_clone()
                    .copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
            }
            Ok(())
        })
    }
}

/// `nn.Conv2d`; `kaiming`: the original's `kaiming_normal_(fan_out, relu)` on the weight (the
/// bias keeps PyTorch's default `U(±1/√fan_in)`); otherwise PyTorch's default for both.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub padding: i64,
}

impl Conv2d {
    pub fn new(
        st: &mut DecoderState,
        prefix: &str,
        inp: i64,
        out: i64,
        k: i64,
        padding: i64,
        bias: bool,
    ) -> Self {
        let weight = st.kaiming_normal(&format!("{prefix}.weight"), &[out, inp, k, k], out * k * k);
        let bias = bias.then(|| st.uniform(&format!("{prefix}.bias"), &[out], inp * k * k));
        Conv2d {
            weight,
            bias,
            padding,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [1, 1],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// `nn.ConvTranspose2d` (padding 0). The original's `_weights_init` only touches `nn.Conv2d`, so
/// these keep PyTorch's default: `U(±1/√fan_in)` with `fan_in = out · k²` (the weight is
/// `[in, out, k, k]` and PyTorch reads fan-in off dimension 1).
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
}

impl ConvTranspose2d {
    pub fn new(
        st: &mut DecoderState,
        prefix: &str,
        inp: i64,
        out: i64,
        k: i64,
        stride: i64,
        bias: bool,
    ) -> Self {
        let fan_in = out * k * k;
        let weight = st.uniform(&format!("{prefix}.weight"), &[inp, out, k, k], fan_in);
        let bias = bias.then(|| st.uniform(&format!("{prefix}.bias"), &[out], fan_in));
        ConvTranspose2d {
            weight,
            bias,
            stride,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv_transpose2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [0, 0],
            [0, 0],
            1,
            [1, 1],
        )
    }
}

/// `nn.BatchNorm2d` (weight 1, bias 0, running mean 0, variance 1): batch statistics and a
/// running-stat update in training mode, running statistics in evaluation mode.
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    tracked: Tensor,
}

impl BatchNorm2d {
    pub fn new(st: &mut DecoderState, prefix: &str, c: i64) -> Self {
        let dev = st.device();
        let weight = st
            .params
            .add(&format!("{prefix}.weight"), &[c], Init::ONES, 0);
        let bias = st
            .params
            .add(&format!("{prefix}.bias"), &[c], Init::ZEROS, 0);
        let running_mean = st.buffer(
            &format!("{prefix}.running_mean"),
            Tensor::zeros([c], (Kind::Float, dev)),
        );
        let running_var = st.buffer(
            &format!("{prefix}.running_var"),
            Tensor::ones([c], (Kind::Float, dev)),
        );
        let tracked = st.buffer(
            &format!("{prefix}.num_batches_tracked"),
            Tensor::zeros([0i64; 0], (Kind::Int64, dev)),
        );
        BatchNorm2d {
            weight,
            bias,
            running_mean,
            running_var,
            tracked,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            false,
        )
    }
}

/// `Conv3×3(p1) + BN + ReLU`, twice (the original's `double_conv`).
pub struct DoubleConv {
    c1: Conv2d,
    b1: BatchNorm2d,
    c2: Conv2d,
    b2: BatchNorm2d,
}

impl DoubleConv {
    pub fn new(st: &mut DecoderState, prefix: &str, inp: i64, out: i64) -> Self {
        DoubleConv {
            c1: Conv2d::new(st, &format!("{prefix}.0"), inp, out, 3, 1, true),
            b1: BatchNorm2d::new(st, &format!("{prefix}.1"), out),
            c2: Conv2d::new(st, &format!("{prefix}.3"), out, out, 3, 1, true),
            b2: BatchNorm2d::new(st, &format!("{prefix}.4"), out),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.b1.forward(&self.c1.forward(x), train).relu();
        self.b2.forward(&self.c2.forward(&x), train).relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_values_have_the_asked_spread() {
        let v = normal_values(7, "w", 20_000, 0.5);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "std {}", var.sqrt());
        assert_eq!(v, normal_values(7, "w", 20_000, 0.5));
        assert_ne!(v[..10], normal_values(7, "v", 10, 0.5)[..]);
    }
}
