//! Image and DICOM encoders for the synthetic files, and the hostile PNG the decode limits are
//! tested with.

use std::path::Path;

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::mkdir;
use crate::error::{Error, Result};
use crate::images::Gray8;

pub(crate) fn encode_jpeg(img: &Gray8, quality: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
        .encode(
            &img.data,
            img.width,
            img.height,
            image::ExtendedColorType::L8,
        )
        .expect("in-memory JPEG encoding");
    buf
}

/// A hostile PNG: a valid header claiming `width × height` RGBA at 16 bits per sample (8 bytes a
/// pixel: 65,535 × 65,535 claims 34 GB) and one tiny compressed row. What the decode limits are
/// tested with (`images::DecodeLimits`); a decoder without limits allocates the whole claim.
pub fn oversized_png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        // PNG's chunk CRC is zlib's CRC-32 of the type and data
        let mut crc = flate2::Crc::new();
        crc.update(&out[start..]);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([16, 6, 0, 0, 0]); // 16-bit RGBA, deflate, adaptive filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes (stored block)
    chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01,
        ],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

pub(crate) fn encode_png(img: &Gray8) -> Vec<u8> {
    use image::ImageEncoder;
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(
            &img.data,
            img.width,
            img.height,
            image::ExtendedColorType::L8,
        )
        .expect("in-memory PNG encoding");
    buf
}

/// How the pixel data of a synthetic DICOM is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DicomEncoding {
    Uncompressed,
    JpegBaseline,
}

/// Writes an 8-bit MONOCHROME2 DICOM (CR, chest) with the given identifying attributes.
pub(crate) fn write_dicom(
    path: &Path,
    img: &Gray8,
    sop_instance_uid: &str,
    attrs: &[(dicom_core::Tag, VR, &str)],
    encoding: DicomEncoding,
) -> Result<()> {
    let mut obj = InMemDicomObject::new_empty();
    let put = |obj: &mut InMemDicomObject, tag, vr, v: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    put(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    );
    put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid);
    put(&mut obj, tags::MODALITY, VR::CS, "CR");
    put(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    for (tag, vr, v) in attrs {
        put(&mut obj, *tag, *vr, v);
    }
    let us = |v: u16| PrimitiveValue::from(v);
    obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(1)));
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    ));
    obj.put(DataElement::new(tags::ROWS, VR::US, us(img.height as u16)));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        us(img.width as u16),
    ));
    obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, us(8)));
    obj.put(DataElement::new(tags::BITS_STORED, VR::US, us(8)));
    obj.put(DataElement::new(tags::HIGH_BIT, VR::US, us(7)));
    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(0)));
    let ts = match encoding {
        DicomEncoding::Uncompressed => {
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(img.data.clone()),
            ));
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        }
        DicomEncoding::JpegBaseline => {
            let jpeg = encode_jpeg(img, 95);
            let seq = PixelFragmentSequence::new(Vec::<u32>::new(), vec![jpeg]);
            obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
            uids::JPEG_BASELINE8_BIT
        }
    };
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop_instance_uid),
        )
        .map_err(|e| Error::Layout {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    file.write_to_file(path).map_err(|e| Error::Layout {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
