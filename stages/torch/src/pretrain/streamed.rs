//! `train-adaptor` on tables larger than its memory budget: both tables are streamed once, row by
//! row in step, into row files of the train and valid pairs (finite values and aligned keys
//! checked on the way), and mini-batches are gathered from them by positioned reads
//! ([`DiskPairs`]). The batches hold exactly the floats the in-memory path selects, so training
//! is bit-identical.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use artifacts::rowfile::{RowFile, RowFileWriter, RowShape};
use artifacts::table::{RowBatch, RowBatches};
use pipeline::{StageContext, StageError};
use tch::{Device, Kind, Tensor};
use train::{Batch, PairSource};

/// One modality's rows on disk: pooled (`[D]` per row) or tokens (`[L, D]` and a mask of `L`).
pub struct Side {
    rows: RowFile,
    dim: i64,
    tokens: Option<i64>,
}

impl Side {
    /// The rows at `idx`: `[B, D]` (pooled) or `[B, L, D]` with mask `[B, L]`.
    fn gather(&self, idx: &[usize]) -> train::Result<(Tensor, Option<Tensor>)> {
        let (mut values, mut mask) = (Vec::new(), Vec::new());
        self.rows
            .gather(idx, &mut values, &mut mask)
            .map_err(|e| train::Error::Data(e.to_string()))?;
        let b = idx.len() as i64;
        Ok(match self.tokens {
            None => (Tensor::from_slice(&values).view([b, self.dim]), None),
            Some(l) => (
                Tensor::from_slice(&values).view([b, l, self.dim]),
                Some(Tensor::from_slice(&mask).view([b, l])),
            ),
        })
    }
}

/// Pairs in two row files (image, text), row `i` of each the same study.
pub struct DiskPairs {
    image: Side,
    text: Side,
}

impl PairSource for DiskPairs {
    fn len(&self) -> usize {
        self.image.rows.rows()
    }

    fn dims(&self) -> (i64, i64) {
        (self.image.dim, self.text.dim)
    }

    fn batch(&self, rows: &[i64], device: Device) -> train::Result<Batch> {
        let n = self.len() as i64;
        if let Some(bad) = rows.iter().find(|&&r| r < 0 || r >= n) {
            return Err(train::Error::Data(format!(
                "row {bad} out of range (0..{n})"
            )));
        }
        let idx: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        let (image, image_mask) = self.image.gather(&idx)?;
        let (text, text_mask) = self.text.gather(&idx)?;
        let batch = match (image_mask, text_mask) {
            (None, None) => Batch::Pooled { image, text },
            (im, tm) => {
                // A pooled side in a token batch: a sequence of one real token (as in memory).
                let seq = |x: Tensor, m: Option<Tensor>| match m {
                    Some(m) => (x, m),
                    None => {
                        let ones = Tensor::ones([idx.len() as i64, 1], (Kind::Bool, x.device()));
                        (x.unsqueeze(1), ones)
                    }
                };
                let (image, image_mask) = seq(image, im);
                let (text, text_mask) = seq(text, tm);
                Batch::Tokens {
                    image,
                    image_mask,
                    text,
                    text_mask,
                }
            }
        };
        Ok(batch.to_device(device))
    }
}

/// A table read row by row from its stream of batches.
struct Cursor<I> {
    rows: RowBatches<I>,
    batch: Option<RowBatch>,
    at: usize,
    row_len: usize,
    mask_len: usize,
}

impl<I: Iterator<Item = artifacts::Result<RecordBatch>>> Cursor<I> {
    fn new(rows: RowBatches<I>) -> Self {
        let row_len = rows.row_len();
        let mask_len = rows.meta().tokens.unwrap_or(0);
        Cursor {
            rows,
            batch: None,
            at: 0,
            row_len,
            mask_len,
        }
    }

    /// Moves to the next row; false at the end of the table.
    fn advance(&mut self) -> artifacts::Result<bool> {
        if let Some(b) = &self.batch {
            if self.at + 1 < b.rows() {
                self.at += 1;
                return Ok(true);
            }
        }
        loop {
            match self.rows.next().transpose()? {
                None => {
                    self.batch = None;
                    return Ok(false);
                }
                Some(b) if b.rows() == 0 => continue,
                Some(b) => {
                    self.batch = Some(b);
                    self.at = 0;
                    return Ok(true);
                }
            }
        }
    }

    fn current(&self) -> Option<&RowBatch> {
        self.batch.as_ref()
    }

    fn key(&self) -> Option<&str> {
        self.current().map(|b| b.keys[self.at].as_str())
    }

    fn split(&self) -> Option<&str> {
        self.current()
            .and_then(|b| b.splits.as_ref())
            .map(|s| s[self.at].as_str())
    }

    fn values(&self) -> &[f32] {
        let b = self.current().expect("on a row");
        &b.values[self.at * self.row_len..(self.at + 1) * self.row_len]
    }

    fn mask(&self) -> Option<&[bool]> {
        let b = self.current().expect("on a row");
        b.mask
            .as_ref()
            .map(|m| &m[self.at * self.mask_len..(self.at + 1) * self.mask_len])
    }
}

/// The row files of one split being written, and its rows without a real token.
struct SplitWriter {
    image: RowFileWriter,
    text: RowFileWriter,
    empty: [usize; 2],
}

/// What [`spill`] made: the train and valid pairs, and the bytes they take on disk.
pub struct Spilled {
    pub train: DiskPairs,
    pub valid: DiskPairs,
    pub bytes: u64,
}

/// Streams the two tables in step into row files under `dir` (created; the caller removes it).
/// Errors are those of the in-memory path: misaligned keys, a non-finite value, no `split`
/// column, no train or valid rows, a row without a real token.
pub fn spill<I, J>(
    image: RowBatches<I>,
    text: RowBatches<J>,
    dir: &Path,
    ctx: &StageContext,
) -> Result<Spilled, StageError>
where
    I: Iterator<Item = artifacts::Result<RecordBatch>>,
    J: Iterator<Item = artifacts::Result<RecordBatch>>,
{
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (image_path, text_path) = (image.path().to_path_buf(), text.path().to_path_buf());
    let (im, tm) = (image.meta().clone(), text.meta().clone());
    let shape = |m: &artifacts::table::TableMeta| RowShape {
        row_len: m.dim * m.tokens.unwrap_or(1),
        mask_len: m.tokens.unwrap_or(0),
    };
    let writer = |split: &str| -> Result<SplitWriter, StageError> {
        Ok(SplitWriter {
            image: RowFileWriter::create(&dir.join(format!("{split}-image.rows")), shape(&im))?,
            text: RowFileWriter::create(&dir.join(format!("{split}-text.rows")), shape(&tm))?,
            empty: [0, 0],
        })
    };
    let (mut train, mut valid) = (writer("train")?, writer("valid")?);
    let (mut a, mut b) = (Cursor::new(image), Cursor::new(text));
    let mut row = 0usize;
    loop {
        let (more_a, more_b) = (a.advance()?, b.advance()?);
        if !more_a && !more_b {
            break;
        }
        if a.key() != b.key() {
            let show = |k: Option<&str>| k.map_or("no row".to_string(), |k| format!("key `{k}`"));
            return Err(format!(
                "the image and text tables are not aligned: row {row} has {} in {} and {} in {}",
                show(a.key()),
                image_path.display(),
                show(b.key()),
                text_path.display()
            )
            .into());
        }
        for (c, path) in [(&a.values(), &image_path), (&b.values(), &text_path)] {
            if c.iter().any(|v| !v.is_finite()) {
                return Err(format!(
                    "{}: row {row} (key `{}`) holds a non-finite value",
                    path.display(),
                    a.key().unwrap_or_default()
                )
                .into());
            }
        }
        let split = a.split().ok_or_else(|| {
            format!(
                "{}: the table has no `split` column; training needs train and valid rows",
                image_path.display()
            )
        })?;
        let out = match split {
            "train" => &mut train,
            "valid" => &mut valid,
            _ => {
                row += 1;
                continue;
            }
        };
        out.image.push(a.values(), a.mask())?;
        out.text.push(b.values(), b.mask())?;
        for (side, mask) in [a.mask(), b.mask()].into_iter().enumerate() {
            if mask.is_some_and(|m| !m.iter().any(|&t| t)) {
                out.empty[side] += 1;
            }
        }
        row += 1;
        if row.is_multiple_of(4096) {
            ctx.check_cancelled()?;
        }
    }
    let (n_train, n_valid) = (train.image.rows(), valid.image.rows());
    if n_train == 0 || n_valid == 0 {
        return Err(format!(
            "{}: {n_train} train and {n_valid} valid rows; training needs both",
            image_path.display()
        )
        .into());
    }
    for w in [&train, &valid] {
        for (side, what) in ["image", "text"].into_iter().enumerate() {
            if w.empty[side] > 0 {
                let e = train::Error::Data(format!(
                    "{} rows have no real {what} token (all-false mask)",
                    w.empty[side]
                ));
                return Err(e.into());
            }
        }
    }
    let side = |w: RowFileWriter, m: &artifacts::table::TableMeta| -> Result<Side, StageError> {
        Ok(Side {
            rows: w.finish()?,
            dim: m.dim as i64,
            tokens: m.tokens.map(|l| l as i64),
        })
    };
    let pairs = |w: SplitWriter| -> Result<DiskPairs, StageError> {
        Ok(DiskPairs {
            image: side(w.image, &im)?,
            text: side(w.text, &tm)?,
        })
    };
    let (train, valid) = (pairs(train)?, pairs(valid)?);
    let bytes = [&train, &valid]
        .iter()
        .flat_map(|p| [&p.image.rows, &p.text.rows])
        .map(|r| r.rows() as u64 * r.shape().bytes() as u64)
        .sum();
    Ok(Spilled {
        train,
        valid,
        bytes,
    })
}

/// A scratch folder removed when dropped (the row files of one run).
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
