//! Decode + preprocess throughput benchmark (bench/images/run.sh drives it).
//!
//! `bench_images gen DIR N_JPEG N_DICOM`: writes N_JPEG 2500×3000 JPEGs and N_DICOM 1024² DICOMs of
//! synthetic chests. `bench_images run DIR IMSIZE THREADS ROUNDS [KINDS]`: decodes every file and
//! applies the original's `resize_img(IMSIZE)` (MGCA path: DICOM via convertScaleAbs), ROUNDS
//! times, with THREADS rayon workers; prints images/s and CPU ms per image for each format of
//! KINDS (default `jpeg,dicom`). `bench_images check IMSIZE FILE...`: the
//! fused DICOM loader against the 8-bit conversion followed by `resize_img`, byte for byte.

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
        Some("check") => check(&args[2..]),
        Some("run") => run(
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
            args.get(6).map_or("jpeg,dicom", String::as_str),
        ),
        _ => {
            eprintln!(
                "usage: bench_images gen DIR N_JPEG N_DICOM | run DIR IMSIZE THREADS ROUNDS [KINDS] | \
                 parts DIR | check IMSIZE FILE..."
            )
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

/// CPU time of this process so far (all threads, user + system), from `/proc/self/stat` in clock
/// ticks of 1/100 s.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are the 14th and 15th fields; after the command name, the 12th and 13th
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn run(dir: &Path, imsize: u32, threads: usize, rounds: usize, kinds: &str) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for kind in kinds.split(',') {
        let files = list(&dir.join(kind));
        let all: Vec<PathBuf> = (0..rounds).flat_map(|_| files.iter().cloned()).collect();
        // Warm the page cache and check the outputs once.
        for f in &files {
            let out = images::load_mgca(f, imsize).unwrap();
            assert_eq!((out.width, out.height), (imsize, imsize));
        }
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let out = pool.install(|| images::load_mgca_many(&all, imsize));
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        assert!(out.iter().all(|r| r.is_ok()));
        println!(
            "rust\t{kind}\t{threads}\t{}\t{secs:.3}\t{:.1}\t{:.3}",
            all.len(),
            all.len() as f64 / secs,
            cpu * 1e3 / all.len() as f64
        );
    }
}

/// Single-threaded split of the time: JPEG decode vs `resize_img`; DICOM read (header, pixel data
/// in place) vs the 8-bit conversion fused with `resize_img` (and, for comparison, the two apart).
fn parts(dir: &Path) {
    let per_image = |t: Instant, n: usize| t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let files = list(&dir.join("jpeg"));
    let t = Instant::now();
    let decoded: Vec<images::Gray8> = files
        .iter()
        .map(|f| images::decode_raster(f).unwrap().to_gray8())
        .collect();
    let d = per_image(t, files.len());
    let t = Instant::now();
    for g in &decoded {
        std::hint::black_box(images::resize_img(g, 256));
    }
    let r = per_image(t, files.len());
    println!("jpeg: decode {d:.2} ms, resize_img {r:.2} ms per image");
    let files = list(&dir.join("dicom"));
    // each file read and dropped, as the loader does (its buffer reused by the allocator)
    let t = Instant::now();
    for f in &files {
        std::hint::black_box(images::DicomPixels::open(f).unwrap());
    }
    let d = per_image(t, files.len());
    let opened: Vec<images::DicomPixels> = files
        .iter()
        .map(|f| images::DicomPixels::open(f).unwrap())
        .collect();
    let t = Instant::now();
    for px in &opened {
        std::hint::black_box(px.resize_img_mgca(256));
    }
    let fused = per_image(t, files.len());
    let t = Instant::now();
    let gray: Vec<images::Gray8> = opened.iter().map(|px| px.to_gray8_mgca()).collect();
    let c = per_image(t, files.len());
    let t = Instant::now();
    for g in &gray {
        std::hint::black_box(images::resize_img(g, 256));
    }
    let r = per_image(t, files.len());
    println!(
        "dicom: read {d:.2} ms, convertScaleAbs + resize_img fused {fused:.2} ms per image \
         (apart: convert {c:.2} ms, resize_img {r:.2} ms)"
    );
}

/// Every DICOM file given: `load_mgca` (the fused path where it applies) must equal the whole-frame
/// 8-bit conversion followed by `resize_img`, byte for byte, and the in-place read must equal the
/// general decoder's.
fn check(args: &[String]) {
    let imsize: u32 = args[0].parse().unwrap();
    let mut n = 0;
    for f in &args[1..] {
        let f = Path::new(f);
        let px = images::DicomPixels::open(f).unwrap();
        let want = images::resize_img(&px.to_gray8_mgca(), imsize);
        assert!(
            images::load_mgca(f, imsize).unwrap() == want,
            "{}",
            f.display()
        );
        let general = images::DicomPixels::open_general(f).unwrap();
        assert!(px == general, "{}", f.display());
        n += 1;
    }
    println!("check: {n} DICOM files, resize_img({imsize}) identical");
}
