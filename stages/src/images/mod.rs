//! Image decoding and the original's preprocessing arithmetic.
//!
//! Decodes JPEG, PNG and DICOM (uncompressed, RLE, JPEG baseline, deflate, JPEG 2000) into 8- or
//! 16-bit grayscale, and reimplements MGCA's `resize_img` (reference B.2): OpenCV `INTER_AREA`
//! resize of the longer side, then symmetric zero padding (floor/ceil) to a square.

mod dicom;
mod dicom_native;
mod limits;
mod mgca;
mod raster;
mod resize;
mod samples;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};

pub use dicom::{check_dicom_lengths, DicomPixels};
pub use limits::DecodeLimits;
pub(crate) use raster::without_panics;
pub use raster::{decode_raster, decode_raster_bytes};
pub use resize::{
    center_crop, resize_area, resize_img, resize_img_geometry, resize_linear, Sample,
};
pub use samples::Samples;

/// A row-major single-channel image.
#[derive(Clone, Debug, PartialEq)]
pub struct Gray<T> {
    pub width: u32,
    pub height: u32,
    pub data: Vec<T>,
}

pub type Gray8 = Gray<u8>;
pub type Gray16 = Gray<u16>;

impl<T: Copy + Default> Gray<T> {
    pub fn new(width: u32, height: u32) -> Self {
        Gray {
            width,
            height,
            data: vec![T::default(); width as usize * height as usize],
        }
    }

    pub fn get(&self, x: u32, y: u32) -> T {
        self.data[y as usize * self.width as usize + x as usize]
    }
}

/// A decoded image at its native depth.
#[derive(Clone, Debug, PartialEq)]
pub enum GrayImage {
    Eight(Gray8),
    Sixteen(Gray16),
}

impl GrayImage {
    pub fn width(&self) -> u32 {
        match self {
            GrayImage::Eight(g) => g.width,
            GrayImage::Sixteen(g) => g.width,
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            GrayImage::Eight(g) => g.height,
            GrayImage::Sixteen(g) => g.height,
        }
    }

    /// 8-bit view: 16-bit values are rounded to `v · 255 / 65535`.
    pub fn to_gray8(&self) -> Gray8 {
        match self {
            GrayImage::Eight(g) => g.clone(),
            GrayImage::Sixteen(g) => Gray {
                width: g.width,
                height: g.height,
                data: g
                    .data
                    .iter()
                    .map(|&v| ((v as u32 * 255 + 32767) / 65535) as u8)
                    .collect(),
            },
        }
    }
}

/// The file formats the decoder knows, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Dicom,
}

impl ImageFormat {
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            "dcm" | "dicom" => Some(ImageFormat::Dicom),
            _ => None,
        }
    }
}

/// Decodes any supported file to grayscale at its native depth. DICOM goes through
/// [`DicomPixels::to_gray`] (rescale, MONOCHROME1 inversion, full-range scaling).
pub fn decode(path: &Path) -> Result<GrayImage> {
    match ImageFormat::from_path(path) {
        Some(ImageFormat::Dicom) => Ok(DicomPixels::open(path)?.to_gray()),
        Some(_) => decode_raster(path),
        None => Err(Error::decode(
            path,
            "unknown image extension (expected .jpg, .jpeg, .png or .dcm)",
        )),
    }
}

/// Image files [`load_mgca`] has decoded in this process (a count, for the log lines that show
/// that encoding from a `preprocess` artifact decodes nothing).
static DECODED: AtomicU64 = AtomicU64::new(0);

/// How many image files [`load_mgca`] has decoded in this process so far.
pub fn decoded_count() -> u64 {
    DECODED.load(Ordering::Relaxed)
}

/// The original's loader for one file (`get_imgs` / `read_from_dicom` + `resize_img`): 8-bit gray,
/// longer side resized to `imsize`, zero-padded to `imsize × imsize`.
pub fn load_mgca(path: &Path, imsize: u32) -> Result<Gray8> {
    let out = match ImageFormat::from_path(path) {
        Some(ImageFormat::Dicom) => DicomPixels::open(path)?.resize_img_mgca(imsize),
        _ => resize_img(&decode_raster(path)?.to_gray8(), imsize),
    };
    DECODED.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// Decodes and preprocesses many files in parallel (rayon, current pool), in input order.
pub fn load_mgca_many(paths: &[PathBuf], imsize: u32) -> Vec<Result<Gray8>> {
    paths.par_iter().map(|p| load_mgca(p, imsize)).collect()
}
