//! The frozen part of a segmentation run at training time: each split's decoder inputs computed
//! once and cached (in memory while they fit in the stage's budget, else in row files on disk,
//! gathered per batch), or recomputed per batch (augmented training images).

use std::path::{Path, PathBuf};

use artifacts::rowfile::{RowFile, RowFileWriter, RowShape};
use tch::{Device, Kind, Tensor};
use train::Adaptor;

use super::augment::ShiftScaleRotate;
use super::data::SegSplit;
use super::features::SegBackbone;
use crate::error::{Error, Result};

/// A split's decoder inputs: cached, or recomputed per batch.
pub(super) struct SplitFeatures<'a> {
    pub(super) split: &'a SegSplit,
    cached: Option<Cached>,
    masks: Tensor,
}

/// Cached features: one tensor per decoder input (`[N, ...]`), in memory or in row files.
enum Cached {
    Memory(Vec<Tensor>),
    Disk(Vec<(RowFile, Vec<i64>)>),
}

pub(super) struct Frozen<'a> {
    pub(super) backbone: &'a SegBackbone,
    pub(super) adaptor: Option<&'a Adaptor>,
    pub(super) crop: u32,
    pub(super) device: Device,
    /// [`super::SegConfig::feature_store`].
    pub(super) store: Option<(u64, PathBuf)>,
}

impl Frozen<'_> {
    fn compute(&self, split: &SegSplit, idx: &[usize]) -> Result<Vec<Tensor>> {
        let imgs: Vec<_> = idx.iter().map(|&i| &split.images[i]).collect();
        Ok(self
            .backbone
            .features(&imgs, self.crop, self.adaptor)?
            .into_iter()
            .map(|t| t.to_device(self.device))
            .collect())
    }

    /// Every image's features in memory, in chunks of `chunk` (the first one given if computed).
    fn in_memory(
        &self,
        split: &SegSplit,
        first: Option<Vec<Tensor>>,
        all: &[usize],
        chunk: usize,
    ) -> Result<Cached> {
        let mut parts: Vec<Vec<Tensor>> = Vec::new();
        let mut chunks = all.chunks(chunk.max(1));
        if let Some(f) = first {
            chunks.next();
            parts.push(f);
        }
        for c in chunks {
            parts.push(self.compute(split, c)?);
        }
        let k = parts[0].len();
        Ok(Cached::Memory(
            (0..k)
                .map(|j| Tensor::cat(&parts.iter().map(|p| &p[j]).collect::<Vec<_>>(), 0))
                .collect(),
        ))
    }

    /// Every image's features into row files under `dir` (one per decoder input), chunk by chunk:
    /// only one chunk is ever in memory.
    fn spill(
        &self,
        split: &SegSplit,
        first: Vec<Tensor>,
        all: &[usize],
        chunk: usize,
        dir: &Path,
        name: &str,
    ) -> Result<Cached> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let shapes: Vec<Vec<i64>> = first.iter().map(|t| t.size()[1..].to_vec()).collect();
        let mut writers = shapes
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let shape = RowShape {
                    row_len: s.iter().product::<i64>() as usize,
                    mask_len: 0,
                };
                RowFileWriter::create(&dir.join(format!("{name}-{j}.rows")), shape)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut chunks = all.chunks(chunk.max(1));
        chunks.next();
        let mut feats = Some(first);
        loop {
            let f = match feats.take() {
                Some(f) => f,
                None => match chunks.next() {
                    Some(c) => self.compute(split, c)?,
                    None => break,
                },
            };
            for (w, t) in writers.iter_mut().zip(&f) {
                let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
                let rows = t.size()[0] as usize;
                let flat = Vec::<f32>::try_from(t.view([-1])).map_err(Error::from)?;
                let len = w.shape().row_len;
                for r in 0..rows {
                    w.push(&flat[r * len..(r + 1) * len], None)?;
                }
            }
        }
        let files = writers
            .into_iter()
            .zip(shapes)
            .map(|(w, s)| Ok((w.finish()?, s)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Cached::Disk(files))
    }

    pub(super) fn prepare<'s>(
        &self,
        split: &'s SegSplit,
        cache: bool,
        chunk: usize,
        name: &str,
    ) -> Result<SplitFeatures<'s>> {
        let s = self.crop as i64;
        let n = split.len();
        let mut mask_buf = Vec::with_capacity(n * (s * s) as usize);
        for m in &split.masks {
            mask_buf.extend_from_slice(m);
        }
        let masks = Tensor::from_slice(&mask_buf)
            .view([n as i64, 1, s, s])
            .to_device(self.device);
        let all: Vec<usize> = (0..n).collect();
        let cached = match (cache && n > 0, &self.store) {
            (false, _) => None,
            (true, Some((budget, dir))) => {
                // The first chunk says how large a split's features are.
                let first = self.compute(split, &all[..chunk.max(1).min(n)])?;
                let per_image: i64 = first
                    .iter()
                    .map(|t| t.numel() as i64 / t.size()[0] * 4)
                    .sum();
                if per_image as u64 * n as u64 > *budget {
                    Some(self.spill(split, first, &all, chunk, dir, name)?)
                } else {
                    Some(self.in_memory(split, Some(first), &all, chunk)?)
                }
            }
            (true, None) => Some(self.in_memory(split, None, &all, chunk)?),
        };
        Ok(SplitFeatures {
            split,
            cached,
            masks,
        })
    }

    /// A training batch through `aug`: each image and its mask transformed together (drawn
    /// from `(seed, epoch, image)`), then through the frozen part.
    pub(super) fn augmented_batch(
        &self,
        split: &SegSplit,
        idx: &[usize],
        aug: &ShiftScaleRotate,
        seed: u64,
        epoch: u64,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let s = self.crop as i64;
        let (imgs, masks): (Vec<_>, Vec<_>) = idx
            .iter()
            .map(|&i| match aug.draw(seed, epoch, i as u64) {
                Some((angle, scale)) => aug.apply(&split.images[i], &split.masks[i], angle, scale),
                None => (split.images[i].clone(), split.masks[i].clone()),
            })
            .unzip();
        let refs: Vec<_> = imgs.iter().collect();
        let feats = self
            .backbone
            .features(&refs, self.crop, self.adaptor)?
            .into_iter()
            .map(|t| t.to_device(self.device))
            .collect();
        let t = Tensor::from_slice(&masks.concat())
            .view([idx.len() as i64, 1, s, s])
            .to_device(self.device)
            .to_kind(Kind::Float);
        Ok((feats, t))
    }

    pub(super) fn batch(&self, f: &SplitFeatures, idx: &[usize]) -> Result<(Vec<Tensor>, Tensor)> {
        let ix = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(self.device);
        let feats = match &f.cached {
            Some(Cached::Memory(c)) => c.iter().map(|t| t.index_select(0, &ix)).collect(),
            Some(Cached::Disk(files)) => {
                let mut out = Vec::with_capacity(files.len());
                for (file, shape) in files {
                    let mut values = Vec::new();
                    file.gather(idx, &mut values, &mut Vec::new())?;
                    let mut dims = vec![idx.len() as i64];
                    dims.extend(shape);
                    out.push(
                        Tensor::from_slice(&values)
                            .view(dims.as_slice())
                            .to_device(self.device),
                    );
                }
                out
            }
            None => self.compute(f.split, idx)?,
        };
        Ok((feats, f.masks.index_select(0, &ix).to_kind(Kind::Float)))
    }
}
