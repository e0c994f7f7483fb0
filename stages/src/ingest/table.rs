//! Reading raw CSV/list files with line numbers, and writing records tables as Parquet (through
//! `artifacts::portable`, in plain types every client reads).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow_array::builder::{Float32Builder, LargeListBuilder, LargeStringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
};
use artifacts::portable;
use polars::prelude::{DataFrame, ParquetReader, SerReader};

use crate::error::{Error, Result};

/// A column found by its header: its index, and the name errors report (the name asked for,
/// without the spaces some headers carry).
#[derive(Clone, Debug)]
pub struct RawColumn {
    pub index: usize,
    pub name: String,
}

impl RawColumn {
    /// The row's value in this column, trimmed (empty when the row is short).
    pub fn text<'r>(&self, rec: &'r csv::StringRecord) -> &'r str {
        rec.get(self.index).unwrap_or("").trim()
    }
}

/// A raw delimited file held in memory, each row with its 1-based line number (header = line 1).
pub struct RawTable {
    pub path: PathBuf,
    pub headers: Vec<String>,
    pub rows: Vec<(u64, csv::StringRecord)>,
}

/// The rows of a delimited file read one at a time ([`RawTable::open`]): each non-blank row with
/// its 1-based line number; a malformed row is an error naming the file.
pub struct RawRows {
    path: PathBuf,
    records: csv::StringRecordsIntoIter<BufReader<Box<dyn Read>>>,
}

impl Iterator for RawRows {
    type Item = Result<(u64, csv::StringRecord)>;

    fn next(&mut self) -> Option<Self::Item> {
        for rec in self.records.by_ref() {
            let rec = match rec {
                Ok(rec) => rec,
                Err(e) => return Some(Err(csv_error(&self.path, e))),
            };
            if rec.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            return Some(Ok((line, rec)));
        }
        None
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::Csv {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl RawTable {
    /// Reads a CSV (`.gz` decompressed transparently). `headers: false` for the COVIDx list files,
    /// whose fields are separated by single spaces.
    pub fn read(path: &Path, delimiter: u8, headers: bool) -> Result<Self> {
        let (mut table, rows) = Self::open(path, delimiter, headers)?;
        table.rows = rows.collect::<Result<_>>()?;
        Ok(table)
    }

    /// Opens a CSV as [`read`](Self::read) does, but hands its rows out one at a time: the table
    /// holds the path and headers (for column lookups and errors) and no rows.
    pub fn open(path: &Path, delimiter: u8, headers: bool) -> Result<(Self, RawRows)> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(headers)
            .flexible(true)
            .from_reader(BufReader::new(reader));
        let headers = if headers {
            (rdr.headers().map_err(|e| csv_error(path, e))?.iter())
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let table = RawTable {
            path: path.to_path_buf(),
            headers,
            rows: Vec::new(),
        };
        let rows = RawRows {
            path: path.to_path_buf(),
            records: rdr.into_records(),
        };
        Ok((table, rows))
    }

    /// Reads the whole file for its malformed rows only (the first is the error); returns how many
    /// non-blank rows it has. Streaming readers run it first, so that a malformed file fails before
    /// any of its rows is used, as [`read`](Self::read) does.
    pub fn check(path: &Path, delimiter: u8, headers: bool) -> Result<u64> {
        let (_, rows) = Self::open(path, delimiter, headers)?;
        rows.map(|r| r.map(|_| 1)).sum()
    }

    /// The index of a column, matched after trimming spaces (SIIM's header is `ImageId,
    /// EncodedPixels` with a leading space in the second name).
    pub fn col(&self, name: &str) -> Result<RawColumn> {
        let index = self.headers.iter().position(|h| h.trim() == name);
        index
            .map(|index| RawColumn {
                index,
                name: name.to_string(),
            })
            .ok_or_else(|| Error::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                found: self
                    .headers
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The row's value in `col` as a `T`; a value that does not parse is an error naming the
    /// file, line and field: ``"`{value}` is not {what}"``.
    pub fn parse<T: std::str::FromStr>(
        &self,
        rec: &csv::StringRecord,
        line: u64,
        col: &RawColumn,
        what: &str,
    ) -> Result<T> {
        let v = col.text(rec);
        v.parse::<T>()
            .map_err(|_| self.field_err(line, &col.name, format!("`{v}` is not {what}")))
    }

    /// The row's value in `col`, which must not be empty (`empty` says what is missing).
    pub fn required<'r>(
        &self,
        rec: &'r csv::StringRecord,
        line: u64,
        col: &RawColumn,
        empty: &str,
    ) -> Result<&'r str> {
        match col.text(rec) {
            "" => Err(self.field_err(line, &col.name, empty)),
            v => Ok(v),
        }
    }

    /// An error at `line`, in `field`.
    pub fn field_err(&self, line: u64, field: &str, message: impl Into<String>) -> Error {
        Error::Field {
            path: self.path.clone(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// `root/name` or `root/name.gz`, whichever exists (PhysioNet ships the MIMIC CSVs gzipped).
pub fn find_csv(root: &Path, name: &str) -> Result<PathBuf> {
    let plain = root.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = root.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(Error::Layout {
        path: plain,
        message: format!("file not found (nor {name}.gz)"),
    })
}

/// One column of a records table, in the types the README documents.
pub enum Col {
    Str(&'static str, Vec<String>),
    OptStr(&'static str, Vec<Option<String>>),
    I64(&'static str, Vec<i64>),
    I32(&'static str, Vec<i32>),
    OptF32(String, Vec<Option<f32>>),
    Bool(&'static str, Vec<bool>),
    ListStr(&'static str, Vec<Vec<String>>),
    /// A list of `[x1, y1, x2, y2]` float lists per row.
    Boxes(&'static str, Vec<Vec<[f32; 4]>>),
}

impl Col {
    fn name(&self) -> &str {
        match self {
            Col::Str(n, _)
            | Col::OptStr(n, _)
            | Col::I64(n, _)
            | Col::I32(n, _)
            | Col::Bool(n, _)
            | Col::ListStr(n, _)
            | Col::Boxes(n, _) => n,
            Col::OptF32(n, _) => n,
        }
    }

    /// A column of the same name and kind, without rows.
    pub fn empty_like(&self) -> Col {
        match self {
            Col::Str(n, _) => Col::Str(n, Vec::new()),
            Col::OptStr(n, _) => Col::OptStr(n, Vec::new()),
            Col::I64(n, _) => Col::I64(n, Vec::new()),
            Col::I32(n, _) => Col::I32(n, Vec::new()),
            Col::OptF32(n, _) => Col::OptF32(n.clone(), Vec::new()),
            Col::Bool(n, _) => Col::Bool(n, Vec::new()),
            Col::ListStr(n, _) => Col::ListStr(n, Vec::new()),
            Col::Boxes(n, _) => Col::Boxes(n, Vec::new()),
        }
    }

    /// The column as an Arrow array of the plain types `artifacts::portable` writes: strings as
    /// `LargeUtf8`, lists as `LargeList` (no `*View` types, which pandas cannot convert).
    fn into_array(self) -> ArrayRef {
        match self {
            Col::Str(_, v) => Arc::new(LargeStringArray::from_iter_values(v)),
            Col::OptStr(_, v) => Arc::new(LargeStringArray::from_iter(v)),
            Col::I64(_, v) => Arc::new(Int64Array::from(v)),
            Col::I32(_, v) => Arc::new(Int32Array::from(v)),
            Col::OptF32(_, v) => Arc::new(Float32Array::from(v)),
            Col::Bool(_, v) => Arc::new(BooleanArray::from(v)),
            Col::ListStr(_, v) => {
                let mut b = LargeListBuilder::new(LargeStringBuilder::new());
                for row in v {
                    for item in row {
                        b.values().append_value(item);
                    }
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            Col::Boxes(_, v) => {
                let mut b = LargeListBuilder::new(LargeListBuilder::new(Float32Builder::new()));
                for row in v {
                    for bx in row {
                        b.values().values().append_slice(&bx);
                        b.values().append(true);
                    }
                    b.append(true);
                }
                Arc::new(b.finish())
            }
        }
    }
}

impl Col {
    /// Whether the column may hold nulls: a property of its kind, not of its values, so that every
    /// row group of a table streamed in pieces has one schema.
    fn nullable(&self) -> bool {
        matches!(self, Col::OptStr(..) | Col::OptF32(..))
    }
}

/// Rows per row group of a records table: what [`RecordsWriter`] holds before writing, and what a
/// reader of row groups holds at a time.
pub const GROUP_ROWS: usize = 8192;

/// A records table written while it is read: batches of columns in, row groups of at most
/// `group_rows` rows (zstd) out, through `artifacts::portable`, the one writer of every stage's
/// tables. Every batch has the columns (names, kinds, order) of the first.
pub struct RecordsWriter {
    writer: portable::TableWriter,
    /// A batch of no rows: the table's schema.
    empty: RecordBatch,
    path: PathBuf,
    rows: usize,
}

impl RecordsWriter {
    /// Creates `path` for tables of `columns`' names and kinds (their values are not written).
    pub fn create(path: &Path, columns: &[Col], group_rows: usize) -> Result<Self> {
        let empty = batch(path, columns.iter().map(Col::empty_like).collect())?;
        let props = portable::zstd_in_groups(group_rows);
        let writer = portable::TableWriter::create(path, empty.schema(), Some(props))?;
        Ok(RecordsWriter {
            writer,
            empty,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    /// Appends rows: the columns of the table, in its order.
    pub fn write(&mut self, columns: Vec<Col>) -> Result<()> {
        let batch = batch(&self.path, columns)?;
        if batch.schema() != self.empty.schema() {
            return Err(Error::Table {
                path: self.path.clone(),
                message: format!(
                    "rows of schema {:?} written to a table of {:?}",
                    batch.schema(),
                    self.empty.schema()
                ),
            });
        }
        self.writer.write(&batch)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Finishes the file; returns the row count.
    pub fn finish(self) -> Result<usize> {
        self.writer.close()?;
        Ok(self.rows)
    }
}

/// The columns as one Arrow batch, each nullable as its kind says.
fn batch(path: &Path, columns: Vec<Col>) -> Result<RecordBatch> {
    let columns = columns.into_iter().map(|c| {
        let (name, nullable) = (c.name().to_string(), c.nullable());
        (name, c.into_array(), nullable)
    });
    RecordBatch::try_from_iter_with_nullable(columns).map_err(|e| Error::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes the columns as a whole Parquet table, in row groups of [`GROUP_ROWS`]; returns the row
/// count.
pub fn write_parquet(path: &Path, cols: Vec<Col>) -> Result<usize> {
    write_in_groups(path, cols, GROUP_ROWS)
}

/// [`write_parquet`] in row groups of `group_rows`.
pub fn write_in_groups(path: &Path, cols: Vec<Col>, group_rows: usize) -> Result<usize> {
    let mut w = RecordsWriter::create(path, &cols, group_rows)?;
    w.write(cols)?;
    w.finish()
}

/// Reads a Parquet table (tests, and stages downstream of ingest).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(file).finish().map_err(|e| Error::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use polars::prelude::{ParquetReader, SerReader};

    use super::*;

    /// One column of every kind, `n` rows from `start`, with nulls and empty lists.
    fn columns(start: usize, n: usize) -> Vec<Col> {
        let r = start..start + n;
        vec![
            Col::Str("key", r.clone().map(|i| format!("k{i}")).collect()),
            Col::OptStr(
                "note",
                r.clone()
                    .map(|i| (i % 3 > 0).then(|| format!("n{i}")))
                    .collect(),
            ),
            Col::I64("id", r.clone().map(|i| i as i64 * 1_000_003).collect()),
            Col::I32("n", r.clone().map(|i| i as i32 - 7).collect()),
            Col::OptF32(
                "label".into(),
                r.clone()
                    .map(|i| (i % 4 > 0).then_some(i as f32 / 2.0))
                    .collect(),
            ),
            Col::Bool("flag", r.clone().map(|i| i % 2 == 0).collect()),
            Col::ListStr(
                "words",
                r.clone()
                    .map(|i| (0..i % 3).map(|j| format!("w{j}")).collect())
                    .collect(),
            ),
            Col::Boxes(
                "boxes",
                r.map(|i| vec![[i as f32, 1.0, 2.0, 3.0]; i % 2]).collect(),
            ),
        ]
    }

    fn groups(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        ParquetReader::new(file)
            .get_metadata()
            .unwrap()
            .row_groups
            .len()
    }

    #[test]
    fn a_table_streamed_in_row_groups_reads_back_as_the_one_shot_write() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.parquet");
        assert_eq!(write_in_groups(&whole, columns(0, 25), 1000).unwrap(), 25);
        let streamed = dir.path().join("streamed.parquet");
        let mut w = RecordsWriter::create(&streamed, &columns(0, 0), 4).unwrap();
        for (start, n) in [(0, 3), (3, 0), (3, 15), (18, 7)] {
            w.write(columns(start, n)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 25);
        assert_eq!((groups(&whole), groups(&streamed)), (1, 7));
        let (a, b) = (
            read_parquet(&whole).unwrap(),
            read_parquet(&streamed).unwrap(),
        );
        assert_eq!(a.schema(), b.schema());
        assert_eq!(a.height(), 25);
        assert!(a.equals_missing(&b));
        // Nulls come back as nulls, values as written.
        let note = b.column("note").unwrap().str().unwrap();
        assert_eq!((note.get(3), note.get(4)), (None, Some("n4")));
    }

    #[test]
    fn rows_of_other_columns_are_refused_naming_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut w = RecordsWriter::create(&path, &columns(0, 0), 4).unwrap();
        let mut cols = columns(0, 2);
        cols.swap(0, 1);
        let e = w.write(cols).unwrap_err().to_string();
        assert!(
            e.contains("t.parquet") && e.contains("written to a table of"),
            "{e}"
        );
    }
}
