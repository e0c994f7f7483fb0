//! The encode stages on a real records table (a synthetic MIMIC-CXR run through the real ingest):
//! in process and through the worker binary, tables aligned with the records, bit-identical
//! reruns, shards, token tables, and the errors people will meet.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use artifacts::table::{read_aligned, read_string_columns, EmbeddingTable};
use common::*;
use pipeline::{
    InputArtifact, InputOrigin, Params, ProgressSink, Stage, StageContext, StageKey, Value,
};
use stages::encode::{self, EMBEDDINGS_FILE, TOKENS_FILE};
use stages::ingest::{self, DatasetKind, IngestOptions, Verify};
use stages::worker::WorkerStage;

/// A synthetic MIMIC-CXR folder and its ingest output, made once per test binary.
struct Dataset {
    raw: PathBuf,
    records: PathBuf,
    _dir: tempfile::TempDir,
}

fn dataset() -> &'static Dataset {
    static D: OnceLock<Dataset> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let records = dir.path().join("ingest");
        stages::synth::generate_with_size(DatasetKind::MimicCxr, &raw, 16, 3, 64).unwrap();
        let opts = IngestOptions {
            verify: Verify::Exists,
            ..IngestOptions::default()
        };
        ingest::ingest(DatasetKind::MimicCxr, &raw, &records, &opts, &|_| {}).unwrap();
        Dataset {
            raw,
            records,
            _dir: dir,
        }
    })
}

fn records_keys() -> Vec<String> {
    read_string_columns(&dataset().records.join(ingest::RECORDS), &["key"])
        .unwrap()
        .remove(0)
}

#[derive(Default)]
struct Collect {
    logs: Mutex<Vec<String>>,
    progress: Mutex<Vec<(u64, u64, String)>>,
    cancel_on_progress: Option<Arc<AtomicBool>>,
}

impl ProgressSink for Collect {
    fn progress(&self, _: &str, done: u64, total: u64, unit: &str) {
        self.progress
            .lock()
            .unwrap()
            .push((done, total, unit.into()));
        if let Some(c) = &self.cancel_on_progress {
            c.store(true, Ordering::Relaxed);
        }
    }

    fn log(&self, _: &str, line: &str) {
        self.logs.lock().unwrap().push(line.into());
    }
}

fn backbone(name: &str, kind: &str, path: &Path) -> InputArtifact {
    InputArtifact {
        path: path.to_path_buf(),
        origin: InputOrigin::External {
            group: "backbones".into(),
            name: name.into(),
            kind: kind.into(),
            params: Params::new(),
        },
    }
}

fn context(
    decl: &stages::kinds::Declaration,
    overrides: &[(&str, Value)],
    backbone: InputArtifact,
    out: &Path,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
) -> StageContext {
    let mut params: Params = (decl.params)()
        .into_iter()
        .map(|p| (p.name.to_string(), p.default.expect("all optional")))
        .collect();
    for (k, v) in overrides {
        params.insert(k.to_string(), v.clone());
    }
    params.insert("device".into(), Value::Str("cpu".into()));
    (decl.validate)(&params).unwrap();
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "records".to_string(),
        vec![InputArtifact {
            path: dataset().records.clone(),
            origin: InputOrigin::Stage {
                kind: "ingest".into(),
                instance: "ingest[dataset=mimic]".into(),
                key: StageKey::parse(&"a".repeat(64)).unwrap(),
            },
        }],
    );
    inputs.insert(
        "raw".to_string(),
        vec![InputArtifact {
            path: dataset().raw.clone(),
            origin: InputOrigin::Stage {
                kind: "synth".into(),
                instance: "synth".into(),
                key: StageKey::parse(&"b".repeat(64)).unwrap(),
            },
        }],
    );
    inputs.insert("backbone".to_string(), vec![backbone]);
    std::fs::create_dir_all(out).unwrap();
    StageContext::new(
        format!("{}[test]", decl.kind),
        StageKey::parse(&"c".repeat(64)).unwrap(),
        params,
        inputs,
        out.to_path_buf(),
        2,
        None,
        sink,
        cancel,
    )
}

fn run_local(
    decl: &stages::kinds::Declaration,
    overrides: &[(&str, Value)],
    bb: InputArtifact,
    out: &Path,
) -> Result<(), String> {
    let ctx = context(
        decl,
        overrides,
        bb,
        out,
        Arc::new(Collect::default()),
        Arc::new(AtomicBool::new(false)),
    );
    adaptor_torch::kinds::run(decl.kind, &ctx).map_err(|e| e.to_string())
}

fn bert() -> InputArtifact {
    backbone("tiny-bert", "bert", &fixtures().join("bert-safetensors"))
}

fn dinov2() -> InputArtifact {
    backbone("tiny-dinov2", "dinov2", &fixtures().join("dinov2"))
}

fn records_path() -> PathBuf {
    dataset().records.join(ingest::RECORDS)
}

#[test]
fn encode_text_writes_an_aligned_table_equal_to_the_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    run_local(
        &encode::TEXT,
        &[("batch_size", Value::Int(4))],
        bert(),
        &out,
    )
    .unwrap();
    let t = read_aligned(&[out.join(EMBEDDINGS_FILE)], &records_path()).unwrap();
    let keys = records_keys();
    assert!(keys.len() >= 6, "{} records", keys.len());
    assert_eq!(t.keys, keys);
    assert_eq!(t.meta.dim, 32);
    assert_eq!(t.meta.pooling, "pooler");
    assert_eq!(t.meta.backbone, "tiny-bert");
    assert!(
        t.meta.preprocessing.contains("\"max_length\":112"),
        "{}",
        t.meta.preprocessing
    );
    let cols = read_string_columns(&records_path(), &["split", "caption"]).unwrap();
    assert_eq!(t.splits.as_ref().unwrap(), &cols[0]);
    // Row i is the encoder's output for caption i.
    let enc = adaptor_torch::bert::TextEncoder::load(
        &fixtures().join("bert-safetensors"),
        112,
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .unwrap();
    let (one, _) = enc
        .embed(
            &[cols[1][3].as_str()],
            adaptor_torch::bert::TextPooling::Pooler,
        )
        .unwrap();
    let row = tch::Tensor::from_slice(t.row(3));
    // Batch of 4 against a batch of 1 on this machine: another kernel order only.
    assert_all_within(
        &[compare("row 3", &row, &one.get(0), Tol::new(1e-5, 1e-7))],
        "this machine",
    );

    // Same inputs, same settings: the same bytes.
    let again = tmp.path().join("b");
    run_local(
        &encode::TEXT,
        &[("batch_size", Value::Int(4))],
        bert(),
        &again,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(out.join(EMBEDDINGS_FILE)).unwrap(),
        std::fs::read(again.join(EMBEDDINGS_FILE)).unwrap(),
        "encode-text is not deterministic"
    );

    // The stage feeds the loop windows of records whose length is a multiple of the write window
    // (32 rows at batch size 2, texts sorted by length within it): the same bytes as one loop over
    // every row. The records six times over, for windows enough.
    use adaptor_torch::encoder::{encode_texts, encode_texts_into, Items, LoopOptions, TableOut};
    let pooling = adaptor_torch::bert::TextPooling::Pooler;
    let opts = LoopOptions::new(2, 2, "texts", tch::Device::Cpu);
    let (whole, windowed) = (tmp.path().join("whole"), tmp.path().join("windowed"));
    let repeat = |c: &[String]| [c, c, c, c, c, c].concat();
    let (keys, splits, texts) = (repeat(&keys), repeat(&cols[0]), repeat(&cols[1]));
    let items = |r: std::ops::Range<usize>| Items {
        keys: &keys[r.clone()],
        splits: Some(&splits[r.clone()]),
        values: &texts[r],
    };
    let rows = keys.len();
    encode_texts(
        &enc,
        pooling,
        items(0..rows),
        &whole,
        &t.meta,
        &opts,
        &NoReport,
    )
    .unwrap();
    let mut table = TableOut::create(&windowed, &t.meta, true, rows, &opts, &NoReport).unwrap();
    assert!(rows > 64, "{rows} rows: two windows or fewer");
    for start in (0..rows).step_by(32) {
        let r = start..(start + 32).min(rows);
        encode_texts_into(&enc, pooling, items(r), &mut table, &opts, &NoReport).unwrap();
    }
    assert_eq!(table.finish(&opts, &NoReport).unwrap(), rows);
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&windowed).unwrap(),
        "windows of texts write another table"
    );
}

#[test]
fn shards_fill_one_table() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run_local(
        &encode::TEXT,
        &[
            ("batch_size", Value::Int(2)),
            ("pooling", Value::Str("mean".into())),
        ],
        bert(),
        &whole,
    )
    .unwrap();
    let mut parts = Vec::new();
    for i in 0..3 {
        let out = tmp.path().join(format!("s{i}"));
        run_local(
            &encode::TEXT,
            &[
                ("batch_size", Value::Int(2)),
                ("pooling", Value::Str("mean".into())),
                ("shard", Value::Str(format!("{i}/3"))),
            ],
            bert(),
            &out,
        )
        .unwrap();
        parts.push(out.join(EMBEDDINGS_FILE));
    }
    parts.reverse();
    let joined = read_aligned(&parts, &records_path()).unwrap();
    let whole = EmbeddingTable::read(&whole.join(EMBEDDINGS_FILE)).unwrap();
    assert_eq!(joined.keys, whole.keys);
    let d = joined
        .values
        .iter()
        .zip(&whole.values)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "sharded and whole tables differ by {d}");
    // A shard alone is not the table.
    let err = read_aligned(&parts[..1], &records_path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not aligned with the records table: it holds rows")
            && err.contains("pass all the shards"),
        "{err}"
    );
}

#[test]
fn text_tokens_go_to_their_own_table_with_a_mask() {
    let tmp = tempfile::tempdir().unwrap();
    run_local(
        &encode::TEXT,
        &[
            ("pooling", Value::Str("tokens".into())),
            ("max_length", Value::Int(16)),
        ],
        bert(),
        tmp.path(),
    )
    .unwrap();
    assert!(!tmp.path().join(EMBEDDINGS_FILE).exists());
    let t = read_aligned(&[tmp.path().join(TOKENS_FILE)], &records_path()).unwrap();
    assert_eq!((t.meta.tokens, t.meta.dim), (Some(16), 32));
    let mask = t.mask.as_ref().unwrap();
    for r in 0..t.rows() {
        let m = &mask[r * 16..(r + 1) * 16];
        let n = m.iter().filter(|&&b| b).count();
        assert!(m[..n].iter().all(|&b| b) && n >= 3, "row {r}: mask {m:?}");
        // Padded positions hold zeros.
        assert!(t.row(r)[n * 32..].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn encode_image_with_dinov2_and_resnet_ae() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dino");
    // The fixture's patch grid is 5×5 at 70 px; 56 px interpolates it to 4×4.
    let small = [
        ("resize", Value::Int(64)),
        ("image_size", Value::Int(56)),
        ("batch_size", Value::Int(3)),
    ];
    run_local(&encode::IMAGE, &small, dinov2(), &out).unwrap();
    let t = read_aligned(&[out.join(EMBEDDINGS_FILE)], &records_path()).unwrap();
    assert_eq!(
        (
            t.meta.dim,
            t.meta.pooling.as_str(),
            t.meta.backbone_kind.as_str()
        ),
        (32, "cls", "dinov2")
    );
    assert!(t.meta.preprocessing.contains("\"normalize\":\"imagenet\""));
    let again = tmp.path().join("dino2");
    run_local(&encode::IMAGE, &small, dinov2(), &again).unwrap();
    assert_eq!(
        std::fs::read(out.join(EMBEDDINGS_FILE)).unwrap(),
        std::fs::read(again.join(EMBEDDINGS_FILE)).unwrap()
    );
    // `half` normalisation is a different table.
    let half = tmp.path().join("half");
    let mut p = small.to_vec();
    p.push(("normalize", Value::Str("half".into())));
    run_local(&encode::IMAGE, &p, dinov2(), &half).unwrap();
    assert_ne!(
        EmbeddingTable::read(&half.join(EMBEDDINGS_FILE))
            .unwrap()
            .values,
        t.values
    );
    // Patch tokens: 16 per image.
    let tok = tmp.path().join("tok");
    let mut p = small.to_vec();
    p.push(("pooling", Value::Str("tokens".into())));
    run_local(&encode::IMAGE, &p, dinov2(), &tok).unwrap();
    let tt = EmbeddingTable::read(&tok.join(TOKENS_FILE)).unwrap();
    assert_eq!(tt.meta.tokens, Some(16));

    // ResNet-AE from the converted fixture: the mean-pooled latent.
    let ae = tmp.path().join("ae-backbone");
    adaptor_torch::adhoc::convert_resnet_ae(&fixtures().join("resnet-ae/state-dict.pt"), &ae)
        .unwrap();
    let out = tmp.path().join("ae");
    run_local(
        &encode::IMAGE,
        &[("batch_size", Value::Int(4))],
        backbone("ae", "resnet-ae", &ae),
        &out,
    )
    .unwrap();
    let t = read_aligned(&[out.join(EMBEDDINGS_FILE)], &records_path()).unwrap();
    assert_eq!((t.meta.dim, t.meta.pooling.as_str()), (16, "mean"));
    let err = run_local(
        &encode::IMAGE,
        &[("pooling", Value::Str("cls".into()))],
        backbone("ae", "resnet-ae", &ae),
        &tmp.path().join("x"),
    )
    .unwrap_err();
    assert!(err.contains("no CLS token"), "{err}");
}

#[test]
fn wrong_backbone_kind_and_bad_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = run_local(&encode::TEXT, &[], dinov2(), tmp.path()).unwrap_err();
    assert_eq!(
        err,
        "encode-text: backbone `tiny-dinov2` has kind `dinov2`; encode-text takes bert"
    );
    let err = run_local(
        &encode::IMAGE,
        &[("image_size", Value::Int(60))],
        dinov2(),
        tmp.path(),
    )
    .unwrap_err();
    assert!(
        err.contains("image_size 60 is not a multiple of DINOv2's patch size 14"),
        "{err}"
    );
    let err = run_local(
        &encode::TEXT,
        &[("text_column", Value::Str("nope".into()))],
        bert(),
        tmp.path(),
    )
    .unwrap_err();
    assert!(
        err.contains("no column `nope` (columns: key, path, split,"),
        "{err}"
    );
}

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_adaptor-torch"))
}

#[test]
fn the_worker_binary_runs_a_stage_and_streams_its_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Arc::new(Collect::default());
    let ctx = context(
        &encode::TEXT,
        &[("batch_size", Value::Int(4))],
        bert(),
        tmp.path(),
        sink.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    let stage = WorkerStage::new(encode::TEXT, worker());
    stage.run(&ctx).unwrap();
    let t = read_aligned(&[tmp.path().join(EMBEDDINGS_FILE)], &records_path()).unwrap();
    assert_eq!(t.keys, records_keys());
    let progress = sink.progress.lock().unwrap().clone();
    let n = t.rows() as u64;
    assert_eq!(progress.first(), Some(&(0, n, "texts".to_string())));
    assert_eq!(progress.last(), Some(&(n, n, "texts".to_string())));
    let logs = sink.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("encode-text: tiny-bert") && logs.contains("texts/s"),
        "{logs}"
    );
    // The worker's table is the in-process table, byte for byte.
    let local = tmp.path().join("local");
    run_local(
        &encode::TEXT,
        &[("batch_size", Value::Int(4))],
        bert(),
        &local,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join(EMBEDDINGS_FILE)).unwrap(),
        std::fs::read(local.join(EMBEDDINGS_FILE)).unwrap()
    );
}

#[test]
fn worker_errors_name_the_corrupt_image() {
    // A copy of the raw folder with one image truncated.
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    copy_dir(&dataset().raw, &raw);
    let paths = read_string_columns(&records_path(), &["path"])
        .unwrap()
        .remove(0);
    let victim = raw.join(&paths[2]);
    std::fs::write(&victim, b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let sink = Arc::new(Collect::default());
    let mut ctx_inputs = context(
        &encode::IMAGE,
        &[("resize", Value::Int(64)), ("image_size", Value::Int(56))],
        dinov2(),
        &tmp.path().join("out"),
        sink,
        Arc::new(AtomicBool::new(false)),
    );
    // Point `raw` at the damaged copy.
    ctx_inputs = rebind_raw(ctx_inputs, &raw);
    let err = WorkerStage::new(encode::IMAGE, worker())
        .run(&ctx_inputs)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&victim.display().to_string()), "{err}");
}

fn rebind_raw(ctx: StageContext, raw: &Path) -> StageContext {
    let mut inputs = BTreeMap::new();
    for slot in ["records", "backbone"] {
        inputs.insert(slot.to_string(), ctx.inputs(slot).to_vec());
    }
    let mut r = ctx.inputs("raw").to_vec();
    r[0].path = raw.to_path_buf();
    inputs.insert("raw".to_string(), r);
    StageContext::new(
        ctx.instance().to_string(),
        ctx.key().clone(),
        ctx.params().clone(),
        inputs,
        ctx.out_dir().to_path_buf(),
        ctx.threads(),
        None,
        Arc::new(Collect::default()),
        Arc::new(AtomicBool::new(false)),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_cancelled_run_kills_the_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let sink = Arc::new(Collect {
        cancel_on_progress: Some(cancel.clone()),
        ..Collect::default()
    });
    let ctx = context(
        &encode::TEXT,
        &[("batch_size", Value::Int(1))],
        bert(),
        tmp.path(),
        sink,
        cancel,
    );
    let err = WorkerStage::new(encode::TEXT, worker())
        .run(&ctx)
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("cancelled"), "{err}");
}

#[test]
fn a_missing_worker_binary_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &encode::TEXT,
        &[],
        bert(),
        tmp.path(),
        Arc::new(Collect::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let err = WorkerStage::new(encode::TEXT, "/nonexistent/adaptor-torch")
        .run(&ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot start the torch worker /nonexistent/adaptor-torch"),
        "{err}"
    );
}

#[test]
fn overlapped_and_sequential_loops_write_the_same_table() {
    // The overlapped loop is what runs on a GPU; on the CPU the sequential one does. Same bytes.
    use adaptor_torch::encoder::{encode_images, Items, LoopOptions, VisionModel};
    use adaptor_torch::preprocess::{Normalize, Preprocess};
    let tmp = tempfile::tempdir().unwrap();
    let model = VisionModel::load(
        &fixtures().join("dinov2"),
        "dinov2",
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .unwrap();
    let pre = Preprocess::Dinov2 {
        resize: 64,
        crop: 56,
        normalize: Normalize::Half,
    };
    let mut cols = read_string_columns(&records_path(), &["key", "path"]).unwrap();
    let paths: Vec<PathBuf> = cols
        .pop()
        .unwrap()
        .iter()
        .map(|p| dataset().raw.join(p))
        .collect();
    let keys = cols.pop().unwrap();
    let meta = artifacts::table::TableMeta {
        table: "embeddings".into(),
        backbone: "d".into(),
        backbone_kind: "dinov2".into(),
        dim: 32,
        tokens: None,
        pooling: "cls".into(),
        preprocessing: "{}".into(),
        precision: "fp32".into(),
        shard: "0/1".into(),
        row_start: 0,
        row_end: keys.len(),
        rows_total: keys.len(),
    };
    let mut bytes = Vec::new();
    for overlap in [false, true] {
        let out = tmp.path().join(format!("{overlap}.parquet"));
        let mut opts = LoopOptions::new(4, 2, "images", tch::Device::Cpu);
        opts.overlap = overlap;
        let items = Items {
            keys: &keys,
            splits: None,
            values: &paths,
        };
        let pooling = model.resolve_pooling("auto").unwrap();
        let n = encode_images(
            &model,
            pooling,
            &pre,
            adaptor_torch::preprocess::TrainCrop::Center,
            items,
            &out,
            &meta,
            &opts,
            &NoReport,
        )
        .unwrap();
        assert_eq!(n, keys.len());
        bytes.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(bytes[0], bytes[1]);

    // Decode once: the same rows read from a `preprocess` artifact at resize (64 px), through the
    // overlapped loop (a prefetch queue one batch deep): the same bytes again.
    let pre_dir = tmp.path().join("preprocess");
    std::fs::create_dir_all(&pre_dir).unwrap();
    let opts = stages::preprocess::PreprocessOptions {
        size: 64,
        threads: 2,
    };
    stages::preprocess::preprocess(&records_path(), &dataset().raw, &pre_dir, &opts, &NoReport)
        .unwrap();
    let images = stages::preprocess::PreprocessedImages::open(&pre_dir).unwrap();
    let out = tmp.path().join("preprocessed.parquet");
    let mut opts = LoopOptions::new(4, 2, "images", tch::Device::Cpu);
    (opts.overlap, opts.prefetch) = (true, 1);
    let rows = adaptor_torch::encoder::ImageRows {
        keys: &keys,
        splits: None,
        source: adaptor_torch::encoder::ImageSource::Preprocessed {
            images: &images,
            first: 0,
        },
    };
    let pooling = model.resolve_pooling("auto").unwrap();
    adaptor_torch::encoder::encode_image_rows(
        &model,
        pooling,
        &pre,
        adaptor_torch::preprocess::TrainCrop::Center,
        rows,
        &out,
        &meta,
        &opts,
        &NoReport,
    )
    .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == bytes[0],
        "the tables differ"
    );

    // The stage's windows (here of 8 rows, a multiple of the write window of 4): each reads its
    // rows of the artifact from its first row on, into one table. The same bytes.
    let windowed = tmp.path().join("windowed.parquet");
    let opts = LoopOptions::new(4, 2, "images", tch::Device::Cpu);
    let mut table = adaptor_torch::encoder::TableOut::create(
        &windowed,
        &meta,
        false,
        keys.len(),
        &opts,
        &NoReport,
    )
    .unwrap();
    assert!(keys.len() > 8, "{} rows: one window only", keys.len());
    for first in (0..keys.len()).step_by(8) {
        let r = first..(first + 8).min(keys.len());
        let rows = adaptor_torch::encoder::ImageRows {
            keys: &keys[r],
            splits: None,
            source: adaptor_torch::encoder::ImageSource::Preprocessed {
                images: &images,
                first,
            },
        };
        adaptor_torch::encoder::encode_image_rows_into(
            &model,
            pooling,
            &pre,
            adaptor_torch::preprocess::TrainCrop::Center,
            rows,
            None,
            &mut table,
            &opts,
            &NoReport,
        )
        .unwrap();
    }
    assert_eq!(table.finish(&opts, &NoReport).unwrap(), keys.len());
    assert!(
        std::fs::read(&windowed).unwrap() == bytes[0],
        "windows of images write another table"
    );

    // Random training crops (the original's MIMIC-CXR pre-training embeddings): only the `train`
    // rows move off the center window, each the same way in every run.
    let splits = read_string_columns(&records_path(), &["split"])
        .unwrap()
        .remove(0);
    let run = |crop: adaptor_torch::preprocess::TrainCrop, name: &str| {
        let out = tmp.path().join(name);
        let items = Items {
            keys: &keys,
            splits: Some(&splits),
            values: &paths,
        };
        let opts = LoopOptions::new(4, 2, "images", tch::Device::Cpu);
        let pooling = model.resolve_pooling("auto").unwrap();
        encode_images(
            &model, pooling, &pre, crop, items, &out, &meta, &opts, &NoReport,
        )
        .unwrap();
        artifacts::table::EmbeddingTable::read(&out).unwrap()
    };
    let center = run(
        adaptor_torch::preprocess::TrainCrop::Center,
        "center.parquet",
    );
    let random = adaptor_torch::preprocess::TrainCrop::Random { seed: 42 };
    let (a, b) = (run(random, "r1.parquet"), run(random, "r2.parquet"));
    assert_eq!(a.values, b.values);
    let mut moved = 0;
    for (i, split) in splits.iter().enumerate() {
        if split == "train" {
            moved += usize::from(a.row(i) != center.row(i));
        } else {
            assert_eq!(a.row(i), center.row(i), "row {i} ({split})");
        }
    }
    let train = splits.iter().filter(|s| *s == "train").count();
    assert!(
        train > 0 && moved * 10 >= train * 8,
        "{moved} of {train} train rows moved"
    );
}

struct NoReport;

impl stages::preprocess::Progress for NoReport {
    fn log(&self, _: &str) {}
    fn progress(&self, _: u64, _: u64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

impl adaptor_torch::encoder::Reporter for NoReport {
    fn log(&self, _: &str) {}
    fn progress(&self, _: u64, _: u64, _: &str) {}
}
