//! The frozen part of a segmenter: backbone (+ optional frozen adaptor) from gray images to the
//! decoder's inputs. The U-Net gets `[vector, block1, block2, block3, block4]`, the ViT decoder
//! `[grid]` (patch tokens through the adaptor, reshaped to `[B, C, g, g]`).

use std::path::Path;

use stages::images::Gray8;
use tch::{Device, Kind, Tensor};
use train::{Adaptor, ImageOnly};

use super::decoders::{Decoder, UNetShape, VitShape};
use crate::dinov2::Dinov2Model;
use crate::error::{Error, Result};
use crate::preprocess::{Normalize, Preprocess};
use crate::resnet_ae::ResNetAeEncoder;

pub enum SegBackbone {
    ResNetAe(ResNetAeEncoder),
    Dinov2 {
        model: Dinov2Model,
        normalize: Normalize,
    },
}

impl SegBackbone {
    /// `kind`: `resnet-ae` or `dinov2`; weights in fp32 on `device`.
    pub fn load(dir: &Path, kind: &str, normalize: Normalize, device: Device) -> Result<Self> {
        match kind {
            "resnet-ae" => Ok(SegBackbone::ResNetAe(ResNetAeEncoder::load(
                dir,
                device,
                Kind::Float,
            )?)),
            "dinov2" => Ok(SegBackbone::Dinov2 {
                model: Dinov2Model::load(dir, device, Kind::Float)?,
                normalize,
            }),
            other => Err(Error::unknown(
                "segmentation backbone",
                other,
                "resnet-ae or dinov2",
            )),
        }
    }

    /// The vector the adaptor takes: block5's channels or DINOv2's hidden size.
    pub fn dim(&self) -> i64 {
        match self {
            SegBackbone::ResNetAe(m) => m.latent_channels,
            SegBackbone::Dinov2 { model, .. } => model.config.hidden_size,
        }
    }

    /// The backbone's own preprocessing (reference B.2; the original fed both backbones its
    /// segmentation pipeline's [-1, 1] images instead, G.11).
    pub fn preprocess(&self, crop: u32) -> Preprocess {
        match self {
            SegBackbone::ResNetAe(_) => Preprocess::ResNetAe { resize: crop, crop },
            SegBackbone::Dinov2 { normalize, .. } => Preprocess::Dinov2 {
                resize: crop,
                crop,
                normalize: *normalize,
            },
        }
    }

    /// A fresh decoder that fits this backbone and adaptor at `crop` px.
    pub fn decoder(
        &self,
        adaptor: Option<&Adaptor>,
        crop: u32,
        shared_neck: bool,
        device: Device,
        seed: u64,
    ) -> Result<Decoder> {
        let dim = match adaptor {
            Some(a) => {
                if a.cfg.vision_dim != self.dim() {
                    return Err(Error::InputShape {
                        model: "the adaptor",
                        expected: format!("{}-d image vectors", a.cfg.vision_dim),
                        found: format!("{}-d from the backbone", self.dim()),
                    });
                }
                a.cfg.projection_dim
            }
            None => self.dim(),
        };
        match self {
            SegBackbone::ResNetAe(m) => {
                let c = m.block_channels();
                Decoder::unet(
                    UNetShape {
                        vector_dim: dim,
                        skips: [c[0], c[1], c[2], c[3]],
                        size: crop as i64,
                        shared_neck,
                    },
                    device,
                    seed,
                )
            }
            SegBackbone::Dinov2 { .. } => Decoder::vit(
                VitShape {
                    in_channels: dim,
                    size: crop as i64,
                },
                device,
                seed,
            ),
        }
    }

    /// The decoder's inputs for a batch of images (no gradient).
    pub fn features(
        &self,
        images: &[&Gray8],
        crop: u32,
        adaptor: Option<&Adaptor>,
    ) -> Result<Vec<Tensor>> {
        let _g = tch::no_grad_guard();
        let pre = self.preprocess(crop);
        let (c, s) = (pre.channels() as i64, crop as i64);
        let mut buf = Vec::with_capacity(images.len() * pre.len());
        for g in images {
            buf.extend(pre.apply(g, crop));
        }
        let x = Tensor::from_slice(&buf).view([images.len() as i64, c, s, s]);
        let embed = |v: &Tensor| -> Result<Tensor> {
            match adaptor {
                Some(a) => a
                    .embed_image(&v.to_device(a.device()), None, ImageOnly::PerSample)
                    .map_err(Error::from),
                None => Ok(v.shallow_clone()),
            }
        };
        match self {
            SegBackbone::ResNetAe(m) => {
                let blocks = m.encode_blocks(&x)?;
                let vector = embed(&ResNetAeEncoder::pooled(&blocks[4]))?;
                let mut out = vec![vector];
                out.extend(blocks.into_iter().take(4));
                Ok(out)
            }
            SegBackbone::Dinov2 { model, .. } => {
                let (_, tokens) = model.forward(&x)?;
                let t = embed(&tokens)?;
                let (b, n, d) = (t.size()[0], t.size()[1], t.size()[2]);
                let g = (n as f64).sqrt().round() as i64;
                if g * g != n {
                    return Err(Error::InputShape {
                        model: "the ViT decoder",
                        expected: "a square grid of patch tokens".into(),
                        found: format!("{n} patch tokens"),
                    });
                }
                // The original's `reshape(B, g, g, C).permute(0, 3, 1, 2)`.
                Ok(vec![t
                    .reshape([b, g, g, d])
                    .permute([0, 3, 1, 2])
                    .contiguous()])
            }
        }
    }
}
