//! The runs of the two encode kinds (`encode-text`, `encode-image`) as the worker executes them: a
//! [`StageContext`] (rebuilt from the runner's job) and the kind's typed parameters to the encode
//! loops. Their declarations are the runner's, in `stages::kinds`; what they share, `stages::encode`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use pipeline::{StageContext, StageError};
use stages::encode::{self, EncodeRun, Shard};
use stages::kinds;
use stages::kinds::encode_image::EncodeImageParams;
use stages::kinds::encode_text::EncodeTextParams;

use crate::bert::{TextEncoder, TextPooling};
use crate::encoder::{
    device_name, encode_image_rows, encode_texts, torch_device, torch_precision, ImageRows,
    ImageSource, Items, LoopOptions, VisionModel,
};
use crate::error::Error;
use crate::preprocess::{Normalize, Preprocess, TrainCrop};
use artifacts::table::{read_string_columns, TableMeta};

/// Sets libtorch's CPU threads for this process.
pub fn set_threads(threads: usize) {
    tch::set_num_threads(threads.max(1) as i32);
}

fn backbone<'a>(
    ctx: &'a StageContext,
    accepted: &[&str],
    stage: &str,
) -> Result<(&'a Path, String, String), StageError> {
    let b = ctx.input("backbone")?;
    let name = b.name().to_string();
    if !accepted.contains(&b.kind()) {
        return Err(format!(
            "{stage}: backbone `{name}` has kind `{}`; {stage} takes {}",
            b.kind(),
            accepted.join(" or ")
        )
        .into());
    }
    Ok((&b.path, name, b.kind().to_string()))
}

/// The run settings both encode kinds share, as libtorch takes them.
struct Common {
    batch_size: usize,
    device: tch::Device,
    precision: tch::Kind,
    precision_name: &'static str,
    shard: Shard,
}

fn common(run: &EncodeRun) -> Result<Common, StageError> {
    Ok(Common {
        batch_size: run.batch_size as usize,
        device: torch_device(run.device)?,
        precision: torch_precision(run.precision),
        precision_name: run.precision.name(),
        shard: run.shard,
    })
}

impl Common {
    /// The metadata of the table this run writes, but for what the backbone says (the caller's
    /// struct update fills in `backbone`, `backbone_kind`, `pooling`, `preprocessing`).
    fn meta(&self, rows: &Rows, dim: usize, tokens: Option<usize>) -> TableMeta {
        TableMeta {
            table: if tokens.is_some() {
                "tokens"
            } else {
                "embeddings"
            }
            .into(),
            backbone: String::new(),
            backbone_kind: String::new(),
            dim,
            tokens,
            pooling: String::new(),
            preprocessing: String::new(),
            precision: self.precision_name.to_string(),
            shard: self.shard.to_string(),
            row_start: rows.range.start,
            row_end: rows.range.end,
            rows_total: rows.keys.len(),
        }
    }

    fn loop_options(&self, ctx: &StageContext, unit: &'static str) -> LoopOptions {
        LoopOptions::new(self.batch_size, ctx.threads(), unit, self.device)
    }
}

/// Runs `encode` into the run's table (the token table, or the pooled one) and logs its rows.
fn write_table(
    ctx: &StageContext,
    tokens: bool,
    encode: impl FnOnce(&Path) -> crate::Result<usize>,
) -> Result<(), StageError> {
    let file = if tokens {
        encode::TOKENS_FILE
    } else {
        encode::EMBEDDINGS_FILE
    };
    let n = encode(&ctx.out_dir().join(file))?;
    ctx.log(format!("wrote {n} rows to {file}"));
    Ok(())
}

/// The records table's keys, splits and one value column, and the rows this shard encodes.
struct Rows {
    keys: Vec<String>,
    splits: Vec<String>,
    values: Vec<String>,
    range: Range<usize>,
}

impl Rows {
    fn read(ctx: &StageContext, column: &str, shard: Shard) -> Result<Rows, StageError> {
        let records = ctx.input("records")?.path.join(stages::ingest::RECORDS);
        let mut cols = read_string_columns(&records, &["key", "split", column])?;
        let (values, splits, keys) = (
            cols.pop().unwrap(),
            cols.pop().unwrap(),
            cols.pop().unwrap(),
        );
        let range = shard.range(keys.len());
        Ok(Rows {
            keys,
            splits,
            values,
            range,
        })
    }

    /// This shard's value column.
    fn values(&self) -> &[String] {
        &self.values[self.range.clone()]
    }

    /// This shard's rows with `values` (the value column, or what it names) to encode.
    fn items<'a, T>(&'a self, values: &'a [T]) -> Items<'a, T> {
        Items {
            keys: &self.keys[self.range.clone()],
            splits: Some(&self.splits[self.range.clone()]),
            values,
        }
    }
}

/// `encode-text`: the records' texts through a BERT-family backbone.
pub fn encode_text(p: &EncodeTextParams, ctx: &StageContext) -> Result<(), StageError> {
    let (dir, name, kind) = backbone(ctx, encode::TEXT_BACKBONES, encode::ENCODE_TEXT)?;
    let c = common(&p.run)?;
    let pooling_name = p.pooling.name();
    let pooling = match p.pooling {
        kinds::encode_text::TextPooling::Pooler => TextPooling::Pooler,
        kinds::encode_text::TextPooling::Cls => TextPooling::Cls,
        kinds::encode_text::TextPooling::Mean => TextPooling::Mean,
        kinds::encode_text::TextPooling::Tokens => TextPooling::Tokens,
    };
    let max_length = p.max_length as usize;
    let column = p.text_column.as_str();
    let rows = Rows::read(ctx, column, c.shard)?;
    let enc = TextEncoder::load(dir, max_length, c.device, c.precision)?;
    if pooling == TextPooling::Pooler && !enc.model.has_pooler() {
        return Err(Error::parameter(
            "pooling",
            "`pooler`:",
            format!(
                "{} has no pooler weights (pooler.dense.*); use cls or mean",
                dir.display()
            ),
        )
        .into());
    }
    ctx.log(format!(
        "encode-text: {name} ({} layers, dim {}) on {} {}, {} of {} texts (shard {}), pooling {pooling_name}, max_length {max_length}",
        enc.model.config.num_hidden_layers,
        enc.dim(),
        device_name(c.device),
        c.precision_name,
        rows.range.len(),
        rows.keys.len(),
        c.shard
    ));
    let tokens = pooling == TextPooling::Tokens;
    let meta = TableMeta {
        backbone: name,
        backbone_kind: kind,
        pooling: pooling_name.to_string(),
        preprocessing: serde_json::json!({
            "text_column": column, "max_length": max_length, "truncation": true,
            "padding": "per batch, masked", "model_type": enc.model.config.model_type,
        })
        .to_string(),
        ..c.meta(&rows, enc.dim() as usize, tokens.then_some(max_length))
    };
    let opts = c.loop_options(ctx, "texts");
    write_table(ctx, tokens, |path| {
        let items = rows.items(rows.values());
        encode_texts(&enc, pooling, items, path, &meta, &opts, ctx)
    })
}

/// `encode-image`: the records' images through a DINOv2 or ResNet-AE backbone.
pub fn encode_image(p: &EncodeImageParams, ctx: &StageContext) -> Result<(), StageError> {
    let (dir, name, kind) = backbone(ctx, encode::IMAGE_BACKBONES, encode::ENCODE_IMAGE)?;
    let c = common(&p.run)?;
    let resize = p.resize as u32;
    let crop = p.image_size as u32;
    let normalize = match p.normalize {
        kinds::encode_image::Normalize::Imagenet => Normalize::Imagenet,
        kinds::encode_image::Normalize::Half => Normalize::Half,
    };
    let rows = Rows::read(ctx, "path", c.shard)?;
    let model = VisionModel::load(dir, &kind, c.device, c.precision)?;
    let pooling = model.resolve_pooling(p.pooling.name())?;
    let pre = match kind.as_str() {
        "dinov2" => Preprocess::Dinov2 {
            resize,
            crop,
            normalize,
        },
        _ => Preprocess::ResNetAe { resize, crop },
    };
    model.check_preprocess(&pre)?;
    let tokens = matches!(pooling, crate::encoder::ImagePooling::Tokens);
    let n_tokens = if tokens {
        Some(model.token_count(crop)?)
    } else {
        None
    };
    ctx.log(format!(
        "encode-image: {name} ({kind}, dim {}) on {} {}, {} of {} images (shard {}), pooling {}, {}",
        model.dim(),
        device_name(c.device),
        c.precision_name,
        rows.range.len(),
        rows.keys.len(),
        c.shard,
        pooling.name(),
        pre.describe()
    ));
    let train_crop = match p.train_crop {
        kinds::encode_image::TrainCrop::Center => TrainCrop::Center,
        kinds::encode_image::TrainCrop::Random => TrainCrop::Random {
            seed: p.crop_seed as u64,
        },
    };
    let mut preprocessing = pre.describe();
    if let (TrainCrop::Random { seed }, Preprocess::Dinov2 { .. }) = (train_crop, pre) {
        preprocessing["train_crop"] = serde_json::json!({ "random": true, "seed": seed });
    }
    let opts = c.loop_options(ctx, "images");
    let decoded_before = stages::images::decoded_count();
    let preprocessed = match ctx.inputs("images") {
        [] => None,
        _ => Some(open_preprocessed(ctx, &rows)?),
    };
    let files: Vec<PathBuf>;
    let source = match &preprocessed {
        Some(images) => {
            if images.size() < resize {
                return Err(Error::parameter(
                    "resize",
                    resize,
                    format!(
                        "is larger than the {} px images of input `images`: preprocess at size \
                         {resize} or more",
                        images.size()
                    ),
                )
                .into());
            }
            if images.size() != resize {
                // Not the decode this stage would do: say so in the table (docs/stages.md).
                preprocessing["from_preprocessed"] = serde_json::json!(images.size());
            }
            ImageSource::Preprocessed {
                images,
                first: rows.range.start,
            }
        }
        None => {
            let raw = &ctx.input("raw")?.path;
            files = rows.values().iter().map(|p| raw.join(p)).collect();
            ImageSource::Files(&files)
        }
    };
    ctx.log(format!("encode-image: {}", source.describe()));
    let meta = TableMeta {
        backbone: name,
        backbone_kind: kind,
        pooling: pooling.name().to_string(),
        preprocessing: preprocessing.to_string(),
        ..c.meta(&rows, model.dim(), n_tokens)
    };
    write_table(ctx, tokens, |path| {
        let items = ImageRows {
            keys: &rows.keys[rows.range.clone()],
            splits: Some(&rows.splits[rows.range.clone()]),
            source,
        };
        encode_image_rows(
            &model, pooling, &pre, train_crop, items, path, &meta, &opts, ctx,
        )
    })?;
    ctx.log(format!(
        "encode-image: decoded {} image files",
        stages::images::decoded_count() - decoded_before
    ));
    Ok(())
}

/// The `images` input (a `preprocess` artifact), checked to hold this stage's records: the same
/// keys in the same order.
fn open_preprocessed(
    ctx: &StageContext,
    rows: &Rows,
) -> Result<stages::preprocess::PreprocessedImages, StageError> {
    let input = ctx.input("images")?;
    let images = stages::preprocess::PreprocessedImages::open(&input.path)?;
    if images.keys() != rows.keys.as_slice() {
        let at = images
            .keys()
            .iter()
            .zip(&rows.keys)
            .position(|(a, b)| a != b)
            .unwrap_or(images.keys().len().min(rows.keys.len()));
        return Err(format!(
            "{}: input `images` ({}) holds other records than input `records`: {} rows against \
             {}, first difference at row {at}; bind a preprocess stage over the same records",
            ctx.instance(),
            input.path.join(stages::preprocess::INDEX_FILE).display(),
            images.keys().len(),
            rows.keys.len()
        )
        .into());
    }
    Ok(images)
}
