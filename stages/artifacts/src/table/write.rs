//! Writing embedding tables: [`EmbeddingWriter`] streams rows in row groups of about 64 MiB, and
//! [`write_window`] says how many rows the encode loops (and the merge of shards) write at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::{vector_field, TableMeta};
use crate::error::{Error, Result};
use crate::files::ENCODE_TEXT;
use crate::portable::TableWriter;

/// Batches of texts are formed within windows of this many batches, shortest texts together, so
/// that per-batch padding stays small; rows are written back in input order.
pub const SORT_WINDOW: usize = 16;

/// Rows per table write of the encode loop of stage `kind`. The merge of shards writes in the same
/// windows, so that its Parquet file is byte-identical to an unsharded run's (page boundaries
/// follow the writes).
pub fn write_window(kind: &str, batch_size: usize, tokens: bool) -> usize {
    let bs = batch_size.max(1);
    match kind {
        // Token rows are large (max_length × dim floats): keep their windows short.
        ENCODE_TEXT if tokens => bs * 2,
        ENCODE_TEXT => bs * SORT_WINDOW,
        _ => bs,
    }
}

/// Streams rows into a table, one row group per ~64 MiB.
pub struct EmbeddingWriter {
    writer: TableWriter,
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
        let writer = TableWriter::create(path, schema.clone(), Some(props))?;
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
            return Err(Error::rows(
                &self.path,
                format!("{} values for {n} rows of {per_row}", values.len()),
            ));
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(keys))];
        if self.with_split {
            let s =
                splits.ok_or_else(|| Error::column(&self.path, "split", "rows without a split"))?;
            cols.push(Arc::new(StringArray::from_iter_values(s)));
        }
        let vectors = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            self.dim as i32,
            Arc::new(Float32Array::from(values)),
            None,
        )
        .map_err(Error::arrow(&self.path))?;
        match self.tokens {
            None => cols.push(Arc::new(vectors)),
            Some(l) => {
                let item = Arc::new(Field::new("item", vector_field(self.dim), false));
                cols.push(Arc::new(
                    FixedSizeListArray::try_new(item, l as i32, Arc::new(vectors), None)
                        .map_err(Error::arrow(&self.path))?,
                ));
                let mask = mask.ok_or_else(|| {
                    Error::column(&self.path, "mask", "token rows without a mask")
                })?;
                if mask.len() != n * l {
                    return Err(Error::rows(
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
                    .map_err(Error::arrow(&self.path))?,
                ));
            }
        }
        let batch =
            RecordBatch::try_new(self.schema.clone(), cols).map_err(Error::arrow(&self.path))?;
        self.writer.write(&batch)?;
        self.rows += n;
        Ok(())
    }

    /// Finishes the file; returns the row count.
    pub fn finish(self) -> Result<usize> {
        self.writer.close()?;
        Ok(self.rows)
    }
}
