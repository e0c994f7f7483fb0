//! What the four dataset readers share: the context they are handed, the collection of bad rows,
//! and the way from the rows a reader found to records columns (image checks, then the `key`,
//! `path` and `split` columns every records table starts with, and the summary's counts).

use std::collections::BTreeMap;
use std::path::Path;

use super::table::{Col, RawTable};
use super::verify::{check_images, ImageCheck};
use super::IngestOptions;
use crate::error::{Error, Result};

/// What a dataset reader is handed: the raw dataset's root, the options, and where to log and
/// report progress (checked images).
pub(crate) struct Source<'a> {
    pub root: &'a Path,
    pub opts: &'a IngestOptions,
    pub log: &'a (dyn Fn(&str) + Sync),
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
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

    /// A row of `table` that cannot be read (reason `bad_row`), with its key where known.
    pub fn row(
        &mut self,
        table: &RawTable,
        line: u64,
        key: Option<&str>,
        err: Error,
    ) -> Result<()> {
        self.push(key, &table.path, line, "bad_row", err)
    }

    /// What was read from a row of `table`, or `None` once its error is recorded as a bad row
    /// (the error itself without `skip_bad`): the reader then moves on to the next row.
    pub fn check<T>(
        &mut self,
        table: &RawTable,
        line: u64,
        key: Option<&str>,
        read: Result<T>,
    ) -> Result<Option<T>> {
        match read {
            Ok(v) => Ok(Some(v)),
            Err(e) => self.row(table, line, key, e).map(|()| None),
        }
    }
}

/// The rows a reader found, in records order, before their images are checked: each row's key,
/// image (with the line that names it) and split.
pub(crate) struct Candidates {
    pub keys: Vec<String>,
    pub checks: Vec<ImageCheck>,
    pub split: Vec<&'static str>,
}

impl Candidates {
    /// Checks every row's image; a failure is a bad row (an error without `skip_bad`). Returns
    /// which rows to keep.
    pub fn verify(&self, src: &Source, bad: &mut BadRows) -> Result<Vec<bool>> {
        let results = check_images(src.root, &self.checks, src.opts.verify, src.progress);
        let mut keep = vec![true; self.checks.len()];
        for ((r, check), (key, k)) in results
            .into_iter()
            .zip(&self.checks)
            .zip(self.keys.iter().zip(&mut keep))
        {
            if let Some((reason, err)) = r {
                bad.push(Some(key), &check.csv, check.line, reason, err)?;
                *k = false;
            }
        }
        Ok(keep)
    }

    /// The kept rows' `key`, `path` and `split` columns followed by the reader's own `columns`
    /// (already filtered by `keep`), and the kept rows per split.
    pub fn into_columns(
        self,
        keep: &[bool],
        columns: Vec<Col>,
    ) -> (Vec<Col>, BTreeMap<String, usize>) {
        let split = filter(self.split, keep);
        let paths = self.checks.into_iter().map(|c| c.rel_path).collect();
        let mut cols = vec![
            Col::Str("key", filter(self.keys, keep)),
            Col::Str("path", filter(paths, keep)),
            Col::Str("split", split.iter().map(|s| s.to_string()).collect()),
        ];
        cols.extend(columns);
        (cols, tally(split))
    }
}

/// What a dataset reader hands back besides its columns.
pub(crate) struct Output {
    pub splits: BTreeMap<String, usize>,
    pub seg_splits: Option<BTreeMap<String, usize>>,
    pub dropped: BTreeMap<String, usize>,
    pub bad: Vec<Bad>,
}

impl Output {
    /// Rows per split and the bad rows; nothing dropped, no segmentation split.
    pub fn new(splits: BTreeMap<String, usize>, bad: BadRows) -> Self {
        Output {
            splits,
            seg_splits: None,
            dropped: BTreeMap::new(),
            bad: bad.rows,
        }
    }
}

/// How many times each value occurs, in sorted order.
pub(crate) fn tally<'a>(values: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in values {
        *m.entry(v.to_string()).or_default() += 1;
    }
    m
}

/// Counts as people read them, `name count, name count`: `train 140, valid 30` (the summaries'
/// split sizes and label counts).
pub fn format_counts<K: std::fmt::Display, V: std::fmt::Display>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keeps the elements whose flag is set.
pub(crate) fn filter<T>(v: Vec<T>, keep: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(keep)
        .filter_map(|(x, k)| k.then_some(x))
        .collect()
}

/// A relative path with `/` separators, as records tables store it.
pub(crate) fn rel(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RawTable {
        RawTable {
            path: "labels.csv".into(),
            headers: vec!["id".into()],
            rows: Vec::new(),
        }
    }

    #[test]
    fn check_fails_on_a_bad_row_unless_skipping_then_lists_it() {
        let t = table();
        let err = || t.field_err(4, "id", "empty id");
        let mut strict = BadRows::new(false);
        assert_eq!(strict.check(&t, 4, None, Ok(7)).unwrap(), Some(7));
        let e = strict.check::<i32>(&t, 4, None, Err(err())).unwrap_err();
        assert_eq!(e.to_string(), "labels.csv, line 4, field `id`: empty id");
        let mut lenient = BadRows::new(true);
        assert_eq!(
            lenient.check::<i32>(&t, 4, Some("k"), Err(err())).unwrap(),
            None
        );
        let bad = &lenient.rows[0];
        assert_eq!(
            (bad.key.as_deref(), bad.line, bad.reason),
            (Some("k"), 4, "bad_row")
        );
    }

    #[test]
    fn columns_start_with_key_path_and_split_of_the_kept_rows() {
        let rows = Candidates {
            keys: vec!["a".into(), "b".into(), "c".into()],
            checks: ["x/a.jpg", "x/b.jpg", "x/c.jpg"]
                .map(|p| ImageCheck::new(p.into(), Path::new("l.csv"), 2))
                .into(),
            split: vec!["train", "valid", "train"],
        };
        let (cols, splits) =
            rows.into_columns(&[true, false, true], vec![Col::I32("n", vec![1, 3])]);
        let names: Vec<&str> = cols
            .iter()
            .map(|c| match c {
                Col::Str(n, _) | Col::I32(n, _) => *n,
                _ => "?",
            })
            .collect();
        assert_eq!(names, ["key", "path", "split", "n"]);
        let Col::Str(_, paths) = &cols[1] else {
            panic!("path is a string column")
        };
        assert_eq!(paths, &["x/a.jpg", "x/c.jpg"]);
        assert_eq!(format_counts(&splits), "train 2");
    }
}
