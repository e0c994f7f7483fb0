//! The contrastive loss of the original (`CLIPLossFromSimilarities`, reference A.3): asymmetric
//! InfoNCE over `logits_per_text = (t · vᵀ) · exp(logit_scale)` (rows are texts, columns images).

use tch::{Kind, Tensor};

/// `(1 − w) · caption + w · image`, where `caption = −mean_j log_softmax(S, dim 0)[j, j]`
/// (normalised over texts, for each image) and `image = −mean_i log_softmax(S, dim 1)[i, i]`
/// (normalised over images, for each text). The original uses `w = 0.75`.
pub fn clip_loss(logits_per_text: &Tensor, image_weight: f64) -> Tensor {
    let caption = -logits_per_text
        .log_softmax(0, Kind::Float)
        .diagonal(0, 0, 1)
        .mean(Kind::Float);
    let image = -logits_per_text
        .log_softmax(1, Kind::Float)
        .diagonal(0, 0, 1)
        .mean(Kind::Float);
    caption * (1.0 - image_weight) + image * image_weight
}

/// `logits_per_text` for L2-normalised `text [B, d]` and `image [B, d]`.
pub fn logits_per_text(text: &Tensor, image: &Tensor, logit_scale: &Tensor) -> Tensor {
    text.matmul(&image.transpose(0, 1)) * logit_scale.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×2 batch checked by hand: t = [[1, 0], [0, 1]], v = [[1, 0], [0.6, 0.8]], logit scale
    /// 0 (so exp = 1) give S = t vᵀ = [[1, 0.6], [0, 0.8]].
    #[test]
    fn loss_of_a_hand_checked_two_by_two_batch() {
        let t = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let v = Tensor::from_slice(&[1.0f32, 0.0, 0.6, 0.8]).view([2, 2]);
        let s = logits_per_text(&t, &v, &Tensor::from(0.0f32));
        let e = f64::exp;
        // Columns (over texts): image 0 sees texts [1, 0], image 1 sees texts [0.6, 0.8].
        let caption = -((1.0 - (e(1.0) + e(0.0)).ln()) + (0.8 - (e(0.6) + e(0.8)).ln())) / 2.0;
        // Rows (over images): text 0 sees images [1, 0.6], text 1 sees images [0, 0.8].
        let image = -((1.0 - (e(1.0) + e(0.6)).ln()) + (0.8 - (e(0.0) + e(0.8)).ln())) / 2.0;
        let expected = 0.25 * caption + 0.75 * image;
        assert!((caption - 0.455700).abs() < 1e-6 && (image - 0.442058).abs() < 1e-6);
        let got = clip_loss(&s, 0.75).double_value(&[]);
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        // The weight moves between the two terms: w = 0 is the caption term alone.
        assert!((clip_loss(&s, 0.0).double_value(&[]) - caption).abs() < 1e-6);
        assert!((clip_loss(&s, 1.0).double_value(&[]) - image).abs() < 1e-6);
    }

    #[test]
    fn a_perfect_large_margin_batch_has_near_zero_loss() {
        let s = Tensor::eye(4, (Kind::Float, tch::Device::Cpu)) * 100.0;
        assert!(clip_loss(&s, 0.75).double_value(&[]) < 1e-6);
    }
}
