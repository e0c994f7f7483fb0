//! The scores against scikit-learn: `data/scores/fixtures.json`, written by
//! `tools/make_score_fixtures.py`, must be reproduced to 1e-12.

mod common;

use serde_json::Value;
use train::scores::{
    accuracy, argmax_predictions, binary_auroc, binary_predictions, classification_scores,
    macro_f1, one_vs_rest_auroc,
};

fn close(name: &str, what: &str, got: Option<f64>, want: &Value) {
    match (got, want.as_f64()) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-12, "{name} {what}: {g} vs sklearn {w}"),
        (g, _) => panic!("{name} {what}: {g:?} vs sklearn {want}"),
    }
}

#[test]
fn scores_match_sklearn() {
    let path = common::repo_root().join("data/scores/fixtures.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let classes = case["classes"].as_u64().unwrap() as usize;
        let labels: Vec<i64> = serde_json::from_value(case["labels"].clone()).unwrap();
        let probs: Vec<f64> = serde_json::from_value(case["probs"].clone()).unwrap();
        let e = &case["expected"];
        let all = classification_scores(&labels, &probs, classes);
        let predicted = if classes == 1 {
            close(name, "auroc", binary_auroc(&labels, &probs), &e["auroc"]);
            binary_predictions(&probs)
        } else {
            let per = one_vs_rest_auroc(&labels, &probs, classes);
            let want = e["auroc_per_class"].as_array().unwrap();
            for (k, (g, w)) in per.iter().zip(want).enumerate() {
                close(name, &format!("auroc class {k}"), *g, w);
                close(
                    name,
                    "auroc_class_K key",
                    all.get(&format!("auroc_class_{k}")).copied(),
                    w,
                );
            }
            argmax_predictions(&probs, classes)
        };
        close(name, "auroc key", all.get("auroc").copied(), &e["auroc"]);
        close(
            name,
            "accuracy",
            Some(accuracy(&labels, &predicted)),
            &e["accuracy"],
        );
        close(
            name,
            "macro_f1",
            Some(macro_f1(&labels, &predicted)),
            &e["macro_f1"],
        );
        close(
            name,
            "accuracy key",
            all.get("accuracy").copied(),
            &e["accuracy"],
        );
        close(
            name,
            "macro_f1 key",
            all.get("macro_f1").copied(),
            &e["macro_f1"],
        );
    }
}
