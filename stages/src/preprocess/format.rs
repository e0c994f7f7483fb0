//! The files of a `preprocess` artifact: every image of a records table as `size × size` 8-bit gray
//! pixels, row after row in raw shard files of at most 256 MiB (`pixels-00000.u8`, ...), described
//! by `images.json` and keyed by `index.parquet` (the records' `key`, `split`, `path`, in order).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::images::Gray8;
use crate::ingest::table::{Col, RecordsWriter};

/// The description of the pixels: format, size, rows, shards.
pub const META_FILE: &str = "images.json";
/// `key`, `split`, `path` of each row, in the records table's order.
pub const INDEX_FILE: &str = "index.parquet";
/// What `images.json`'s `format` says: one byte per pixel, gray, square, row-major, no header.
pub const FORMAT: &str = "gray8-square-raw";
/// The most bytes one shard file holds (whole images only).
const SHARD_BYTES: usize = 1 << 28;

/// `images.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesMeta {
    pub format: String,
    /// Width and height of every image, in pixels.
    pub size: u32,
    pub rows: usize,
    /// Images per shard file (the last one may hold fewer).
    pub rows_per_shard: usize,
    /// The shard files, in row order.
    pub shards: Vec<String>,
    /// What was done to each file (for people; the stage's key says it to the runner).
    pub steps: String,
}

impl ImagesMeta {
    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        (self.size as usize).pow(2)
    }
}

/// Images per shard at `size` px: as many as fit in 256 MiB, at least one.
pub fn rows_per_shard(size: u32) -> usize {
    (SHARD_BYTES / (size as usize).pow(2).max(1)).max(1)
}

pub fn shard_name(i: usize) -> String {
    format!("pixels-{i:05}.u8")
}

/// Appends images to shard files in a folder, then writes `images.json`.
pub struct ShardWriter {
    dir: PathBuf,
    size: u32,
    rows_per_shard: usize,
    rows: usize,
    file: Option<(PathBuf, BufWriter<File>)>,
    shards: Vec<String>,
}

impl ShardWriter {
    pub fn create(dir: &Path, size: u32) -> Self {
        Self::with_rows_per_shard(dir, size, rows_per_shard(size))
    }

    /// [`ShardWriter::create`] with another shard length (tests: shard boundaries on small data).
    pub fn with_rows_per_shard(dir: &Path, size: u32, rows_per_shard: usize) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            size,
            rows_per_shard: rows_per_shard.max(1),
            rows: 0,
            file: None,
            shards: Vec::new(),
        }
    }

    /// Appends the next row's image, which must be `size × size`.
    pub fn push(&mut self, image: &Gray8) -> Result<()> {
        assert!(
            image.width == self.size && image.height == self.size,
            "a {}x{} image in a {} px preprocess artifact",
            image.width,
            image.height,
            self.size
        );
        if self.rows.is_multiple_of(self.rows_per_shard) {
            self.close_shard()?;
            let name = shard_name(self.shards.len());
            let path = self.dir.join(&name);
            let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.shards.push(name);
            self.file = Some((path, BufWriter::with_capacity(1 << 20, f)));
        }
        let (path, f) = self.file.as_mut().expect("a shard is open");
        f.write_all(&image.data).map_err(|e| Error::io(&*path, e))?;
        self.rows += 1;
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((path, f)) = self.file.take() {
            f.into_inner()
                .map_err(|e| Error::io(&path, e.into_error()))?;
        }
        Ok(())
    }

    /// Closes the last shard and writes `images.json`.
    pub fn finish(mut self, steps: &str) -> Result<ImagesMeta> {
        self.close_shard()?;
        let meta = ImagesMeta {
            format: FORMAT.into(),
            size: self.size,
            rows: self.rows,
            rows_per_shard: self.rows_per_shard,
            shards: self.shards,
            steps: steps.into(),
        };
        let path = self.dir.join(META_FILE);
        let text = serde_json::to_string_pretty(&meta).expect("plain data serializes");
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
        Ok(meta)
    }
}

/// Rows per row group of the index: about a MiB of keys and paths, so that the writer holds one
/// group, not the table.
const INDEX_GROUP_ROWS: usize = 1 << 16;

/// Writes `index.parquet` batch by batch: the records' `key`, `split`, `path`, through the records
/// tables' writer ([`RecordsWriter`]: same types, zstd), in row groups of [`INDEX_GROUP_ROWS`].
pub struct IndexWriter(RecordsWriter);

impl IndexWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let columns = Self::columns(Vec::new(), Vec::new(), Vec::new());
        Ok(IndexWriter(RecordsWriter::create(
            path,
            &columns,
            INDEX_GROUP_ROWS,
        )?))
    }

    fn columns(keys: Vec<String>, splits: Vec<String>, paths: Vec<String>) -> Vec<Col> {
        vec![
            Col::Str("key", keys),
            Col::Str("split", splits),
            Col::Str("path", paths),
        ]
    }

    /// Appends rows (the three columns of equal length), taking the window's columns.
    pub fn write(
        &mut self,
        keys: Vec<String>,
        splits: Vec<String>,
        paths: Vec<String>,
    ) -> Result<()> {
        self.0.write(Self::columns(keys, splits, paths))
    }

    /// Finishes the file; returns its rows.
    pub fn finish(self) -> Result<usize> {
        self.0.finish()
    }
}

/// A `preprocess` artifact opened for reading rows by position (`pread`, no decoding).
pub struct PreprocessedImages {
    dir: PathBuf,
    meta: ImagesMeta,
    files: Vec<File>,
}

impl PreprocessedImages {
    /// Opens the artifact in `dir`, checking every shard's length against `images.json` and the
    /// index's row count, so that a read never runs past a file.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(META_FILE);
        let bad = |path: &Path, message: String| Error::Preprocessed {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta: ImagesMeta = serde_json::from_str(&text)
            .map_err(|e| bad(&meta_path, format!("not a preprocess description: {e}")))?;
        if meta.format != FORMAT || meta.size == 0 || meta.rows_per_shard == 0 {
            return Err(bad(
                &meta_path,
                format!(
                    "format `{}`, size {}, rows_per_shard {}: expected format `{FORMAT}` and \
                     positive sizes",
                    meta.format, meta.size, meta.rows_per_shard
                ),
            ));
        }
        let expected_shards = meta.rows.div_ceil(meta.rows_per_shard);
        if meta.shards.len() != expected_shards {
            return Err(bad(
                &meta_path,
                format!(
                    "{} shard files for {} rows of {} per shard (expected {expected_shards})",
                    meta.shards.len(),
                    meta.rows,
                    meta.rows_per_shard
                ),
            ));
        }
        let mut files = Vec::with_capacity(meta.shards.len());
        for (i, name) in meta.shards.iter().enumerate() {
            if *name != shard_name(i) {
                return Err(bad(
                    &meta_path,
                    format!("shard {i} is named `{name}`, expected `{}`", shard_name(i)),
                ));
            }
            let path = dir.join(name);
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
            let rows = meta.rows_per_shard.min(meta.rows - i * meta.rows_per_shard);
            let want = (rows * meta.image_bytes()) as u64;
            if len != want {
                return Err(bad(
                    &path,
                    format!(
                        "{len} bytes, expected {want} ({rows} images of {0}x{0})",
                        meta.size
                    ),
                ));
            }
            files.push(f);
        }
        let index = dir.join(INDEX_FILE);
        let rows = artifacts::table::row_count(&index)?;
        if rows != meta.rows {
            return Err(bad(
                &index,
                format!("{rows} rows, but {META_FILE} says {}", meta.rows),
            ));
        }
        Ok(PreprocessedImages {
            dir: dir.to_path_buf(),
            meta,
            files,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &ImagesMeta {
        &self.meta
    }

    pub fn size(&self) -> u32 {
        self.meta.size
    }

    /// The records' keys, in row order, in batches of `batch_rows` (see
    /// [`artifacts::table::StringBatches`]): the index is not held.
    pub fn keys(&self, batch_rows: usize) -> Result<artifacts::table::StringBatches> {
        let index = self.dir.join(INDEX_FILE);
        Ok(artifacts::table::StringBatches::open(
            &index,
            &["key"],
            None,
            batch_rows,
        )?)
    }

    /// The pixels of rows `rows`, image after image (`rows.len() · size²` bytes).
    pub fn read_rows(&self, rows: Range<usize>) -> Result<Vec<u8>> {
        assert!(
            rows.end <= self.meta.rows,
            "rows {rows:?} past {}",
            self.meta.rows
        );
        let per = self.meta.image_bytes();
        let mut out = vec![0u8; rows.len() * per];
        let rps = self.meta.rows_per_shard;
        let mut row = rows.start;
        while row < rows.end {
            let shard = row / rps;
            let end = rows.end.min((shard + 1) * rps);
            let dst = &mut out[(row - rows.start) * per..(end - rows.start) * per];
            let path = || self.dir.join(&self.meta.shards[shard]);
            self.files[shard]
                .read_exact_at(dst, ((row - shard * rps) * per) as u64)
                .map_err(|e| Error::io(path(), e))?;
            row = end;
        }
        Ok(out)
    }

    /// Row `row`'s image.
    pub fn image(&self, row: usize) -> Result<Gray8> {
        Ok(Gray8 {
            width: self.meta.size,
            height: self.meta.size,
            data: self.read_rows(row..row + 1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::table::{write_parquet, Col};

    /// Seven 4×4 images, image `i` filled with `i`, in shards of three rows.
    fn seven(dir: &Path) {
        let mut w = ShardWriter::with_rows_per_shard(dir, 4, 3);
        for i in 0..7u8 {
            w.push(&Gray8 {
                width: 4,
                height: 4,
                data: vec![i; 16],
            })
            .unwrap();
        }
        let meta = w.finish("test").unwrap();
        assert_eq!(meta.shards.len(), 3);
        let keys = (0..7).map(|i| format!("k{i}")).collect();
        write_parquet(&dir.join(INDEX_FILE), vec![Col::Str("key", keys)]).unwrap();
    }

    #[test]
    fn rows_are_read_back_across_shard_boundaries() {
        let tmp = tempfile::tempdir().unwrap();
        seven(tmp.path());
        let images = PreprocessedImages::open(tmp.path()).unwrap();
        let keys: Vec<Vec<Vec<String>>> = images.keys(4).unwrap().map(Result::unwrap).collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1][0][2], "k6");
        let bytes = images.read_rows(2..7).unwrap();
        let want: Vec<u8> = (2..7u8).flat_map(|i| [i; 16]).collect();
        assert_eq!(bytes, want);
        assert_eq!(images.image(5).unwrap().data, vec![5; 16]);
        assert!(images.read_rows(3..3).unwrap().is_empty());
    }

    #[test]
    fn a_shard_of_the_wrong_length_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        seven(tmp.path());
        let shard = tmp.path().join("pixels-00001.u8");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&shard)
            .unwrap();
        f.set_len(40).unwrap();
        let e = PreprocessedImages::open(tmp.path())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: 40 bytes, expected 48 (3 images of 4x4)",
                shard.display()
            )
        );
        std::fs::remove_file(&shard).unwrap();
        let e = PreprocessedImages::open(tmp.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with(&shard.display().to_string()), "{e}");
    }
}
