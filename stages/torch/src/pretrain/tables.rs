//! The tables `train-adaptor` reads: finding them in encode artifacts, reading them whole (the
//! in-memory path) with their checks (one whole table, finite values, aligned keys, splits), and
//! the pairs built from them.

use std::path::{Path, PathBuf};

use pipeline::{StageContext, StageError};
use serde::Serialize;
use tch::{Kind, Tensor};
use train::InMemoryPairs;

use artifacts::table::{
    open_remote, open_stream, BoxedBatches, EmbeddingTable, RowBatches, TableMeta,
};
use stages::encode::{EMBEDDINGS_FILE, TOKENS_FILE};

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

/// Checks that a table's metadata describes a whole table, not a shard of one.
pub fn check_whole(path: &Path, m: &TableMeta) -> Result<(), StageError> {
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
    Ok(())
}

/// The embedding table of a stage input as a stream of row batches, `budget` being the memory this
/// reader may use (the openers' one convention, [`open_stream`]): from its local folder, or
/// straight from the remote store when the runner passed its location ([`StageContext::remote`]:
/// ranged reads, the digest checked by the last batch), in batches of the same size either way.
pub fn open_input(
    ctx: &StageContext,
    slot: &str,
    budget: u64,
) -> Result<RowBatches<BoxedBatches>, StageError> {
    let input = ctx.input(slot)?;
    let Some(remote) = ctx.remote(input) else {
        return Ok(open_stream(&table_file(&input.path)?, budget)?.boxed());
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
    Ok(open_remote(remote, file, ctx.remote_access(), budget)?
        .rows()
        .boxed())
}

/// The embedding table of a stage input, read whole ([`open_input`], the reader given a quarter of
/// the stage's budget: the table it builds is held besides) and checked ([`whole`]'s checks).
pub fn read_input_table(ctx: &StageContext, slot: &str) -> Result<EmbeddingTable, StageError> {
    whole(open_input(ctx, slot, ctx.memory() / 4)?)
}

/// Every row of `rows` in memory, refusing a shard of a table and non-finite values.
pub fn whole(rows: RowBatches<BoxedBatches>) -> Result<EmbeddingTable, StageError> {
    let path = rows.path().to_path_buf();
    let path = path.as_path();
    let t = EmbeddingTable::collect(rows)?;
    check_whole(path, &t.meta)?;
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

pub(super) fn pairs(
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
