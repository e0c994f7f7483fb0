//! Deterministic splits that reproduce scikit-learn's `train_test_split(..., random_state=seed)`.
//!
//! sklearn draws `np.random.RandomState(seed).permutation(n)`: numpy's legacy MT19937 seeded with
//! `init_genrand(seed)`, shuffled by Fisher–Yates from the top with masked rejection sampling. The
//! first `n_test` indices of that permutation are the test part, the next `n_train` the train part.
//! The generator itself lives in [`artifacts::numpy_random`] (pre-training's original order uses it
//! too); it is re-exported here.

pub use artifacts::numpy_random::Mt19937;

/// How large the test part is, as sklearn accepts it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TestSize {
    /// `test_size=f`: `ceil(f · n)` test rows, the rest train.
    Fraction(f64),
    /// `test_size=k`: exactly `k` test rows.
    Count(usize),
    /// `train_size=f` only: `floor(f · n)` train rows, the rest test.
    TrainFraction(f64),
}

impl TestSize {
    /// `(n_train, n_test)` by sklearn's `_validate_shuffle_split`.
    pub fn sizes(self, n: usize) -> (usize, usize) {
        match self {
            TestSize::Fraction(f) => {
                let t = (f * n as f64).ceil() as usize;
                (n - t.min(n), t.min(n))
            }
            TestSize::Count(k) => (n - k.min(n), k.min(n)),
            TestSize::TrainFraction(f) => {
                let tr = (f * n as f64).floor() as usize;
                (tr.min(n), n - tr.min(n))
            }
        }
    }
}

/// `train_test_split(range(n), test_size, random_state=seed)` as index lists `(train, test)`, each
/// in sklearn's order.
pub fn train_test_split(n: usize, size: TestSize, seed: u32) -> (Vec<usize>, Vec<usize>) {
    let (n_train, n_test) = size.sizes(n);
    let perm = Mt19937::new(seed).permutation(n);
    let test = perm[..n_test].to_vec();
    let train = perm[n_test..n_test + n_train].to_vec();
    (train, test)
}

/// The original's three-way split (RSNA, SIIM): `train, rest = split(df, first)` then
/// `test, valid = split(rest, 0.5)` — the *first* part of the second split is `test`. Returns one
/// label per item: `"train"`, `"valid"` or `"test"`.
pub fn three_way(n: usize, first: TestSize, seed: u32) -> Vec<&'static str> {
    let mut out = vec![""; n];
    let (train, rest) = train_test_split(n, first, seed);
    for i in train {
        out[i] = "train";
    }
    let (test, valid) = train_test_split(rest.len(), TestSize::Fraction(0.5), seed);
    for i in test {
        out[rest[i]] = "test";
    }
    for i in valid {
        out[rest[i]] = "valid";
    }
    out
}

/// Converts a user-facing seed (a manifest integer) to numpy's accepted range.
pub fn seed_u32(seed: i64) -> Result<u32, String> {
    u32::try_from(seed)
        .map_err(|_| format!("split seed {seed} is outside numpy's range 0..=4294967295"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_sklearn() {
        assert_eq!(TestSize::Fraction(0.30).sizes(26_684), (18_678, 8_006));
        assert_eq!(TestSize::Fraction(0.5).sizes(8_006), (4_003, 4_003));
        assert_eq!(TestSize::Count(5_337 * 2).sizes(26_684), (16_010, 10_674));
        assert_eq!(TestSize::Fraction(0.4).sizes(26_684), (16_010, 10_674));
        assert_eq!(TestSize::TrainFraction(0.8).sizes(11), (8, 3));
        let labels = three_way(26_684, TestSize::Fraction(0.3), 0);
        let count = |s| labels.iter().filter(|&&l| l == s).count();
        assert_eq!(
            (count("train"), count("valid"), count("test")),
            (18_678, 4_003, 4_003)
        );
    }
}
