//! Reading embedding tables whole (from a file, any Parquet source, or the artifact store; through
//! the streaming decoder of `stream`) and string columns of any Parquet file (records tables).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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
/// in row order; a missing column is an error listing those present.
pub fn read_string_columns(path: &Path, names: &[&str]) -> Result<Vec<Vec<String>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(Error::parquet(path))?;
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
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), idx.iter().copied());
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(Error::parquet(path))?;
    let mut out: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for batch in reader {
        let batch = batch.map_err(Error::arrow(path))?;
        for (j, n) in names.iter().enumerate() {
            let col = batch
                .column_by_name(n)
                .ok_or_else(|| Error::column(path, *n, format!("column `{n}` vanished")))?;
            out[j].extend(strings(path, col.as_ref(), n)?);
        }
    }
    Ok(out)
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
