//! The `train-adaptor` stage as the worker runs it: two key-aligned embedding tables (image and
//! text, over the same records) into `train`'s resumable training, split by the tables'
//! `split` column (train / valid). Declaration: `stages::pretrain`. Tables that fit in the stage's
//! memory budget are read whole (`tables`); larger ones are streamed into row files on disk
//! (`streamed`), with the same batches, hence the same checkpoint.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use pipeline::stage::format_bytes;
use pipeline::{StageContext, StageError};
use serde::Serialize;
use stages::kinds::train_adaptor::{TrainAdaptorParams, Variant};
use tch::Device;
use train::{
    AdaptorConfig, EpochMetrics, Observer, PairSource, Precision, StepMetrics, TrainConfig,
};

use crate::encoder::{device_name, torch_device};
use artifacts::table::{row_bytes, BoxedBatches, RowBatches, TableMeta};
use stages::pretrain::PROVENANCE_FILE;

mod streamed;
mod tables;

use streamed::spill;
pub use streamed::DiskPairs;
pub use streamed::Scratch;
use tables::pairs;
pub use tables::{
    check_same_rows, check_whole, input_name, open_input, read_input_table, split_rows, table_file,
    tensors, whole, TableSummary,
};

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

/// The pairs of one run and how many there are.
struct Pairs {
    train: Box<dyn PairSource>,
    valid: Box<dyn PairSource>,
    n_train: usize,
    n_valid: usize,
}

/// Bytes the in-memory path holds at its peak: each table's floats and mask three times (read,
/// as tensors, and the train/valid selections).
fn in_memory_bytes(metas: [&TableMeta; 2]) -> u64 {
    metas
        .iter()
        .map(|m| 3 * (m.rows_total as u64) * row_bytes(m) as u64)
        .sum()
}

/// Tables that fit in the budget: read whole, as always.
fn pairs_in_memory(
    image: RowBatches<BoxedBatches>,
    text: RowBatches<BoxedBatches>,
    device: Device,
) -> Result<Pairs, StageError> {
    let image_path = image.path().to_path_buf();
    let image = whole(image)?;
    let text = whole(text)?;
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
    let (it, tt) = (tensors(&image), tensors(&text));
    let train = pairs(&it, &tt, &train_rows)?;
    let valid = pairs(&it, &tt, &valid_rows)?;
    let (train, valid) = if device.is_cuda() {
        (train.to_device(device), valid.to_device(device))
    } else {
        (train, valid)
    };
    Ok(Pairs {
        train: Box::new(train),
        valid: Box::new(valid),
        n_train: train_rows.len(),
        n_valid: valid_rows.len(),
    })
}

pub fn run(p: &TrainAdaptorParams, ctx: &StageContext) -> Result<(), StageError> {
    let budget = ctx.memory();
    // Opening reads the footer only; each of the two readers gets a quarter of the budget. A
    // table on a remote store is streamed from it (its digest checked by the last batch).
    let image_stream = open_input(ctx, "image", budget / 4)?;
    let text_stream = open_input(ctx, "text", budget / 4)?;
    let image_path = image_stream.path().to_path_buf();
    let text_path = text_stream.path().to_path_buf();
    let (im, tm) = (image_stream.meta().clone(), text_stream.meta().clone());
    check_whole(&image_path, &im)?;
    check_whole(&text_path, &tm)?;

    let variant = p.variant;
    let (dv, dt) = (im.dim as i64, tm.dim as i64);
    let mut model = match variant {
        Variant::Fusion => AdaptorConfig::fusion(dv),
        Variant::Original => {
            for (m, path) in [(&im, &image_path), (&tm, &text_path)] {
                if m.tokens.is_some() {
                    return Err(format!(
                        "variant `original` trains on pooled vectors; {} is a token table \
                         (encode with a pooling other than `tokens`, or use variant `fusion`)",
                        path.display()
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

    // Within the budget: in memory, as always. Over it: row files in the scratch folder, removed
    // when the run ends. Either way the batches hold the same floats, so the results agree.
    let held = in_memory_bytes([&im, &tm]);
    let mut _scratch = None;
    let data = if held <= budget {
        ctx.log(format!(
            "train-adaptor: the tables take {} in memory, within the budget of {}: read whole",
            format_bytes(held),
            format_bytes(budget)
        ));
        pairs_in_memory(image_stream, text_stream, device)?
    } else {
        let dir = ctx
            .temp_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ctx.out_dir().with_file_name("tmp"))
            .join("train-adaptor-rows");
        let _ = std::fs::remove_dir_all(&dir);
        _scratch = Some(Scratch(dir.clone()));
        let s = spill(image_stream, text_stream, &dir, ctx)?;
        ctx.log(format!(
            "train-adaptor: the tables would take {} in memory, over the budget of {}: streamed \
             into row files ({} on disk), mini-batches read by row",
            format_bytes(held),
            format_bytes(budget),
            format_bytes(s.bytes)
        ));
        Pairs {
            n_train: s.train.len(),
            n_valid: s.valid.len(),
            train: Box::new(s.train),
            valid: Box::new(s.valid),
        }
    };
    let (n_train, n_valid) = (data.n_train, data.n_valid);
    let steps_per_epoch = if cfg.drop_last {
        n_train / cfg.batch_size
    } else {
        n_train.div_ceil(cfg.batch_size)
    } as u64;
    ctx.log(format!(
        "train-adaptor: {variant} on {} ({}, dim {dv}) × {} ({}, dim {dt}); {} train / {} valid pairs, \
         {} epochs of {steps_per_epoch} steps, batch {}, lr {}, on {}",
        im.backbone,
        im.pooling,
        tm.backbone,
        tm.pooling,
        n_train,
        n_valid,
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
    let report = train::fit_resumable(
        &cfg,
        &*data.train,
        &*data.valid,
        out,
        &resume,
        &mut observer,
    )?;
    ctx.check_cancelled()?;

    let provenance = Provenance {
        image_input: input_name(ctx, "image")?,
        text_input: input_name(ctx, "text")?,
        image: (&im).into(),
        text: (&tm).into(),
        train_pairs: n_train,
        valid_pairs: n_valid,
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
                1.0 / n_valid as f64
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
