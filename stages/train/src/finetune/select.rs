//! What every fine-tuning loop shares once an epoch is validated: keeping the weights of the
//! best epoch so far (`ModelCheckpoint`) and early stopping (`EarlyStopping(min_delta,
//! patience)`), and the half-cosine learning-rate curve.

use std::f64::consts::PI;

/// `min + (max − min)(1 + cos(π·progress))/2`: `max` at progress 0, `min` at 1.
pub fn cosine(max: f64, min: f64, progress: f64) -> f64 {
    min + (max - min) * 0.5 * (1.0 + (PI * progress).cos())
}

/// The kept epoch and the early-stopping count, over a validation value where higher is better.
///
/// The kept weights follow any gain (like Lightning's `ModelCheckpoint`); only a gain above
/// `min_delta` over the best value so far resets the patience count (like `EarlyStopping`).
pub struct Selection<S> {
    /// (1-based epoch, value, what was kept); epoch 0 is a starting point given before training.
    best: Option<(usize, f64, S)>,
    patience_best: f64,
    without_improvement: usize,
    patience: Option<usize>,
    min_delta: f64,
}

impl<S> Selection<S> {
    /// Nothing kept yet: the first epoch always counts as an improvement.
    pub fn new(patience: Option<usize>, min_delta: f64) -> Self {
        Selection {
            best: None,
            patience_best: f64::NEG_INFINITY,
            without_improvement: 0,
            patience,
            min_delta,
        }
    }

    /// Starting from the untrained model's `value` (kept as epoch 0): an epoch must beat it.
    pub fn from_initial(value: f64, kept: S, patience: Option<usize>, min_delta: f64) -> Self {
        Selection {
            best: Some((0, value, kept)),
            patience_best: value,
            ..Selection::new(patience, min_delta)
        }
    }

    /// Records epoch `epoch`'s validation `value`; keeps `kept()` when it beats the best so far
    /// and returns whether it did.
    pub fn record(&mut self, epoch: usize, value: f64, kept: impl FnOnce() -> S) -> bool {
        let improved = self.best.as_ref().is_none_or(|b| value > b.1);
        if improved {
            self.best = Some((epoch, value, kept()));
        }
        if value > self.patience_best + self.min_delta {
            self.patience_best = value;
            self.without_improvement = 0;
        } else {
            self.without_improvement += 1;
        }
        improved
    }

    /// Whether `patience` epochs in a row brought no gain above `min_delta`.
    pub fn exhausted(&self) -> bool {
        self.patience.is_some_and(|p| self.without_improvement >= p)
    }

    /// The epochs since the last gain above `min_delta`.
    pub fn without_improvement(&self) -> usize {
        self.without_improvement
    }

    /// The value the patience count measures gains against.
    pub fn patience_best(&self) -> f64 {
        self.patience_best
    }

    /// The kept epoch, its value and what was kept (`None` before any epoch or starting point).
    pub fn into_best(self) -> Option<(usize, f64, S)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_any_gain_but_counts_patience_against_min_delta() {
        let mut s = Selection::new(Some(2), 0.1);
        assert!(s.record(1, 0.5, || 1));
        assert!(s.record(2, 0.55, || 2)); // kept, but not a gain above min_delta
        assert_eq!(s.without_improvement(), 1);
        assert!(!s.exhausted());
        assert!(!s.record(3, 0.52, || 3));
        assert!(s.exhausted());
        assert_eq!(s.into_best().map(|b| (b.0, b.2)), Some((2, 2)));
    }

    #[test]
    fn an_initial_value_must_be_beaten() {
        let mut s = Selection::from_initial(0.7, "init", Some(1), 0.0);
        assert!(!s.record(1, 0.7, || "one"));
        assert!(s.exhausted());
        assert_eq!(s.into_best().map(|b| (b.0, b.2)), Some((0, "init")));
    }

    #[test]
    fn cosine_runs_from_max_to_min() {
        assert_eq!(cosine(1.0, 0.0, 0.0), 1.0);
        assert!((cosine(1.0, 0.0, 0.5) - 0.5).abs() < 1e-15);
        assert!(cosine(1.0, 0.25, 1.0) - 0.25 < 1e-15);
    }
}
