//! Decode once (`preprocess`): a records table's images decoded and resized once, as every image
//! backbone's pipeline starts (the original's loader, [`images::load_mgca`]: 8-bit gray, longer
//! side to `size`, zero-padded square), into raw 8-bit shards ([`format`]) that `encode-image`
//! reads instead of the original JPEG/PNG/DICOM files. Streamed: chunk by chunk, on all threads.

pub mod format;

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::images::{self, Gray8};
use artifacts::table::{StringBatches, STRING_BATCH_ROWS};
pub use format::{ImagesMeta, PreprocessedImages, INDEX_FILE, META_FILE};

/// What `images.json` says was done to each file.
pub fn steps(size: u32) -> String {
    format!(
        "gray8 (DICOM: MGCA's read_from_dicom); resize_img({size}): longer side to {size} px with \
         INTER_AREA, zero-padded to {size}x{size}"
    )
}

/// How `preprocess` runs.
#[derive(Debug, Clone, Copy)]
pub struct PreprocessOptions {
    /// Width and height of the stored images.
    pub size: u32,
    /// Decoding threads.
    pub threads: usize,
}

/// Where `preprocess` reports: log lines, progress, and whether to stop.
pub trait Progress: Sync {
    fn log(&self, line: &str);
    fn progress(&self, done: u64, total: u64);
    fn cancelled(&self) -> bool;
}

/// Images decoded per chunk: enough for every thread, at most 64 MiB of pixels (bounded memory
/// whatever the dataset's size).
fn chunk_rows(size: u32, threads: usize) -> usize {
    let by_memory = (64usize << 20) / (size as usize).pow(2).max(1);
    (threads * 16).min(by_memory).max(threads).max(1)
}

/// Decodes every image of `records` (a records table; paths relative to `raw`) into `out`.
/// A row whose image is missing or corrupt fails the run, naming the row, its key and the file.
pub fn preprocess(
    records: &Path,
    raw: &Path,
    out: &Path,
    opts: &PreprocessOptions,
    rep: &dyn Progress,
) -> Result<ImagesMeta> {
    let batches = StringBatches::open(records, &["key", "split", "path"], None, STRING_BATCH_ROWS)?;
    let threads = opts.threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::ThreadPool {
            threads,
            message: e.to_string(),
        })?;
    let rows = batches.rows();
    let chunk = chunk_rows(opts.size, threads);
    let mut writer = format::ShardWriter::create(out, opts.size);
    let mut index = format::IndexWriter::create(&out.join(INDEX_FILE))?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    rep.progress(0, rows as u64);
    // The records in batches (keys, splits, paths of a few thousand rows), each decoded in chunks
    // and appended to the shards and the index: nothing is held per row of the table.
    let mut first = 0;
    for batch in batches {
        let [keys, splits, paths]: [Vec<String>; 3] =
            batch?.try_into().expect("three columns asked");
        for start in (0..keys.len()).step_by(chunk) {
            if rep.cancelled() {
                return Err(Error::Cancelled);
            }
            let end = (start + chunk).min(keys.len());
            let decoded: Vec<Result<Gray8>> = pool.install(|| {
                (start..end)
                    .into_par_iter()
                    .map(|i| {
                        images::load_mgca(&raw.join(&paths[i]), opts.size).map_err(|e| {
                            Error::RecordImage {
                                records: records.to_path_buf(),
                                row: first + i,
                                key: keys[i].clone(),
                                source: Box::new(e),
                            }
                        })
                    })
                    .collect()
            });
            for image in decoded {
                writer.push(&image?)?;
            }
            let done = first + end;
            rep.progress(done as u64, rows as u64);
            if last_log.elapsed().as_secs_f64() >= 10.0 {
                log_rate(rep, done, rows, started);
                last_log = Instant::now();
            }
        }
        first += keys.len();
        index.write(keys, splits, paths)?;
    }
    let meta = writer.finish(&steps(opts.size))?;
    index.finish()?;
    log_rate(rep, rows, rows, started);
    rep.log(&format!(
        "wrote {rows} images of {0}x{0} px in {1} shard files ({2:.1} MiB)",
        opts.size,
        meta.shards.len(),
        (rows * meta.image_bytes()) as f64 / (1 << 20) as f64
    ));
    Ok(meta)
}

fn log_rate(rep: &dyn Progress, done: usize, rows: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    rep.log(&format!(
        "decoded {done}/{rows} images in {secs:.1} s ({:.1} images/s)",
        done as f64 / secs.max(1e-9)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_by_memory_and_cover_every_thread() {
        assert_eq!(chunk_rows(256, 2), 32);
        assert_eq!(chunk_rows(4096, 2), 4);
        assert_eq!(chunk_rows(8192, 16), 16, "at least one image per thread");
        assert_eq!(format::rows_per_shard(256), 4096);
        assert_eq!(format::rows_per_shard(20000), 1);
    }
}
