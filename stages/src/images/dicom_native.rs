//! Uncompressed DICOM read in place: the header parsed by `dicom-object` up to the pixel data, the
//! pixel data located in the file's bytes by a top-level walk and sliced where it lies.
//!
//! Only what the general path would accept the same way takes this path; anything else (another
//! transfer syntax, a header it would refuse, per-frame functional groups, colour) returns `None`
//! and the caller decodes through `dicom-pixeldata`, which reports the error or handles the case.

use std::path::Path;

use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;

use super::dicom::{frame_limit_check, transfer_syntax_of, DicomPixels, FrameHeader};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const UNDEFINED: u32 = 0xffff_ffff;

/// The first frame of a native (uncompressed, little-endian) grayscale file, its samples left in
/// `bytes` (the whole file, already length-checked). `None`: take the general path.
pub(super) fn open_native(path: &Path, bytes: Vec<u8>) -> Option<DicomPixels> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let transfer_syntax = transfer_syntax_of(&bytes);
    let explicit = match transfer_syntax.as_str() {
        IMPLICIT_LE => false,
        EXPLICIT_LE => true,
        _ => return None,
    };
    let (offset, len) = pixel_data_at(&bytes, explicit)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(ReadPreamble::Always)
        .from_reader(&bytes[..])
        .ok()?;
    if obj.meta().transfer_syntax().trim_end_matches('\0') != transfer_syntax {
        return None;
    }
    let u16_of = |tag| obj.element(tag).ok()?.uint16().ok();
    let string_of = |tag| {
        Some(
            obj.element(tag)
                .ok()?
                .string()
                .ok()?
                .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string(),
        )
    };
    let present = |tag| obj.element(tag).is_ok();
    // Per-frame or shared functional groups can carry rescale and windowing: the general path.
    if present(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        || present(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
    {
        return None;
    }
    // What `dicom-pixeldata` requires of the header, each value as it reads it.
    let (cols, rows) = (u16_of(tags::COLUMNS)?, u16_of(tags::ROWS)?);
    let photometric = string_of(tags::PHOTOMETRIC_INTERPRETATION)?;
    let monochrome1 = match photometric.as_str() {
        "MONOCHROME1" => true,
        "MONOCHROME2" => false,
        _ => return None,
    };
    if u16_of(tags::SAMPLES_PER_PIXEL)? != 1 {
        return None;
    }
    if let Ok(e) = obj.element(tags::PLANAR_CONFIGURATION) {
        if !matches!(e.to_int::<i16>().ok()?, 0 | 1) {
            return None;
        }
    }
    let bits_allocated = u16_of(tags::BITS_ALLOCATED)?;
    let bits_stored = u16_of(tags::BITS_STORED)?;
    u16_of(tags::HIGH_BIT)?;
    let signed = match u16_of(tags::PIXEL_REPRESENTATION)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    if let Ok(e) = obj.element(tags::NUMBER_OF_FRAMES) {
        if !e.is_empty() && e.to_int::<i32>().ok()? <= 0 {
            return None;
        }
    }
    if let Ok(e) = obj.element(tags::VOILUT_FUNCTION) {
        e.string().ok()?;
    }
    // Rescale: both or neither, each one finite number, as the general path reads them.
    let float = |tag| obj.element(tag).ok().map(|e| e.to_finite_float64().ok());
    let rescale = match (float(tags::RESCALE_SLOPE), float(tags::RESCALE_INTERCEPT)) {
        (None, None) => (1.0, 0.0),
        (Some(Some(s)), Some(Some(i))) => (s, i),
        _ => return None,
    };
    // The decode limits, as the general path checks them; over a limit, it reports the error.
    frame_limit_check(path, &obj).ok()?;
    let header = FrameHeader {
        width: cols.into(),
        height: rows.into(),
        bits_allocated,
        bits_stored,
        signed,
        rescale,
        monochrome1,
        transfer_syntax,
    };
    header.pixels(bytes, true, offset, len).ok()
}

/// The byte offset and length of the root data set's PixelData value (defined length), walking
/// the file meta group and then every top-level element, stepping over sequences whole.
fn pixel_data_at(bytes: &[u8], explicit: bool) -> Option<(usize, usize)> {
    let mut p = 132;
    // the meta group: explicit VR little endian
    while bytes.get(p..p + 2)? == [2, 0] {
        let (_, _, len, header) = element_header(bytes, p, true)?;
        p = p.checked_add(header + len as usize)?;
    }
    loop {
        let (group, elem, len, header) = element_header(bytes, p, explicit)?;
        if (group, elem) == (0x7fe0, 0x0010) {
            if len == UNDEFINED || (len as usize) > bytes.len() - (p + header) {
                return None;
            }
            return Some((p + header, len as usize));
        }
        if (group, elem) > (0x7fe0, 0x0010) {
            return None;
        }
        p += header;
        p = if len == UNDEFINED {
            skip_undefined(bytes, p, explicit)?
        } else {
            p.checked_add(len as usize)?
        };
    }
}

/// Tag, value length and header size of the element at `p`.
fn element_header(bytes: &[u8], p: usize, explicit: bool) -> Option<(u16, u16, u32, usize)> {
    const LONG: &[&[u8; 2]] = &[
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
    ];
    let h = bytes.get(p..p + 8)?;
    let group = u16::from_le_bytes([h[0], h[1]]);
    let elem = u16::from_le_bytes([h[2], h[3]]);
    if group == 0xfffe || !explicit {
        return Some((group, elem, u32::from_le_bytes([h[4], h[5], h[6], h[7]]), 8));
    }
    let vr = [h[4], h[5]];
    if LONG.contains(&&vr) {
        let l = bytes.get(p + 8..p + 12)?;
        let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
        // an undefined-length UN holds implicit VR: not walked here
        if &vr == b"UN" && len == UNDEFINED {
            return None;
        }
        Some((group, elem, len, 12))
    } else {
        Some((group, elem, u16::from_le_bytes([h[6], h[7]]) as u32, 8))
    }
}

/// The position after an undefined-length sequence whose items start at `p`.
fn skip_undefined(bytes: &[u8], mut p: usize, explicit: bool) -> Option<usize> {
    let mut depth = 1usize;
    while depth > 0 {
        let (group, elem, len, header) = element_header(bytes, p, explicit)?;
        p += header;
        match (group, elem, len) {
            (0xfffe, 0xe00d | 0xe0dd, _) => depth -= 1,
            (_, _, UNDEFINED) => depth += 1,
            _ => p = p.checked_add(len as usize)?,
        }
        if p > bytes.len() {
            return None;
        }
    }
    Some(p)
}
