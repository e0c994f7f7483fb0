//! Classification scores with scikit-learn's exact semantics (AUROC with tied scores grouped,
//! accuracy, macro-F1), computed in `f64` on the host. The original's torchmetrics calls do not
//! run on current torchmetrics (reference G.13), so the port computes them itself; parity with
//! sklearn is tested against `data/scores/fixtures.json` (`tools/make_score_fixtures.py`).

use std::collections::{BTreeMap, BTreeSet};

/// Binary AUROC like `sklearn.metrics.roc_auc_score(labels, scores)`: the trapezoid under the
/// ROC curve whose points are the distinct score thresholds (tied scores form one point, so a
/// tie between a positive and a negative counts one half). `labels` are 0 (negative) or any
/// other value (positive). `None` where it is undefined: no rows, or only one class present
/// (sklearn raises `ValueError`).
pub fn binary_auroc(labels: &[i64], scores: &[f64]) -> Option<f64> {
    assert_eq!(labels.len(), scores.len(), "one score per label");
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Descending by score; ties keep any order (they are grouped below).
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Cumulative true/false positives at each distinct threshold, with (0, 0) first.
    let (mut tps, mut fps) = (vec![0u64], vec![0u64]);
    let (mut tp, mut fp) = (0u64, 0u64);
    for (i, &row) in order.iter().enumerate() {
        if labels[row] != 0 {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(i + 1)
            .is_none_or(|&next| scores[next] != scores[row]);
        if last_of_tie {
            tps.push(tp);
            fps.push(fp);
        }
    }
    if tp == 0 || fp == 0 {
        return None;
    }
    // `np.trapezoid(tpr, fpr)` with `tpr = tps / tps[-1]`, `fpr = fps / fps[-1]`.
    let (tp, fp) = (tp as f64, fp as f64);
    let mut area = 0.0;
    for k in 1..tps.len() {
        let dx = fps[k] as f64 / fp - fps[k - 1] as f64 / fp;
        area += dx * (tps[k] as f64 / tp + tps[k - 1] as f64 / tp) / 2.0;
    }
    Some(area)
}

/// One-vs-rest AUROC per class: class `k` against the rest, scored by column `k` of `probs`
/// (row-major `[N, classes]`). `None` for a class that is absent from `labels` (or is every
/// label), where the AUROC is undefined.
pub fn one_vs_rest_auroc(labels: &[i64], probs: &[f64], classes: usize) -> Vec<Option<f64>> {
    assert_eq!(probs.len(), labels.len() * classes, "probs is [N, classes]");
    (0..classes)
        .map(|k| {
            let y: Vec<i64> = labels.iter().map(|&l| (l == k as i64) as i64).collect();
            let s: Vec<f64> = probs.iter().skip(k).step_by(classes).copied().collect();
            binary_auroc(&y, &s)
        })
        .collect()
}

/// Fraction of rows where `predicted` equals `labels` (`sklearn.metrics.accuracy_score`); 0 for
/// no rows.
pub fn accuracy(labels: &[i64], predicted: &[i64]) -> f64 {
    assert_eq!(labels.len(), predicted.len());
    if labels.is_empty() {
        return 0.0;
    }
    let right = labels.iter().zip(predicted).filter(|(a, b)| a == b).count();
    right as f64 / labels.len() as f64
}

/// `sklearn.metrics.f1_score(labels, predicted, average="macro")`: the unweighted mean over the
/// classes present in either `labels` or `predicted` of `2·tp / (2·tp + fp + fn)`. A class with
/// no true positive scores 0, which is what sklearn's default `zero_division="warn"` returns
/// (with a warning) and what `zero_division=0` returns; with the union of labels no denominator
/// is ever zero. 0 for no rows.
pub fn macro_f1(labels: &[i64], predicted: &[i64]) -> f64 {
    assert_eq!(labels.len(), predicted.len());
    let classes: BTreeSet<i64> = labels.iter().chain(predicted).copied().collect();
    if classes.is_empty() {
        return 0.0;
    }
    let mut sum = 0.0;
    for &c in &classes {
        let (mut tp, mut fp, mut fnn) = (0u64, 0u64, 0u64);
        for (&l, &p) in labels.iter().zip(predicted) {
            match (l == c, p == c) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fnn += 1,
                (false, false) => {}
            }
        }
        let denom = 2 * tp + fp + fnn;
        if denom > 0 {
            sum += (2 * tp) as f64 / denom as f64;
        }
    }
    sum / classes.len() as f64
}

/// Binary decisions from sigmoid probabilities: positive when `p > 0.5` (strictly, like
/// torchmetrics' and sklearn's logistic-regression threshold).
pub fn binary_predictions(probs: &[f64]) -> Vec<i64> {
    probs.iter().map(|&p| (p > 0.5) as i64).collect()
}

/// Multiclass decisions: the arg-max of each row of `probs` (`[N, classes]`), the first on ties
/// (like `torch.argmax` and `np.argmax`).
pub fn argmax_predictions(probs: &[f64], classes: usize) -> Vec<i64> {
    probs
        .chunks(classes)
        .map(|row| {
            let mut best = 0;
            for (k, &p) in row.iter().enumerate() {
                if p > row[best] {
                    best = k;
                }
            }
            best as i64
        })
        .collect()
}

/// Every score of one split, by name. `probs` is `[N]` sigmoid probabilities when `classes` is 1
/// (a binary task), else `[N, classes]` softmax probabilities, row-major. Keys: `accuracy`,
/// `macro_f1`, `auroc` (binary: the AUROC; multiclass: the mean of the per-class AUROCs, only when
/// every class is present) and, for multiclass, `auroc_class_K` for each class present. An
/// undefined score is left out rather than written as NaN.
pub fn classification_scores(
    labels: &[i64],
    probs: &[f64],
    classes: usize,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let predicted = if classes == 1 {
        if let Some(a) = binary_auroc(labels, probs) {
            out.insert("auroc".to_string(), a);
        }
        binary_predictions(probs)
    } else {
        let per_class = one_vs_rest_auroc(labels, probs, classes);
        for (k, a) in per_class.iter().enumerate() {
            if let Some(a) = a {
                out.insert(format!("auroc_class_{k}"), *a);
            }
        }
        if per_class.iter().all(Option::is_some) {
            let mean = per_class.iter().flatten().sum::<f64>() / classes as f64;
            out.insert("auroc".to_string(), mean);
        }
        argmax_predictions(probs, classes)
    };
    out.insert("accuracy".to_string(), accuracy(labels, &predicted));
    out.insert("macro_f1".to_string(), macro_f1(labels, &predicted));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_a_tie_between_classes_as_one_half() {
        assert_eq!(binary_auroc(&[0, 1], &[0.3, 0.3]), Some(0.5));
        assert_eq!(
            binary_auroc(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]),
            Some(0.75)
        );
        assert_eq!(binary_auroc(&[1, 1], &[0.1, 0.2]), None);
        assert_eq!(binary_auroc(&[], &[]), None);
    }

    #[test]
    fn macro_f1_averages_over_the_union_of_classes() {
        // Class 2 is predicted but never true: its F1 is 0 and it counts in the mean.
        let f = macro_f1(&[0, 0, 1, 1], &[0, 2, 1, 1]);
        let f0 = 2.0 / 3.0; // tp 1, fn 1
        let f1 = 1.0;
        assert!((f - (f0 + f1 + 0.0) / 3.0).abs() < 1e-15);
    }
}
