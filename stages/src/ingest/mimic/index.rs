//! The compact join indexes of MIMIC-CXR ingest, read from the split and CheXpert CSVs before the
//! metadata is streamed: all ingest holds per image while it runs (the reports, images and columns
//! are held one chunk at a time).

use std::collections::HashMap;

use super::super::rows::BadRows;
use super::super::table::{RawColumn, RawRows, RawTable};
use crate::error::Result;

/// The official splits, in the order of their code in [`SplitIndex`].
pub(super) const SPLITS: [&str; 3] = ["train", "validate", "test"];

/// `dicom_id` → `(subject_id, study_id, split)` of the split CSV (the inner join on all three):
/// the ids back to back in one string, entries sorted by id. 32 bytes per row plus the id (44
/// bytes in MIMIC-CXR): about 76 bytes per image.
pub(super) struct SplitIndex {
    ids: String,
    entries: Vec<SplitEntry>,
}

#[derive(Clone, Copy)]
struct SplitEntry {
    start: usize,
    subject: i64,
    study: i64,
    len: u32,
    /// Index into [`SPLITS`].
    split: u8,
}

impl SplitIndex {
    /// Reads the split CSV's `rows` (`count` of them); a bad row is recorded (or the error, without
    /// `skip_bad`). A `dicom_id` listed twice keeps its last row.
    pub fn read(
        t: &RawTable,
        (rows, count): (RawRows, usize),
        [dicom, ids, study_ids, split]: [&RawColumn; 4],
        bad: &mut BadRows,
    ) -> Result<Self> {
        let mut index = SplitIndex {
            ids: String::new(),
            entries: Vec::with_capacity(count),
        };
        for row in rows {
            let (line, rec) = row?;
            let id = dicom.text(&rec);
            let parsed = study_of(t, &rec, line, [ids, study_ids]);
            let Some((subject, study)) = bad.check(t, line, Some(id), parsed)? else {
                continue;
            };
            let s = split.text(&rec);
            let Some(code) = SPLITS.iter().position(|x| *x == s) else {
                let e = t.field_err(
                    line,
                    "split",
                    format!("`{s}` is not train, validate or test"),
                );
                bad.row(t, line, Some(id), e)?;
                continue;
            };
            index.entries.push(SplitEntry {
                start: index.ids.len(),
                subject,
                study,
                len: id.len() as u32,
                split: code as u8,
            });
            index.ids.push_str(id);
        }
        let ids = &index.ids;
        let id = |e: &SplitEntry| &ids[e.start..e.start + e.len as usize];
        // Stable: equal ids stay in file order, and the last of each run is kept.
        index.entries.sort_by(|a, b| id(a).cmp(id(b)));
        index.entries.dedup_by(|later, earlier| {
            let same = id(later) == id(earlier);
            if same {
                *earlier = *later;
            }
            same
        });
        index.entries.shrink_to_fit();
        index.ids.shrink_to_fit();
        Ok(index)
    }

    /// The row of `dicom_id`: `(subject_id, study_id, split)`.
    pub fn get(&self, dicom_id: &str) -> Option<(i64, i64, &'static str)> {
        let id = |e: &SplitEntry| &self.ids[e.start..e.start + e.len as usize];
        let i = (self.entries)
            .binary_search_by(|e| id(e).cmp(dicom_id))
            .ok()?;
        let e = &self.entries[i];
        Some((e.subject, e.study, SPLITS[e.split as usize]))
    }
}

/// A blank label: a NaN that parsing never yields (a CSV's `nan` parses to the quiet NaN
/// `0x7fc00000` and stays a value, as it was when labels were `Option<f32>`).
const BLANK: u32 = 0x7fa0_0001;

/// CheXpert labels per `(subject_id, study_id)`: one `f32` per label column back to back (blank as
/// [`BLANK`]), and where each study's start. 4 bytes per label plus about 40 of hash table per
/// study: about 100 bytes per study with the 14 CheXpert labels.
pub(super) struct Labels {
    columns: usize,
    index: HashMap<(i64, i64), u32>,
    values: Vec<f32>,
}

impl Labels {
    /// Reads the CheXpert CSV's `rows` (`count` of them): 1.0, 0.0, -1.0 or blank in each label
    /// column; a bad row is recorded (or the error, without `skip_bad`). A study listed twice keeps
    /// its last row.
    pub fn read(
        t: &RawTable,
        (rows, count): (RawRows, usize),
        ids: [&RawColumn; 2],
        columns: &[RawColumn],
        bad: &mut BadRows,
    ) -> Result<Self> {
        let mut labels = Labels {
            columns: columns.len(),
            index: HashMap::with_capacity(count),
            values: Vec::with_capacity(count * columns.len()),
        };
        let mut vals = Vec::with_capacity(columns.len());
        for row in rows {
            let (line, rec) = row?;
            vals.clear();
            let parsed = (|| {
                let key = study_of(t, &rec, line, ids)?;
                for c in columns {
                    vals.push(match c.text(&rec) {
                        "" => f32::from_bits(BLANK),
                        _ => t.parse::<f32>(&rec, line, c, "a number")?,
                    });
                }
                Ok(key)
            })();
            let Some(key) = bad.check(t, line, None, parsed)? else {
                continue;
            };
            let next = (labels.values.len() / columns.len().max(1)) as u32;
            let at = *labels.index.entry(key).or_insert(next) as usize * columns.len();
            if at == labels.values.len() {
                labels.values.extend_from_slice(&vals);
            } else {
                labels.values[at..at + columns.len()].copy_from_slice(&vals);
            }
        }
        labels.values.shrink_to_fit();
        labels.index.shrink_to_fit();
        Ok(labels)
    }

    /// Label column `j` of a study: `None` when blank or when the study has no labels.
    pub fn get(&self, study: (i64, i64), j: usize) -> Option<f32> {
        let at = *self.index.get(&study)? as usize * self.columns;
        let v = self.values[at + j];
        (v.to_bits() != BLANK).then_some(v)
    }
}

/// A row's `(subject_id, study_id)`, both integers in every MIMIC CSV.
pub(super) fn study_of(
    t: &RawTable,
    rec: &csv::StringRecord,
    line: u64,
    [subject, study]: [&RawColumn; 2],
) -> Result<(i64, i64)> {
    Ok((
        t.parse(rec, line, subject, "an integer id")?,
        t.parse(rec, line, study, "an integer id")?,
    ))
}

/// The CheXpert label columns: every column but the two ids, under its trimmed header. Each
/// becomes a records column, so it must be a distinct, non-empty name that no fixed column of the
/// records table already has.
pub(super) fn label_columns(chex: &RawTable, ids: [&RawColumn; 2]) -> Result<Vec<RawColumn>> {
    const FIXED: &[&str] = &[
        "key",
        "path",
        "split",
        "official_split",
        "subject_id",
        "study_id",
        "view",
        "impression",
        "findings",
        "caption",
        "caption_tokens",
        "report",
    ];
    let label_cols: Vec<RawColumn> = (chex.headers.iter().enumerate())
        .filter(|(i, _)| ids.iter().all(|c| c.index != *i))
        .map(|(index, h)| RawColumn {
            index,
            name: h.trim().to_string(),
        })
        .collect();
    for (k, RawColumn { name, .. }) in label_cols.iter().enumerate() {
        let clash = if name.is_empty() {
            Some("an empty column name".to_string())
        } else if FIXED.contains(&name.as_str()) {
            Some(format!("`{name}` is a column ingest writes itself"))
        } else if label_cols[..k].iter().any(|c| c.name == *name) {
            Some(format!("`{name}` is the name of two columns"))
        } else {
            None
        };
        if let Some(m) = clash {
            return Err(chex.field_err(1, name, format!("label column {}: {m}", k + 1)));
        }
    }
    Ok(label_cols)
}
