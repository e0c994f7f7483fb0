//! Synthetic miniatures of the four datasets in their exact raw layouts (reference E.1–E.4).
//!
//! Labels, reports, boxes and masks are derived from what the renderer drew, so a model can learn
//! them from the pixels. Every image has its own random stream derived from `(seed, dataset,
//! index)`: output is identical for the same arguments whatever the thread count.

pub mod render;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::images::Gray8;
use crate::masks::mask_to_rle;
use render::{Finding, Rng, Side, Zone};

/// The marker file a synth artifact carries so ingest knows the layout.
pub const MARKER: &str = "_dataset.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum SynthDataset {
    #[serde(rename = "mimic-cxr")]
    MimicCxr,
    #[serde(rename = "rsna")]
    Rsna,
    #[serde(rename = "covidx")]
    Covidx,
    #[serde(rename = "siim")]
    Siim,
}

impl SynthDataset {
    pub const NAMES: &'static [&'static str] = &["mimic-cxr", "rsna", "covidx", "siim"];

    pub fn name(self) -> &'static str {
        match self {
            SynthDataset::MimicCxr => "mimic-cxr",
            SynthDataset::Rsna => "rsna",
            SynthDataset::Covidx => "covidx",
            SynthDataset::Siim => "siim",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mimic-cxr" | "mimic" => Some(SynthDataset::MimicCxr),
            "rsna" => Some(SynthDataset::Rsna),
            "covidx" => Some(SynthDataset::Covidx),
            "siim" => Some(SynthDataset::Siim),
            _ => None,
        }
    }
}

impl fmt::Display for SynthDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`generate`] wrote; also the content of the marker file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SynthSummary {
    pub dataset: SynthDataset,
    pub n: usize,
    pub seed: u64,
    pub image_size: u32,
    /// Image files written (MIMIC-CXR includes lateral views).
    pub images: usize,
    /// Images per label (dataset-specific names: `normal`, `pneumonia`, `COVID-19`, ...).
    pub labels: BTreeMap<String, usize>,
}

/// The default image side: small enough that all four datasets at n = 200 generate in seconds.
pub const DEFAULT_IMAGE_SIZE: u32 = 256;

/// Writes a miniature of `dataset` into `out` (created if needed): `n` studies (MIMIC-CXR),
/// patients (RSNA) or images (COVIDx, SIIM), images of side `image_size`.
pub fn generate(dataset: SynthDataset, out: &Path, n: usize, seed: u64) -> Result<SynthSummary> {
    generate_with_size(dataset, out, n, seed, DEFAULT_IMAGE_SIZE)
}

pub fn generate_with_size(
    dataset: SynthDataset,
    out: &Path,
    n: usize,
    seed: u64,
    image_size: u32,
) -> Result<SynthSummary> {
    if n == 0 {
        return Err(Error::SynthParam {
            param: "n",
            message: "must be at least 1".into(),
        });
    }
    if !(32..=4096).contains(&image_size) {
        return Err(Error::SynthParam {
            param: "image_size",
            message: format!("{image_size} is outside 32..=4096"),
        });
    }
    mkdir(out)?;
    let (images, labels) = match dataset {
        SynthDataset::MimicCxr => mimic(out, n, seed, image_size)?,
        SynthDataset::Rsna => rsna(out, n, seed, image_size)?,
        SynthDataset::Covidx => covidx(out, n, seed, image_size)?,
        SynthDataset::Siim => siim(out, n, seed, image_size)?,
    };
    let summary = SynthSummary {
        dataset,
        n,
        seed,
        image_size,
        images,
        labels,
    };
    let marker = out.join(MARKER);
    std::fs::write(
        &marker,
        serde_json::to_vec_pretty(&summary).expect("summary serialises"),
    )
    .map_err(|e| Error::io(&marker, e))?;
    Ok(summary)
}

/// Reads the marker a synth artifact carries.
pub fn read_marker(root: &Path) -> Result<SynthSummary> {
    let path = root.join(MARKER);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Layout {
        path,
        message: format!("not a synth marker: {e}"),
    })
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_gz(path: &Path, text: &str) -> Result<()> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    write(path, &enc.finish().map_err(|e| Error::io(path, e))?)
}

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
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
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

fn count(labels: &mut BTreeMap<String, usize>, l: &str) {
    *labels.entry(l.to_string()).or_default() += 1;
}

fn pick_side(rng: &mut Rng) -> Side {
    if rng.chance(0.5) {
        Side::Right
    } else {
        Side::Left
    }
}

fn pick_zone(rng: &mut Rng) -> Zone {
    [Zone::Upper, Zone::Middle, Zone::Lower][rng.below(3)]
}

// ---------------------------------------------------------------------------------------------
// MIMIC-CXR-JPG 2.0.0

/// The 14 CheXpert label columns of `mimic-cxr-2.0.0-chexpert.csv`, in the file's order.
pub const CHEXPERT_LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
];

/// The fixed edge cases at the start of every MIMIC-CXR miniature (reference E.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MimicCase {
    /// Study 0: only a lateral image (dropped: no PA/AP view).
    LateralOnly,
    /// Study 1: a 2-word report (dropped: caption has fewer than 3 tokens).
    TwoWordReport,
    /// Study 2: official `validate` (→ `valid`).
    Validate,
    /// Study 3: official `test` (→ `valid`).
    Test,
    /// Study 4: a report without FINDINGS/IMPRESSION headers (dropped: no usable section).
    NoSections,
    Regular,
}

struct MimicStudy {
    subject: u64,
    study: u64,
    case: MimicCase,
    findings: Vec<Finding>,
    uncertain_pneumonia: bool,
    frontal: Option<(String, &'static str)>,
    lateral: Option<String>,
    split: &'static str,
}

fn mimic(out: &Path, n: usize, seed: u64, size: u32) -> Result<(usize, BTreeMap<String, usize>)> {
    let mut rng = Rng::derive(seed, "mimic-cxr/plan", 0);
    let base_subject = 10_000_000 + rng.below(500_000) as u64 * 10;
    let mut studies = Vec::with_capacity(n);
    for i in 0..n {
        let case = match i {
            0 => MimicCase::LateralOnly,
            1 => MimicCase::TwoWordReport,
            2 => MimicCase::Validate,
            3 => MimicCase::Test,
            4 => MimicCase::NoSections,
            _ => MimicCase::Regular,
        };
        let subject = base_subject + (i / 2) as u64 * 7 + 3;
        let study = 50_000_000 + rng.below(40_000_000) as u64 / 16 * 16 + i as u64;
        let roll = rng.f();
        let mut findings = Vec::new();
        if case == MimicCase::Regular || case == MimicCase::Validate || case == MimicCase::Test {
            if roll < 0.25 {
                findings.push(Finding::Opacity {
                    side: pick_side(&mut rng),
                    zone: pick_zone(&mut rng),
                    strength: 1.0,
                });
            } else if roll < 0.40 {
                findings.push(Finding::Effusion {
                    side: pick_side(&mut rng),
                });
            } else if roll < 0.50 {
                findings.push(Finding::Cardiomegaly);
            } else if roll < 0.58 {
                findings.push(Finding::Pneumothorax {
                    side: pick_side(&mut rng),
                });
            } else if roll < 0.63 {
                findings.push(Finding::Cardiomegaly);
                findings.push(Finding::Effusion {
                    side: pick_side(&mut rng),
                });
            }
        }
        let uncertain_pneumonia =
            findings.is_empty() && case == MimicCase::Regular && rng.chance(0.08);
        if uncertain_pneumonia {
            findings.push(Finding::Opacity {
                side: pick_side(&mut rng),
                zone: Zone::Lower,
                strength: 0.45,
            });
        }
        let dicom = |rng: &mut Rng| {
            format!(
                "{}-{}-{}-{}-{}",
                rng.hex(8),
                rng.hex(8),
                rng.hex(8),
                rng.hex(8),
                rng.hex(8)
            )
        };
        let frontal = (case != MimicCase::LateralOnly)
            .then(|| (dicom(&mut rng), if rng.chance(0.7) { "PA" } else { "AP" }));
        let lateral = (case == MimicCase::LateralOnly || rng.chance(0.75)).then(|| dicom(&mut rng));
        let split = match case {
            MimicCase::Validate => "validate",
            MimicCase::Test => "test",
            _ => {
                let r = rng.f();
                if r < 0.9 {
                    "train"
                } else if r < 0.95 {
                    "validate"
                } else {
                    "test"
                }
            }
        };
        studies.push(MimicStudy {
            subject,
            study,
            case,
            findings,
            uncertain_pneumonia,
            frontal,
            lateral,
            split,
        });
    }

    let files = out.join("files");
    let width = ((size as f32) * 0.86).round() as u32;
    let rendered: Vec<Result<usize>> = studies
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let dir = files
                .join(format!("p{}", &s.subject.to_string()[..2]))
                .join(format!("p{}", s.subject));
            let report = mimic_report(s, &mut Rng::derive(seed, "mimic-cxr/report", i as u64));
            write(&dir.join(format!("s{}.txt", s.study)), report.as_bytes())?;
            let sdir = dir.join(format!("s{}", s.study));
            let mut written = 0;
            if let Some((id, _)) = &s.frontal {
                let r = render::frontal(
                    width,
                    size,
                    &mut Rng::derive(seed, "mimic-cxr/frontal", i as u64),
                    &s.findings,
                );
                write(&sdir.join(format!("{id}.jpg")), &encode_jpeg(&r.image, 92))?;
                written += 1;
            }
            if let Some(id) = &s.lateral {
                let img = render::lateral(
                    size,
                    size,
                    &mut Rng::derive(seed, "mimic-cxr/lateral", i as u64),
                );
                write(&sdir.join(format!("{id}.jpg")), &encode_jpeg(&img, 92))?;
                written += 1;
            }
            Ok(written)
        })
        .collect();
    let mut images = 0;
    for r in rendered {
        images += r?;
    }

    let mut meta = String::from(
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,\
         StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,\
         PatientOrientationCodeSequence_CodeMeaning\n",
    );
    let mut split = String::from("dicom_id,study_id,subject_id,split\n");
    let mut chexpert = format!("subject_id,study_id,{}\n", CHEXPERT_LABELS.join(","));
    let mut labels = BTreeMap::new();
    for (i, s) in studies.iter().enumerate() {
        let date = 21000101 + (i % 28) as u64;
        if let Some((id, view)) = &s.frontal {
            let desc = if *view == "PA" {
                "CHEST (PA AND LAT)"
            } else {
                "CHEST (PORTABLE AP)"
            };
            let vm = if *view == "PA" {
                "postero-anterior"
            } else {
                "antero-posterior"
            };
            meta.push_str(&format!(
                "{id},{},{},{desc},{view},{size},{width},{date},{}.0,{desc},{vm},Erect\n",
                s.subject,
                s.study,
                100000 + i
            ));
            split.push_str(&format!("{id},{},{},{}\n", s.study, s.subject, s.split));
        }
        if let Some(id) = &s.lateral {
            meta.push_str(&format!(
                "{id},{},{},CHEST (PA AND LAT),LATERAL,{size},{size},{date},{}.0,CHEST (PA AND LAT),lateral,Erect\n",
                s.subject,
                s.study,
                100000 + i
            ));
            split.push_str(&format!("{id},{},{},{}\n", s.study, s.subject, s.split));
        }
        let values = chexpert_values(s);
        let cells: Vec<String> = values
            .iter()
            .map(|v| v.map(|x| format!("{x:.1}")).unwrap_or_default())
            .collect();
        chexpert.push_str(&format!("{},{},{}\n", s.subject, s.study, cells.join(",")));
        for (name, v) in CHEXPERT_LABELS.iter().zip(values) {
            if v == Some(1.0) {
                count(&mut labels, name);
            }
        }
    }
    write_gz(&out.join("mimic-cxr-2.0.0-metadata.csv.gz"), &meta)?;
    write_gz(&out.join("mimic-cxr-2.0.0-split.csv.gz"), &split)?;
    write_gz(&out.join("mimic-cxr-2.0.0-chexpert.csv.gz"), &chexpert)?;
    Ok((images, labels))
}

fn chexpert_values(s: &MimicStudy) -> [Option<f32>; 14] {
    let mut v: [Option<f32>; 14] = [None; 14];
    let idx = |name: &str| {
        CHEXPERT_LABELS
            .iter()
            .position(|l| *l == name)
            .expect("known label")
    };
    if matches!(
        s.case,
        MimicCase::TwoWordReport | MimicCase::NoSections | MimicCase::LateralOnly
    ) {
        v[idx("No Finding")] = Some(1.0);
        return v;
    }
    if s.findings.is_empty() {
        v[idx("No Finding")] = Some(1.0);
        v[idx("Pneumothorax")] = Some(0.0);
        return v;
    }
    for f in &s.findings {
        match f {
            Finding::Opacity { .. } if s.uncertain_pneumonia => {
                v[idx("Pneumonia")] = Some(-1.0);
                v[idx("Lung Opacity")] = Some(1.0);
            }
            Finding::Opacity { .. } => {
                v[idx("Pneumonia")] = Some(1.0);
                v[idx("Lung Opacity")] = Some(1.0);
                v[idx("Consolidation")] = Some(1.0);
            }
            Finding::Effusion { .. } => v[idx("Pleural Effusion")] = Some(1.0),
            Finding::Cardiomegaly => {
                v[idx("Cardiomegaly")] = Some(1.0);
                v[idx("Enlarged Cardiomediastinum")] = Some(1.0);
            }
            Finding::Pneumothorax { .. } => v[idx("Pneumothorax")] = Some(1.0),
            Finding::GroundGlass => v[idx("Lung Opacity")] = Some(1.0),
        }
    }
    if !s
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Pneumothorax { .. }))
    {
        v[idx("Pneumothorax")] = Some(0.0);
    }
    v
}

/// A report in MIMIC's layout: ` HEADER:` lines preceded by a newline and one space (the section
/// regex of reference E.1), blank lines as `\n \n`.
fn mimic_report(s: &MimicStudy, rng: &mut Rng) -> String {
    let view = s.frontal.as_ref().map(|f| f.1).unwrap_or("LATERAL");
    let exam = if view == "AP" {
        "CHEST (PORTABLE AP)"
    } else {
        "CHEST (PA AND LAT)"
    };
    let indications = [
        "cough and fever",
        "shortness of breath",
        "chest pain",
        "evaluate for pneumonia",
        "dyspnea",
    ];
    let mut r = format!(
        "                                 FINAL REPORT\n EXAMINATION:  {exam}\n \n INDICATION:  ___ with {}.\n \n \
         COMPARISON:  {}\n \n",
        indications[rng.below(indications.len())],
        if rng.chance(0.5) { "None." } else { "Prior chest radiograph from ___." }
    );
    match s.case {
        MimicCase::TwoWordReport => {
            r.push_str(" IMPRESSION:  No change.\n");
            return r;
        }
        MimicCase::NoSections => {
            r.push_str(" NOTIFICATION:  Discussed with the referring team.\n \n Lungs appear clear without \
                        consolidation.\n");
            return r;
        }
        _ => {}
    }
    let mut found = Vec::new();
    let mut impressions = Vec::new();
    for f in &s.findings {
        match *f {
            Finding::Opacity { side, zone, .. } if s.uncertain_pneumonia => {
                found.push(format!(
                    "There is a subtle hazy opacity at the {} lung base.",
                    side.name()
                ));
                let _ = zone;
                impressions.push(format!(
                    "Subtle {} basilar opacity, atelectasis is favored but early pneumonia cannot be excluded.",
                    side.name()
                ));
            }
            Finding::Opacity { side, zone, .. } => {
                found.push(format!(
                    "There is a focal consolidation in the {} {} lung zone.",
                    side.name(),
                    zone.name()
                ));
                impressions.push(format!(
                    "{} {} lobe opacity concerning for pneumonia.",
                    capitalise(side.name()),
                    zone.name()
                ));
            }
            Finding::Effusion { side } => {
                found.push(format!(
                    "There is a moderate {} pleural effusion with blunting of the costophrenic angle.",
                    side.name()
                ));
                impressions.push(format!("{} pleural effusion.", capitalise(side.name())));
            }
            Finding::Cardiomegaly => {
                found.push("The heart is enlarged.".into());
                impressions.push("Cardiomegaly.".into());
            }
            Finding::Pneumothorax { side } => {
                found.push(format!(
                    "There is a {} apical pneumothorax with a visible pleural line.",
                    side.name()
                ));
                impressions.push(format!("{} pneumothorax.", capitalise(side.name())));
            }
            Finding::GroundGlass => {}
        }
    }
    if !s
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Pneumothorax { .. }))
    {
        found.push("No pneumothorax is seen.".into());
    }
    if s.findings.is_empty() {
        found.insert(0, "The lungs are clear without focal consolidation.".into());
        found.push("The cardiomediastinal silhouette is normal.".into());
        impressions.push(
            [
                "No acute cardiopulmonary process.",
                "No evidence of pneumonia.",
            ][rng.below(2)]
            .into(),
        );
    }
    r.push_str(&format!(
        " FINDINGS:  \n \n {}\n \n IMPRESSION:  \n \n {}\n",
        found.join(" "),
        impressions.join(" ")
    ));
    r
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// RSNA Pneumonia Detection, stage 2

fn uuid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-{}-{}",
        rng.hex(8),
        rng.hex(4),
        rng.hex(3),
        rng.hex(4),
        rng.hex(12)
    )
}

fn rsna(out: &Path, n: usize, seed: u64, size: u32) -> Result<(usize, BTreeMap<String, usize>)> {
    let mut plan_rng = Rng::derive(seed, "rsna/plan", 0);
    let patients: Vec<(String, Vec<Finding>)> = (0..n)
        .map(|_| {
            let id = uuid(&mut plan_rng);
            let mut f = Vec::new();
            if plan_rng.chance(0.35) {
                let side = pick_side(&mut plan_rng);
                f.push(Finding::Opacity {
                    side,
                    zone: pick_zone(&mut plan_rng),
                    strength: 1.0,
                });
                if plan_rng.chance(0.3) {
                    let other = if side == Side::Right {
                        Side::Left
                    } else {
                        Side::Right
                    };
                    f.push(Finding::Opacity {
                        side: other,
                        zone: pick_zone(&mut plan_rng),
                        strength: 1.0,
                    });
                }
            }
            (id, f)
        })
        .collect();
    let dir = out.join("stage_2_train_images");
    mkdir(&dir)?;
    let boxes: Vec<Result<Vec<[f32; 4]>>> = patients
        .par_iter()
        .enumerate()
        .map(|(i, (id, findings))| {
            let r = render::frontal(
                size,
                size,
                &mut Rng::derive(seed, "rsna/image", i as u64),
                findings,
            );
            let view = if i % 3 == 0 { "AP" } else { "PA" };
            write_dicom(
                &dir.join(format!("{id}.dcm")),
                &r.image,
                &format!("1.2.826.0.1.3680043.10.{seed}.{i}"),
                &[
                    (tags::PATIENT_ID, VR::LO, id),
                    (tags::PATIENT_NAME, VR::PN, id),
                    (tags::VIEW_POSITION, VR::CS, view),
                    (
                        tags::STUDY_INSTANCE_UID,
                        VR::UI,
                        &format!("1.2.826.0.1.3680043.10.{seed}.{i}.1"),
                    ),
                    (
                        tags::SERIES_INSTANCE_UID,
                        VR::UI,
                        &format!("1.2.826.0.1.3680043.10.{seed}.{i}.2"),
                    ),
                ],
                DicomEncoding::Uncompressed,
            )?;
            Ok(r.boxes)
        })
        .collect();
    let mut csv = String::from("patientId,x,y,width,height,Target\n");
    let mut labels = BTreeMap::new();
    for ((id, _), b) in patients.iter().zip(boxes) {
        let b = b?;
        if b.is_empty() {
            csv.push_str(&format!("{id},,,,,0\n"));
            count(&mut labels, "normal");
        } else {
            for [x, y, w, h] in b {
                csv.push_str(&format!("{id},{x:.1},{y:.1},{w:.1},{h:.1},1\n"));
            }
            count(&mut labels, "pneumonia");
        }
    }
    write(&out.join("stage_2_train_labels.csv"), csv.as_bytes())?;
    Ok((n, labels))
}

// ---------------------------------------------------------------------------------------------
// COVIDx CXR (9A layout)

fn covidx(out: &Path, n: usize, seed: u64, size: u32) -> Result<(usize, BTreeMap<String, usize>)> {
    let mut rng = Rng::derive(seed, "covidx/plan", 0);
    // (patient, file, class, source, test?, width, height)
    let mut items = Vec::with_capacity(n);
    let mut patient = 0usize;
    while items.len() < n {
        patient += 1;
        let class = ["normal", "pneumonia", "COVID-19"][rng.below(3)];
        let test = rng.chance(0.2);
        let per = if rng.chance(0.15) { 2 } else { 1 };
        for k in 0..per {
            if items.len() == n {
                break;
            }
            let ext = if rng.chance(0.5) { "png" } else { "jpg" };
            let w = (size as f32 * rng.range(0.85, 1.15)).round() as u32;
            let h = (size as f32 * rng.range(0.9, 1.2)).round() as u32;
            let source = ["cohen", "rsna", "actmed", "sirm"][rng.below(4)];
            let pid = format!("synth{patient:05}");
            items.push((
                pid.clone(),
                format!("{pid}-{k}.{ext}"),
                class,
                source,
                test,
                w,
                h,
            ));
        }
    }
    let written: Vec<Result<()>> = items
        .par_iter()
        .enumerate()
        .map(|(i, (_, file, class, _, test, w, h))| {
            let mut r = Rng::derive(seed, "covidx/image", i as u64);
            let findings = match *class {
                "pneumonia" => vec![Finding::Opacity {
                    side: pick_side(&mut r),
                    zone: pick_zone(&mut r),
                    strength: 1.0,
                }],
                "COVID-19" => vec![Finding::GroundGlass],
                _ => vec![],
            };
            let img = render::frontal(*w, *h, &mut r, &findings).image;
            let bytes = if file.ends_with(".png") {
                encode_png(&img)
            } else {
                encode_jpeg(&img, 92)
            };
            write(
                &out.join(if *test { "test" } else { "train" }).join(file),
                &bytes,
            )
        })
        .collect();
    written.into_iter().collect::<Result<()>>()?;
    let mut train = String::new();
    let mut test = String::new();
    let mut labels = BTreeMap::new();
    for (pid, file, class, source, is_test, _, _) in &items {
        let line = format!("{pid} {file} {class} {source}\n");
        if *is_test {
            test.push_str(&line)
        } else {
            train.push_str(&line)
        }
        count(&mut labels, class);
    }
    mkdir(&out.join("train"))?;
    mkdir(&out.join("test"))?;
    write(&out.join("train_COVIDx9A.txt"), train.as_bytes())?;
    write(&out.join("test_COVIDx9A.txt"), test.as_bytes())?;
    Ok((n, labels))
}

// ---------------------------------------------------------------------------------------------
// SIIM-ACR Pneumothorax (stage 1)

fn siim(out: &Path, n: usize, seed: u64, size: u32) -> Result<(usize, BTreeMap<String, usize>)> {
    let mut rng = Rng::derive(seed, "siim/plan", 0);
    let base = 1517875000 + rng.below(1000) as u64;
    let plan: Vec<(String, PathBuf, Vec<Finding>)> = (0..n)
        .map(|i| {
            let k = 1000 + i as u64 * 3 + rng.below(3) as u64;
            let image_id = format!(
                "1.2.276.0.7230010.3.1.4.8323329.{k}.{base}.{}",
                100000 + rng.below(900000)
            );
            let study = format!(
                "1.2.276.0.7230010.3.1.2.8323329.{k}.{base}.{}",
                100000 + rng.below(900000)
            );
            let series = format!(
                "1.2.276.0.7230010.3.1.3.8323329.{k}.{base}.{}",
                100000 + rng.below(900000)
            );
            let rel = PathBuf::from("dicom-images-train")
                .join(study)
                .join(series)
                .join(format!("{image_id}.dcm"));
            let mut f = Vec::new();
            if rng.chance(0.3) {
                if rng.chance(0.3) {
                    f.push(Finding::Pneumothorax { side: Side::Right });
                    f.push(Finding::Pneumothorax { side: Side::Left });
                } else {
                    f.push(Finding::Pneumothorax {
                        side: pick_side(&mut rng),
                    });
                }
            }
            (image_id, rel, f)
        })
        .collect();
    let rles: Vec<Result<Vec<String>>> = plan
        .par_iter()
        .enumerate()
        .map(|(i, (id, rel, findings))| {
            let r = render::frontal(
                size,
                size,
                &mut Rng::derive(seed, "siim/image", i as u64),
                findings,
            );
            write_dicom(
                &out.join(rel),
                &r.image,
                id,
                &[
                    (tags::PATIENT_ID, VR::LO, &format!("synth-{i}")),
                    (tags::VIEW_POSITION, VR::CS, "PA"),
                    (
                        tags::STUDY_INSTANCE_UID,
                        VR::UI,
                        &rel.components()
                            .nth(1)
                            .unwrap()
                            .as_os_str()
                            .to_string_lossy(),
                    ),
                    (
                        tags::SERIES_INSTANCE_UID,
                        VR::UI,
                        &rel.components()
                            .nth(2)
                            .unwrap()
                            .as_os_str()
                            .to_string_lossy(),
                    ),
                ],
                DicomEncoding::JpegBaseline,
            )?;
            Ok(r.regions
                .iter()
                .map(mask_to_rle)
                .filter(|s| s != "-1")
                .collect())
        })
        .collect();
    // The real header and values carry a leading space after the comma (reference E.3).
    let mut csv = String::from("ImageId, EncodedPixels\n");
    let mut labels = BTreeMap::new();
    for ((id, _, _), r) in plan.iter().zip(rles) {
        let r = r?;
        if r.is_empty() {
            csv.push_str(&format!("{id}, -1\n"));
            count(&mut labels, "negative");
        } else {
            for s in r {
                csv.push_str(&format!("{id}, {s}\n"));
            }
            count(&mut labels, "pneumothorax");
        }
    }
    write(&out.join("train-rle.csv"), csv.as_bytes())?;
    Ok((n, labels))
}
