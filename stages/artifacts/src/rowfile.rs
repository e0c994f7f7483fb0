//! Row files: a scratch file of fixed-size rows (`row_len` float32s, then `mask_len` booleans as
//! bytes) that readers gather by row index with positioned reads, so a table larger than memory is
//! read in any order without being resident (`train-adaptor`'s epochs, `segment`'s features).
//!
//! Layout: a 40-byte header (`ADPTROWS`, format, `row_len`, `mask_len`, `rows`, little-endian u64
//! each after the magic), then the rows. The row count is written by [`RowFileWriter::finish`]
//! last, so an unfinished file is refused, as is one whose length is not the header's.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ADPTROWS";
const FORMAT: u64 = 1;
const HEADER: u64 = 40;

/// The shape of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowShape {
    /// float32s per row.
    pub row_len: usize,
    /// Booleans per row (0: no mask).
    pub mask_len: usize,
}

impl RowShape {
    pub fn bytes(&self) -> usize {
        self.row_len * 4 + self.mask_len
    }
}

/// Writes a row file, row by row, through a buffer.
pub struct RowFileWriter {
    out: BufWriter<File>,
    path: PathBuf,
    shape: RowShape,
    rows: u64,
    bytes: Vec<u8>,
}

impl RowFileWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, shape: RowShape) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut head = Vec::with_capacity(HEADER as usize);
        head.extend_from_slice(MAGIC);
        for v in [
            FORMAT,
            shape.row_len as u64,
            shape.mask_len as u64,
            u64::MAX,
        ] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&head).map_err(|e| Error::io(path, e))?;
        Ok(RowFileWriter {
            out,
            path: path.to_path_buf(),
            shape,
            rows: 0,
            bytes: Vec::with_capacity(shape.bytes()),
        })
    }

    pub fn shape(&self) -> RowShape {
        self.shape
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one row: `values` of `row_len` floats, `mask` of `mask_len` booleans (or `None`
    /// when `mask_len` is 0).
    pub fn push(&mut self, values: &[f32], mask: Option<&[bool]>) -> Result<()> {
        let mask = mask.unwrap_or(&[]);
        if values.len() != self.shape.row_len || mask.len() != self.shape.mask_len {
            return Err(Error::rows(
                &self.path,
                format!(
                    "row {}: {} values and {} mask entries, expected {} and {}",
                    self.rows,
                    values.len(),
                    mask.len(),
                    self.shape.row_len,
                    self.shape.mask_len
                ),
            ));
        }
        self.bytes.clear();
        for v in values {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.bytes.extend(mask.iter().map(|&b| b as u8));
        self.out
            .write_all(&self.bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the row count into the header and reopens the file for reading.
    pub fn finish(self) -> Result<RowFile> {
        let path = self.path;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        file.seek(SeekFrom::Start(HEADER - 8))
            .and_then(|_| file.write_all(&self.rows.to_le_bytes()))
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&path, e))?;
        drop(file);
        RowFile::open(&path)
    }
}

/// A finished row file, read by positioned reads (`pread`): any number of threads may gather
/// from one `RowFile` at once, and nothing of it is resident beyond what a read returns.
#[derive(Debug)]
pub struct RowFile {
    file: File,
    path: PathBuf,
    shape: RowShape,
    rows: usize,
}

impl RowFile {
    /// Opens a row file and checks its header against its length.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::rows(path, format!("not a complete row file: {m}"));
        let mut head = [0u8; HEADER as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|_| bad("shorter than its header".into()))?;
        if &head[..8] != MAGIC {
            return Err(bad("no ADPTROWS header".into()));
        }
        let word = |i: usize| u64::from_le_bytes(head[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        let (format, row_len, mask_len, rows) = (word(0), word(1), word(2), word(3));
        if format != FORMAT {
            return Err(bad(format!("format {format}, this reader knows {FORMAT}")));
        }
        if rows == u64::MAX {
            return Err(bad("its writer did not finish".into()));
        }
        let row_bytes = row_len
            .checked_mul(4)
            .and_then(|b| b.checked_add(mask_len))
            .ok_or_else(|| {
                bad(format!(
                    "rows of {row_len} floats and {mask_len} mask bytes"
                ))
            })?;
        let want = rows
            .checked_mul(row_bytes)
            .and_then(|b| b.checked_add(HEADER))
            .ok_or_else(|| bad(format!("{rows} rows of {row_bytes} bytes")))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != want {
            return Err(bad(format!(
                "{len} bytes, but {rows} rows of {row_bytes} bytes take {want}"
            )));
        }
        Ok(RowFile {
            file,
            path: path.to_path_buf(),
            shape: RowShape {
                row_len: row_len as usize,
                mask_len: mask_len as usize,
            },
            rows: rows as usize,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn shape(&self) -> RowShape {
        self.shape
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rows at `rows`, in that order: `rows.len() × row_len` floats appended to `values` and
    /// `rows.len() × mask_len` booleans to `mask`. One positioned read per row.
    pub fn gather(
        &self,
        rows: &[usize],
        values: &mut Vec<f32>,
        mask: &mut Vec<bool>,
    ) -> Result<()> {
        let RowShape { row_len, mask_len } = self.shape;
        let size = self.shape.bytes();
        let mut buf = vec![0u8; size];
        values.reserve(rows.len() * row_len);
        mask.reserve(rows.len() * mask_len);
        for &r in rows {
            if r >= self.rows {
                return Err(Error::rows(
                    &self.path,
                    format!("row {r} asked of a row file of {} rows", self.rows),
                ));
            }
            let at = HEADER + (r as u64) * size as u64;
            self.file
                .read_exact_at(&mut buf, at)
                .map_err(|e| Error::io(&self.path, e))?;
            values.extend(
                buf[..row_len * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            );
            mask.extend(buf[row_len * 4..].iter().map(|&b| b != 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: RowShape = RowShape {
        row_len: 3,
        mask_len: 2,
    };

    fn row(i: usize) -> ([f32; 3], [bool; 2]) {
        let f = i as f32;
        (
            [f, -f - 0.5, f * 1e-30],
            [i.is_multiple_of(2), i.is_multiple_of(3)],
        )
    }

    fn written(dir: &Path, n: usize) -> RowFile {
        let mut w = RowFileWriter::create(&dir.join("r.rows"), SHAPE).unwrap();
        for i in 0..n {
            let (v, m) = row(i);
            w.push(&v, Some(&m)).unwrap();
        }
        assert_eq!(w.rows(), n as u64);
        w.finish().unwrap()
    }

    #[test]
    fn rows_come_back_bit_for_bit_in_the_order_asked() {
        let dir = tempfile::tempdir().unwrap();
        let f = written(dir.path(), 10);
        assert_eq!((f.rows(), f.shape()), (10, SHAPE));
        let (mut v, mut m) = (Vec::new(), Vec::new());
        f.gather(&[7, 0, 7, 3], &mut v, &mut m).unwrap();
        let want: Vec<usize> = vec![7, 0, 7, 3];
        let wv: Vec<f32> = want.iter().flat_map(|&i| row(i).0).collect();
        let wm: Vec<bool> = want.iter().flat_map(|&i| row(i).1).collect();
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            wv.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(m, wm);
        // Reopened from disk: the same.
        let again = RowFile::open(f.path()).unwrap();
        let (mut v2, mut m2) = (Vec::new(), Vec::new());
        again.gather(&[7, 0, 7, 3], &mut v2, &mut m2).unwrap();
        assert_eq!((v2, m2), (v, m));
    }

    #[test]
    fn bad_rows_and_out_of_range_reads_are_refused_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RowFileWriter::create(&dir.path().join("r.rows"), SHAPE).unwrap();
        w.push(&[1.0, 2.0, 3.0], Some(&[true, false])).unwrap();
        let err = w.push(&[1.0, 2.0], Some(&[true, false])).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("row 1: 2 values and 2 mask entries, expected 3 and 2"),
            "{err}"
        );
        let err = w.push(&[1.0, 2.0, 3.0], None).unwrap_err();
        assert!(err.to_string().contains("0 mask entries"), "{err}");
        let f = w.finish().unwrap();
        assert_eq!(f.rows(), 1);
        let err = f
            .gather(&[0, 1], &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("row 1 asked of a row file of 1 rows"),
            "{err}"
        );
    }

    #[test]
    fn short_unfinished_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = written(dir.path(), 4);
        let path = f.path().to_path_buf();
        drop(f);
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.rows");
        std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
        let err = RowFile::open(&cut).unwrap_err().to_string();
        assert!(
            err.ends_with("not a complete row file: 95 bytes, but 4 rows of 14 bytes take 96"),
            "{err}"
        );
        std::fs::write(&cut, &bytes[..20]).unwrap();
        let err = RowFile::open(&cut).unwrap_err().to_string();
        assert!(err.ends_with("shorter than its header"), "{err}");
        std::fs::write(&cut, vec![0u8; 64]).unwrap();
        let err = RowFile::open(&cut).unwrap_err().to_string();
        assert!(err.ends_with("no ADPTROWS header"), "{err}");
        // A writer that never finished (killed): its row count is still unset.
        let mut w = RowFileWriter::create(&cut, SHAPE).unwrap();
        w.push(&[0.0; 3], Some(&[false; 2])).unwrap();
        drop(w);
        let err = RowFile::open(&cut).unwrap_err().to_string();
        assert!(err.ends_with("its writer did not finish"), "{err}");
    }

    #[test]
    fn concurrent_readers_each_get_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let f = written(dir.path(), 200);
        std::thread::scope(|s| {
            for t in 0..4usize {
                let f = &f;
                s.spawn(move || {
                    for round in 0..50usize {
                        let rows: Vec<usize> =
                            (0..8).map(|k| (t * 53 + round * 7 + k) % 200).collect();
                        let (mut v, mut m) = (Vec::new(), Vec::new());
                        f.gather(&rows, &mut v, &mut m).unwrap();
                        for (j, &r) in rows.iter().enumerate() {
                            let (wv, wm) = row(r);
                            assert_eq!(&v[j * 3..j * 3 + 3], &wv);
                            assert_eq!(&m[j * 2..j * 2 + 2], &wm);
                        }
                    }
                });
            }
        });
    }
}
