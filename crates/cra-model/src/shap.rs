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
//! agreement pattern of its `d` splits (`2^d` values). Scoring a row then walks each tree's
//! splits once to build every leaf's agreement bit mask, and reads one table entry per
//! (leaf, distinct path feature): O(leaves × depth) per tree instead of the O(leaves × depth²)
//! of the original algorithm. Leaves deeper than [`MAX_TABLE_DEPTH`] would need too large a
//! table; they fall back to the polynomial form of the same sum, computed per row.

use super::ensemble::{Ensemble, TreeNode};

/// Deepest leaf whose values are tabulated (2^depth `f64` per leaf); deeper leaves are
/// computed per row, more slowly.
pub const MAX_TABLE_DEPTH: usize = 10;

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

/// One split of a tree, in an order where a parent comes before its children.
#[derive(Debug, Clone, Copy)]
struct Step {
    feature: u32,
    threshold: f32,
    default_left: bool,
    /// This split's level bit in its leaves' agreement masks (0 below level 32).
    bit: u32,
    /// Slots (in the per-tree scratch) of this node's agreement mask and its children's.
    slot: u32,
    left: u32,
    right: u32,
}

/// A leaf tabulated over the agreement patterns of its path.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    /// Slot of the leaf's agreement mask; leaves take slots `0..leaves`.
    slot: u32,
    /// Start of its `2^depth` values `v * F(Q(mask))` in [`TreeShap::tables`].
    table: u32,
    /// Its distinct path features in [`TreeShap::entries`].
    entries: (u32, u32),
}

/// One distinct feature on a tabulated leaf's path.
#[derive(Debug, Clone, Copy)]
struct Entry {
    feature: u32,
    /// The path levels that split on this feature.
    levels: u32,
    /// `1 / z - 1`.
    coef: f64,
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

#[derive(Debug, Clone)]
struct Tree {
    steps: (u32, u32),
    leaves: (u32, u32),
    long_leaves: (u32, u32),
}

/// Precomputed TreeSHAP tables of one model; `Sync`, shared by every thread, which each bring
/// their own [`ShapScratch`].
#[derive(Debug, Clone)]
pub struct TreeShap {
    num_features: usize,
    bias: f64,
    trees: Vec<Tree>,
    steps: Vec<Step>,
    leaves: Vec<Leaf>,
    entries: Vec<Entry>,
    tables: Vec<f64>,
    long_leaves: Vec<LongLeaf>,
    /// Most splits + leaves of any tree (the scratch size).
    max_slots: usize,
    max_steps: usize,
    /// Deepest leaf tabulated (at most [`MAX_TABLE_DEPTH`]).
    table_depth: usize,
}

/// Per-thread working memory for [`TreeShap::contributions`], so rows allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct ShapScratch {
    masks: Vec<u32>,
    right: Vec<bool>,
    poly: Vec<f64>,
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
            trees: Vec::with_capacity(ensemble.num_trees()),
            steps: Vec::new(),
            leaves: Vec::new(),
            entries: Vec::new(),
            tables: Vec::new(),
            long_leaves: Vec::new(),
            max_slots: 0,
            max_steps: 0,
        };
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
            shap.add_tree(&nodes, covers);
        }
        Ok(shap)
    }

    /// Lays out one tree: its splits in pre-order, then its leaves' tables.
    fn add_tree(&mut self, nodes: &[TreeNode], covers: &[f32]) {
        let num_leaves = nodes
            .iter()
            .filter(|n| matches!(n, TreeNode::Leaf { .. }))
            .count();
        let first_step = self.steps.len();
        let (first_leaf, first_long) = (self.leaves.len(), self.long_leaves.len());
        let mut weights = Vec::new();
        let mut poly = Vec::new();
        // Depth-first from the root with the path to each node; slots: leaves 0..num_leaves,
        // splits after them.
        let mut next_leaf = 0u32;
        let mut next_split = num_leaves as u32;
        let mut stack = vec![(0usize, next_split, Vec::<PathEdge>::new())];
        if matches!(nodes[0], TreeNode::Leaf { .. }) {
            // A lone leaf only adds to the bias.
            stack.clear();
        } else {
            next_split += 1;
        }
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
            let step = (self.steps.len() - first_step) as u32;
            let level = path.len();
            let mut child_slots = [0u32; 2];
            for (side, child) in [left, right].into_iter().enumerate() {
                let child = child as usize;
                let mut child_path = path.clone();
                child_path.push(PathEdge {
                    feature,
                    step,
                    right: side == 1,
                    weight: branch_weight(covers[child], covers[node]),
                });
                match nodes[child] {
                    TreeNode::Leaf { value } => {
                        child_slots[side] = next_leaf;
                        self.add_leaf(next_leaf, value, &child_path, &mut weights, &mut poly);
                        next_leaf += 1;
                    }
                    TreeNode::Split { .. } => {
                        child_slots[side] = next_split;
                        stack.push((child, next_split, child_path));
                        next_split += 1;
                    }
                }
            }
            self.steps.push(Step {
                feature,
                threshold,
                default_left,
                bit: 1u32.checked_shl(level as u32).unwrap_or(0),
                slot,
                left: child_slots[0],
                right: child_slots[1],
            });
        }
        self.max_slots = self.max_slots.max(next_split as usize);
        self.max_steps = self.max_steps.max(self.steps.len() - first_step);
        self.trees.push(Tree {
            steps: (first_step as u32, self.steps.len() as u32),
            leaves: (first_leaf as u32, self.leaves.len() as u32),
            long_leaves: (first_long as u32, self.long_leaves.len() as u32),
        });
    }

    /// Tabulates (or, when too deep, records) the leaf at the end of `path`.
    fn add_leaf(
        &mut self,
        slot: u32,
        value: f32,
        path: &[PathEdge],
        weights: &mut Vec<f64>,
        poly: &mut Vec<f64>,
    ) {
        // Distinct features: (feature, z, levels, edges).
        let mut distinct: Vec<(u32, f64, u32, FeatureEdges)> = Vec::new();
        for (level, e) in path.iter().enumerate() {
            let at = match distinct.iter().position(|d| d.0 == e.feature) {
                Some(at) => at,
                None => {
                    distinct.push((e.feature, 1.0, 0, Vec::new()));
                    distinct.len() - 1
                }
            };
            let d = &mut distinct[at];
            d.1 *= e.weight as f64;
            d.2 |= 1u32.checked_shl(level as u32).unwrap_or(0);
            d.3.push((e.step, e.right));
        }
        if path.len() > self.table_depth {
            self.long_leaves.push(LongLeaf {
                value: value as f64,
                features: distinct.into_iter().map(|(f, z, _, e)| (f, z, e)).collect(),
            });
            return;
        }
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
        let all_z: f64 = distinct.iter().map(|d| d.1).product();
        for set in 0..subsets {
            if set > 0 {
                let j = set.trailing_zeros() as usize;
                let (prev, cur) = poly.split_at_mut(set * (u + 1));
                let prev = &prev[(set & (set - 1)) * (u + 1)..][..u + 1];
                let cur = &mut cur[..u + 1];
                let z = distinct[j].1;
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
                .map(|j| distinct[j].1)
                .product();
            let g: f64 = (0..u).map(|k| weights[k] * p[k]).sum();
            f_of[set] = g * outside;
        }
        debug_assert!(all_z > 0.0);
        // The table is indexed by the agreement mask of the path's levels; a feature is in Q
        // when all its levels agree.
        let table = self.tables.len() as u32;
        for mask in 0..1u32 << path.len() {
            let set = distinct
                .iter()
                .enumerate()
                .filter(|(_, d)| mask & d.2 == d.2)
                .fold(0usize, |s, (j, _)| s | 1 << j);
            self.tables.push(value as f64 * f_of[set]);
        }
        let first = self.entries.len() as u32;
        self.entries
            .extend(distinct.iter().map(|&(feature, z, levels, _)| Entry {
                feature,
                levels,
                coef: 1.0 / z - 1.0,
            }));
        self.leaves.push(Leaf {
            slot,
            table,
            entries: (first, self.entries.len() as u32),
        });
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
            masks: vec![0; self.max_slots.max(1)],
            right: vec![false; self.max_steps.max(1)],
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
        if scratch.masks.len() < self.max_slots || scratch.right.len() < self.max_steps {
            *scratch = self.scratch();
        }
        out.fill(0.0);
        out[nf] = self.bias;
        let phi = &mut out[..nf];
        for tree in &self.trees {
            let steps = &self.steps[tree.steps.0 as usize..tree.steps.1 as usize];
            let masks = &mut scratch.masks[..];
            // The root split's slot is the first after the leaves; its mask is empty.
            if let Some(root) = steps.first() {
                masks[root.slot as usize] = 0;
            }
            let has_long = tree.long_leaves.0 != tree.long_leaves.1;
            for (k, s) in steps.iter().enumerate() {
                let x = row[s.feature as usize];
                // XGBoost goes left on `x < threshold`; NaN follows the default branch.
                let right = if x.is_nan() {
                    !s.default_left
                } else {
                    x >= s.threshold
                };
                let m = masks[s.slot as usize];
                masks[s.left as usize] = m | if right { 0 } else { s.bit };
                masks[s.right as usize] = m | if right { s.bit } else { 0 };
                if has_long {
                    scratch.right[k] = right;
                }
            }
            for leaf in &self.leaves[tree.leaves.0 as usize..tree.leaves.1 as usize] {
                let m = masks[leaf.slot as usize];
                let table = &self.tables[leaf.table as usize..];
                for e in &self.entries[leaf.entries.0 as usize..leaf.entries.1 as usize] {
                    // Branch-free: whether the row agrees on a feature is a coin toss.
                    let inside = m & e.levels == e.levels;
                    let at = if inside { m & !e.levels } else { m };
                    let factor = if inside { e.coef } else { -1.0 };
                    phi[e.feature as usize] += factor * table[at as usize];
                }
            }
            for leaf in &self.long_leaves[tree.long_leaves.0 as usize..tree.long_leaves.1 as usize]
            {
                long_leaf(leaf, &scratch.right, &mut scratch.poly, phi);
            }
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
        assert!(fallback.leaves.is_empty() && !fallback.long_leaves.is_empty());
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
            (shap.tables.len() * 8 + shap.entries.len() * 16) / 1024
        );
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
