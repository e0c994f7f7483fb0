//! Decode + preprocess throughput benchmark (bench/images/run.sh drives it).
//!
//! `bench_images gen DIR N_JPEG N_DICOM`: writes N_JPEG 2500×3000 JPEGs and N_DICOM 1024² DICOMs of
//! synthetic chests. `bench_images run DIR IMSIZE THREADS ROUNDS`: decodes every file and applies the
//! original's `resize_img(IMSIZE)` (MGCA path: DICOM via convertScaleAbs), ROUNDS times, with
//! THREADS rayon workers; prints images/s per format.

use std::path::{Path, PathBuf};
use std::time::Instant;

use stages::images;
use stages::synth::render::{frontal, Finding, Rng, Side, Zone};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => gen(
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        ),
        Some("synth") => {
            for ds in ["mimic-cxr", "rsna", "covidx", "siim"] {
                let t = Instant::now();
                let d = stages::synth::SynthDataset::parse(ds).unwrap();
                let s = stages::synth::generate(d, &Path::new(&args[2]).join(ds), 200, 0).unwrap();
                println!(
                    "synth {ds}: {} images in {:.2} s",
                    s.images,
                    t.elapsed().as_secs_f64()
                );
            }
        }
        Some("parts") => parts(Path::new(&args[2])),
        Some("run") => run(
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        _ => {
            eprintln!("usage: bench_images gen DIR N_JPEG N_DICOM | run DIR IMSIZE THREADS ROUNDS")
        }
    }
}

fn gen(dir: &Path, n_jpeg: usize, n_dcm: usize) {
    use rayon::prelude::*;
    std::fs::create_dir_all(dir.join("jpeg")).unwrap();
    std::fs::create_dir_all(dir.join("dicom")).unwrap();
    (0..n_jpeg).into_par_iter().for_each(|i| {
        let f = [Finding::Opacity {
            side: Side::Right,
            zone: Zone::Lower,
            strength: 1.0,
        }];
        let r = frontal(
            2500,
            3000,
            &mut Rng::new(i as u64),
            if i % 2 == 0 { &f } else { &[] },
        );
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
            .encode(&r.image.data, 2500, 3000, image::ExtendedColorType::L8)
            .unwrap();
        std::fs::write(dir.join(format!("jpeg/{i:03}.jpg")), buf).unwrap();
    });
    // DICOMs through the synth writer: RSNA-style uncompressed 8-bit 1024².
    let tmp = dir.join("rsna");
    stages::synth::generate_with_size(stages::synth::SynthDataset::Rsna, &tmp, n_dcm, 0, 1024)
        .unwrap();
    for (i, e) in std::fs::read_dir(tmp.join("stage_2_train_images"))
        .unwrap()
        .enumerate()
    {
        std::fs::rename(e.unwrap().path(), dir.join(format!("dicom/{i:03}.dcm"))).unwrap();
    }
    std::fs::remove_dir_all(tmp).unwrap();
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn run(dir: &Path, imsize: u32, threads: usize, rounds: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for kind in ["jpeg", "dicom"] {
        let files = list(&dir.join(kind));
        let all: Vec<PathBuf> = (0..rounds).flat_map(|_| files.iter().cloned()).collect();
        // Warm the page cache and check the outputs once.
        for f in &files {
            let out = images::load_mgca(f, imsize).unwrap();
            assert_eq!((out.width, out.height), (imsize, imsize));
        }
        let t = Instant::now();
        let out = pool.install(|| images::load_mgca_many(&all, imsize));
        let secs = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|r| r.is_ok()));
        println!(
            "rust\t{kind}\t{threads}\t{}\t{secs:.3}\t{:.1}",
            all.len(),
            all.len() as f64 / secs
        );
    }
}

/// Single-threaded split of the time between decoding and resizing.
fn parts(dir: &Path) {
    for kind in ["jpeg", "dicom"] {
        let files = list(&dir.join(kind));
        let t = Instant::now();
        let decoded: Vec<images::Gray8> = files
            .iter()
            .map(|f| {
                if kind == "dicom" {
                    images::DicomPixels::open(f).unwrap().to_gray8_mgca()
                } else {
                    images::decode_raster(f).unwrap().to_gray8()
                }
            })
            .collect();
        let d = t.elapsed().as_secs_f64() / files.len() as f64;
        let t = Instant::now();
        for g in &decoded {
            std::hint::black_box(images::resize_img(g, 256));
        }
        let r = t.elapsed().as_secs_f64() / files.len() as f64;
        println!(
            "{kind}: decode {:.2} ms, resize_img {:.2} ms per image",
            d * 1e3,
            r * 1e3
        );
    }
}
