//! The two trainable decoders of the original's segmentation (`models/seg_models.py`, reference
//! D.2), layer by layer, with the original's state-dict names: the U-Net over the frozen
//! ResNet-AE encoder's maps with a global vector at the bottleneck, and the convolutional decoder
//! over DINOv2 patch tokens.

use tch::{Device, Tensor};

use super::layers::{BatchNorm2d, Conv2d, ConvTranspose2d, DecoderState, DoubleConv};
use crate::error::{Error, Result};

/// Crop sizes the original supports: 224 · 2^k.
fn neck_repeats(size: i64) -> Result<usize> {
    match size {
        224 => Ok(0),
        448 => Ok(1),
        896 => Ok(2),
        other => Err(Error::parameter(
            "crop size",
            other,
            "is not supported by the U-Net: 224, 448 and 896 are (its neck grows 1×1 to 7×7, \
             then doubles)",
        )),
    }
}

/// What the U-Net is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetShape {
    /// Channels of the bottleneck vector: the adaptor's 768, or block5's 512 (`no_adaptor`).
    pub vector_dim: i64,
    /// Channels of block1..block4 (64, 256, 512, 1024 for ResNetAE101).
    pub skips: [i64; 4],
    /// Input side in pixels: 224, 448 or 896.
    pub size: i64,
    /// For 448/896: the original repeats *one* `ConvT(512, 512, 2, 2)` module (`[m] * n`, shared
    /// weights, G.11); `false` gives each repeat its own weights.
    pub shared_neck: bool,
}

impl UNetShape {
    /// ResNetAE101 with the adaptor at 224 px: the original's configuration.
    pub const ORIGINAL_224: UNetShape = UNetShape {
        vector_dim: 768,
        skips: [64, 256, 512, 1024],
        size: 224,
        shared_neck: true,
    };
}

/// `ResNetAEUNet` without its frozen parts: neck, `up_conv6..10`, `conv6..9`, `conv10`.
pub struct ResNetAeUNet {
    pub shape: UNetShape,
    neck: Vec<ConvTranspose2d>,
    /// Index into `neck` per applied neck layer (shared repeats point at one entry).
    neck_order: Vec<usize>,
    ups: Vec<ConvTranspose2d>,
    convs: Vec<DoubleConv>,
    up10: ConvTranspose2d,
    conv10: Conv2d,
}

impl ResNetAeUNet {
    pub fn new(st: &mut DecoderState, shape: UNetShape) -> Result<Self> {
        let repeats = neck_repeats(shape.size)?;
        let mut neck = vec![
            ConvTranspose2d::new(st, "neck.0", shape.vector_dim, 512, 3, 1, false),
            ConvTranspose2d::new(st, "neck.1", 512, 512, 3, 2, false),
        ];
        let mut neck_order = vec![0, 1];
        for r in 0..repeats {
            if shape.shared_neck && r > 0 {
                neck_order.push(2);
            } else {
                neck.push(ConvTranspose2d::new(
                    st,
                    &format!("neck.{}", 2 + r),
                    512,
                    512,
                    2,
                    2,
                    false,
                ));
                neck_order.push(neck.len() - 1);
            }
        }
        let widths = [512, 256, 128, 64];
        let mut ups = Vec::new();
        let mut convs = Vec::new();
        let mut prev = 512;
        for (i, &w) in widths.iter().enumerate() {
            let n = 6 + i;
            ups.push(ConvTranspose2d::new(
                st,
                &format!("up_conv{n}"),
                prev,
                w,
                2,
                2,
                true,
            ));
            // Skips are concatenated deepest first: block4 meets up_conv6.
            convs.push(DoubleConv::new(
                st,
                &format!("conv{n}"),
                w + shape.skips[3 - i],
                w,
            ));
            prev = w;
        }
        let up10 = ConvTranspose2d::new(st, "up_conv10", 64, 32, 2, 2, true);
        let conv10 = Conv2d::new(st, "conv10", 32, 1, 1, 0, true);
        Ok(ResNetAeUNet {
            shape,
            neck,
            neck_order,
            ups,
            convs,
            up10,
            conv10,
        })
    }

    /// `vector [B, D]` and the encoder's `skips` block1..block4 → logits `[B, 1, S, S]`.
    pub fn forward(&self, vector: &Tensor, skips: &[Tensor], train: bool) -> Tensor {
        let mut x = vector.unsqueeze(2).unsqueeze(3);
        for &i in &self.neck_order {
            x = self.neck[i].forward(&x);
        }
        for (i, (up, conv)) in self.ups.iter().zip(&self.convs).enumerate() {
            x = up.forward(&x);
            x = conv.forward(&Tensor::cat(&[&x, &skips[3 - i]], 1), train);
        }
        self.conv10.forward(&self.up10.forward(&x))
    }
}

/// What the ViT decoder is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitShape {
    /// Token channels: the adaptor's 768, or the backbone's Dv (`no_adaptor`).
    pub in_channels: i64,
    /// Input side: 224 (16×16 tokens) or 896 (64×64 tokens).
    pub size: i64,
}

/// `ViTDecoder(in, 1, features=[512, 256, 128, 64])`: `decoder_0` (`Conv3×3(in, in)`, p0 at 224
/// taking 16 → 14; p1 then nearest `Upsample(×14/16)` at 896 taking 64 → 56), four `Conv3×3 p1 +
/// BN + ReLU + Upsample(×2, nearest)`, `final_out = Conv3×3(64, 1, p1)`.
pub struct VitDecoder {
    pub shape: VitShape,
    stages: Vec<(Conv2d, BatchNorm2d)>,
    final_out: Conv2d,
}

impl VitDecoder {
    pub fn new(st: &mut DecoderState, shape: VitShape) -> Result<Self> {
        let pad0 = match shape.size {
            224 => 0,
            896 => 1,
            other => {
                return Err(Error::parameter(
                    "crop size",
                    other,
                    "is not supported by the ViT decoder: 224 and 896 are",
                ))
            }
        };
        let c = shape.in_channels;
        let mut stages = vec![(
            Conv2d::new(st, "decoder_0.0", c, c, 3, pad0, true),
            BatchNorm2d::new(st, "decoder_0.1", c),
        )];
        let mut prev = c;
        for (i, &w) in [512, 256, 128, 64].iter().enumerate() {
            let p = format!("decoder_{}", i + 1);
            stages.push((
                Conv2d::new(st, &format!("{p}.0"), prev, w, 3, 1, true),
                BatchNorm2d::new(st, &format!("{p}.1"), w),
            ));
            prev = w;
        }
        let final_out = Conv2d::new(st, "final_out", 64, 1, 3, 1, true);
        Ok(VitDecoder {
            shape,
            stages,
            final_out,
        })
    }

    /// `tokens [B, C, g, g]` (the token grid, channels first) → logits `[B, 1, S, S]`.
    pub fn forward(&self, grid: &Tensor, train: bool) -> Tensor {
        let mut x = grid.shallow_clone();
        for (i, (conv, bn)) in self.stages.iter().enumerate() {
            x = bn.forward(&conv.forward(&x), train).relu();
            let (h, w) = (x.size()[2], x.size()[3]);
            if i == 0 {
                if self.shape.size == 896 {
                    // nn.Upsample(scale_factor=14/16): output floor(h·14/16), source index
                    // floor(dst · 16/14) (PyTorch uses 1/scale_factor when it is given).
                    let s = 14.0 / 16.0;
                    let oh = (h as f64 * s).floor() as i64;
                    let ow = (w as f64 * s).floor() as i64;
                    x = x.upsample_nearest2d([oh, ow], Some(s), Some(s));
                }
            } else {
                x = x.upsample_nearest2d([2 * h, 2 * w], Some(2.0), Some(2.0));
            }
        }
        self.final_out.forward(&x)
    }
}

/// Either decoder, with its state.
pub enum DecoderModel {
    UNet(ResNetAeUNet),
    Vit(VitDecoder),
}

/// A decoder and its parameters and buffers.
pub struct Decoder {
    pub state: DecoderState,
    pub model: DecoderModel,
}

impl Decoder {
    pub fn unet(shape: UNetShape, device: Device, seed: u64) -> Result<Self> {
        let mut state = DecoderState::new(device, seed);
        let model = DecoderModel::UNet(ResNetAeUNet::new(&mut state, shape)?);
        Ok(Decoder { state, model })
    }

    pub fn vit(shape: VitShape, device: Device, seed: u64) -> Result<Self> {
        let mut state = DecoderState::new(device, seed);
        let model = DecoderModel::Vit(VitDecoder::new(&mut state, shape)?);
        Ok(Decoder { state, model })
    }

    /// Trainable scalars.
    pub fn trainable_params(&self) -> i64 {
        self.state.params.numel()
    }

    /// Logits `[B, 1, S, S]` from cached features: the U-Net takes `[vector, block1..block4]`,
    /// the ViT decoder `[grid]`.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Tensor {
        match &self.model {
            DecoderModel::UNet(m) => m.forward(&features[0], &features[1..], train),
            DecoderModel::Vit(m) => m.forward(&features[0], train),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_counts_match_the_original() {
        let d = Decoder::unet(UNetShape::ORIGINAL_224, Device::Cpu, 0).unwrap();
        assert_eq!(d.trainable_params(), 20_146_817);
        // no_adaptor: the first neck ConvT takes block5's 512 channels instead of 768.
        let s = UNetShape {
            vector_dim: 512,
            ..UNetShape::ORIGINAL_224
        };
        let d = Decoder::unet(s, Device::Cpu, 0).unwrap();
        assert_eq!(d.trainable_params(), 20_146_817 - 256 * 512 * 9);
        // 896 px: one shared ConvT(512, 512, 2, 2) (original) or two separate ones.
        let s = UNetShape {
            size: 896,
            ..UNetShape::ORIGINAL_224
        };
        let shared = Decoder::unet(s, Device::Cpu, 0).unwrap().trainable_params();
        assert_eq!(shared, 20_146_817 + 512 * 512 * 4);
        let s = UNetShape {
            shared_neck: false,
            ..s
        };
        let separate = Decoder::unet(s, Device::Cpu, 0).unwrap().trainable_params();
        assert_eq!(separate, 20_146_817 + 2 * 512 * 512 * 4);
    }

    #[test]
    fn vit_counts_match_the_original() {
        // 896: decoder_0 pads instead of shrinking and upsamples; same parameters. no_adaptor
        // over DINOv2-S tokens (384): decoder_0 is Conv(384, 384).
        for (in_channels, size, params) in [
            (768, 224, 10_401_409),
            (768, 896, 10_401_409),
            (384, 224, 4_649_473),
        ] {
            let shape = VitShape { in_channels, size };
            let d = Decoder::vit(shape, Device::Cpu, 0).unwrap();
            assert_eq!(
                d.trainable_params(),
                params,
                "{in_channels} channels at {size}"
            );
        }
    }

    #[test]
    fn saved_weights_load_into_a_fresh_decoder() {
        let shape = VitShape {
            in_channels: 4,
            size: 224,
        };
        let a = Decoder::vit(shape, Device::Cpu, 1).unwrap();
        let x = Tensor::randn([2, 4, 16, 16], tch::kind::FLOAT_CPU);
        // One training-mode pass moves the BatchNorm running statistics.
        let _ = tch::no_grad(|| a.forward(&[x.shallow_clone()], true));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoder.safetensors");
        train::params::write_safetensors(&path, &a.state.snapshot(), &Default::default()).unwrap();
        let b = Decoder::vit(shape, Device::Cpu, 2).unwrap();
        b.state
            .load(&train::params::read_safetensors(&path).unwrap(), &path)
            .unwrap();
        let (ya, yb) = tch::no_grad(|| {
            (
                a.forward(&[x.shallow_clone()], false),
                b.forward(&[x], false),
            )
        });
        assert!(ya.equal(&yb));
    }

    #[test]
    fn shapes_at_224_and_896() {
        let _g = tch::no_grad_guard();
        let d = Decoder::vit(
            VitShape {
                in_channels: 8,
                size: 896,
            },
            Device::Cpu,
            1,
        )
        .unwrap();
        let out = d.forward(
            &[Tensor::zeros([1, 8, 64, 64], tch::kind::FLOAT_CPU)],
            false,
        );
        assert_eq!(out.size(), [1, 1, 896, 896]);
        let s = UNetShape {
            vector_dim: 4,
            skips: [2, 3, 4, 5],
            size: 224,
            shared_neck: true,
        };
        let d = Decoder::unet(s, Device::Cpu, 1).unwrap();
        let f = |c: i64, h: i64| Tensor::zeros([2, c, h, h], tch::kind::FLOAT_CPU);
        let out = d.forward(
            &[
                Tensor::zeros([2, 4], tch::kind::FLOAT_CPU),
                f(2, 112),
                f(3, 56),
                f(4, 28),
                f(5, 14),
            ],
            false,
        );
        assert_eq!(out.size(), [2, 1, 224, 224]);
    }
}
