//! The `train-adaptor` stage as the worker runs it: two key-aligned embedding tables (image and
//! text, over the same records) into `train`'s resumable training, split by the tables'
//! `split` column (train / valid). Declaration: `stages::pretrain`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use pipeline::{StageContext, StageError};
use serde::Serialize;
use stages::kinds::train_adaptor::{TrainAdaptorParams, Variant};
use tch::{Device, Kind, Tensor};
use train::{
    AdaptorConfig, EpochMetrics, InMemoryPairs, Observer, Precision, StepMetrics, TrainConfig,
};

use crate::encoder::{device_name, torch_device};
use artifacts::table::{EmbeddingTable, TableMeta};
use stages::encode::{EMBEDDINGS_FILE, TOKENS_FILE};
use stages::pretrain::PROVENANCE_FILE;

/// The embedding table inside an encode artifact (`embeddings.parquet` or `tokens.parquet`).
pub fn table_file(dir: &Path) -> Result<PathBuf, StageError> {
    for f in [EMBEDDINGS_FILE, TOKENS_FILE] {
        if dir.join(f).is_file() {
            return Ok(dir.join(f));
        }
    }
    Err(format!(
        "{}: neither {EMBEDDINGS_FILE} nor {TOKENS_FILE} is there (is it an encode artifact?)",
        dir.display()
    )
    .into())
}

/// The instance name of a stage input (for provenance and messages).
pub fn input_name(ctx: &StageContext, slot: &str) -> Result<String, StageError> {
    Ok(ctx.input(slot)?.name().to_string())
}

/// Reads a whole (unsharded) embedding table.
pub fn read_whole(path: &Path) -> Result<EmbeddingTable, StageError> {
    check_whole(EmbeddingTable::read(path)?)
}

/// The decoded batches of a table streamed from S3 are kept to about this many bytes each.
pub const STREAM_BATCH_BUDGET: usize = 64 << 20;

/// The embedding table of a stage input: read from its local folder, or streamed from the remote
/// store when the runner passed its location ([`StageContext::remote`]; digest checked).
pub fn read_input_table(ctx: &StageContext, slot: &str) -> Result<EmbeddingTable, StageError> {
    let input = ctx.input(slot)?;
    let Some(remote) = ctx.remote(input) else {
        return read_whole(&table_file(&input.path)?);
    };
    let file = [EMBEDDINGS_FILE, TOKENS_FILE]
        .into_iter()
        .find(|f| remote.file(f).is_some())
        .ok_or_else(|| {
            format!(
                "{}: neither {EMBEDDINGS_FILE} nor {TOKENS_FILE} is in the artifact (is it an \
                 encode artifact?)",
                input.name()
            )
        })?;
    check_whole(EmbeddingTable::read_remote(
        remote,
        file,
        ctx.remote_access(),
        STREAM_BATCH_BUDGET,
    )?)
}

/// Refuses a shard of a table and non-finite values.
fn check_whole(t: EmbeddingTable) -> Result<EmbeddingTable, StageError> {
    let path = t.path.clone();
    let path = path.as_path();
    let m = &t.meta;
    if m.row_start != 0 || m.row_end != m.rows_total {
        return Err(format!(
            "{}: holds rows {}..{} of {} (shard {}); train on the merged table",
            path.display(),
            m.row_start,
            m.row_end,
            m.rows_total,
            m.shard
        )
        .into());
    }
    if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
        let row = i / t.row_len().max(1);
        return Err(format!(
            "{}: row {row} (key `{}`) holds a non-finite value",
            path.display(),
            t.keys[row]
        )
        .into());
    }
    Ok(t)
}

/// Checks that two tables hold the same keys in the same order (reference G.3).
pub fn check_same_rows(a: &EmbeddingTable, b: &EmbeddingTable) -> Result<(), StageError> {
    if let Some(i) = (0..a.rows().max(b.rows())).find(|&i| a.keys.get(i) != b.keys.get(i)) {
        let show = |t: &EmbeddingTable| {
            t.keys
                .get(i)
                .map_or("no row".to_string(), |k| format!("key `{k}`"))
        };
        return Err(format!(
            "the image and text tables are not aligned: row {i} has {} in {} and {} in {}",
            show(a),
            a.path.display(),
            show(b),
            b.path.display()
        )
        .into());
    }
    Ok(())
}

/// Rows of `t` in split `split` (the table's `split` column).
pub fn split_rows(t: &EmbeddingTable, split: &str) -> Result<Vec<i64>, StageError> {
    let splits = t.splits.as_ref().ok_or_else(|| {
        format!(
            "{}: the table has no `split` column; training needs train and valid rows",
            t.path.display()
        )
    })?;
    Ok(splits
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_str() == split)
        .map(|(i, _)| i as i64)
        .collect())
}

/// The table as tensors: `[N, D]` (pooled) or `([N, L, D], mask [N, L])` (tokens).
pub fn tensors(t: &EmbeddingTable) -> (Tensor, Option<Tensor>) {
    let n = t.rows() as i64;
    let d = t.meta.dim as i64;
    match (t.meta.tokens, &t.mask) {
        (Some(l), Some(mask)) => {
            let l = l as i64;
            let v = Tensor::from_slice(&t.values).view([n, l, d]);
            let m = Tensor::from_slice(mask).view([n, l]);
            (v, Some(m))
        }
        _ => (Tensor::from_slice(&t.values).view([n, d]), None),
    }
}

fn pairs(
    image: &(Tensor, Option<Tensor>),
    text: &(Tensor, Option<Tensor>),
    rows: &[i64],
) -> Result<InMemoryPairs, StageError> {
    let idx = Tensor::from_slice(rows);
    let pick = |t: &Tensor| t.index_select(0, &idx);
    Ok(match (image, text) {
        ((i, None), (t, None)) => InMemoryPairs::pooled(pick(i), pick(t))?,
        ((i, im), (t, tm)) => {
            let ones = |x: &Tensor| Tensor::ones([rows.len() as i64, 1], (Kind::Bool, x.device()));
            let seq = |x: &Tensor, m: &Option<Tensor>| match m {
                Some(m) => (pick(x), pick(m)),
                None => (pick(x).unsqueeze(1), ones(x)),
            };
            let (i, im) = seq(i, im);
            let (t, tm) = seq(t, tm);
            InMemoryPairs::tokens(i, im, t, tm)?
        }
    })
}

/// What the stage records beside the checkpoint: the tables it trained on.
#[derive(Debug, Serialize)]
struct Provenance {
    image_input: String,
    text_input: String,
    image: TableSummary,
    text: TableSummary,
    train_pairs: usize,
    valid_pairs: usize,
}

/// The parts of a table's metadata that name the backbone and its output.
#[derive(Debug, Serialize)]
pub struct TableSummary {
    pub backbone: String,
    pub backbone_kind: String,
    pub dim: usize,
    pub tokens: Option<usize>,
    pub pooling: String,
    pub precision: String,
}

impl From<&TableMeta> for TableSummary {
    fn from(m: &TableMeta) -> Self {
        TableSummary {
            backbone: m.backbone.clone(),
            backbone_kind: m.backbone_kind.clone(),
            dim: m.dim,
            tokens: m.tokens,
            pooling: m.pooling.clone(),
            precision: m.precision.clone(),
        }
    }
}

struct Progress<'a> {
    ctx: &'a StageContext,
    total_steps: u64,
}

impl Observer for Progress<'_> {
    fn on_step(&mut self, m: &StepMetrics) -> ControlFlow<()> {
        self.ctx.progress(m.step, self.total_steps, "steps");
        if self.ctx.is_cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn on_epoch(&mut self, m: &EpochMetrics) -> ControlFlow<()> {
        self.ctx.log(format!(
            "epoch {}: train loss {:.4}, valid loss {:.4}, recall@1 image→text {:.3} text→image {:.3}{}",
            m.epoch,
            m.train_loss,
            m.val_loss,
            m.recall.image_to_text_r1,
            m.recall.text_to_image_r1,
            if m.improved { " (best so far)" } else { "" }
        ));
        ControlFlow::Continue(())
    }

    fn log(&mut self, line: &str) {
        self.ctx.log(line);
    }
}

pub fn run(p: &TrainAdaptorParams, ctx: &StageContext) -> Result<(), StageError> {
    let image_path = table_file(&ctx.input("image")?.path)?;
    let text_path = table_file(&ctx.input("text")?.path)?;
    let image = read_whole(&image_path)?;
    let text = read_whole(&text_path)?;
    check_same_rows(&image, &text)?;
    let train_rows = split_rows(&image, "train")?;
    let valid_rows = split_rows(&image, "valid")?;
    if train_rows.is_empty() || valid_rows.is_empty() {
        return Err(format!(
            "{}: {} train and {} valid rows; training needs both",
            image_path.display(),
            train_rows.len(),
            valid_rows.len()
        )
        .into());
    }

    let variant = p.variant;
    let (dv, dt) = (image.meta.dim as i64, text.meta.dim as i64);
    let mut model = match variant {
        Variant::Fusion => AdaptorConfig::fusion(dv),
        Variant::Original => {
            for t in [&image, &text] {
                if t.meta.tokens.is_some() {
                    return Err(format!(
                        "variant `original` trains on pooled vectors; {} is a token table \
                         (encode with a pooling other than `tokens`, or use variant `fusion`)",
                        t.path.display()
                    )
                    .into());
                }
            }
            AdaptorConfig::original(dv)
        }
    };
    model.text_dim = dt;

    let device: Device = torch_device(p.device)?;
    let mut cfg = TrainConfig::new(model);
    cfg.epochs = p.epochs as usize;
    cfg.batch_size = p.batch_size as usize;
    cfg.lr = p.lr;
    cfg.weight_decay = p.weight_decay;
    cfg.warmup_fraction = p.warmup;
    cfg.seed = p.seed as u64;
    cfg.patience = (p.patience > 0).then_some(p.patience as usize);
    // The training library takes the device by name (`cuda:0`), resolved here once.
    cfg.device = device_name(device);
    cfg.precision = match p.precision {
        stages::kinds::Precision::Bf16 => Precision::Bf16,
        stages::kinds::Precision::Fp32 => Precision::Fp32,
    };
    if p.original_defects {
        cfg = cfg.with_original_defects();
    }

    let (it, tt) = (tensors(&image), tensors(&text));
    let train = pairs(&it, &tt, &train_rows)?;
    let valid = pairs(&it, &tt, &valid_rows)?;
    let (train, valid) = if device.is_cuda() {
        (train.to_device(device), valid.to_device(device))
    } else {
        (train, valid)
    };
    let steps_per_epoch = if cfg.drop_last {
        train_rows.len() / cfg.batch_size
    } else {
        train_rows.len().div_ceil(cfg.batch_size)
    } as u64;
    ctx.log(format!(
        "train-adaptor: {variant} on {} ({}, dim {dv}) × {} ({}, dim {dt}); {} train / {} valid pairs, \
         {} epochs of {steps_per_epoch} steps, batch {}, lr {}, on {}",
        image.meta.backbone,
        image.meta.pooling,
        text.meta.backbone,
        text.meta.pooling,
        train_rows.len(),
        valid_rows.len(),
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.device,
    ));

    let out = ctx.out_dir();
    let resume = ctx
        .resume_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.join("resume"));
    let mut observer = Progress {
        ctx,
        total_steps: steps_per_epoch * cfg.epochs as u64,
    };
    let report = train::fit_resumable(&cfg, &train, &valid, out, &resume, &mut observer)?;
    ctx.check_cancelled()?;

    let provenance = Provenance {
        image_input: input_name(ctx, "image")?,
        text_input: input_name(ctx, "text")?,
        image: (&image.meta).into(),
        text: (&text.meta).into(),
        train_pairs: train_rows.len(),
        valid_pairs: valid_rows.len(),
    };
    let json = serde_json::to_vec_pretty(&provenance)?;
    std::fs::write(out.join(PROVENANCE_FILE), json)
        .map_err(|e| format!("{}: {e}", out.join(PROVENANCE_FILE).display()))?;

    let best = report.best_recall.unwrap_or(report.initial_recall);
    let summary: BTreeMap<&str, String> = [
        ("stop", format!("{:?}", report.stop)),
        ("epochs", report.epochs_completed.to_string()),
        (
            "valid loss",
            format!(
                "{:.4} → {:.4}",
                report.initial_val_loss,
                report.best_val_loss.unwrap_or(f64::NAN)
            ),
        ),
        (
            "recall@1 i→t",
            format!(
                "{:.3} → {:.3} (chance {:.3})",
                report.initial_recall.image_to_text_r1,
                best.image_to_text_r1,
                1.0 / valid_rows.len() as f64
            ),
        ),
    ]
    .into_iter()
    .collect();
    ctx.log(format!(
        "trained {} parameters: {}",
        report.trainable_params,
        summary
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    Ok(())
}
