//! Deterministic splits that reproduce scikit-learn's `train_test_split(..., random_state=seed)`.
//!
//! sklearn draws `np.random.RandomState(seed).permutation(n)`: numpy's legacy MT19937 seeded with
//! `init_genrand(seed)`, shuffled by Fisher–Yates from the top with masked rejection sampling. The
//! first `n_test` indices of that permutation are the test part, the next `n_train` the train part.

/// numpy's legacy `RandomState` bit generator (MT19937, 32-bit output).
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; 624],
    pos: usize,
}

impl Mt19937 {
    /// `np.random.RandomState(seed)` for an integer seed (`mt19937_seed`, i.e. `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        let mut s = seed;
        for (i, slot) in state.iter_mut().enumerate() {
            *slot = s;
            s = 1812433253u32
                .wrapping_mul(s ^ (s >> 30))
                .wrapping_add(i as u32 + 1);
        }
        Mt19937 { state, pos: 624 }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.state[i] = v;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            self.generate();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `RandomState.permutation(n)` (legacy shuffle of `arange(n)`).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            v.swap(i, j);
        }
        v
    }

    /// `np.random.choice(n, size, replace=False)` on the legacy generator: `permutation(n)[:size]`.
    pub fn choice_without_replacement(&mut self, n: usize, size: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(size);
        p
    }
}

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
    fn mt19937_matches_the_reference_stream() {
        // First outputs of init_genrand(5489), the reference implementation's default seed.
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3499211612);
        assert_eq!(mt.next_u32(), 581869302);
    }

    #[test]
    fn permutation_matches_numpy() {
        // np.random.RandomState(0).permutation(10)
        assert_eq!(
            Mt19937::new(0).permutation(10),
            vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        );
    }

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
