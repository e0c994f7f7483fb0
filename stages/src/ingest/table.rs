//! Reading raw CSV/list files with line numbers, and writing records tables as Parquet (through
//! `artifacts::portable`, in plain types every client reads).

use std::fs::File;
use std::io::Read;
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

impl RawTable {
    /// Reads a CSV (`.gz` decompressed transparently). `headers: false` for the COVIDx list files,
    /// whose fields are separated by single spaces.
    pub fn read(path: &Path, delimiter: u8, headers: bool) -> Result<Self> {
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
            .from_reader(std::io::BufReader::new(reader));
        let csv_err = |e: csv::Error| Error::Csv {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let headers = if headers {
            rdr.headers()
                .map_err(csv_err)?
                .iter()
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let mut rows = Vec::new();
        for rec in rdr.records() {
            let rec = rec.map_err(csv_err)?;
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if rec.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            rows.push((line, rec));
        }
        Ok(RawTable {
            path: path.to_path_buf(),
            headers,
            rows,
        })
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

/// Writes the columns as a Parquet file (zstd) through `artifacts::portable`, the one writer of
/// every stage's tables; returns the row count.
pub fn write_parquet(path: &Path, cols: Vec<Col>) -> Result<usize> {
    let columns: Vec<(String, ArrayRef)> = cols
        .into_iter()
        .map(|c| (c.name().to_string(), c.into_array()))
        .collect();
    let batch = RecordBatch::try_from_iter(columns).map_err(|e| Error::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    portable::write_table(path, &batch, Some(portable::zstd()))?;
    Ok(batch.num_rows())
}

/// Reads a Parquet table (tests, and stages downstream of ingest).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(file).finish().map_err(|e| Error::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
