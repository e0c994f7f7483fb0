//! SIIM-ACR Pneumothorax, stage 1 (reference E.3). Fixes the original's row-level split (G.12):
//! all RLE rows of an image stay together, and the split is drawn per image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::rows::{filter, rel, BadRows, Candidates, Output, Source};
use super::table::{Col, RawTable};
use super::verify::ImageCheck;
use crate::error::{Error, Result};
use crate::split::{three_way, Mt19937, TestSize};

pub const RLE_CSV: &str = "train-rle.csv";
pub const IMAGES: &str = "dicom-images-train";

struct Image {
    id: String,
    line: u64,
    rles: Vec<(u64, String)>,
}

/// `ImageId → path relative to the root` for every `.dcm` under `dicom-images-train/`.
fn walk(root: &Path) -> Result<HashMap<String, String>> {
    let top = root.join(IMAGES);
    if !top.is_dir() {
        return Err(Error::Layout {
            path: top,
            message: "image folder not found".into(),
        });
    }
    let mut out = HashMap::new();
    let mut stack: Vec<PathBuf> = vec![top];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let p = entry.map_err(|e| Error::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "dcm") {
                let id = p
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let r = rel(p.strip_prefix(root).expect("under root"));
                if let Some(prev) = out.insert(id, r.clone()) {
                    return Err(Error::Layout {
                        path: root.join(&r),
                        message: format!("the same ImageId is also at {prev}"),
                    });
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn read(src: &Source) -> Result<(Vec<Col>, Output)> {
    let root = src.root;
    let t = RawTable::read(&root.join(RLE_CSV), b',', true)?;
    let (c_id, c_rle) = (t.col("ImageId")?, t.col("EncodedPixels")?);
    let mut bad = BadRows::new(src.opts.skip_bad);
    let mut images: Vec<Image> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (line, rec) in &t.rows {
        let id = t.required(rec, *line, &c_id, "empty image id");
        let Some(id) = bad.check(&t, *line, None, id)?.map(str::to_string) else {
            continue;
        };
        // The real file writes ` -1` and ` 1234 5 ...` with a leading space.
        let rle = t.required(rec, *line, &c_rle, "empty value");
        let Some(rle) = bad.check(&t, *line, Some(&id), rle)?.map(str::to_string) else {
            continue;
        };
        let i = *index.entry(id.clone()).or_insert_with(|| {
            images.push(Image {
                id: id.clone(),
                line: *line,
                rles: Vec::new(),
            });
            images.len() - 1
        });
        if rle != "-1" {
            images[i].rles.push((*line, rle));
        }
    }
    let files = walk(root)?;
    let unlabelled = files.len().saturating_sub(
        images
            .iter()
            .filter(|im| files.contains_key(&im.id))
            .count(),
    );
    (src.log)(&format!(
        "{}: {} rows, {} images ({} positive); {} DICOM files found",
        t.path.display(),
        t.rows.len(),
        images.len(),
        images.iter().filter(|im| !im.rles.is_empty()).count(),
        files.len()
    ));

    let n = images.len();
    let split = three_way(n, TestSize::Fraction(0.30), src.opts.split_seed);
    // The original's training set: every positive image plus as many negatives, drawn without
    // replacement from the unique negative training ImageIds in file order (reference E.3). Here
    // a column, not a filter.
    let mut balanced: Vec<bool> = images
        .iter()
        .zip(&split)
        .map(|(im, s)| *s == "train" && !im.rles.is_empty())
        .collect();
    let n_pos = balanced.iter().filter(|b| **b).count();
    let negatives: Vec<usize> = (0..n)
        .filter(|&i| split[i] == "train" && images[i].rles.is_empty())
        .collect();
    for j in Mt19937::new(src.opts.balance_seed)
        .choice_without_replacement(negatives.len(), n_pos.min(negatives.len()))
    {
        balanced[negatives[j]] = true;
    }

    let rows = Candidates {
        checks: (images.iter())
            .map(|im| ImageCheck {
                rles: im.rles.clone(),
                ..ImageCheck::new(
                    files
                        .get(&im.id)
                        .cloned()
                        .unwrap_or_else(|| format!("{IMAGES}/**/{}.dcm", im.id)),
                    &t.path,
                    im.line,
                )
            })
            .collect(),
        keys: images.iter().map(|im| im.id.clone()).collect(),
        split,
    };
    let keep = rows.verify(src, &mut bad)?;
    let rles: Vec<Vec<String>> = filter(
        images
            .into_iter()
            .map(|im| im.rles.into_iter().map(|(_, r)| r).collect())
            .collect(),
        &keep,
    );
    let (cols, splits) = rows.into_columns(
        &keep,
        vec![
            Col::Bool("positive", rles.iter().map(|r| !r.is_empty()).collect()),
            Col::Bool("balanced_train", filter(balanced, &keep)),
            Col::ListStr("rle", rles),
        ],
    );
    let mut output = Output::new(splits, bad);
    if unlabelled > 0 {
        (output.dropped).insert("image_without_rle_row".to_string(), unlabelled);
    }
    Ok((cols, output))
}

/// Parses the RLE file only (no images): `(rows, images, positive images)`. Used by tests on the
/// real file that torchxrayvision ships.
pub fn count_rle_file(path: &Path) -> Result<(usize, usize, usize)> {
    let t = RawTable::read(path, b',', true)?;
    let (c_id, c_rle) = (t.col("ImageId")?, t.col("EncodedPixels")?);
    let mut pos: HashMap<&str, bool> = HashMap::new();
    for (_, rec) in &t.rows {
        *pos.entry(c_id.text(rec)).or_default() |= c_rle.text(rec) != "-1";
    }
    Ok((
        t.rows.len(),
        pos.len(),
        pos.values().filter(|p| **p).count(),
    ))
}
