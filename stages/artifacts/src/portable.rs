//! The one Parquet writer every stage's table goes through (records, embeddings, metrics,
//! predictions, results): plain Arrow types that pandas (through pyarrow), polars, DuckDB and
//! arrow-rs all read, checked column by column before a byte is written.
//!
//! Why a gate: polars 0.55 writes strings as `Utf8View` and lists as `LargeList<Utf8View>` in the
//! Arrow schema it embeds, and pyarrow 26 cannot convert `large_list<string_view>` to pandas. The
//! types allowed here are the ones each of those readers has been checked against
//! (`tools/check_tables.py`, run by `tests/learning.rs` on every table of the small demo).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// Why a type is not written: `None` when every client reads it, else what to write instead.
fn unportable(t: &DataType) -> Option<String> {
    use DataType::*;
    let item = |f: &Field| unportable(f.data_type());
    match t {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32
        | Float64 | Utf8 | LargeUtf8 | Binary | LargeBinary | Date32 => None,
        Timestamp(..) => None,
        List(f) | LargeList(f) | FixedSizeList(f, _) => item(f),
        Struct(fields) => fields.iter().find_map(|f| item(f)),
        Utf8View => Some("Utf8View (write Utf8 or LargeUtf8)".into()),
        BinaryView => Some("BinaryView (write Binary or LargeBinary)".into()),
        ListView(_) | LargeListView(_) => Some(format!("{t} (write List or LargeList)")),
        other => Some(format!("{other} (not among the types every client reads)")),
    }
}

/// Checks that every column of `schema` has a type pandas, polars and DuckDB read; the error
/// names the file, the column and the type.
pub fn check_schema(path: &Path, schema: &SchemaRef) -> Result<()> {
    for f in schema.fields() {
        if let Some(why) = unportable(f.data_type()) {
            return Err(Error::column(
                path,
                f.name(),
                format!(
                    "column `{}` of type {} would not read in every client: {why}",
                    f.name(),
                    f.data_type()
                ),
            ));
        }
    }
    Ok(())
}

/// A Parquet file being written, one batch at a time, through the schema check.
pub struct TableWriter {
    writer: ArrowWriter<File>,
    path: PathBuf,
}

impl TableWriter {
    /// Creates `path` for tables of `schema`; `props` as arrow-rs takes them (`None`: its defaults).
    pub fn create(path: &Path, schema: SchemaRef, props: Option<WriterProperties>) -> Result<Self> {
        check_schema(path, &schema)?;
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema, props).map_err(Error::parquet(path))?;
        Ok(TableWriter {
            writer,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(Error::parquet(&self.path))
    }

    /// Finishes the file (footer, metadata).
    pub fn close(self) -> Result<()> {
        self.writer
            .close()
            .map(|_| ())
            .map_err(Error::parquet(&self.path))
    }
}

/// zstd at its default level, arrow-rs' defaults otherwise: the records tables' settings (small
/// tables of text, read whole).
pub fn zstd() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build()
}

/// [`zstd`] in row groups of at most `rows` rows: a table written batch by batch while it is read
/// (records tables, `preprocess`'s index), whose writer then holds one row group, not the table.
pub fn zstd_in_groups(rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(rows.max(1)))
        .build()
}

/// Writes one batch as the whole table at `path`.
pub fn write_table(
    path: &Path,
    batch: &RecordBatch,
    props: Option<WriterProperties>,
) -> Result<()> {
    let mut w = TableWriter::create(path, batch.schema(), props)?;
    w.write(batch)?;
    w.close()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, ListArray, StringArray, StringViewArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    #[test]
    fn plain_types_pass_and_views_are_refused_by_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let items = Arc::new(StringArray::from(vec!["1 2", "3 4"])) as ArrayRef;
        let list = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            arrow_buffer::OffsetBuffer::from_lengths([2]),
            items,
            None,
        )
        .unwrap();
        let batch = RecordBatch::try_from_iter([("rle", Arc::new(list) as ArrayRef)]).unwrap();
        write_table(&path, &batch, None).unwrap();

        let view = Arc::new(StringViewArray::from(vec!["a"])) as ArrayRef;
        let batch = RecordBatch::try_from_iter([("key", view)]).unwrap();
        let err = write_table(&path, &batch, None).unwrap_err().to_string();
        assert!(err.contains("column `key` of type Utf8View"), "{err}");
        assert!(err.contains("t.parquet"), "{err}");

        let nested = Schema::new(vec![Field::new(
            "rle",
            DataType::LargeList(Arc::new(Field::new("item", DataType::Utf8View, true))),
            true,
        )]);
        let err = check_schema(&path, &Arc::new(nested))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column `rle`") && err.contains("Utf8View"),
            "{err}"
        );
    }
}
