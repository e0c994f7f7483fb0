//! Classification heads over frozen features (reference D.1): the original MLP head
//! (`SSLEvaluator`, hidden 512, BatchNorm) and a linear probe (MGCA's protocol), with PyTorch
//! state-dict names so that `head.safetensors` loads into the original module.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::error::{Error, Result};
use crate::nn::{Linear, Mode};
use crate::params::{read_safetensors, write_safetensors, Init, ParamStore};

/// Which head sits on the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// `SSLEvaluator(n_input, C, n_hidden, p)` with `n_hidden` set: `Flatten → Dropout(p) →
    /// Linear(n_input, hidden, bias=False) → BatchNorm1d(hidden) → ReLU → Dropout(p) →
    /// Linear(hidden, C)`.
    Mlp,
    /// `SSLEvaluator(n_input, C, n_hidden=None, p)`: `Flatten → Dropout(p) → Linear(n_input, C)`,
    /// the linear probe of MGCA.
    Linear,
}

/// `SSLEvaluator`'s layers live in `block_forward = nn.Sequential(...)`; these are the indices of
/// the layers with state (0 is `Flatten`, 1 and 5 are `Dropout`, 4 is `ReLU`).
pub const MLP_HIDDEN: &str = "block_forward.2";
pub const MLP_NORM: &str = "block_forward.3";
pub const MLP_OUT: &str = "block_forward.6";
pub const LINEAR_OUT: &str = "block_forward.2";

/// `nn.BatchNorm1d(d)` (eps 1e-5, momentum 0.1): affine weight and bias are trainable
/// parameters; the running statistics are buffers, updated in training mode (unbiased batch
/// variance, like PyTorch) and used alone in evaluation mode, so evaluation is per sample.
pub struct BatchNorm1d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Cell<i64>,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNorm1d {
    pub fn new(ps: &mut ParamStore, prefix: &str, d: i64, seed: u64) -> Self {
        let device = ps.device();
        BatchNorm1d {
            weight: ps.add(&format!("{prefix}.weight"), &[d], Init::ONES, seed),
            bias: ps.add(&format!("{prefix}.bias"), &[d], Init::ZEROS, seed),
            running_mean: Tensor::zeros([d], (Kind::Float, device)),
            running_var: Tensor::ones([d], (Kind::Float, device)),
            num_batches_tracked: Cell::new(0),
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            self.num_batches_tracked
                .set(self.num_batches_tracked.get() + 1);
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )
    }
}

/// A classification head: logits `[B, classes]` from features `[B, n_input]`.
pub struct ClassificationHead {
    kind: HeadKind,
    n_input: i64,
    classes: i64,
    dropout: f64,
    params: ParamStore,
    hidden: Option<(Linear, BatchNorm1d)>,
    out: Linear,
}

impl ClassificationHead {
    /// A head with PyTorch's default initialisation (Linear: `U(±1/√fan_in)` for weight and bias;
    /// BatchNorm: weight 1, bias 0), drawn from `seed` by this crate's generator. `hidden` is used
    /// by the MLP head only (the original: 512); `dropout` is `p` (the original: 0.1).
    pub fn new(
        kind: HeadKind,
        n_input: i64,
        classes: i64,
        hidden: i64,
        dropout: f64,
        device: Device,
        seed: u64,
    ) -> Result<Self> {
        if n_input < 1 || classes < 1 || (kind == HeadKind::Mlp && hidden < 1) {
            return Err(Error::Config(format!(
                "head needs positive sizes: n_input {n_input}, classes {classes}, hidden {hidden}"
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::Config(format!(
                "`dropout` = {dropout} must lie in [0, 1)"
            )));
        }
        let mut ps = ParamStore::new(device);
        let (hidden_layers, out) = match kind {
            HeadKind::Mlp => {
                let lin = Linear::new(&mut ps, MLP_HIDDEN, n_input, hidden, false, seed);
                let bn = BatchNorm1d::new(&mut ps, MLP_NORM, hidden, seed);
                let out = Linear::new(&mut ps, MLP_OUT, hidden, classes, true, seed);
                (Some((lin, bn)), out)
            }
            HeadKind::Linear => (
                None,
                Linear::new(&mut ps, LINEAR_OUT, n_input, classes, true, seed),
            ),
        };
        Ok(ClassificationHead {
            kind,
            n_input,
            classes,
            dropout,
            params: ps,
            hidden: hidden_layers,
            out,
        })
    }

    /// The original head: `SSLEvaluator(n_input, classes, n_hidden=512, p=0.1)`.
    pub fn original_mlp(n_input: i64, classes: i64, device: Device, seed: u64) -> Result<Self> {
        Self::new(HeadKind::Mlp, n_input, classes, 512, 0.1, device, seed)
    }

    pub fn kind(&self) -> HeadKind {
        self.kind
    }
    pub fn n_input(&self) -> i64 {
        self.n_input
    }
    pub fn classes(&self) -> i64 {
        self.classes
    }
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    pub fn num_trainable_params(&self) -> i64 {
        self.params.numel()
    }

    /// Logits `[B, classes]`. Training mode: dropout on and BatchNorm on batch statistics
    /// (updating the running ones; a batch needs two rows or more). Evaluation mode: every row
    /// is computed on its own.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mode = if train { Mode::TRAIN } else { Mode::EVAL };
        let x = x.flatten(1, -1);
        let x = mode.dropout(&x, self.dropout);
        match &self.hidden {
            Some((lin, bn)) => {
                let h = bn.forward(&lin.forward(&x, mode), train).relu();
                self.out.forward(&mode.dropout(&h, self.dropout), mode)
            }
            None => self.out.forward(&x, mode),
        }
    }

    /// The head's loss on logits `[B, classes]`: BCE-with-logits against `labels` as 0/1 floats
    /// for one class, cross-entropy against class indices otherwise (both means over the batch).
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        if self.classes == 1 {
            logits
                .squeeze_dim(-1)
                .binary_cross_entropy_with_logits::<Tensor>(
                    &labels.to_kind(Kind::Float),
                    None,
                    None,
                    Reduction::Mean,
                )
        } else {
            logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
        }
    }

    /// Probabilities from logits: sigmoid `[B]` for one class, softmax `[B, classes]` otherwise.
    pub fn probabilities(&self, logits: &Tensor) -> Tensor {
        if self.classes == 1 {
            logits.squeeze_dim(-1).sigmoid()
        } else {
            logits.softmax(-1, Kind::Float)
        }
    }

    fn norm(&self) -> Option<&BatchNorm1d> {
        self.hidden.as_ref().map(|(_, bn)| bn)
    }

    /// Parameters and buffers in `SSLEvaluator.state_dict()` order, on the CPU:
    /// `block_forward.2.weight`, `block_forward.3.{weight, bias, running_mean, running_var,
    /// num_batches_tracked}`, `block_forward.6.{weight, bias}` (MLP) or
    /// `block_forward.2.{weight, bias}` (linear).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, t) in self.params.snapshot() {
            let is_norm_bias = name == format!("{MLP_NORM}.bias");
            out.push((name, t));
            if let (true, Some(bn)) = (is_norm_bias, self.norm()) {
                let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).copy();
                out.push((format!("{MLP_NORM}.running_mean"), cpu(&bn.running_mean)));
                out.push((format!("{MLP_NORM}.running_var"), cpu(&bn.running_var)));
                out.push((
                    format!("{MLP_NORM}.num_batches_tracked"),
                    Tensor::from_slice(&[bn.num_batches_tracked.get()]).reshape([0i64; 0]),
                ));
            }
        }
        out
    }

    /// Loads a state dict (every parameter and buffer, exact shapes; like `strict=True`).
    pub fn load_state_dict(&self, tensors: &[(String, Tensor)], origin: &Path) -> Result<()> {
        let is_buffer = |n: &str| {
            n.ends_with(".running_mean")
                || n.ends_with(".running_var")
                || n.ends_with(".num_batches_tracked")
        };
        let (buffers, params): (Vec<_>, Vec<_>) = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .partition(|(n, _)| is_buffer(n));
        self.params.load(&params, origin)?;
        let find = |n: &str| buffers.iter().find(|(m, _)| m == n).map(|(_, t)| t);
        let err = |message: String| Error::Checkpoint {
            path: origin.to_path_buf(),
            message,
        };
        match self.norm() {
            Some(bn) => {
                let _guard = tch::no_grad_guard();
                for (name, dst) in [
                    ("running_mean", &bn.running_mean),
                    ("running_var", &bn.running_var),
                ] {
                    let key = format!("{MLP_NORM}.{name}");
                    let src = find(&key).ok_or_else(|| err(format!("missing tensors: {key}")))?;
                    if src.size() != dst.size() {
                        return Err(err(format!(
                            "tensor `{key}` has shape {:?}, expected {:?}",
                            src.size(),
                            dst.size()
                        )));
                    }
                    dst.shallow_clone().copy_(&src.to_kind(Kind::Float));
                }
                let key = format!("{MLP_NORM}.num_batches_tracked");
                let n = find(&key).ok_or_else(|| err(format!("missing tensors: {key}")))?;
                bn.num_batches_tracked.set(n.int64_value(&[]));
            }
            None if !buffers.is_empty() => {
                return Err(err(format!(
                    "unexpected tensors: {}",
                    buffers
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            None => {}
        }
        Ok(())
    }

    /// Writes the state dict as safetensors (deterministic bytes) with `metadata`.
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        write_safetensors(path, &self.state_dict(), metadata)
    }

    /// Loads weights saved by [`ClassificationHead::save`] (or by PyTorch from `SSLEvaluator`).
    pub fn load(&self, path: &Path) -> Result<()> {
        self.load_state_dict(&read_safetensors(path)?, path)
    }
}

/// The weight-decay rule of the heads: only weight matrices decay, not the BatchNorm affine
/// parameters or biases (the original decays every head parameter, reference D.1).
pub fn decays(_name: &str, t: &Tensor) -> bool {
    t.dim() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_head_has_the_published_parameter_counts() {
        let h = ClassificationHead::original_mlp(768, 1, Device::Cpu, 0).unwrap();
        assert_eq!(h.num_trainable_params(), 394_753);
        let h = ClassificationHead::original_mlp(768, 3, Device::Cpu, 0).unwrap();
        assert_eq!(h.num_trainable_params(), 395_779);
        let names: Vec<String> = h.state_dict().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "block_forward.2.weight",
                "block_forward.3.weight",
                "block_forward.3.bias",
                "block_forward.3.running_mean",
                "block_forward.3.running_var",
                "block_forward.3.num_batches_tracked",
                "block_forward.6.weight",
                "block_forward.6.bias",
            ]
        );
        let probe =
            ClassificationHead::new(HeadKind::Linear, 384, 3, 0, 0.1, Device::Cpu, 0).unwrap();
        assert_eq!(probe.num_trainable_params(), 384 * 3 + 3);
    }

    #[test]
    fn evaluation_is_per_sample() {
        let h = ClassificationHead::new(HeadKind::Mlp, 32, 3, 16, 0.1, Device::Cpu, 7).unwrap();
        let x = Tensor::from_slice(&crate::rng::uniform_values(1, 8 * 32, 0.0, 2.0)).view([8, 32]);
        // Move the running statistics away from their initial values first.
        for _ in 0..3 {
            let _ = h.forward(&x, true);
        }
        let _guard = tch::no_grad_guard();
        let batch = h.forward(&x, false);
        for i in 0..8 {
            let alone = h.forward(&x.narrow(0, i, 1), false);
            let diff = (alone - batch.narrow(0, i, 1))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-6, "row {i}: {diff}");
        }
    }

    #[test]
    fn state_dict_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClassificationHead::new(HeadKind::Mlp, 12, 1, 8, 0.1, Device::Cpu, 1).unwrap();
        let x = Tensor::from_slice(&crate::rng::uniform_values(2, 4 * 12, 0.0, 1.0)).view([4, 12]);
        let _ = a.forward(&x, true);
        let path = dir.path().join("h.safetensors");
        a.save(&path, &BTreeMap::new()).unwrap();
        let b = ClassificationHead::new(HeadKind::Mlp, 12, 1, 8, 0.1, Device::Cpu, 2).unwrap();
        b.load(&path).unwrap();
        assert_eq!(b.norm().unwrap().num_batches_tracked.get(), 1);
        let _guard = tch::no_grad_guard();
        let d = (a.forward(&x, false) - b.forward(&x, false))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(d, 0.0);
    }
}
