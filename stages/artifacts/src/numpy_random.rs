//! numpy's legacy random generator (`np.random.seed` / `RandomState`: MT19937 seeded by
//! `init_genrand`, 32-bit draws, masked rejection, Fisher–Yates shuffles), value for value, for
//! the places the original leaves its randomness to numpy: scikit-learn's splits
//! (`stages::split`) and the pre-training order (`train::rng::original_order`).

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

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection (the 32-bit
    /// branch; numpy switches to 64-bit draws only above `u32::MAX`).
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

    /// `RandomState.shuffle(x)` of a 1-D array, in place: Fisher–Yates from the top, the swap
    /// partner of position `i` drawn by [`Mt19937::interval`]`(i)` (numpy's `_shuffle_raw`).
    ///
    /// # Panics
    /// On more than 2^32 items, where numpy would draw 64-bit values (never a dataset's size).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        assert!(
            items.len() as u64 <= 1 << 32,
            "numpy's 32-bit shuffle path covers at most 2^32 items"
        );
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
    }

    /// `RandomState.permutation(n)`: [`Mt19937::shuffle`] of `arange(n)`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }

    /// `np.random.choice(n, size, replace=False)` on the legacy generator: `permutation(n)[:size]`.
    pub fn choice_without_replacement(&mut self, n: usize, size: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(size);
        p
    }
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

    /// FNV-1a 64 over the decimal values joined by newlines (`tools/make_numpy_random_fixture.py`).
    fn fnv1a(values: &[usize]) -> String {
        let text = values
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for b in text.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        format!("{h:016x}")
    }

    fn check(entry: &serde_json::Value, got: &[usize], what: &str) {
        let list = |k: &str| -> Vec<usize> {
            entry[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        let n = got.len();
        assert_eq!(got[..n.min(8)], list("head")[..], "{what}: first values");
        assert_eq!(
            got[n.saturating_sub(8)..],
            list("tail")[..],
            "{what}: last values"
        );
        assert_eq!(
            fnv1a(got),
            entry["fnv1a"].as_str().unwrap(),
            "{what}: digest"
        );
    }

    /// The committed fixture of `tools/make_numpy_random_fixture.py` (numpy's own output).
    #[test]
    fn shuffles_and_permutations_match_numpy() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/numpy_random/permutations.json"
        );
        let fx: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut mt = Mt19937::new(42);
        let raw: Vec<u64> = (0..8).map(|_| mt.next_u32() as u64).collect();
        let want: Vec<u64> = fx["seed42_uint32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(raw, want);
        let shuffles = fx["seed42_shuffle"].as_array().unwrap();
        assert_eq!(shuffles.len(), 5);
        for e in shuffles {
            let n = e["n"].as_u64().unwrap() as usize;
            let mut idx: Vec<usize> = (0..n).collect();
            Mt19937::new(42).shuffle(&mut idx);
            check(e, &idx, &format!("seed(42); shuffle(arange({n}))"));
        }
        for e in fx["permutation"].as_array().unwrap() {
            let (n, seed) = (
                e["n"].as_u64().unwrap() as usize,
                e["seed"].as_u64().unwrap(),
            );
            let p = Mt19937::new(seed as u32).permutation(n);
            check(e, &p, &format!("RandomState({seed}).permutation({n})"));
        }
        // A wrong seed is caught by the same check (the test can fail).
        let wrong = Mt19937::new(43).permutation(1000);
        assert_ne!(fnv1a(&wrong), shuffles[3]["fnv1a"].as_str().unwrap());
    }
}
