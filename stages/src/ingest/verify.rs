//! Image checks of ingest: every image a records row points at exists and, with `verify =
//! "decode"`, decodes completely (SIIM's RLE strings must also fit it), checked in parallel and
//! reported with the row that names the image.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::Verify;
use crate::error::{Error, Result};
use crate::images::{self, ImageFormat};

/// One image a records row points at, and where the row came from.
pub(crate) struct ImageCheck {
    pub rel_path: String,
    pub csv: PathBuf,
    pub line: u64,
    /// SIIM: RLE strings (with their lines) that must fit the image.
    pub rles: Vec<(u64, String)>,
}

impl ImageCheck {
    /// The image at `rel_path` (relative to the dataset root), named at `line` of `csv`.
    pub fn new(rel_path: String, csv: &Path, line: u64) -> Self {
        ImageCheck {
            rel_path,
            csv: csv.to_path_buf(),
            line,
            rles: Vec::new(),
        }
    }
}

/// Checks every image (in parallel); `None` where fine. Reports progress as images complete.
pub(crate) fn check_images(
    root: &Path,
    checks: &[ImageCheck],
    verify: Verify,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Vec<Option<(&'static str, Error)>> {
    let total = checks.len() as u64;
    let done = AtomicU64::new(0);
    progress(0, total);
    checks
        .par_iter()
        .map(|c| {
            let r = check_one(root, c, verify);
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if d.is_multiple_of(64) || d == total {
                progress(d, total);
            }
            r.err()
        })
        .collect()
}

fn check_one(root: &Path, c: &ImageCheck, verify: Verify) -> Result<(), (&'static str, Error)> {
    let path = root.join(&c.rel_path);
    if !path.is_file() {
        return Err((
            "missing_image",
            Error::MissingImage {
                path: c.csv.clone(),
                line: c.line,
                image: path,
            },
        ));
    }
    let bad = |e: Error| {
        let message = match e {
            Error::Decode { message, .. } => message,
            Error::NoPixelData { .. } => "DICOM file has no pixel data".to_string(),
            other => other.to_string(),
        };
        (
            "bad_image",
            Error::BadImage {
                path: c.csv.clone(),
                line: c.line,
                image: path.clone(),
                message,
            },
        )
    };
    let dims = match verify {
        Verify::Decode => {
            let img = images::decode(&path).map_err(bad)?;
            Some((img.width(), img.height()))
        }
        Verify::Exists
            if !c.rles.is_empty() && ImageFormat::from_path(&path) == Some(ImageFormat::Dicom) =>
        {
            Some(dicom_dims(&path).map_err(bad)?)
        }
        Verify::Exists => None,
    };
    if let Some((w, h)) = dims {
        for (line, rle) in &c.rles {
            let context = format!("{}, line {line}, field `EncodedPixels`", c.csv.display());
            crate::masks::parse_rle(rle, w, h, &context).map_err(|e| ("bad_rle", e))?;
        }
    }
    Ok(())
}

/// Rows × columns from a DICOM header, without decoding the pixels.
fn dicom_dims(path: &Path) -> Result<(u32, u32)> {
    use dicom_dictionary_std::tags;
    let err = |m: String| Error::Decode {
        path: path.to_path_buf(),
        message: m,
    };
    // The header's lengths, checked in the first MiB (where the elements before the pixel data
    // are), against the whole file's size.
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 1 << 20), &mut head)
        .map_err(|e| Error::io(path, e))?;
    images::check_dicom_lengths(path, &head, file_len)?;
    let obj = images::without_panics(path, "DICOM", || {
        dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| err(e.to_string()))
    })?;
    let get = |tag| -> Result<u32> {
        obj.element(tag)
            .map_err(|e| err(e.to_string()))?
            .to_int::<u32>()
            .map_err(|e| err(e.to_string()))
    };
    Ok((get(tags::COLUMNS)?, get(tags::ROWS)?))
}
