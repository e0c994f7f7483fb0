//! Streaming reads: a table's rows decoded in bounded batches from any source of Arrow record
//! batches (a local Parquet file here, ranged reads of S3 elsewhere), so no reader needs the whole
//! table in memory. [`RowBatches`] is the decoder; [`open_stream`] its local-file source.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;

use super::read::{no_nulls, strings};
use super::TableMeta;
use crate::error::{Error, Result};

/// The most rows one batch holds, whatever the budget (a batch is a unit of work, not a cache).
pub const MAX_BATCH_ROWS: usize = 1 << 16;

/// Rows per batch for rows of `row_bytes` bytes under a memory budget of `budget` bytes: one
/// eighth of the budget, because a batch is held about twice (Arrow's decoded arrays and the
/// copy a [`RowBatch`] owns) beside Parquet's page buffers and the reader's own work. At least one
/// row, at most [`MAX_BATCH_ROWS`].
pub fn batch_rows(budget: u64, row_bytes: usize) -> usize {
    let per = (budget / 8) / (row_bytes.max(1) as u64);
    (per as usize).clamp(1, MAX_BATCH_ROWS)
}

/// Bytes one row of a table with this metadata takes decoded: its floats and mask.
pub fn row_bytes(meta: &TableMeta) -> usize {
    let tokens = meta.tokens.unwrap_or(1);
    let mask = meta.tokens.unwrap_or(0);
    meta.dim
        .saturating_mul(tokens)
        .saturating_mul(4)
        .saturating_add(mask)
}

/// Consecutive rows of a table, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RowBatch {
    /// Index of the first row within this file (0 for its first row, whatever its shard).
    pub first_row: usize,
    pub keys: Vec<String>,
    /// `None` when the table has no `split` column (`adaptor embed` output).
    pub splits: Option<Vec<String>>,
    /// Row-major `rows × D` (or `rows × L × D`).
    pub values: Vec<f32>,
    /// Token tables: `rows × L`.
    pub mask: Option<Vec<bool>>,
}

impl RowBatch {
    pub fn rows(&self) -> usize {
        self.keys.len()
    }
}

impl TableMeta {
    /// Reads the `adaptor.*` entries of a Parquet file's key-value metadata; `path` names the
    /// table in errors (a file, or an `s3://` address).
    pub fn from_key_values(path: &Path, kv: &[KeyValue]) -> Result<Self> {
        Self::from_kv(path, Some(&kv.to_vec()))
    }
}

/// Any source of record batches (a local file's row groups, a remote object's stream).
pub type BoxedBatches = Box<dyn Iterator<Item = Result<RecordBatch>>>;

/// The decoder of an embedding table over any source of Arrow record batches (the columns of the
/// layout in [`super`], in file order) and the file's metadata: yields [`RowBatch`]es, checks
/// every column's type and nulls, and at the end that the rows are those the metadata claims.
/// The source decides the batch size; each `RowBatch` is one source batch.
pub struct RowBatches<I> {
    path: PathBuf,
    meta: TableMeta,
    source: I,
    next_row: usize,
    finished: bool,
}

impl<I: Iterator<Item = Result<RecordBatch>>> RowBatches<I> {
    /// `path` names the table in errors.
    pub fn new(path: &Path, meta: TableMeta, source: I) -> Self {
        RowBatches {
            path: path.to_path_buf(),
            meta,
            source,
            next_row: 0,
            finished: false,
        }
    }

    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The same stream over a boxed source, so that local files and remote objects are one type
    /// to the stages that read either.
    pub fn boxed(self) -> RowBatches<BoxedBatches>
    where
        I: 'static,
    {
        RowBatches {
            path: self.path,
            meta: self.meta,
            source: Box::new(self.source),
            next_row: self.next_row,
            finished: self.finished,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Floats per row.
    pub fn row_len(&self) -> usize {
        self.meta.dim.saturating_mul(self.meta.tokens.unwrap_or(1))
    }

    fn decode(&self, batch: &RecordBatch) -> Result<RowBatch> {
        let path = self.path.as_path();
        let col = |n: &str| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| Error::column(path, n, format!("no column `{n}`")))
        };
        let keys = strings(path, col("key")?.as_ref(), "key")?;
        let splits = match batch.column_by_name("split") {
            Some(s) => Some(strings(path, s.as_ref(), "split")?),
            None => None,
        };
        let (dim, tokens) = (self.meta.dim, self.meta.tokens);
        let (values, mask) = match tokens {
            None => {
                let e = col("embedding")?;
                no_nulls(path, e.as_ref(), "embedding")?;
                let list = e
                    .as_fixed_size_list_opt()
                    .filter(|l| l.value_length() as usize == dim)
                    .ok_or_else(|| {
                        Error::column(
                            path,
                            "embedding",
                            format!("`embedding` is not FixedSizeList<Float32, {dim}>"),
                        )
                    })?;
                let v = list
                    .values()
                    .as_primitive_opt::<Float32Type>()
                    .ok_or_else(|| {
                        Error::column(path, "embedding", "`embedding` items are not Float32")
                    })?;
                (floats_of(v, list.len() * dim), None)
            }
            Some(len) => {
                let tok = col("tokens")?;
                no_nulls(path, tok.as_ref(), "tokens")?;
                let outer = tok
                    .as_fixed_size_list_opt()
                    .filter(|l| l.value_length() as usize == len);
                let inner = outer
                    .and_then(|l| l.values().as_fixed_size_list_opt())
                    .filter(|l| l.value_length() as usize == dim);
                let (outer, inner) = outer.zip(inner).ok_or_else(|| {
                    Error::column(
                        path,
                        "tokens",
                        format!(
                            "`tokens` is {}, not FixedSizeList<FixedSizeList<Float32, {dim}>, \
                             {len}>",
                            tok.data_type()
                        ),
                    )
                })?;
                let v = inner
                    .values()
                    .as_primitive_opt::<Float32Type>()
                    .ok_or_else(|| {
                        Error::column(path, "tokens", "`tokens` items are not Float32")
                    })?;
                let values = floats_of(v, outer.len() * len * dim);
                let m = col("mask")?;
                no_nulls(path, m.as_ref(), "mask")?;
                let bools = m
                    .as_fixed_size_list_opt()
                    .filter(|l| l.value_length() as usize == len)
                    .and_then(|l| {
                        let b = l.values().as_boolean_opt()?;
                        let to = (l.len() * len).min(b.len());
                        Some((0..to).map(|i| b.value(i)).collect::<Vec<_>>())
                    })
                    .ok_or_else(|| {
                        Error::column(
                            path,
                            "mask",
                            format!(
                                "`mask` is {}, not FixedSizeList<Boolean, {len}>",
                                m.data_type()
                            ),
                        )
                    })?;
                (values, Some(bools))
            }
        };
        let n = keys.len();
        if values.len() != n.saturating_mul(self.row_len()) {
            return Err(Error::rows(
                path,
                format!(
                    "{} values for {n} rows (from row {})",
                    values.len(),
                    self.next_row
                ),
            ));
        }
        if let Some(m) = &mask {
            if m.len() != n.saturating_mul(tokens.unwrap_or(0)) {
                return Err(Error::rows(
                    path,
                    format!("column `mask`: {} values for {n} rows", m.len()),
                ));
            }
        }
        if splits.as_ref().is_some_and(|s| s.len() != n) {
            return Err(Error::rows(
                path,
                format!("column `split` is not {n} rows long"),
            ));
        }
        Ok(RowBatch {
            first_row: self.next_row,
            keys,
            splits,
            values,
            mask,
        })
    }

    /// The end of the source: the rows read must be the metadata's `row_start..row_end`.
    fn check_count(&self) -> Result<()> {
        let m = &self.meta;
        if self.next_row != m.row_end.saturating_sub(m.row_start) {
            return Err(Error::rows(
                &self.path,
                format!(
                    "{} rows, but the metadata says rows {}..{}",
                    self.next_row, m.row_start, m.row_end
                ),
            ));
        }
        Ok(())
    }
}

/// The first `len` floats of `v`, or fewer when the array is shorter (the caller's count check
/// then names the fault). A sliced `FixedSizeList` slices its child, so its values start at 0.
fn floats_of(v: &arrow_array::Float32Array, len: usize) -> Vec<f32> {
    let all = v.values();
    all[..len.min(all.len())].to_vec()
}

impl<I: Iterator<Item = Result<RecordBatch>>> Iterator for RowBatches<I> {
    type Item = Result<RowBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.source.next() {
            None => {
                self.finished = true;
                self.check_count().err().map(Err)
            }
            Some(Err(e)) => {
                self.finished = true;
                Some(Err(e))
            }
            Some(Ok(batch)) => match self.decode(&batch) {
                Ok(rows) => {
                    self.next_row += rows.rows();
                    Some(Ok(rows))
                }
                Err(e) => {
                    self.finished = true;
                    Some(Err(e))
                }
            },
        }
    }
}

/// The record batches of a local Parquet file, errors naming it.
pub type FileBatches = std::iter::Map<
    parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    Box<dyn Fn(std::result::Result<RecordBatch, arrow_schema::ArrowError>) -> Result<RecordBatch>>,
>;

/// Opens a local table for streaming: its metadata, and its rows in batches of at most
/// [`batch_rows`]`(budget, row bytes)` rows. `budget` is the memory this reader may use (bytes),
/// the one convention of every opener here ([`super::open_remote`] takes the same): a stage that
/// reads several tables at once gives each its share of its own budget.
pub fn open_stream(path: &Path, budget: u64) -> Result<RowBatches<FileBatches>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    from_chunk_reader(path, file, Some(budget))
}

/// [`open_stream`] over any Parquet source; `budget: None` keeps arrow-rs's batch size.
pub(super) fn from_chunk_reader<R: parquet::file::reader::ChunkReader + 'static>(
    path: &Path,
    reader: R,
    budget: Option<u64>,
) -> Result<RowBatches<FileBatches>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(Error::parquet(path))?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let meta = TableMeta::from_key_values(path, &kv)?;
    let builder = match budget {
        Some(b) => builder.with_batch_size(batch_rows(b, row_bytes(&meta))),
        None => builder,
    };
    let reader = builder.build().map_err(Error::parquet(path))?;
    let owned = path.to_path_buf();
    let map: Box<dyn Fn(_) -> Result<RecordBatch>> = Box::new(
        move |b: std::result::Result<RecordBatch, arrow_schema::ArrowError>| {
            b.map_err(|e| Error::arrow(owned.clone())(e))
        },
    );
    Ok(RowBatches::new(path, meta, reader.map(map)))
}
