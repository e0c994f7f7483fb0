//! Embedding tables: Parquet files written and read with arrow-rs (ARCHITECTURE.md: polars owns
//! the records tables, arrow-rs the embedding tables; the two meet through files).
//!
//! Pooled table (`embeddings.parquet`): `key` Utf8, `split` Utf8 (absent in `adaptor embed`
//! output), `embedding` FixedSizeList<Float32, D>. Token table (`tokens.parquet`): `key`, `split`,
//! `tokens` FixedSizeList<FixedSizeList<Float32, D>, L>, `mask` FixedSizeList<Boolean, L>
//! (padded positions are false and hold zeros). File metadata (key-value, prefixed `adaptor.`)
//! records the backbone, dimension, pooling, preprocessing, precision and shard.
//!
//! Readers check alignment: a table's keys must be the records table's keys, in the same order
//! (the original silently misaligned image and text rows; reference G.3).
//!
//! This module holds the layout (metadata, schema); `write`, `read` and `align` the three uses;
//! `stream` the decoder in bounded batches that `read` and every streaming reader share.

mod align;
mod read;
mod remote;
mod stream;
mod write;

pub use align::read_aligned;
pub use read::{read_string_columns, row_count, EmbeddingTable, StringBatches, STRING_BATCH_ROWS};
pub use remote::{open_remote, RemoteTable};
pub use stream::{
    batch_rows, open_stream, row_bytes, BoxedBatches, FileBatches, RowBatch, RowBatches,
    MAX_BATCH_ROWS,
};
pub use write::{write_window, EmbeddingWriter};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field};
use parquet::file::metadata::KeyValue;

use crate::error::{Error, Result};

/// Version of the table layout, in the metadata.
pub const FORMAT: &str = "1";
/// Prefix of the metadata keys.
pub const PREFIX: &str = "adaptor.";

/// What the metadata says about a table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMeta {
    /// `embeddings` or `tokens`.
    pub table: String,
    /// The backbone's name in the manifest (or its folder name for `adaptor embed`).
    pub backbone: String,
    /// `bert`, `dinov2` or `resnet-ae`.
    pub backbone_kind: String,
    pub dim: usize,
    /// Token table: positions per row.
    pub tokens: Option<usize>,
    pub pooling: String,
    /// JSON: tokenizer settings or image preprocessing.
    pub preprocessing: String,
    pub precision: String,
    /// `i/n`, and the rows `start..end` of `total` this shard holds.
    pub shard: String,
    pub row_start: usize,
    pub row_end: usize,
    pub rows_total: usize,
}

impl TableMeta {
    fn to_kv(&self) -> Vec<KeyValue> {
        let mut m = BTreeMap::new();
        m.insert("format", FORMAT.to_string());
        m.insert("table", self.table.clone());
        m.insert("backbone", self.backbone.clone());
        m.insert("backbone_kind", self.backbone_kind.clone());
        m.insert("dim", self.dim.to_string());
        if let Some(t) = self.tokens {
            m.insert("tokens", t.to_string());
        }
        m.insert("pooling", self.pooling.clone());
        m.insert("preprocessing", self.preprocessing.clone());
        m.insert("precision", self.precision.clone());
        m.insert("shard", self.shard.clone());
        m.insert(
            "rows",
            format!(
                "{}..{} of {}",
                self.row_start, self.row_end, self.rows_total
            ),
        );
        m.into_iter()
            .map(|(k, v)| KeyValue::new(format!("{PREFIX}{k}"), v))
            .collect()
    }

    fn from_kv(path: &Path, kv: Option<&Vec<KeyValue>>) -> Result<Self> {
        let map: BTreeMap<&str, &str> = kv
            .into_iter()
            .flatten()
            .filter_map(|k| Some((k.key.strip_prefix(PREFIX)?, k.value.as_deref()?)))
            .collect();
        let bad = |key: &str, message: String| Error::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let get = |k: &str| -> Result<String> {
            map.get(k)
                .map(|s| s.to_string())
                .ok_or_else(|| bad(k, " missing: not an adaptor embedding table".into()))
        };
        let num = |k: &str, s: &str| -> Result<usize> {
            s.trim()
                .parse()
                .map_err(|_| bad(k, format!(" = `{s}` is not a count")))
        };
        let rows = get("rows")?;
        let parsed = rows
            .split_once("..")
            .and_then(|(a, rest)| rest.split_once(" of ").map(|(b, c)| (a, b, c)));
        let (a, b, c) = parsed
            .ok_or_else(|| bad("rows", format!(" = `{rows}` is not `start..end of total`")))?;
        let (row_start, row_end, rows_total) = (num("rows", a)?, num("rows", b)?, num("rows", c)?);
        if row_start > row_end || row_end > rows_total {
            return Err(bad(
                "rows",
                format!(" = `{rows}`: not a range of rows of the total"),
            ));
        }
        Ok(TableMeta {
            table: get("table")?,
            backbone: get("backbone")?,
            backbone_kind: get("backbone_kind")?,
            dim: num("dim", &get("dim")?)?,
            tokens: map.get("tokens").map(|s| num("tokens", s)).transpose()?,
            pooling: get("pooling")?,
            preprocessing: get("preprocessing")?,
            precision: get("precision")?,
            shard: get("shard")?,
            row_start,
            row_end,
            rows_total,
        })
    }
}

fn vector_field(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", DataType::Float32, false)),
        dim as i32,
    )
}

#[cfg(test)]
mod tests;
