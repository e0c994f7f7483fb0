//! Parity of `zero-shot` and `retrieve` with the PyTorch/numpy reference (tools/zeroshot_reference.py,
//! which wrote data/zeroshot/): the same small adaptor checkpoint and raw vectors give the same
//! class probabilities, metrics, ranks, recalls, median ranks and chance levels, within 1e-5.

use std::path::PathBuf;

use adaptor_torch::retrieve::{chance, rank_both_ways, scores};
use adaptor_torch::zeroshot::{class_embeddings, class_probabilities, split_scores};
use artifacts::report::RetrievalScores;
use serde_json::Value;
use tch::{Device, Tensor};
use train::{Adaptor, ImageOnly};

const TOL: f64 = 1e-5;

fn fixture() -> (Adaptor, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/zeroshot");
    let (model, _) = Adaptor::from_checkpoint(&dir.join("adaptor.safetensors"), Device::Cpu)
        .expect("data/zeroshot/adaptor.safetensors (tools/zeroshot_reference.py)");
    let json = std::fs::read_to_string(dir.join("parity.json")).unwrap();
    (model, serde_json::from_str(&json).unwrap())
}

fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (n, d) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([n, d])
}

fn close(what: &str, ours: f64, reference: &Value) {
    let r = reference
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {reference}"));
    assert!(
        (ours - r).abs() <= TOL,
        "{what}: ours {ours}, reference {r} (difference {:e})",
        (ours - r).abs()
    );
}

fn same_scores(what: &str, ours: &RetrievalScores, reference: &Value) {
    close(&format!("{what} r1"), ours.r1, &reference["r1"]);
    close(&format!("{what} r5"), ours.r5, &reference["r5"]);
    close(&format!("{what} r10"), ours.r10, &reference["r10"]);
    close(
        &format!("{what} median rank"),
        ours.median_rank,
        &reference["median_rank"],
    );
}

#[test]
fn zero_shot_probabilities_and_metrics_match_pytorch() {
    let (model, fx) = fixture();
    close(
        "logit scale",
        model.logit_scale().double_value(&[]),
        &fx["logit_scale"],
    );
    let scale = model.logit_scale().exp().double_value(&[]);
    let images = model
        .embed_image(&matrix(&fx["images"]), None, ImageOnly::PerSample)
        .unwrap();
    for case in ["binary", "multiclass"] {
        let c = &fx[case];
        let prompts = model.embed_text(&matrix(&c["prompts"])).unwrap();
        let counts: Vec<usize> = serde_json::from_value(c["counts"].clone()).unwrap();
        let probs = class_probabilities(&images, &class_embeddings(&prompts, &counts), scale);
        let want: Vec<Vec<f64>> = serde_json::from_value(c["probs"].clone()).unwrap();
        assert_eq!(probs.len(), want.len());
        for (i, (ours, theirs)) in probs.iter().zip(&want).enumerate() {
            for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
                close(&format!("{case} prob[{i}][{k}]"), *a, &Value::from(*b));
            }
        }
        let labels: Vec<i64> = serde_json::from_value(c["labels"].clone()).unwrap();
        let s = split_scores(&labels, &probs, case == "binary");
        if case == "binary" {
            close("AUROC", s["auroc"], &c["auroc"]);
        } else {
            close("accuracy", s["accuracy"], &c["accuracy"]);
            close("macro-F1", s["macro_f1"], &c["macro_f1"]);
        }
    }
}

#[test]
fn retrieval_ranks_recalls_and_chance_match_numpy() {
    let (model, fx) = fixture();
    let r = &fx["retrieval"];
    let images = model
        .embed_image(&matrix(&fx["images"]), None, ImageOnly::PerSample)
        .unwrap();
    let reports = model.embed_text(&matrix(&r["reports"])).unwrap();
    let image_study: Vec<i64> = serde_json::from_value(r["image_study"].clone()).unwrap();
    let report_study: Vec<i64> = serde_json::from_value(r["report_study"].clone()).unwrap();
    let ranks = rank_both_ways(&images, &image_study, &reports, &report_study);
    let want = |k: &str| -> Vec<usize> { serde_json::from_value(r[k].clone()).unwrap() };
    assert_eq!(ranks.image_to_text, want("image_to_text_ranks"));
    assert_eq!(ranks.text_to_image, want("text_to_image_ranks"));
    same_scores(
        "image→text",
        &scores(&ranks.image_to_text),
        &r["image_to_text"],
    );
    same_scores(
        "text→image",
        &scores(&ranks.text_to_image),
        &r["text_to_image"],
    );
    same_scores(
        "chance image→text",
        &chance(&vec![1; image_study.len()], report_study.len()),
        &r["chance_image_to_text"],
    );
    let per_study: Vec<usize> = (report_study.iter())
        .map(|s| image_study.iter().filter(|x| *x == s).count())
        .collect();
    same_scores(
        "chance text→image",
        &chance(&per_study, image_study.len()),
        &r["chance_text_to_image"],
    );
}
