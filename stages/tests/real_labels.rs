//! The real label files that torchxrayvision ships (scripts/test-assets.sh), read at test time.

mod common;

use stages::ingest::{rsna, siim};
use stages::masks::parse_rle;
use stages::split::{three_way, train_test_split, Mt19937, TestSize};

fn fnv1a(ids: &[&str]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in ids.join("\n").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// What pandas counts in a real label file (data/golden/labels.json, tools/make_golden_values.py).
fn golden_labels(file: &str) -> serde_json::Value {
    let path = common::data("golden/labels.json");
    let all: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    all[file].clone()
}

#[test]
fn real_rsna_labels_give_the_documented_splits_and_sklearn_membership() {
    let patients = rsna::read_patients(&common::asset("kaggle_stage_2_train_labels.csv")).unwrap();
    // Counts from pandas (tools/make_golden_values.py) and sklearn's split sizes
    // (tools/make_split_fixture.py).
    let golden = golden_labels("kaggle_stage_2_train_labels.csv.zip");
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::data("split_parity.json")).unwrap()).unwrap();
    assert_eq!(patients.len() as u64, golden["patients"].as_u64().unwrap());
    assert_eq!(fixture["patients"], golden["patients"]);
    assert_eq!(
        patients.iter().filter(|(_, b)| !b.is_empty()).count() as u64,
        golden["positive_patients"].as_u64().unwrap()
    );
    assert_eq!(
        patients.iter().map(|(_, b)| b.len().max(1)).sum::<usize>() as u64,
        golden["rows"].as_u64().unwrap()
    );
    let (cls, seg) = rsna::splits(patients.len(), 0);
    let count = |v: &[&str], s: &str| v.iter().filter(|&&x| x == s).count() as u64;
    for (name, labels) in [("classification", &cls), ("segmentation", &seg)] {
        for part in ["train", "valid", "test"] {
            assert_eq!(
                count(labels, part),
                fixture[name][part]["n"].as_u64().unwrap(),
                "{name} {part}"
            );
        }
    }

    // Exact membership and order against sklearn (tools/make_split_fixture.py).
    let n = patients.len();
    let head: Vec<usize> = Mt19937::new(0).permutation(n)[..8].to_vec();
    let want: Vec<usize> = fixture["permutation_26684_seed0_head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(head, want);
    let ids: Vec<&str> = patients.iter().map(|(k, _)| k.as_str()).collect();
    for (name, first, labels) in [
        ("classification", TestSize::Fraction(0.30), &cls),
        ("segmentation", TestSize::Count(5_337 * 2), &seg),
    ] {
        let (train, rest) = train_test_split(ids.len(), first, 0);
        let (test, valid) = train_test_split(rest.len(), TestSize::Fraction(0.5), 0);
        let parts = [
            ("train", train.iter().map(|&i| ids[i]).collect::<Vec<_>>()),
            ("valid", valid.iter().map(|&i| ids[rest[i]]).collect()),
            ("test", test.iter().map(|&i| ids[rest[i]]).collect()),
        ];
        for (part, members) in &parts {
            let f = &fixture[name][part];
            assert_eq!(
                members.len() as u64,
                f["n"].as_u64().unwrap(),
                "{name} {part}"
            );
            assert_eq!(
                fnv1a(members),
                f["fnv1a"].as_str().unwrap(),
                "{name} {part} membership"
            );
            for m in members {
                let i = ids.binary_search(m).unwrap();
                assert_eq!(labels[i], *part, "{name}: {m}");
            }
        }
    }
    // The generalised segmentation rule (0.4) is the original's 5337·2 on the real data.
    assert_eq!(three_way(n, TestSize::Fraction(0.4), 0), seg);
}

#[test]
fn real_siim_rle_file_parses() {
    let path = common::asset("siim-pneumothorax-train-rle.csv.gz");
    let golden = golden_labels("siim-pneumothorax-train-rle.csv.gz");
    let n = |k: &str| golden[k].as_u64().unwrap() as usize;
    assert_eq!(
        siim::count_rle_file(&path).unwrap(),
        (n("rows"), n("images"), n("positive_images"))
    );
    // Every run lies inside the 1024×1024 raster.
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let mut runs = 0;
    for (i, line) in text.lines().enumerate().skip(1) {
        let rle = line.split_once(',').unwrap().1;
        runs += parse_rle(rle, 1024, 1024, &format!("line {}", i + 1))
            .unwrap()
            .len();
    }
    assert!(runs > 100_000, "{runs}");
}
