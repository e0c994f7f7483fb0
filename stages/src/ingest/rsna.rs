//! RSNA Pneumonia Detection, stage 2 (reference E.2): boxes grouped per patient, the
//! classification split (70/15/15) and the segmentation split (60/20/20), both by patient.

use std::collections::BTreeMap;
use std::path::Path;

use super::rows::{filter, tally, BadRows, Candidates, Output, Source};
use super::table::{Col, RawTable};
use super::verify::ImageCheck;
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
    let c_id = t.col("patientId")?;
    let c_box = [t.col("x")?, t.col("y")?, t.col("width")?, t.col("height")?];
    let c_target = t.col("Target")?;
    // pandas `groupby("patientId")` sorts the ids: a BTreeMap gives the same order.
    let mut patients: BTreeMap<String, Patient> = BTreeMap::new();
    for (line, rec) in &t.rows {
        let id = t.required(rec, *line, &c_id, "empty patient id");
        let Some(id) = bad.check(t, *line, None, id)?.map(str::to_string) else {
            continue;
        };
        let p = patients.entry(id.clone()).or_insert(Patient {
            line: *line,
            boxes: Vec::new(),
            bad: false,
        });
        let parsed = match c_target.text(rec) {
            "0" => Ok(None),
            "1" => (|| {
                let what = "a number (Target is 1, so a box is required)";
                let mut b = [0f32; 4];
                for (v, c) in b.iter_mut().zip(&c_box) {
                    *v = t.parse(rec, *line, c, what)?;
                }
                Ok(Some(b))
            })(),
            other => Err(t.field_err(*line, "Target", format!("`{other}` is not 0 or 1"))),
        };
        match bad.check(t, *line, Some(&id), parsed)? {
            Some(Some([x, y, w, h])) => p.boxes.push([x, y, x + w, y + h]),
            Some(None) => {}
            None => p.bad = true,
        }
    }
    Ok(patients)
}

pub(crate) fn read(src: &Source) -> Result<(Vec<Col>, Output)> {
    let t = RawTable::read(&src.root.join(LABELS), b',', true)?;
    let mut bad = BadRows::new(src.opts.skip_bad);
    let patients = parse(&t, &mut bad)?;
    let n = patients.len();
    (src.log)(&format!(
        "{}: {} rows, {n} patients",
        t.path.display(),
        t.rows.len()
    ));
    // Splits are drawn over every patient, before bad rows are removed, so skipping a bad row
    // never moves another patient between splits.
    let (split, seg_split) = splits(n, src.opts.split_seed);
    let rows = Candidates {
        keys: patients.keys().cloned().collect(),
        checks: (patients.iter())
            .map(|(id, p)| ImageCheck::new(format!("{IMAGES}/{id}.dcm"), &t.path, p.line))
            .collect(),
        split,
    };
    let mut keep = rows.verify(src, &mut bad)?;
    for (k, p) in keep.iter_mut().zip(patients.values()) {
        *k &= !p.bad;
    }
    let boxes: Vec<Vec<[f32; 4]>> =
        filter(patients.into_values().map(|p| p.boxes).collect(), &keep);
    let seg_split = filter(seg_split, &keep);
    let (cols, splits) = rows.into_columns(
        &keep,
        vec![
            Col::Str(
                "seg_split",
                seg_split.iter().map(|s| s.to_string()).collect(),
            ),
            Col::I32(
                "target",
                boxes.iter().map(|b| i32::from(!b.is_empty())).collect(),
            ),
            Col::Boxes("boxes", boxes),
        ],
    );
    let output = Output {
        seg_splits: Some(tally(seg_split)),
        ..Output::new(splits, bad)
    };
    Ok((cols, output))
}
