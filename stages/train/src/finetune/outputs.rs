//! What a head run writes besides its weights and report: the per-epoch metrics and the test
//! split's predictions, as parquet.

use std::collections::BTreeSet;
use std::path::Path;

use super::head::{HeadEpoch, HeadSplit, Prepared};
use super::HeadConfig;
use crate::error::Result;
use crate::metrics::{write_parquet, Column};

/// `metrics_epochs.parquet`: `epoch, steps, lr, train_loss, valid_loss, valid_<score>...,
/// improved` (no wall-clock column, so the file is reproducible byte for byte).
pub(super) fn write_epochs(path: &Path, rows: &[HeadEpoch]) -> Result<()> {
    let keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.valid.keys()).collect();
    let f = |g: fn(&HeadEpoch) -> f64| Column::floats(rows, g);
    let names: Vec<String> = keys.iter().map(|k| format!("valid_{k}")).collect();
    let mut cols = vec![
        ("epoch", Column::ints(rows, |r| r.epoch as i64)),
        ("steps", Column::ints(rows, |r| r.steps as i64)),
        ("lr", f(|r| r.lr)),
        ("train_loss", f(|r| r.train_loss)),
        ("valid_loss", f(|r| r.valid_loss)),
    ];
    for (k, name) in keys.iter().zip(&names) {
        cols.push((
            name.as_str(),
            Column::F64(rows.iter().map(|r| r.valid.get(*k).copied()).collect()),
        ));
    }
    cols.push((
        "improved",
        Column::Bool(rows.iter().map(|r| r.improved).collect()),
    ));
    write_parquet(path, cols)
}

pub(super) fn write_predictions(
    path: &Path,
    cfg: &HeadConfig,
    split: &HeadSplit,
    p: &Prepared,
    probs: &[f64],
) -> Result<()> {
    let c = cfg.classes as usize;
    let predicted = if c == 1 {
        crate::scores::binary_predictions(probs)
    } else {
        crate::scores::argmax_predictions(probs, c)
    };
    let names: Vec<String> = (0..c).map(|k| format!("prob_{k}")).collect();
    let mut cols = vec![("row", Column::I64((0..p.labels_vec.len() as i64).collect()))];
    if let Some(keys) = &split.keys {
        cols.push(("key", Column::Str(keys.clone())));
    }
    cols.push(("label", Column::I64(p.labels_vec.clone())));
    if c == 1 {
        cols.push((
            "prob",
            Column::F64(probs.iter().map(|&v| Some(v)).collect()),
        ));
    } else {
        for (k, name) in names.iter().enumerate() {
            cols.push((
                name.as_str(),
                Column::F64(probs.iter().skip(k).step_by(c).map(|&v| Some(v)).collect()),
            ));
        }
    }
    cols.push(("predicted", Column::I64(predicted)));
    write_parquet(path, cols)
}
