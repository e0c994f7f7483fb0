//! Ingest: a raw dataset folder, in its downloaded layout, to one records table (`records.parquet`,
//! one row per image) that later stages trust. Rules and fixed defects per dataset: reference
//! sections E.1–E.4 and G.12, and the README section "Records tables".

pub mod covidx;
pub mod mimic;
mod rows;
pub mod rsna;
pub mod siim;
pub mod table;
mod verify;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::synth::SynthDataset as DatasetKind;
pub use rows::format_counts;
use rows::{Bad, Output, Source};
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
    let src = Source {
        root: raw_root,
        opts,
        log,
        progress,
    };
    // Written under another name until complete: a failed run leaves no records table.
    let records = out_dir.join(RECORDS);
    let partial = out_dir.join(format!("{RECORDS}.partial"));
    let run = || -> Result<(usize, Output)> {
        let whole = |(cols, output): (Vec<Col>, Output)| {
            Ok((table::write_parquet(&partial, cols)?, output))
        };
        match kind {
            DatasetKind::MimicCxr => mimic::read(&src, &partial),
            DatasetKind::Rsna => whole(rsna::read(&src)?),
            DatasetKind::Covidx => whole(covidx::read(&src)?),
            DatasetKind::Siim => whole(siim::read(&src)?),
        }
    };
    let ran = if opts.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| Error::ThreadPool {
                threads: opts.threads,
                message: e.to_string(),
            })
            .and_then(|pool| pool.install(run))
    } else {
        run()
    };
    let (rows, output) = ran.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, &records).map_err(|e| Error::io(&records, e))?;
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
        "{kind}: {rows} records ({})",
        format_counts(&report.splits)
    ));
    let summary = out_dir.join(SUMMARY);
    std::fs::write(
        &summary,
        serde_json::to_vec_pretty(&report).expect("report serialises"),
    )
    .map_err(|e| Error::io(&summary, e))?;
    Ok(report)
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
