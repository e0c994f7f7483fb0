//! Image decoding and preprocessing against OpenCV/pydicom references and real files.

mod common;

use std::path::Path;

use stages::images::{self, DicomPixels, Gray8, GrayImage};

fn png(path: &Path) -> Gray8 {
    images::decode(path).unwrap().to_gray8()
}

fn max_diff(a: &Gray8, b: &Gray8) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn resize_matches_opencv_fixture() {
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::data("resize/cases.json")).unwrap()).unwrap();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let input = png(&common::data(&format!(
            "resize/{}",
            case["input"].as_str().unwrap()
        )));
        let expected = png(&common::data(&format!(
            "resize/{}",
            case["expected"].as_str().unwrap()
        )));
        let op = case["op"].as_str().unwrap();
        let (got, upscale) = match op {
            "resize_img" => {
                let s = case["scale"].as_u64().unwrap() as u32;
                (
                    images::resize_img(&input, s),
                    s > input.width.max(input.height),
                )
            }
            "area" | "linear" => {
                let (w, h) = (
                    case["width"].as_u64().unwrap() as u32,
                    case["height"].as_u64().unwrap() as u32,
                );
                let up = w > input.width || h > input.height;
                if op == "area" {
                    (images::resize_area(&input, w, h), up)
                } else {
                    (images::resize_linear(&input, w, h), true)
                }
            }
            _ => unreachable!(),
        };
        let d = max_diff(&got, &expected);
        // Downscaling INTER_AREA is bit-exact; upscaling and bilinear use f32 instead of OpenCV's
        // 11-bit fixed point and may differ by one grey level.
        let tolerance = if upscale { 1 } else { 0 };
        assert!(
            d <= tolerance,
            "{op} {case}: max difference {d} > {tolerance}"
        );
        checked += 1;
    }
    assert_eq!(checked, 35);
}

#[test]
fn real_chest_radiograph_decodes_with_monochrome1_inverted() {
    let path = common::asset("RG1_UNCR.dcm");
    let px = DicomPixels::open(&path).unwrap();
    assert_eq!((px.height, px.width), (1955, 1841));
    assert!(px.monochrome1);
    assert_eq!(px.bits_stored, 15);
    let (lo, hi) = (
        px.stored.iter().min().unwrap(),
        px.stored.iter().max().unwrap(),
    );
    assert_eq!((lo, hi), (874, 26479));
    // MONOCHROME1: the largest stored value (densest, displayed white in MONOCHROME2 terms... i.e.
    // darkest here) must come out darkest.
    let GrayImage::Sixteen(g) = px.to_gray() else {
        panic!("15-bit data must decode to 16 bits")
    };
    let at_max = px.stored.iter().position(|v| v == hi).unwrap();
    let at_min = px.stored.iter().position(|v| v == lo).unwrap();
    assert!(g.data[at_max] < g.data[at_min]);
    assert_eq!(
        g.data[at_max],
        65535 - (26479.0f64 / 32767.0 * 65535.0).round() as u16
    );

    // The original's path, compared with pydicom + OpenCV (tools/make_rg1_reference.py).
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::data("rg1_mgca_256.json")).unwrap()).unwrap();
    let g8 = px.to_gray8_mgca();
    let sum: u64 = g8.data.iter().map(|&v| v as u64).sum();
    assert_eq!(sum, reference["gray8_sum"].as_u64().unwrap());
    let r = images::resize_img(&g8, 256);
    assert_eq!(images::load_mgca(&path, 256).unwrap(), r);
    assert_eq!(
        r.data.iter().map(|&v| v as u64).sum::<u64>(),
        reference["resized_256_sum"].as_u64().unwrap()
    );
    for s in reference["resized_256_samples"].as_array().unwrap() {
        let (y, x, v) = (
            s[0].as_u64().unwrap() as u32,
            s[1].as_u64().unwrap() as u32,
            s[2].as_u64().unwrap(),
        );
        assert_eq!(r.get(x, y) as u64, v, "pixel ({x}, {y})");
    }
}

#[test]
fn jpeg2000_chest_radiograph_equals_the_uncompressed_one() {
    let a = DicomPixels::open(&common::asset("RG1_UNCR.dcm")).unwrap();
    let b = DicomPixels::open(&common::asset("RG1_J2KR.dcm")).unwrap();
    assert_eq!(b.transfer_syntax, "1.2.840.10008.1.2.4.90");
    assert_eq!((b.width, b.height), (a.width, a.height));
    assert!(
        a.stored == b.stored,
        "lossless JPEG 2000 must decode to the same samples"
    );
}

#[test]
fn ct_rescale_and_rle_transfer_syntax() {
    let ct = DicomPixels::open(&common::asset("CT_small.dcm")).unwrap();
    assert_eq!((ct.width, ct.height), (128, 128));
    assert!(ct.signed);
    assert_eq!(ct.intercept, -1024.0);
    let mr = DicomPixels::open(&common::asset("MR_small_RLE.dcm")).unwrap();
    assert_eq!(mr.transfer_syntax, "1.2.840.10008.1.2.5");
    assert!(matches!(mr.to_gray(), GrayImage::Sixteen(_)));
}

#[test]
fn dicom_without_pixel_data_is_an_error_naming_the_file() {
    let path = common::asset("rtplan.dcm");
    let e = images::decode(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: DICOM file has no pixel data (PixelData element 7FE0,0010 is absent)",
            path.display()
        )
    );
}

#[test]
fn truncated_jpeg_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::GrayImage::from_fn(64, 48, |x, y| image::Luma([(x * 3 + y) as u8]));
    let full = dir.path().join("full.jpg");
    img.save(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(images::decode(&full).is_ok());
    let e = images::decode(&cut).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot decode image: ", cut.display())),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Decode limits: a header claiming a huge image is an error naming the file, checked before any
// pixel buffer is allocated (without limits these allocate tens of GB and abort the process).

fn limit_err(path: &Path) -> String {
    let e = images::decode(path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot decode image: ", path.display())),
        "{e}"
    );
    e
}

#[test]
fn png_header_claiming_65535_squared_rgba16_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.png");
    std::fs::write(&path, stages::synth::oversized_png(65_535, 65_535)).unwrap();
    let e = limit_err(&path);
    assert!(
        e.contains(
            "the header says 65535 × 65535 = 4294836225 pixels, over the decode limit of \
             268435456 pixels (ADAPTOR_MAX_IMAGE_PIXELS raises it)"
        ),
        "{e}"
    );
    // Within the pixel limit (2^28), over the memory budget: 2 GiB of RGBA16.
    std::fs::write(&path, stages::synth::oversized_png(16_384, 16_384)).unwrap();
    let e = limit_err(&path);
    assert!(
        e.contains(
            "decoding the 16384 × 16384 image would take 2147483648 bytes, over the decode \
             memory budget of 1073741824 bytes (ADAPTOR_MAX_IMAGE_BYTES raises it)"
        ),
        "{e}"
    );
}

/// Replaces the 2-byte little-endian value of a DICOM US element (explicit or implicit VR).
fn patch_us(bytes: &mut [u8], group: u16, elem: u16, value: u16) {
    let tag = [group.to_le_bytes(), elem.to_le_bytes()].concat();
    let at = (0..bytes.len() - 10)
        .find(|&i| {
            bytes[i..i + 4] == tag[..]
                && (bytes[i + 4..i + 8] == *b"US\x02\x00" || bytes[i + 4..i + 8] == [2, 0, 0, 0])
        })
        .expect("element present");
    bytes[at + 8..at + 10].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn dicom_and_jpeg_headers_claiming_huge_images_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("rsna");
    stages::synth::generate_with_size(stages::synth::SynthDataset::Rsna, &raw, 2, 1, 32).unwrap();
    let dcm = std::fs::read_dir(raw.join("stage_2_train_images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&dcm).unwrap();
    patch_us(&mut bytes, 0x0028, 0x0010, 65_535); // Rows
    patch_us(&mut bytes, 0x0028, 0x0011, 65_535); // Columns
    let path = tmp.path().join("huge.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let e = limit_err(&path);
    assert!(
        e.contains("65535 × 65535 = 4294836225 pixels, over the decode limit"),
        "{e}"
    );
    let e = DicomPixels::open(&path).unwrap_err().to_string();
    assert!(e.contains("over the decode limit"), "{e}");

    let raw = tmp.path().join("mimic");
    stages::synth::generate_with_size(stages::synth::SynthDataset::MimicCxr, &raw, 1, 1, 32)
        .unwrap();
    let jpg = walk(&raw)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    let mut bytes = std::fs::read(&jpg).unwrap();
    // SOF0/SOF2: FF C0|C2, length (2), precision (1), height (2), width (2), big-endian
    let sof = (0..bytes.len() - 9)
        .find(|&i| bytes[i] == 0xff && matches!(bytes[i + 1], 0xc0 | 0xc2))
        .unwrap();
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let path = tmp.path().join("huge.jpg");
    std::fs::write(&path, &bytes).unwrap();
    limit_err(&path);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn decode_limits_are_overridable_and_bad_overrides_are_named() {
    use stages::images::DecodeLimits;
    let l = DecodeLimits::with_overrides(Some("1000"), Some(" 4096 ")).unwrap();
    assert_eq!((l.max_pixels, l.max_bytes), (1000, 4096));
    let d = DecodeLimits::with_overrides(None, None).unwrap();
    assert_eq!((d.max_pixels, d.max_bytes), (1 << 28, 1 << 30));
    let e = DecodeLimits::with_overrides(Some("lots"), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ADAPTOR_MAX_IMAGE_PIXELS=`lots` is not a positive integer"
    );
    // An image over a lowered limit is refused, with the numbers.
    let path = common::data("resize/in_97x131.png");
    let e = l.check(&path, 97, 131, 97 * 131).unwrap_err().to_string();
    assert!(
        e.contains("97 × 131 = 12707 pixels, over the decode limit of 1000"),
        "{e}"
    );
}

/// A DICOM element declaring more bytes than the file holds is refused before the parser
/// reserves (and zero-fills) up to 4 GiB for it.
#[test]
fn dicom_lengths_past_the_end_of_the_file_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("rsna");
    stages::synth::generate_with_size(stages::synth::SynthDataset::Rsna, &raw, 2, 1, 32).unwrap();
    let dcm = std::fs::read_dir(raw.join("stage_2_train_images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&dcm).unwrap();
    // (7FE0,0010) PixelData, explicit VR: tag, VR, 2 reserved bytes, 4-byte length
    let at = (0..bytes.len() - 12)
        .find(|&i| bytes[i..i + 4] == [0xe0, 0x7f, 0x10, 0x00] && bytes[i + 4] == b'O')
        .expect("pixel data");
    bytes[at + 8..at + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let path = tmp.path().join("lying.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let e = images::decode(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot decode image: DICOM element (7FE0,0010) at byte {at} declares 4294967280 bytes, but the file ends", path.display())),
        "{e}"
    );
    // the real files of the other tests pass the check
    for name in [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "RG1_UNCR.dcm",
        "RG1_J2KR.dcm",
    ] {
        let p = common::asset(name);
        let b = std::fs::read(&p).unwrap();
        images::check_dicom_lengths(&p, &b, b.len() as u64).unwrap();
    }
}

/// Found by the DICOM fuzz target: two bytes changed in an RLE segment of pydicom's
/// `MR_small_RLE.dcm` made the RLE codec index past its buffer. A codec panic is an error
/// naming the file, never a crash of the runner.
#[test]
fn a_panicking_dicom_codec_is_an_error_naming_the_file() {
    let mut bytes = std::fs::read(common::asset("MR_small_RLE.dcm")).unwrap();
    assert_eq!(&bytes[1751..1753], [251, 1]);
    bytes[1751..1753].copy_from_slice(&[1, 0]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rle.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let e = images::decode(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: cannot decode image: the DICOM decoder failed on corrupt data",
            path.display()
        )),
        "{e}"
    );
}
/// Found by the DICOM fuzz target: Rows = 0 decoded to an empty image, and the MGCA resize then
/// overflowed. An image without pixels is an error naming the file.
#[test]
fn a_dicom_with_no_rows_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("rsna");
    stages::synth::generate_with_size(stages::synth::SynthDataset::Rsna, &raw, 2, 1, 32).unwrap();
    let dcm = std::fs::read_dir(raw.join("stage_2_train_images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&dcm).unwrap();
    patch_us(&mut bytes, 0x0028, 0x0010, 0); // Rows
    let path = tmp.path().join("empty.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let e = images::load_mgca(&path, 16).unwrap_err().to_string();
    assert!(e.contains("has no pixels"), "{e}");
}

/// Uncompressed files are read in place (the samples left in the file's bytes) and give exactly
/// what `dicom-pixeldata` gives: the same header values, samples and 8/16-bit outputs.
#[test]
fn uncompressed_dicom_read_in_place_equals_the_general_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("rsna");
    stages::synth::generate_with_size(stages::synth::SynthDataset::Rsna, &raw, 2, 3, 48).unwrap();
    let rsna = walk(&raw)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    // The same file in implicit VR little endian.
    let implicit = tmp.path().join("implicit.dcm");
    let obj = dicom_object::open_file(&rsna).unwrap();
    let (class, instance) = (
        obj.meta().media_storage_sop_class_uid().to_string(),
        obj.meta().media_storage_sop_instance_uid().to_string(),
    );
    obj.into_inner()
        .with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2")
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(instance),
        )
        .unwrap()
        .write_to_file(&implicit)
        .unwrap();
    assert_eq!(&std::fs::read(&implicit).unwrap()[128..132], b"DICM");
    let files = [
        common::asset("RG1_UNCR.dcm"),
        common::asset("CT_small.dcm"),
        rsna,
        implicit,
    ];
    for path in &files {
        let fast = DicomPixels::open(path).unwrap();
        let general = DicomPixels::open_general(path).unwrap();
        assert!(
            fast.stored.file_offset().is_some(),
            "{} was not read in place",
            path.display()
        );
        assert!(general.stored.file_offset().is_none());
        assert_eq!(fast, general, "{}", path.display());
        assert_eq!(fast.to_gray(), general.to_gray());
        assert_eq!(fast.to_gray8_mgca(), general.to_gray8_mgca());
        // The original's loader, its 8-bit conversion fused with resize_img where the factor is
        // an integer (48 → 12, 16, 24: 4×4, 3×3, 2×2 blocks; CT 128 → 32, 64), byte for byte.
        for s in [12, 16, 24, 32, 48, 64, 100, 256] {
            let want = images::resize_img(&general.to_gray8_mgca(), s);
            assert_eq!(fast.resize_img_mgca(s), want, "{} at {s}", path.display());
            assert_eq!(images::load_mgca(path, s).unwrap(), want);
        }
    }
    // Compressed files (and the synthetic SIIM's JPEG baseline) take the general decoder.
    let raw = tmp.path().join("siim");
    stages::synth::generate_with_size(stages::synth::SynthDataset::Siim, &raw, 2, 3, 48).unwrap();
    let siim = walk(&raw)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    for path in [
        common::asset("RG1_J2KR.dcm"),
        common::asset("MR_small_RLE.dcm"),
        siim,
    ] {
        let px = DicomPixels::open(&path).unwrap();
        assert!(px.stored.file_offset().is_none(), "{}", path.display());
        assert_eq!(px, DicomPixels::open_general(&path).unwrap());
    }
}
