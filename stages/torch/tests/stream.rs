//! Tables larger than a stage's memory budget: `train-adaptor` streams them into row files and
//! trains to the same bytes as the in-memory path (pooled and token tables), and the worker's peak
//! resident memory stays flat when its tables are many times its budget.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use artifacts::table::{EmbeddingWriter, TableMeta};
use pipeline::protocol::{Job, JobInput, PROTOCOL};
use pipeline::{InputArtifact, InputOrigin, Params, ProgressSink, StageContext, StageKey, Value};
use stages::kinds::params::ParamSet;
use stages::kinds::train_adaptor::TrainAdaptorParams;

/// Random floats from a seed (an LCG: the test needs values, not quality).
struct Floats(u64);

impl Floats {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The split of row `i`: the first `valid` rows are `valid`, every 50th after them `test`.
fn split_of(i: usize, valid: usize) -> &'static str {
    match i {
        i if i < valid => "valid",
        i if i.is_multiple_of(50) => "test",
        _ => "train",
    }
}

/// An encode artifact folder `dir/name` with a table of `rows` rows of width `dim` (pooled) or
/// `tokens × dim` with masks whose real length varies (tokens); returns the folder.
fn table(
    dir: &Path,
    name: &str,
    rows: usize,
    valid: usize,
    dim: usize,
    tokens: Option<usize>,
    seed: u64,
) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let file = if tokens.is_some() {
        "tokens.parquet"
    } else {
        "embeddings.parquet"
    };
    let meta = TableMeta {
        table: if tokens.is_some() {
            "tokens"
        } else {
            "embeddings"
        }
        .into(),
        backbone: name.into(),
        backbone_kind: "bert".into(),
        dim,
        tokens,
        pooling: if tokens.is_some() { "tokens" } else { "mean" }.into(),
        preprocessing: "{}".into(),
        precision: "fp32".into(),
        shard: "0/1".into(),
        row_start: 0,
        row_end: rows,
        rows_total: rows,
    };
    let mut w = EmbeddingWriter::create(&folder.join(file), &meta, true).unwrap();
    let mut floats = Floats(seed);
    let per_row = dim * tokens.unwrap_or(1);
    for start in (0..rows).step_by(1024) {
        let end = (start + 1024).min(rows);
        let keys: Vec<String> = (start..end).map(|i| format!("study-{i:07}")).collect();
        let splits: Vec<String> = (start..end).map(|i| split_of(i, valid).into()).collect();
        let values: Vec<f32> = (0..(end - start) * per_row)
            .map(|_| floats.next())
            .collect();
        let mask = tokens.map(|l| {
            (start..end)
                .flat_map(|i| (0..l).map(move |t| t <= i % l))
                .collect::<Vec<bool>>()
        });
        w.write(&keys, Some(&splits), values, mask).unwrap();
    }
    w.finish().unwrap();
    folder
}

/// `train-adaptor`'s parameters: its defaults with `set` over them.
fn params(set: &[(&str, Value)]) -> Params {
    let mut p: Params = TrainAdaptorParams::specs()
        .into_iter()
        .filter_map(|s| Some((s.name.to_string(), s.default?)))
        .collect();
    for (k, v) in set {
        p.insert(k.to_string(), v.clone());
    }
    p
}

fn input(path: &Path, kind: &str) -> InputArtifact {
    InputArtifact {
        path: path.to_path_buf(),
        origin: InputOrigin::Stage {
            kind: kind.into(),
            instance: kind.into(),
            key: StageKey::parse(&"ab".repeat(32)).unwrap(),
        },
    }
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl ProgressSink for Lines {
    fn progress(&self, _: &str, _: u64, _: u64, _: &str) {}
    fn log(&self, _: &str, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

/// Runs `train-adaptor` in this process under `budget` bytes; returns its output folder and log.
fn train(dir: &Path, image: &Path, text: &Path, p: &Params, budget: u64) -> (PathBuf, String) {
    let out = dir.join(format!("out-{budget}"));
    std::fs::create_dir_all(&out).unwrap();
    let inputs = BTreeMap::from([
        ("image".to_string(), vec![input(image, "encode-image")]),
        ("text".to_string(), vec![input(text, "encode-text")]),
    ]);
    let lines = Arc::new(Lines::default());
    let ctx = StageContext::new(
        "pretrain".into(),
        StageKey::parse(&"cd".repeat(32)).unwrap(),
        p.clone(),
        inputs,
        out.clone(),
        1,
        None,
        lines.clone(),
        Arc::new(AtomicBool::new(false)),
    )
    .with_memory(budget)
    .with_temp_dir(dir.join(format!("tmp-{budget}")))
    .with_resume_dir(dir.join(format!("resume-{budget}")));
    std::fs::create_dir_all(dir.join(format!("tmp-{budget}"))).unwrap();
    let typed = TrainAdaptorParams::validate(p).unwrap();
    adaptor_torch::encode::set_threads(1);
    adaptor_torch::pretrain::run(&typed, &ctx).unwrap();
    let log = lines.0.lock().unwrap().join("\n");
    (out, log)
}

/// The columns of a metrics table, without the wall-clock ones.
fn untimed_columns(path: &Path) -> Vec<(String, arrow_array::ArrayRef)> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() != "seconds" {
                out.push((f.name().clone(), c.clone()));
            }
        }
    }
    out
}

/// The streamed run's files equal the in-memory run's: checkpoints byte for byte, metrics but for
/// their seconds, and the scratch row files are gone.
fn assert_same_training(image: &Path, text: &Path, p: &Params, dir: &Path) {
    let (whole, whole_log) = train(dir, image, text, p, 8 << 30);
    let (streamed, streamed_log) = train(dir, image, text, p, 1 << 20);
    assert!(whole_log.contains("read whole"), "{whole_log}");
    assert!(
        streamed_log.contains("streamed into row files"),
        "{streamed_log}"
    );
    for f in [
        "adaptor.safetensors",
        "adaptor.json",
        "last.safetensors",
        "retrieval.json",
        "provenance.json",
    ] {
        let (a, b) = (
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(streamed.join(f)).unwrap(),
        );
        assert!(
            a == b,
            "{f} differs between the in-memory and streamed runs"
        );
    }
    for f in ["metrics_steps.parquet", "metrics_epochs.parquet"] {
        let (a, b) = (
            untimed_columns(&whole.join(f)),
            untimed_columns(&streamed.join(f)),
        );
        assert_eq!(a.len(), b.len(), "{f}");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.to_data() == y.to_data(), "{f}: column {name} differs");
        }
    }
    let scratch = dir
        .join(format!("tmp-{}", 1 << 20))
        .join("train-adaptor-rows");
    assert!(!scratch.exists(), "{} left behind", scratch.display());
}

#[test]
fn pooled_tables_over_the_budget_train_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let image = table(dir.path(), "image", 3000, 300, 48, None, 1);
    let text = table(dir.path(), "text", 3000, 300, 40, None, 2);
    let p = params(&[
        ("epochs", Value::Int(2)),
        ("batch_size", Value::Int(128)),
        ("lr", Value::Float(1e-3)),
        ("patience", Value::Int(0)),
        ("device", Value::Str("cpu".into())),
    ]);
    assert_same_training(&image, &text, &p, dir.path());
}

#[test]
fn token_tables_with_masks_over_the_budget_train_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Image tokens and text tokens with masks of every length, and a pooled text beside tokens.
    let image = table(dir.path(), "image", 1200, 200, 16, Some(6), 3);
    let text = table(dir.path(), "text", 1200, 200, 12, Some(9), 4);
    let pooled_text = table(dir.path(), "pooled-text", 1200, 200, 20, None, 5);
    let p = params(&[
        ("variant", Value::Str("fusion".into())),
        ("epochs", Value::Int(2)),
        ("batch_size", Value::Int(64)),
        ("lr", Value::Float(1e-3)),
        ("patience", Value::Int(0)),
        ("device", Value::Str("cpu".into())),
    ]);
    assert_same_training(&image, &text, &p, &dir.path().join("tokens"));
    assert_same_training(&image, &pooled_text, &p, &dir.path().join("mixed"));
}

/// The worker's peak resident memory (its `VmHWM` log line) for `train-adaptor` on these tables.
fn worker_peak(dir: &Path, image: &Path, text: &Path, budget: u64) -> u64 {
    let out = dir.join(format!("worker-out-{budget}"));
    std::fs::create_dir_all(&out).unwrap();
    let slot = |p: &Path, kind: &str| {
        let a = input(p, kind);
        vec![JobInput {
            path: a.path,
            origin: a.origin,
            remote: None,
        }]
    };
    let job = Job {
        protocol: PROTOCOL,
        kind: "train-adaptor".into(),
        instance: "pretrain".into(),
        key: StageKey::parse(&"cd".repeat(32)).unwrap(),
        params: params(&[
            ("epochs", Value::Int(1)),
            ("batch_size", Value::Int(512)),
            ("patience", Value::Int(0)),
            ("device", Value::Str("cpu".into())),
        ]),
        inputs: BTreeMap::from([
            ("image".to_string(), slot(image, "encode-image")),
            ("text".to_string(), slot(text, "encode-text")),
        ]),
        out_dir: out,
        threads: 1,
        resume_dir: Some(dir.join(format!("worker-resume-{budget}"))),
        memory: budget,
        temp_dir: Some(dir.join(format!("worker-tmp-{budget}"))),
    };
    std::fs::create_dir_all(job.temp_dir.as_ref().unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_adaptor-torch"))
        .arg("run-stage")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let text = serde_json::to_string(&job).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("(VmHWM)"))
        .unwrap_or_else(|| panic!("no VmHWM line in {stdout}"));
    let bytes = line
        .split('(')
        .nth(2)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line}"));
    eprintln!("budget {budget}: {line}");
    bytes
}

/// A 184 MB pair of tables under a 32 MiB budget: the worker's peak grows by less than twice the
/// budget over its peak on a 6 MB pair (which it reads whole), not by the tables' size.
#[test]
fn the_worker_stays_within_its_budget_on_tables_many_times_larger() {
    let dir = tempfile::tempdir().unwrap();
    let budget: u64 = 32 << 20;
    let (valid, dims) = (512, (512, 256));
    let small = (
        table(dir.path(), "small-image", 2048, valid, dims.0, None, 6),
        table(dir.path(), "small-text", 2048, valid, dims.1, None, 7),
    );
    let big_rows = 60_000;
    let big = (
        table(dir.path(), "big-image", big_rows, valid, dims.0, None, 8),
        table(dir.path(), "big-text", big_rows, valid, dims.1, None, 9),
    );
    let table_bytes = (big_rows * (dims.0 + dims.1) * 4) as u64;
    assert!(table_bytes > 5 * budget);
    let base = worker_peak(dir.path(), &small.0, &small.1, budget);
    let peak = worker_peak(dir.path(), &big.0, &big.1, budget);
    assert!(
        peak < base + 2 * budget,
        "peak {peak} bytes on {table_bytes} bytes of tables, {base} on the small ones (budget \
         {budget})"
    );
}
