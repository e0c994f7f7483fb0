//! The COVIDx CXR (9A layout) miniature: PNG and JPEG files of varied sizes under `train/` and
//! `test/`, listed in the space-separated `{train,test}_COVIDx9A.txt` files.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::formats::{encode_jpeg, encode_png};
use super::render::{self, Finding, Rng};
use super::{count, mkdir, pick_side, pick_zone, write, Written};
use crate::error::Result;

pub(super) fn generate(out: &Path, n: usize, seed: u64, size: u32) -> Result<Written> {
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
    Ok(Written { images: n, labels })
}
