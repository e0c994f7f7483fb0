//! What the report stage's tests share: an evaluation result as a `classify` stage writes it.

use artifacts::report::EvalResult;

/// An RSNA classification result (AUROC, `dinov2-s`, mlp head) of text encoder `text`.
pub fn result(text: &str, adaptor: &str, fraction: f64, seed: i64, auroc: f64) -> EvalResult {
    EvalResult {
        instance: "written by the stage".into(),
        task: "classification".into(),
        dataset: "rsna".into(),
        metric: "auroc".into(),
        vision: "dinov2-s".into(),
        text: text.into(),
        adaptor: adaptor.into(),
        head: "mlp".into(),
        fraction,
        seed,
        valid: [("auroc".to_string(), auroc - 0.02)].into_iter().collect(),
        test: [("auroc".to_string(), auroc), ("loss".to_string(), 0.4)]
            .into_iter()
            .collect(),
        best_epoch: 2,
        epochs_run: 4,
        train_examples: 100,
        trainable_params: 1000,
        seconds: 0.5,
        setting: Default::default(),
    }
}
