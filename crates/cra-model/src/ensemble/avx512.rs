//! The block walk of [`super::Complete`] trees on AVX-512: sixteen rows side by side, one per
//! lane, with no gather.
//!
//! A tree of depth ≤ 6 has at most 63 splits and 64 leaves, so its thresholds, split features
//! and leaves each fit in four 16-lane registers, and a lane finds its node's entry with two
//! two-register permutes and a blend. A lane's feature value is picked from the block's
//! feature-major rows by a masked move for each distinct feature that the level's splits read
//! (about 18 per tree over all levels for the default model): no gather, which is slow on many
//! x86 parts. Every lane adds its leaves in tree order in `f32`, as the scalar walk does, so
//! the margins are the same to the last bit.
use std::arch::x86_64::*;

use super::{Complete, BLOCK};

/// Deepest tree this walk takes: 2^6 leaves fill four registers.
pub(super) const MAX_DEPTH: usize = 6;
const TABLE: usize = 1 << MAX_DEPTH;

/// The trees of a [`Complete`] layout in registers' shape.
#[derive(Debug, Clone)]
pub(super) struct Avx512Trees {
    depth: usize,
    /// Per tree: 64 thresholds (split `k` of the level order at `k`; the rest +inf).
    thresholds: Vec<[f32; TABLE]>,
    /// Per tree: 64 widened-row features, as thresholds.
    features: Vec<[i32; TABLE]>,
    /// Per tree: 64 leaves.
    leaves: Vec<[f32; TABLE]>,
    /// Per tree and level, the range of `distinct` holding the features its splits read.
    levels: Vec<(u32, u32)>,
    distinct: Vec<u32>,
    /// The widened row's length a block needs: one more than the largest feature read.
    features_read: usize,
}

impl Avx512Trees {
    /// The layout, when this processor has AVX-512F and the trees are at most
    /// [`MAX_DEPTH`] deep.
    pub(super) fn build(c: &Complete) -> Option<Avx512Trees> {
        if c.depth > MAX_DEPTH || !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        let internal = (1usize << c.depth) - 1;
        let trees = c.splits.len() / internal;
        let mut t = Avx512Trees {
            depth: c.depth,
            thresholds: Vec::with_capacity(trees),
            features: Vec::with_capacity(trees),
            leaves: Vec::with_capacity(trees),
            levels: Vec::with_capacity(trees * c.depth),
            distinct: Vec::new(),
            features_read: 0,
        };
        for (splits, leaves) in c
            .splits
            .chunks_exact(internal)
            .zip(c.leaves.chunks_exact(internal + 1))
        {
            let mut thr = [f32::INFINITY; TABLE];
            let mut feat = [0i32; TABLE];
            let mut leaf = [0.0f32; TABLE];
            for (k, s) in splits.iter().enumerate() {
                thr[k] = s.threshold;
                feat[k] = i32::try_from(s.feature).ok()?;
            }
            leaf[..leaves.len()].copy_from_slice(leaves);
            for level in 0..c.depth {
                let first = t.distinct.len() as u32;
                for s in &splits[(1 << level) - 1..(2 << level) - 1] {
                    if !t.distinct[first as usize..].contains(&s.feature) {
                        t.distinct.push(s.feature);
                    }
                }
                t.levels.push((first, t.distinct.len() as u32));
            }
            t.thresholds.push(thr);
            t.features.push(feat);
            t.leaves.push(leaf);
        }
        t.features_read = t.distinct.iter().max().map_or(0, |&f| f as usize + 1);
        Some(t)
    }

    /// Adds every tree's leaf to `out` (at most [`BLOCK`] sums) for the block's rows, given
    /// feature-major in `wide` (`wide[f * BLOCK + r]`).
    pub(super) fn add_block(&self, wide: &[f32], out: &mut [f32]) {
        assert!(out.len() <= BLOCK && BLOCK == 16);
        assert!(self.features_read * BLOCK <= wide.len());
        // SAFETY: `build` returned this layout only where AVX-512F was detected, and every
        // feature read from `wide` is within it (asserted above).
        unsafe { self.add_block_avx512(wide, out) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn add_block_avx512(&self, wide: &[f32], out: &mut [f32]) {
        let mut sums = [0.0f32; BLOCK];
        sums[..out.len()].copy_from_slice(out);
        let mut sum = _mm512_loadu_ps(sums.as_ptr());
        let trees = self.thresholds.len();
        // Two trees at a time, so that their walks overlap; their leaves are then added in
        // tree order.
        let mut tree = 0;
        while tree + 1 < trees {
            let (mut a, mut b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for level in 0..self.depth {
                a = self.step(wide, tree, level, a);
                b = self.step(wide, tree + 1, level, b);
            }
            sum = _mm512_add_ps(sum, self.leaf(tree, a));
            sum = _mm512_add_ps(sum, self.leaf(tree + 1, b));
            tree += 2;
        }
        if tree < trees {
            let mut a = _mm512_setzero_si512();
            for level in 0..self.depth {
                a = self.step(wide, tree, level, a);
            }
            sum = _mm512_add_ps(sum, self.leaf(tree, a));
        }
        _mm512_storeu_ps(sums.as_mut_ptr(), sum);
        out.copy_from_slice(&sums[..out.len()]);
    }

    /// Every lane's node index in `tree` after `level`, from its index `idx` at that level.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn step(&self, wide: &[f32], tree: usize, level: usize, idx: __m512i) -> __m512i {
        let thr = &self.thresholds[tree];
        let feat = &self.features[tree];
        let high = _mm512_set1_epi32(32);
        // Levels 0 to 4 hold nodes 0 to 30, all in the first two registers.
        let (t, f) = if level < 5 {
            (lookup_ps(thr, 0, idx), lookup_epi32(feat, 0, idx))
        } else {
            let upper = _mm512_test_epi32_mask(idx, high);
            (
                _mm512_mask_blend_ps(upper, lookup_ps(thr, 0, idx), lookup_ps(thr, 32, idx)),
                _mm512_mask_blend_epi32(
                    upper,
                    lookup_epi32(feat, 0, idx),
                    lookup_epi32(feat, 32, idx),
                ),
            )
        };
        // Each lane reads exactly one of the level's features.
        let (first, last) = self.levels[tree * self.depth + level];
        let mut x = _mm512_setzero_ps();
        for &d in &self.distinct[first as usize..last as usize] {
            let lanes = _mm512_cmpeq_epi32_mask(f, _mm512_set1_epi32(d as i32));
            x = _mm512_mask_loadu_ps(x, lanes, wide.as_ptr().add(d as usize * BLOCK));
        }
        // `x >= t`, false for NaN: the scalar walk's comparison.
        let right = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, t);
        let one = _mm512_set1_epi32(1);
        let next = _mm512_add_epi32(_mm512_add_epi32(idx, idx), one);
        _mm512_mask_add_epi32(next, right, next, one)
    }

    /// Every lane's leaf value in `tree`, from its node index after the last level.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn leaf(&self, tree: usize, idx: __m512i) -> __m512 {
        let at = _mm512_sub_epi32(idx, _mm512_set1_epi32((1i32 << self.depth) - 1));
        let table = &self.leaves[tree];
        _mm512_mask_blend_ps(
            _mm512_test_epi32_mask(at, _mm512_set1_epi32(32)),
            lookup_ps(table, 0, at),
            lookup_ps(table, 32, at),
        )
    }
}

/// `table[from + (idx & 31)]` in every lane.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn lookup_ps(table: &[f32; TABLE], from: usize, idx: __m512i) -> __m512 {
    let p = table.as_ptr().add(from);
    _mm512_permutex2var_ps(_mm512_loadu_ps(p), idx, _mm512_loadu_ps(p.add(16)))
}

/// `table[from + (idx & 31)]` in every lane.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn lookup_epi32(table: &[i32; TABLE], from: usize, idx: __m512i) -> __m512i {
    let p = table.as_ptr().add(from);
    _mm512_permutex2var_epi32(
        _mm512_loadu_si512(p.cast()),
        idx,
        _mm512_loadu_si512(p.add(16).cast()),
    )
}
