//! A compiled, read-only form of an XGBoost `binary:logistic` gbtree booster for serving.
//!
//! The trainer saves the booster in XGBoost's own JSON format; this module reads that JSON and
//! flattens every tree into one array of nodes, then evaluates rows with the same rules as
//! XGBoost's CPU predictor: `f32` features, `x < split` goes left, a missing (NaN) feature follows
//! the node's default direction, leaf values summed in `f32` onto the base margin. The result is
//! checked against libxgboost's own predictions when a bundle is loaded (see `bundle.rs`), so a
//! mismatch can never go unnoticed. It exists because one row through libxgboost's C API costs a
//! DMatrix and a thread-pool round trip, while this walk costs about a microsecond and is `Sync`.

use serde_json::Value;

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

/// A flattened tree ensemble that scores rows without libxgboost.
#[derive(Debug, Clone)]
pub struct Ensemble {
    nodes: Vec<Node>,
    /// Index of each tree's root in `nodes`.
    roots: Vec<u32>,
    base_margin: f32,
    num_features: usize,
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
        let num_features = params
            .get("num_feature")
            .and_then(loose_f64)
            .ok_or_else(|| fmt_err("no num_feature"))? as usize;
        // XGBoost turns a probability base_score into a margin with the objective's link, in f32.
        let p = base_score as f32;
        let base_margin = -(1.0f32 / p - 1.0).ln();

        let trees = learner
            .pointer("/gradient_booster/model/trees")
            .and_then(Value::as_array)
            .ok_or_else(|| fmt_err("no trees"))?;
        let mut nodes = Vec::new();
        let mut roots = Vec::with_capacity(trees.len());
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
        Ok(Ensemble {
            nodes,
            roots,
            base_margin,
            num_features,
        })
    }

    /// Number of input features the trees expect.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// Number of trees.
    pub fn num_trees(&self) -> usize {
        self.roots.len()
    }

    /// The raw margin (log-odds) of one row of `num_features()` values.
    #[inline]
    pub fn margin(&self, row: &[f32]) -> f32 {
        debug_assert_eq!(row.len(), self.num_features);
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
    /// branch-free, so the rows' node loads overlap instead of stalling on mispredicted
    /// branches; the sums add the same leaves in the same order as [`Self::margin`].
    pub fn margins(&self, matrix: &[f32]) -> Vec<f32> {
        const BLOCK: usize = 16;
        let nf = self.num_features;
        let rows = matrix.len() / nf;
        let mut out = vec![self.base_margin; rows];
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
        out
    }
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
    fn rejects_models_it_cannot_serve() {
        let other = TINY.replace("binary:logistic", "reg:squarederror");
        assert!(Ensemble::from_xgboost_json(other.as_bytes()).is_err());
        let bad = TINY.replace("[1,-1,-1]", "[7,-1,-1]");
        assert!(Ensemble::from_xgboost_json(bad.as_bytes()).is_err());
        assert!(Ensemble::from_xgboost_json(b"not json").is_err());
    }
}
