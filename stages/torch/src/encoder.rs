//! The encode loops: items (texts, or image files) through a backbone into an embedding table.
//!
//! Batches are prepared (tokenised, or decoded and preprocessed in parallel); on a GPU this runs
//! ahead of the forward pass through a bounded prefetch queue into pinned memory (see
//! [`crate::prefetch`]). Rows are written in input order, so the table's keys are the input's keys
//! (reference G.3); on the CPU the same inputs and settings give bit-identical tables.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::bert::{TextEncoder, TextPooling};
use crate::dinov2::Dinov2Model;
use crate::error::{Error, Result};
pub use crate::image_source::ImageSource;
use crate::preprocess::{Preprocess, TrainCrop};
use crate::resnet_ae::ResNetAeEncoder;
use artifacts::table::{EmbeddingWriter, TableMeta};

use crate::prefetch::{pipelined, Meter};
pub use crate::prefetch::{LoopOptions, Reporter, DEFAULT_PREFETCH};

/// The libtorch device for a kind's `device` parameter (the one parser of device names is
/// [`stages::kinds::Device::parse`]).
pub fn torch_device(device: stages::kinds::Device) -> Result<Device> {
    use stages::kinds::Device as Choice;
    match device {
        Choice::Cpu => Ok(Device::Cpu),
        Choice::Auto => Ok(Device::cuda_if_available()),
        Choice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        Choice::Cuda => Err(Error::parameter(
            "device",
            "`cuda`",
            "but libtorch sees no CUDA device (`adaptor-torch env` shows what it sees)",
        )),
    }
}

/// `device = auto | cpu | cuda` given as text (the command line, training configurations).
pub fn pick_device(name: &str) -> Result<Device> {
    let device = stages::kinds::Device::parse(name)
        .ok_or_else(|| Error::unknown("device", name, "auto, cpu or cuda"))?;
    torch_device(device)
}

/// The libtorch dtype of a kind's `precision` parameter.
pub fn torch_precision(precision: stages::kinds::Precision) -> Kind {
    match precision {
        stages::kinds::Precision::Fp32 => Kind::Float,
        stages::kinds::Precision::Bf16 => Kind::BFloat16,
    }
}

/// `precision = fp32 | bf16` given as text (the command line).
pub fn pick_precision(name: &str) -> Result<Kind> {
    stages::kinds::Precision::parse(name)
        .map(torch_precision)
        .ok_or_else(|| Error::unknown("precision", name, "fp32 or bf16"))
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    let t = t
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
        .flatten(0, -1);
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

/// What to encode: keys, optional splits, and per row a text or an image path.
pub struct Items<'a, T> {
    pub keys: &'a [String],
    pub splits: Option<&'a [String]>,
    pub values: &'a [T],
}

// The write windows are shared with the merge of shards (`artifacts::table`), which must write
// the same windows to reproduce an unsharded file byte for byte.
use artifacts::table::write_window;

/// A table an encode loop writes, fed one window of rows after another: the writer, the run's
/// progress and the time in forward passes.
pub struct TableOut {
    writer: EmbeddingWriter,
    meter: Meter,
    forward: f64,
}

impl TableOut {
    /// The table at `out` for a run of `rows` rows in all (`with_split`: rows carry a split).
    pub fn create(
        out: &Path,
        meta: &TableMeta,
        with_split: bool,
        rows: usize,
        opts: &LoopOptions,
        rep: &dyn Reporter,
    ) -> Result<Self> {
        Ok(TableOut {
            writer: EmbeddingWriter::create(out, meta, with_split)?,
            meter: Meter::start(rows, opts.unit, rep),
            forward: 0.0,
        })
    }

    /// Logs the time in forward passes and finishes the file; returns the rows written.
    pub fn finish(self, opts: &LoopOptions, rep: &dyn Reporter) -> Result<usize> {
        log_forward(rep, self.forward, self.meter.total(), opts.unit);
        Ok(self.writer.finish()?)
    }
}

/// Encodes texts into `out` (a pooled table, or a token table padded to `max_length`).
pub fn encode_texts(
    enc: &TextEncoder,
    pooling: TextPooling,
    items: Items<'_, String>,
    out: &Path,
    meta: &TableMeta,
    opts: &LoopOptions,
    rep: &dyn Reporter,
) -> Result<usize> {
    let with_split = items.splits.is_some();
    let mut table = TableOut::create(out, meta, with_split, items.keys.len(), opts, rep)?;
    encode_texts_into(enc, pooling, items, &mut table, opts, rep)?;
    table.finish(opts, rep)
}

/// Encodes a window of texts into `table`, after the rows already there. Rows are written in
/// windows of [`write_window`] rows counted from the window's first row: windows of a multiple of
/// that length give the same file as one call over all rows.
pub fn encode_texts_into(
    enc: &TextEncoder,
    pooling: TextPooling,
    items: Items<'_, String>,
    table: &mut TableOut,
    opts: &LoopOptions,
    rep: &dyn Reporter,
) -> Result<()> {
    let dim = enc.dim() as usize;
    let max_len = enc.tokenizer.max_length();
    let tokens = pooling == TextPooling::Tokens;
    let bs = opts.batch_size.max(1);
    let window = write_window(stages::encode::ENCODE_TEXT, bs, tokens);
    let rows = items.keys.len();
    // The producer thread only touches the tokenizer (the model's tensors stay on this thread).
    let tokenizer = &enc.tokenizer;
    let TableOut {
        writer: w,
        meter,
        forward,
    } = table;
    pipelined(
        rows,
        window,
        opts,
        rep,
        meter,
        |r| {
            // Character count stands in for token count; the stable sort keeps it deterministic.
            let mut order: Vec<usize> = r.collect();
            order.sort_by_key(|&i| items.values[i].len());
            order
                .chunks(bs)
                .map(|idx| {
                    let texts: Vec<&str> = idx.iter().map(|&i| items.values[i].as_str()).collect();
                    Ok((idx.to_vec(), tokenizer.encode(&texts)?))
                })
                .collect::<Result<Vec<_>>>()
        },
        |r, batches| {
            let per_row = if tokens { max_len * dim } else { dim };
            let mut values = vec![0f32; r.len() * per_row];
            let mut mask = tokens.then(|| vec![false; r.len() * max_len]);
            for (idx, batch) in batches {
                let t0 = Instant::now();
                let (emb, _) = enc.embed_tokens(&batch, pooling)?;
                let src = to_f32_vec(&emb);
                *forward += t0.elapsed().as_secs_f64();
                let l = batch.len;
                for (j, &row) in idx.iter().enumerate() {
                    let o = row - r.start;
                    if let Some(m) = mask.as_mut() {
                        // Pad to max_length positions: zeros, mask false.
                        values[o * per_row..o * per_row + l * dim]
                            .copy_from_slice(&src[j * l * dim..(j + 1) * l * dim]);
                        for k in 0..l {
                            m[o * max_len + k] = batch.mask[j * l + k] != 0;
                        }
                    } else {
                        values[o * dim..(o + 1) * dim]
                            .copy_from_slice(&src[j * dim..(j + 1) * dim]);
                    }
                }
            }
            let splits = items.splits.map(|s| &s[r.clone()]);
            Ok(w.write(&items.keys[r], splits, values, mask)?)
        },
    )
}

/// The time spent in forward passes (outputs copied to the CPU included, which also waits for a
/// GPU to finish), as the benchmark reports it next to the end-to-end rate.
fn log_forward(rep: &dyn Reporter, secs: f64, rows: usize, unit: &str) {
    rep.log(&format!(
        "forward passes: {secs:.2} s ({:.1} {unit}/s)",
        rows as f64 / secs.max(1e-9)
    ));
}

/// The image backbones.
pub enum VisionModel {
    Dinov2(Dinov2Model),
    ResNetAe(ResNetAeEncoder),
}

/// `pooling` of encode-image, resolved per backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePooling {
    Cls,
    Mean,
    Tokens,
}

impl ImagePooling {
    pub fn name(self) -> &'static str {
        match self {
            ImagePooling::Cls => "cls",
            ImagePooling::Mean => "mean",
            ImagePooling::Tokens => "tokens",
        }
    }
}

impl VisionModel {
    /// `kind`: the backbone kind (`dinov2`, `resnet-ae`).
    pub fn load(dir: &Path, kind: &str, device: Device, precision: Kind) -> Result<Self> {
        match kind {
            "dinov2" => Ok(VisionModel::Dinov2(Dinov2Model::load(
                dir, device, precision,
            )?)),
            "resnet-ae" => Ok(VisionModel::ResNetAe(ResNetAeEncoder::load(
                dir, device, precision,
            )?)),
            other => Err(Error::unknown(
                "image backbone kind",
                other,
                "dinov2, resnet-ae",
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            VisionModel::Dinov2(_) => "dinov2",
            VisionModel::ResNetAe(_) => "resnet-ae",
        }
    }

    /// `auto` → the original's output: DINOv2's CLS, ResNet-AE's mean latent.
    pub fn resolve_pooling(&self, name: &str) -> Result<ImagePooling> {
        Ok(match (self, name) {
            (VisionModel::Dinov2(_), "auto" | "cls") => ImagePooling::Cls,
            (VisionModel::ResNetAe(_), "auto" | "mean") => ImagePooling::Mean,
            (VisionModel::ResNetAe(_), "cls") => {
                return Err(Error::parameter(
                    "pooling",
                    "`cls`",
                    "cannot be used: the ResNet autoencoder has no CLS token (use auto, mean or tokens)",
                ))
            }
            (_, "mean") => ImagePooling::Mean,
            (_, "tokens") => ImagePooling::Tokens,
            (_, other) => {
                return Err(Error::unknown("pooling", other, "auto, cls, mean, tokens"))
            }
        })
    }

    pub fn dim(&self) -> usize {
        match self {
            VisionModel::Dinov2(m) => m.config.hidden_size as usize,
            VisionModel::ResNetAe(m) => m.latent_channels as usize,
        }
    }

    /// Tokens per image at `size` px (patch tokens, or latent positions).
    pub fn token_count(&self, size: u32) -> Result<usize> {
        let _g = tch::no_grad_guard();
        let x = Tensor::zeros(
            [1, self.channels(), size as i64, size as i64],
            (Kind::Float, Device::Cpu),
        );
        Ok(self.forward(&x, ImagePooling::Tokens)?.size()[1] as usize)
    }

    pub fn channels(&self) -> i64 {
        match self {
            VisionModel::Dinov2(m) => m.config.num_channels,
            VisionModel::ResNetAe(_) => 1,
        }
    }

    /// `[B, C, S, S]` → `[B, D]` or `[B, N, D]` (tokens).
    pub fn forward(&self, pixels: &Tensor, pooling: ImagePooling) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        Ok(match self {
            VisionModel::Dinov2(m) => {
                let (cls, tokens) = m.forward(pixels)?;
                match pooling {
                    ImagePooling::Cls => cls,
                    ImagePooling::Mean => tokens.mean_dim(1, false, None),
                    ImagePooling::Tokens => tokens,
                }
            }
            VisionModel::ResNetAe(m) => {
                let z = m.encode(pixels)?;
                match pooling {
                    ImagePooling::Mean => ResNetAeEncoder::pooled(&z),
                    ImagePooling::Tokens => ResNetAeEncoder::tokens(&z),
                    ImagePooling::Cls => {
                        return Err(Error::parameter(
                            "pooling",
                            "`cls`",
                            "cannot be used: ResNet-AE has no CLS token",
                        ))
                    }
                }
            }
        })
    }

    /// Checks the preprocessing fits the backbone (channels, patch size).
    pub fn check_preprocess(&self, p: &Preprocess) -> Result<()> {
        match (self, p) {
            (VisionModel::Dinov2(m), Preprocess::Dinov2 { crop, .. }) => {
                if (*crop as i64) < m.config.patch_size {
                    return Err(Error::parameter(
                        "image_size",
                        crop,
                        format!(
                            "is smaller than DINOv2's patch size {}",
                            m.config.patch_size
                        ),
                    ));
                }
                if *crop as i64 % m.config.patch_size != 0 {
                    return Err(Error::parameter(
                        "image_size",
                        crop,
                        format!(
                            "is not a multiple of DINOv2's patch size {} (224 = 16 × 14)",
                            m.config.patch_size
                        ),
                    ));
                }
                Ok(())
            }
            (VisionModel::ResNetAe(_), Preprocess::ResNetAe { .. }) => Ok(()),
            _ => Err(Error::parameter(
                "preprocessing",
                match p {
                    Preprocess::Dinov2 { .. } => "dinov2",
                    Preprocess::ResNetAe { .. } => "resnet-ae",
                },
                format!("does not match the {} backbone", self.kind()),
            )),
        }
    }
}

/// Encodes image files into `out`. A file that cannot be read fails the run with its path.
#[allow(clippy::too_many_arguments)]
pub fn encode_images(
    model: &VisionModel,
    pooling: ImagePooling,
    pre: &Preprocess,
    train_crop: TrainCrop,
    items: Items<'_, PathBuf>,
    out: &Path,
    meta: &TableMeta,
    opts: &LoopOptions,
    rep: &dyn Reporter,
) -> Result<usize> {
    let rows = ImageRows {
        keys: items.keys,
        splits: items.splits,
        source: ImageSource::Files(items.values),
    };
    encode_image_rows(model, pooling, pre, train_crop, rows, out, meta, opts, rep)
}

/// The rows an image encode loop writes: keys, optional splits, and where their pixels are.
pub struct ImageRows<'a> {
    pub keys: &'a [String],
    pub splits: Option<&'a [String]>,
    pub source: ImageSource<'a>,
}

/// Encodes images from files or a preprocess artifact into `out`. Batches are prepared on all
/// threads ahead of the forward pass (a bounded queue into pinned memory on a GPU, see
/// [`crate::prefetch`]); rows are written in order.
#[allow(clippy::too_many_arguments)]
pub fn encode_image_rows(
    model: &VisionModel,
    pooling: ImagePooling,
    pre: &Preprocess,
    train_crop: TrainCrop,
    items: ImageRows<'_>,
    out: &Path,
    meta: &TableMeta,
    opts: &LoopOptions,
    rep: &dyn Reporter,
) -> Result<usize> {
    let with_split = items.splits.is_some();
    let mut table = TableOut::create(out, meta, with_split, items.keys.len(), opts, rep)?;
    let n_tokens = meta.tokens;
    encode_image_rows_into(
        model, pooling, pre, train_crop, items, n_tokens, &mut table, opts, rep,
    )?;
    table.finish(opts, rep)
}

/// Encodes a window of images into `table` (`n_tokens`: its tokens per row, `None` for a pooled
/// table), after the rows already there; written in windows of [`write_window`] rows from the
/// window's first row, like [`encode_texts_into`].
#[allow(clippy::too_many_arguments)]
pub fn encode_image_rows_into(
    model: &VisionModel,
    pooling: ImagePooling,
    pre: &Preprocess,
    train_crop: TrainCrop,
    items: ImageRows<'_>,
    n_tokens: Option<usize>,
    table: &mut TableOut,
    opts: &LoopOptions,
    rep: &dyn Reporter,
) -> Result<()> {
    model.check_preprocess(pre)?;
    // DINOv2 only: ResNet-AE's transform has no random crop in the original either.
    let (resize, crop) = match *pre {
        Preprocess::Dinov2 { resize, crop, .. } => (resize, crop),
        Preprocess::ResNetAe { .. } => (0, 0),
    };
    let offset = |i: usize| -> Option<(u32, u32)> {
        let split = items.splits.map_or("", |s| s[i].as_str());
        train_crop.offset(&items.keys[i], split, resize, crop)
    };
    let (c, s) = (pre.channels() as i64, pre.crop() as i64);
    let (device, pin) = (opts.device, opts.pin());
    let TableOut {
        writer: w,
        meter,
        forward,
    } = table;
    pipelined(
        items.keys.len(),
        write_window(
            stages::encode::ENCODE_IMAGE,
            opts.batch_size,
            n_tokens.is_some(),
        ),
        opts,
        rep,
        meter,
        |r| {
            let b = r.len() as i64;
            let buf = items.source.load(pre, r, &offset)?;
            let x = Tensor::from_slice(&buf).view([b, c, s, s]);
            // Page-locked on the producer thread, so that the copy below can be asynchronous.
            Ok(if pin { x.pin_memory(device) } else { x })
        },
        |r, x| {
            let t0 = Instant::now();
            // Non-blocking from pinned memory: the copy overlaps the host's work until the output
            // is read back (`to_f32_vec` waits for the device), while `x` is still alive.
            let on_device = x.to_device_(device, Kind::Float, pin, false);
            let emb = to_f32_vec(&model.forward(&on_device, pooling)?);
            *forward += t0.elapsed().as_secs_f64();
            let splits = items.splits.map(|sp| &sp[r.clone()]);
            let mask = n_tokens.map(|l| vec![true; r.len() * l]);
            Ok(w.write(&items.keys[r], splits, emb, mask)?)
        },
    )
}
