//! RSNA Pneumonia Detection, stage 2 (reference E.2): boxes grouped per patient, the
//! classification split (70/15/15) and the segmentation split (60/20/20), both by patient.

use std::collections::BTreeMap;
use std::path::Path;

use super::table::{Col, RawTable};
use super::{filter, tally, verify_items, BadRows, ImageCheck, IngestOptions, Output};
use crate::error::Result;
use crate::split::{three_way, TestSize};

pub const LABELS: &str = "stage_2_train_labels.csv";
pub const IMAGES: &str = "stage_2_train_images";

/// The original's first split: `test_size=0.30` (classification) and `test_size=5337*2`
/// (segmentation), the latter generalised as 0.4 of the patients, which is exactly 10,674 of the
/// real 26,684.
pub const CLS_TEST: TestSize = TestSize::Fraction(0.30);
pub const SEG_TEST: TestSize = TestSize::Fraction(0.40);

struct Patient {
    line: u64,
    boxes: Vec<[f32; 4]>,
    bad: bool,
}

/// The labels file grouped per patient, in pandas' sorted `groupby` order: `(patientId, boxes as
/// x1,y1,x2,y2)`, no boxes for negatives.
pub fn read_patients(path: &Path) -> Result<Vec<(String, Vec<[f32; 4]>)>> {
    let t = RawTable::read(path, b',', true)?;
    let patients = parse(&t, &mut BadRows::new(false))?;
    Ok(patients.into_iter().map(|(k, p)| (k, p.boxes)).collect())
}

/// `(split, seg_split)` labels for `n` patients in sorted order.
pub fn splits(n: usize, seed: u32) -> (Vec<&'static str>, Vec<&'static str>) {
    (three_way(n, CLS_TEST, seed), three_way(n, SEG_TEST, seed))
}

fn parse(t: &RawTable, bad: &mut BadRows) -> Result<BTreeMap<String, Patient>> {
    let (c_id, c_x, c_y, c_w, c_h, c_t) = (
        t.col("patientId")?,
        t.col("x")?,
        t.col("y")?,
        t.col("width")?,
        t.col("height")?,
        t.col("Target")?,
    );
    // pandas `groupby("patientId")` sorts the ids: a BTreeMap gives the same order.
    let mut patients: BTreeMap<String, Patient> = BTreeMap::new();
    for (line, rec) in &t.rows {
        let id = rec.get(c_id).unwrap_or("").trim().to_string();
        if id.is_empty() {
            bad.push(
                None,
                &t.path,
                *line,
                "bad_row",
                t.field_err(*line, "patientId", "empty patient id"),
            )?;
            continue;
        }
        let p = patients.entry(id.clone()).or_insert(Patient {
            line: *line,
            boxes: Vec::new(),
            bad: false,
        });
        let target = rec.get(c_t).unwrap_or("").trim();
        let parsed = match target {
            "0" => Ok(None),
            "1" => {
                let num = |c: usize, name: &str| {
                    let v = rec.get(c).unwrap_or("").trim();
                    v.parse::<f32>().map_err(|_| {
                        t.field_err(
                            *line,
                            name,
                            format!("`{v}` is not a number (Target is 1, so a box is required)"),
                        )
                    })
                };
                (|| {
                    Ok(Some([
                        num(c_x, "x")?,
                        num(c_y, "y")?,
                        num(c_w, "width")?,
                        num(c_h, "height")?,
                    ]))
                })()
            }
            other => Err(t.field_err(*line, "Target", format!("`{other}` is not 0 or 1"))),
        };
        match parsed {
            Ok(Some([x, y, w, h])) => p.boxes.push([x, y, x + w, y + h]),
            Ok(None) => {}
            Err(e) => {
                p.bad = true;
                bad.push(Some(&id), &t.path, *line, "bad_row", e)?;
            }
        }
    }
    Ok(patients)
}

pub(crate) fn ingest(
    root: &Path,
    opts: &IngestOptions,
    log: &(dyn Fn(&str) + Sync),
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Vec<Col>, Output)> {
    let t = RawTable::read(&root.join(LABELS), b',', true)?;
    let mut bad = BadRows::new(opts.skip_bad);
    let patients = parse(&t, &mut bad)?;
    let n = patients.len();
    log(&format!(
        "{}: {} rows, {n} patients",
        t.path.display(),
        t.rows.len()
    ));
    // Splits are drawn over every patient, before bad rows are removed, so skipping a bad row
    // never moves another patient between splits.
    let (split, seg_split) = splits(n, opts.split_seed);
    let keys: Vec<String> = patients.keys().cloned().collect();
    let checks: Vec<ImageCheck> = patients
        .iter()
        .map(|(id, p)| ImageCheck {
            rel_path: format!("{IMAGES}/{id}.dcm"),
            csv: t.path.clone(),
            line: p.line,
            rles: Vec::new(),
        })
        .collect();
    let mut keep = verify_items(root, &checks, &keys, opts, &mut bad, progress)?;
    for (k, p) in keep.iter_mut().zip(patients.values()) {
        *k &= !p.bad;
    }
    let boxes: Vec<Vec<[f32; 4]>> =
        filter(patients.into_values().map(|p| p.boxes).collect(), &keep);
    let split = filter(split, &keep);
    let seg_split = filter(seg_split, &keep);
    let cols = vec![
        Col::Str("key", filter(keys, &keep)),
        Col::Str(
            "path",
            filter(checks.into_iter().map(|c| c.rel_path).collect(), &keep),
        ),
        Col::Str("split", split.iter().map(|s| s.to_string()).collect()),
        Col::Str(
            "seg_split",
            seg_split.iter().map(|s| s.to_string()).collect(),
        ),
        Col::I32(
            "target",
            boxes.iter().map(|b| i32::from(!b.is_empty())).collect(),
        ),
        Col::Boxes("boxes", boxes),
    ];
    let output = Output {
        splits: tally(split.iter().copied()),
        seg_splits: Some(tally(seg_split.iter().copied())),
        dropped: BTreeMap::new(),
        bad: bad.rows,
    };
    Ok((cols, output))
}
