//! Reading embedding tables (from a file, any Parquet source, or the artifact store) and string
//! columns of any Parquet file (the records table written by polars included).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
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

fn no_nulls(path: &Path, col: &dyn Array, name: &str) -> Result<()> {
    if col.null_count() > 0 {
        return Err(Error::column(
            path,
            name,
            format!("column `{name}` has {} null rows", col.null_count()),
        ));
    }
    Ok(())
}

fn strings(path: &Path, col: &dyn Array, name: &str) -> Result<Vec<String>> {
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
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(reader).map_err(Error::parquet(path))?;
        let meta = TableMeta::from_kv(
            path,
            builder.metadata().file_metadata().key_value_metadata(),
        )?;
        let reader = builder.build().map_err(Error::parquet(path))?;
        let mut t = EmbeddingTable::empty(path, meta);
        for batch in reader {
            let batch = batch.map_err(Error::arrow(path))?;
            t.push(&batch)?;
        }
        t.finish()
    }

    /// Reads a table streamed from a remote store ([`super::open_remote`]); `budget` bounds the
    /// decoded batches. The digest was checked when this returns `Ok`.
    pub fn read_remote(
        remote: &pipeline::RemoteInput,
        file: &str,
        access: &[(String, String)],
        budget: usize,
    ) -> Result<Self> {
        let mut stream = super::open_remote(remote, file, access, budget)?;
        let path = stream.path.clone();
        let meta = TableMeta::from_kv(&path, Some(&stream.key_value))?;
        let mut t = EmbeddingTable::empty(&path, meta);
        for batch in stream.by_ref() {
            t.push(&batch?)?;
        }
        t.finish()
    }

    fn empty(path: &Path, meta: TableMeta) -> Self {
        EmbeddingTable {
            path: path.to_path_buf(),
            keys: Vec::new(),
            splits: None,
            values: Vec::new(),
            mask: meta.tokens.map(|_| Vec::new()),
            meta,
        }
    }

    /// Appends the rows of one batch, checking its columns against the layout.
    fn push(&mut self, batch: &arrow_array::RecordBatch) -> Result<()> {
        let path = self.path.clone();
        let path = path.as_path();
        let t = self;
        let col = |n: &str| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| Error::column(path, n, format!("no column `{n}`")))
        };
        t.keys.extend(strings(path, col("key")?.as_ref(), "key")?);
        if let Some(s) = batch.column_by_name("split") {
            t.splits
                .get_or_insert_with(Vec::new)
                .extend(strings(path, s.as_ref(), "split")?);
        }
        match t.meta.tokens {
            None => {
                let e = col("embedding")?;
                no_nulls(path, e.as_ref(), "embedding")?;
                let list = e
                    .as_fixed_size_list_opt()
                    .filter(|l| l.value_length() as usize == t.meta.dim)
                    .ok_or_else(|| {
                        Error::column(
                            path,
                            "embedding",
                            format!("`embedding` is not FixedSizeList<Float32, {}>", t.meta.dim),
                        )
                    })?;
                let v = list
                    .values()
                    .as_primitive_opt::<Float32Type>()
                    .ok_or_else(|| {
                        Error::column(path, "embedding", "`embedding` items are not Float32")
                    })?;
                t.values.extend_from_slice(v.values());
            }
            Some(_) => {
                let (dim, len) = (t.meta.dim, t.meta.tokens.unwrap_or(0));
                let tok = col("tokens")?;
                no_nulls(path, tok.as_ref(), "tokens")?;
                let inner = tok
                    .as_fixed_size_list_opt()
                    .filter(|l| l.value_length() as usize == len)
                    .and_then(|l| l.values().as_fixed_size_list_opt().cloned())
                    .filter(|l| l.value_length() as usize == dim)
                    .ok_or_else(|| {
                        Error::column(
                            path,
                            "tokens",
                            format!(
                                "`tokens` is {}, not FixedSizeList<FixedSizeList<Float32, \
                                 {dim}>, {len}>",
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
                t.values.extend_from_slice(v.values());
                let m = col("mask")?;
                no_nulls(path, m.as_ref(), "mask")?;
                let bools = m
                    .as_fixed_size_list_opt()
                    .filter(|l| l.value_length() as usize == len)
                    .and_then(|l| l.values().as_boolean_opt())
                    .map(|b| b.iter().map(|b| b.unwrap_or(false)).collect::<Vec<_>>())
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
                t.mask.as_mut().expect("token table").extend(bools);
            }
        }
        Ok(())
    }

    /// Checks the counts of what was read against each other and the metadata.
    fn finish(self) -> Result<Self> {
        let t = self;
        let path = t.path.clone();
        let path = path.as_path();
        let want = t.keys.len().checked_mul(t.row_len());
        let mask_want = t.keys.len().checked_mul(t.meta.tokens.unwrap_or(0));
        if let (Some(m), Some(want)) = (&t.mask, mask_want) {
            if m.len() != want {
                return Err(Error::rows(
                    path,
                    format!(
                        "column `mask`: {} values for {} rows",
                        m.len(),
                        t.keys.len()
                    ),
                ));
            }
        }
        if want != Some(t.values.len()) {
            return Err(Error::rows(
                path,
                format!("{} values for {} rows", t.values.len(), t.keys.len()),
            ));
        }
        if t.keys.len() != t.meta.row_end.saturating_sub(t.meta.row_start) {
            return Err(Error::rows(
                path,
                format!(
                    "{} rows, but the metadata says rows {}..{}",
                    t.keys.len(),
                    t.meta.row_start,
                    t.meta.row_end
                ),
            ));
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
