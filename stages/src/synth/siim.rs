//! The SIIM-ACR Pneumothorax (stage 1) miniature: JPEG-baseline DICOMs in the study/series folder
//! tree and `train-rle.csv` with one RLE row per drawn region (` -1` for a negative image).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::VR;
use dicom_dictionary_std::tags;
use rayon::prelude::*;

use super::formats::{write_dicom, DicomEncoding};
use super::render::{self, Finding, Rng, Side};
use super::{count, pick_side, write, Written};
use crate::error::Result;
use crate::masks::mask_to_rle;

pub(super) fn generate(out: &Path, n: usize, seed: u64, size: u32) -> Result<Written> {
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
    Ok(Written { images: n, labels })
}
