//! What training records: per-step and per-epoch metrics (Parquet, through arrow-rs) and
//! image↔text retrieval recall on the validation split.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{io_err, Error, Result};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based epoch and global step (after this update).
    pub epoch: usize,
    pub step: u64,
    /// The learning rate this update used.
    pub lr: f64,
    pub loss: f64,
    pub contrastive: f64,
    /// Image–text matching loss (fusion variant).
    pub itm: Option<f64>,
    /// The temperature parameter after the update (`exp` of it scales the logits).
    pub logit_scale: f64,
    pub batch_size: usize,
    /// Wall-clock seconds since the run started (resumed runs continue the count).
    pub seconds: f64,
}

/// One epoch, with validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub steps: u64,
    /// Mean training loss over the epoch's pairs.
    pub train_loss: f64,
    /// Mean validation loss over the validation pairs (batches of `batch_size`, in order).
    pub val_loss: f64,
    pub lr: f64,
    pub logit_scale: f64,
    pub recall: Recall,
    /// Whether this epoch improved the best validation loss by more than `min_delta` (and
    /// became the kept checkpoint).
    pub improved: bool,
    pub seconds: f64,
}

/// Retrieval recall@{1,5,10} over the whole validation split, in both directions. A query
/// counts as found at K when fewer than K candidates score strictly higher than its partner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Recall {
    pub pairs: usize,
    pub image_to_text_r1: f64,
    pub image_to_text_r5: f64,
    pub image_to_text_r10: f64,
    pub text_to_image_r1: f64,
    pub text_to_image_r5: f64,
    pub text_to_image_r10: f64,
}

/// Recall for L2-normalised `image [N, d]` and `text [N, d]` whose rows are pairs.
pub fn retrieval_recall(image: &Tensor, text: &Tensor) -> Recall {
    let _guard = tch::no_grad_guard();
    let n = image.size()[0];
    let ranks = |q: &Tensor, c: &Tensor| -> Tensor {
        let mut out = Vec::new();
        let chunk = 1024;
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let s = q.narrow(0, start, len).matmul(&c.transpose(0, 1));
            let idx =
                Tensor::arange_start(start, start + len, (Kind::Int64, q.device())).unsqueeze(1);
            let correct = s.gather(1, &idx, false);
            out.push(
                s.gt_tensor(&correct)
                    .sum_dim_intlist(&[1i64][..], false, Kind::Int64),
            );
            start += len;
        }
        Tensor::cat(&out, 0)
    };
    let frac = |r: &Tensor, k: i64| {
        if n == 0 {
            0.0
        } else {
            r.lt(k).sum(Kind::Int64).int64_value(&[]) as f64 / n as f64
        }
    };
    let i2t = ranks(image, text);
    let t2i = ranks(text, image);
    Recall {
        pairs: n as usize,
        image_to_text_r1: frac(&i2t, 1),
        image_to_text_r5: frac(&i2t, 5),
        image_to_text_r10: frac(&i2t, 10),
        text_to_image_r1: frac(&t2i, 1),
        text_to_image_r5: frac(&t2i, 5),
        text_to_image_r10: frac(&t2i, 10),
    }
}

pub(crate) enum Column {
    I64(Vec<i64>),
    F64(Vec<Option<f64>>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

impl Column {
    /// An integer column: `g` of each row.
    pub(crate) fn ints<R>(rows: &[R], g: impl Fn(&R) -> i64) -> Column {
        Column::I64(rows.iter().map(g).collect())
    }

    /// A float column without gaps: `g` of each row.
    pub(crate) fn floats<R>(rows: &[R], g: impl Fn(&R) -> f64) -> Column {
        Column::F64(rows.iter().map(|r| Some(g(r))).collect())
    }
}

pub(crate) fn write_parquet(path: &Path, columns: Vec<(&str, Column)>) -> Result<()> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, c)| match c {
            Column::I64(_) => Field::new(*name, DataType::Int64, false),
            Column::F64(v) => Field::new(*name, DataType::Float64, v.iter().any(Option::is_none)),
            Column::Bool(_) => Field::new(*name, DataType::Boolean, false),
            Column::Str(_) => Field::new(*name, DataType::Utf8, false),
        })
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|(_, c)| -> ArrayRef {
            match c {
                Column::I64(v) => Arc::new(Int64Array::from(v)),
                Column::F64(v) => Arc::new(Float64Array::from(v)),
                Column::Bool(v) => Arc::new(BooleanArray::from(v)),
                Column::Str(v) => Arc::new(StringArray::from(v)),
            }
        })
        .collect();
    let out_err = |e: &dyn std::fmt::Display| Error::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| out_err(&e))?;
    let tmp = path.with_extension("parquet.tmp");
    artifacts::portable::write_table(&tmp, &batch, None)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `metrics_steps.parquet`: one row per optimizer step.
pub fn write_step_metrics(path: &Path, rows: &[StepMetrics]) -> Result<()> {
    let f = |g: fn(&StepMetrics) -> f64| Column::floats(rows, g);
    write_parquet(
        path,
        vec![
            ("epoch", Column::ints(rows, |r| r.epoch as i64)),
            ("step", Column::ints(rows, |r| r.step as i64)),
            ("lr", f(|r| r.lr)),
            ("loss", f(|r| r.loss)),
            ("contrastive", f(|r| r.contrastive)),
            ("itm", Column::F64(rows.iter().map(|r| r.itm).collect())),
            ("logit_scale", f(|r| r.logit_scale)),
            ("batch_size", Column::ints(rows, |r| r.batch_size as i64)),
            ("seconds", f(|r| r.seconds)),
        ],
    )
}

/// `metrics_epochs.parquet`: one row per epoch, validation and recall included.
pub fn write_epoch_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let f = |g: fn(&EpochMetrics) -> f64| Column::floats(rows, g);
    write_parquet(
        path,
        vec![
            ("epoch", Column::ints(rows, |r| r.epoch as i64)),
            ("steps", Column::ints(rows, |r| r.steps as i64)),
            ("train_loss", f(|r| r.train_loss)),
            ("val_loss", f(|r| r.val_loss)),
            ("lr", f(|r| r.lr)),
            ("logit_scale", f(|r| r.logit_scale)),
            ("image_to_text_r1", f(|r| r.recall.image_to_text_r1)),
            ("image_to_text_r5", f(|r| r.recall.image_to_text_r5)),
            ("image_to_text_r10", f(|r| r.recall.image_to_text_r10)),
            ("text_to_image_r1", f(|r| r.recall.text_to_image_r1)),
            ("text_to_image_r5", f(|r| r.recall.text_to_image_r5)),
            ("text_to_image_r10", f(|r| r.recall.text_to_image_r10)),
            (
                "improved",
                Column::Bool(rows.iter().map(|r| r.improved).collect()),
            ),
            ("seconds", f(|r| r.seconds)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_ranks_in_both_directions() {
        // Three pairs in 2-D, every partner scoring highest.
        let image = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8]).view([3, 2]);
        let text = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.8, 0.6]).view([3, 2]);
        // sim[i, j] = image_i · text_j = [[1, 0, .8], [0, 1, .6], [.6, .8, .96]].
        let r = retrieval_recall(&image, &text);
        assert_eq!(r.pairs, 3);
        assert!((r.image_to_text_r1 - 1.0).abs() < 1e-12);
        // Text j ranks images by sim[:, j]: text 0 → image 0 (1 > .6); text 1 → image 1 (1 > .8);
        // text 2 → image 2 (.96 > .8): all found at 1.
        assert!((r.text_to_image_r1 - 1.0).abs() < 1e-12);
        let text_swapped = text.index_select(0, &Tensor::from_slice(&[1i64, 0, 2]));
        let r = retrieval_recall(&image, &text_swapped);
        assert!((r.image_to_text_r1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.image_to_text_r5, 1.0);
    }
}
