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

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};

/// Version of the table layout, in the metadata.
pub const FORMAT: &str = "1";
const PREFIX: &str = "adaptor.";

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
        let get = |k: &str| -> Result<String> {
            map.get(k).map(|s| s.to_string()).ok_or_else(|| {
                Error::table(
                    path,
                    format!("metadata `{PREFIX}{k}` missing: not an adaptor embedding table"),
                )
            })
        };
        let num = |k: &str, s: &str| -> Result<usize> {
            s.trim().parse().map_err(|_| {
                Error::table(
                    path,
                    format!("metadata `{PREFIX}{k}` = `{s}` is not a count"),
                )
            })
        };
        let rows = get("rows")?;
        let parsed = rows
            .split_once("..")
            .and_then(|(a, rest)| rest.split_once(" of ").map(|(b, c)| (a, b, c)));
        let (a, b, c) =
            parsed.ok_or_else(|| Error::table(path, format!("metadata rows `{rows}`")))?;
        let (row_start, row_end, rows_total) = (num("rows", a)?, num("rows", b)?, num("rows", c)?);
        if row_start > row_end || row_end > rows_total {
            return Err(Error::table(
                path,
                format!("metadata `{PREFIX}rows` = `{rows}`: not a range of rows of the total"),
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

/// Streams rows into a table, one row group per ~64 MiB.
pub struct EmbeddingWriter {
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    path: PathBuf,
    dim: usize,
    tokens: Option<usize>,
    with_split: bool,
    rows: usize,
}

impl EmbeddingWriter {
    /// A pooled table when `meta.tokens` is `None`, else a token table. `with_split`: whether rows
    /// carry a `split` (records tables) or not (`adaptor embed`).
    pub fn create(path: &Path, meta: &TableMeta, with_split: bool) -> Result<Self> {
        let dim = meta.dim;
        let mut fields = vec![Field::new("key", DataType::Utf8, false)];
        if with_split {
            fields.push(Field::new("split", DataType::Utf8, false));
        }
        let row_bytes = match meta.tokens {
            None => {
                fields.push(Field::new("embedding", vector_field(dim), false));
                dim * 4
            }
            Some(l) => {
                fields.push(Field::new(
                    "tokens",
                    DataType::FixedSizeList(
                        Arc::new(Field::new("item", vector_field(dim), false)),
                        l as i32,
                    ),
                    false,
                ));
                fields.push(Field::new(
                    "mask",
                    DataType::FixedSizeList(
                        Arc::new(Field::new("item", DataType::Boolean, false)),
                        l as i32,
                    ),
                    false,
                ));
                l * (dim * 4 + 1)
            }
        };
        let schema = Arc::new(Schema::new(fields));
        let rows_per_group = ((64usize << 20) / row_bytes.max(1)).clamp(1, 1 << 20);
        let props = WriterProperties::builder()
            // Float vectors barely compress; keys are unique. Only `split` gets a dictionary.
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("split"), true)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(Some(rows_per_group))
            .set_key_value_metadata(Some(meta.to_kv()))
            .build();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::table(path, e))?;
        Ok(EmbeddingWriter {
            writer,
            schema,
            path: path.to_path_buf(),
            dim,
            tokens: meta.tokens,
            with_split,
            rows: 0,
        })
    }

    /// Appends rows: `values` is `rows × D` (or `rows × L × D`), `mask` `rows × L` for tokens.
    pub fn write(
        &mut self,
        keys: &[String],
        splits: Option<&[String]>,
        values: Vec<f32>,
        mask: Option<Vec<bool>>,
    ) -> Result<()> {
        let n = keys.len();
        let per_row = self.dim * self.tokens.unwrap_or(1);
        if values.len() != n * per_row {
            return Err(Error::table(
                &self.path,
                format!("{} values for {n} rows of {per_row}", values.len()),
            ));
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(keys))];
        if self.with_split {
            let s = splits.ok_or_else(|| Error::table(&self.path, "rows without a split"))?;
            cols.push(Arc::new(StringArray::from_iter_values(s)));
        }
        let vectors = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            self.dim as i32,
            Arc::new(Float32Array::from(values)),
            None,
        )
        .map_err(|e| Error::table(&self.path, e))?;
        match self.tokens {
            None => cols.push(Arc::new(vectors)),
            Some(l) => {
                let item = Arc::new(Field::new("item", vector_field(self.dim), false));
                cols.push(Arc::new(
                    FixedSizeListArray::try_new(item, l as i32, Arc::new(vectors), None)
                        .map_err(|e| Error::table(&self.path, e))?,
                ));
                let mask =
                    mask.ok_or_else(|| Error::table(&self.path, "token rows without a mask"))?;
                if mask.len() != n * l {
                    return Err(Error::table(
                        &self.path,
                        format!("mask of {} for {n} rows", mask.len()),
                    ));
                }
                cols.push(Arc::new(
                    FixedSizeListArray::try_new(
                        Arc::new(Field::new("item", DataType::Boolean, false)),
                        l as i32,
                        Arc::new(BooleanArray::from(mask)),
                        None,
                    )
                    .map_err(|e| Error::table(&self.path, e))?,
                ));
            }
        }
        let batch = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| Error::table(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::table(&self.path, e))?;
        self.rows += n;
        Ok(())
    }

    /// Finishes the file; returns the row count.
    pub fn finish(self) -> Result<usize> {
        self.writer
            .close()
            .map_err(|e| Error::table(&self.path, e))?;
        Ok(self.rows)
    }
}

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
        return Err(Error::table(
            path,
            format!("column `{name}` has {} null rows", col.null_count()),
        ));
    }
    Ok(())
}

fn strings(path: &Path, col: &dyn Array, name: &str) -> Result<Vec<String>> {
    if col.null_count() > 0 {
        return Err(Error::table(path, format!("column `{name}` has nulls")));
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
            return Err(Error::table(
                path,
                format!("column `{name}` is {other}, not a string"),
            ))
        }
    })
}

/// Reads string columns of any Parquet file (the records table written by polars included),
/// in row order; a missing column is an error listing those present.
pub fn read_string_columns(path: &Path, names: &[&str]) -> Result<Vec<Vec<String>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::table(path, e))?;
    let schema = builder.schema().clone();
    let mut idx = Vec::new();
    for n in names {
        let i = schema.index_of(n).map_err(|_| {
            Error::table(
                path,
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
        .map_err(|e| Error::table(path, e))?;
    let mut out: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for batch in reader {
        let batch = batch.map_err(|e| Error::table(path, e))?;
        for (j, n) in names.iter().enumerate() {
            let col = batch
                .column_by_name(n)
                .ok_or_else(|| Error::table(path, format!("column `{n}` vanished")))?;
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
            .map_err(|e| Error::table(&name, e))?;
        if !complete {
            return Err(Error::table(
                &name,
                "the artifact is not complete (no _manifest.json)",
            ));
        }
        let bytes = store
            .get(&rel)
            .map_err(|e| Error::table(&name, e))?
            .ok_or_else(|| Error::table(&name, "not in the artifact"))?;
        Self::from_reader(&name, bytes)
    }

    /// Reads a table from any Parquet source; `path` names it in messages.
    pub fn from_reader<R: parquet::file::reader::ChunkReader + 'static>(
        path: &Path,
        reader: R,
    ) -> Result<Self> {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| Error::table(path, e))?;
        let meta = TableMeta::from_kv(
            path,
            builder.metadata().file_metadata().key_value_metadata(),
        )?;
        let reader = builder.build().map_err(|e| Error::table(path, e))?;
        let mut t = EmbeddingTable {
            path: path.to_path_buf(),
            keys: Vec::new(),
            splits: None,
            values: Vec::new(),
            mask: meta.tokens.map(|_| Vec::new()),
            meta,
        };
        for batch in reader {
            let batch = batch.map_err(|e| Error::table(path, e))?;
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .cloned()
                    .ok_or_else(|| Error::table(path, format!("no column `{n}`")))
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
                            Error::table(
                                path,
                                format!(
                                    "`embedding` is not FixedSizeList<Float32, {}>",
                                    t.meta.dim
                                ),
                            )
                        })?;
                    let v = list
                        .values()
                        .as_primitive_opt::<Float32Type>()
                        .ok_or_else(|| Error::table(path, "`embedding` items are not Float32"))?;
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
                            Error::table(
                                path,
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
                        .ok_or_else(|| Error::table(path, "`tokens` items are not Float32"))?;
                    t.values.extend_from_slice(v.values());
                    let m = col("mask")?;
                    no_nulls(path, m.as_ref(), "mask")?;
                    let bools = m
                        .as_fixed_size_list_opt()
                        .filter(|l| l.value_length() as usize == len)
                        .and_then(|l| l.values().as_boolean_opt())
                        .map(|b| b.iter().map(|b| b.unwrap_or(false)).collect::<Vec<_>>())
                        .ok_or_else(|| {
                            Error::table(
                                path,
                                format!(
                                    "`mask` is {}, not FixedSizeList<Boolean, {len}>",
                                    m.data_type()
                                ),
                            )
                        })?;
                    t.mask.as_mut().expect("token table").extend(bools);
                }
            }
        }
        let want = t.keys.len().checked_mul(t.row_len());
        let mask_want = t.keys.len().checked_mul(t.meta.tokens.unwrap_or(0));
        if let (Some(m), Some(want)) = (&t.mask, mask_want) {
            if m.len() != want {
                return Err(Error::table(
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
            return Err(Error::table(
                path,
                format!("{} values for {} rows", t.values.len(), t.keys.len()),
            ));
        }
        if t.keys.len() != t.meta.row_end.saturating_sub(t.meta.row_start) {
            return Err(Error::table(
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

    /// Checks that this table's keys are `records[row_start..row_end]`, in order.
    pub fn check_aligned(&self, records: &[String]) -> Result<()> {
        let m = &self.meta;
        if m.rows_total != records.len() {
            return Err(Error::Alignment {
                path: self.path.clone(),
                message: format!(
                    "it was built from a records table of {} rows; this one has {}",
                    m.rows_total,
                    records.len()
                ),
            });
        }
        let want = &records[m.row_start.min(records.len())..m.row_end.min(records.len())];
        if let Some(i) =
            (0..self.keys.len().max(want.len())).find(|&i| self.keys.get(i) != want.get(i))
        {
            let show =
                |k: Option<&String>| k.map_or("nothing".to_string(), |k| format!("key `{k}`"));
            return Err(Error::Alignment {
                path: self.path.clone(),
                message: format!(
                    "row {} has {} where the records table has {}",
                    m.row_start + i,
                    show(self.keys.get(i)),
                    show(want.get(i))
                ),
            });
        }
        Ok(())
    }

    /// Reads the shards of one table (any order), checks that they are the n shards of the same
    /// encoding and cover every row once, and concatenates them in row order.
    pub fn read_shards(paths: &[PathBuf]) -> Result<Self> {
        let mut parts = paths
            .iter()
            .map(|p| Self::read(p))
            .collect::<Result<Vec<_>>>()?;
        let first = parts
            .first()
            .ok_or_else(|| Error::Invalid("no embedding table given".into()))?;
        let same = |t: &EmbeddingTable| {
            let (a, b) = (&t.meta, &first.meta);
            (
                &a.table,
                &a.backbone,
                &a.backbone_kind,
                a.dim,
                a.tokens,
                &a.pooling,
                &a.preprocessing,
                &a.precision,
                a.rows_total,
            ) == (
                &b.table,
                &b.backbone,
                &b.backbone_kind,
                b.dim,
                b.tokens,
                &b.pooling,
                &b.preprocessing,
                &b.precision,
                b.rows_total,
            )
        };
        if let Some(bad) = parts.iter().find(|t| !same(t)) {
            return Err(Error::table(
                &bad.path,
                format!(
                    "not a shard of the same encoding as {}",
                    first.path.display()
                ),
            ));
        }
        parts.sort_by_key(|t| t.meta.row_start);
        let mut next = 0;
        for t in &parts {
            if t.meta.row_start != next {
                return Err(Error::table(
                    &t.path,
                    format!(
                        "shard {} starts at row {}, expected {next} (a shard is missing or repeated)",
                        t.meta.shard, t.meta.row_start
                    ),
                ));
            }
            next = t.meta.row_end;
        }
        let total = parts[0].meta.rows_total;
        if next != total {
            return Err(Error::Invalid(format!(
                "the shards cover rows 0..{next} of {total}: a shard is missing"
            )));
        }
        let mut it = parts.into_iter();
        let mut all = it.next().expect("non-empty");
        for t in it {
            all.keys.extend(t.keys);
            if let (Some(a), Some(b)) = (all.splits.as_mut(), t.splits) {
                a.extend(b);
            }
            all.values.extend(t.values);
            if let (Some(a), Some(b)) = (all.mask.as_mut(), t.mask) {
                a.extend(b);
            }
        }
        all.meta.row_start = 0;
        all.meta.row_end = total;
        all.meta.shard = "0/1".into();
        Ok(all)
    }
}

/// Reads a whole table (one file, or all its shards) and checks it against the keys of
/// `records` (`records.parquet`).
pub fn read_aligned(tables: &[PathBuf], records: &Path) -> Result<EmbeddingTable> {
    let t = if tables.len() == 1 {
        EmbeddingTable::read(&tables[0])?
    } else {
        EmbeddingTable::read_shards(tables)?
    };
    if t.meta.row_start != 0 || t.meta.row_end != t.meta.rows_total {
        return Err(Error::Alignment {
            path: t.path.clone(),
            message: format!(
                "it holds rows {}..{} of {} (shard {}); pass all the shards",
                t.meta.row_start, t.meta.row_end, t.meta.rows_total, t.meta.shard
            ),
        });
    }
    let keys = read_string_columns(records, &["key"])?.remove(0);
    t.check_aligned(&keys)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rows: (usize, usize, usize), tokens: Option<usize>) -> TableMeta {
        TableMeta {
            table: if tokens.is_some() {
                "tokens"
            } else {
                "embeddings"
            }
            .into(),
            backbone: "b".into(),
            backbone_kind: "bert".into(),
            dim: 2,
            tokens,
            pooling: "mean".into(),
            preprocessing: "{}".into(),
            precision: "fp32".into(),
            shard: "0/1".into(),
            row_start: rows.0,
            row_end: rows.1,
            rows_total: rows.2,
        }
    }

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pooled_and_token_tables_round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let mut w = EmbeddingWriter::create(&p, &meta((0, 3, 3), None), true).unwrap();
        w.write(
            &keys(&["a", "b"]),
            Some(&keys(&["train", "valid"])),
            vec![1.0, 2.0, 3.0, -0.0],
            None,
        )
        .unwrap();
        w.write(
            &keys(&["c"]),
            Some(&keys(&["train"])),
            vec![f32::MIN_POSITIVE, 5.5],
            None,
        )
        .unwrap();
        assert_eq!(w.finish().unwrap(), 3);
        let t = EmbeddingTable::read(&p).unwrap();
        assert_eq!(t.meta, meta((0, 3, 3), None));
        assert_eq!(t.keys, keys(&["a", "b", "c"]));
        assert_eq!(
            t.splits.as_deref(),
            Some(&keys(&["train", "valid", "train"])[..])
        );
        assert_eq!(t.row(2), &[f32::MIN_POSITIVE, 5.5]);
        assert_eq!(t.row(1)[1].to_bits(), (-0.0f32).to_bits());

        let p = dir.path().join("t.parquet");
        let mut w = EmbeddingWriter::create(&p, &meta((0, 1, 1), Some(3)), false).unwrap();
        w.write(
            &keys(&["a"]),
            None,
            vec![1., 2., 3., 4., 0., 0.],
            Some(vec![true, true, false]),
        )
        .unwrap();
        w.finish().unwrap();
        let t = EmbeddingTable::read(&p).unwrap();
        assert_eq!(t.values, [1., 2., 3., 4., 0., 0.]);
        assert_eq!(t.mask, Some(vec![true, true, false]));
        assert!(t.splits.is_none());
    }

    #[test]
    fn misaligned_tables_are_refused_naming_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let mut w = EmbeddingWriter::create(&p, &meta((0, 3, 3), None), false).unwrap();
        w.write(&keys(&["a", "c", "b"]), None, vec![0.0; 6], None)
            .unwrap();
        w.finish().unwrap();
        let t = EmbeddingTable::read(&p).unwrap();
        let err = t
            .check_aligned(&keys(&["a", "b", "c"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("not aligned with the records table: row 1 has key `c` where the records table has key `b`"),
            "{err}"
        );
        let err = t.check_aligned(&keys(&["a", "b"])).unwrap_err().to_string();
        assert!(
            err.contains("built from a records table of 3 rows; this one has 2"),
            "{err}"
        );
    }

    #[test]
    fn shards_concatenate_in_row_order_and_gaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, start: usize, end: usize, ks: &[&str]| {
            let p = dir.path().join(name);
            let mut m = meta((start, end, 3), None);
            m.shard = format!("{start}");
            let mut w = EmbeddingWriter::create(&p, &m, false).unwrap();
            w.write(&keys(ks), None, vec![start as f32; 2 * ks.len()], None)
                .unwrap();
            w.finish().unwrap();
            p
        };
        let b = write("b.parquet", 1, 3, &["y", "z"]);
        let a = write("a.parquet", 0, 1, &["x"]);
        let t = EmbeddingTable::read_shards(&[b.clone(), a]).unwrap();
        assert_eq!(t.keys, keys(&["x", "y", "z"]));
        t.check_aligned(&keys(&["x", "y", "z"])).unwrap();
        let err = EmbeddingTable::read_shards(&[b]).unwrap_err().to_string();
        assert!(err.contains("starts at row 1, expected 0"), "{err}");
    }
    #[test]
    fn tables_are_read_through_the_store_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let mut w = EmbeddingWriter::create(&p, &meta((0, 1, 1), None), false).unwrap();
        w.write(&keys(&["a"]), None, vec![1.0, 2.0], None).unwrap();
        w.finish().unwrap();
        let store =
            pipeline::Store::open(&pipeline::StoreUrl::Memory, &Default::default(), dir.path())
                .unwrap();
        let key = pipeline::StageKey::parse(&"d".repeat(64)).unwrap();
        let dir_rel = pipeline::Store::artifact_dir("encode-text", &key);
        let bytes = bytes::Bytes::from(std::fs::read(&p).unwrap());
        store
            .put(&format!("{dir_rel}/embeddings.parquet"), bytes, false)
            .unwrap();
        let err =
            EmbeddingTable::read_from_store(&store, "encode-text", &key, "embeddings.parquet")
                .unwrap_err();
        assert!(err.to_string().contains("not complete"), "{err}");
        store
            .put(
                &pipeline::Store::manifest_path("encode-text", &key),
                bytes::Bytes::from_static(b"{}"),
                false,
            )
            .unwrap();
        let t = EmbeddingTable::read_from_store(&store, "encode-text", &key, "embeddings.parquet")
            .unwrap();
        assert_eq!((t.keys, t.values), (keys(&["a"]), vec![1.0, 2.0]));
    }

    /// Writes arbitrary columns with the metadata of `m` (dim and tokens overridable as text).
    fn write_raw(path: &Path, m: &TableMeta, over: &[(&str, &str)], cols: Vec<(&str, ArrayRef)>) {
        let mut kv = m.to_kv();
        for (k, v) in over {
            let key = format!("{PREFIX}{k}");
            kv.retain(|e| e.key != key);
            kv.push(KeyValue::new(key, v.to_string()));
        }
        let schema = Arc::new(Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch =
            RecordBatch::try_new(schema.clone(), cols.into_iter().map(|(_, a)| a).collect())
                .unwrap();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(kv))
            .build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn fixed(values: ArrayRef, n: i32) -> ArrayRef {
        let item = Arc::new(Field::new("item", values.data_type().clone(), true));
        Arc::new(FixedSizeListArray::try_new(item, n, values, None).unwrap())
    }

    #[test]
    fn parquet_inputs_of_the_wrong_type_or_shape_are_errors_naming_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.parquet");
        let key: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let read_err = |p: &Path| EmbeddingTable::read(p).unwrap_err().to_string();
        let named = |e: &str, col: &str| {
            assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
            assert!(e.contains(&format!("`{col}`")), "{e}");
        };
        // embedding holding integers
        let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1, 2]));
        write_raw(
            &p,
            &meta((0, 1, 1), None),
            &[],
            vec![("key", key.clone()), ("embedding", fixed(ints, 2))],
        );
        named(&read_err(&p), "embedding");
        // embedding of the wrong width
        let f3: ArrayRef = Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0]));
        write_raw(
            &p,
            &meta((0, 1, 1), None),
            &[],
            vec![("key", key.clone()), ("embedding", fixed(f3.clone(), 3))],
        );
        named(&read_err(&p), "embedding");
        // key holding integers
        let f2: ArrayRef = Arc::new(Float32Array::from(vec![1.0, 2.0]));
        let int_key: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![7]));
        write_raw(
            &p,
            &meta((0, 1, 1), None),
            &[],
            vec![("key", int_key), ("embedding", fixed(f2.clone(), 2))],
        );
        named(&read_err(&p), "key");
        // a token table whose mask holds floats (this used to panic in `as_boolean`)
        let tokens = fixed(fixed(Arc::new(Float32Array::from(vec![0.0; 6])), 2), 3);
        let float_mask = fixed(Arc::new(Float32Array::from(vec![1.0, 1.0, 0.0])), 3);
        write_raw(
            &p,
            &meta((0, 1, 1), Some(3)),
            &[],
            vec![
                ("key", key.clone()),
                ("tokens", tokens.clone()),
                ("mask", float_mask),
            ],
        );
        named(&read_err(&p), "mask");
        // tokens shaped 2 × 3 where the metadata says 3 × 2
        let wrong = fixed(fixed(Arc::new(Float32Array::from(vec![0.0; 6])), 3), 2);
        let mask = fixed(Arc::new(BooleanArray::from(vec![true, true, false])), 3);
        write_raw(
            &p,
            &meta((0, 1, 1), Some(3)),
            &[],
            vec![("key", key.clone()), ("tokens", wrong), ("mask", mask)],
        );
        named(&read_err(&p), "tokens");
        // null rows
        let null_key: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
        write_raw(
            &p,
            &meta((0, 1, 1), None),
            &[],
            vec![("key", null_key), ("embedding", fixed(f2.clone(), 2))],
        );
        named(&read_err(&p), "key");
        // metadata a reader would compute with: a dimension that overflows, rows backwards
        write_raw(
            &p,
            &meta((0, 1, 1), Some(3)),
            &[("dim", &usize::MAX.to_string())],
            vec![
                ("key", key.clone()),
                ("tokens", tokens),
                (
                    "mask",
                    fixed(Arc::new(BooleanArray::from(vec![true; 3])), 3),
                ),
            ],
        );
        let e = read_err(&p);
        assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
        write_raw(
            &p,
            &meta((0, 1, 1), None),
            &[("rows", "5..2 of 9")],
            vec![("key", key.clone()), ("embedding", fixed(f2, 2))],
        );
        let e = read_err(&p);
        assert!(e.contains("metadata `adaptor.rows` = `5..2 of 9`"), "{e}");
        // a records table whose `key` column holds integers
        let int_key: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![7]));
        write_raw(&p, &meta((0, 1, 1), None), &[], vec![("key", int_key)]);
        let e = read_string_columns(&p, &["key"]).unwrap_err().to_string();
        named(&e, "key");
    }
}
