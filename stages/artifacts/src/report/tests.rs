//! The report's tests: statistics, published numbers, the markdown snapshot, the outputs.

use super::markdown::published;
use super::*;

fn result(text: &str, vision: &str, adaptor: &str, fraction: f64, seed: i64, v: f64) -> EvalResult {
    EvalResult {
        instance: format!("classify[text={text},vision={vision},fraction={fraction},seed={seed}]"),
        task: "classification".into(),
        dataset: "rsna".into(),
        metric: "auroc".into(),
        vision: vision.into(),
        text: text.into(),
        adaptor: adaptor.into(),
        head: "mlp".into(),
        fraction,
        seed,
        valid: [("auroc".to_string(), v - 0.01)].into_iter().collect(),
        test: [("auroc".to_string(), v), ("macro_f1".to_string(), v - 0.1)]
            .into_iter()
            .collect(),
        best_epoch: 3,
        epochs_run: 5,
        train_examples: 100,
        trainable_params: 394_753,
        seconds: 1.0,
    }
}

#[test]
fn mean_and_sample_std() {
    let (m, s) = mean_std(&[0.8, 0.9, 1.0]);
    assert!((m - 0.9).abs() < 1e-12 && (s - 0.1).abs() < 1e-12);
    assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
}

#[test]
fn published_numbers_match_by_normalised_names() {
    assert_eq!(
        published(
            "rsna",
            "classification",
            "auroc",
            "BioBERT",
            "dinov2-b",
            0.01
        ),
        Some(84.4)
    );
    assert_eq!(
        published(
            "covidx",
            "classification",
            "accuracy",
            "cxr-bert",
            "resnet-ae",
            1.0
        ),
        Some(77.7)
    );
    assert_eq!(
        published(
            "rsna",
            "classification",
            "auroc",
            "minilm",
            "dinov2-b",
            0.01
        ),
        None
    );
    assert_eq!(
        published("rsna", "classification", "auroc", "bert", "dinov2-s", 0.5),
        None
    );
}

#[test]
fn markdown_report_snapshot() {
    let results = vec![
        result("bert", "dinov2-s", "pretrained", 0.01, 0, 0.80),
        result("bert", "dinov2-s", "pretrained", 0.01, 1, 0.82),
        result("bert", "dinov2-s", "pretrained", 1.0, 0, 0.86),
        result("minilm", "tiny-vit", "pretrained", 0.1, 0, 0.75),
        result("none", "tiny-vit", "none", 0.1, 0, 0.70),
        result("minilm", "tiny-vit", "random", 0.1, 0, 0.65),
    ];
    insta::assert_snapshot!(markdown(&results));
}

#[test]
fn outputs_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let results = vec![
        result("bert", "dinov2-s", "pretrained", 0.01, 0, 0.80),
        result("bert", "dinov2-s", "pretrained", 0.1, 0, 0.84),
    ];
    let plots = write_report(dir.path(), &results).unwrap();
    assert_eq!(plots, vec!["rsna-classification-mlp.png".to_string()]);
    for f in [RESULTS_PARQUET, RESULTS_MD, "rsna-classification-mlp.png"] {
        assert!(
            std::fs::metadata(dir.path().join(f)).unwrap().len() > 0,
            "{f}"
        );
    }
}
