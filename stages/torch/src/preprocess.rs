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
//!
//! [`TrainCrop::Random`] replaces DINOv2's center crop on training rows by torchvision's
//! `RandomCrop(crop)` (the original's pre-training embeddings, reference B.2), the offset drawn
//! from `(seed, record key)` so that it depends on neither sharding nor batching.

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

    /// (`resize`, `crop`).
    pub fn sizes(&self) -> (u32, u32) {
        match *self {
            Preprocess::Dinov2 { resize, crop, .. } | Preprocess::ResNetAe { resize, crop } => {
                (resize, crop)
            }
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
        self.load_at(path, None)
    }

    /// [`Preprocess::load`], DINOv2's crop at `offset` (top, left) instead of the center.
    pub fn load_at(&self, path: &Path, offset: Option<(u32, u32)>) -> Result<Vec<f32>> {
        let (resize, crop) = self.sizes();
        if !path.is_file() {
            return Err(Error::Image(stages::Error::Decode {
                path: path.to_path_buf(),
                message: "file not found".into(),
            }));
        }
        let gray = images::load_mgca(path, resize)?;
        Ok(self.apply_at(&gray, crop, offset))
    }

    /// Everything after `load_mgca`, on an 8-bit square image.
    pub fn apply(&self, gray: &Gray<u8>, crop: u32) -> Vec<f32> {
        self.apply_at(gray, crop, None)
    }

    /// [`Preprocess::apply`], DINOv2's crop window at `offset` (top, left) when given.
    pub fn apply_at(&self, gray: &Gray<u8>, crop: u32, offset: Option<(u32, u32)>) -> Vec<f32> {
        match *self {
            Preprocess::Dinov2 { normalize, .. } => {
                let c = match offset {
                    Some((top, left)) if gray.width >= crop && gray.height >= crop => {
                        crop_at(gray, crop, top, left)
                    }
                    _ => images::center_crop(gray, crop, crop),
                };
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

/// A `crop × crop` window of `img` at (top, left), both within the image.
fn crop_at(img: &Gray<u8>, crop: u32, top: u32, left: u32) -> Gray<u8> {
    let (w, c) = (img.width as usize, crop as usize);
    let mut out = Gray::<u8>::new(crop, crop);
    for y in 0..c {
        let s = (y + top as usize) * w + left as usize;
        out.data[y * c..(y + 1) * c].copy_from_slice(&img.data[s..s + c]);
    }
    out
}

/// Where DINOv2's crop window sits on an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainCrop {
    /// torchvision `CenterCrop` on every row.
    Center,
    /// torchvision `RandomCrop` on `train` rows (other splits: center): top and left uniform in
    /// `0..=side - crop`, from SplitMix64 seeded by `derive_seed(seed, key, 0)`.
    Random { seed: u64 },
}

impl TrainCrop {
    /// The (top, left) of row `key` of split `split` on a `side × side` image; `None`: centered.
    pub fn offset(self, key: &str, split: &str, side: u32, crop: u32) -> Option<(u32, u32)> {
        match self {
            TrainCrop::Random { seed } if split == "train" && side >= crop => {
                let mut rng = train::rng::SplitMix64::new(train::rng::derive_seed(seed, key, 0));
                let span = (side - crop) as u64 + 1;
                let top = rng.below(span) as u32;
                let left = rng.below(span) as u32;
                Some((top, left))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod crop_tests {
    use super::*;

    fn ramp(side: u32) -> Gray<u8> {
        let mut g = Gray::<u8>::new(side, side);
        for (i, v) in g.data.iter_mut().enumerate() {
            *v = (i % 251) as u8;
        }
        g
    }

    #[test]
    fn random_train_crops_are_seeded_per_key_and_in_range() {
        let r = TrainCrop::Random { seed: 42 };
        assert_eq!(TrainCrop::Center.offset("a", "train", 256, 224), None);
        assert_eq!(r.offset("a", "valid", 256, 224), None);
        assert_eq!(r.offset("a", "test", 256, 224), None);
        let offsets: Vec<(u32, u32)> = (0..200)
            .map(|i| r.offset(&format!("k{i}"), "train", 256, 224).unwrap())
            .collect();
        assert!(offsets.iter().all(|&(t, l)| t <= 32 && l <= 32));
        // Spread over the range, not one place.
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
        assert!(offsets.iter().any(|&(t, _)| t == 0) && offsets.iter().any(|&(t, _)| t == 32));
        // Same key and seed: same window; another seed: another stream.
        assert_eq!(r.offset("k1", "train", 256, 224), Some(offsets[1]));
        let other: Vec<_> = (0..200)
            .map(|i| TrainCrop::Random { seed: 7 }.offset(&format!("k{i}"), "train", 256, 224))
            .collect();
        assert_ne!(other.iter().flatten().copied().collect::<Vec<_>>(), offsets);
        // No room to move: no offset.
        assert_eq!(r.offset("a", "train", 224, 224), Some((0, 0)));
        assert_eq!(r.offset("a", "train", 200, 224), None);
    }

    #[test]
    fn a_crop_window_at_an_offset_is_that_window() {
        let g = ramp(40);
        let pre = Preprocess::Dinov2 {
            resize: 40,
            crop: 28,
            normalize: Normalize::Half,
        };
        let at = pre.apply_at(&g, 28, Some((3, 9)));
        // Channel 0, pixel (y, x) of the window is image pixel (y + 3, x + 9), as (v/255-0.5)/0.5.
        for (y, x) in [(0usize, 0usize), (5, 17), (27, 27)] {
            let v = g.data[(y + 3) * 40 + x + 9] as f32;
            assert_eq!(at[y * 28 + x], (v / 255.0 - 0.5) / 0.5);
        }
        // The center window is (6, 6), which `apply` takes.
        assert_eq!(pre.apply(&g, 28), pre.apply_at(&g, 28, Some((6, 6))));
        assert_ne!(at, pre.apply(&g, 28));
    }
}
