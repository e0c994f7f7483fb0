//! Whether an evaluation ran in the setting the original published (reference F.1): only then
//! does the report put the original's number beside it. The setting is what the stage recorded
//! in `EvalResult::setting`; a result without one is never taken for the published setting.

use std::collections::BTreeSet;

use super::group::{FractionKey, TaskKey};
use super::EvalResult;

/// The cells (table, row, vision backbone, fraction) holding a result outside the published
/// setting: no published number sits beside them, in `results.md` or in `adaptor results`.
pub(super) fn cells_outside_published_setting(
    results: &[EvalResult],
) -> BTreeSet<(TaskKey, String, String, FractionKey)> {
    results
        .iter()
        .filter(|r| !is_published_setting(r))
        .map(|r| {
            (
                r.task_key(),
                r.row_label(),
                r.vision.clone(),
                FractionKey::of(r.fraction),
            )
        })
        .collect()
}

/// The published setting: the adaptor pre-trained on BERT `pooler_output` text vectors; for
/// classification the MLP head over the backbone's own pooled output (DINOv2 CLS, ResNet-AE latent
/// mean) of images resized straight to the crop (no crop), DINOv2 normalised with mean/std 0.5;
/// for segmentation the original decoders, DINOv2 normalised with mean/std 0.5, and SIIM's
/// training images through ShiftScaleRotate (docs/reproduction.md).
pub fn is_published_setting(r: &EvalResult) -> bool {
    let s = |k: &str| r.setting.get(k).map(String::as_str);
    if r.setting.is_empty() || (r.adaptor == "pretrained" && s("text_pooling") != Some("pooler")) {
        return false;
    }
    let dinov2 = s("backbone_kind") == Some("dinov2");
    let normalized = !dinov2 || s("normalize") == Some("half");
    match r.task.as_str() {
        "classification" => {
            r.head == "mlp"
                && s("image_pooling") == Some(if dinov2 { "cls" } else { "mean" })
                && s("resize").is_some()
                && s("resize") == s("crop")
                && normalized
        }
        "segmentation" => {
            matches!(r.head.as_str(), "unet" | "vit-decoder")
                && normalized
                && (r.dataset != "siim" || s("augment") == Some("shift_scale_rotate"))
        }
        _ => false,
    }
}
