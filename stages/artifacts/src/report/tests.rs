//! The report's tests: statistics, published numbers, the markdown snapshot, the outputs.

use std::collections::BTreeMap;

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

/// The snapshots' results: two seeds in one cell, published numbers for `bert` + `dinov2-s`.
fn snapshot_results() -> Vec<EvalResult> {
    vec![
        result("bert", "dinov2-s", "pretrained", 0.01, 0, 0.80),
        result("bert", "dinov2-s", "pretrained", 0.01, 1, 0.82),
        result("bert", "dinov2-s", "pretrained", 1.0, 0, 0.86),
        result("minilm", "tiny-vit", "pretrained", 0.1, 0, 0.75),
        result("none", "tiny-vit", "none", 0.1, 0, 0.70),
        result("minilm", "tiny-vit", "random", 0.1, 0, 0.65),
    ]
}

#[test]
fn markdown_report_snapshot() {
    let results = snapshot_results();
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

fn zero_shot(text: &str, vision: &str, adaptor: &str, v: f64) -> EvalResult {
    EvalResult {
        instance: format!("zero-shot[{adaptor}]"),
        head: ZERO_SHOT_HEAD.into(),
        fraction: 0.0,
        best_epoch: 0,
        epochs_run: 0,
        train_examples: 0,
        trainable_params: 0,
        ..result(text, vision, adaptor, 0.0, 0, v)
    }
}

fn retrieval(adaptor: &str, r10: f64) -> RetrievalResult {
    let s = |r1: f64, r5: f64, r10: f64, median_rank: f64| RetrievalScores {
        r1,
        r5,
        r10,
        median_rank,
    };
    RetrievalResult {
        instance: format!("retrieve[{adaptor}]"),
        dataset: "mimic-cxr".into(),
        split: "test".into(),
        vision: "tiny-vit".into(),
        text: "minilm".into(),
        adaptor: adaptor.into(),
        seed: 0,
        images: 40,
        reports: 38,
        image_to_text: s(r10 / 4.0, r10 / 2.0, r10, 12.0),
        text_to_image: s(r10 / 5.0, r10 / 2.5, r10 - 0.05, 14.5),
        chance_image_to_text: s(1.0 / 38.0, 5.0 / 38.0, 10.0 / 38.0, 19.5),
        chance_text_to_image: s(0.026, 0.13, 0.26, 19.5),
        seconds: 0.1,
    }
}

/// A 1×1 PNG: what the page embeds is the file's bytes, whatever they draw.
const DOT_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xfc, 0xcf, 0xc0, 0x50,
    0x0f, 0x00, 0x04, 0x85, 0x01, 0x80, 0x84, 0xa9, 0x8c, 0x21, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn link(key: char, params: &[(&str, &str)]) -> InstanceLink {
    InstanceLink {
        href: format!("../../classify/{}/", key.to_string().repeat(64)),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn zero_shot_rows_sit_under_every_fraction_and_retrieval_has_a_table_per_pair() {
    let results = vec![
        result("minilm", "tiny-vit", "pretrained", 0.1, 0, 0.75),
        result("minilm", "tiny-vit", "pretrained", 1.0, 0, 0.80),
        result("minilm", "tiny-vit", "random", 0.1, 0, 0.65),
        zero_shot("minilm", "tiny-vit", "pretrained", 0.70),
        zero_shot("minilm", "tiny-vit", "random", 0.52),
        // No probe of this vision backbone: a zero-shot table of its own, one `0 %` column.
        zero_shot("minilm", "other-vit", "pretrained", 0.61),
    ];
    let runs = vec![retrieval("random", 0.3), retrieval("pretrained", 0.6)];
    let md = markdown(&results) + &retrieval_markdown(&runs);
    assert!(
        md.contains("| zero-shot: minilm | 70.0 ± 0.0 (n=1) | 70.0 ± 0.0 (n=1) |"),
        "{md}"
    );
    assert!(md.contains("other-vit 0 %"), "{md}");
    insta::assert_snapshot!(md);

    // The zero-shot-only table has no plot; the probes' table has one.
    let dir = tempfile::tempdir().unwrap();
    let plots = write_report(dir.path(), &results).unwrap();
    assert_eq!(plots, vec!["rsna-classification-mlp.png".to_string()]);
    assert!(!md.contains("rsna-classification-zero-shot.png"), "{md}");
}

#[test]
fn html_report_snapshot() {
    let results = snapshot_results();
    let runs = vec![PretrainSummary {
        instance: "pretrain[text=bert]".into(),
        variant: "original".into(),
        vision: "dinov2-s".into(),
        text: "bert".into(),
        trainable_params: 1234,
        epochs: 8,
        initial_val_loss: 4.1,
        best_val_loss: 2.05,
        recall: [0.1, 0.3, 0.5, 0.12, 0.33, 0.52],
        chance: 0.01,
    }];
    let links: BTreeMap<String, InstanceLink> = [
        (
            results[0].instance.clone(),
            link('a', &[("lr", "0.001"), ("seed", "0")]),
        ),
        (results[1].instance.clone(), link('b', &[("seed", "1")])),
        (runs[0].instance.clone(), link('c', &[])),
    ]
    .into_iter()
    .collect();
    let images: BTreeMap<String, Vec<u8>> = [
        ("rsna-classification-mlp.png".to_string(), DOT_PNG.to_vec()),
        ("pretraining-0.png".to_string(), DOT_PNG.to_vec()),
    ]
    .into_iter()
    .collect();
    let page = html(&Page {
        results: &results,
        runs: &runs,
        links: &links,
        images: &images,
        curves: &["pretraining-0.png".to_string()],
        // Another grouping's table renders through the same type.
        extra: &[HtmlTable {
            id: "retrieval".into(),
            title: "Retrieval <dinov2-s + bert>".into(),
            corner: "adaptor".into(),
            columns: vec!["R@1/5/10 image→text".into()],
            rows: vec![(
                "pre-trained".into(),
                vec![Some(HtmlCell {
                    value: "10.0 / 30.0 / 50.0".into(),
                    detail: "median rank 3".into(),
                    published: None,
                    runs: vec![(results[1].instance.clone(), "run".into())],
                })],
            )],
            figure: None,
        }],
    });
    // The style sheet is fixed text; the snapshot holds what the data makes.
    let body = &page[page.find("<body>").unwrap()..];
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<style>"));
    insta::assert_snapshot!(body);
}

#[test]
fn html_escapes_names_and_parameters() {
    let mut r = result("<b>bert</b>", "dinov2-s", "pretrained", 0.1, 0, 0.8);
    r.instance = "classify[text=\"<script>alert(1)</script>\"]".into();
    let links: BTreeMap<String, InstanceLink> =
        [(r.instance.clone(), link('d', &[("note", "\"a' & <b>")]))]
            .into_iter()
            .collect();
    let page = html(&Page {
        results: std::slice::from_ref(&r),
        runs: &[],
        links: &links,
        images: &BTreeMap::new(),
        curves: &[],
        extra: &[],
    });
    assert!(
        !page.contains("<script>") && !page.contains("<b>"),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;bert&lt;/b&gt;"), "{page}");
    assert!(
        page.contains("&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;"),
        "{page}"
    );
    assert!(
        page.contains("<dd>&quot;a&#39; &amp; &lt;b&gt;</dd>"),
        "{page}"
    );
}
