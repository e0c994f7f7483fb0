//! The torch stages' `run`, as the worker executes them: a [`StageContext`] (rebuilt from the
//! runner's job) to the encode loops. Declarations (parameters, inputs, checks) are shared with
//! the runner through `crate::encode`.

use std::path::{Path, PathBuf};

use pipeline::{InputOrigin, StageContext, StageError};

use crate::bert::{TextEncoder, TextPooling};
use crate::encode::{self, Shard};
use crate::encoder::{
    device_name, encode_images, encode_texts, pick_device, pick_precision, Items, LoopOptions,
    VisionModel,
};
use crate::error::Error;
use crate::preprocess::{Normalize, Preprocess};
use crate::table::{read_string_columns, TableMeta};

/// Runs the stage `kind` in this process.
pub fn run(kind: &str, ctx: &StageContext) -> Result<(), StageError> {
    match kind {
        encode::ENCODE_TEXT => encode_text(ctx),
        encode::ENCODE_IMAGE => encode_image(ctx),
        stages::pretrain::TRAIN_ADAPTOR => crate::pretrain::run(ctx),
        // The runner makes reports in its own process (`artifacts`); a report job sent here
        // (an older runner, a hand-written job) still runs.
        stages::evaluate::REPORT => crate::report::run_stage(ctx),
        stages::evaluate::CLASSIFY => crate::evaluate::classify(ctx),
        stages::evaluate::SEGMENT => crate::evaluate::segment(ctx),
        other => Err(format!(
            "the torch worker does not know stage kind `{other}` (it runs: {})",
            encode::TORCH_STAGES
                .iter()
                .map(|d| d.kind)
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into()),
    }
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
    let name = match &b.origin {
        InputOrigin::External { name, .. } => name.clone(),
        InputOrigin::Stage { instance, .. } => instance.clone(),
    };
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

struct Common {
    batch_size: usize,
    device: tch::Device,
    precision: tch::Kind,
    precision_name: String,
    shard: Shard,
}

fn common(ctx: &StageContext) -> Result<Common, StageError> {
    let precision_name = ctx.str_param("precision")?.to_string();
    Ok(Common {
        batch_size: ctx.i64_param("batch_size")? as usize,
        device: pick_device(ctx.str_param("device")?)?,
        precision: pick_precision(&precision_name)?,
        precision_name,
        shard: Shard::parse(ctx.str_param("shard")?)?,
    })
}

fn records_path(ctx: &StageContext) -> Result<PathBuf, StageError> {
    Ok(ctx.input("records")?.path.join(stages::ingest::RECORDS))
}

fn encode_text(ctx: &StageContext) -> Result<(), StageError> {
    let (dir, name, kind) = backbone(ctx, encode::TEXT_BACKBONES, encode::ENCODE_TEXT)?;
    let c = common(ctx)?;
    let pooling_name = ctx.str_param("pooling")?;
    let pooling = TextPooling::parse(pooling_name).ok_or("parameter `pooling`")?;
    let max_length = ctx.i64_param("max_length")? as usize;
    let column = ctx.str_param("text_column")?;
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
        precision: c.precision_name.clone(),
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

fn encode_image(ctx: &StageContext) -> Result<(), StageError> {
    let (dir, name, kind) = backbone(ctx, encode::IMAGE_BACKBONES, encode::ENCODE_IMAGE)?;
    let c = common(ctx)?;
    let raw = ctx.input("raw")?.path.clone();
    let resize = ctx.i64_param("resize")? as u32;
    let crop = ctx.i64_param("image_size")? as u32;
    let normalize = Normalize::parse(ctx.str_param("normalize")?).ok_or("parameter `normalize`")?;
    let records = records_path(ctx)?;
    let mut cols = read_string_columns(&records, &["key", "split", "path"])?;
    let (paths, splits, keys) = (
        cols.pop().unwrap(),
        cols.pop().unwrap(),
        cols.pop().unwrap(),
    );
    let range = c.shard.range(keys.len());
    let model = VisionModel::load(dir, &kind, c.device, c.precision)?;
    let pooling = model.resolve_pooling(ctx.str_param("pooling")?)?;
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
        precision: c.precision_name.clone(),
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
