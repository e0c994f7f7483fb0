//! The segmentation loss: `α · focal + Dice term` (MGCA `segmentation_loss.py` as the original
//! modified it, reference D.2), on logits `x` and targets `t` of shape `[B, 1, H, W]`.

use tch::{Kind, Tensor};

/// Which Dice term is added to the focal loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiceTerm {
    /// MGCA's `−log((2Σpt + 1) / (Σp + Σt + 1))` over the whole batch, `p = σ(x)`
    /// (`--original_dice_loss`).
    Original,
    /// `DiceLoss(smooth=1, p=2, reduction="sum")`: `Σ_b [1 − (Σ p·t + 1)/(Σ p² + t² + 1)]` on
    /// probabilities `p = σ(x)` (the fix; the original's default applied it to raw logits).
    Modified,
    /// The modified term on raw logits, exactly as the original's default (G.11); for
    /// reproducing its numbers only.
    ModifiedOnLogits,
}

impl DiceTerm {
    pub const NAMES: &'static [&'static str] = &["original", "modified", "modified_on_logits"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "original" => Some(DiceTerm::Original),
            "modified" => Some(DiceTerm::Modified),
            "modified_on_logits" => Some(DiceTerm::ModifiedOnLogits),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DiceTerm::Original => "original",
            DiceTerm::Modified => "modified",
            DiceTerm::ModifiedOnLogits => "modified_on_logits",
        }
    }
}

/// MGCA's `FocalLoss(γ)`: the mean over pixels of the numerically stable BCE-with-logits
/// `x − x·t + m + log(e^{−m} + e^{−x−m})`, `m = max(−x, 0)`, times `exp(γ · logsigmoid(−x(2t − 1)))`.
pub fn focal(x: &Tensor, t: &Tensor, gamma: f64) -> Tensor {
    let m = (-x).clamp_min(0.0);
    let bce = x - x * t + &m + ((-&m).exp() + (-x - &m).exp()).log();
    let invprobs = (-x * (t * 2.0 - 1.0)).log_sigmoid();
    ((invprobs * gamma).exp() * bce).mean(Kind::Float)
}

/// `−log((2Σpt + 1) / (Σp + Σt + 1))` over everything in the batch.
pub fn dice_original(x: &Tensor, t: &Tensor) -> Tensor {
    let p = x.sigmoid();
    let inter = (&p * t).sum(Kind::Float);
    let ratio = (inter * 2.0 + 1.0) / (p.sum(Kind::Float) + t.sum(Kind::Float) + 1.0);
    -ratio.log()
}

/// `Σ_b [1 − (Σ p·t + 1)/(Σ p² + t² + 1)]` with `p` as given (probabilities, or logits for the
/// original's behaviour).
pub fn dice_modified(p: &Tensor, t: &Tensor) -> Tensor {
    let b = p.size()[0];
    let p = p.reshape([b, -1]);
    let t = t.reshape([b, -1]);
    let dims = [1i64];
    let num = (&p * &t).sum_dim_intlist(&dims[..], false, Kind::Float) + 1.0;
    let den = (p.pow_tensor_scalar(2) + t.pow_tensor_scalar(2)).sum_dim_intlist(
        &dims[..],
        false,
        Kind::Float,
    ) + 1.0;
    (-(num / den) + 1.0).sum(Kind::Float)
}

/// `MixedLoss`: `α · focal(γ) + Dice term`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegLoss {
    /// The original's default 10 (`segment.py`); its `correct` SIIM script used 2.5.
    pub alpha: f64,
    pub gamma: f64,
    pub dice: DiceTerm,
}

impl Default for SegLoss {
    fn default() -> Self {
        SegLoss {
            alpha: 10.0,
            gamma: 2.0,
            dice: DiceTerm::Modified,
        }
    }
}

impl SegLoss {
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        let dice = match self.dice {
            DiceTerm::Original => dice_original(x, t),
            DiceTerm::Modified => dice_modified(&x.sigmoid(), t),
            DiceTerm::ModifiedOnLogits => dice_modified(x, t),
        };
        focal(x, t, self.gamma) * self.alpha + dice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).view([1, 1, 1, v.len() as i64])
    }

    #[test]
    fn hand_computed_values() {
        // x = 0 everywhere: BCE = ln 2, invprobs = logsigmoid(0) = −ln 2 ⇒ weight 2^−γ = 1/4.
        let x = t(&[0.0, 0.0]);
        let y = t(&[1.0, 0.0]);
        let f = focal(&x, &y, 2.0).double_value(&[]);
        assert!((f - 2f64.ln() / 4.0).abs() < 1e-7);
        // p = ½: original = −log((2·½ + 1)/(1 + 1 + 1)) = −log(2/3).
        let d = dice_original(&x, &y).double_value(&[]);
        assert!((d + (2.0f64 / 3.0).ln()).abs() < 1e-7);
        // modified on p: 1 − (½ + 1)/(¼ + ¼ + 1 + 1) = 1 − 1.5/2.5 = 0.4.
        let d = dice_modified(&x.sigmoid(), &y).double_value(&[]);
        assert!((d - 0.4).abs() < 1e-7);
        // on logits (the original's default): 1 − (0 + 1)/(0 + 1 + 1) = 0.5.
        let d = dice_modified(&x, &y).double_value(&[]);
        assert!((d - 0.5).abs() < 1e-7);
        let l = SegLoss::default().forward(&x, &y).double_value(&[]);
        assert!((l - (10.0 * 2f64.ln() / 4.0 + 0.4)).abs() < 1e-6);
    }
}
