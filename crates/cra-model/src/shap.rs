//! Exact TreeSHAP feature contributions over the compiled [`Ensemble`], equal to libxgboost's
//! `pred_contribs`.
//!
//! For one row the result has `num_features + 1` values in margin (log-odds) space: one per
//! model feature, then the bias (the base margin plus every tree's cover-weighted mean leaf
//! value). Together they sum to the row's margin. The rules are XGBoost's: `x < threshold`
//! goes left, a missing (NaN) value follows the node's default direction, and a branch's
//! weight is its cover (`sum_hessian`) over its parent's, with XGBoost's guards for zero covers.
//!
//! # How
//!
//! Path-dependent TreeSHAP splits a tree's output over its leaves. For a leaf `l` with value
//! `v`, let `U` be the distinct features on its path, `z_j` the product of the branch weights
//! of the path's splits on feature `j`, and `Q` the features for which the row takes every one
//! of those splits the path's way. Feature `i` of `U` then receives
//!
//! ```text
//! i in Q:      v * (1/z_i - 1) * F(Q \ {i})
//! i not in Q: -v * F(Q)
//! F(T) = sum over S ⊆ T of |S|! (|U| - 1 - |S|)! / |U|!  *  prod over j in U \ S of z_j
//! ```
//!
//! `F` depends on the row only through which of the path's splits the row agrees with, so, as
//! in FastTreeSHAP v2 (arXiv 2109.09847), `v * F` is tabulated once per leaf for every
//! agreement pattern of its `d` splits (`2^d` values). Two sibling leaves are tabulated
//! together: the left leaf's agreement mask determines the right one's (the last bit flipped),
//! and every feature of the parent's path but the last split's has the same `z` and levels in
//! both, so one table of the two leaves' summed values serves all those features, and a second
//! table holds the last split's feature's contribution outright. That halves the reads of a
//! row (about 6,000 instead of 9,600 on the default model) at the same table size.
//!
//! Scoring a row is then two flat passes over the whole ensemble: every split once, parents
//! first, to build every node's agreement mask; then every table read, each one entry of an
//! `f32` table (sums in `f64`) added to one feature. No per-leaf or per-tree loop is left whose
//! length the branch predictor would have to guess. Leaves deeper than [`MAX_TABLE_DEPTH`]
//! would need too large a table; they fall back to the polynomial form of the same sum,
//! computed per row.

use super::ensemble::{Ensemble, TreeNode};

/// Deepest leaf whose values are tabulated (2^depth `f32` per leaf); deeper leaves are
/// computed per row, more slowly.
pub const MAX_TABLE_DEPTH: usize = 10;

/// Accumulators per feature. Sibling groups repeat their path's features in the same order, so
/// with one accumulator per feature each addition waits for the previous one to the same
/// feature to be stored; successive reads of one feature go to successive banks instead.
const BANKS: usize = 4;

/// The bits of -1.0 in `f32`.
const MINUS_ONE: u32 = (-1.0f32).to_bits();

/// XGBoost's floor on a branch weight (`kQuadratureTreeShapMinChildWeight`).
const MIN_BRANCH_WEIGHT: f32 = 1e-12;

/// Why contributions cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum ShapError {
    /// The booster carries no node covers (bundles written before they were read, or a
    /// hand-made booster); retraining the model writes them.
    #[error("feature contributions are unavailable for this model: {0}")]
    Unavailable(String),
    #[error("feature contributions are undefined for this model: tree {tree} node {node} has cover {cover}, which is not a non-negative number")]
    BadCover {
        tree: usize,
        node: usize,
        cover: f32,
    },
    #[error("contributions need a row of {expected} features and room for {} values; got a row of {row} and room for {out}", expected + 1)]
    Length {
        expected: usize,
        row: usize,
        out: usize,
    },
}

pub type Result<T, E = ShapError> = std::result::Result<T, E>;

/// One split, in an order where a parent comes before its children (the trees one after
/// another).
#[derive(Debug, Clone, Copy)]
struct Step {
    /// Index in the row as [`TreeShap::contributions`] widens it (as the tree walker does): the
    /// feature itself when a missing value goes left (`NaN >= t` is false), its copy with NaN
    /// replaced by +inf when it goes right.
    feature: u32,
    threshold: f32,
    /// Slot (in [`ShapScratch::masks`]) of this node's agreement mask; its children's are
    /// `left` and `left + 1`.
    slot: u32,
    left: u32,
    /// This split's level bit in its leaves' agreement masks (0 from level 16 on, which no
    /// table reads).
    bit: u16,
}

/// One table read of a row: the feature receives `coef * table[mask & !levels]` when the mask
/// has every bit of `levels` (the feature is in Q), else `-table[mask]`. In
/// [`TreeShap::direct`], it receives `table[mask]`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Slot of the mask that indexes the table.
    slot: u32,
    /// Start of the table in [`TreeShap::tables`].
    table: u32,
    /// The bits of `coef = 1/z - 1` XOR those of -1.0: the factor is `(coef_x & inside) ^
    /// bits(-1.0)`, that is `coef` inside Q and -1 outside.
    coef_x: u32,
    /// The accumulator it adds to: `bank * num_features + feature` (see [`BANKS`]).
    acc: u16,
    levels: u16,
}

/// The path's (step index, goes right) edges on one feature.
type FeatureEdges = Vec<(u32, bool)>;

/// A leaf deeper than [`MAX_TABLE_DEPTH`], computed per row.
#[derive(Debug, Clone)]
struct LongLeaf {
    value: f64,
    /// Per distinct feature: the feature, `z`, and the path's edges on it.
    features: Vec<(u32, f64, FeatureEdges)>,
}

/// Precomputed TreeSHAP tables of one model; `Sync`, shared by every thread, which each bring
/// their own [`ShapScratch`].
#[derive(Debug, Clone)]
pub struct TreeShap {
    num_features: usize,
    bias: f64,
    steps: Vec<Step>,
    /// Every tree's table reads, tree after tree.
    entries: Vec<Entry>,
    /// The reads of a table of one feature's contributions (`levels` 0: always `table[mask]`).
    direct: Vec<Entry>,
    /// `f32`: halves the memory a row walks through; every sum is kept in `f64`.
    tables: Vec<f32>,
    long_leaves: Vec<LongLeaf>,
    /// Number of mask slots (slot 0 is every root's empty mask).
    num_slots: usize,
    /// The number of levels of each slot's node (its masks are below `1 << depth`).
    slot_depths: Vec<u8>,
    /// Accumulator banks (at most [`BANKS`]).
    banks: usize,
    /// Deepest leaf tabulated (at most [`MAX_TABLE_DEPTH`]).
    table_depth: usize,
}

/// Per-thread working memory for [`TreeShap::contributions`], so rows allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct ShapScratch {
    masks: Vec<u16>,
    /// [`BANKS`] sums per feature.
    acc: Vec<f64>,
    /// The row, then the row with NaN as +inf.
    wide: Vec<f32>,
    right: Vec<bool>,
    poly: Vec<f64>,
}

/// `value`, hidden from the optimiser: it cannot turn arithmetic on a comparison's 0 or 1
/// back into a select, and then a jump, on the comparison (which it does in [`TreeShap::contributions`], and which the
/// branch predictor then misses half the time). Costs nothing: an empty `asm!` on a register.
#[inline(always)]
fn opaque(value: u32) -> u32 {
    let mut value = u64::from(value);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: the assembly is empty (a comment); it reads and writes nothing.
    unsafe {
        std::arch::asm!("/* {0} */", inout(reg) value, options(pure, nomem, nostack, preserves_flags));
    }
    value as u32
}

/// XGBoost's `BranchWeight`: a child's cover over its parent's, in `f32`, with its guards.
fn branch_weight(cover: f32, parent: f32) -> f32 {
    if parent <= 0.0 {
        return 0.5;
    }
    (cover / parent).max(MIN_BRANCH_WEIGHT)
}

/// XGBoost's `FillRootMeanValue`: the cover-weighted mean leaf value under `node`.
fn mean_value(nodes: &[TreeNode], covers: &[f32], node: usize) -> f64 {
    match nodes[node] {
        TreeNode::Leaf { value } => value as f64,
        TreeNode::Split { left, right, .. } => {
            let (l, r) = (left as usize, right as usize);
            let (lm, rm) = (mean_value(nodes, covers, l), mean_value(nodes, covers, r));
            let parent = covers[node] as f64;
            if parent == 0.0 {
                0.5 * (lm + rm)
            } else {
                (lm * covers[l] as f64 + rm * covers[r] as f64) / parent
            }
        }
    }
}

/// Shapley weights `k! (u - 1 - k)! / u!` for `k < u`.
fn shapley_weights(u: usize, out: &mut Vec<f64>) {
    out.clear();
    // w(0) = 1/u; w(k+1) = w(k) * (k+1) / (u-1-k).
    let mut w = 1.0 / u as f64;
    for k in 0..u {
        out.push(w);
        if k + 1 < u {
            w *= (k + 1) as f64 / (u - 1 - k) as f64;
        }
    }
}

/// One edge of a root-to-leaf path, as the builder sees it.
#[derive(Debug, Clone, Copy)]
struct PathEdge {
    feature: u32,
    step: u32,
    right: bool,
    weight: f32,
}

/// One distinct feature of a path, as the builder sees it.
#[derive(Debug, Clone)]
struct PathFeature {
    feature: u32,
    /// The product of the path's branch weights on it.
    z: f64,
    /// The path levels that split on it.
    levels: u32,
    edges: FeatureEdges,
}

impl PathFeature {
    /// The distinct features of `path`, in the order they first appear.
    fn of(path: &[PathEdge]) -> Vec<PathFeature> {
        let mut distinct: Vec<PathFeature> = Vec::new();
        for (level, e) in path.iter().enumerate() {
            let at = match distinct.iter().position(|d| d.feature == e.feature) {
                Some(at) => at,
                None => {
                    distinct.push(PathFeature {
                        feature: e.feature,
                        z: 1.0,
                        levels: 0,
                        edges: Vec::new(),
                    });
                    distinct.len() - 1
                }
            };
            let d = &mut distinct[at];
            d.z *= e.weight as f64;
            d.levels |= 1u32.checked_shl(level as u32).unwrap_or(0);
            d.edges.push((e.step, e.right));
        }
        distinct
    }

    /// This feature's contribution at a leaf whose table is `table`, for agreement mask `m`.
    fn contribution(&self, table: &[f64], m: u32) -> f64 {
        if m & self.levels == self.levels {
            (1.0 / self.z - 1.0) * table[(m & !self.levels) as usize]
        } else {
            -table[m as usize]
        }
    }
}

/// `v * F(Q(mask))` of a leaf of value `v` for every agreement mask of its `depth` levels.
fn leaf_table(
    value: f32,
    distinct: &[PathFeature],
    depth: usize,
    weights: &mut Vec<f64>,
    poly: &mut Vec<f64>,
) -> Vec<f64> {
    let u = distinct.len();
    shapley_weights(u, weights);
    // For every subset T of the distinct features (bit j = feature j):
    // G(T) = sum_k w(k) e_k(T), e_k(T) = sum over |S| = k, S ⊆ T of prod_{j in T\S} z_j,
    // from the polynomial prod_{j in T} (t + z_j), built subset by subset.
    let subsets = 1usize << u;
    poly.clear();
    poly.resize(subsets * (u + 1), 0.0);
    poly[0] = 1.0;
    let mut f_of = vec![0.0f64; subsets];
    for set in 0..subsets {
        if set > 0 {
            let j = set.trailing_zeros() as usize;
            let (prev, cur) = poly.split_at_mut(set * (u + 1));
            let prev = &prev[(set & (set - 1)) * (u + 1)..][..u + 1];
            let cur = &mut cur[..u + 1];
            let z = distinct[j].z;
            // cur = prev * (t + z)
            for k in 0..=u {
                cur[k] = prev[k] * z + if k > 0 { prev[k - 1] } else { 0.0 };
            }
        }
        if set == subsets - 1 {
            // All features agree: never read (no feature is outside Q, and reads for a
            // feature inside Q drop it from the set).
            continue;
        }
        let p = &poly[set * (u + 1)..][..u + 1];
        let outside: f64 = (0..u)
            .filter(|j| set & (1 << j) == 0)
            .map(|j| distinct[j].z)
            .product();
        let g: f64 = (0..u).map(|k| weights[k] * p[k]).sum();
        f_of[set] = g * outside;
    }
    // The table is indexed by the agreement mask of the path's levels; a feature is in Q
    // when all its levels agree.
    (0..1u32 << depth)
        .map(|mask| {
            let set = distinct
                .iter()
                .enumerate()
                .filter(|(_, d)| mask & d.levels == d.levels)
                .fold(0usize, |s, (j, _)| s | 1 << j);
            value as f64 * f_of[set]
        })
        .collect()
}

/// Scratch of the builder.
#[derive(Default)]
struct Build {
    weights: Vec<f64>,
    poly: Vec<f64>,
    /// The level of each step.
    levels: Vec<usize>,
}

impl TreeShap {
    /// Precomputes the tables of `ensemble`. Fails when the booster has no usable covers.
    pub fn new(ensemble: &Ensemble) -> Result<Self> {
        Self::with_table_depth(ensemble, MAX_TABLE_DEPTH)
    }

    /// [`Self::new`], tabulating only leaves at most `table_depth` deep (tests use 0 to run
    /// every leaf through the per-row fallback).
    fn with_table_depth(ensemble: &Ensemble, table_depth: usize) -> Result<Self> {
        let mut shap = TreeShap {
            table_depth: table_depth.min(MAX_TABLE_DEPTH),
            num_features: ensemble.num_features(),
            bias: ensemble.base_margin() as f64,
            steps: Vec::new(),
            entries: Vec::new(),
            direct: Vec::new(),
            tables: Vec::new(),
            long_leaves: Vec::new(),
            num_slots: 1,
            slot_depths: vec![0],
            banks: 1,
        };
        if shap.num_features > usize::from(u16::MAX) {
            return Err(ShapError::Unavailable(format!(
                "the model has {} features; contributions are computed for at most {}",
                shap.num_features,
                u16::MAX
            )));
        }
        let mut build = Build::default();
        for t in 0..ensemble.num_trees() {
            let nodes: Vec<TreeNode> = ensemble.tree_nodes(t).collect();
            let covers = ensemble
                .tree_covers(t)
                .map_err(|why| ShapError::Unavailable(why.to_string()))?;
            if let Some((node, &cover)) = covers
                .iter()
                .enumerate()
                .find(|(_, c)| !(**c >= 0.0 && c.is_finite()))
            {
                return Err(ShapError::BadCover {
                    tree: t,
                    node,
                    cover,
                });
            }
            shap.bias += mean_value(&nodes, covers, 0);
            shap.add_tree(&nodes, covers, &mut build);
        }
        // The splits of every tree level by level, the root of every tree first: a split's
        // mask is then long computed when its children's are, rather than the instruction
        // before (a parent still comes before its children).
        let mut order: Vec<usize> = (0..shap.steps.len()).collect();
        order.sort_by_key(|&k| build.levels[k]);
        let mut moved_to = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            moved_to[old] = new as u32;
        }
        shap.steps = order.iter().map(|&k| shap.steps[k]).collect();
        for leaf in &mut shap.long_leaves {
            for (_, _, edges) in &mut leaf.features {
                for (step, _) in edges {
                    *step = moved_to[*step as usize];
                }
            }
        }
        // Successive reads of one feature go to successive banks.
        let nf = shap.num_features.max(1);
        shap.banks = (usize::from(u16::MAX) / nf).clamp(1, BANKS);
        let mut seen = vec![0usize; nf];
        for entries in [&mut shap.entries, &mut shap.direct] {
            seen.fill(0);
            for e in entries.iter_mut() {
                let f = usize::from(e.acc);
                e.acc = ((seen[f] % shap.banks) * nf + f) as u16;
                seen[f] += 1;
            }
        }
        shap.check();
        Ok(shap)
    }

    /// Two new consecutive slots for the children of a node at `depth` levels.
    fn new_slots(&mut self, depth: usize) -> [u32; 2] {
        let first = self.num_slots as u32;
        self.num_slots += 2;
        let depth = depth.min(usize::from(u8::MAX) - 1) as u8;
        self.slot_depths.extend([depth + 1, depth + 1]);
        [first, first + 1]
    }

    /// What [`Self::contributions`] relies on to index without bounds checks; a failure is a
    /// bug of the builder.
    fn check(&self) {
        let wide = 2 * self.num_features;
        for s in &self.steps {
            assert!((s.feature as usize) < wide && (s.slot as usize) < self.num_slots);
            assert!((s.left as usize) + 1 < self.num_slots);
        }
        for e in self.entries.iter().chain(&self.direct) {
            let depth = u32::from(self.slot_depths[e.slot as usize]);
            assert!(depth <= MAX_TABLE_DEPTH as u32);
            assert!(usize::from(e.acc) < self.banks * self.num_features);
            assert!(e.table as usize + (1usize << depth) <= self.tables.len());
        }
    }

    /// Lays out one tree: its splits in pre-order, and its leaves' tables and reads.
    fn add_tree(&mut self, nodes: &[TreeNode], covers: &[f32], build: &mut Build) {
        if matches!(nodes[0], TreeNode::Leaf { .. }) {
            // A lone leaf only adds to the bias.
            return;
        }
        // Depth-first from the root (slot 0: its mask is always empty) with the path to
        // each node.
        let mut stack = vec![(0usize, 0u32, Vec::<PathEdge>::new())];
        while let Some((node, slot, path)) = stack.pop() {
            let TreeNode::Split {
                feature,
                threshold,
                default_left,
                left,
                right,
            } = nodes[node]
            else {
                unreachable!("only splits are pushed");
            };
            let step = self.steps.len() as u32;
            let level = path.len();
            build.levels.push(level);
            let children = [left as usize, right as usize];
            let slots = self.new_slots(level);
            let paths = [0, 1].map(|side| {
                let mut p = path.clone();
                p.push(PathEdge {
                    feature,
                    step,
                    right: side == 1,
                    weight: branch_weight(covers[children[side]], covers[node]),
                });
                p
            });
            let nf = self.num_features as u32;
            self.steps.push(Step {
                feature: if default_left { feature } else { nf + feature },
                threshold,
                slot,
                left: slots[0],
                bit: 1u16.checked_shl(level as u32).unwrap_or(0),
            });
            match children.map(|c| nodes[c]) {
                [TreeNode::Leaf { value: l }, TreeNode::Leaf { value: r }]
                    if level < self.table_depth =>
                {
                    self.add_twig(slots[0], [l, r], &paths, build);
                }
                _ => {
                    for side in 0..2 {
                        match nodes[children[side]] {
                            TreeNode::Leaf { value } => {
                                self.add_leaf(slots[side], value, &paths[side], build)
                            }
                            TreeNode::Split { .. } => {
                                stack.push((children[side], slots[side], paths[side].clone()))
                            }
                        }
                    }
                }
            }
        }
    }

    /// Appends a table and returns its start.
    fn push_table(&mut self, values: impl Iterator<Item = f64>) -> u32 {
        let start = self.tables.len() as u32;
        self.tables.extend(values.map(|v| v as f32));
        start
    }

    fn push_entry(&mut self, slot: u32, table: u32, coef: f64, feature: u32, levels: u32) {
        self.entries.push(Entry {
            slot,
            table,
            coef_x: (coef as f32).to_bits() ^ MINUS_ONE,
            acc: feature as u16,
            levels: levels as u16,
        });
    }

    /// Tabulates (or, when too deep, records) the leaf at the end of `path`, whose agreement
    /// mask is in `slot`.
    fn add_leaf(&mut self, slot: u32, value: f32, path: &[PathEdge], build: &mut Build) {
        let distinct = PathFeature::of(path);
        if path.len() > self.table_depth {
            self.long_leaves.push(LongLeaf {
                value: value as f64,
                features: distinct
                    .into_iter()
                    .map(|d| (d.feature, d.z, d.edges))
                    .collect(),
            });
            return;
        }
        let table = leaf_table(
            value,
            &distinct,
            path.len(),
            &mut build.weights,
            &mut build.poly,
        );
        let start = self.push_table(table.into_iter());
        for d in &distinct {
            self.push_entry(slot, start, 1.0 / d.z - 1.0, d.feature, d.levels);
        }
    }

    /// Tabulates two sibling leaves together. The left leaf's mask `x` (in `slot`) says
    /// everything about both: the right leaf's is `x` with the last level's bit flipped.
    /// Every feature of the parent's path other than the last split's has the same `z` and
    /// levels in both leaves, so one table of the two leaves' sums serves them all; the last
    /// split's feature gets a table of its contribution itself.
    fn add_twig(
        &mut self,
        slot: u32,
        values: [f32; 2],
        paths: &[Vec<PathEdge>; 2],
        build: &mut Build,
    ) {
        let depth = paths[0].len();
        let last = 1u32 << (depth - 1);
        let split = paths[0][depth - 1].feature;
        let distinct = paths.each_ref().map(|p| PathFeature::of(p));
        let [tl, tr] = [0, 1].map(|side| {
            leaf_table(
                values[side],
                &distinct[side],
                depth,
                &mut build.weights,
                &mut build.poly,
            )
        });
        let size = 1u32 << depth;
        let sums = self.push_table((0..size).map(|x| tl[x as usize] + tr[(x ^ last) as usize]));
        for d in distinct[0].iter().filter(|d| d.feature != split) {
            self.push_entry(slot, sums, 1.0 / d.z - 1.0, d.feature, d.levels);
        }
        let [dl, dr] = [0, 1].map(|side| {
            distinct[side]
                .iter()
                .find(|d| d.feature == split)
                .expect("the last split is on the path")
        });
        let own = self.push_table(
            (0..size).map(|x| dl.contribution(&tl, x) + dr.contribution(&tr, x ^ last)),
        );
        self.direct.push(Entry {
            slot,
            table: own,
            coef_x: 0,
            acc: split as u16,
            levels: 0,
        });
    }

    /// Every split of every tree, parents first: each child's agreement mask, and (`RECORD`,
    /// for the deep leaves) whether the row goes right.
    ///
    /// # Safety
    ///
    /// `wide` must have `2 * num_features` values and `masks` at least `num_slots` (and
    /// `right`, when `RECORD`, one per step).
    #[inline(always)]
    unsafe fn split_pass<const RECORD: bool>(
        &self,
        wide: &[f32],
        masks: &mut [u16],
        right: &mut [bool],
    ) {
        debug_assert!(wide.len() == 2 * self.num_features && masks.len() >= self.num_slots);
        for (k, s) in self.steps.iter().enumerate() {
            // SAFETY: `check` asserted every step's feature below `2 * num_features` and its
            // slots below `num_slots`.
            // XGBoost goes left on `x < threshold`; NaN follows the default branch.
            let goes_right = unsafe { *wide.get_unchecked(s.feature as usize) } >= s.threshold;
            let m = unsafe { *masks.get_unchecked(s.slot as usize) };
            let to_right = s.bit & opaque(u32::from(goes_right)).wrapping_neg() as u16;
            unsafe {
                *masks.get_unchecked_mut(s.left as usize) = m | (s.bit ^ to_right);
                *masks.get_unchecked_mut(s.left as usize + 1) = m | to_right;
            }
            if RECORD {
                right[k] = goes_right;
            }
        }
    }

    /// Number of model features (the output has one more value, the bias).
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The bias: the base margin plus every tree's mean value (the last output value).
    pub fn bias(&self) -> f64 {
        self.bias
    }

    /// Working memory sized for this model.
    pub fn scratch(&self) -> ShapScratch {
        ShapScratch {
            masks: vec![0; self.num_slots],
            acc: vec![0.0; self.banks * self.num_features],
            wide: vec![0.0; 2 * self.num_features],
            right: vec![
                false;
                if self.long_leaves.is_empty() {
                    0
                } else {
                    self.steps.len()
                }
            ],
            poly: Vec::new(),
        }
    }

    /// Writes the contributions of `row` (`num_features` values, NaN = missing) to `out`:
    /// one value per feature, then the bias; they sum to the row's margin. Allocates nothing
    /// once `scratch` has served a row of this model.
    pub fn contributions(
        &self,
        row: &[f32],
        out: &mut [f64],
        scratch: &mut ShapScratch,
    ) -> Result<()> {
        let nf = self.num_features;
        if row.len() != nf || out.len() != nf + 1 {
            return Err(ShapError::Length {
                expected: nf,
                row: row.len(),
                out: out.len(),
            });
        }
        let has_long = !self.long_leaves.is_empty();
        if scratch.masks.len() < self.num_slots
            || scratch.wide.len() != 2 * nf
            || scratch.acc.len() != self.banks * nf
            || (has_long && scratch.right.len() < self.steps.len())
        {
            *scratch = self.scratch();
        }
        out.fill(0.0);
        out[nf] = self.bias;
        let phi = &mut out[..nf];
        let acc = &mut scratch.acc[..];
        acc.fill(0.0);
        let masks = &mut scratch.masks[..];
        // Every root's (the scratch may have served another model).
        masks[0] = 0;
        // The row, then the row with NaN as +inf (see `Step::feature`).
        let (plain, filled) = scratch.wide.split_at_mut(nf);
        plain.copy_from_slice(row);
        for (f, &x) in filled.iter_mut().zip(row) {
            *f = if x.is_nan() { f32::INFINITY } else { x };
        }
        let wide = &scratch.wide[..];
        // Both passes are written without data-dependent branches: whether a row goes right,
        // or agrees with a feature, is a coin toss the branch predictor would lose half the
        // time. The compiler turns an `if`, and even arithmetic on a comparison's 0 or 1, back
        // into a jump, so that 0 or 1 goes through [`opaque`] before it becomes a mask.
        //
        // SAFETY (`split_pass` and the `get_unchecked` below): `check` asserted, when the
        // tables were built, that every entry's slot is below `num_slots`, its accumulator
        // below `banks * num_features` (the length of `acc`), and that its table holds
        // `1 << depth` values, where depth is the number of levels of the slot's node, whose
        // masks only have bits below it; the lengths of `wide`, `masks` and `right` were made
        // right above.
        unsafe {
            if has_long {
                self.split_pass::<true>(wide, masks, &mut scratch.right);
            } else {
                self.split_pass::<false>(wide, masks, &mut scratch.right);
            }
        }
        // One flat pass over every read: no per-leaf loop whose length the branch predictor
        // would have to guess.
        for e in &self.entries {
            let m = unsafe { *masks.get_unchecked(e.slot as usize) };
            // Inside (every level of the feature agrees): `coef * table[m & !levels]`;
            // outside: `-table[m]`.
            let inside = opaque(u32::from(m & e.levels == e.levels)).wrapping_neg();
            // Inside, `m` has every bit of `levels`: `m ^ levels` clears them.
            let at = m ^ (e.levels & inside as u16);
            let factor = f32::from_bits((e.coef_x & inside) ^ MINUS_ONE);
            let value = unsafe { *self.tables.get_unchecked(e.table as usize + at as usize) };
            let sum = unsafe { acc.get_unchecked_mut(usize::from(e.acc)) };
            // The product in `f32` (one rounding, 6e-8 relative), the sum in `f64`.
            *sum += f64::from(factor * value);
        }
        // The last split's feature of each pair of sibling leaves: its contribution outright.
        for e in &self.direct {
            let m = unsafe { *masks.get_unchecked(e.slot as usize) };
            let value = unsafe { *self.tables.get_unchecked(e.table as usize + m as usize) };
            unsafe { *acc.get_unchecked_mut(usize::from(e.acc)) += f64::from(value) };
        }
        for bank in acc.chunks_exact(nf.max(1)) {
            for (p, a) in phi.iter_mut().zip(bank) {
                *p += a;
            }
        }
        for leaf in &self.long_leaves {
            long_leaf(leaf, &scratch.right, &mut scratch.poly, phi);
        }
        Ok(())
    }
}

/// The contributions of one deep leaf, from the polynomial prod_j (o_j t + z_j) over its
/// distinct features, each feature's own factor divided out in turn.
fn long_leaf(leaf: &LongLeaf, right: &[bool], poly: &mut Vec<f64>, phi: &mut [f64]) {
    let u = leaf.features.len();
    poly.clear();
    poly.resize(2 * (u + 1), 0.0);
    let (p, q) = poly.split_at_mut(u + 1);
    p[0] = 1.0;
    let agrees = |edges: &[(u32, bool)]| edges.iter().all(|&(s, r)| right[s as usize] == r);
    for (n, (_, z, edges)) in leaf.features.iter().enumerate() {
        let o = if agrees(edges) { 1.0 } else { 0.0 };
        // p = p * (o t + z), p of degree n.
        for k in (0..=n + 1).rev() {
            p[k] = p[k] * z + if k > 0 { o * p[k - 1] } else { 0.0 };
        }
    }
    // Shapley weight of k agreeing features among the other u - 1: k! (u-1-k)! / u!.
    for (feature, z, edges) in &leaf.features {
        let o = agrees(edges);
        // q = p / (o t + z), of degree u - 1.
        if o {
            // From the top: p_u = q_{u-1}, p_k = q_{k-1} + z q_k.
            q[u - 1] = p[u];
            for k in (1..u).rev() {
                q[k - 1] = p[k] - z * q[k];
            }
        } else {
            for k in 0..u {
                q[k] = p[k] / z;
            }
        }
        let mut w = 1.0 / u as f64;
        let mut sum = 0.0;
        for (k, &qk) in q[..u].iter().enumerate() {
            sum += w * qk;
            if k + 1 < u {
                w *= (k + 1) as f64 / (u - 1 - k) as f64;
            }
        }
        let o = if o { 1.0 } else { 0.0 };
        phi[*feature as usize] += leaf.value * (o - z) * sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default");
    /// Largest difference allowed from libxgboost's `pred_contribs` (which sums in `f32`).
    const TOLERANCE: f64 = 1e-5;

    /// libxgboost's own contributions for a row-major matrix, on one thread.
    fn xgboost_contribs(booster_json: &[u8], matrix: &[f32], nf: usize) -> Vec<f32> {
        let mut booster = xgb::Booster::load_buffer(booster_json).unwrap();
        booster.set_param("nthread", "1").unwrap();
        let dmat = xgb::DMatrix::from_dense(matrix, matrix.len() / nf).unwrap();
        let (out, (rows, cols)) = booster.predict_contributions(&dmat).unwrap();
        assert_eq!((rows, cols), (matrix.len() / nf, nf + 1));
        out
    }

    /// Ours for every row of `matrix`.
    fn our_contribs(shap: &TreeShap, matrix: &[f32]) -> Vec<f64> {
        let nf = shap.num_features();
        let mut scratch = shap.scratch();
        let mut out = vec![0.0; matrix.len() / nf * (nf + 1)];
        for (row, o) in matrix.chunks_exact(nf).zip(out.chunks_exact_mut(nf + 1)) {
            shap.contributions(row, o, &mut scratch).unwrap();
        }
        out
    }

    /// The largest difference from libxgboost, with where it is.
    fn worst(ours: &[f64], theirs: &[f32], nf: usize) -> (f64, usize, usize) {
        assert_eq!(ours.len(), theirs.len());
        ours.iter()
            .zip(theirs)
            .enumerate()
            .map(|(i, (a, b))| ((a - *b as f64).abs(), i / (nf + 1), i % (nf + 1)))
            .fold(
                (0.0, 0, 0),
                |w, d| if d.0 > w.0 || d.0.is_nan() { d } else { w },
            )
    }

    /// Ours equal libxgboost's to [`TOLERANCE`], and each row's sum is our walker's margin.
    fn assert_matches_xgboost(what: &str, e: &Ensemble, shap: &TreeShap, json: &[u8], m: &[f32]) {
        let nf = e.num_features();
        let ours = our_contribs(shap, m);
        let (diff, row, col) = worst(&ours, &xgboost_contribs(json, m, nf), nf);
        println!("{what}: largest difference from libxgboost {diff:.2e}");
        assert!(
            diff <= TOLERANCE,
            "{what}: row {row} value {col} differs from libxgboost by {diff:e}"
        );
        for (r, (row, phi)) in m
            .chunks_exact(nf)
            .zip(ours.chunks_exact(nf + 1))
            .enumerate()
        {
            let sum: f64 = phi.iter().sum();
            let margin = e.margin(row) as f64;
            assert!(
                (sum - margin).abs() <= TOLERANCE,
                "{what}: row {r} contributions sum to {sum}, the margin is {margin}"
            );
        }
    }

    /// Sets a share of the values to NaN (missing).
    fn blank(matrix: &mut [f32], share: f64, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for x in matrix.iter_mut() {
            if rng.random_bool(share) {
                *x = f32::NAN;
            }
        }
    }

    /// The default model's booster and a preprocessed matrix of `rows` generated applications,
    /// a fifth of them without a bureau file, the second half with extra missing values.
    fn default_model_rows(rows: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let bundle = crate::bundle::ModelBundle::load(DEFAULT_DIR).unwrap();
        let json = std::fs::read(format!("{DEFAULT_DIR}/booster.json")).unwrap();
        let data = crate::synthetic::generate(&crate::synthetic::GeneratorParams {
            rows,
            seed,
            no_bureau_share: 0.2,
            ..Default::default()
        })
        .unwrap();
        let mut matrix = bundle.preprocessor().transform(&data.rows);
        let half = matrix.len() / 2;
        blank(&mut matrix[half..], 0.15, seed);
        (json, matrix)
    }

    #[test]
    fn default_model_matches_libxgboost_pred_contribs() {
        let (json, matrix) = default_model_rows(3_000, 17);
        assert!(matrix.iter().any(|x| x.is_nan()));
        let e = Ensemble::from_xgboost_json(&json).unwrap();
        let shap = TreeShap::new(&e).unwrap();
        assert_matches_xgboost("default model", &e, &shap, &json, &matrix);
        // The per-row fallback for deep leaves gives the same values.
        let fallback = TreeShap::with_table_depth(&e, 0).unwrap();
        assert!(fallback.entries.is_empty() && fallback.direct.is_empty());
        assert!(!fallback.long_leaves.is_empty());
        assert_matches_xgboost("default model, fallback", &e, &fallback, &json, &matrix);
    }

    #[test]
    fn a_perturbed_cover_is_caught() {
        // One cover of the first tree changed by 10%: the contributions must no longer match
        // libxgboost's on the true booster (so the comparison above can fail).
        let (json, matrix) = default_model_rows(500, 3);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let covers = v
            .pointer_mut("/learner/gradient_booster/model/trees/0/sum_hessian/1")
            .unwrap();
        *covers = serde_json::json!(covers.as_f64().unwrap() * 1.1);
        let perturbed = Ensemble::from_xgboost_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        let shap = TreeShap::new(&perturbed).unwrap();
        let nf = perturbed.num_features();
        let ours = our_contribs(&shap, &matrix);
        let (diff, _, _) = worst(&ours, &xgboost_contribs(&json, &matrix, nf), nf);
        assert!(diff > 1e-3, "a wrong cover went unnoticed (diff {diff:e})");
    }

    /// Trains a booster with libxgboost on random data with missing values; returns its JSON.
    fn train_random(
        seed: u64,
        nf: usize,
        depth: usize,
        trees: usize,
        base_score: f64,
        method: &str,
    ) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows = 800;
        let mut x: Vec<f32> = (0..rows * nf)
            .map(|i| match i % 3 {
                // Some features take few values, so rows sit exactly on thresholds.
                0 => rng.random_range(0..4) as f32,
                _ => rng.random_range(-2.0f32..2.0),
            })
            .collect();
        let labels: Vec<f32> = x
            .chunks_exact(nf)
            .map(|r| {
                let s = r
                    .iter()
                    .take(4)
                    .enumerate()
                    .map(|(i, v)| v * (i as f32 - 1.5))
                    .sum::<f32>();
                f32::from(s + rng.random_range(-1.5f32..1.5) > 0.0)
            })
            .collect();
        blank(&mut x, 0.15, seed + 1);
        let mut d = xgb::DMatrix::from_dense(&x, rows).unwrap();
        d.set_labels(&labels).unwrap();
        let mut booster = xgb::Booster::new_with_cached_dmats(
            &xgb::parameters::BoosterParameters::default(),
            &[&d],
        )
        .unwrap();
        for (k, v) in [
            ("objective", "binary:logistic".to_string()),
            ("base_score", base_score.to_string()),
            ("max_depth", depth.to_string()),
            ("eta", "0.3".into()),
            ("lambda", "0.1".into()),
            ("min_child_weight", "0".into()),
            ("tree_method", method.into()),
            ("seed", seed.to_string()),
            ("nthread", "1".into()),
            ("verbosity", "0".into()),
        ] {
            booster.set_param(k, &v).unwrap();
        }
        for i in 0..trees as i32 {
            booster.update(&d, i).unwrap();
        }
        booster.save_buffer(false).unwrap()
    }

    #[test]
    fn random_boosters_match_libxgboost_pred_contribs() {
        for (seed, nf, depth, trees, base_score, method) in [
            (1, 3, 1, 30, 0.3, "exact"),
            (2, 5, 2, 24, 0.7, "hist"),
            (3, 8, 3, 36, 0.2, "exact"),
            (4, 12, 4, 30, 0.6, "hist"),
            (5, 7, 5, 24, 0.35, "approx"),
            (6, 19, 6, 30, 0.8, "hist"),
            (7, 6, 7, 24, 0.25, "exact"),
            (8, 10, 8, 24, 0.4, "hist"),
        ] {
            let json = train_random(seed, nf, depth, trees, base_score, method);
            let e = Ensemble::from_xgboost_json(&json).unwrap();
            assert_eq!(e.num_trees(), trees);
            let mut matrix: Vec<f32> = {
                let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
                (0..1_000 * nf)
                    .map(|i| match i % 3 {
                        0 => rng.random_range(0..4) as f32,
                        _ => rng.random_range(-2.5f32..2.5),
                    })
                    .collect()
            };
            blank(&mut matrix, 0.2, seed + 200);
            let what = format!("seed {seed}, depth {depth}, {method}");
            let shap = TreeShap::new(&e).unwrap();
            assert_matches_xgboost(&what, &e, &shap, &json, &matrix);
            let fallback = TreeShap::with_table_depth(&e, 0).unwrap();
            assert_matches_xgboost(&format!("{what}, fallback"), &e, &fallback, &json, &matrix);
        }
    }

    #[test]
    fn a_booster_without_covers_loads_but_has_no_contributions() {
        let json = r#"{"learner":{"objective":{"name":"binary:logistic"},
          "gradient_booster":{"name":"gbtree","model":{"trees":[
            {"left_children":[1,-1,-1],"right_children":[2,-1,-1],"split_indices":[0,0,0],
             "split_conditions":[0.5,-0.25,0.75],"default_left":[0,0,0]}]}},
          "learner_model_param":{"base_score":"[5E-1]","num_feature":"2"}}}"#;
        let e = Ensemble::from_xgboost_json(json.as_bytes()).unwrap();
        let err = TreeShap::new(&e).unwrap_err();
        assert!(matches!(err, ShapError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("sum_hessian"), "{err}");

        let with = json.replace(
            r#""default_left":[0,0,0]"#,
            r#""default_left":[0,0,0],"sum_hessian":[4,1,3]"#,
        );
        let e = Ensemble::from_xgboost_json(with.as_bytes()).unwrap();
        let shap = TreeShap::new(&e).unwrap();
        let mut out = [0.0; 3];
        shap.contributions(&[0.1, 7.0], &mut out, &mut shap.scratch())
            .unwrap();
        // Mean value 0.25 * -0.25 + 0.75 * 0.75 = 0.5; the row's leaf is -0.25.
        assert!((out[2] - 0.5).abs() < 1e-12, "{out:?}");
        assert!((out[0] - (-0.25 - 0.5)).abs() < 1e-12, "{out:?}");
        assert_eq!(out[1], 0.0);

        let negative = with.replace("[4,1,3]", "[4,-1,3]");
        let e = Ensemble::from_xgboost_json(negative.as_bytes()).unwrap();
        assert!(matches!(
            TreeShap::new(&e),
            Err(ShapError::BadCover { node: 1, .. })
        ));
    }

    /// Contribution speed, ours and libxgboost's `pred_contribs`, both on one thread, on the
    /// same rows: `cargo test --release --lib model::shap::tests::shap_speed -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a benchmark; run by hand in release"]
    fn shap_speed() {
        use std::{hint::black_box, time::Instant};
        let (json, matrix) = default_model_rows(4_000, 11);
        let e = Ensemble::from_xgboost_json(&json).unwrap();
        let nf = e.num_features();
        let rows = matrix.len() / nf;
        let t = Instant::now();
        let shap = TreeShap::new(&e).unwrap();
        println!(
            "{} trees, max depth {}, {rows} rows (half with extra missing values); tables built in {:.1} ms, {} KiB",
            e.num_trees(),
            e.max_depth(),
            t.elapsed().as_secs_f64() * 1e3,
            (shap.tables.len() * std::mem::size_of::<f32>()
                + (shap.entries.len() + shap.direct.len()) * std::mem::size_of::<Entry>())
                / 1024
        );
        // For the same rows through Python's xgboost (scripts/shap-python.py): the matrix as
        // little-endian f32, row-major, NaN for missing.
        if let Ok(path) = std::env::var("CRA_SHAP_ROWS_OUT") {
            let bytes: Vec<u8> = matrix.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(&path, bytes).unwrap();
            println!("rows written to {path}: {rows} x {nf} f32");
        }
        let mut booster = xgb::Booster::load_buffer(&json).unwrap();
        booster.set_param("nthread", "1").unwrap();
        let dmat = xgb::DMatrix::from_dense(&matrix, rows).unwrap();
        // This thread's time on a CPU (Linux schedstat, ns), so that a busy machine does not
        // count; libxgboost with nthread=1 runs on the calling thread.
        let on_cpu = || {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                .map(|ns| ns / 1e3)
        };
        let time = |name: &str, repeats: usize, f: &mut dyn FnMut() -> f64| -> f64 {
            let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
            for _ in 0..repeats {
                let (t, c) = (Instant::now(), on_cpu());
                black_box(f());
                best = best.min(t.elapsed().as_secs_f64() * 1e6 / rows as f64);
                if let (Some(c), Some(now)) = (c, on_cpu()) {
                    best_cpu = best_cpu.min((now - c) / rows as f64);
                }
            }
            println!(
                "{name:<48} {best:8.2} us/row wall, {best_cpu:8.2} us/row on CPU (best of {repeats})"
            );
            best_cpu.min(best)
        };
        let mut scratch = shap.scratch();
        let mut out = vec![0.0f64; nf + 1];
        let ours = time("TreeShap::contributions, row by row", 7, &mut || {
            let mut acc = 0.0;
            for row in matrix.chunks_exact(nf) {
                shap.contributions(black_box(row), &mut out, &mut scratch)
                    .unwrap();
                acc += out[0];
            }
            acc
        });
        let theirs = time(
            "libxgboost pred_contribs, nthread=1, one batch",
            3,
            &mut || booster.predict_contributions(black_box(&dmat)).unwrap().0[0] as f64,
        );
        println!("ratio {:.1}x", theirs / ours);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let e = Ensemble::from_xgboost_json(
            &std::fs::read(format!("{DEFAULT_DIR}/booster.json")).unwrap(),
        )
        .unwrap();
        let shap = TreeShap::new(&e).unwrap();
        let nf = shap.num_features();
        let mut scratch = ShapScratch::default();
        let mut out = vec![0.0; nf + 1];
        assert!(shap
            .contributions(&vec![0.0; nf - 1], &mut out, &mut scratch)
            .is_err());
        assert!(shap
            .contributions(&vec![0.0; nf], &mut out[..nf], &mut scratch)
            .is_err());
        // An empty scratch is sized on first use.
        shap.contributions(&vec![0.0; nf], &mut out, &mut scratch)
            .unwrap();
    }
}
