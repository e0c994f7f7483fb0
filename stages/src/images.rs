//! Image decoding and the original's preprocessing arithmetic.
//!
//! Decodes JPEG, PNG and DICOM (uncompressed, RLE, JPEG baseline, deflate, JPEG 2000) into 8- or
//! 16-bit grayscale, and reimplements MGCA's `resize_img` (reference B.2): OpenCV `INTER_AREA`
//! resize of the longer side, then symmetric zero padding (floor/ceil) to a square.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;

use crate::error::{Error, Result};

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

/// What one decode may cost, checked against the file's header BEFORE any pixel buffer is
/// allocated, so a header claiming 65,535 × 65,535 pixels is an error naming the file instead of
/// a failed 34 GB allocation that aborts the process (ingest's `verify = "decode"` decodes in
/// the runner's own process). Process-wide: the `adaptor` and `adaptor-torch` binaries set it
/// from `ADAPTOR_MAX_IMAGE_PIXELS` and `ADAPTOR_MAX_IMAGE_BYTES` (README, "Bad input").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Width × height of one image (one DICOM frame). Default 2^28 (16,384 × 16,384).
    pub max_pixels: u64,
    /// Bytes of the decoded image at its stored depth and channel count (the decoder's output
    /// buffer; for DICOM the first frame). Default 1 GiB.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 1 << 28,
            max_bytes: 1 << 30,
        }
    }
}

impl DecodeLimits {
    /// The environment variables that override the defaults (read by the binaries only).
    pub const PIXELS_VAR: &'static str = "ADAPTOR_MAX_IMAGE_PIXELS";
    pub const BYTES_VAR: &'static str = "ADAPTOR_MAX_IMAGE_BYTES";

    /// The defaults with the given overrides (the values of [`Self::PIXELS_VAR`] and
    /// [`Self::BYTES_VAR`]); a value that is not a positive integer is an error naming it.
    pub fn with_overrides(pixels: Option<&str>, bytes: Option<&str>) -> Result<Self> {
        let parse = |name: &str, v: &str| -> Result<u64> {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::Invalid(format!("{name}=`{v}` is not a positive integer")))
        };
        let mut l = DecodeLimits::default();
        if let Some(v) = pixels {
            l.max_pixels = parse(Self::PIXELS_VAR, v)?;
        }
        if let Some(v) = bytes {
            l.max_bytes = parse(Self::BYTES_VAR, v)?;
        }
        Ok(l)
    }

    /// The limits every decode in this process uses.
    pub fn current() -> Self {
        *LIMITS.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the limits for every later decode in this process.
    pub fn set(self) {
        *LIMITS.write().unwrap_or_else(|e| e.into_inner()) = self;
    }

    /// Refuses an image of `width × height` whose decoded buffer takes `bytes`.
    pub fn check(&self, path: &Path, width: u64, height: u64, bytes: u64) -> Result<()> {
        let pixels = width.saturating_mul(height);
        if pixels > self.max_pixels {
            return Err(decode_err(
                path,
                format!(
                    "the header says {width} × {height} = {pixels} pixels, over the decode limit \
                     of {} pixels ({} raises it)",
                    self.max_pixels,
                    Self::PIXELS_VAR
                ),
            ));
        }
        if bytes > self.max_bytes {
            return Err(decode_err(
                path,
                format!(
                    "decoding the {width} × {height} image would take {bytes} bytes, over the \
                     decode memory budget of {} bytes ({} raises it)",
                    self.max_bytes,
                    Self::BYTES_VAR
                ),
            ));
        }
        Ok(())
    }
}

static LIMITS: RwLock<DecodeLimits> = RwLock::new(DecodeLimits {
    max_pixels: 1 << 28,
    max_bytes: 1 << 30,
});

fn decode_err(path: &Path, message: impl ToString) -> Error {
    Error::Decode {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Decodes any supported file to grayscale at its native depth. DICOM goes through
/// [`DicomPixels::to_gray`] (rescale, MONOCHROME1 inversion, full-range scaling).
pub fn decode(path: &Path) -> Result<GrayImage> {
    match ImageFormat::from_path(path) {
        Some(ImageFormat::Dicom) => Ok(DicomPixels::open(path)?.to_gray()),
        Some(_) => decode_raster(path),
        None => Err(decode_err(
            path,
            "unknown image extension (expected .jpg, .jpeg, .png or .dcm)",
        )),
    }
}

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
        Err(decode_err(
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
        return Err(decode_err(
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
    let decoder = reader.into_decoder().map_err(|e| decode_err(path, e))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    limits.check(
        path,
        w as u64,
        h as u64,
        image::ImageDecoder::total_bytes(&decoder),
    )?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| decode_err(path, e))?;
    use image::DynamicImage as D;
    Ok(match img {
        D::ImageLuma8(g) => GrayImage::Eight(Gray {
            width: g.width(),
            height: g.height(),
            data: g.into_raw(),
        }),
        D::ImageLuma16(g) => GrayImage::Sixteen(Gray {
            width: g.width(),
            height: g.height(),
            data: g.into_raw(),
        }),
        D::ImageLumaA16(_) | D::ImageRgb16(_) | D::ImageRgba16(_) => {
            let g = img.to_luma16();
            GrayImage::Sixteen(Gray {
                width: g.width(),
                height: g.height(),
                data: g.into_raw(),
            })
        }
        other => {
            let g = other.to_luma8();
            GrayImage::Eight(Gray {
                width: g.width(),
                height: g.height(),
                data: g.into_raw(),
            })
        }
    })
}

/// Refuses a DICOM file any of whose data elements declares a length running past the end of the
/// file, before a parser reserves (and zero-fills) that many bytes: `dicom-object` allocates a
/// value's declared length, up to 4 GiB, before reading it. Walks the file meta group and then the
/// data set in explicit or implicit VR little endian, into sequences and items (and over the
/// fragments of encapsulated pixel data); other transfer syntaxes (big endian, deflated) and
/// files without the `DICM` preamble are left to the parser. Linear in the file size.
/// `bytes` may be a prefix of the file (the walk stops at its end); lengths are checked against
/// `file_len`, the whole file's size.
pub fn check_dicom_lengths(path: &Path, bytes: &[u8], file_len: u64) -> Result<()> {
    const EXPLICIT_LONG: &[&[u8; 2]] = &[
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
    ];
    const UNDEFINED: u32 = 0xffff_ffff;
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Ok(());
    }
    let u16_at = |p: usize| u16::from_le_bytes([bytes[p], bytes[p + 1]]);
    let u32_at =
        |p: usize| u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]);
    let end = bytes.len();
    let file_end = file_len.max(end as u64);
    // bytes of the file left after position `p`
    let left = |p: usize| file_end.saturating_sub(p as u64);
    let past_end = |p: usize, group: u16, elem: u16, len: u32| {
        decode_err(
            path,
            format!(
                "DICOM element ({group:04X},{elem:04X}) at byte {p} declares {len} bytes, but the \
                 file ends {} bytes later (a corrupt or crafted length)",
                left(p)
            ),
        )
    };
    let mut p = 132;
    let mut explicit = true;
    let mut in_meta = true;
    let mut fragments = false;
    while p + 8 <= end {
        let (group, elem) = (u16_at(p), u16_at(p + 2));
        if in_meta && group != 0x0002 {
            in_meta = false;
            // the transfer syntax decides how the data set is encoded
            let ts = transfer_syntax_of(bytes);
            match ts.as_str() {
                "1.2.840.10008.1.2" => explicit = false,
                "1.2.840.10008.1.2.2" | "1.2.840.10008.1.2.1.99" => return Ok(()),
                _ => explicit = true,
            }
            continue;
        }
        if group == 0xfffe {
            // item, item delimiter or sequence delimiter: always tag + 4-byte length
            let len = u32_at(p + 4);
            match elem {
                0xe000 if len != UNDEFINED => {
                    if len as u64 > left(p + 8) {
                        return Err(past_end(p, group, elem, len));
                    }
                    // a fragment's bytes are not elements; an item's are: walk into it
                    p += 8 + if fragments { len as usize } else { 0 };
                }
                0xe0dd => {
                    fragments = false;
                    p += 8;
                }
                _ => p += 8,
            }
            continue;
        }
        let (vr, len, header) = if explicit || in_meta {
            let vr = [bytes[p + 4], bytes[p + 5]];
            if EXPLICIT_LONG.contains(&&vr) {
                if p + 12 > end {
                    return Ok(());
                }
                (Some(vr), u32_at(p + 8), 12)
            } else {
                (Some(vr), u16_at(p + 6) as u32, 8)
            }
        } else {
            (None, u32_at(p + 4), 8)
        };
        p += header;
        if len == UNDEFINED {
            // a sequence or encapsulated pixel data: its items follow
            fragments = (group, elem) == (0x7fe0, 0x0010);
            continue;
        }
        if len as u64 > left(p) {
            return Err(past_end(p - header, group, elem, len));
        }
        // an explicit-VR sequence of defined length: walk into its items
        if vr != Some(*b"SQ") {
            p += len as usize;
        }
    }
    Ok(())
}

/// The transfer syntax UID of the file meta group (0002,0010), or "" when absent.
fn transfer_syntax_of(bytes: &[u8]) -> String {
    let mut p = 132;
    while p + 8 <= bytes.len() && bytes[p..p + 2] == [2, 0] {
        let elem = u16::from_le_bytes([bytes[p + 2], bytes[p + 3]]);
        let vr = [bytes[p + 4], bytes[p + 5]];
        let (len, header) = if matches!(&vr, b"OB" | b"UN" | b"SQ" | b"UT" | b"UC" | b"UR") {
            if p + 12 > bytes.len() {
                break;
            }
            (
                u32::from_le_bytes([bytes[p + 8], bytes[p + 9], bytes[p + 10], bytes[p + 11]])
                    as usize,
                12,
            )
        } else {
            (u16::from_le_bytes([bytes[p + 6], bytes[p + 7]]) as usize, 8)
        };
        let Some(value) = bytes.get(p + header..(p + header).saturating_add(len)) else {
            break;
        };
        if elem == 0x0010 {
            return String::from_utf8_lossy(value)
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        p += header + len;
    }
    String::new()
}

/// The first frame of a grayscale DICOM image: stored values plus what is needed to interpret them.
#[derive(Clone, Debug)]
pub struct DicomPixels {
    pub width: u32,
    pub height: u32,
    /// Stored values, masked to `bits_stored` and sign-extended when `signed`.
    pub stored: Vec<i32>,
    pub bits_stored: u16,
    pub signed: bool,
    pub slope: f64,
    pub intercept: f64,
    /// MONOCHROME1: high values are dark, so display needs inversion.
    pub monochrome1: bool,
    pub transfer_syntax: String,
}

impl DicomPixels {
    /// Reads and decodes the file's pixel data (first frame).
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        check_dicom_lengths(path, &bytes, bytes.len() as u64)?;
        drop(bytes);
        without_panics(path, "DICOM", || Self::open_checked(path))
    }

    fn open_checked(path: &Path) -> Result<Self> {
        let obj = dicom_object::open_file(path).map_err(|e| decode_err(path, e))?;
        if obj.element(tags::PIXEL_DATA).is_err() {
            return Err(Error::NoPixelData {
                path: path.to_path_buf(),
            });
        }
        let transfer_syntax = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        // The size the header claims, checked before the pixel data is decoded (the decoder
        // allocates rows × columns × samples × bytes per sample for a frame; this reader then
        // keeps the values as i32, 4 more bytes per pixel).
        let header = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u64>().ok());
        if let (Some(rows), Some(cols)) = (header(tags::ROWS), header(tags::COLUMNS)) {
            let spp = header(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
            let sample_bytes = header(tags::BITS_ALLOCATED).unwrap_or(16).div_ceil(8);
            let per_pixel = spp.saturating_mul(sample_bytes).saturating_add(4);
            let bytes = rows.saturating_mul(cols).saturating_mul(per_pixel);
            DecodeLimits::current().check(path, cols, rows, bytes)?;
        }
        // Only the first frame: a multi-frame file costs one frame's memory.
        let decoded = obj
            .decode_pixel_data_frame(0)
            .map_err(|e| decode_err(path, e))?;
        let spp = decoded.samples_per_pixel();
        if spp != 1 {
            return Err(decode_err(
                path,
                format!(
                    "{spp} samples per pixel ({}); only grayscale is supported",
                    decoded.photometric_interpretation()
                ),
            ));
        }
        let (width, height) = (decoded.columns(), decoded.rows());
        if width == 0 || height == 0 {
            return Err(decode_err(
                path,
                format!("the image is {width} × {height}: it has no pixels"),
            ));
        }
        let n = width as usize * height as usize;
        let bits_allocated = decoded.bits_allocated();
        let bits_stored = decoded.bits_stored().clamp(1, bits_allocated.max(1));
        let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
        let data = decoded.data();
        let raw: Vec<u32> = match bits_allocated {
            8 => data.get(..n).map(|d| d.iter().map(|&b| b as u32).collect()),
            16 => data.get(..2 * n).map(|d| {
                d.chunks_exact(2)
                    .map(|c| u16::from_ne_bytes([c[0], c[1]]) as u32)
                    .collect()
            }),
            32 => data.get(..4 * n).map(|d| {
                d.chunks_exact(4)
                    .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }),
            other => {
                return Err(decode_err(
                    path,
                    format!("unsupported BitsAllocated {other}"),
                ))
            }
        }
        .ok_or_else(|| {
            decode_err(
                path,
                format!(
                    "pixel data holds {} bytes, fewer than {width}×{height} samples",
                    data.len()
                ),
            )
        })?;
        let bits = bits_stored as u32;
        let mask: u32 = if bits >= 32 {
            u32::MAX
        } else {
            (1u32 << bits) - 1
        };
        let stored = raw
            .into_iter()
            .map(|v| {
                let v = v & mask;
                if signed && bits < 32 && v & (1 << (bits - 1)) != 0 {
                    (v | !mask) as i32
                } else {
                    v as i32
                }
            })
            .collect();
        let (slope, intercept) = match decoded.rescale() {
            Ok([r, ..]) => (r.slope, r.intercept),
            _ => (1.0, 0.0),
        };
        let monochrome1 = decoded.photometric_interpretation().as_str() == "MONOCHROME1";
        Ok(DicomPixels {
            width,
            height,
            stored,
            bits_stored,
            signed,
            slope,
            intercept,
            monochrome1,
            transfer_syntax,
        })
    }

    /// The modality values of the smallest and largest storable values (the output range's ends).
    fn modality_range(&self) -> (f64, f64) {
        let b = self.bits_stored.min(31) as i32;
        let (lo, hi) = if self.signed {
            (-(1i64 << (b - 1)), (1i64 << (b - 1)) - 1)
        } else {
            (0, (1i64 << b) - 1)
        };
        (
            lo as f64 * self.slope + self.intercept,
            hi as f64 * self.slope + self.intercept,
        )
    }

    /// Display-ready grayscale: modality values (`stored · slope + intercept`) mapped linearly from
    /// the storable range to the full output range, inverted for MONOCHROME1. 8-bit output when
    /// `bits_stored ≤ 8`, else 16-bit. Content-independent: the same stored value always maps to the
    /// same output value within a series.
    pub fn to_gray(&self) -> GrayImage {
        let (lo, hi) = self.modality_range();
        let span = if hi != lo { hi - lo } else { 1.0 };
        let map = |max: f64| {
            move |s: i32| {
                let v = s as f64 * self.slope + self.intercept;
                let t = ((v - lo) / span * max).round().clamp(0.0, max);
                if self.monochrome1 {
                    max - t
                } else {
                    t
                }
            }
        };
        if self.bits_stored <= 8 {
            let f = map(255.0);
            GrayImage::Eight(Gray {
                width: self.width,
                height: self.height,
                data: self.map_through_lut(|s| f(s) as u8),
            })
        } else {
            let f = map(65535.0);
            GrayImage::Sixteen(Gray {
                width: self.width,
                height: self.height,
                data: self.map_through_lut(|s| f(s) as u16),
            })
        }
    }

    /// The original's 8-bit conversion (MGCA `read_from_dicom`, reference B.2): pydicom's raw
    /// `pixel_array` (no rescale) → `cv2.convertScaleAbs(x, alpha=255/x.max())` → `255 - x` for
    /// MONOCHROME1. OpenCV computes `|x·alpha|` in f32 and rounds half to even.
    pub fn to_gray8_mgca(&self) -> Gray8 {
        let max = self.stored.iter().copied().max().unwrap_or(0);
        let alpha = (255.0f64 / max as f64) as f32;
        let f = |s: i32| {
            let v = (s as f32 * alpha).abs();
            let v = if v.is_finite() {
                v.round_ties_even().clamp(0.0, 255.0) as u8
            } else {
                0
            };
            if self.monochrome1 {
                255 - v
            } else {
                v
            }
        };
        Gray {
            width: self.width,
            height: self.height,
            data: self.map_through_lut(f),
        }
    }

    /// Applies `f` to every stored value, through a lookup table when the value range is small
    /// (always for ≤ 16-bit data), so per-pixel cost is one load.
    fn map_through_lut<U: Copy>(&self, f: impl Fn(i32) -> U) -> Vec<U> {
        let (Some(&lo), Some(&hi)) = (self.stored.iter().min(), self.stored.iter().max()) else {
            return Vec::new();
        };
        if (hi as i64 - lo as i64) < (1 << 17) {
            let lut: Vec<U> = (lo..=hi).map(&f).collect();
            self.stored
                .iter()
                .map(|&s| lut[(s - lo) as usize])
                .collect()
        } else {
            self.stored.iter().map(|&s| f(s)).collect()
        }
    }
}

/// The original's loader for one file (`get_imgs` / `read_from_dicom` + `resize_img`): 8-bit gray,
/// longer side resized to `imsize`, zero-padded to `imsize × imsize`.
pub fn load_mgca(path: &Path, imsize: u32) -> Result<Gray8> {
    let gray = match ImageFormat::from_path(path) {
        Some(ImageFormat::Dicom) => DicomPixels::open(path)?.to_gray8_mgca(),
        _ => decode_raster(path)?.to_gray8(),
    };
    Ok(resize_img(&gray, imsize))
}

/// Decodes and preprocesses many files in parallel (rayon, current pool), in input order.
pub fn load_mgca_many(paths: &[PathBuf], imsize: u32) -> Vec<Result<Gray8>> {
    paths.par_iter().map(|p| load_mgca(p, imsize)).collect()
}

// ---------------------------------------------------------------------------------------------
// Resizing, exact to OpenCV's arithmetic where the original relies on it.

/// A pixel type OpenCV's resize supports; arithmetic runs in f32 (OpenCV's `WT` for these types).
pub trait Sample: Copy + Default + Send + Sync {
    /// True for integer types (rounding and OpenCV's 2×2 fixed-point fast path apply).
    const INTEGER: bool;
    fn to_f32(self) -> f32;
    fn to_i64(self) -> i64;
    /// `saturate_cast<T>(float)`: round half to even, clamp.
    fn from_f32(v: f32) -> Self;
    fn from_i64(v: i64) -> Self;
}

impl Sample for u8 {
    const INTEGER: bool = true;
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f32(v: f32) -> Self {
        v.round_ties_even().clamp(0.0, 255.0) as u8
    }
    fn from_i64(v: i64) -> Self {
        v.clamp(0, 255) as u8
    }
}

impl Sample for u16 {
    const INTEGER: bool = true;
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f32(v: f32) -> Self {
        v.round_ties_even().clamp(0.0, 65535.0) as u16
    }
    fn from_i64(v: i64) -> Self {
        v.clamp(0, 65535) as u16
    }
}

impl Sample for f32 {
    const INTEGER: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_i64(v: i64) -> Self {
        v as f32
    }
}

/// `cv2.resize(src, (dw, dh), interpolation=cv2.INTER_AREA)`.
///
/// Downscaling uses OpenCV's area averaging: the integer-factor fast path (2×2 blocks of integer
/// types round as `(sum + 2) >> 2`, other factors as `round(sum · (1/area))`) or, for fractional
/// factors, the fractional-coverage weights of `computeResizeAreaTab` accumulated in f32 in
/// OpenCV's order. Upscaling (in either direction) uses OpenCV's area-mode linear weights, in f32
/// rather than its 11-bit fixed point (may differ by 1 grey level).
pub fn resize_area<T: Sample>(src: &Gray<T>, dw: u32, dh: u32) -> Gray<T> {
    assert!(dw > 0 && dh > 0, "resize to an empty size");
    let (sw, sh) = (src.width as usize, src.height as usize);
    let (dwu, dhu) = (dw as usize, dh as usize);
    if sw == dwu && sh == dhu {
        return src.clone();
    }
    let inv_scale_x = dwu as f64 / sw as f64;
    let inv_scale_y = dhu as f64 / sh as f64;
    let scale_x = 1.0 / inv_scale_x;
    let scale_y = 1.0 / inv_scale_y;
    if scale_x >= 1.0 && scale_y >= 1.0 {
        let isx = scale_x.round() as usize;
        let isy = scale_y.round() as usize;
        if (scale_x - isx as f64).abs() < f64::EPSILON
            && (scale_y - isy as f64).abs() < f64::EPSILON
        {
            return area_fast(src, dwu, dhu, isx, isy);
        }
        return area_general(src, dwu, dhu, scale_x, scale_y);
    }
    linear_resize(src, dwu, dhu, true)
}

fn area_fast<T: Sample>(src: &Gray<T>, dw: usize, dh: usize, isx: usize, isy: usize) -> Gray<T> {
    let sw = src.width as usize;
    let area = isx * isy;
    let scale = 1.0f32 / area as f32;
    let mut out = vec![T::default(); dw * dh];
    out.par_chunks_mut(dw).enumerate().for_each(|(dy, row)| {
        let sy0 = dy * isy;
        for (dx, d) in row.iter_mut().enumerate() {
            let sx0 = dx * isx;
            if T::INTEGER {
                let mut sum = 0i64;
                for y in sy0..sy0 + isy {
                    let line = &src.data[y * sw + sx0..y * sw + sx0 + isx];
                    sum += line.iter().map(|v| v.to_i64()).sum::<i64>();
                }
                *d = if isx == 2 && isy == 2 {
                    T::from_i64((sum + 2) >> 2)
                } else {
                    T::from_f32(sum as f32 * scale)
                };
            } else {
                let mut sum = 0f32;
                for y in sy0..sy0 + isy {
                    for x in sx0..sx0 + isx {
                        sum += src.data[y * sw + x].to_f32();
                    }
                }
                *d = T::from_f32(sum * scale);
            }
        }
    });
    Gray {
        width: dw as u32,
        height: dh as u32,
        data: out,
    }
}

/// One entry of OpenCV's `DecimateAlpha` table: destination index, source index, weight.
#[derive(Clone, Copy)]
struct Decimate {
    di: usize,
    si: usize,
    alpha: f32,
}

fn area_tab(ssize: usize, dsize: usize, scale: f64) -> Vec<Decimate> {
    let mut tab = Vec::with_capacity(ssize * 2);
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell_width = scale.min(ssize as f64 - fsx1);
        let mut sx1 = fsx1.ceil() as i64;
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        sx1 = sx1.min(sx2);
        if sx1 as f64 - fsx1 > 1e-3 {
            tab.push(Decimate {
                di: dx,
                si: (sx1 - 1) as usize,
                alpha: ((sx1 as f64 - fsx1) / cell_width) as f32,
            });
        }
        for sx in sx1..sx2 {
            tab.push(Decimate {
                di: dx,
                si: sx as usize,
                alpha: (1.0 / cell_width) as f32,
            });
        }
        if fsx2 - sx2 as f64 > 1e-3 {
            let a = (fsx2 - sx2 as f64).min(1.0).min(cell_width) / cell_width;
            tab.push(Decimate {
                di: dx,
                si: sx2 as usize,
                alpha: a as f32,
            });
        }
    }
    tab
}

fn area_general<T: Sample>(
    src: &Gray<T>,
    dw: usize,
    dh: usize,
    scale_x: f64,
    scale_y: f64,
) -> Gray<T> {
    let (sw, sh) = (src.width as usize, src.height as usize);
    let xtab = area_tab(sw, dw, scale_x);
    let ytab = area_tab(sh, dh, scale_y);
    // The x table lists, per destination column, contiguous increasing source columns: store each
    // column's first source index and its weights, so the horizontal pass is a dot product.
    let mut spans: Vec<(usize, usize, usize)> = vec![(0, 0, 0); dw]; // (first source, weight offset, count)
    let weights: Vec<f32> = xtab.iter().map(|t| t.alpha).collect();
    for (k, t) in xtab.iter().enumerate() {
        let s = &mut spans[t.di];
        if s.2 == 0 {
            *s = (t.si, k, 0);
        }
        debug_assert_eq!(t.si, s.0 + s.2);
        s.2 += 1;
    }
    // Group the y table by destination row so rows can run in parallel; within a row the
    // accumulation order is OpenCV's (source rows in order, `sum = beta·buf` then `+=`; each
    // `buf[dx]` is `0 + Σ src·alpha` in source order).
    let mut rows: Vec<Vec<Decimate>> = vec![Vec::new(); dh];
    for e in &ytab {
        rows[e.di].push(*e);
    }
    let mut out = vec![T::default(); dw * dh];
    out.par_chunks_mut(dw)
        .zip(rows.par_iter())
        .for_each(|(drow, entries)| {
            let mut sum = vec![0f32; dw];
            for (i, e) in entries.iter().enumerate() {
                let srow = &src.data[e.si * sw..(e.si + 1) * sw];
                for (s, &(first, off, n)) in sum.iter_mut().zip(&spans) {
                    let b = srow[first..first + n]
                        .iter()
                        .zip(&weights[off..off + n])
                        .fold(0f32, |acc, (p, w)| acc + p.to_f32() * w);
                    if i == 0 {
                        *s = e.alpha * b;
                    } else {
                        *s += e.alpha * b;
                    }
                }
            }
            for (d, s) in drow.iter_mut().zip(&sum) {
                *d = T::from_f32(*s);
            }
        });
    Gray {
        width: dw as u32,
        height: dh as u32,
        data: out,
    }
}

/// Per-axis source index and weight of OpenCV's linear resize (`area_mode` picks the INTER_AREA
/// upscaling variant).
fn linear_tab(ssize: usize, dsize: usize, area_mode: bool) -> Vec<(usize, f32)> {
    let inv_scale = dsize as f64 / ssize as f64;
    let scale = 1.0 / inv_scale;
    (0..dsize)
        .map(|dx| {
            let (mut sx, mut fx);
            if !area_mode {
                fx = ((dx as f64 + 0.5) * scale - 0.5) as f32;
                sx = fx.floor() as i64;
                fx -= sx as f32;
            } else {
                sx = (dx as f64 * scale).floor() as i64;
                fx = ((dx + 1) as f64 - (sx + 1) as f64 * inv_scale) as f32;
                fx = if fx <= 0.0 { 0.0 } else { fx - fx.floor() };
            }
            if sx < 0 {
                fx = 0.0;
                sx = 0;
            }
            if sx >= ssize as i64 - 1 {
                fx = 0.0;
                sx = ssize as i64 - 1;
            }
            (sx as usize, fx)
        })
        .collect()
}

fn linear_resize<T: Sample>(src: &Gray<T>, dw: usize, dh: usize, area_mode: bool) -> Gray<T> {
    let sw = src.width as usize;
    let xt = linear_tab(sw, dw, area_mode);
    let yt = linear_tab(src.height as usize, dh, area_mode);
    let mut out = vec![T::default(); dw * dh];
    out.par_chunks_mut(dw).enumerate().for_each(|(dy, row)| {
        let (sy, fy) = yt[dy];
        let sy1 = (sy + 1).min(src.height as usize - 1);
        for (dx, d) in row.iter_mut().enumerate() {
            let (sx, fx) = xt[dx];
            let sx1 = (sx + 1).min(sw - 1);
            let p = |x: usize, y: usize| src.data[y * sw + x].to_f32();
            let top = p(sx, sy) * (1.0 - fx) + p(sx1, sy) * fx;
            let bot = p(sx, sy1) * (1.0 - fx) + p(sx1, sy1) * fx;
            *d = T::from_f32(top * (1.0 - fy) + bot * fy);
        }
    });
    Gray {
        width: dw as u32,
        height: dh as u32,
        data: out,
    }
}

/// `cv2.resize(src, (dw, dh))` with the default bilinear interpolation (half-pixel centres), in
/// f32 rather than OpenCV's fixed point: within 1 grey level of OpenCV.
pub fn resize_linear<T: Sample>(src: &Gray<T>, dw: u32, dh: u32) -> Gray<T> {
    if src.width == dw && src.height == dh {
        return src.clone();
    }
    linear_resize(src, dw as usize, dh as usize, false)
}

/// The target size and padding of MGCA's `resize_img(img, scale)`, with its exact arithmetic:
/// returns `(resized_w, resized_h, left, top)`. The longer side becomes `scale`; for square inputs
/// numpy's `shape.index(max)` picks the height branch. The shorter side is
/// `int(short · (scale / long))` (truncation, computed in f64 as Python does), and padding puts
/// `floor(pad/2)` before and `ceil(pad/2)` after.
pub fn resize_img_geometry(width: u32, height: u32, scale: u32) -> (u32, u32, u32, u32) {
    if height >= width {
        let wpercent = scale as f64 / height as f64;
        let hsize = (width as f64 * wpercent) as u32;
        let pad = scale - hsize;
        (hsize, scale, pad / 2, 0)
    } else {
        let hpercent = scale as f64 / width as f64;
        let wsize = (height as f64 * hpercent) as u32;
        let pad = scale - wsize;
        (scale, wsize, 0, pad / 2)
    }
}

/// MGCA `resize_img`: aspect-preserving `INTER_AREA` resize of the longer side to `scale`, then
/// zero padding to `scale × scale` (reference B.2).
pub fn resize_img<T: Sample>(src: &Gray<T>, scale: u32) -> Gray<T> {
    let (rw, rh, left, top) = resize_img_geometry(src.width, src.height, scale);
    let resized = resize_area(src, rw.max(1), rh.max(1));
    let mut out = Gray::<T>::new(scale, scale);
    let s = scale as usize;
    for y in 0..rh as usize {
        let dst = (y + top as usize) * s + left as usize;
        out.data[dst..dst + rw as usize]
            .copy_from_slice(&resized.data[y * rw as usize..(y + 1) * rw as usize]);
    }
    out
}

/// torchvision `CenterCrop((ch, cw))` on an image at least that large: offsets
/// `round((h - ch) / 2)`, `round((w - cw) / 2)` with Python's round-half-to-even. Smaller inputs
/// are zero-padded first, as torchvision does.
pub fn center_crop<T: Sample>(src: &Gray<T>, cw: u32, ch: u32) -> Gray<T> {
    let mut img = src.clone();
    if img.width < cw || img.height < ch {
        // torchvision pads (cw - w) // 2 left, the rest right (same for height).
        let pw = cw.saturating_sub(img.width);
        let ph = ch.saturating_sub(img.height);
        let (nw, nh) = (img.width + pw, img.height + ph);
        let mut padded = Gray::<T>::new(nw, nh);
        for y in 0..img.height as usize {
            let dst = (y + (ph / 2) as usize) * nw as usize + (pw / 2) as usize;
            padded.data[dst..dst + img.width as usize]
                .copy_from_slice(&img.data[y * img.width as usize..(y + 1) * img.width as usize]);
        }
        img = padded;
    }
    let top = ((img.height - ch) as f64 / 2.0).round_ties_even() as usize;
    let left = ((img.width - cw) as f64 / 2.0).round_ties_even() as usize;
    let mut out = Gray::<T>::new(cw, ch);
    for y in 0..ch as usize {
        let s = (y + top) * img.width as usize + left;
        out.data[y * cw as usize..(y + 1) * cw as usize]
            .copy_from_slice(&img.data[s..s + cw as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_img_geometry_matches_the_python_arithmetic() {
        // Portrait 3000×2500 (h×w) to 256: hsize = int(2500 · (256/3000)) = 213, pad 43 = 21 + 22.
        assert_eq!(resize_img_geometry(2500, 3000, 256), (213, 256, 21, 0));
        // Landscape: width fixed, pad the height.
        assert_eq!(resize_img_geometry(300, 200, 224), (224, 149, 0, 37));
        // Square takes the height branch and needs no padding.
        assert_eq!(resize_img_geometry(1024, 1024, 224), (224, 224, 0, 0));
        // RG1: 1841 wide, 1955 high.
        assert_eq!(resize_img_geometry(1841, 1955, 256), (241, 256, 7, 0));
    }

    #[test]
    fn area_fast_two_by_two_rounds_half_up() {
        let g = Gray {
            width: 2,
            height: 2,
            data: vec![0u8, 1, 0, 1],
        };
        assert_eq!(resize_area(&g, 1, 1).data, vec![1]); // (2 + 2) >> 2
        let g = Gray {
            width: 4,
            height: 1,
            data: vec![1u8, 2, 3, 4],
        };
        // 4:1 horizontal, 1:1 vertical: integer fast path with round(sum · 0.25) = round(2.5) = 2.
        assert_eq!(resize_area(&g, 1, 1).data, vec![2]);
    }

    #[test]
    fn area_general_preserves_constant_images() {
        let g = Gray {
            width: 7,
            height: 5,
            data: vec![100u8; 35],
        };
        let r = resize_area(&g, 3, 2);
        assert!(r.data.iter().all(|&v| v == 100), "{:?}", r.data);
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        let g = Gray {
            width: 5,
            height: 1,
            data: vec![0u8, 1, 2, 3, 4],
        };
        // (5 - 2) / 2 = 1.5 → 2.
        assert_eq!(center_crop(&g, 2, 1).data, vec![2, 3]);
        let g = Gray {
            width: 6,
            height: 1,
            data: vec![0u8, 1, 2, 3, 4, 5],
        };
        // (6 - 3) / 2 = 1.5 → 2; (6 - 1)/2 = 2.5 → 2.
        assert_eq!(center_crop(&g, 3, 1).data, vec![2, 3, 4]);
        assert_eq!(center_crop(&g, 1, 1).data, vec![2]);
    }

    #[test]
    fn mgca_dicom_conversion_scales_by_max_and_inverts_monochrome1() {
        let px = DicomPixels {
            width: 3,
            height: 1,
            stored: vec![0, 500, 1000],
            bits_stored: 12,
            signed: false,
            slope: 1.0,
            intercept: 0.0,
            monochrome1: true,
            transfer_syntax: String::new(),
        };
        // 500 · 0.255 = 127.5 → 128 (half to even), inverted 127.
        assert_eq!(px.to_gray8_mgca().data, vec![255, 127, 0]);
        let GrayImage::Sixteen(g) = px.to_gray() else {
            panic!("12-bit data gives 16-bit output")
        };
        assert_eq!(g.data[0], 65535);
        assert_eq!(
            g.data[2],
            65535 - (1000.0f64 / 4095.0 * 65535.0).round() as u16
        );
    }
}
