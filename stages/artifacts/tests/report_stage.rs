//! The `report` stage as the runner calls it in process: from a `StageContext` over two results
//! to its three outputs, in a process that never maps libtorch (this crate does not link it).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use artifacts::report::{run_stage, EvalResult, RESULTS_MD, RESULTS_PARQUET, RESULT_FILE};
use pipeline::{InputArtifact, InputOrigin, NoProgress, Params, StageContext, StageKey};

fn result(fraction: f64, auroc: f64) -> EvalResult {
    EvalResult {
        instance: "written by the stage".into(),
        task: "classification".into(),
        dataset: "rsna".into(),
        metric: "auroc".into(),
        vision: "dinov2-s".into(),
        text: "bert".into(),
        adaptor: "pretrained".into(),
        head: "mlp".into(),
        fraction,
        seed: 0,
        valid: [("auroc".to_string(), auroc)].into_iter().collect(),
        test: [("auroc".to_string(), auroc)].into_iter().collect(),
        best_epoch: 1,
        epochs_run: 2,
        train_examples: 10,
        trainable_params: 100,
        seconds: 0.5,
        setting: Default::default(),
    }
}

#[test]
fn the_report_stage_runs_in_process_without_libtorch() {
    let dir = tempfile::tempdir().unwrap();
    let key = StageKey::parse(&"c".repeat(64)).unwrap();
    let mut results = Vec::new();
    for (i, (fraction, auroc)) in [(0.1, 0.8), (1.0, 0.9)].into_iter().enumerate() {
        let instance = format!("classify[fraction={fraction}]");
        let path = dir.path().join(format!("r{i}"));
        std::fs::create_dir_all(&path).unwrap();
        result(fraction, auroc)
            .write(&path.join(RESULT_FILE))
            .unwrap();
        results.push(InputArtifact {
            path,
            origin: InputOrigin::Stage {
                kind: "classify".into(),
                instance,
                key: key.clone(),
            },
        });
    }
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let ctx = StageContext::new(
        "report".into(),
        key.clone(),
        Params::new(),
        BTreeMap::from([("results".to_string(), results)]),
        out.clone(),
        1,
        None,
        Arc::new(NoProgress),
        Arc::new(AtomicBool::new(false)),
    );
    run_stage(&ctx).unwrap();

    let md = std::fs::read_to_string(out.join(RESULTS_MD)).unwrap();
    assert!(
        md.contains("## RSNA Pneumonia classification, AUROC (mlp head)"),
        "{md}"
    );
    // The instance names come from the runner, not from the files.
    assert!(md.contains("| `classify[fraction=0.1]` |"), "{md}");
    for f in [RESULTS_PARQUET, "rsna-classification-mlp.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains("libtorch"),
        "the report's process mapped libtorch"
    );
}
