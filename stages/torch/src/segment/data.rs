//! Segmentation data from a records table: images decoded once to 8-bit gray at the crop size
//! (MGCA `resize_img`: longer side to `crop` with `INTER_AREA`, zero padding), masks painted at the
//! image's native size (SIIM RLE, RSNA boxes) and put through the *same* `resize_img` geometry, then
//! binarised where the covered area is > 0.5.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use stages::images::{self, Gray, Gray8, ImageFormat};
use stages::masks::{boxes_to_mask, rle_to_mask};

use crate::error::{Error, Result};
use train::rng::{label_subset, LabelStream};

/// Which dataset's annotations the records table carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegDataset {
    /// `rle` (list of strings); training uses `balanced_train` rows (the original's balanced set).
    Siim,
    /// `boxes` (list of `[x1, y1, x2, y2]`); splits from `seg_split` when present.
    Rsna,
}

impl SegDataset {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "siim" => Ok(SegDataset::Siim),
            "rsna" => Ok(SegDataset::Rsna),
            other => Err(Error::unknown(
                "segmentation dataset",
                other,
                "siim or rsna",
            )),
        }
    }
}

/// One split: images and masks, `crop × crop`, row-major.
#[derive(Debug, Clone, Default)]
pub struct SegSplit {
    pub keys: Vec<String>,
    pub images: Vec<Gray8>,
    /// 0/1 per pixel.
    pub masks: Vec<Vec<u8>>,
}

impl SegSplit {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct SegData {
    pub dataset: SegDataset,
    pub crop: u32,
    pub train: SegSplit,
    pub valid: SegSplit,
    pub test: SegSplit,
    /// Training images before the label fraction was applied.
    pub train_available: usize,
    pub fraction: f64,
}

/// What a row needs to become an image and a mask.
enum Annotation {
    Rle(Vec<String>),
    Boxes(Vec<[f32; 4]>),
}

impl SegData {
    /// Reads `records` (an ingest `records.parquet`), decodes the images under `raw_dir` and
    /// builds the masks. `fraction` of the training split is kept (see [`label_subset`]).
    pub fn load(
        records: &Path,
        raw_dir: &Path,
        dataset: &str,
        crop: u32,
        fraction: f64,
        seed: u64,
    ) -> Result<SegData> {
        let dataset = SegDataset::parse(dataset)?;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::parameter(
                "label fraction",
                fraction,
                "is outside (0, 1]",
            ));
        }
        if crop == 0 {
            return Err(Error::parameter("crop size", crop, "must be positive"));
        }
        let batches = read_batches(records)?;
        let names = column_names(&batches);
        let has = |n: &str| names.iter().any(|c| c == n);
        let keys = string_column(records, &batches, "key")?;
        let paths = string_column(records, &batches, "path")?;
        let split_col = if dataset == SegDataset::Rsna && has("seg_split") {
            "seg_split"
        } else {
            "split"
        };
        let splits = string_column(records, &batches, split_col)?;
        let balanced = if dataset == SegDataset::Siim && has("balanced_train") {
            Some(bool_column(records, &batches, "balanced_train")?)
        } else {
            None
        };
        let annotations: Vec<Annotation> = match dataset {
            SegDataset::Siim => rle_column(records, &batches)?
                .into_iter()
                .map(Annotation::Rle)
                .collect(),
            SegDataset::Rsna => boxes_column(records, &batches)?
                .into_iter()
                .map(Annotation::Boxes)
                .collect(),
        };
        let mut rows: [Vec<usize>; 3] = Default::default();
        for i in 0..keys.len() {
            let slot = match splits[i].as_str() {
                "train" if balanced.as_ref().is_none_or(|b| b[i]) => 0,
                "train" => continue,
                "valid" => 1,
                "test" => 2,
                other => {
                    return Err(Error::table(
                        records,
                        format!("row {i} (key `{}`): {split_col} `{other}`", keys[i]),
                    ))
                }
            };
            rows[slot].push(i);
        }
        let train_available = rows[0].len();
        let kept: Vec<usize> = label_subset(train_available, fraction, seed, LabelStream::Segment)
            .into_iter()
            .map(|j| rows[0][j])
            .collect();
        rows[0] = kept;
        let load_split = |idx: &[usize]| -> Result<SegSplit> {
            let loaded = idx
                .par_iter()
                .map(|&i| {
                    let path = raw_dir.join(&paths[i]);
                    load_pair(&path, &annotations[i], crop, records, &keys[i])
                })
                .collect::<Result<Vec<_>>>()?;
            let (images, masks) = loaded.into_iter().unzip();
            Ok(SegSplit {
                keys: idx.iter().map(|&i| keys[i].clone()).collect(),
                images,
                masks,
            })
        };
        Ok(SegData {
            dataset,
            crop,
            train: load_split(&rows[0])?,
            valid: load_split(&rows[1])?,
            test: load_split(&rows[2])?,
            train_available,
            fraction,
        })
    }
}

/// Decodes one image (errors name the file) and builds its mask at the same geometry.
fn load_pair(
    path: &Path,
    ann: &Annotation,
    crop: u32,
    records: &Path,
    key: &str,
) -> Result<(Gray8, Vec<u8>)> {
    let decode_err = |message: &str| {
        Error::Image(stages::Error::Decode {
            path: path.to_path_buf(),
            message: message.to_string(),
        })
    };
    if !path.is_file() {
        return Err(decode_err("file not found"));
    }
    let gray = match ImageFormat::from_path(path) {
        Some(ImageFormat::Dicom) => images::DicomPixels::open(path)?.to_gray8_mgca(),
        _ => images::decode_raster(path)?.to_gray8(),
    };
    let (w, h) = (gray.width, gray.height);
    let native = match ann {
        Annotation::Rle(rles) => rle_to_mask(
            rles,
            w,
            h,
            &format!("{} (key `{key}`, column `rle`)", records.display()),
        )?,
        Annotation::Boxes(b) => boxes_to_mask(b, w, h),
    };
    let soft = images::resize_img(
        &Gray::<f32> {
            width: w,
            height: h,
            data: native.data.iter().map(|&v| v as f32).collect(),
        },
        crop,
    );
    let mask = soft.data.iter().map(|&v| u8::from(v > 0.5)).collect();
    Ok((images::resize_img(&gray, crop), mask))
}

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::table(path, e))?;
    reader
        .map(|b| b.map_err(|e| Error::table(path, e)))
        .collect()
}

fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

fn column<'a>(path: &Path, batches: &'a [RecordBatch], name: &str) -> Result<Vec<&'a ArrayRef>> {
    batches
        .iter()
        .map(|b| {
            b.column_by_name(name).ok_or_else(|| {
                Error::table(
                    path,
                    format!(
                        "no column `{name}` (columns: {})",
                        column_names(batches).join(", ")
                    ),
                )
            })
        })
        .collect()
}

fn strings_of(path: &Path, a: &dyn Array, name: &str) -> Result<Vec<String>> {
    let get = |o: Option<&str>| o.unwrap_or_default().to_string();
    Ok(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().map(get).collect(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().map(get).collect(),
        DataType::Utf8View => a.as_string_view().iter().map(get).collect(),
        other => {
            return Err(Error::table(
                path,
                format!("column `{name}` is {other}, expected strings"),
            ))
        }
    })
}

fn string_column(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in column(path, batches, name)? {
        if c.null_count() > 0 {
            return Err(Error::table(path, format!("column `{name}` has nulls")));
        }
        out.extend(strings_of(path, c.as_ref(), name)?);
    }
    Ok(out)
}

fn bool_column(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<bool>> {
    let mut out = Vec::new();
    for c in column(path, batches, name)? {
        let b = c.as_boolean_opt().ok_or_else(|| {
            Error::table(
                path,
                format!("column `{name}` is {}, not bool", c.data_type()),
            )
        })?;
        out.extend(b.iter().map(|v| v.unwrap_or(false)));
    }
    Ok(out)
}

/// The items of each row of a list column (List, LargeList or FixedSizeList); null rows are empty.
fn list_rows(path: &Path, a: &dyn Array, name: &str) -> Result<Vec<Option<ArrayRef>>> {
    let n = a.len();
    let row = |i: usize, v: ArrayRef| (!a.is_null(i)).then_some(v);
    if let Some(l) = a.as_list_opt::<i32>() {
        Ok((0..n).map(|i| row(i, l.value(i))).collect())
    } else if let Some(l) = a.as_list_opt::<i64>() {
        Ok((0..n).map(|i| row(i, l.value(i))).collect())
    } else if let Some(l) = a.as_fixed_size_list_opt() {
        Ok((0..n).map(|i| row(i, l.value(i))).collect())
    } else {
        Err(Error::table(
            path,
            format!("column `{name}` is {}, expected a list", a.data_type()),
        ))
    }
}

fn rle_column(path: &Path, batches: &[RecordBatch]) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for c in column(path, batches, "rle")? {
        for r in list_rows(path, c.as_ref(), "rle")? {
            out.push(match r {
                Some(items) => strings_of(path, items.as_ref(), "rle")?,
                None => Vec::new(),
            });
        }
    }
    Ok(out)
}

fn boxes_column(path: &Path, batches: &[RecordBatch]) -> Result<Vec<Vec<[f32; 4]>>> {
    let mut out = Vec::new();
    for c in column(path, batches, "boxes")? {
        for r in list_rows(path, c.as_ref(), "boxes")? {
            let mut boxes = Vec::new();
            for b in r
                .map(|r| list_rows(path, r.as_ref(), "boxes"))
                .transpose()?
                .unwrap_or_default()
            {
                let Some(b) = b else { continue };
                let v: Vec<f32> = if let Some(f) = b.as_primitive_opt::<Float32Type>() {
                    f.values().to_vec()
                } else if let Some(f) = b.as_primitive_opt::<Float64Type>() {
                    f.values().iter().map(|&x| x as f32).collect()
                } else {
                    return Err(Error::table(
                        path,
                        format!("column `boxes` holds {}, expected floats", b.data_type()),
                    ));
                };
                if v.len() != 4 {
                    return Err(Error::table(
                        path,
                        format!("column `boxes`: a box has {} values, expected 4", v.len()),
                    ));
                }
                boxes.push([v[0], v[1], v[2], v[3]]);
            }
            out.push(boxes);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_subset(n: usize, f: f64, seed: u64) -> Vec<usize> {
        train::rng::label_subset(n, f, seed, LabelStream::Segment)
    }

    #[test]
    fn label_subset_rounds_keeps_at_least_one_and_is_seeded() {
        assert_eq!(label_subset(10, 1.0, 3), (0..10).collect::<Vec<_>>());
        assert_eq!(label_subset(10, 0.01, 3).len(), 1);
        assert_eq!(label_subset(10, 0.25, 3).len(), 2); // round(2.5) = 2 (half to even)
        assert_eq!(label_subset(10, 0.35, 3).len(), 4); // round(3.5) = 4
        assert_eq!(label_subset(10, 0.5, 3), label_subset(10, 0.5, 3));
        assert_ne!(label_subset(100, 0.5, 3), label_subset(100, 0.5, 4));
        let s = label_subset(100, 0.3, 9);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
