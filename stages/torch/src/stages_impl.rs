//! The torch stages' `run`, as the worker executes them: a [`StageContext`] (rebuilt from the
//! runner's job) to the encode loops. Declarations (parameters, inputs, checks) are shared with
//! the runner through `crate::encode`.

use std::path::{Path, PathBuf};

use pipeline::{StageContext, StageError};
use stages::encode::EncodeRun;
use stages::kinds;
use stages::kinds::encode_image::EncodeImageParams;
use stages::kinds::encode_text::EncodeTextParams;

use crate::bert::{TextEncoder, TextPooling};
use crate::encode::{self, Shard};
use crate::encoder::{
    device_name, encode_images, encode_texts, torch_device, torch_precision, Items, LoopOptions,
    VisionModel,
};
use crate::error::Error;
use crate::preprocess::{Normalize, Preprocess};
use crate::table::{read_string_columns, TableMeta};

/// Runs the stage `kind` in this process (the worker's registry, [`crate::kinds`]).
pub fn run(kind: &str, ctx: &StageContext) -> Result<(), StageError> {
    crate::kinds::find(kind)?.run(ctx)
}

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

fn records_path(ctx: &StageContext) -> Result<PathBuf, StageError> {
    Ok(ctx.input("records")?.path.join(stages::ingest::RECORDS))
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
    let records = records_path(ctx)?;
    let mut cols = read_string_columns(&records, &["key", "split", column])?;
    let (texts, splits, keys) = (
        cols.pop().unwrap(),
        cols.pop().unwrap(),
        cols.pop().unwrap(),
    );
    let range = c.shard.range(keys.len());
    let enc = TextEncoder::load(dir, max_length, c.device, c.precision)?;
    if pooling == TextPooling::Pooler && !enc.model.has_pooler() {
        return Err(Error::Invalid(format!(
            "pooling `pooler`: {} has no pooler weights (pooler.dense.*); use cls or mean",
            dir.display()
        ))
        .into());
    }
    ctx.log(format!(
        "encode-text: {name} ({} layers, dim {}) on {} {}, {} of {} texts (shard {}), pooling {pooling_name}, max_length {max_length}",
        enc.model.config.num_hidden_layers,
        enc.dim(),
        device_name(c.device),
        c.precision_name,
        range.len(),
        keys.len(),
        c.shard
    ));
    let tokens = pooling == TextPooling::Tokens;
    let meta = TableMeta {
        table: if tokens { "tokens" } else { "embeddings" }.into(),
        backbone: name,
        backbone_kind: kind,
        dim: enc.dim() as usize,
        tokens: tokens.then_some(max_length),
        pooling: pooling_name.to_string(),
        preprocessing: serde_json::json!({
            "text_column": column, "max_length": max_length, "truncation": true,
            "padding": "per batch, masked", "model_type": enc.model.config.model_type,
        })
        .to_string(),
        precision: c.precision_name.to_string(),
        shard: c.shard.to_string(),
        row_start: range.start,
        row_end: range.end,
        rows_total: keys.len(),
    };
    let file = if tokens {
        encode::TOKENS_FILE
    } else {
        encode::EMBEDDINGS_FILE
    };
    let opts = LoopOptions::new(c.batch_size, ctx.threads(), "texts", c.device);
    let items = Items {
        keys: &keys[range.clone()],
        splits: Some(&splits[range.clone()]),
        values: &texts[range],
    };
    let n = encode_texts(
        &enc,
        pooling,
        items,
        &ctx.out_dir().join(file),
        &meta,
        &opts,
        ctx,
    )?;
    ctx.log(format!("wrote {n} rows to {file}"));
    Ok(())
}

/// `encode-image`: the records' images through a DINOv2 or ResNet-AE backbone.
pub fn encode_image(p: &EncodeImageParams, ctx: &StageContext) -> Result<(), StageError> {
    let (dir, name, kind) = backbone(ctx, encode::IMAGE_BACKBONES, encode::ENCODE_IMAGE)?;
    let c = common(&p.run)?;
    let raw = ctx.input("raw")?.path.clone();
    let resize = p.resize as u32;
    let crop = p.image_size as u32;
    let normalize = match p.normalize {
        kinds::encode_image::Normalize::Imagenet => Normalize::Imagenet,
        kinds::encode_image::Normalize::Half => Normalize::Half,
    };
    let records = records_path(ctx)?;
    let mut cols = read_string_columns(&records, &["key", "split", "path"])?;
    let (paths, splits, keys) = (
        cols.pop().unwrap(),
        cols.pop().unwrap(),
        cols.pop().unwrap(),
    );
    let range = c.shard.range(keys.len());
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
        range.len(),
        keys.len(),
        c.shard,
        pooling.name(),
        pre.describe()
    ));
    let meta = TableMeta {
        table: if tokens { "tokens" } else { "embeddings" }.into(),
        backbone: name,
        backbone_kind: kind,
        dim: model.dim(),
        tokens: n_tokens,
        pooling: pooling.name().to_string(),
        preprocessing: pre.describe().to_string(),
        precision: c.precision_name.to_string(),
        shard: c.shard.to_string(),
        row_start: range.start,
        row_end: range.end,
        rows_total: keys.len(),
    };
    let files: Vec<PathBuf> = paths[range.clone()].iter().map(|p| raw.join(p)).collect();
    let file = if tokens {
        encode::TOKENS_FILE
    } else {
        encode::EMBEDDINGS_FILE
    };
    let opts = LoopOptions::new(c.batch_size, ctx.threads(), "images", c.device);
    let items = Items {
        keys: &keys[range.clone()],
        splits: Some(&splits[range]),
        values: &files,
    };
    let n = encode_images(
        &model,
        pooling,
        &pre,
        items,
        &ctx.out_dir().join(file),
        &meta,
        &opts,
        ctx,
    )?;
    ctx.log(format!("wrote {n} rows to {file}"));
    Ok(())
}
