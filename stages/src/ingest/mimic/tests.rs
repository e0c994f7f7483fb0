//! Streaming MIMIC-CXR ingest: chunks and row groups change the layout of the records table, never
//! its rows, counts, bad rows or first error.

use std::io::Read;
use std::sync::Mutex;

use polars::prelude::DataFrame;

use super::*;
use crate::ingest::table::read_parquet;
use crate::ingest::{IngestOptions, Verify};
use crate::synth::{self, SynthDataset};

struct Ran {
    rows: usize,
    output: Output,
    table: DataFrame,
    progress: Vec<(u64, u64)>,
}

fn run(raw: &Path, opts: &IngestOptions, chunk: usize, group: usize) -> Result<Ran> {
    let out = tempfile::tempdir().unwrap();
    let records = out.path().join("records.parquet");
    let progress = Mutex::new(Vec::new());
    let report = |d: u64, t: u64| progress.lock().unwrap().push((d, t));
    let src = Source {
        root: raw,
        opts,
        log: &|_| {},
        progress: &report,
    };
    let (rows, output) = read_in_chunks(&src, &records, chunk, group)?;
    Ok(Ran {
        rows,
        output,
        table: read_parquet(&records).unwrap(),
        progress: progress.into_inner().unwrap(),
    })
}

/// A synthetic MIMIC-CXR with its metadata CSV unzipped (so that tests can edit it).
fn dataset(n: usize) -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    synth::generate_with_size(SynthDataset::MimicCxr, &raw, n, 3, 32).unwrap();
    let gz = raw.join(format!("{METADATA}.gz"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    std::fs::remove_file(gz).unwrap();
    (tmp, raw, text)
}

/// Writes the metadata CSV with the ids of its `from_end`th row from the end made non-numeric;
/// returns its line count.
fn spoil_ids(raw: &Path, text: &str, from_end: usize) -> usize {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    lines[n - from_end] = lines[n - from_end].replacen(',', ",x", 2);
    std::fs::write(raw.join(METADATA), lines.join("\n") + "\n").unwrap();
    n
}

fn cell(table: &DataFrame, column: &str, row: usize) -> String {
    let c = table.column(column).unwrap().str().unwrap();
    c.get(row).unwrap().to_string()
}

fn bad_rows(o: &Output) -> Vec<String> {
    (o.bad.iter())
        .map(|b| {
            format!(
                "{:?} {} {} {} {}",
                b.key, b.file, b.line, b.reason, b.message
            )
        })
        .collect()
}

#[test]
fn chunks_and_row_groups_change_no_record_count_or_bad_row() {
    let (_t, raw, text) = dataset(40);
    // A bad metadata row near the end and a missing image near the start: bad rows are listed
    // CSV rows first, images after, however the rows are chunked.
    let n = spoil_ids(&raw, &text, 2);
    let opts = IngestOptions {
        skip_bad: true,
        verify: Verify::Exists,
        ..Default::default()
    };
    let first = run(&raw, &opts, usize::MAX, usize::MAX).unwrap();
    let (key, path) = (cell(&first.table, "key", 1), cell(&first.table, "path", 1));
    std::fs::remove_file(raw.join(path)).unwrap();

    let whole = run(&raw, &opts, usize::MAX, usize::MAX).unwrap();
    let chunked = run(&raw, &opts, 3, 4).unwrap();
    assert_eq!(whole.rows, first.rows - 1);
    assert_eq!(chunked.rows, whole.rows);
    assert!(whole.table.equals_missing(&chunked.table));
    assert_eq!(whole.table.schema(), chunked.table.schema());
    assert_eq!(whole.output.splits, chunked.output.splits);
    assert_eq!(whole.output.dropped, chunked.output.dropped);
    let bad = bad_rows(&whole.output);
    assert_eq!(bad, bad_rows(&chunked.output));
    assert_eq!(bad.len(), 2);
    assert!(bad[0].contains("bad_row") && bad[1].contains(&format!("Some(\"{key}\")")));
    assert!(bad[1].contains("missing_image"), "{bad:?}");
    // Progress counts every metadata row, in order, up to the total.
    let total = (n - 1) as u64;
    assert_eq!(chunked.progress.last(), Some(&(total, total)));
    assert!(chunked.progress.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn a_bad_metadata_row_after_a_bad_image_is_the_error_as_when_read_whole() {
    let (_t, raw, text) = dataset(12);
    let opts = IngestOptions {
        verify: Verify::Exists,
        ..Default::default()
    };
    std::fs::write(raw.join(METADATA), &text).unwrap();
    let ok = run(&raw, &opts, usize::MAX, usize::MAX).unwrap();
    let path = cell(&ok.table, "path", 0);
    std::fs::remove_file(raw.join(&path)).unwrap();
    let image_error = run(&raw, &opts, 2, 2).err().unwrap().to_string();
    assert!(image_error.contains(&path), "{image_error}");
    assert_eq!(
        image_error,
        run(&raw, &opts, usize::MAX, 8).err().unwrap().to_string()
    );

    let n = spoil_ids(&raw, &text, 1);
    let row_error = run(&raw, &opts, 2, 2).err().unwrap().to_string();
    assert!(
        row_error.contains(&format!("line {n}, field `subject_id`")),
        "{row_error}"
    );
    assert_eq!(
        row_error,
        run(&raw, &opts, usize::MAX, 8).err().unwrap().to_string()
    );
}
