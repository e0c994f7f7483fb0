//! The encoder of torchxrayvision's ResNet autoencoder (`ResNetAE101`, weights `101-elastic`;
//! torchxrayvision 1.5.7 `autoencoders.py`), as `_ResNetAE.encode` computes it: a 7×7 stem,
//! max-pool, then four stages of bottleneck blocks with strides 1, 2, 2 and 6. At 224 px the
//! latent is `[B, 512, 3, 3]`; the original's embedding is its mean over the 9 positions
//! (reference B.1). Inputs are one channel scaled to [-1024, 1024].
//!
//! Stage widths and block counts are read off the weights (ResNetAE101: widths 64, 128, 256,
//! 128 and blocks 3, 4, 23, 2), so ResNetAE50 and the small test models load the same way.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{shape_str, Error, Result};
use crate::weights::Weights;

/// Removes the prefixes a training script's checkpoint may add around the state dict: a
/// `{"state_dict": ...}` or `{"model": ...}` wrapper, `nn.DataParallel`'s `module.`.
pub fn strip_wrappers(w: &mut Weights) {
    for p in ["state_dict.", "model.", "module."] {
        w.strip_prefix(p);
    }
}

/// `_ResNetAE`'s stage strides (fixed in its `__init__`).
const STRIDES: [i64; 4] = [1, 2, 2, 6];
/// Bottleneck expansion.
const EXPANSION: i64 = 4;

/// A bias-free convolution followed by inference-mode `BatchNorm2d`, folded into one convolution
/// (`w' = w · γ/√(σ² + ε)`, `b' = β − μ · γ/√(σ² + ε)`, computed in float32): one pass over the
/// activations instead of two, the same numbers to float rounding.
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl ConvBn {
    fn load(
        w: &Weights,
        conv: &str,
        bn: &str,
        shape: [i64; 4],
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        let c = shape[0];
        let weight = w.get(&format!("{conv}.weight"), &shape)?;
        let kind = weight.kind();
        let g = |n: &str| {
            w.get(&format!("{bn}.{n}"), &[c])
                .map(|t| t.to_kind(Kind::Float))
        };
        let scale = g("weight")? / (g("running_var")? + BN_EPS).sqrt();
        let folded = weight.to_kind(Kind::Float) * scale.view([c, 1, 1, 1]);
        let bias = g("bias")? - g("running_mean")? * &scale;
        Ok(ConvBn {
            weight: folded.to_kind(kind),
            bias: bias.to_kind(kind),
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// `nn.BatchNorm2d`'s default epsilon.
const BN_EPS: f64 = 1e-5;

struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self.c1.forward(x).relu();
        let out = self.c2.forward(&out).relu();
        // xrv applies ReLU after bn3 and again after the residual sum.
        let out = self.c3.forward(&out).relu();
        match &self.downsample {
            Some(d) => (out + d.forward(x)).relu(),
            None => (out + x).relu(),
        }
    }
}

pub struct ResNetAeEncoder {
    stem: ConvBn,
    stages: Vec<Vec<Bottleneck>>,
    /// Channels of the latent (512 for ResNetAE101).
    pub latent_channels: i64,
    /// Block counts per stage, as read off the weights.
    pub blocks: Vec<usize>,
    device: Device,
    kind: Kind,
}

impl ResNetAeEncoder {
    pub fn new(w: &Weights, device: Device, kind: Kind) -> Result<Self> {
        let stem = w.require_shape("conv1.weight", "[64, 1, 7, 7]")?;
        if stem.len() != 4 || stem[1] != 1 || stem[2] != 7 || stem[3] != 7 {
            return Err(Error::TensorShape {
                file: w.source().to_string(),
                name: "conv1.weight".into(),
                found: shape_str(&stem),
                expected: "[64, 1, 7, 7]".into(),
            });
        }
        let mut in_ch = stem[0];
        let stem = ConvBn::load(w, "conv1", "bn1", [in_ch, 1, 7, 7], 2, 3)?;
        let mut stages = Vec::new();
        let mut blocks = Vec::new();
        for (s, &stride) in STRIDES.iter().enumerate() {
            let p = format!("layer{}", s + 1);
            let first = w.require_shape(&format!("{p}.0.conv1.weight"), "[width, in, 1, 1]")?;
            let width = first[0];
            let out_ch = width * EXPANSION;
            let count = (0..)
                .take_while(|i| w.contains(&format!("{p}.{i}.conv1.weight")))
                .count();
            let mut stage = Vec::new();
            for i in 0..count {
                let b = format!("{p}.{i}");
                let (inp, st) = if i == 0 { (in_ch, stride) } else { (out_ch, 1) };
                let downsample = if i == 0 && (stride != 1 || in_ch != out_ch) {
                    Some(ConvBn::load(
                        w,
                        &format!("{b}.downsample.0"),
                        &format!("{b}.downsample.1"),
                        [out_ch, inp, 1, 1],
                        st,
                        0,
                    )?)
                } else {
                    None
                };
                let conv = |n: usize, shape: [i64; 4], stride: i64, pad: i64| {
                    ConvBn::load(
                        w,
                        &format!("{b}.conv{n}"),
                        &format!("{b}.bn{n}"),
                        shape,
                        stride,
                        pad,
                    )
                };
                stage.push(Bottleneck {
                    c1: conv(1, [width, inp, 1, 1], 1, 0)?,
                    c2: conv(2, [width, width, 3, 3], st, 1)?,
                    c3: conv(3, [out_ch, width, 1, 1], 1, 0)?,
                    downsample,
                });
            }
            in_ch = out_ch;
            blocks.push(count);
            stages.push(stage);
        }
        Ok(ResNetAeEncoder {
            stem,
            stages,
            latent_channels: in_ch,
            blocks,
            device,
            kind,
        })
    }

    /// From a folder: `model.safetensors` (see `adaptor-torch convert-resnet-ae`) or the
    /// published `.pt` itself.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let mut w = Weights::load_dir(dir)?.with_target(device, kind);
        strip_wrappers(&mut w);
        Self::new(&w, device, kind)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A `[B, 1, H, W]` batch on the model's device and dtype.
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[1] != 1 {
            return Err(Error::InputShape {
                model: "ResNet-AE",
                expected: "[B, 1, H, W]".into(),
                found: shape_str(&size),
            });
        }
        Ok(x.to_device(self.device).to_kind(self.kind))
    }

    /// `_ResNetAE.encode`: `[B, 1, H, W]` → latent `[B, C, h, w]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.input(x)?;
        let x = self.stem.forward(&x).relu();
        let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x);
            }
        }
        Ok(x)
    }

    /// The encoder's intermediate maps as the original's segmentation U-Net takes them
    /// (`seg_models.py` `ResNetAEUNet.encode`, reference D.2): block1 = stem conv + BN + ReLU
    /// (`[B, 64, H/2, W/2]` for ResNetAE101), block2 = max-pool + layer1, block3..block5 =
    /// layer2..layer4; block5 is the latent [`ResNetAeEncoder::encode`] returns. BatchNorm is
    /// folded, i.e. always in inference mode (the original left it in train mode, G.11).
    pub fn encode_blocks(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let x = self.input(x)?;
        let block1 = self.stem.forward(&x).relu();
        let mut x = block1.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut out = vec![block1];
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x);
            }
            out.push(x.shallow_clone());
        }
        Ok(out)
    }

    /// Output channels of block1..block5 (64, 256, 512, 1024, 512 for ResNetAE101).
    pub fn block_channels(&self) -> [i64; 5] {
        let stage = |s: &Vec<Bottleneck>| s.last().map(|b| b.c3.weight.size()[0]).unwrap_or(0);
        [
            self.stem.weight.size()[0],
            stage(&self.stages[0]),
            stage(&self.stages[1]),
            stage(&self.stages[2]),
            stage(&self.stages[3]),
        ]
    }

    /// The latent averaged over its spatial positions: `[B, C]`.
    pub fn pooled(latent: &Tensor) -> Tensor {
        latent.flatten(2, 3).mean_dim(2, false, None)
    }

    /// The latent positions as tokens: `[B, h·w, C]`.
    pub fn tokens(latent: &Tensor) -> Tensor {
        latent.flatten(2, 3).transpose(1, 2)
    }
}
