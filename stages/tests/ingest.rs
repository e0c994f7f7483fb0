//! Ingest of the four synthetic layouts: the edge cases of reference E.1–E.4 and bad input.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use stages::ingest::{self, table::read_parquet, DatasetKind, IngestOptions, IngestReport, Verify};
use stages::masks::rle_to_mask;
use stages::synth;

fn make(ds: DatasetKind, n: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    synth::generate_with_size(ds, &raw, n, 3, 64).unwrap();
    let out = tmp.path().join("out");
    (tmp, raw, out)
}

fn run(
    ds: DatasetKind,
    raw: &Path,
    out: &Path,
    opts: &IngestOptions,
) -> stages::Result<IngestReport> {
    ingest::ingest(ds, raw, out, opts, &|_| {})
}

fn strs(df: &DataFrame, c: &str) -> Vec<String> {
    df.column(c)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap_or("").to_string())
        .collect()
}

fn bools(df: &DataFrame, c: &str) -> Vec<bool> {
    df.column(c)
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .map(|b| b.unwrap())
        .collect()
}

#[test]
fn mimic_edge_cases() {
    let (_t, raw, out) = make(DatasetKind::MimicCxr, 30);
    let kind = ingest::resolve_kind("synth", &raw).unwrap();
    assert_eq!(kind, DatasetKind::MimicCxr);
    let report = run(kind, &raw, &out, &IngestOptions::default()).unwrap();
    // Study 0 is lateral-only, study 1 has a 2-word report, study 4 has no FINDINGS/IMPRESSION.
    assert!(report.dropped["view_not_pa_ap"] >= 1);
    assert_eq!(report.dropped["caption_under_3_tokens"], 1);
    assert_eq!(report.dropped["no_impression_or_findings"], 1);
    assert!(!report.dropped.contains_key("not_in_split_csv"));
    let df = read_parquet(&out.join("records.parquet")).unwrap();
    assert_eq!(df.height(), report.rows);
    assert_eq!(df.height(), 30 - 3, "one frontal image per remaining study");
    let split = strs(&df, "split");
    let official = strs(&df, "official_split");
    assert!(split.iter().all(|s| s == "train" || s == "valid"));
    for (s, o) in split.iter().zip(&official) {
        assert_eq!(s == "valid", o == "validate" || o == "test", "{o} → {s}");
    }
    assert!(official.iter().any(|o| o == "validate") && official.iter().any(|o| o == "test"));
    let views = strs(&df, "view");
    assert!(views.iter().all(|v| v == "PA" || v == "AP"));
    // Captions carry the findings the labels state.
    let caption = strs(&df, "caption");
    let pneumonia = df.column("Pneumonia").unwrap().f32().unwrap();
    for (i, c) in caption.iter().enumerate() {
        if pneumonia.get(i) == Some(1.0) {
            assert!(c.contains("pneumonia"), "{c}");
        }
        assert!(c.split(' ').count() >= 3);
    }
    assert!(pneumonia.iter().any(|v| v == Some(1.0)));
    for c in [
        "key",
        "path",
        "impression",
        "findings",
        "report",
        "caption_tokens",
        "No Finding",
        "subject_id",
    ] {
        assert!(df.column(c).is_ok(), "column {c}");
    }
    let path = strs(&df, "path");
    assert!(path
        .iter()
        .all(|p| p.starts_with("files/p") && p.ends_with(".jpg") && raw.join(p).is_file()));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["dropped"]["caption_under_3_tokens"], 1);
}

#[test]
fn mimic_reads_plain_csv_too() {
    let (_t, raw, out) = make(DatasetKind::MimicCxr, 8);
    for f in [
        "mimic-cxr-2.0.0-metadata.csv",
        "mimic-cxr-2.0.0-split.csv",
        "mimic-cxr-2.0.0-chexpert.csv",
    ] {
        let gz = raw.join(format!("{f}.gz"));
        let mut s = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        std::fs::write(raw.join(f), s).unwrap();
        std::fs::remove_file(gz).unwrap();
    }
    let r = run(DatasetKind::MimicCxr, &raw, &out, &IngestOptions::default()).unwrap();
    assert_eq!(r.rows, 5);
}

#[test]
fn rsna_boxes_and_splits() {
    let (_t, raw, out) = make(DatasetKind::Rsna, 40);
    let r = run(DatasetKind::Rsna, &raw, &out, &IngestOptions::default()).unwrap();
    assert_eq!(r.rows, 40);
    // sklearn sizes: ceil(0.3·40) = 12 → 28/6/6; ceil(0.4·40) = 16 → 24/8/8.
    assert_eq!(
        r.splits,
        BTreeMap::from([
            ("train".into(), 28),
            ("valid".into(), 6),
            ("test".into(), 6)
        ])
    );
    assert_eq!(
        r.seg_splits.unwrap(),
        BTreeMap::from([
            ("train".into(), 24),
            ("valid".into(), 8),
            ("test".into(), 8)
        ])
    );
    let df = read_parquet(&out.join("records.parquet")).unwrap();
    let keys = strs(&df, "key");
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "rows in pandas groupby order");
    // Boxes are x1,y1,x2,y2 = x, y, x+width, y+height of every CSV row of the patient.
    let csv = std::fs::read_to_string(raw.join("stage_2_train_labels.csv")).unwrap();
    let mut want: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
    for l in csv.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let e = want.entry(f[0].to_string()).or_default();
        if f[5] == "1" {
            let v: Vec<f32> = f[1..5].iter().map(|x| x.parse().unwrap()).collect();
            e.push(vec![v[0], v[1], v[0] + v[2], v[1] + v[3]]);
        }
    }
    let boxes = df.column("boxes").unwrap().list().unwrap().clone();
    let target = df.column("target").unwrap().i32().unwrap().clone();
    let mut multi = 0;
    for (i, k) in keys.iter().enumerate() {
        let b = boxes.get_as_series(i).unwrap();
        let got: Vec<Vec<f32>> = (0..b.len())
            .map(|j| {
                let inner = b.list().unwrap().get_as_series(j).unwrap();
                inner.f32().unwrap().no_null_iter().collect()
            })
            .collect();
        assert_eq!(got, want[k], "{k}");
        assert_eq!(target.get(i).unwrap(), i32::from(!got.is_empty()));
        multi += usize::from(got.len() > 1);
    }
    assert!(multi > 0, "some patients have two boxes");
}

#[test]
fn covidx_labels_and_patient_split() {
    let (_t, raw, out) = make(DatasetKind::Covidx, 60);
    let r = run(DatasetKind::Covidx, &raw, &out, &IngestOptions::default()).unwrap();
    assert_eq!(r.rows, 60);
    let df = read_parquet(&out.join("records.parquet")).unwrap();
    let split = strs(&df, "split");
    let patient = strs(&df, "patient_id");
    let class = strs(&df, "class");
    let label = df.column("label").unwrap().i32().unwrap().clone();
    let mut where_: HashMap<&str, HashSet<&str>> = HashMap::new();
    for i in 0..df.height() {
        where_.entry(&patient[i]).or_default().insert(&split[i]);
        let want = match class[i].as_str() {
            "normal" => 0,
            "pneumonia" => 1,
            "COVID-19" => 2,
            c => panic!("{c}"),
        };
        assert_eq!(label.get(i).unwrap(), want);
    }
    assert!(
        where_
            .values()
            .all(|s| !(s.contains("train") && s.contains("valid"))),
        "no patient straddles"
    );
    assert!(r.splits["train"] > 0 && r.splits["valid"] > 0 && r.splits["test"] > 0);
    let paths = strs(&df, "path");
    assert!(paths
        .iter()
        .zip(&split)
        .all(|(p, s)| p.starts_with(if s == "test" { "test/" } else { "train/" })));
}

#[test]
fn siim_images_stay_whole_and_training_is_balanced() {
    let (_t, raw, out) = make(DatasetKind::Siim, 80);
    let r = run(DatasetKind::Siim, &raw, &out, &IngestOptions::default()).unwrap();
    assert_eq!(r.rows, 80);
    let df = read_parquet(&out.join("records.parquet")).unwrap();
    let keys = strs(&df, "key");
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        80,
        "one row per image"
    );
    let csv = std::fs::read_to_string(raw.join("train-rle.csv")).unwrap();
    assert!(csv.starts_with("ImageId, EncodedPixels\n") && csv.contains(", -1\n"));
    let mut rows_per: HashMap<&str, usize> = HashMap::new();
    for l in csv.lines().skip(1).filter(|l| !l.ends_with(" -1")) {
        *rows_per.entry(l.split(',').next().unwrap()).or_default() += 1;
    }
    let rle = df.column("rle").unwrap().list().unwrap().clone();
    let positive = bools(&df, "positive");
    let balanced = bools(&df, "balanced_train");
    let split = strs(&df, "split");
    let mut multi = 0;
    for i in 0..df.height() {
        let s = rle.get_as_series(i).unwrap();
        let strings: Vec<String> = s
            .str()
            .unwrap()
            .no_null_iter()
            .map(str::to_string)
            .collect();
        assert_eq!(
            strings.len(),
            rows_per.get(keys[i].as_str()).copied().unwrap_or(0)
        );
        assert_eq!(positive[i], !strings.is_empty());
        if strings.len() > 1 {
            multi += 1;
        }
        if positive[i] {
            let m = rle_to_mask(&strings, 64, 64, "test").unwrap();
            assert!(m.data.contains(&1));
        }
        if split[i] != "train" {
            assert!(!balanced[i]);
        } else if positive[i] {
            assert!(balanced[i]);
        }
    }
    assert!(multi > 0, "multi-row RLE present");
    let train_pos = (0..df.height())
        .filter(|&i| split[i] == "train" && positive[i])
        .count();
    let train_neg_bal = (0..df.height())
        .filter(|&i| split[i] == "train" && !positive[i] && balanced[i])
        .count();
    assert_eq!(train_pos, train_neg_bal, "as many negatives as positives");
    assert_eq!(r.splits["train"], 56);
}

// ---------------------------------------------------------------------------------------------
// Bad input

fn first_dcm(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap()
}

fn line_of(csv: &Path, needle: &str) -> usize {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap()
        + 1
}

#[test]
fn missing_image_is_reported_with_its_path_and_skip_bad_lists_it() {
    let (_t, raw, out) = make(DatasetKind::Rsna, 10);
    let victim = first_dcm(&raw.join("stage_2_train_images"));
    std::fs::remove_file(&victim).unwrap();
    let id = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let csv = raw.join("stage_2_train_labels.csv");
    let e = run(DatasetKind::Rsna, &raw, &out, &IngestOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}, line {}: image {} does not exist",
            csv.display(),
            line_of(&csv, &id),
            victim.display()
        )
    );

    let opts = IngestOptions {
        skip_bad: true,
        ..Default::default()
    };
    let out2 = out.with_file_name("out2");
    let r = run(DatasetKind::Rsna, &raw, &out2, &opts).unwrap();
    assert_eq!((r.rows, r.skipped), (9, 1));
    let skipped = read_parquet(&out2.join("skipped.parquet")).unwrap();
    assert_eq!(strs(&skipped, "key"), [id]);
    assert_eq!(strs(&skipped, "reason"), ["missing_image"]);
    assert_eq!(strs(&skipped, "error")[0], e.to_string());
    // skipped.parquet (which the demo never writes) reads in pandas, polars and DuckDB too.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let check = std::process::Command::new(repo.join(".venv/bin/python"))
        .arg(repo.join("tools/check_tables.py"))
        .args([out2.join("skipped.parquet"), out2.join("records.parquet")])
        .output()
        .expect("runs .venv/bin/python (scripts/setup.sh makes it)");
    assert!(
        check.status.success(),
        "tools/check_tables.py:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Splits are drawn before skipping: the other patients keep theirs.
    let full = read_parquet(&{
        let o = out.with_file_name("out3");
        std::fs::copy(common::asset("CT_small.dcm"), &victim).unwrap();
        run(
            DatasetKind::Rsna,
            &raw,
            &o,
            &IngestOptions {
                verify: Verify::Exists,
                ..Default::default()
            },
        )
        .unwrap();
        o.join("records.parquet")
    })
    .unwrap();
    let kept = read_parquet(&out2.join("records.parquet")).unwrap();
    let full_split: HashMap<String, String> = strs(&full, "key")
        .into_iter()
        .zip(strs(&full, "split"))
        .collect();
    for (k, s) in strs(&kept, "key").into_iter().zip(strs(&kept, "split")) {
        assert_eq!(full_split[&k], s);
    }
}

#[test]
fn csv_missing_a_column_names_file_and_column() {
    let (_t, raw, out) = make(DatasetKind::Rsna, 4);
    let csv = raw.join("stage_2_train_labels.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let cut: String = text
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
        .collect();
    std::fs::write(&csv, cut).unwrap();
    let e = run(DatasetKind::Rsna, &raw, &out, &IngestOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: missing column `Target` (columns found: `patientId`, `x`, `y`, `width`, `height`)",
            csv.display()
        )
    );
}

#[test]
fn bad_field_names_file_line_and_field() {
    let (_t, raw, out) = make(DatasetKind::Covidx, 6);
    let list = raw.join("train_COVIDx9A.txt");
    let text = std::fs::read_to_string(&list).unwrap();
    let first = text.lines().next().unwrap();
    let class = first.split(' ').nth(2).unwrap();
    std::fs::write(
        &list,
        text.replacen(first, &first.replace(class, "influenza"), 1),
    )
    .unwrap();
    let e = run(DatasetKind::Covidx, &raw, &out, &IngestOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}, line 1, field `class`: `influenza` is not one of normal, pneumonia, COVID-19",
            list.display()
        )
    );
}

#[test]
fn rle_running_past_the_image_names_file_line_and_field() {
    let (_t, raw, out) = make(DatasetKind::Siim, 12);
    let csv = raw.join("train-rle.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let line = text
        .lines()
        .position(|l| !l.ends_with(" -1") && !l.starts_with("ImageId"))
        .unwrap();
    let orig = text.lines().nth(line).unwrap();
    let id = orig.split(',').next().unwrap();
    std::fs::write(&csv, text.replacen(orig, &format!("{id}, 4000 200"), 1)).unwrap();
    let e = run(DatasetKind::Siim, &raw, &out, &IngestOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "RLE {}, line {}, field `EncodedPixels`: run 1 (pixels 4000..4200) runs past the end of the 64×64 \
             image (4096 pixels)",
            csv.display(),
            line + 1
        )
    );
    // Header-only verification still checks RLEs against the DICOM's size.
    let e2 = run(
        DatasetKind::Siim,
        &raw,
        &out,
        &IngestOptions {
            verify: Verify::Exists,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), e2.to_string());
}

#[test]
fn truncated_jpeg_and_dicom_without_pixels_name_row_and_image() {
    let (_t, raw, out) = make(DatasetKind::MimicCxr, 8);
    let ok = run(DatasetKind::MimicCxr, &raw, &out, &IngestOptions::default()).unwrap();
    let df = read_parquet(&out.join("records.parquet")).unwrap();
    let rel = strs(&df, "path")[0].clone();
    let key = strs(&df, "key")[0].clone();
    let jpg = raw.join(&rel);
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 3]).unwrap();
    let meta = raw.join("mimic-cxr-2.0.0-metadata.csv.gz");
    let e = run(
        DatasetKind::MimicCxr,
        &raw,
        &out.with_file_name("o2"),
        &IngestOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    let meta_text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&meta).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let line = meta_text.lines().position(|l| l.starts_with(&key)).unwrap() + 1;
    let prefix = format!("{}, line {line}: image {}: ", meta.display(), jpg.display());
    assert!(msg.starts_with(&prefix), "{msg}\nexpected prefix {prefix}");
    // `exists` does not decode, so it passes.
    let r = run(
        DatasetKind::MimicCxr,
        &raw,
        &out.with_file_name("o3"),
        &IngestOptions {
            verify: Verify::Exists,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.rows, ok.rows);

    let (_t2, raw2, out2) = make(DatasetKind::Rsna, 3);
    let victim = first_dcm(&raw2.join("stage_2_train_images"));
    std::fs::copy(common::asset("rtplan.dcm"), &victim).unwrap();
    let csv = raw2.join("stage_2_train_labels.csv");
    let id = victim.file_stem().unwrap().to_string_lossy().into_owned();
    let e = run(DatasetKind::Rsna, &raw2, &out2, &IngestOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}, line {}: image {}: DICOM file has no pixel data",
            csv.display(),
            line_of(&csv, &id),
            victim.display()
        )
    );
}

/// `verify = "decode"` decodes in the runner's process: a PNG whose header claims 65,535 ×
/// 65,535 RGBA16 (34 GB) must be a bad row naming the list file, the line and the image, never
/// an abort on a failed allocation.
#[test]
fn an_image_claiming_a_huge_size_is_a_bad_row_not_an_abort() {
    let (_t, raw, out) = make(DatasetKind::Covidx, 12);
    let list = std::fs::read_dir(&raw)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train_COVIDx")
        })
        .unwrap();
    let text = std::fs::read_to_string(&list).unwrap();
    let (line, file) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            let f = l.split(' ').nth(1)?;
            f.ends_with(".png").then(|| (i + 1, f.to_string()))
        })
        .expect("a PNG in the list");
    let image = raw.join("train").join(&file);
    std::fs::write(&image, stages::synth::oversized_png(65_535, 65_535)).unwrap();
    let e = run(DatasetKind::Covidx, &raw, &out, &IngestOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}, line {line}: image {}: the header says 65535 × 65535 = 4294836225 pixels, over \
             the decode limit of 268435456 pixels (ADAPTOR_MAX_IMAGE_PIXELS raises it)",
            list.display(),
            image.display()
        )
    );
    let opts = IngestOptions {
        skip_bad: true,
        ..Default::default()
    };
    let report = run(DatasetKind::Covidx, &raw, &out, &opts).unwrap();
    assert_eq!(report.skipped, 1);
}

/// CheXpert label columns become records columns under their header names: a blank, repeated or
/// reserved name is an error naming the CSV, line 1 and the column (found by the label fuzzer:
/// it used to fail while writing records.parquet, naming only the output).
#[test]
fn mimic_label_headers_that_cannot_be_columns_are_named() {
    use std::io::Read;
    let (_t, raw, out) = make(DatasetKind::MimicCxr, 4);
    let gz = raw.join("mimic-cxr-2.0.0-chexpert.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let plain = raw.join("mimic-cxr-2.0.0-chexpert.csv");
    for (from, to, message) in [
        (
            "Edema",
            "Atelectasis",
            "`Atelectasis` is the name of two columns",
        ),
        ("Edema", " ", "an empty column name"),
        ("Edema", "split", "`split` is a column ingest writes itself"),
    ] {
        std::fs::write(&plain, text.replacen(from, to, 1)).unwrap();
        let e = run(DatasetKind::MimicCxr, &raw, &out, &IngestOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}, line 1, field `", plain.display())) && e.contains(message),
            "{e}"
        );
    }
}
