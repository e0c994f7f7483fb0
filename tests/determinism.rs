//! An artifact does not depend on `-j` or on the machine's load: two cold runs of a trimmed small
//! demo (encode → pretrain → classify → segment → report), one with `-j 1` and one with `-j 2`,
//! started at the same time on the same cores, write the same keys and the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::{adaptor, artifact_of, small_demo, text, walk};

/// The smaller demo cut to one classification task, one segmentation task and fewer epochs.
fn trimmed_demo() -> String {
    [
        (
            "dataset = [\"mimic-cxr\", \"rsna\", \"covidx\"]",
            "dataset = [\"mimic-cxr\", \"rsna\"]",
        ),
        ("task = [\"rsna\", \"covidx\"]", "task = [\"rsna\"]"),
        (
            "images = [\"mimic-cxr\", \"rsna\", \"covidx\"]",
            "images = [\"mimic-cxr\", \"rsna\"]",
        ),
        ("seg = [\"siim\", \"rsna\"]", "seg = [\"rsna\"]"),
        ("epochs = 40\n", "epochs = 10\n"),
        ("epochs = 10,", "epochs = 4,"),
        ("epochs = 2\n", "epochs = 1\n"),
    ]
    .iter()
    .fold(
        without_covidx_zero_shot(&small_demo()),
        |text, (from, to)| {
            assert!(
                text.contains(from),
                "the small demo no longer contains `{from}`"
            );
            text.replace(from, to)
        },
    )
}

/// The small demo without its COVIDx zero-shot stage (the trimmed demo has no COVIDx data).
fn without_covidx_zero_shot(demo: &str) -> String {
    let reference = ", \"zero-shot-covidx[*]\"";
    assert!(
        demo.contains(reference),
        "the report no longer takes `zero-shot-covidx`"
    );
    let demo = demo.replace(reference, "");
    let start = demo
        .find("[stages.zero-shot-covidx]")
        .expect("the small demo has a COVIDx zero-shot stage");
    let end = demo[start + 1..]
        .find("\n[")
        .map_or(demo.len(), |i| start + 1 + i + 1);
    format!("{}{}", &demo[..start], &demo[end..])
}

/// The fields and columns that record wall-clock time, which no two runs share: `result.json`,
/// `report.json` and the training metrics tables are compared without them.
const TIMED: &[&str] = &["seconds", "feature_seconds"];
/// The store's own records of a build (host, times, log), not the artifact.
const RECORDS: &[&str] = &["_manifest.json", "_log.txt"];

/// Every file of every complete artifact in a local store, by `kind/key/path`.
fn artifacts(store: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = BTreeMap::new();
    for kind in std::fs::read_dir(store).unwrap().flatten() {
        let name = kind.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || !kind.path().is_dir() {
            continue;
        }
        for art in std::fs::read_dir(kind.path()).unwrap().flatten() {
            if !art.path().join("_manifest.json").is_file() {
                continue;
            }
            for f in walk(&art.path()) {
                let rel = f
                    .strip_prefix(store)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, f);
            }
        }
    }
    files
}

/// A JSON file without its [`TIMED`] fields, at any depth.
fn untimed_json(path: &Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                TIMED.iter().for_each(|f| drop(m.remove(*f)));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    strip(&mut v);
    v
}

/// A Parquet table's batches without its [`TIMED`] columns.
fn untimed_parquet(path: &Path) -> Vec<arrow_array::RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader
        .map(|batch| {
            let mut batch = batch.unwrap();
            for f in TIMED {
                if let Ok(i) = batch.schema().index_of(f) {
                    batch.remove_column(i);
                }
            }
            batch
        })
        .collect()
}

/// Whether two files hold the same artifact content: the same bytes, or for a file that records
/// wall-clock time, the same content without it.
fn same(left: &Path, right: &Path) -> bool {
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    if bytes(left) == bytes(right) {
        return true;
    }
    let columns = |p: &Path| -> Vec<String> {
        let Ok(file) = std::fs::File::open(p) else {
            return Vec::new();
        };
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    match left.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let text = String::from_utf8_lossy(&bytes(left)).into_owned();
            TIMED.iter().any(|f| text.contains(&format!("\"{f}\"")))
                && untimed_json(left) == untimed_json(right)
        }
        Some("parquet") => {
            columns(left).iter().any(|c| TIMED.contains(&c.as_str()))
                && untimed_parquet(left) == untimed_parquet(right)
        }
        _ => false,
    }
}

#[test]
fn cold_runs_at_j1_and_j2_write_the_same_bytes() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let manifest = trimmed_demo();
    for dir in [&one, &two] {
        std::fs::write(dir.path().join("demo.toml"), &manifest).unwrap();
    }
    // Both at once on the same cores: each run is the other's load.
    let start = |dir: &Path, jobs: &str| {
        adaptor(dir, &["run", "demo.toml", "-q", "--jobs", jobs])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = [start(one.path(), "1"), start(two.path(), "2")];
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }

    let (a, b) = (
        artifacts(&one.path().join("artifacts")),
        artifacts(&two.path().join("artifacts")),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the two runs built other keys or files"
    );
    let mut compared = 0;
    let mut differ = Vec::new();
    for (rel, left) in &a {
        let file = left.file_name().unwrap().to_string_lossy();
        if RECORDS.contains(&file.as_ref()) {
            continue;
        }
        if !same(left, &b[rel]) {
            differ.push(rel.clone());
        }
        compared += 1;
    }
    if !differ.is_empty() {
        let kept = [one.path().to_path_buf(), two.path().to_path_buf()];
        // Kept for a look at what differs.
        std::mem::forget((one, two));
        panic!("differ between -j 1 and -j 2 (stores kept in {kept:?}): {differ:#?}");
    }
    let report = |dir: &Path| artifact_of(&dir.join("artifacts"), "report", "report");
    let parquet = |dir: &Path| std::fs::read(report(dir).join("results.parquet")).unwrap();
    assert_eq!(parquet(one.path()), parquet(two.path()));
    assert!(compared > 40, "only {compared} files compared");
    eprintln!("{compared} files identical across -j 1 and -j 2");
}
