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
        setting: published_setting(),
    }
}

/// What a DINOv2 classification in the published setting records.
fn published_setting() -> std::collections::BTreeMap<String, String> {
    [
        ("text_pooling", "pooler"),
        ("backbone_kind", "dinov2"),
        ("image_pooling", "cls"),
        ("resize", "224"),
        ("crop", "224"),
        ("normalize", "half"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
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
fn published_numbers_only_beside_the_published_setting() {
    let base = result("bert", "dinov2-s", "pretrained", 0.01, 0, 0.80);
    assert!(setting::is_published_setting(&base));
    let with = |k: &str, v: &str| {
        let mut r = base.clone();
        r.setting.insert(k.into(), v.into());
        r
    };
    let others = [
        with("text_pooling", "cls"),   // CXR-BERT's [CLS] instead of the pooler
        with("normalize", "imagenet"), // DINOv2 with ImageNet statistics
        with("resize", "256"),         // a 256 → 224 crop downstream
        with("image_pooling", "mean"), // mean of patch tokens
        EvalResult {
            head: "linear".into(),
            ..base.clone()
        },
        EvalResult {
            setting: Default::default(), // written before settings were recorded
            ..base.clone()
        },
    ];
    for r in &others {
        assert!(!setting::is_published_setting(r), "{:?}", r.setting);
        let md = markdown(std::slice::from_ref(r));
        assert!(!md.contains("*pub. "), "{md}");
        assert!(md.contains("1 cell(s) name an encoder pair"), "{md}");
        // One seed outside the setting is enough to leave the cell without the number.
        if r.head == base.head {
            let md = markdown(&[base.clone(), r.clone()]);
            assert!(!md.contains("*pub. "), "{md}");
        }
    }
    let md = markdown(std::slice::from_ref(&base));
    assert!(
        md.contains("*pub. 81.3*") && !md.contains("cell(s) name"),
        "{md}"
    );
    // Segmentation: SIIM needs the original's augmentation.
    let mut seg = EvalResult {
        task: "segmentation".into(),
        dataset: "siim".into(),
        metric: "dice".into(),
        head: "vit-decoder".into(),
        ..base.clone()
    };
    seg.setting.insert("augment".into(), "none".into());
    assert!(!setting::is_published_setting(&seg));
    seg.setting
        .insert("augment".into(), "shift_scale_rotate".into());
    assert!(setting::is_published_setting(&seg));
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
