//! Ingest: a raw dataset folder, in its downloaded layout, to one records table (`records.parquet`,
//! one row per image) that later stages trust. Rules and fixed defects per dataset: reference
//! sections E.1–E.4 and G.12, and the README section "Records tables".

pub mod covidx;
pub mod mimic;
pub mod rsna;
pub mod siim;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::images::{self, ImageFormat};
pub use crate::synth::SynthDataset as DatasetKind;
use table::Col;

/// File names of an ingest artifact.
pub const RECORDS: &str = "records.parquet";
pub const SKIPPED: &str = "skipped.parquet";
pub const SUMMARY: &str = "summary.json";

/// How thoroughly ingest checks each image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// The file exists (SIIM also reads the DICOM header for the mask size).
    Exists,
    /// The file decodes completely (catches truncated and corrupt files at ingest, with the row).
    Decode,
}

impl Verify {
    pub const NAMES: &'static [&'static str] = &["decode", "exists"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exists" => Some(Verify::Exists),
            "decode" => Some(Verify::Decode),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Seed of the random splits (RSNA, COVIDx, SIIM); 0 reproduces the original's
    /// `random_state=0`. MIMIC-CXR uses the official split and ignores it.
    pub split_seed: u32,
    /// Write bad rows to `skipped.parquet` instead of failing.
    pub skip_bad: bool,
    pub verify: Verify,
    /// Seed of SIIM's balanced training subset (the original seeds numpy with 42).
    pub balance_seed: u32,
    /// Worker threads for image checks; 0 = rayon's default.
    pub threads: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            split_seed: 0,
            skip_bad: false,
            verify: Verify::Decode,
            balance_seed: 42,
            threads: 0,
        }
    }
}

/// What ingest wrote; also `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngestReport {
    pub dataset: DatasetKind,
    /// Rows in `records.parquet`.
    pub rows: usize,
    /// Rows per value of `split`.
    pub splits: BTreeMap<String, usize>,
    /// RSNA only: rows per value of `seg_split`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seg_splits: Option<BTreeMap<String, usize>>,
    /// Rows (images) the dataset's rules removed, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Bad rows written to `skipped.parquet` (only with `skip_bad`).
    pub skipped: usize,
    pub verify: Verify,
    pub split_seed: u32,
}

/// A bad row: what `skipped.parquet` holds.
#[derive(Clone, Debug)]
pub(crate) struct Bad {
    pub key: Option<String>,
    pub file: String,
    pub line: u64,
    pub reason: &'static str,
    pub message: String,
}

/// Collects bad rows: fails on the first unless `skip_bad`.
pub(crate) struct BadRows {
    skip: bool,
    pub rows: Vec<Bad>,
}

impl BadRows {
    pub fn new(skip: bool) -> Self {
        BadRows {
            skip,
            rows: Vec::new(),
        }
    }

    /// Records `err` for the row, or returns it when not skipping.
    pub fn push(
        &mut self,
        key: Option<&str>,
        file: &Path,
        line: u64,
        reason: &'static str,
        err: Error,
    ) -> Result<()> {
        if !self.skip {
            return Err(err);
        }
        self.rows.push(Bad {
            key: key.map(str::to_string),
            file: file.display().to_string(),
            line,
            reason,
            message: err.to_string(),
        });
        Ok(())
    }
}

/// One image a records row points at, and where the row came from.
pub(crate) struct ImageCheck {
    pub rel_path: String,
    pub csv: PathBuf,
    pub line: u64,
    /// SIIM: RLE strings (with their lines) that must fit the image.
    pub rles: Vec<(u64, String)>,
}

/// Checks every image (in parallel); `None` where fine. Reports progress as images complete.
pub(crate) fn check_images(
    root: &Path,
    checks: &[ImageCheck],
    verify: Verify,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Vec<Option<(&'static str, Error)>> {
    let total = checks.len() as u64;
    let done = AtomicU64::new(0);
    progress(0, total);
    checks
        .par_iter()
        .map(|c| {
            let r = check_one(root, c, verify);
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if d.is_multiple_of(64) || d == total {
                progress(d, total);
            }
            r.err()
        })
        .collect()
}

fn check_one(root: &Path, c: &ImageCheck, verify: Verify) -> Result<(), (&'static str, Error)> {
    let path = root.join(&c.rel_path);
    if !path.is_file() {
        return Err((
            "missing_image",
            Error::MissingImage {
                path: c.csv.clone(),
                line: c.line,
                image: path,
            },
        ));
    }
    let bad = |e: Error| {
        let message = match e {
            Error::Decode { message, .. } => message,
            Error::NoPixelData { .. } => "DICOM file has no pixel data".to_string(),
            other => other.to_string(),
        };
        (
            "bad_image",
            Error::BadImage {
                path: c.csv.clone(),
                line: c.line,
                image: path.clone(),
                message,
            },
        )
    };
    let dims = match verify {
        Verify::Decode => {
            let img = images::decode(&path).map_err(bad)?;
            Some((img.width(), img.height()))
        }
        Verify::Exists
            if !c.rles.is_empty() && ImageFormat::from_path(&path) == Some(ImageFormat::Dicom) =>
        {
            Some(dicom_dims(&path).map_err(bad)?)
        }
        Verify::Exists => None,
    };
    if let Some((w, h)) = dims {
        for (line, rle) in &c.rles {
            let context = format!("{}, line {line}, field `EncodedPixels`", c.csv.display());
            crate::masks::parse_rle(rle, w, h, &context).map_err(|e| ("bad_rle", e))?;
        }
    }
    Ok(())
}

/// Rows × columns from a DICOM header, without decoding the pixels.
fn dicom_dims(path: &Path) -> Result<(u32, u32)> {
    use dicom_dictionary_std::tags;
    let err = |m: String| Error::Decode {
        path: path.to_path_buf(),
        message: m,
    };
    // The header's lengths, checked in the first MiB (where the elements before the pixel data
    // are), against the whole file's size.
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 1 << 20), &mut head)
        .map_err(|e| Error::io(path, e))?;
    images::check_dicom_lengths(path, &head, file_len)?;
    let obj = images::without_panics(path, "DICOM", || {
        dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| err(e.to_string()))
    })?;
    let get = |tag| -> Result<u32> {
        obj.element(tag)
            .map_err(|e| err(e.to_string()))?
            .to_int::<u32>()
            .map_err(|e| err(e.to_string()))
    };
    Ok((get(tags::COLUMNS)?, get(tags::ROWS)?))
}

/// Runs [`ingest_with_progress`] without progress reports.
pub fn ingest(
    kind: DatasetKind,
    raw_root: &Path,
    out_dir: &Path,
    opts: &IngestOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<IngestReport> {
    ingest_with_progress(kind, raw_root, out_dir, opts, log, &|_, _| {})
}

/// Reads the raw dataset under `raw_root` and writes `records.parquet`, `summary.json` and, with
/// `skip_bad` and bad rows, `skipped.parquet` into `out_dir`. `progress(done, total)` counts
/// checked images.
pub fn ingest_with_progress(
    kind: DatasetKind,
    raw_root: &Path,
    out_dir: &Path,
    opts: &IngestOptions,
    log: &(dyn Fn(&str) + Sync),
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<IngestReport> {
    if !raw_root.is_dir() {
        return Err(Error::Layout {
            path: raw_root.to_path_buf(),
            message: "dataset folder not found".into(),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let run = || -> Result<(Vec<Col>, Output)> {
        match kind {
            DatasetKind::MimicCxr => mimic::ingest(raw_root, opts, log, progress),
            DatasetKind::Rsna => rsna::ingest(raw_root, opts, log, progress),
            DatasetKind::Covidx => covidx::ingest(raw_root, opts, log, progress),
            DatasetKind::Siim => siim::ingest(raw_root, opts, log, progress),
        }
    };
    let (cols, output) = if opts.threads > 0 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| Error::ThreadPool {
                threads: opts.threads,
                message: e.to_string(),
            })?;
        pool.install(run)?
    } else {
        run()?
    };
    let rows = table::write_parquet(&out_dir.join(RECORDS), cols)?;
    let skipped = output.bad.len();
    if skipped > 0 {
        write_skipped(&out_dir.join(SKIPPED), &output.bad)?;
        log(&format!("skipped {skipped} bad rows, listed in {SKIPPED}"));
    }
    let report = IngestReport {
        dataset: kind,
        rows,
        splits: output.splits,
        seg_splits: output.seg_splits,
        dropped: output.dropped,
        skipped,
        verify: opts.verify,
        split_seed: opts.split_seed,
    };
    for (reason, n) in &report.dropped {
        log(&format!("dropped {n} rows: {reason}"));
    }
    log(&format!(
        "{}: {rows} records ({})",
        kind,
        report
            .splits
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let summary = out_dir.join(SUMMARY);
    std::fs::write(
        &summary,
        serde_json::to_vec_pretty(&report).expect("report serialises"),
    )
    .map_err(|e| Error::io(&summary, e))?;
    Ok(report)
}

/// What a dataset module hands back besides its columns.
pub(crate) struct Output {
    pub splits: BTreeMap<String, usize>,
    pub seg_splits: Option<BTreeMap<String, usize>>,
    pub dropped: BTreeMap<String, usize>,
    pub bad: Vec<Bad>,
}

pub(crate) fn tally<'a>(values: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in values {
        *m.entry(v.to_string()).or_default() += 1;
    }
    m
}

/// Runs the image checks and folds failures into `bad`; returns which items to keep.
pub(crate) fn verify_items(
    root: &Path,
    checks: &[ImageCheck],
    keys: &[String],
    opts: &IngestOptions,
    bad: &mut BadRows,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<bool>> {
    let results = check_images(root, checks, opts.verify, progress);
    let mut keep = vec![true; checks.len()];
    for (i, r) in results.into_iter().enumerate() {
        if let Some((reason, err)) = r {
            bad.push(Some(&keys[i]), &checks[i].csv, checks[i].line, reason, err)?;
            keep[i] = false;
        }
    }
    Ok(keep)
}

fn write_skipped(path: &Path, bad: &[Bad]) -> Result<()> {
    table::write_parquet(
        path,
        vec![
            Col::OptStr("key", bad.iter().map(|b| b.key.clone()).collect()),
            Col::Str("file", bad.iter().map(|b| b.file.clone()).collect()),
            Col::I64("line", bad.iter().map(|b| b.line as i64).collect()),
            Col::Str("reason", bad.iter().map(|b| b.reason.to_string()).collect()),
            Col::Str("error", bad.iter().map(|b| b.message.clone()).collect()),
        ],
    )?;
    Ok(())
}

/// Keeps the elements whose flag is set.
pub(crate) fn filter<T>(v: Vec<T>, keep: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(keep)
        .filter_map(|(x, k)| k.then_some(x))
        .collect()
}

/// Resolves the dataset kind of an input: a manifest dataset names it; a `synth` artifact carries
/// it in its marker file.
pub fn resolve_kind(input_kind: &str, root: &Path) -> Result<DatasetKind> {
    if input_kind == "synth" {
        return Ok(crate::synth::read_marker(root)?.dataset);
    }
    DatasetKind::parse(input_kind).ok_or_else(|| Error::UnknownDataset {
        kind: input_kind.to_string(),
    })
}

pub(crate) fn rel(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}
