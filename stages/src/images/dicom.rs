//! DICOM: a length check of the raw elements before any parser allocates, and the first frame's
//! stored values with what is needed to display them (rescale, MONOCHROME1, MGCA's 8-bit view).

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use super::dicom_native::open_native;
use super::raster::without_panics;
use super::samples::Samples;
use super::{DecodeLimits, Gray, GrayImage};
use crate::error::{Error, Result};

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
        Error::decode(
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
pub(super) fn transfer_syntax_of(bytes: &[u8]) -> String {
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
#[derive(Clone, Debug, PartialEq)]
pub struct DicomPixels {
    pub width: u32,
    pub height: u32,
    /// Stored values, masked to `bits_stored` and sign-extended when `signed` (read where they
    /// lie: in the file's bytes for uncompressed files, in the decoder's output otherwise).
    pub stored: Samples,
    pub bits_stored: u16,
    pub signed: bool,
    pub slope: f64,
    pub intercept: f64,
    /// MONOCHROME1: high values are dark, so display needs inversion.
    pub monochrome1: bool,
    pub transfer_syntax: String,
}

/// What a decoding path reads from the header about the first frame before it points at the
/// samples: [`FrameHeader::pixels`] is the one constructor of [`DicomPixels`] for both paths.
pub(super) struct FrameHeader {
    pub width: u32,
    pub height: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    /// (slope, intercept): modality value = stored × slope + intercept.
    pub rescale: (f64, f64),
    pub monochrome1: bool,
    pub transfer_syntax: String,
}

impl FrameHeader {
    /// The frame's `width × height` samples from byte `start` of `buf` (`in_file`: `buf` is the
    /// whole file's bytes), of which `available` bytes are pixel data: BitsAllocated 8, 16 or
    /// 32, BitsStored clamped to `1..=BitsAllocated`. `Err`: why the frame cannot be read.
    pub fn pixels(
        self,
        buf: Vec<u8>,
        in_file: bool,
        start: usize,
        available: usize,
    ) -> std::result::Result<DicomPixels, String> {
        let (width, height) = (self.width, self.height);
        if width == 0 || height == 0 {
            return Err(format!("the image is {width} × {height}: it has no pixels"));
        }
        let sample_width = match self.bits_allocated {
            8 => 1,
            16 => 2,
            32 => 4,
            other => return Err(format!("unsupported BitsAllocated {other}")),
        };
        let n = width as usize * height as usize;
        let bytes = n * sample_width;
        if available < bytes || buf.len() < start.saturating_add(bytes) {
            return Err(format!(
                "pixel data holds {available} bytes, fewer than {width}×{height} samples"
            ));
        }
        let bits_stored = self.bits_stored.clamp(1, self.bits_allocated);
        let bits = u32::from(bits_stored);
        Ok(DicomPixels {
            width,
            height,
            stored: Samples::new(buf, in_file, start, n, sample_width, bits, self.signed),
            bits_stored,
            signed: self.signed,
            slope: self.rescale.0,
            intercept: self.rescale.1,
            monochrome1: self.monochrome1,
            transfer_syntax: self.transfer_syntax,
        })
    }
}

impl DicomPixels {
    /// Reads and decodes the file's pixel data (first frame). The file is read once; an
    /// uncompressed grayscale file keeps its pixel data where it lies in those bytes (the header
    /// parsed up to the pixel data); any other file goes through `dicom-pixeldata`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        check_dicom_lengths(path, &bytes, bytes.len() as u64)?;
        let native =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_native(path, bytes)));
        if let Ok(Some(px)) = native {
            return Ok(px);
        }
        without_panics(path, "DICOM", || Self::open_checked(path))
    }

    /// Decodes through `dicom-pixeldata` whatever the transfer syntax (what [`Self::open`] does
    /// for files it cannot read in place); for comparisons of the two paths.
    pub fn open_general(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        check_dicom_lengths(path, &bytes, bytes.len() as u64)?;
        drop(bytes);
        without_panics(path, "DICOM", || Self::open_checked(path))
    }

    fn open_checked(path: &Path) -> Result<Self> {
        let obj = dicom_object::open_file(path).map_err(|e| Error::decode(path, e))?;
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
        frame_limit_check(path, &obj)?;
        // Only the first frame: a multi-frame file costs one frame's memory.
        let decoded = obj
            .decode_pixel_data_frame(0)
            .map_err(|e| Error::decode(path, e))?;
        let spp = decoded.samples_per_pixel();
        if spp != 1 {
            return Err(Error::decode(
                path,
                format!(
                    "{spp} samples per pixel ({}); only grayscale is supported",
                    decoded.photometric_interpretation()
                ),
            ));
        }
        let header = FrameHeader {
            width: decoded.columns(),
            height: decoded.rows(),
            bits_allocated: decoded.bits_allocated(),
            bits_stored: decoded.bits_stored(),
            signed: decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed,
            rescale: match decoded.rescale() {
                Ok([r, ..]) => (r.slope, r.intercept),
                _ => (1.0, 0.0),
            },
            monochrome1: decoded.photometric_interpretation().as_str() == "MONOCHROME1",
            transfer_syntax,
        };
        let data = decoded.data();
        header
            .pixels(data.to_vec(), false, 0, data.len())
            .map_err(|message| Error::decode(path, message))
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
                data: self.stored.map_through_lut(|s| f(s) as u8),
            })
        } else {
            let f = map(65535.0);
            GrayImage::Sixteen(Gray {
                width: self.width,
                height: self.height,
                data: self.stored.map_through_lut(|s| f(s) as u16),
            })
        }
    }
}

/// The decode limits against the size the header claims, checked before the pixel data is
/// decoded: rows × columns × (samples × bytes per sample + 4) bytes (the decoder's frame plus the
/// 4 bytes a pixel the stored values once took as i32, kept so the limits mean what they did).
pub(super) fn frame_limit_check(path: &Path, obj: &DefaultDicomObject) -> Result<()> {
    let header = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u64>().ok());
    if let (Some(rows), Some(cols)) = (header(tags::ROWS), header(tags::COLUMNS)) {
        let spp = header(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let sample_bytes = header(tags::BITS_ALLOCATED).unwrap_or(16).div_ceil(8);
        let per_pixel = spp.saturating_mul(sample_bytes).saturating_add(4);
        let bytes = rows.saturating_mul(cols).saturating_mul(per_pixel);
        DecodeLimits::current().check(path, cols, rows, bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgca_dicom_conversion_scales_by_max_and_inverts_monochrome1() {
        let px = DicomPixels {
            width: 3,
            height: 1,
            stored: Samples::from_values(&[0, 500, 1000], 12, false),
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
