//! Image preprocessing per backbone (reference B.2), on top of the shared decoder and the
//! original's resize arithmetic in `stages::images`:
//!
//! - every backbone: 8-bit gray (DICOM as MGCA's `read_from_dicom`), longer side resized to
//!   `resize` with `INTER_AREA`, zero-padded to a square (`load_mgca`);
//! - DINOv2: torchvision `CenterCrop(crop)`, `ToTensor`, `Normalize` with ImageNet statistics
//!   (`imagenet`, what DINOv2 was trained with) or the original's 0.5/0.5 (`half`); gray
//!   replicated to 3 channels;
//! - ResNet-AE: torchxrayvision's `normalize(img, 255)` to [-1024, 1024] in float32, then
//!   `XRayCenterCrop` and `XRayResizer(crop, engine="cv2")` (`INTER_AREA` on the floats).

use std::path::Path;

use stages::images::{self, Gray};

use crate::error::{Error, Result};

/// The DINOv2 input normalisation; part of the encode stage's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225): what DINOv2 was trained with.
    Imagenet,
    /// mean 0.5, std 0.5 per channel: what the original feeds it (reference B.2, G.11).
    Half,
}

impl Normalize {
    pub const NAMES: &'static [&'static str] = &["imagenet", "half"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "imagenet" => Some(Normalize::Imagenet),
            "half" => Some(Normalize::Half),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Normalize::Imagenet => "imagenet",
            Normalize::Half => "half",
        }
    }

    /// Per-channel (mean, std), as float32 like torchvision's tensors.
    fn stats(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalize::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Normalize::Half => ([0.5; 3], [0.5; 3]),
        }
    }
}

/// What an image becomes before the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocess {
    /// `[3, crop, crop]`.
    Dinov2 {
        resize: u32,
        crop: u32,
        normalize: Normalize,
    },
    /// `[1, crop, crop]` in [-1024, 1024].
    ResNetAe { resize: u32, crop: u32 },
}

impl Preprocess {
    pub fn channels(&self) -> usize {
        match self {
            Preprocess::Dinov2 { .. } => 3,
            Preprocess::ResNetAe { .. } => 1,
        }
    }

    pub fn crop(&self) -> u32 {
        match self {
            Preprocess::Dinov2 { crop, .. } | Preprocess::ResNetAe { crop, .. } => *crop,
        }
    }

    /// Values per image (`channels · crop²`).
    pub fn len(&self) -> usize {
        self.channels() * (self.crop() as usize).pow(2)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A JSON description for table metadata.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Preprocess::Dinov2 {
                resize,
                crop,
                normalize,
            } => serde_json::json!({
                "steps": "gray8; resize_img(longer side, INTER_AREA, zero pad); center_crop; /255; normalize; gray x3",
                "resize": resize, "crop": crop, "normalize": normalize.name(),
            }),
            Preprocess::ResNetAe { resize, crop } => serde_json::json!({
                "steps": "gray8; resize_img(longer side, INTER_AREA, zero pad); (2x/255-1)*1024; center crop to square; INTER_AREA to crop",
                "resize": resize, "crop": crop, "range": [-1024, 1024],
            }),
        }
    }

    /// Decodes and preprocesses one file. Errors name the file.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        let (resize, crop) = match *self {
            Preprocess::Dinov2 { resize, crop, .. } | Preprocess::ResNetAe { resize, crop } => {
                (resize, crop)
            }
        };
        if !path.is_file() {
            return Err(Error::Image(stages::Error::Decode {
                path: path.to_path_buf(),
                message: "file not found".into(),
            }));
        }
        let gray = images::load_mgca(path, resize)?;
        Ok(self.apply(&gray, crop))
    }

    /// Everything after `load_mgca`, on an 8-bit square image.
    pub fn apply(&self, gray: &Gray<u8>, crop: u32) -> Vec<f32> {
        match *self {
            Preprocess::Dinov2 { normalize, .. } => {
                let c = images::center_crop(gray, crop, crop);
                let (mean, std) = normalize.stats();
                let mut out = Vec::with_capacity(3 * c.data.len());
                for ch in 0..3 {
                    out.extend(
                        c.data
                            .iter()
                            .map(|&v| (v as f32 / 255.0 - mean[ch]) / std[ch]),
                    );
                }
                out
            }
            Preprocess::ResNetAe { .. } => {
                let f = Gray {
                    width: gray.width,
                    height: gray.height,
                    data: gray
                        .data
                        .iter()
                        .map(|&v| (2.0f32 * (v as f32 / 255.0) - 1.0) * 1024.0)
                        .collect(),
                };
                // XRayCenterCrop: the central square, offsets x//2 - side//2.
                let side = f.width.min(f.height);
                let sq = if f.width == f.height {
                    f
                } else {
                    let (x0, y0) = (f.width / 2 - side / 2, f.height / 2 - side / 2);
                    let mut s = Gray::<f32>::new(side, side);
                    for y in 0..side as usize {
                        let src = (y + y0 as usize) * f.width as usize + x0 as usize;
                        s.data[y * side as usize..(y + 1) * side as usize]
                            .copy_from_slice(&f.data[src..src + side as usize]);
                    }
                    s
                };
                images::resize_area(&sq, crop, crop).data
            }
        }
    }
}
