//! MIMIC-CXR-JPG 2.0.0 (reference E.1, B.3): PA/AP images joined with the official split, the
//! CheXpert labels and the impression/findings sections of their study's report, captions cleaned
//! into sentences as the original does. Every row the rules remove is counted by reason.
//!
//! Streamed: the split and CheXpert CSVs become compact indexes ([`index`]), then the metadata
//! CSV is read row by row and its kept rows handled in chunks (reports read and sectioned, images
//! checked, columns written as row groups), so memory grows with the indexes only.

mod index;
mod reports;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::rows::{filter, BadRows, Candidates, Output, Source};
use super::table::{find_csv, Col, RawTable, RecordsWriter, GROUP_ROWS};
use super::verify::ImageCheck;
use crate::error::{Error, Result};
use index::{label_columns, study_of, Labels, SplitIndex};
pub use reports::{caption, sections};
use reports::{report, Report};

pub const METADATA: &str = "mimic-cxr-2.0.0-metadata.csv";
pub const SPLIT: &str = "mimic-cxr-2.0.0-split.csv";
pub const CHEXPERT: &str = "mimic-cxr-2.0.0-chexpert.csv";

/// Kept metadata rows per chunk: the rows whose reports, image checks and columns are held at once.
pub const CHUNK_ROWS: usize = 4096;

/// A metadata row that passed the view and split rules.
struct Row {
    dicom_id: String,
    subject: i64,
    study: i64,
    view: &'static str,
    official: &'static str,
    line: u64,
}

fn subject_dir(subject: i64) -> String {
    let s = subject.to_string();
    format!("files/p{}/p{s}", &s[..2.min(s.len())])
}

/// Reads the dataset and writes its records table to `records`; returns its row count and the
/// summary's counts.
pub(crate) fn read(src: &Source, records: &Path) -> Result<(usize, Output)> {
    read_in_chunks(src, records, CHUNK_ROWS, GROUP_ROWS)
}

/// [`read`] in chunks of `chunk_rows` kept metadata rows, written in row groups of `group_rows`.
/// What it finds does not depend on either: counts, bad rows and their order, and the first error
/// are those of reading every file whole (CSV errors, then missing columns, then the split's,
/// CheXpert's and metadata's bad rows, then bad images).
pub(crate) fn read_in_chunks(
    src: &Source,
    records: &Path,
    chunk_rows: usize,
    group_rows: usize,
) -> Result<(usize, Output)> {
    let root = src.root;
    // A malformed CSV fails before any row of the three is used.
    let meta_path = find_csv(root, METADATA)?;
    let total = RawTable::check(&meta_path, b',', true)?;
    let split_path = find_csv(root, SPLIT)?;
    let split_count = RawTable::check(&split_path, b',', true)? as usize;
    let chex_path = find_csv(root, CHEXPERT)?;
    let chex_count = RawTable::check(&chex_path, b',', true)? as usize;
    let (meta, meta_rows) = RawTable::open(&meta_path, b',', true)?;
    let (split, split_rows) = RawTable::open(&split_path, b',', true)?;
    let (chex, chex_rows) = RawTable::open(&chex_path, b',', true)?;
    let (m_dicom, m_ids, m_view) = (
        meta.col("dicom_id")?,
        [meta.col("subject_id")?, meta.col("study_id")?],
        meta.col("ViewPosition")?,
    );
    let s_cols = [
        &split.col("dicom_id")?,
        &split.col("subject_id")?,
        &split.col("study_id")?,
        &split.col("split")?,
    ];
    let c_ids = [chex.col("subject_id")?, chex.col("study_id")?];
    let label_cols = label_columns(&chex, [&c_ids[0], &c_ids[1]])?;
    let mut bad = BadRows::new(src.opts.skip_bad);
    let official = SplitIndex::read(&split, (split_rows, split_count), s_cols, &mut bad)?;
    let labels = Labels::read(
        &chex,
        (chex_rows, chex_count),
        [&c_ids[0], &c_ids[1]],
        &label_cols,
        &mut bad,
    )?;
    let mut chunks = Chunks {
        src,
        meta: meta.path.clone(),
        labels,
        label_names: label_cols.into_iter().map(|c| c.name).collect(),
        writer: None,
        images: BadRows::new(src.opts.skip_bad),
        first_bad_image: None,
        dropped: BTreeMap::new(),
        splits: BTreeMap::new(),
        usable: 0,
        done: 0,
        total,
    };
    let (template, _) = chunks.columns(chunks.candidates(&[]), &[], Vec::new(), &HashMap::new());
    chunks.writer = Some(RecordsWriter::create(records, &template, group_rows)?);

    let mut rows: Vec<Row> = Vec::with_capacity(chunk_rows.min(1 << 16));
    let mut seen = 0;
    for row in meta_rows {
        let (line, rec) = row?;
        seen += 1;
        let id = m_dicom.text(&rec);
        let ids = study_of(&meta, &rec, line, [&m_ids[0], &m_ids[1]]);
        let Some((subject, study)) = bad.check(&meta, line, Some(id), ids)? else {
            continue;
        };
        let view = match m_view.text(&rec) {
            "PA" => "PA",
            "AP" => "AP",
            _ => {
                chunks.drop("view_not_pa_ap");
                continue;
            }
        };
        match official.get(id) {
            Some((s, t, official)) if s == subject && t == study => rows.push(Row {
                dicom_id: id.to_string(),
                subject,
                study,
                view,
                official,
                line,
            }),
            _ => chunks.drop("not_in_split_csv"),
        }
        if rows.len() >= chunk_rows.max(1) {
            chunks.write(std::mem::take(&mut rows), seen)?;
            seen = 0;
        }
    }
    chunks.write(rows, seen)?;
    if let Some(e) = chunks.first_bad_image {
        return Err(e);
    }
    (src.log)(&format!(
        "{}: {total} rows; {} PA/AP images with a usable report",
        meta.path.display(),
        chunks.usable,
    ));
    let rows = chunks.writer.take().expect("created above").finish()?;
    bad.rows.append(&mut chunks.images.rows);
    Ok((
        rows,
        Output {
            dropped: chunks.dropped,
            ..Output::new(chunks.splits, bad)
        },
    ))
}

/// The chunks of kept metadata rows on their way to the records table, and what they add up to.
struct Chunks<'a> {
    src: &'a Source<'a>,
    /// The metadata CSV, which names each row's image.
    meta: PathBuf,
    labels: Labels,
    label_names: Vec<String>,
    writer: Option<RecordsWriter>,
    /// Bad images, listed after every bad CSV row (as when the metadata was read whole first).
    images: BadRows,
    /// Without `skip_bad`: the first bad image, the error unless a metadata row after it is bad.
    first_bad_image: Option<Error>,
    dropped: BTreeMap<String, usize>,
    splits: BTreeMap<String, usize>,
    /// Rows with a usable report (before image checks).
    usable: usize,
    /// Metadata rows handled, for progress (of `total`, every image of the metadata).
    done: u64,
    total: u64,
}

type Reports = HashMap<(i64, i64), Option<Report>>;

impl Chunks<'_> {
    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// Reads the chunk's reports, drops rows without a usable one, checks the rest's images and
    /// writes the kept rows. `seen`: the metadata rows the chunk stands for (progress).
    fn write(&mut self, rows: Vec<Row>, seen: u64) -> Result<()> {
        let (src, base, total) = (self.src, self.done, self.total);
        self.done += seen;
        if self.first_bad_image.is_some() {
            return Ok(());
        }
        // One report per study, read and sectioned in parallel.
        let mut studies: Vec<(i64, i64)> = rows.iter().map(|r| (r.subject, r.study)).collect();
        studies.sort_unstable();
        studies.dedup();
        let reports: Reports = studies
            .par_iter()
            .map(|&(subject, study)| {
                let path = (src.root).join(format!("{}/s{study}.txt", subject_dir(subject)));
                ((subject, study), std::fs::read(&path).ok().map(report))
            })
            .collect();
        let mut kept = Vec::with_capacity(rows.len());
        for r in rows {
            match &reports[&(r.subject, r.study)] {
                None => self.drop("report_missing"),
                Some(rep) if rep.impression.is_none() && rep.findings.is_none() => {
                    self.drop("no_impression_or_findings")
                }
                Some(rep) if rep.tokens < 3 => self.drop("caption_under_3_tokens"),
                Some(_) => kept.push(r),
            }
        }
        self.usable += kept.len();
        let progress = |d: u64, _: u64| (src.progress)(base + d, total);
        let candidates = self.candidates(&kept);
        let checked = candidates.verify(
            &Source {
                progress: &progress,
                ..*src
            },
            &mut self.images,
        );
        let keep = match checked {
            Ok(keep) => keep,
            Err(e) => {
                self.first_bad_image = Some(e);
                return Ok(());
            }
        };
        (src.progress)(self.done, total);
        let (cols, splits) = self.columns(candidates, &keep, kept, &reports);
        for (s, n) in splits {
            *self.splits.entry(s).or_default() += n;
        }
        self.writer.as_mut().expect("created").write(cols)
    }

    /// The rows' keys, images and splits: the original trains on the official `train` split and
    /// validates on the rest.
    fn candidates(&self, rows: &[Row]) -> Candidates {
        let image = |r: &Row| format!("{}/s{}/{}.jpg", subject_dir(r.subject), r.study, r.dicom_id);
        Candidates {
            checks: (rows.iter())
                .map(|r| ImageCheck::new(image(r), &self.meta, r.line))
                .collect(),
            keys: rows.iter().map(|r| r.dicom_id.clone()).collect(),
            split: (rows.iter())
                .map(|r| match r.official {
                    "train" => "train",
                    _ => "valid",
                })
                .collect(),
        }
    }

    /// The records columns of the rows `keep` keeps, and their count per split.
    fn columns(
        &self,
        candidates: Candidates,
        keep: &[bool],
        rows: Vec<Row>,
        reports: &Reports,
    ) -> (Vec<Col>, BTreeMap<String, usize>) {
        let rows = filter(rows, keep);
        let rep = |r: &Row| {
            reports[&(r.subject, r.study)]
                .as_ref()
                .expect("kept rows have reports")
        };
        let strs = |f: &dyn Fn(&Row) -> String| rows.iter().map(f).collect();
        let mut cols = vec![
            Col::Str("official_split", strs(&|r| r.official.to_string())),
            Col::I64("subject_id", rows.iter().map(|r| r.subject).collect()),
            Col::I64("study_id", rows.iter().map(|r| r.study).collect()),
            Col::Str("view", strs(&|r| r.view.to_string())),
            Col::OptStr(
                "impression",
                rows.iter().map(|r| rep(r).impression.clone()).collect(),
            ),
            Col::OptStr(
                "findings",
                rows.iter().map(|r| rep(r).findings.clone()).collect(),
            ),
            Col::Str("caption", strs(&|r| rep(r).caption.clone())),
            Col::I32(
                "caption_tokens",
                rows.iter().map(|r| rep(r).tokens as i32).collect(),
            ),
            Col::Str("report", strs(&|r| rep(r).text.clone())),
        ];
        for (j, name) in self.label_names.iter().enumerate() {
            cols.push(Col::OptF32(
                name.clone(),
                (rows.iter())
                    .map(|r| self.labels.get((r.subject, r.study), j))
                    .collect(),
            ));
        }
        candidates.into_columns(keep, cols)
    }
}

#[cfg(test)]
mod tests;
