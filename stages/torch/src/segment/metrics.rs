//! Segmentation metrics: the original's per-image Dice (`segmenter.py` `get_dice`, reference D.2),
//! Dice over images with a non-empty truth, the share of empty truths, and what an all-empty
//! predictor would score (G.16: with ~77 % empty images it scores ~0.77).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// Per-image Dice of a batch: `p = σ(x) > 0.5` (i.e. `x > 0`), `t = mask > 0.5`; an empty truth
/// scores 1 when the prediction is empty, else 0; otherwise `2|p∩t| / (|p| + |t|)`. Returns
/// `(dice, truth_non_empty)` per image.
pub fn dice_per_image(logits: &Tensor, masks: &Tensor) -> Vec<(f64, bool)> {
    let _g = tch::no_grad_guard();
    let b = logits.size()[0];
    let p = logits
        .sigmoid()
        .gt(0.5)
        .reshape([b, -1])
        .to_kind(Kind::Double);
    let t = masks.gt(0.5).reshape([b, -1]).to_kind(Kind::Double);
    let dims = [1i64];
    let sum = |x: &Tensor| -> Vec<f64> {
        let s = x
            .sum_dim_intlist(&dims[..], false, Kind::Double)
            .to_device(tch::Device::Cpu);
        let mut v = vec![0f64; b as usize];
        s.copy_data(&mut v, b as usize);
        v
    };
    let inter = sum(&(&p * &t));
    let ps = sum(&p);
    let ts = sum(&t);
    (0..b as usize)
        .map(|i| {
            if ts[i] == 0.0 {
                (if ps[i] == 0.0 { 1.0 } else { 0.0 }, false)
            } else {
                (2.0 * inter[i] / (ps[i] + ts[i]), true)
            }
        })
        .collect()
}

/// A split's metrics from per-image results (the whole split at once: images weigh equally,
/// where the original averaged batch means).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiceSummary {
    /// Mean per-image Dice over all images.
    pub dice: f64,
    /// Mean per-image Dice over images whose truth is non-empty (NaN when there are none).
    pub dice_positive: f64,
    /// Share of images with an empty truth.
    pub empty_share: f64,
    /// The mean Dice of a predictor that always predicts an empty mask (= `empty_share`).
    pub dice_all_empty_baseline: f64,
    pub images: usize,
}

impl DiceSummary {
    pub fn from_images(per_image: &[(f64, bool)]) -> Self {
        let n = per_image.len();
        if n == 0 {
            return DiceSummary {
                dice: f64::NAN,
                dice_positive: f64::NAN,
                empty_share: f64::NAN,
                dice_all_empty_baseline: f64::NAN,
                images: 0,
            };
        }
        let pos: Vec<f64> = per_image.iter().filter(|r| r.1).map(|r| r.0).collect();
        let empty = (n - pos.len()) as f64 / n as f64;
        DiceSummary {
            dice: per_image.iter().map(|r| r.0).sum::<f64>() / n as f64,
            dice_positive: if pos.is_empty() {
                f64::NAN
            } else {
                pos.iter().sum::<f64>() / pos.len() as f64
            },
            empty_share: empty,
            dice_all_empty_baseline: empty,
            images: n,
        }
    }

    /// The report's map: `dice`, `dice_positive`, `empty_share`, `dice_all_empty_baseline`.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("dice".to_string(), self.dice),
            ("dice_positive".to_string(), self.dice_positive),
            ("empty_share".to_string(), self.empty_share),
            (
                "dice_all_empty_baseline".to_string(),
                self.dice_all_empty_baseline,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2×2 masks as logits: +5 where predicted, −5 elsewhere.
    fn logits(rows: &[[u8; 4]]) -> Tensor {
        let v: Vec<f32> = rows
            .iter()
            .flatten()
            .map(|&b| if b == 1 { 5.0 } else { -5.0 })
            .collect();
        Tensor::from_slice(&v).view([rows.len() as i64, 1, 2, 2])
    }

    fn masks(rows: &[[u8; 4]]) -> Tensor {
        let v: Vec<f32> = rows.iter().flatten().map(|&b| b as f32).collect();
        Tensor::from_slice(&v).view([rows.len() as i64, 1, 2, 2])
    }

    #[test]
    fn hand_computed_dice() {
        let pred = [
            [1, 1, 0, 0],
            [0, 0, 0, 0],
            [1, 0, 0, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ];
        let truth = [
            [1, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
            [1, 1, 1, 1],
            [0, 1, 0, 0],
        ];
        let r = dice_per_image(&logits(&pred), &masks(&truth));
        // 1: |p∩t| = 1, |p| = 2, |t| = 1 → 2/3. 2: both empty → 1. 3: empty truth, prediction
        // not → 0. 4: 2·3/(3 + 4) = 6/7. 5: empty prediction, truth not → 0.
        let want = [
            (2.0 / 3.0, true),
            (1.0, false),
            (0.0, false),
            (6.0 / 7.0, true),
            (0.0, true),
        ];
        for (g, w) in r.iter().zip(want) {
            assert!((g.0 - w.0).abs() < 1e-12 && g.1 == w.1, "{g:?} vs {w:?}");
        }
        let s = DiceSummary::from_images(&r);
        assert!((s.dice - (2.0 / 3.0 + 1.0 + 6.0 / 7.0) / 5.0).abs() < 1e-12);
        assert!((s.dice_positive - (2.0 / 3.0 + 6.0 / 7.0) / 3.0).abs() < 1e-12);
        assert!((s.empty_share - 0.4).abs() < 1e-12);
        assert_eq!(s.dice_all_empty_baseline, s.empty_share);
        // The all-empty predictor scores exactly the empty share.
        let none = [[0u8; 4]; 5];
        let s0 = DiceSummary::from_images(&dice_per_image(&logits(&none), &masks(&truth)));
        assert!((s0.dice - s.dice_all_empty_baseline).abs() < 1e-12);
        assert_eq!(s0.dice_positive, 0.0);
    }

    #[test]
    fn soft_masks_are_thresholded_at_one_half() {
        let x = Tensor::from_slice(&[1.0f32, -1.0]).view([1, 1, 1, 2]);
        let t = Tensor::from_slice(&[0.6f32, 0.5]).view([1, 1, 1, 2]);
        assert_eq!(dice_per_image(&x, &t), [(1.0, true)]);
    }
}
