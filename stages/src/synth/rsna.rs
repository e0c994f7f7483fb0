//! The RSNA Pneumonia Detection (stage 2) miniature: one uncompressed DICOM per patient and the
//! box labels CSV, one row per box (a `0` row for a negative patient).

use std::collections::BTreeMap;
use std::path::Path;

use dicom_core::VR;
use dicom_dictionary_std::tags;
use rayon::prelude::*;

use super::formats::{write_dicom, DicomEncoding};
use super::render::{self, Finding, Rng, Side};
use super::{count, mkdir, pick_side, pick_zone, write, Written};
use crate::error::Result;

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

pub(super) fn generate(out: &Path, n: usize, seed: u64, size: u32) -> Result<Written> {
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
    Ok(Written { images: n, labels })
}
