//! The synthetic datasets: real layouts, determinism, findings visible in the pixels.

mod common;

use std::path::Path;

use stages::images::{self, GrayImage};
use stages::synth::{self, SynthDataset};

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn all_four_layouts_are_written_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    for ds in [
        SynthDataset::MimicCxr,
        SynthDataset::Rsna,
        SynthDataset::Covidx,
        SynthDataset::Siim,
    ] {
        let a = tmp.path().join(format!("{ds}-a"));
        let b = tmp.path().join(format!("{ds}-b"));
        let sa = synth::generate_with_size(ds, &a, 12, 5, 64).unwrap();
        let sb = synth::generate_with_size(ds, &b, 12, 5, 64).unwrap();
        assert_eq!(sa, sb);
        let fa = files_under(&a);
        assert_eq!(fa, files_under(&b), "{ds}: same seed, same files");
        for f in &fa {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{ds}: {f} differs"
            );
        }
        assert_eq!(synth::read_marker(&a).unwrap().dataset, ds);
        let expect: &[&str] = match ds {
            SynthDataset::MimicCxr => &[
                "mimic-cxr-2.0.0-metadata.csv.gz",
                "mimic-cxr-2.0.0-split.csv.gz",
                "mimic-cxr-2.0.0-chexpert.csv.gz",
            ],
            SynthDataset::Rsna => &["stage_2_train_labels.csv"],
            SynthDataset::Covidx => &["train_COVIDx9A.txt", "test_COVIDx9A.txt"],
            SynthDataset::Siim => &["train-rle.csv"],
        };
        for e in expect {
            assert!(fa.iter().any(|f| f == e), "{ds}: {e} missing in {fa:?}");
        }
        // Every image decodes.
        for f in fa
            .iter()
            .filter(|f| f.ends_with(".jpg") || f.ends_with(".png") || f.ends_with(".dcm"))
        {
            images::decode(&a.join(f)).unwrap_or_else(|e| panic!("{e}"));
        }
        let other = tmp.path().join(format!("{ds}-c"));
        synth::generate_with_size(ds, &other, 12, 6, 64).unwrap();
        assert_ne!(
            files_under(&other)
                .iter()
                .map(|f| std::fs::read(other.join(f)).unwrap())
                .collect::<Vec<_>>(),
            fa.iter()
                .map(|f| std::fs::read(a.join(f)).unwrap())
                .collect::<Vec<_>>(),
            "{ds}: another seed gives other data"
        );
        if let Some(dump) = std::env::var_os("ADAPTOR_SYNTH_DUMP") {
            synth::generate(ds, &Path::new(&dump).join(ds.name()), 40, 0).unwrap();
        }
    }
}

#[test]
fn mimic_layout_follows_physionet() {
    let tmp = tempfile::tempdir().unwrap();
    synth::generate_with_size(SynthDataset::MimicCxr, tmp.path(), 8, 1, 64).unwrap();
    let files = files_under(tmp.path());
    // files/pXX/pSUBJECT/sSTUDY/DICOM.jpg and files/pXX/pSUBJECT/sSTUDY.txt
    let jpg = files.iter().find(|f| f.ends_with(".jpg")).unwrap();
    let parts: Vec<&str> = jpg.split('/').collect();
    assert_eq!(parts.len(), 5, "{jpg}");
    assert_eq!(parts[0], "files");
    assert_eq!(&parts[2][1..3], &parts[1][1..]);
    assert!(parts[3].starts_with('s'));
    assert!(files
        .iter()
        .any(|f| f == &format!("{}/{}/{}/{}.txt", parts[0], parts[1], parts[2], parts[3])));
}

#[test]
fn siim_dicoms_are_jpeg_baseline_and_rsna_uncompressed() {
    let tmp = tempfile::tempdir().unwrap();
    synth::generate_with_size(SynthDataset::Siim, &tmp.path().join("s"), 3, 1, 64).unwrap();
    synth::generate_with_size(SynthDataset::Rsna, &tmp.path().join("r"), 3, 1, 64).unwrap();
    let s = files_under(&tmp.path().join("s"));
    let dcm = s.iter().find(|f| f.ends_with(".dcm")).unwrap();
    assert_eq!(
        dcm.split('/').count(),
        4,
        "dicom-images-train/STUDY/SERIES/ID.dcm: {dcm}"
    );
    let px = images::DicomPixels::open(&tmp.path().join("s").join(dcm)).unwrap();
    assert_eq!(px.transfer_syntax, "1.2.840.10008.1.2.4.50");
    let r = files_under(&tmp.path().join("r"));
    let dcm = r.iter().find(|f| f.ends_with(".dcm")).unwrap();
    let img = images::decode(&tmp.path().join("r").join(dcm)).unwrap();
    assert!(matches!(img, GrayImage::Eight(ref g) if g.width == 64 && g.height == 64));
}

/// Counts the official split's values in a MIMIC-CXR miniature's split CSV.
fn mimic_splits(root: &Path) -> std::collections::BTreeMap<String, usize> {
    let gz = std::fs::File::open(root.join("mimic-cxr-2.0.0-split.csv.gz")).unwrap();
    let text = std::io::read_to_string(flate2::read::GzDecoder::new(gz)).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines().skip(1) {
        *counts
            .entry(line.rsplit(',').next().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

#[test]
fn mimic_valid_fraction_sets_the_official_split_share_and_only_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    synth::generate_with_size(SynthDataset::MimicCxr, &a, 2000, 1, 32).unwrap();
    let summary =
        synth::generate_with(SynthDataset::MimicCxr, &b, 2000, 1, 32, Some(0.02)).unwrap();
    assert_eq!(summary.valid_fraction, Some(0.02));
    let share = |c: &std::collections::BTreeMap<String, usize>| {
        let held = c["validate"] + c["test"];
        held as f64 / (held + c["train"]) as f64
    };
    let (default, real) = (share(&mimic_splits(&a)), share(&mimic_splits(&b)));
    assert!((0.07..0.14).contains(&default), "default share {default}");
    assert!((0.01..0.04).contains(&real), "share with 0.02: {real}");
    // Only the split draws change: the same studies, images and reports.
    assert_eq!(
        files_under(&a)
            .into_iter()
            .filter(|f| f.ends_with(".txt"))
            .count(),
        files_under(&b)
            .into_iter()
            .filter(|f| f.ends_with(".txt"))
            .count()
    );
    for (ds, f) in [(SynthDataset::Rsna, 0.1), (SynthDataset::MimicCxr, 1.0)] {
        let err = synth::generate_with(ds, &tmp.path().join("c"), 3, 1, 32, Some(f)).unwrap_err();
        assert!(err.to_string().contains("valid_fraction"), "{err}");
    }
}
