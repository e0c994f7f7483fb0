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
    device_name, encode_image_rows_into, encode_texts_into, torch_device, torch_precision,
    ImageRows, ImageSource, Items, LoopOptions, TableOut, VisionModel,
};
use crate::error::Error;
use crate::preprocess::{Normalize, Preprocess, TrainCrop};
use artifacts::table::{row_count, write_window, StringBatches, TableMeta, STRING_BATCH_ROWS};

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
            rows_total: rows.total,
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

/// The records table's rows this shard encodes, read in windows of keys, splits and one value
/// column (not held whole: memory is one window whatever the table's length).
struct Rows {
    records: PathBuf,
    batches: StringBatches,
    range: Range<usize>,
    total: usize,
}

/// One window of [`Rows`]: `first` is its first row's position in the records table.
struct Window {
    first: usize,
    keys: Vec<String>,
    splits: Vec<String>,
    values: Vec<String>,
}

impl Window {
    /// The window's rows with `values` (the value column, or what it names) to encode.
    fn items<'a, T>(&'a self, values: &'a [T]) -> Items<'a, T> {
        Items {
            keys: &self.keys,
            splits: Some(&self.splits),
            values,
        }
    }
}

impl Rows {
    /// Opens the shard's rows of `column` (with `key` and `split`) in windows of a multiple of
    /// `write_window` rows, the loop's table writes: then the windows' writes are the writes of one
    /// loop over the shard, and the table is byte for byte the same.
    fn open(
        ctx: &StageContext,
        column: &str,
        shard: Shard,
        write_window: usize,
    ) -> Result<Rows, StageError> {
        let records = ctx.input("records")?.path.join(stages::ingest::RECORDS);
        let total = row_count(&records)?;
        let range = shard.range(total);
        let w = write_window.max(1);
        let window = STRING_BATCH_ROWS.div_ceil(w) * w;
        let names = ["key", "split", column];
        let batches = StringBatches::open(&records, &names, Some(range.clone()), window)?;
        Ok(Rows {
            records,
            batches,
            range,
            total,
        })
    }

    /// The windows, in row order.
    fn windows(self) -> impl Iterator<Item = crate::Result<Window>> {
        let mut first = self.range.start;
        self.batches.map(move |batch| {
            let [keys, splits, values]: [Vec<String>; 3] =
                batch?.try_into().expect("three columns asked");
            let w = Window {
                first,
                keys,
                splits,
                values,
            };
            first += w.keys.len();
            Ok(w)
        })
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
    let tokens = pooling == TextPooling::Tokens;
    let window = write_window(encode::ENCODE_TEXT, c.batch_size, tokens);
    let rows = Rows::open(ctx, column, c.shard, window)?;
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
        rows.total,
        c.shard
    ));
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
        let mut table = TableOut::create(path, &meta, true, rows.range.len(), &opts, ctx)?;
        for window in rows.windows() {
            let window = window?;
            let items = window.items(&window.values);
            encode_texts_into(&enc, pooling, items, &mut table, &opts, ctx)?;
        }
        table.finish(&opts, ctx)
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
    let window = write_window(encode::ENCODE_IMAGE, c.batch_size, false);
    let rows = Rows::open(ctx, "path", c.shard, window)?;
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
        rows.total,
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
    if let Some(images) = &preprocessed {
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
    }
    let raw = match preprocessed {
        Some(_) => None,
        None => Some(ctx.input("raw")?.path.clone()),
    };
    let meta = TableMeta {
        backbone: name,
        backbone_kind: kind,
        pooling: pooling.name().to_string(),
        preprocessing: preprocessing.to_string(),
        ..c.meta(&rows, model.dim(), n_tokens)
    };
    let describe = match (&preprocessed, &raw) {
        (Some(images), _) => ImageSource::Preprocessed { images, first: 0 }.describe(),
        _ => format!("decoding {} image files", rows.range.len()),
    };
    ctx.log(format!("encode-image: {describe}"));
    write_table(ctx, tokens, |path| {
        let mut table = TableOut::create(path, &meta, true, rows.range.len(), &opts, ctx)?;
        for window in rows.windows() {
            let w = window?;
            // The window's images: its rows of the preprocess artifact, or its files.
            let files: Vec<PathBuf>;
            let source = match (&preprocessed, &raw) {
                (Some(images), _) => ImageSource::Preprocessed {
                    images,
                    first: w.first,
                },
                (None, Some(raw)) => {
                    files = w.values.iter().map(|p| raw.join(p)).collect();
                    ImageSource::Files(&files)
                }
                (None, None) => unreachable!("raw is read when there is no preprocess input"),
            };
            let items = ImageRows {
                keys: &w.keys,
                splits: Some(&w.splits),
                source,
            };
            encode_image_rows_into(
                &model, pooling, &pre, train_crop, items, n_tokens, &mut table, &opts, ctx,
            )?;
        }
        table.finish(&opts, ctx)
    })?;
    ctx.log(format!(
        "encode-image: decoded {} image files",
        stages::images::decoded_count() - decoded_before
    ));
    Ok(())
}

/// The `images` input (a `preprocess` artifact), checked to hold this stage's records: the same
/// keys in the same order, compared a batch of each at a time (neither is held whole).
fn open_preprocessed(
    ctx: &StageContext,
    rows: &Rows,
) -> Result<stages::preprocess::PreprocessedImages, StageError> {
    let input = ctx.input("images")?;
    let images = stages::preprocess::PreprocessedImages::open(&input.path)?;
    let theirs = images.keys(STRING_BATCH_ROWS)?;
    let ours = StringBatches::open(&rows.records, &["key"], None, STRING_BATCH_ROWS)?;
    if let Some(at) = first_difference(theirs, ours)? {
        return Err(format!(
            "{}: input `images` ({}) holds other records than input `records`: {} rows against \
             {}, first difference at row {at}; bind a preprocess stage over the same records",
            ctx.instance(),
            input.path.join(stages::preprocess::INDEX_FILE).display(),
            images.meta().rows,
            rows.total
        )
        .into());
    }
    Ok(images)
}

/// The first row at which two streams of one column differ (a row one has and the other not
/// included); `None` when they are equal. Both must batch rows alike (the same batch length).
fn first_difference(
    mut a: StringBatches,
    mut b: StringBatches,
) -> artifacts::Result<Option<usize>> {
    let mut at = 0;
    loop {
        match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => return Ok(None),
            (Some(x), Some(y)) => {
                let (x, y) = (&x[0], &y[0]);
                if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
                    return Ok(Some(at + i));
                }
                if x.len() != y.len() {
                    return Ok(Some(at + x.len().min(y.len())));
                }
                at += x.len();
            }
            _ => return Ok(Some(at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stages::ingest::table::{write_parquet, Col};

    fn keys(dir: &Path, name: &str, keys: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let keys = keys.iter().map(|k| k.to_string()).collect();
        write_parquet(&path, vec![Col::Str("key", keys)]).unwrap();
        path
    }

    /// Batches of 2 rows: a difference inside a later batch, a missing last row, equal tables.
    #[test]
    fn the_first_difference_is_found_across_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let a = keys(tmp.path(), "a.parquet", &["k0", "k1", "k2", "k3", "k4"]);
        let b = keys(tmp.path(), "b.parquet", &["k0", "k1", "k2", "x3", "k4"]);
        let c = keys(tmp.path(), "c.parquet", &["k0", "k1", "k2", "k3"]);
        let diff = |x: &Path, y: &Path| {
            let open = |p: &Path| StringBatches::open(p, &["key"], None, 2).unwrap();
            first_difference(open(x), open(y)).unwrap()
        };
        assert_eq!(diff(&a, &b), Some(3));
        assert_eq!(diff(&a, &c), Some(4));
        assert_eq!(diff(&c, &a), Some(4));
        assert_eq!(diff(&a, &a), None);
    }
}
