//! JPEG and PNG decoding through the `image` crate, to grayscale at the file's own depth, with
//! the decode limits applied and a decoder panic turned into an error naming the file.

use std::path::Path;

use super::{DecodeLimits, Gray, GrayImage, ImageFormat};
use crate::error::{Error, Result};

/// JPEG or PNG to grayscale. Colour images are converted with the `image` crate's luma weights
/// (ITU-R BT.709); OpenCV's `imread(path, 0)` uses BT.601 on colour JPEGs, which only matters for
/// colour files (chest radiographs are stored gray).
pub fn decode_raster(path: &Path) -> Result<GrayImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_raster_bytes(path, &bytes)
}

/// Runs a third-party decoder, turning a panic inside it (found by fuzzing: the DICOM RLE codec
/// indexes past a corrupt segment) into an error naming the file: a corrupt file must never take
/// the runner down (ingest decodes in the runner's process).
pub(crate) fn without_panics<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let m = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::decode(
            path,
            format!("the {what} decoder failed on corrupt data ({m})"),
        ))
    })
}

pub fn decode_raster_bytes(path: &Path, bytes: &[u8]) -> Result<GrayImage> {
    without_panics(path, "image", || decode_raster_checked(path, bytes))
}

fn decode_raster_checked(path: &Path, bytes: &[u8]) -> Result<GrayImage> {
    let format = match ImageFormat::from_path(path) {
        Some(ImageFormat::Png) => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    // The JPEG decoder fills a truncated scan with grey instead of failing. A complete file has
    // its end-of-image marker near the end (`FF D9` cannot occur inside entropy-coded data, where
    // `FF` is always followed by `00` or a restart marker), so look for it in the last kilobyte.
    if format == image::ImageFormat::Jpeg
        && !bytes[bytes.len().saturating_sub(1024)..]
            .windows(2)
            .any(|w| w == [0xff, 0xd9])
    {
        return Err(Error::decode(
            path,
            "truncated JPEG: no end-of-image marker (FF D9) at the end of the file",
        ));
    }
    let limits = DecodeLimits::current();
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    // The codec's own allocation cap, for what it allocates besides the output buffer.
    let mut codec_limits = image::Limits::default();
    codec_limits.max_alloc = Some(limits.max_bytes);
    reader.limits(codec_limits);
    // Only the header is read here; the pixel buffer is allocated by `from_decoder`, after the
    // limits are checked.
    let decoder = reader.into_decoder().map_err(|e| Error::decode(path, e))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    limits.check(
        path,
        w as u64,
        h as u64,
        image::ImageDecoder::total_bytes(&decoder),
    )?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| Error::decode(path, e))?;
    let gray8 = |g: image::GrayImage| {
        GrayImage::Eight(Gray {
            width: g.width(),
            height: g.height(),
            data: g.into_raw(),
        })
    };
    let gray16 = |g: image::ImageBuffer<image::Luma<u16>, Vec<u16>>| {
        GrayImage::Sixteen(Gray {
            width: g.width(),
            height: g.height(),
            data: g.into_raw(),
        })
    };
    use image::DynamicImage as D;
    Ok(match img {
        D::ImageLuma8(g) => gray8(g),
        D::ImageLuma16(g) => gray16(g),
        // 16-bit colour keeps its depth; everything else becomes 8-bit luma
        D::ImageLumaA16(_) | D::ImageRgb16(_) | D::ImageRgba16(_) => gray16(img.to_luma16()),
        other => gray8(other.to_luma8()),
    })
}
