//! COVIDx CXR (reference E.4): space-separated list files without a header, `train/` and `test/`
//! image folders. The training list is split 80/20 by patient (the original split rows, so one
//! patient's images could land in both train and valid).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::rows::{filter, BadRows, Candidates, Output, Source};
use super::table::{Col, RawTable};
use super::verify::ImageCheck;
use crate::error::{Error, Result};
use crate::split::{train_test_split, TestSize};

/// Finds the one `{prefix}_COVIDx*.txt` list in `root` (9A in the original; other releases differ).
fn find_list(root: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&format!("{prefix}_COVIDx")) && name.ends_with(".txt")
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Layout {
            path: root.join(format!("{prefix}_COVIDx9A.txt")),
            message: format!("no {prefix}_COVIDx*.txt list file found"),
        }),
        _ => Err(Error::Layout {
            path: root.to_path_buf(),
            message: format!(
                "several {prefix} list files: {}",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Labels of the original: normal 0, pneumonia 1, COVID-19 2.
pub fn label_of(class: &str) -> Option<i32> {
    match class {
        "normal" => Some(0),
        "pneumonia" => Some(1),
        "COVID-19" => Some(2),
        _ => None,
    }
}

struct Item {
    patient: String,
    file: String,
    class: String,
    source: String,
    test: bool,
    line: u64,
    list: PathBuf,
}

pub(crate) fn read(src: &Source) -> Result<(Vec<Col>, Output)> {
    let mut bad = BadRows::new(src.opts.skip_bad);
    let mut items: Vec<Item> = Vec::new();
    let mut seen: HashMap<String, (PathBuf, u64)> = HashMap::new();
    for (prefix, test) in [("train", false), ("test", true)] {
        let t = RawTable::read(&find_list(src.root, prefix)?, b' ', false)?;
        (src.log)(&format!("{}: {} rows", t.path.display(), t.rows.len()));
        for (line, rec) in &t.rows {
            let fields: Vec<&str> = rec.iter().filter(|f| !f.is_empty()).collect();
            if fields.len() != 4 {
                let e = Error::Row {
                    path: t.path.clone(),
                    line: *line,
                    message: format!(
                        "expected 4 space-separated fields (patient id, file name, class, data source), found {}",
                        fields.len()
                    ),
                };
                bad.row(&t, *line, fields.get(1).copied(), e)?;
                continue;
            }
            let (patient, file, class, source) = (fields[0], fields[1], fields[2], fields[3]);
            if label_of(class).is_none() {
                let e = t.field_err(
                    *line,
                    "class",
                    format!("`{class}` is not one of normal, pneumonia, COVID-19"),
                );
                bad.row(&t, *line, Some(file), e)?;
                continue;
            }
            if let Some((p, l)) = seen.get(file) {
                let e = Error::Row {
                    path: t.path.clone(),
                    line: *line,
                    message: format!(
                        "file name {file} is already listed at line {l} of {}",
                        p.display()
                    ),
                };
                bad.row(&t, *line, Some(file), e)?;
                continue;
            }
            seen.insert(file.to_string(), (t.path.clone(), *line));
            items.push(Item {
                patient: patient.to_string(),
                file: file.to_string(),
                class: class.to_string(),
                source: source.to_string(),
                test,
                line: *line,
                list: t.path.clone(),
            });
        }
    }
    // Train/valid by patient, patients in order of first appearance in the training list.
    let mut patients: Vec<&str> = Vec::new();
    let mut pidx: HashMap<&str, usize> = HashMap::new();
    for it in items.iter().filter(|it| !it.test) {
        pidx.entry(&it.patient).or_insert_with(|| {
            patients.push(&it.patient);
            patients.len() - 1
        });
    }
    let (_, valid) = train_test_split(
        patients.len(),
        TestSize::TrainFraction(0.8),
        src.opts.split_seed,
    );
    let mut is_valid = vec![false; patients.len()];
    for v in valid {
        is_valid[v] = true;
    }
    let split: Vec<&'static str> = items
        .iter()
        .map(
            |it| match (it.test, it.test || is_valid[pidx[it.patient.as_str()]]) {
                (true, _) => "test",
                (false, true) => "valid",
                (false, false) => "train",
            },
        )
        .collect();
    let rows = Candidates {
        checks: (items.iter())
            .map(|it| {
                let folder = if it.test { "test" } else { "train" };
                ImageCheck::new(format!("{folder}/{}", it.file), &it.list, it.line)
            })
            .collect(),
        keys: items.iter().map(|it| it.file.clone()).collect(),
        split,
    };
    let keep = rows.verify(src, &mut bad)?;
    let items = filter(items, &keep);
    let (cols, splits) = rows.into_columns(
        &keep,
        vec![
            Col::Str(
                "patient_id",
                items.iter().map(|it| it.patient.clone()).collect(),
            ),
            Col::Str("class", items.iter().map(|it| it.class.clone()).collect()),
            Col::I32(
                "label",
                items
                    .iter()
                    .map(|it| label_of(&it.class).expect("checked"))
                    .collect(),
            ),
            Col::Str("source", items.iter().map(|it| it.source.clone()).collect()),
        ],
    );
    Ok((cols, Output::new(splits, bad)))
}
