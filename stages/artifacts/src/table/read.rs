//! Reading embedding tables whole (from a file, any Parquet source, or the artifact store; through
//! the streaming decoder of `stream`) and string columns of any Parquet file (records tables):
//! whole, or in bounded batches over a range of rows ([`StringBatches`]).

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;

use super::TableMeta;
use crate::error::{Error, Result};

/// A whole table in memory.
#[derive(Debug, Clone)]
pub struct EmbeddingTable {
    pub path: PathBuf,
    pub meta: TableMeta,
    pub keys: Vec<String>,
    pub splits: Option<Vec<String>>,
    /// Row-major `rows × D` (or `rows × L × D`).
    pub values: Vec<f32>,
    /// Token tables: `rows × L`.
    pub mask: Option<Vec<bool>>,
}

pub(super) fn no_nulls(path: &Path, col: &dyn Array, name: &str) -> Result<()> {
    if col.null_count() > 0 {
        return Err(Error::column(
            path,
            name,
            format!("column `{name}` has {} null rows", col.null_count()),
        ));
    }
    Ok(())
}

pub(super) fn strings(path: &Path, col: &dyn Array, name: &str) -> Result<Vec<String>> {
    if col.null_count() > 0 {
        return Err(Error::column(
            path,
            name,
            format!("column `{name}` has nulls"),
        ));
    }
    Ok(match col.data_type() {
        DataType::Utf8 => col
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect(),
        DataType::LargeUtf8 => col
            .as_string::<i64>()
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect(),
        DataType::Utf8View => col
            .as_string_view()
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect(),
        other => {
            return Err(Error::column(
                path,
                name,
                format!("column `{name}` is {other}, not a string"),
            ))
        }
    })
}

/// Reads string columns of any Parquet file (the records table written by polars included),
/// in row order; a missing column is an error listing those present. Holds the columns whole:
/// for small tables; [`StringBatches`] streams them.
pub fn read_string_columns(path: &Path, names: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for batch in StringBatches::open(path, names, None, STRING_BATCH_ROWS)? {
        for (all, col) in out.iter_mut().zip(batch?) {
            all.extend(col);
        }
    }
    Ok(out)
}

/// Rows per batch of [`StringBatches`] where the caller has no reason to choose: a few MiB of
/// keys and paths, a few tens of MiB of report texts.
pub const STRING_BATCH_ROWS: usize = 8192;

/// The rows of a Parquet file (from its footer: no data is read).
pub fn row_count(path: &Path) -> Result<usize> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(Error::parquet(path))?;
    Ok(meta.file_metadata().num_rows().max(0) as usize)
}

/// String columns of a Parquet file in batches of exactly `batch_rows` rows (the last may hold
/// fewer), each batch one `Vec<String>` per named column, in the order named: memory is a batch
/// or two whatever the file's length. Opened on a range of rows, it skips the row groups before
/// and after the range without reading them, and the rows of the first group before its start
/// without materialising them.
pub struct StringBatches {
    path: PathBuf,
    names: Vec<String>,
    reader: Option<ParquetRecordBatchReader>,
    pending: Vec<Vec<String>>,
    batch_rows: usize,
    rows: usize,
    total: usize,
}

impl StringBatches {
    /// Opens `names` of `path`, rows `range` (`None`: every row; a range past the end is an error
    /// naming the file's row count). A missing column is an error listing those present.
    pub fn open(
        path: &Path,
        names: &[&str],
        range: Option<Range<usize>>,
        batch_rows: usize,
    ) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(Error::parquet(path))?;
        let schema = builder.schema().clone();
        let mut idx = Vec::new();
        for n in names {
            let i = schema.index_of(n).map_err(|_| {
                Error::column(
                    path,
                    *n,
                    format!(
                        "no column `{n}` (columns: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            idx.push(i);
        }
        let meta = builder.metadata().clone();
        let total = meta.file_metadata().num_rows().max(0) as usize;
        let range = range.unwrap_or(0..total);
        if range.start > range.end || range.end > total {
            return Err(Error::rows(
                path,
                format!("rows {range:?} asked of a table of {total} rows"),
            ));
        }
        // The row groups that hold part of the range, and the rows before it in the first one.
        let (mut groups, mut first, mut at) = (Vec::new(), None, 0usize);
        for (g, rg) in meta.row_groups().iter().enumerate() {
            let n = rg.num_rows().max(0) as usize;
            if at < range.end && at + n > range.start {
                first.get_or_insert(at);
                groups.push(g);
            }
            at += n;
        }
        let skip = range.start - first.unwrap_or(range.start);
        let selection = RowSelection::from(vec![
            RowSelector::skip(skip),
            RowSelector::select(range.len()),
        ]);
        let mask = ProjectionMask::roots(builder.parquet_schema(), idx.iter().copied());
        let batch_rows = batch_rows.max(1);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_row_selection(selection)
            .with_batch_size(batch_rows)
            .build()
            .map_err(Error::parquet(path))?;
        Ok(StringBatches {
            path: path.to_path_buf(),
            names: names.iter().map(|n| n.to_string()).collect(),
            reader: Some(reader),
            pending: vec![Vec::new(); names.len()],
            batch_rows,
            rows: range.len(),
            total,
        })
    }

    /// Rows this reader yields in all (the range's length).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows of the whole file.
    pub fn total_rows(&self) -> usize {
        self.total
    }

    /// Rows decoded and not yet yielded.
    fn buffered(&self) -> usize {
        self.pending.first().map_or(0, Vec::len)
    }

    /// Appends the next decoded batch to `pending`; `false` at the end of the file.
    fn pull(&mut self) -> Result<bool> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        let Some(batch) = reader.next() else {
            self.reader = None;
            return Ok(false);
        };
        let path = &self.path;
        let batch = batch.map_err(Error::arrow(path))?;
        for (n, all) in self.names.iter().zip(self.pending.iter_mut()) {
            let col = batch
                .column_by_name(n)
                .ok_or_else(|| Error::column(path, n, format!("column `{n}` vanished")))?;
            all.extend(strings(path, col.as_ref(), n)?);
        }
        Ok(true)
    }
}

impl Iterator for StringBatches {
    type Item = Result<Vec<Vec<String>>>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffered() < self.batch_rows {
            match self.pull() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.reader = None;
                    self.pending.iter_mut().for_each(Vec::clear);
                    return Some(Err(e));
                }
            }
        }
        if self.buffered() == 0 {
            return None;
        }
        let n = self.batch_rows.min(self.buffered());
        Some(Ok(self
            .pending
            .iter_mut()
            .map(|col| {
                let rest = col.split_off(n);
                std::mem::replace(col, rest)
            })
            .collect()))
    }
}

impl EmbeddingTable {
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_reader(path, file)
    }

    /// Reads a table from the artifact store (local or S3): `<kind>/<key>/<file>` of a complete
    /// artifact (one whose `_manifest.json` exists), without a local copy.
    pub fn read_from_store(
        store: &pipeline::Store,
        kind: &str,
        key: &pipeline::StageKey,
        file: &str,
    ) -> Result<Self> {
        let rel = format!("{}/{file}", pipeline::Store::artifact_dir(kind, key));
        let name = PathBuf::from(format!("{}/{rel}", store.url()));
        let complete = store
            .is_complete(kind, key)
            .map_err(|source| Error::Store {
                path: name.clone(),
                source,
            })?;
        if !complete {
            return Err(Error::NotInStore {
                path: name,
                message: "the artifact is not complete (no _manifest.json)",
            });
        }
        let bytes = store
            .get(&rel)
            .map_err(|source| Error::Store {
                path: name.clone(),
                source,
            })?
            .ok_or_else(|| Error::NotInStore {
                path: name.clone(),
                message: "not in the artifact",
            })?;
        Self::from_reader(&name, bytes)
    }

    /// Reads a table from any Parquet source; `path` names it in messages.
    pub fn from_reader<R: parquet::file::reader::ChunkReader + 'static>(
        path: &Path,
        reader: R,
    ) -> Result<Self> {
        Self::collect(super::stream::from_chunk_reader(path, reader, None)?)
    }

    /// Every row of a stream (see [`super::RowBatches`]) in one table.
    pub fn collect<I: Iterator<Item = Result<arrow_array::RecordBatch>>>(
        mut rows: super::RowBatches<I>,
    ) -> Result<Self> {
        let mut t = EmbeddingTable {
            path: rows.path().to_path_buf(),
            keys: Vec::new(),
            splits: None,
            values: Vec::new(),
            mask: rows.meta().tokens.map(|_| Vec::new()),
            meta: rows.meta().clone(),
        };
        for batch in rows.by_ref() {
            let b = batch?;
            t.keys.extend(b.keys);
            if let Some(s) = b.splits {
                t.splits.get_or_insert_with(Vec::new).extend(s);
            }
            t.values.extend(b.values);
            if let (Some(all), Some(m)) = (t.mask.as_mut(), b.mask) {
                all.extend(m);
            }
        }
        Ok(t)
    }

    /// Floats per row (saturating: a table whose metadata claims more cannot be read anyway).
    pub fn row_len(&self) -> usize {
        self.meta.dim.saturating_mul(self.meta.tokens.unwrap_or(1))
    }

    pub fn rows(&self) -> usize {
        self.keys.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let n = self.row_len();
        &self.values[i * n..(i + 1) * n]
    }
}
