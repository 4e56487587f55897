//! A compiled, read-only form of an XGBoost `binary:logistic` gbtree booster for serving.
//!
//! The trainer saves the booster in XGBoost's own JSON format; this module reads that JSON,
//! flattens every tree into one array of nodes and, for boosters up to depth
//! [`MAX_COMPLETE_DEPTH`], pads every tree to a complete, level-ordered binary tree walked
//! branch-free (`idx = 2 * idx + 1 + right`). Rows are evaluated with the same rules as
//! XGBoost's CPU predictor: `f32` features, `x < split` goes left, a missing (NaN) feature follows
//! the node's default direction, leaf values summed in `f32` onto the base margin. The result is
//! checked against libxgboost's own predictions when a bundle is loaded (see `bundle.rs`), so a
//! mismatch can never go unnoticed. It exists because one row through libxgboost's C API costs a
//! DMatrix and a thread-pool round trip, while this walk costs well under a microsecond and is
//! `Sync`.

use serde_json::Value;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Errors reading an XGBoost JSON model.
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    #[error("booster JSON is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("booster JSON: {0}")]
    Format(String),
}

fn fmt_err(msg: impl Into<String>) -> EnsembleError {
    EnsembleError::Format(msg.into())
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Feature index for a split; `u32::MAX` marks a leaf.
    feature: u32,
    /// Split threshold, or the leaf value for a leaf.
    value: f32,
    /// Absolute index of the left child; the right child is `right`.
    left: u32,
    right: u32,
    default_left: bool,
}

const LEAF: u32 = u32::MAX;

/// Deepest booster laid out as complete trees (2^depth leaves per tree); deeper ones use the
/// node walk.
pub const MAX_COMPLETE_DEPTH: usize = 10;
/// Widest row the complete layout handles (its widened row lives on the stack).
const MAX_COMPLETE_FEATURES: usize = 64;
/// The most features a booster may declare: far more than any model of this service has, and
/// few enough that the per-feature tables are small.
pub const MAX_FEATURES: usize = 1 << 16;
/// Rows walked together through one tree by [`Ensemble::margins`].
const BLOCK: usize = 16;
/// Trees walked together for one row by [`Ensemble::margin`].
const TREE_GROUP: usize = 8;

/// One split of a complete tree: `x[feature] >= threshold` goes right, where `x` is the
/// widened row (see [`Complete`]), so a missing value needs no test of its own.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Split {
    threshold: f32,
    feature: u32,
}

/// Every tree padded to a complete binary tree of the booster's depth, level-ordered.
///
/// A split reads the row widened to `2 * num_features` values: `x[f]` is the feature as it is
/// (NaN stays NaN, and `NaN >= t` is false, so it goes left) and `x[num_features + f]` is the
/// feature with NaN replaced by +inf (which goes right for every threshold). A node whose
/// default is left reads `f`, one whose default is right reads `num_features + f`; for any
/// other value `x >= t` is exactly XGBoost's `!(x < t)`. A leaf above the full depth is
/// padded with splits whose subtrees all end in copies of that leaf.
#[derive(Debug, Clone)]
struct Complete {
    depth: usize,
    /// The same trees for the AVX-512 block walk, when this processor has it.
    #[cfg(target_arch = "x86_64")]
    avx512: Option<avx512::Avx512Trees>,
    /// `2^depth - 1` splits per tree.
    splits: Vec<Split>,
    /// `2^depth` leaf values per tree.
    leaves: Vec<f32>,
}

impl Complete {
    /// Lays out the trees rooted at `roots` in `nodes` as complete trees of `depth` levels.
    fn build(nodes: &[Node], roots: &[u32], depth: usize, num_features: usize) -> Self {
        let internal = (1usize << depth) - 1;
        let mut splits = Vec::with_capacity(roots.len() * internal);
        let mut leaves = Vec::with_capacity(roots.len() * (internal + 1));
        for &root in roots {
            // Level by level: `at[k]` is the original node at complete position k of the level.
            let mut level = vec![root];
            for _ in 0..depth {
                let mut next = Vec::with_capacity(level.len() * 2);
                for &i in &level {
                    let n = &nodes[i as usize];
                    if n.feature == LEAF {
                        // Padding: both subtrees reach this same leaf, whatever the row.
                        splits.push(Split {
                            threshold: f32::INFINITY,
                            feature: 0,
                        });
                        next.extend([i, i]);
                    } else {
                        let feature = if n.default_left {
                            n.feature
                        } else {
                            n.feature + num_features as u32
                        };
                        splits.push(Split {
                            threshold: n.value,
                            feature,
                        });
                        next.extend([n.left, n.right]);
                    }
                }
                level = next;
            }
            for &i in &level {
                let n = &nodes[i as usize];
                debug_assert_eq!(n.feature, LEAF, "depth was measured");
                leaves.push(n.value);
            }
        }
        // The block walk reads the widened row unchecked at these indices.
        assert!(
            num_features > 0
                && splits
                    .iter()
                    .all(|s| (s.feature as usize) < 2 * num_features)
        );
        let mut complete = Complete {
            depth,
            #[cfg(target_arch = "x86_64")]
            avx512: None,
            splits,
            leaves,
        };
        #[cfg(target_arch = "x86_64")]
        {
            complete.avx512 = avx512::Avx512Trees::build(&complete);
        }
        complete
    }
}

/// Writes `row` widened as [`Complete`] expects: as it is, then with NaN replaced by +inf.
#[inline]
fn widen(row: &[f32], out: &mut [f32]) {
    let (as_is, nan_right) = out.split_at_mut(row.len());
    as_is.copy_from_slice(row);
    for (o, &x) in nan_right.iter_mut().zip(row) {
        *o = nan_goes_right(x);
    }
}

/// `x` in the second half of a widened row: a missing value becomes +inf, which goes right.
#[inline]
fn nan_goes_right(x: f32) -> f32 {
    if x.is_nan() {
        f32::INFINITY
    } else {
        x
    }
}

/// A flattened tree ensemble that scores rows without libxgboost.
#[derive(Debug, Clone)]
pub struct Ensemble {
    nodes: Vec<Node>,
    /// Index of each tree's root in `nodes`.
    roots: Vec<u32>,
    /// The fast layout; `None` when the booster is too deep or too wide for it.
    complete: Option<Complete>,
    base_margin: f32,
    num_features: usize,
    /// Every node's cover (XGBoost's `sum_hessian`), indexed like `nodes`, or why there are
    /// none. Only explanations need them; the walk does not.
    covers: Result<Vec<f32>, String>,
    /// Every feature's total gain (the sum of XGBoost's `loss_changes` over the splits on it),
    /// or why the booster has none. Only the model report needs them.
    gains: Result<Vec<f64>, String>,
}

/// One node of a tree as the booster wrote it, with children indexed within its tree
/// (see [`Ensemble::tree_nodes`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TreeNode {
    Split {
        feature: u32,
        /// `x < threshold` goes left.
        threshold: f32,
        /// Where a missing (NaN) value goes.
        default_left: bool,
        left: u32,
        right: u32,
    },
    Leaf {
        value: f32,
    },
}

/// Parses a number that XGBoost may write as a JSON number, a string, or a one-element
/// bracketed string such as `"[3.0000001E-1]"` (XGBoost 3's vector-valued base_score).
fn loose_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok(),
        Value::Array(a) if a.len() == 1 => loose_f64(&a[0]),
        _ => None,
    }
}

fn array<'a>(tree: &'a Value, key: &str) -> Result<&'a Vec<Value>, EnsembleError> {
    tree.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| fmt_err(format!("tree has no array `{key}`")))
}

impl Ensemble {
    /// Compiles an XGBoost JSON model (as written by `Booster::save_buffer(false)`).
    pub fn from_xgboost_json(bytes: &[u8]) -> Result<Self, EnsembleError> {
        let root: Value = serde_json::from_slice(bytes)?;
        let learner = root.get("learner").ok_or_else(|| fmt_err("no `learner`"))?;
        let objective = learner
            .pointer("/objective/name")
            .and_then(Value::as_str)
            .ok_or_else(|| fmt_err("no objective name"))?;
        if objective != "binary:logistic" {
            return Err(fmt_err(format!(
                "objective is {objective}; only binary:logistic is supported"
            )));
        }
        let booster_name = learner
            .pointer("/gradient_booster/name")
            .and_then(Value::as_str);
        if booster_name != Some("gbtree") {
            return Err(fmt_err(format!(
                "booster is {booster_name:?}; only gbtree is supported"
            )));
        }
        let params = learner
            .get("learner_model_param")
            .ok_or_else(|| fmt_err("no learner_model_param"))?;
        let base_score = params
            .get("base_score")
            .and_then(loose_f64)
            .ok_or_else(|| fmt_err("no readable base_score"))?;
        if !(base_score > 0.0 && base_score < 1.0) {
            return Err(fmt_err(format!(
                "base_score {base_score} is not a probability"
            )));
        }
        let declared = params
            .get("num_feature")
            .and_then(loose_f64)
            .ok_or_else(|| fmt_err("no num_feature"))?;
        // Checked before anything is sized by it.
        if !(declared.fract() == 0.0 && (1.0..=MAX_FEATURES as f64).contains(&declared)) {
            return Err(fmt_err(format!(
                "num_feature is {declared}; it must be a whole number from 1 to {MAX_FEATURES}"
            )));
        }
        let num_features = declared as usize;
        // XGBoost turns a probability base_score into a margin with the objective's link, in f32.
        let p = base_score as f32;
        let base_margin = -(1.0f32 / p - 1.0).ln();

        let trees = learner
            .pointer("/gradient_booster/model/trees")
            .and_then(Value::as_array)
            .ok_or_else(|| fmt_err("no trees"))?;
        let mut nodes = Vec::new();
        let mut roots = Vec::with_capacity(trees.len());
        let mut covers = Ok(Vec::new());
        let mut gains = Ok(vec![0.0f64; num_features]);
        for (t, tree) in trees.iter().enumerate() {
            let left = array(tree, "left_children")?;
            let right = array(tree, "right_children")?;
            let split_idx = array(tree, "split_indices")?;
            let cond = array(tree, "split_conditions")?;
            let default_left = array(tree, "default_left")?;
            let n = left.len();
            if [right.len(), split_idx.len(), cond.len(), default_left.len()]
                .iter()
                .any(|&l| l != n)
                || n == 0
            {
                return Err(fmt_err(format!("tree {t} has arrays of unequal length")));
            }
            if let Some(types) = tree.get("split_type").and_then(Value::as_array) {
                if types.iter().any(|v| v.as_i64().unwrap_or(0) != 0) {
                    return Err(fmt_err(format!(
                        "tree {t} has categorical splits, which are not supported"
                    )));
                }
            }
            let offset = nodes.len() as u32;
            roots.push(offset);
            if let Ok(all) = &mut covers {
                match read_covers(tree, n) {
                    Ok(c) => all.extend(c),
                    Err(why) => covers = Err(format!("tree {t}: {why}")),
                }
            }
            if let Ok(total) = &mut gains {
                if let Err(why) = add_gains(tree, left, split_idx, total) {
                    gains = Err(format!("tree {t}: {why}"));
                }
            }
            for i in 0..n {
                let l = left[i].as_i64().ok_or_else(|| fmt_err("bad left child"))?;
                let r = right[i]
                    .as_i64()
                    .ok_or_else(|| fmt_err("bad right child"))?;
                let value =
                    loose_f64(&cond[i]).ok_or_else(|| fmt_err("bad split condition"))? as f32;
                let dl = match &default_left[i] {
                    Value::Bool(b) => *b,
                    v => v.as_i64().unwrap_or(0) != 0,
                };
                if l == -1 {
                    nodes.push(Node {
                        feature: LEAF,
                        value,
                        // Leaves point to themselves so `margins` can walk blocks of
                        // rows without a per-row leaf test.
                        left: offset + i as u32,
                        right: offset + i as u32,
                        default_left: false,
                    });
                    continue;
                }
                let f = split_idx[i]
                    .as_u64()
                    .ok_or_else(|| fmt_err("bad split index"))?;
                let in_range = |c: i64| c > 0 && (c as usize) < n;
                if !in_range(l) || !in_range(r) || f as usize >= num_features {
                    return Err(fmt_err(format!("tree {t} node {i} points out of range")));
                }
                nodes.push(Node {
                    feature: f as u32,
                    value,
                    left: offset + l as u32,
                    right: offset + r as u32,
                    default_left: dl,
                });
            }
        }
        if roots.is_empty() {
            return Err(fmt_err("the booster has no trees"));
        }
        let mut depth = 0;
        for (t, &root) in roots.iter().enumerate() {
            depth = depth.max(tree_depth(&nodes, root).ok_or_else(|| {
                fmt_err(format!("tree {t} is not a tree (a node is reached twice)"))
            })?);
        }
        let complete = (depth <= MAX_COMPLETE_DEPTH
            && (1..=MAX_COMPLETE_FEATURES).contains(&num_features))
        .then(|| Complete::build(&nodes, &roots, depth.max(1), num_features));
        Ok(Ensemble {
            nodes,
            roots,
            complete,
            base_margin,
            num_features,
            covers,
            gains,
        })
    }

    /// Every feature's total gain over all trees (XGBoost's `total_gain` importance: the sum of
    /// the loss reductions of the splits on the feature), or why the booster carries no gains.
    pub fn feature_gains(&self) -> Result<&[f64], &str> {
        match &self.gains {
            Ok(g) => Ok(g),
            Err(why) => Err(why),
        }
    }

    /// The nodes of tree `t` (< [`Self::num_trees`]) in the booster's order, root first.
    pub fn tree_nodes(&self, t: usize) -> impl ExactSizeIterator<Item = TreeNode> + '_ {
        let start = self.roots[t] as usize;
        let end = self
            .roots
            .get(t + 1)
            .map_or(self.nodes.len(), |&r| r as usize);
        self.nodes[start..end].iter().map(move |n| {
            if n.feature == LEAF {
                TreeNode::Leaf { value: n.value }
            } else {
                TreeNode::Split {
                    feature: n.feature,
                    threshold: n.value,
                    default_left: n.default_left,
                    left: n.left - start as u32,
                    right: n.right - start as u32,
                }
            }
        })
    }

    /// The covers (XGBoost's `sum_hessian`) of tree `t`'s nodes, in the order of
    /// [`Self::tree_nodes`], or why the booster has none (older bundles may lack them).
    pub fn tree_covers(&self, t: usize) -> Result<&[f32], &str> {
        let start = self.roots[t] as usize;
        let end = self
            .roots
            .get(t + 1)
            .map_or(self.nodes.len(), |&r| r as usize);
        match &self.covers {
            Ok(c) => Ok(&c[start..end]),
            Err(why) => Err(why),
        }
    }

    /// The base margin (log-odds) every row starts from.
    pub fn base_margin(&self) -> f32 {
        self.base_margin
    }

    /// Depth of the deepest tree (a lone leaf has depth 0).
    pub fn max_depth(&self) -> usize {
        self.roots
            .iter()
            .filter_map(|&r| tree_depth(&self.nodes, r))
            .max()
            .unwrap_or(0)
    }

    /// Whether rows are walked through the complete-tree layout (else node by node).
    pub fn uses_complete_layout(&self) -> bool {
        self.complete.is_some()
    }

    /// Number of input features the trees expect.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// This ensemble walked by the portable code only (to check the AVX-512 walk against).
    #[cfg(test)]
    fn without_avx512(&self) -> Ensemble {
        let mut e = self.clone();
        #[cfg(target_arch = "x86_64")]
        if let Some(c) = &mut e.complete {
            c.avx512 = None;
        }
        e
    }

    /// Number of trees.
    pub fn num_trees(&self) -> usize {
        self.roots.len()
    }

    /// The raw margin (log-odds) of one row of `num_features()` values.
    #[inline]
    pub fn margin(&self, row: &[f32]) -> f32 {
        debug_assert_eq!(row.len(), self.num_features);
        match &self.complete {
            Some(c) => self.margin_complete(c, row),
            None => self.margin_nodes(row),
        }
    }

    /// [`Self::margin`] through the complete layout: groups of trees walked side by side for
    /// the one row, their leaves then added in tree order.
    fn margin_complete(&self, c: &Complete, row: &[f32]) -> f32 {
        let nf = self.num_features;
        let mut wide = [0.0f32; 2 * MAX_COMPLETE_FEATURES];
        widen(row, &mut wide[..2 * nf]);
        // The depth as a constant lets the compiler unroll the levels.
        match c.depth {
            1 => self.margin_depth::<1>(c, &wide),
            2 => self.margin_depth::<2>(c, &wide),
            3 => self.margin_depth::<3>(c, &wide),
            4 => self.margin_depth::<4>(c, &wide),
            5 => self.margin_depth::<5>(c, &wide),
            6 => self.margin_depth::<6>(c, &wide),
            7 => self.margin_depth::<7>(c, &wide),
            8 => self.margin_depth::<8>(c, &wide),
            9 => self.margin_depth::<9>(c, &wide),
            10 => self.margin_depth::<10>(c, &wide),
            d => unreachable!("complete layout built with depth {d}"),
        }
    }

    #[inline]
    fn margin_depth<const D: usize>(
        &self,
        c: &Complete,
        wide: &[f32; 2 * MAX_COMPLETE_FEATURES],
    ) -> f32 {
        let internal = (1usize << D) - 1;
        let trees = self.roots.len();
        assert_eq!(c.depth, D);
        assert_eq!(c.splits.len(), trees * internal);
        let mut sum = self.base_margin;
        let mut t0 = 0;
        while t0 < trees {
            let n = TREE_GROUP.min(trees - t0);
            // Lanes past the last tree repeat it and are not added.
            let first: [usize; TREE_GROUP] =
                std::array::from_fn(|g| (t0 + g.min(n - 1)) * internal);
            let mut idx = [0usize; TREE_GROUP];
            for _ in 0..D {
                for g in 0..TREE_GROUP {
                    debug_assert!(idx[g] < internal);
                    // SAFETY: the tree's splits are first[g]..first[g] + internal, within
                    // c.splits (asserted above), and after k < D levels idx[g] < internal;
                    // features are < 2 * MAX_COMPLETE_FEATURES (checked by the build).
                    let s = unsafe { *c.splits.get_unchecked(first[g] + idx[g]) };
                    let x = unsafe { *wide.get_unchecked(s.feature as usize) };
                    idx[g] = 2 * idx[g] + 1 + usize::from(x >= s.threshold);
                }
            }
            for (g, at) in idx.iter().enumerate().take(n) {
                sum += c.leaves[(t0 + g) * (internal + 1) + at - internal];
            }
            t0 += n;
        }
        sum
    }

    /// [`Self::margin`] node by node: the reference walk, and the fallback for deep boosters.
    fn margin_nodes(&self, row: &[f32]) -> f32 {
        let mut sum = self.base_margin;
        for &root in &self.roots {
            let mut node = &self.nodes[root as usize];
            while node.feature != LEAF {
                let x = row[node.feature as usize];
                let next = if x.is_nan() {
                    if node.default_left {
                        node.left
                    } else {
                        node.right
                    }
                } else if x < node.value {
                    node.left
                } else {
                    node.right
                };
                node = &self.nodes[next as usize];
            }
            sum += node.value;
        }
        sum
    }

    /// Margins of a row-major matrix, one per row. Walks each tree for a block of rows at once,
    /// branch-free, so the rows' loads overlap; the sums add the same leaves in the same order
    /// as [`Self::margin`].
    pub fn margins(&self, matrix: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        self.margins_into(matrix, &mut out);
        out
    }

    /// [`Self::margins`] appended to `out`.
    pub fn margins_into(&self, matrix: &[f32], out: &mut Vec<f32>) {
        let nf = self.num_features;
        let rows = matrix.len() / nf;
        let start = out.len();
        out.resize(start + rows, self.base_margin);
        let sums = &mut out[start..];
        match &self.complete {
            Some(c) => Self::margins_complete(c, nf, matrix, sums),
            None => self.margins_nodes(matrix, sums),
        }
    }

    fn margins_complete(c: &Complete, nf: usize, matrix: &[f32], out: &mut [f32]) {
        // The depth as a constant lets the compiler unroll the levels.
        match c.depth {
            1 => Self::margins_depth::<1>(c, nf, matrix, out),
            2 => Self::margins_depth::<2>(c, nf, matrix, out),
            3 => Self::margins_depth::<3>(c, nf, matrix, out),
            4 => Self::margins_depth::<4>(c, nf, matrix, out),
            5 => Self::margins_depth::<5>(c, nf, matrix, out),
            6 => Self::margins_depth::<6>(c, nf, matrix, out),
            7 => Self::margins_depth::<7>(c, nf, matrix, out),
            8 => Self::margins_depth::<8>(c, nf, matrix, out),
            9 => Self::margins_depth::<9>(c, nf, matrix, out),
            10 => Self::margins_depth::<10>(c, nf, matrix, out),
            d => unreachable!("complete layout built with depth {d}"),
        }
    }

    /// Walks each tree for a block of [`BLOCK`] rows, level by level. The block's widened rows
    /// are kept feature-major (`wide[f * BLOCK + r]`), so that a row's value is found at a
    /// constant offset from its feature's column: the rows' indices stay in registers, and the
    /// loads of the block's rows overlap.
    fn margins_depth<const D: usize>(c: &Complete, nf: usize, matrix: &[f32], out: &mut [f32]) {
        let internal = (1usize << D) - 1;
        assert_eq!(c.depth, D);
        assert_eq!(c.splits.len(), c.leaves.len() / (internal + 1) * internal);
        // Rows past the end of the matrix in the last block stay zero and are not added.
        let mut wide = vec![0.0f32; BLOCK * 2 * nf];
        for (block, sums) in matrix.chunks(BLOCK * nf).zip(out.chunks_mut(BLOCK)) {
            let (as_is, nan_right) = wide.split_at_mut(nf * BLOCK);
            for (f, (column, column_right)) in as_is
                .chunks_exact_mut(BLOCK)
                .zip(nan_right.chunks_exact_mut(BLOCK))
                .enumerate()
            {
                for ((x, x_right), row) in column
                    .iter_mut()
                    .zip(column_right.iter_mut())
                    .zip(block.chunks_exact(nf))
                {
                    *x = row[f];
                    *x_right = nan_goes_right(row[f]);
                }
            }
            let wide = &wide[..];
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = &c.avx512 {
                simd.add_block(wide, sums);
                continue;
            }
            for (splits, leaves) in c
                .splits
                .chunks_exact(internal)
                .zip(c.leaves.chunks_exact(internal + 1))
            {
                let mut idx = [0u32; BLOCK];
                for _ in 0..D {
                    for (r, at) in idx.iter_mut().enumerate() {
                        debug_assert!((*at as usize) < internal);
                        // SAFETY: after k < D levels `at` < 2^(k+1) - 1 <= internal =
                        // splits.len(); `Complete::build` only writes features < 2 * nf, and
                        // r < BLOCK, so the index is < 2 * nf * BLOCK = wide.len().
                        let s = unsafe { *splits.get_unchecked(*at as usize) };
                        let x = unsafe { *wide.get_unchecked(s.feature as usize * BLOCK + r) };
                        *at = 2 * *at + 1 + u32::from(x >= s.threshold);
                    }
                }
                for (sum, at) in sums.iter_mut().zip(&idx) {
                    // After D levels `at` is in internal..=2 * internal: a leaf.
                    *sum += leaves[*at as usize - internal];
                }
            }
        }
    }

    /// Block walk over the node array (leaves point to themselves), for deep boosters.
    fn margins_nodes(&self, matrix: &[f32], out: &mut [f32]) {
        let nf = self.num_features;
        let nodes = &self.nodes[..];
        for (block, sums) in matrix.chunks(BLOCK * nf).zip(out.chunks_mut(BLOCK)) {
            let n = sums.len();
            for &root in &self.roots {
                let mut idx = [root; BLOCK];
                loop {
                    let mut moved = false;
                    for (r, at) in idx.iter_mut().enumerate().take(n) {
                        let node = &nodes[*at as usize];
                        // A leaf (feature LEAF) reads any feature and stays put (self-loop).
                        let x = block[r * nf + (node.feature as usize).min(nf - 1)];
                        let right = (x >= node.value) | (x.is_nan() & !node.default_left);
                        let next = if right { node.right } else { node.left };
                        moved |= next != *at;
                        *at = next;
                    }
                    if !moved {
                        break;
                    }
                }
                for (sum, at) in sums.iter_mut().zip(&idx) {
                    *sum += nodes[*at as usize].value;
                }
            }
        }
    }
}

/// A tree's optional `sum_hessian` array: `n` numbers, or why it cannot be used.
fn read_covers(tree: &Value, n: usize) -> Result<Vec<f32>, String> {
    let Some(v) = tree.get("sum_hessian") else {
        return Err("the booster has no node covers (`sum_hessian`)".into());
    };
    let a = v
        .as_array()
        .filter(|a| a.len() == n)
        .ok_or_else(|| format!("`sum_hessian` is not an array of {n} numbers"))?;
    a.iter()
        .map(|c| loose_f64(c).map(|c| c as f32))
        .collect::<Option<Vec<f32>>>()
        .ok_or_else(|| "`sum_hessian` holds a value that is not a number".into())
}

/// Adds a tree's split gains (`loss_changes`) to `total`, by split feature; leaves carry none.
fn add_gains(
    tree: &Value,
    left: &[Value],
    split_idx: &[Value],
    total: &mut [f64],
) -> Result<(), String> {
    let Some(v) = tree.get("loss_changes") else {
        return Err("the booster has no split gains (`loss_changes`)".into());
    };
    let a = v
        .as_array()
        .filter(|a| a.len() == left.len())
        .ok_or_else(|| format!("`loss_changes` is not an array of {} numbers", left.len()))?;
    for ((gain, l), f) in a.iter().zip(left).zip(split_idx) {
        if l.as_i64() == Some(-1) {
            continue;
        }
        let gain = loose_f64(gain)
            .filter(|g| g.is_finite())
            .ok_or("`loss_changes` holds a value that is not a number")?;
        let slot = f
            .as_u64()
            .and_then(|f| total.get_mut(f as usize))
            .ok_or("a split names a feature out of range")?;
        *slot += gain;
    }
    Ok(())
}

/// Depth of the tree rooted at `root` (a lone leaf has depth 0), or `None` when some node is
/// reached twice (a cycle or shared subtree), which a tree cannot have.
fn tree_depth(nodes: &[Node], root: u32) -> Option<usize> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root, 0usize)];
    let mut depth = 0;
    while let Some((i, d)) = stack.pop() {
        if !seen.insert(i) {
            return None;
        }
        depth = depth.max(d);
        let n = &nodes[i as usize];
        if n.feature != LEAF {
            stack.push((n.left, d + 1));
            stack.push((n.right, d + 1));
        }
    }
    Some(depth)
}

/// The logistic link, in f32 as XGBoost computes it.
#[inline]
pub fn sigmoid(margin: f32) -> f32 {
    1.0 / (1.0 + (-margin).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written model: one stump on feature 0 at 0.5, default right, plus a leaf-only tree.
    const TINY: &str = r#"{"learner":{"objective":{"name":"binary:logistic"},
      "gradient_booster":{"name":"gbtree","model":{"trees":[
        {"left_children":[1,-1,-1],"right_children":[2,-1,-1],"split_indices":[0,0,0],
         "split_conditions":[0.5,-0.25,0.75],"default_left":[0,0,0],"split_type":[0,0,0]},
        {"left_children":[-1],"right_children":[-1],"split_indices":[0],
         "split_conditions":[0.125],"default_left":[false]}]}},
      "learner_model_param":{"base_score":"[5E-1]","num_feature":"2"}}}"#;

    #[test]
    fn walks_trees_like_xgboost() {
        let e = Ensemble::from_xgboost_json(TINY.as_bytes()).unwrap();
        assert_eq!(e.num_trees(), 2);
        assert_eq!(e.margin(&[0.1, 0.0]), -0.25 + 0.125);
        assert_eq!(
            e.margin(&[0.5, 0.0]),
            0.75 + 0.125,
            "equal to the split goes right"
        );
        assert_eq!(
            e.margin(&[f32::NAN, 0.0]),
            0.75 + 0.125,
            "missing follows default"
        );
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn gains_sum_loss_changes_by_split_feature() {
        // TINY has no `loss_changes`: no gains, and the reason.
        let e = Ensemble::from_xgboost_json(TINY.as_bytes()).unwrap();
        assert!(e.feature_gains().unwrap_err().contains("loss_changes"));
        // With them: the root's gain goes to feature 0; the leaves' entries are ignored.
        let with = TINY.replace(
            r#""split_type":[0,0,0]}"#,
            r#""split_type":[0,0,0],"loss_changes":[2.5,9.0,9.0]}"#,
        );
        let with = with.replace(
            r#""default_left":[false]}"#,
            r#""default_left":[false],"loss_changes":[7.0]}"#,
        );
        let e = Ensemble::from_xgboost_json(with.as_bytes()).unwrap();
        assert_eq!(e.feature_gains().unwrap(), &[2.5, 0.0]);
        // The committed model: credit_score (feature 3) gains the most, as XGBoost's own
        // total_gain importance says.
        let bytes = std::fs::read(DEFAULT_BOOSTER).unwrap();
        let g = Ensemble::from_xgboost_json(&bytes).unwrap();
        let g = g.feature_gains().unwrap();
        assert!((g[3] - 1422.006).abs() < 1e-2, "{}", g[3]);
        assert!(g.iter().all(|&x| x <= g[3]));
    }

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const DEFAULT_BOOSTER: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/default/booster.json"
    );

    /// Writes a random tree (as XGBoost's JSON arrays) of depth at most `max_depth`.
    fn random_tree(rng: &mut ChaCha8Rng, nf: usize, max_depth: usize) -> String {
        let (mut l, mut r, mut f, mut c, mut d) = (vec![], vec![], vec![], vec![], vec![]);
        // Breadth-first so that children get increasing indices, as XGBoost writes them.
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize)]);
        let mut next = 1i64;
        let mut rows = Vec::new();
        while let Some((id, depth)) = queue.pop_front() {
            let split = depth < max_depth && (depth == 0 || rng.random_bool(0.8));
            let row = if split {
                let (a, b) = (next, next + 1);
                next += 2;
                queue.push_back((a as usize, depth + 1));
                queue.push_back((b as usize, depth + 1));
                let t = match rng.random_range(0..20) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    2 => 0.0,
                    _ => rng.random_range(-2.0f32..2.0),
                };
                (a, b, rng.random_range(0..nf), t, rng.random_bool(0.5))
            } else {
                (-1, -1, 0, rng.random_range(-0.5f32..0.5), false)
            };
            rows.push((id, row));
        }
        rows.sort_by_key(|(id, _)| *id);
        let num = |x: f32| {
            if x.is_finite() {
                format!("{x:e}")
            } else if x > 0.0 {
                "\"inf\"".into()
            } else {
                "\"-inf\"".into()
            }
        };
        for (_, (a, b, feat, t, dl)) in rows {
            l.push(a.to_string());
            r.push(b.to_string());
            f.push(feat.to_string());
            c.push(num(t));
            d.push(u8::from(dl).to_string());
        }
        format!(
            r#"{{"left_children":[{}],"right_children":[{}],"split_indices":[{}],"split_conditions":[{}],"default_left":[{}]}}"#,
            l.join(","),
            r.join(","),
            f.join(","),
            c.join(","),
            d.join(",")
        )
    }

    fn random_booster(seed: u64, trees: usize, nf: usize, max_depth: usize) -> Ensemble {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let trees: Vec<String> = (0..trees)
            .map(|_| random_tree(&mut rng, nf, max_depth))
            .collect();
        let json = format!(
            r#"{{"learner":{{"objective":{{"name":"binary:logistic"}},
              "gradient_booster":{{"name":"gbtree","model":{{"trees":[{}]}}}},
              "learner_model_param":{{"base_score":"[3E-1]","num_feature":"{nf}"}}}}}}"#,
            trees.join(",")
        );
        Ensemble::from_xgboost_json(json.as_bytes()).unwrap()
    }

    /// Rows whose values often sit exactly on a split threshold, just beside it, or are NaN
    /// or infinite.
    fn tricky_rows(e: &Ensemble, rows: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nf = e.num_features();
        let mut thresholds = vec![Vec::new(); nf];
        for n in e.nodes.iter().filter(|n| n.feature != LEAF) {
            thresholds[n.feature as usize].push(n.value);
        }
        (0..rows * nf)
            .map(|i| {
                let ts = &thresholds[i % nf];
                let t = if ts.is_empty() {
                    0.0
                } else {
                    ts[rng.random_range(0..ts.len())]
                };
                match rng.random_range(0..10) {
                    0 => f32::NAN,
                    1 | 2 => t,
                    3 => t.next_up(),
                    4 => t.next_down(),
                    5 => [f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0][rng.random_range(0..4)],
                    _ => rng.random_range(-3.0f32..3.0),
                }
            })
            .collect()
    }

    /// Every walk gives, bit for bit, the node-by-node reference margin on every row.
    fn assert_walks_agree(e: &Ensemble, matrix: &[f32]) {
        let nf = e.num_features();
        let reference: Vec<u32> = matrix
            .chunks_exact(nf)
            .map(|row| e.margin_nodes(row).to_bits())
            .collect();
        let single: Vec<u32> = matrix
            .chunks_exact(nf)
            .map(|row| e.margin(row).to_bits())
            .collect();
        assert_eq!(single, reference, "margin() differs from the node walk");
        let block: Vec<u32> = e.margins(matrix).iter().map(|m| m.to_bits()).collect();
        assert_eq!(block, reference, "margins() differs from the node walk");
        let mut nodes_only = vec![e.base_margin; reference.len()];
        e.margins_nodes(matrix, &mut nodes_only);
        let nodes_only: Vec<u32> = nodes_only.iter().map(|m| m.to_bits()).collect();
        assert_eq!(nodes_only, reference, "the node block walk differs");
    }

    #[test]
    fn complete_layout_matches_the_node_walk_on_the_default_model() {
        let e = Ensemble::from_xgboost_json(&std::fs::read(DEFAULT_BOOSTER).unwrap()).unwrap();
        assert!(e.uses_complete_layout());
        // 5,003 rows: the last block of margins() is a partial one.
        assert_walks_agree(&e, &tricky_rows(&e, 5_003, 7));
    }

    #[test]
    fn complete_layout_matches_the_node_walk_on_random_boosters() {
        for (seed, trees, nf, depth) in [
            (1, 1, 1, 1),
            (2, 3, 2, 0),
            (3, 13, 5, 3),
            (4, 40, 19, 6),
            (5, 9, 64, 8),
            (6, 17, 7, 10),
        ] {
            let e = random_booster(seed, trees, nf, depth);
            assert!(e.uses_complete_layout());
            assert!(e.max_depth() <= depth);
            assert_walks_agree(&e, &tricky_rows(&e, 1_000, seed));
        }
    }

    #[test]
    fn deep_or_wide_boosters_fall_back_to_the_node_walk() {
        for (seed, nf, depth) in [(8, 4, 14), (9, 65, 4)] {
            let e = random_booster(seed, 5, nf, depth);
            if nf > MAX_COMPLETE_FEATURES || e.max_depth() > MAX_COMPLETE_DEPTH {
                assert!(!e.uses_complete_layout());
            }
            assert_walks_agree(&e, &tricky_rows(&e, 500, seed));
        }
    }

    #[test]
    fn rejects_a_tree_that_reaches_a_node_twice() {
        let cyclic = TINY.replace(
            r#""right_children":[2,-1,-1]"#,
            r#""right_children":[1,-1,-1]"#,
        );
        let err = Ensemble::from_xgboost_json(cyclic.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("reached twice"), "{err}");
    }

    /// The AVX-512 block walk (where this processor has it) gives the portable walk's margins
    /// to the last bit: on generated rows, on rows with missing values, and on rows whose
    /// values sit exactly on thresholds (where `>=` and `<` part).
    #[test]
    fn the_avx512_walk_gives_the_portable_walks_margins() {
        let e = Ensemble::from_xgboost_json(&std::fs::read(DEFAULT_BOOSTER).unwrap()).unwrap();
        let portable = e.without_avx512();
        let nf = e.num_features();
        let bundle = crate::bundle::ModelBundle::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default"
        ))
        .unwrap();
        let data = crate::synthetic::generate(&crate::synthetic::GeneratorParams {
            rows: 3_001,
            seed: 5,
            ..Default::default()
        })
        .unwrap();
        let mut matrix = bundle.preprocessor().transform(&data.rows);
        // Missing values, and values on the thresholds of the first trees' splits.
        let thresholds: Vec<(usize, f32)> = (0..e.num_trees())
            .flat_map(|t| e.tree_nodes(t).collect::<Vec<_>>())
            .filter_map(|n| match n {
                TreeNode::Split {
                    feature, threshold, ..
                } => Some((feature as usize, threshold)),
                TreeNode::Leaf { .. } => None,
            })
            .collect();
        for (r, row) in matrix.chunks_exact_mut(nf).enumerate() {
            match r % 3 {
                0 => row[r % nf] = f32::NAN,
                1 => {
                    let (f, t) = thresholds[r % thresholds.len()];
                    row[f] = t;
                }
                _ => {}
            }
        }
        let fast = e.margins(&matrix);
        let reference = portable.margins(&matrix);
        assert_eq!(fast.len(), reference.len());
        for (r, (a, b)) in fast.iter().zip(&reference).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "row {r}: {a} against {b}");
        }
        // Row by row, as a unary call scores, too.
        for (r, row) in matrix.chunks_exact(nf).enumerate().step_by(7) {
            assert_eq!(e.margin(row).to_bits(), reference[r].to_bits(), "row {r}");
        }
    }

    /// Walk speed, old and new layouts in one process: `cargo test --release --lib
    /// model::ensemble::tests::walk_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark; run by hand in release"]
    fn walk_speed() {
        use std::{hint::black_box, time::Instant};
        let bundle = crate::bundle::ModelBundle::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default"
        ))
        .unwrap();
        let e = Ensemble::from_xgboost_json(&std::fs::read(DEFAULT_BOOSTER).unwrap()).unwrap();
        let data = crate::synthetic::generate(&crate::synthetic::GeneratorParams {
            rows: 16_000,
            seed: 11,
            ..Default::default()
        })
        .unwrap();
        let matrix = bundle.preprocessor().transform(&data.rows);
        let nf = e.num_features();
        let rows = matrix.len() / nf;
        println!(
            "{} trees, max depth {}, {rows} rows",
            e.num_trees(),
            e.max_depth()
        );
        let time = |name: &str, f: &dyn Fn() -> f32| {
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                black_box(f());
                best = best.min(t.elapsed().as_nanos() as f64 / rows as f64);
            }
            println!("{name:<44} {best:8.1} ns/row (best of 7)");
        };
        time("node walk, row by row (old margin)", &|| {
            matrix
                .chunks_exact(nf)
                .map(|r| e.margin_nodes(black_box(r)))
                .sum()
        });
        time("node walk, blocks of 16 (old margins)", &|| {
            let mut out = vec![e.base_margin; rows];
            e.margins_nodes(black_box(&matrix), &mut out);
            out.iter().sum()
        });
        time("complete trees, row by row (new margin)", &|| {
            matrix
                .chunks_exact(nf)
                .map(|r| e.margin(black_box(r)))
                .sum()
        });
        time("complete trees, blocks of 16 (new margins)", &|| {
            e.margins(black_box(&matrix)).iter().sum()
        });
        let portable = e.without_avx512();
        time("complete trees, blocks of 16, portable", &|| {
            portable.margins(black_box(&matrix)).iter().sum()
        });
    }

    #[test]
    fn rejects_models_it_cannot_serve() {
        let other = TINY.replace("binary:logistic", "reg:squarederror");
        assert!(Ensemble::from_xgboost_json(other.as_bytes()).is_err());
        let bad = TINY.replace("[1,-1,-1]", "[7,-1,-1]");
        assert!(Ensemble::from_xgboost_json(bad.as_bytes()).is_err());
        assert!(Ensemble::from_xgboost_json(b"not json").is_err());
    }

    /// Found while writing the fuzz target `bundle_load`, which crashed on this input
    /// (`fuzz/corpus/bundle_load/crash-huge-num-feature`: the flags byte, then the booster up
    /// to the first 0xFF): `num_feature` sized a table before anything checked it, and a
    /// booster declaring 10^18 features aborted the process (a hot reload included).
    #[test]
    fn a_booster_declaring_absurd_feature_counts_is_refused() {
        let found = include_bytes!("../../../fuzz/corpus/bundle_load/crash-huge-num-feature");
        let booster = found[1..].split(|&b| b == 0xff).next().unwrap();
        let err = Ensemble::from_xgboost_json(booster)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_feature is 1000000000000000000"), "{err}");
        for bad in ["0", "-3", "2.5", "NaN", "65537"] {
            let json = TINY.replace(r#""num_feature":"2""#, &format!(r#""num_feature":"{bad}""#));
            let err = Ensemble::from_xgboost_json(json.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("num_feature"), "{bad}: {err}");
        }
    }
}
