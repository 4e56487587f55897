//! Stratified train/test splits. `sklearn` reproduces, row for row, scikit-learn's
//! `train_test_split(..., test_size, stratify=y, random_state=seed)` (numpy's legacy
//! `RandomState`), so CRA and the seed-flask peer can be scored on the very same test rows;
//! `native` is CRA's own ChaCha8 split.

use rand::{seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which algorithm chooses the test rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SplitMethod {
    /// scikit-learn's stratified `train_test_split` with numpy's legacy `RandomState(seed)`,
    /// reproduced exactly (same test rows, same row order).
    #[default]
    Sklearn,
    /// CRA's own: per class, `round(fraction × class size)` rows chosen by a ChaCha8 shuffle.
    Native,
}

impl SplitMethod {
    /// The name used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitMethod::Sklearn => "sklearn",
            SplitMethod::Native => "native",
        }
    }
}

/// Why rows cannot be split; each says which limit was hit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("the test fraction must be in (0, 1), got {0}")]
    TestFraction(f64),
    #[error("the sklearn split takes a seed below 2^32 (numpy's RandomState), got {0}")]
    Seed(u64),
    #[error("class {class} has {count} row(s); each class needs at least 2")]
    TooFewInClass { class: u8, count: usize },
    #[error("the {part} set would have {size} row(s), fewer than the {classes} classes")]
    PartTooSmall {
        part: &'static str,
        size: usize,
        classes: usize,
    },
}

/// A stratified split: row indices of each part, in the order the trainer uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `labels` with `method`; both classes 0 and 1 need at least 2 rows.
pub fn stratified_split(
    method: SplitMethod,
    labels: &[u8],
    fraction: f64,
    seed: u64,
) -> Result<Split, SplitError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(SplitError::TestFraction(fraction));
    }
    for class in [0u8, 1] {
        let count = labels.iter().filter(|&&l| l == class).count();
        if count < 2 {
            return Err(SplitError::TooFewInClass { class, count });
        }
    }
    match method {
        SplitMethod::Sklearn => {
            let seed = u32::try_from(seed).map_err(|_| SplitError::Seed(seed))?;
            sklearn_stratified_split(labels, fraction, seed)
        }
        SplitMethod::Native => Ok(native_stratified_split(labels, fraction, seed)),
    }
}

/// CRA's own split: holds out `round(fraction × class size)` rows of each class (at least one,
/// never all), chosen by a seeded ChaCha8 shuffle; indices ascending. Classes need 2 rows each.
fn native_stratified_split(labels: &[u8], fraction: f64, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [0u8, 1] {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        idx.shuffle(&mut rng);
        let k = ((idx.len() as f64 * fraction).round() as usize).clamp(1, idx.len() - 1);
        test.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Split { train, test }
}

/// scikit-learn's `train_test_split(range(n), test_size=fraction, stratify=labels,
/// random_state=seed)`: `StratifiedShuffleSplit._iter_indices` with one split, including the
/// final shuffles of both parts, so the indices come out in scikit-learn's order.
pub fn sklearn_stratified_split(
    labels: &[u8],
    fraction: f64,
    seed: u32,
) -> Result<Split, SplitError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(SplitError::TestFraction(fraction));
    }
    // `_validate_shuffle_split` with train_size=None: n_test = ceil(test_size * n).
    let n = labels.len();
    let n_test = (fraction * n as f64).ceil() as usize;
    let n_train = n.saturating_sub(n_test);

    // np.unique(y): sorted classes and their counts; stable argsort groups the row indices.
    let mut classes: Vec<u8> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let class_indices: Vec<Vec<usize>> = classes
        .iter()
        .map(|&c| (0..n).filter(|&i| labels[i] == c).collect())
        .collect();
    let counts: Vec<usize> = class_indices.iter().map(Vec::len).collect();
    for (&class, &count) in classes.iter().zip(&counts) {
        if count < 2 {
            return Err(SplitError::TooFewInClass { class, count });
        }
    }
    for (part, size) in [("train", n_train), ("test", n_test)] {
        if size < classes.len() {
            return Err(SplitError::PartTooSmall {
                part,
                size,
                classes: classes.len(),
            });
        }
    }

    let mut rng = RandomState::new(seed);
    let n_i = approximate_mode(&counts, n_train, &mut rng);
    let remaining: Vec<usize> = counts.iter().zip(&n_i).map(|(c, k)| c - k).collect();
    let t_i = approximate_mode(&remaining, n_test, &mut rng);

    let (mut train, mut test) = (Vec::with_capacity(n_train), Vec::with_capacity(n_test));
    for (k, idx) in class_indices.iter().enumerate() {
        let perm = rng.permutation(idx.len());
        let shuffled: Vec<usize> = perm.iter().map(|&p| idx[p]).collect();
        train.extend_from_slice(&shuffled[..n_i[k]]);
        test.extend_from_slice(&shuffled[n_i[k]..n_i[k] + t_i[k]]);
    }
    rng.shuffle(&mut train);
    rng.shuffle(&mut test);
    Ok(Split { train, test })
}

/// `sklearn.utils.extmath._approximate_mode`: how many of `n_draws` rows each class gets,
/// flooring the proportional share and handing the rest out by largest remainder, ties broken
/// by `rng.choice(..., replace=False)` (which draws even when there is no tie).
fn approximate_mode(counts: &[usize], n_draws: usize, rng: &mut RandomState) -> Vec<usize> {
    let total = counts.iter().sum::<usize>() as f64;
    let continuous: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / total * n_draws as f64)
        .collect();
    let mut floored: Vec<f64> = continuous.iter().map(|c| c.floor()).collect();
    let mut need_to_add = (n_draws as f64 - floored.iter().sum::<f64>()) as i64;
    if need_to_add > 0 {
        let remainder: Vec<f64> = continuous
            .iter()
            .zip(&floored)
            .map(|(c, f)| c - f)
            .collect();
        // np.sort(np.unique(remainder))[::-1]
        let mut values = remainder.clone();
        values.sort_by(|a, b| b.total_cmp(a));
        values.dedup();
        for value in values {
            let inds: Vec<usize> = (0..remainder.len())
                .filter(|&i| remainder[i] == value)
                .collect();
            let add_now = inds.len().min(need_to_add as usize);
            // Legacy RandomState.choice(a, size, replace=False) = a[permutation(len(a))[:size]].
            let perm = rng.permutation(inds.len());
            for &p in &perm[..add_now] {
                floored[inds[p]] += 1.0;
            }
            need_to_add -= add_now as i64;
            if need_to_add == 0 {
                break;
            }
        }
    }
    floored.iter().map(|&f| f as usize).collect()
}

/// numpy's legacy `RandomState` (MT19937), only the parts the sklearn split uses.
pub struct RandomState {
    mt: Mt19937,
}

impl RandomState {
    /// `np.random.RandomState(seed)` for an integer seed (numpy's `mt19937_seed`).
    pub fn new(seed: u32) -> Self {
        RandomState {
            mt: Mt19937::new(seed),
        }
    }

    /// numpy's `random_interval`: uniform in `0..=max` by masked rejection sampling.
    fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        loop {
            let value = if max <= 0xffff_ffff {
                u64::from(self.mt.next_u32()) & mask
            } else {
                self.mt.next_u64() & mask
            };
            if value <= max {
                return value;
            }
        }
    }

    /// `RandomState.shuffle` of a 1-d array (legacy `_shuffle_raw`, Fisher-Yates from the end).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            v.swap(i, j);
        }
    }

    /// `RandomState.permutation(n)`: `arange(n)`, shuffled.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }
}

/// The 32-bit Mersenne Twister (Matsumoto and Nishimura, `init_genrand` seeding).
struct Mt19937 {
    state: Box<[u32; 624]>,
    pos: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    fn new(seed: u32) -> Self {
        let mut state = Box::new([0u32; 624]);
        state[0] = seed;
        for i in 1..Self::N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 {
            state,
            pos: Self::N,
        }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        let s = &mut self.state;
        for i in 0..Self::N {
            let y = (s[i] & UPPER) | (s[(i + 1) % Self::N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[i] = s[(i + Self::M) % Self::N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos >= Self::N {
            self.generate();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `mt19937_next64`: two draws, the first one high.
    fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        (hi << 32) | u64::from(self.next_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_outputs() {
        // Reference: mt19937ar.c init_genrand(5489) starts 3499211612, 581869302, 3890346734.
        let mut mt = Mt19937::new(5489);
        assert_eq!(
            [mt.next_u32(), mt.next_u32(), mt.next_u32()],
            [3_499_211_612, 581_869_302, 3_890_346_734]
        );
    }

    #[test]
    fn numpy_permutation_of_ten_with_seed_42() {
        // np.random.RandomState(42).permutation(10)
        assert_eq!(
            RandomState::new(42).permutation(10),
            [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]
        );
    }

    #[test]
    fn native_split_is_stratified_seeded_and_disjoint() {
        let labels: Vec<u8> = (0..100).map(|i| u8::from(i % 10 < 3)).collect();
        let s = stratified_split(SplitMethod::Native, &labels, 0.3, 1).unwrap();
        assert_eq!(s.test.len(), 30);
        assert_eq!(s.test.iter().filter(|&&i| labels[i] == 1).count(), 9);
        assert_eq!(
            s,
            stratified_split(SplitMethod::Native, &labels, 0.3, 1).unwrap()
        );
        assert_ne!(
            s,
            stratified_split(SplitMethod::Native, &labels, 0.3, 2).unwrap()
        );
        let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn too_few_rows_of_a_class_and_bad_seeds_are_named() {
        for method in [SplitMethod::Native, SplitMethod::Sklearn] {
            assert_eq!(
                stratified_split(method, &[0, 0, 0, 1], 0.3, 1),
                Err(SplitError::TooFewInClass { class: 1, count: 1 })
            );
        }
        let labels = [0, 1, 0, 1, 0, 1];
        assert_eq!(
            stratified_split(SplitMethod::Sklearn, &labels, 0.3, 1 << 32),
            Err(SplitError::Seed(1 << 32))
        );
        assert_eq!(
            stratified_split(SplitMethod::Sklearn, &labels, 0.1, 1),
            Err(SplitError::PartTooSmall {
                part: "test",
                size: 1,
                classes: 2
            })
        );
    }
}
