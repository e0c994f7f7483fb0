//! Deterministic randomness that does not depend on libtorch's process-global generator:
//! parameter initialisation, per-epoch shuffles and seed derivation. SplitMix64 is small, exact
//! in integer arithmetic, and easy to reproduce in numpy (`tools/adaptor_reference.py`).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014): the state advances by the golden gamma, the output is a
/// mix of the state.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 24 random bits (exactly representable in `f32` and `f64`).
    pub fn next_unit24(&mut self) -> f64 {
        (self.next_u64() >> 40) as f64 / (1u64 << 24) as f64
    }

    /// Uniform integer in `0..n` without modulo bias (rejection sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for one purpose (`tag`) and index (an epoch, a tensor) derived from the run's seed, so
/// that streams never overlap and resuming at epoch `k` needs nothing but `(seed, k)`.
pub fn derive_seed(seed: u64, tag: &str, index: u64) -> u64 {
    // FNV-1a over the tag, then two rounds of mixing.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in tag.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    mix(mix(seed ^ h).wrapping_add(index.wrapping_mul(GOLDEN)))
}

/// `n` values `center + (2u - 1) * bound` with `u` from [`SplitMix64::next_unit24`], computed in
/// `f64` and rounded to `f32`: the same numbers as `synthetic_state_dict` in
/// `tools/adaptor_reference.py`.
pub fn uniform_values(seed: u64, n: usize, center: f64, bound: f64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| (center + (2.0 * rng.next_unit24() - 1.0) * bound) as f32)
        .collect()
}

/// A uniformly random permutation of `0..n` (Fisher–Yates).
pub fn permutation(seed: u64, n: usize) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed);
    let mut p: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// The seed of the original's pre-training order: `MultimodalPretrainedEmbeddingsDataset` calls
/// `np.random.seed(42)` itself, whatever the run's seed (reference C.5).
pub const ORIGINAL_ORDER_SEED: u32 = 42;

/// The original's pre-training order of `n` training rows (reference C.5, G.10): one
/// `np.random.seed(42); np.random.shuffle(np.arange(n))`, drawn once and kept for every epoch
/// (its DataLoader does not shuffle). numpy's legacy generator, value for value
/// ([`artifacts::numpy_random::Mt19937`], checked against numpy in its tests).
pub fn original_order(n: usize) -> Vec<i64> {
    let mut rows: Vec<i64> = (0..n as i64).collect();
    artifacts::numpy_random::Mt19937::new(ORIGINAL_ORDER_SEED).shuffle(&mut rows);
    rows
}

/// How many of `n` training rows a label fraction keeps: all of them at 1.0 or above, else
/// `max(1, round(fraction · n))` with ties to even, as Python's `round()` (and so pandas'
/// `sample(frac=)`, which the original's classification uses) rounds. The one rounding rule of
/// both the classification heads and segmentation.
pub fn labelled_count(n: usize, fraction: f64) -> usize {
    if fraction >= 1.0 {
        return n;
    }
    ((fraction * n as f64).round_ties_even() as usize)
        .clamp(1, n.max(1))
        .min(n)
}

/// Which downstream kind draws a label subset. Each keeps the random stream it had before the
/// two shared [`label_subset`], so that no artifact's rows moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelStream {
    /// `classify`'s heads.
    Classify,
    /// `segment`'s decoders.
    Segment,
}

impl LabelStream {
    fn tag(self) -> &'static str {
        match self {
            LabelStream::Classify => "label_fraction",
            LabelStream::Segment => "seg-label-fraction",
        }
    }
}

/// The training rows kept at a label fraction, for `classify` and `segment` alike (one rounding
/// rule): [`labelled_count`] rows of a permutation drawn from `derive_seed(seed, stream, 0)`, in
/// ascending row order (all rows, in order, at 1.0).
pub fn label_subset(n: usize, fraction: f64, seed: u64, stream: LabelStream) -> Vec<usize> {
    let k = labelled_count(n, fraction);
    if k == n {
        return (0..n).collect();
    }
    let mut rows: Vec<usize> = permutation(derive_seed(seed, stream.tag(), 0), n)
        .into_iter()
        .take(k)
        .map(|r| r as usize)
        .collect();
    rows.sort_unstable();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_count_rounds_half_to_even_and_keeps_at_least_one() {
        assert_eq!(labelled_count(10, 0.25), 2); // 2.5 → 2
        assert_eq!(labelled_count(10, 0.35), 4); // 3.5 → 4
        assert_eq!(labelled_count(250, 0.01), 2); // 2.5 → 2
        assert_eq!(labelled_count(350, 0.01), 4); // 3.5 → 4
        assert_eq!(labelled_count(10, 0.05), 1); // 0.5 → 0, then at least one
        assert_eq!(labelled_count(30, 0.01), 1); // 0.3 → 0, then at least one
        assert_eq!(labelled_count(10, 1.0), 10);
        assert_eq!(labelled_count(0, 0.5), 0);
        let (c, sg) = (LabelStream::Classify, LabelStream::Segment);
        assert_eq!(label_subset(0, 0.5, 1, c), Vec::<usize>::new());
        assert_eq!(label_subset(10, 1.0, 1, sg), (0..10).collect::<Vec<_>>());
        let s = label_subset(100, 0.3, 9, c);
        assert_eq!(s.len(), 30);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(s, label_subset(100, 0.3, 9, sg));
        assert_ne!(s, label_subset(100, 0.3, 10, c));
        // The same count for both kinds at every fraction (one rounding rule).
        for (n, f) in [(250, 0.01), (350, 0.01), (10, 0.25), (10, 0.05), (7, 0.5)] {
            assert_eq!(
                label_subset(n, f, 1, c).len(),
                label_subset(n, f, 1, sg).len()
            );
            assert_eq!(label_subset(n, f, 1, c).len(), labelled_count(n, f));
        }
    }

    #[test]
    fn original_order_is_numpys_seed_42_shuffle() {
        // np.random.seed(42); idx = np.arange(10); np.random.shuffle(idx)
        // (data/numpy_random/permutations.json holds more sizes, checked in `artifacts`).
        assert_eq!(original_order(10), vec![8, 1, 5, 0, 7, 2, 9, 4, 3, 6]);
        assert_eq!(original_order(1), vec![0]);
        assert!(original_order(0).is_empty());
    }

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the public-domain C code).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn permutation_is_a_permutation_and_depends_on_the_seed() {
        let a = permutation(1, 1000);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, permutation(2, 1000));
        assert_eq!(a, permutation(1, 1000));
    }

    #[test]
    fn derived_seeds_differ_by_tag_and_index() {
        let s = derive_seed(42, "shuffle", 0);
        assert_ne!(s, derive_seed(42, "shuffle", 1));
        assert_ne!(s, derive_seed(42, "dropout", 0));
        assert_ne!(s, derive_seed(43, "shuffle", 0));
    }
}
