//! Drift: how far the applications a model scores have moved from the data it was trained on,
//! measured by the population stability index (PSI) of the score and of each model feature.
//!
//! - [`DriftReference`] (the bundle's `drift_reference.json`, written by `cra train`): the
//!   training distribution of every model feature and of the score. A numeric feature (the 14
//!   numeric inputs and the 2 derived ones, computed by the same
//!   [`FittedPreprocessor::derived`] the model uses) has the interior decile cut points of its
//!   training values (ties collapsed, so a feature with few distinct values has fewer bins),
//!   the share of rows in each bin, and the share missing. A categorical feature has the share
//!   of each category, the share of an "other" bin (a value the reference does not list) and
//!   the share missing. The score is binned on deciles of `probability_default`.
//! - [`Binner`]: the reference compiled for scoring time; it maps an application and its
//!   probability to one bin index per tracked column ([`NUM_TRACKED`]: the score, then the
//!   model features in [`feature_names`] order) without allocating.
//! - [`BinCounts`]: per-bin counts of some decisions (a live window, or rows read back from the
//!   decision log), and their PSI against the reference.
//!
//! PSI is `Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ)` over the bins, `eᵢ` the expected (reference) share and
//! `aᵢ` the actual share of bin `i`. An empty bin would make the logarithm infinite, so a share
//! of exactly 0, expected or actual, is replaced by [`EPSILON`] (1e-4) before the sum; a bin
//! empty on both sides then adds nothing. Bands ([`Band`]): below 0.1 stable, 0.1 to 0.25
//! moderate, above 0.25 significant.

use serde::{Deserialize, Serialize};

use crate::{
    application::{
        Application, EmploymentStatus, HomeOwnership, LoanPurpose, CATEGORICAL_INPUTS, DERIVED,
        NUMERIC_INPUTS,
    },
    preprocess::{feature_names, FittedPreprocessor, NUM_FEATURES},
};

/// The share put in place of an empty bin's 0 (expected or actual) in [`psi`].
pub const EPSILON: f64 = 1e-4;
/// Columns tracked per decision: the score, then the [`NUM_FEATURES`] model features.
pub const NUM_TRACKED: usize = NUM_FEATURES + 1;
/// Bumped when the layout of `drift_reference.json` changes incompatibly.
pub const DRIFT_FORMAT_VERSION: u32 = 1;
/// The name of the score column in reports.
pub const SCORE: &str = "score";
/// Numeric columns: the numeric inputs then the derived features.
const NUM_NUMERIC: usize = NUMERIC_INPUTS.len() + DERIVED.len();
/// Most bins of one column (bin indices are `u8`).
const MAX_BINS: usize = 255;

/// Stability band of a PSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    /// PSI below 0.1.
    Stable,
    /// PSI from 0.1 to 0.25.
    Moderate,
    /// PSI above 0.25.
    Significant,
}

impl Band {
    pub fn of(psi: f64) -> Band {
        if psi < 0.1 {
            Band::Stable
        } else if psi <= 0.25 {
            Band::Moderate
        } else {
            Band::Significant
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Stable => "stable",
            Band::Moderate => "moderate",
            Band::Significant => "significant",
        }
    }
}

/// PSI of actual bin counts against expected shares (same length; see the module
/// documentation for the formula and [`EPSILON`]). NaN when there are no actual rows.
pub fn psi(expected: &[f64], actual_counts: &[u64]) -> f64 {
    debug_assert_eq!(expected.len(), actual_counts.len());
    let total: u64 = actual_counts.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let or_eps = |s: f64| if s == 0.0 { EPSILON } else { s };
    expected
        .iter()
        .zip(actual_counts)
        .map(|(&e, &n)| {
            let (e, a) = (or_eps(e), or_eps(n as f64 / total as f64));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// The distribution of a numeric column: `edges` are the interior cut points (strictly
/// increasing); bin `i` holds the values `x` with `edges[i-1] <= x < edges[i]`, so there are
/// `edges.len() + 1` bins of values, whose shares are `shares`, plus the missing values
/// (`missing`). Shares are of all rows: `Σ shares + missing = 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericReference {
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
    pub missing: f64,
}

/// The distribution of a categorical column: the share of each of `categories`, of any other
/// value (`other`) and of missing values; `Σ shares + other + missing = 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalReference {
    pub categories: Vec<String>,
    pub shares: Vec<f64>,
    pub other: f64,
    pub missing: f64,
}

/// A model feature's reference distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Distribution {
    Numeric(NumericReference),
    Categorical(CategoricalReference),
}

impl Distribution {
    /// Expected shares of every bin, in bin order (missing last).
    fn expected(&self) -> Vec<f64> {
        match self {
            Distribution::Numeric(n) => n.expected(),
            Distribution::Categorical(c) => {
                let mut v = c.shares.clone();
                v.push(c.other);
                v.push(c.missing);
                v
            }
        }
    }
}

impl NumericReference {
    fn expected(&self) -> Vec<f64> {
        let mut v = self.shares.clone();
        v.push(self.missing);
        v
    }

    /// Decile cut points of `values` (NaN: missing), their shares and the share missing.
    fn fit(values: &[f64]) -> NumericReference {
        let mut present: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        present.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::with_capacity(9);
        if let Some(&min) = present.first() {
            for k in 1..10 {
                let e = present[k * present.len() / 10];
                // Ties collapse; a cut at the minimum would leave its lower bin always empty.
                if e.is_finite() && e > min && edges.last().is_none_or(|l| e > *l) {
                    edges.push(e);
                }
            }
        }
        let mut counts = vec![0u64; edges.len() + 2];
        for v in values {
            counts[numeric_bin(&edges, *v)] += 1;
        }
        let n = values.len().max(1) as f64;
        let mut shares: Vec<f64> = counts.iter().map(|c| *c as f64 / n).collect();
        let missing = shares.pop().unwrap_or(0.0);
        NumericReference {
            edges,
            shares,
            missing,
        }
    }

    fn problems(&self, name: &str, out: &mut Vec<String>) {
        if !self.edges.iter().all(|e| e.is_finite()) || self.edges.windows(2).any(|w| w[0] >= w[1])
        {
            out.push(format!(
                "{name}: edges must be finite and strictly increasing"
            ));
        }
        if self.edges.len() + 2 > MAX_BINS {
            out.push(format!(
                "{name}: {} edges, at most {}",
                self.edges.len(),
                MAX_BINS - 2
            ));
        }
        if self.shares.len() != self.edges.len() + 1 {
            out.push(format!(
                "{name}: {} edges need {} shares, found {}",
                self.edges.len(),
                self.edges.len() + 1,
                self.shares.len()
            ));
        }
        check_shares(name, &self.expected(), out);
    }
}

/// The bin of a numeric value: the number of edges at or below it; missing (NaN) is the last.
#[inline]
fn numeric_bin(edges: &[f64], v: f64) -> usize {
    if v.is_nan() {
        edges.len() + 1
    } else {
        edges.partition_point(|e| *e <= v)
    }
}

fn check_shares(name: &str, shares: &[f64], out: &mut Vec<String>) {
    let sum: f64 = shares.iter().sum();
    if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (sum - 1.0).abs() > 1e-6 {
        out.push(format!(
            "{name}: shares must be in [0, 1] and add up to 1 (they add up to {sum})"
        ));
    }
}

/// The contract's values of the categorical input at `index` of [`CATEGORICAL_INPUTS`].
fn contract_values(index: usize) -> Vec<&'static str> {
    match index {
        0 => EmploymentStatus::names(),
        1 => HomeOwnership::names(),
        _ => LoanPurpose::names(),
    }
}

/// One model feature's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    pub name: String,
    #[serde(flatten)]
    pub distribution: Distribution,
}

/// `drift_reference.json`: the training distribution of the score and of every model feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    pub format_version: u32,
    /// The rows the feature distributions were taken from (the training rows).
    pub feature_rows: u64,
    /// The rows the score distribution was taken from: the held-out test rows, scored by the
    /// model (its probabilities on its own training rows are over-confident, so they would
    /// not describe live traffic).
    pub score_rows: u64,
    /// Deciles of `probability_default`.
    pub score: NumericReference,
    /// The model features, in [`feature_names`] order.
    pub features: Vec<FeatureReference>,
}

impl DriftReference {
    /// The reference of training rows `rows` (features) and of the model's probabilities on
    /// held-out rows `scores`, with the derived features computed by `pre`.
    pub fn build(
        pre: &FittedPreprocessor,
        rows: &[Application],
        scores: &[f64],
    ) -> Result<DriftReference, String> {
        if rows.is_empty() || scores.is_empty() {
            return Err(format!(
                "a drift reference needs rows and scores, got {} rows and {} scores",
                rows.len(),
                scores.len()
            ));
        }
        let mut columns: Vec<Vec<f64>> = (0..NUM_NUMERIC)
            .map(|_| Vec::with_capacity(rows.len()))
            .collect();
        for a in rows {
            for (c, v) in columns.iter_mut().zip(numeric_values(pre, a)) {
                c.push(v);
            }
        }
        let names = feature_names();
        let mut features: Vec<FeatureReference> = columns
            .iter()
            .zip(&names)
            .map(|(values, name)| FeatureReference {
                name: name.to_string(),
                distribution: Distribution::Numeric(NumericReference::fit(values)),
            })
            .collect();
        let n = rows.len() as f64;
        for (j, name) in CATEGORICAL_INPUTS.iter().enumerate() {
            let values = contract_values(j);
            let mut counts = vec![0u64; values.len() + 1];
            for a in rows {
                match a.category_codes()[j] {
                    Some(i) => counts[i] += 1,
                    None => counts[values.len()] += 1,
                }
            }
            let mut shares: Vec<f64> = counts.iter().map(|c| *c as f64 / n).collect();
            let missing = shares.pop().unwrap_or(0.0);
            features.push(FeatureReference {
                name: name.to_string(),
                distribution: Distribution::Categorical(CategoricalReference {
                    categories: values.iter().map(|v| v.to_string()).collect(),
                    shares,
                    other: 0.0,
                    missing,
                }),
            });
        }
        let reference = DriftReference {
            format_version: DRIFT_FORMAT_VERSION,
            feature_rows: rows.len() as u64,
            score_rows: scores.len() as u64,
            score: NumericReference::fit(scores),
            features,
        };
        debug_assert!(
            reference.problems().is_empty(),
            "{:?}",
            reference.problems()
        );
        Ok(reference)
    }

    /// Every inconsistency: the format, the features of this build in order with their kinds,
    /// edges and shares.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.format_version != DRIFT_FORMAT_VERSION {
            out.push(format!(
                "format_version is {}, this build reads {DRIFT_FORMAT_VERSION}",
                self.format_version
            ));
        }
        self.score.problems(SCORE, &mut out);
        let names = feature_names();
        let got: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
        if got != names {
            out.push(format!(
                "features {got:?} differ from this build's {names:?}"
            ));
        }
        for (i, f) in self.features.iter().enumerate() {
            match (&f.distribution, i < NUM_NUMERIC) {
                (Distribution::Numeric(n), true) => n.problems(&f.name, &mut out),
                (Distribution::Categorical(c), false) => {
                    if c.shares.len() != c.categories.len() {
                        out.push(format!(
                            "{}: {} categories need as many shares, found {}",
                            f.name,
                            c.categories.len(),
                            c.shares.len()
                        ));
                    }
                    if c.categories.len() + 2 > MAX_BINS {
                        out.push(format!("{}: too many categories", f.name));
                    }
                    check_shares(&f.name, &f.distribution.expected(), &mut out);
                }
                _ => out.push(format!("{}: wrong kind of distribution", f.name)),
            }
        }
        out
    }
}

/// The 14 numeric inputs then the 2 derived features of `a`, unscaled.
#[inline]
fn numeric_values(pre: &FittedPreprocessor, a: &Application) -> [f64; NUM_NUMERIC] {
    let mut out = [0.0; NUM_NUMERIC];
    out[..NUMERIC_INPUTS.len()].copy_from_slice(&a.numerics());
    let (mp, pti) = pre.derived(a);
    out[NUMERIC_INPUTS.len()] = mp;
    out[NUMERIC_INPUTS.len() + 1] = pti;
    out
}

/// How one tracked column is binned.
#[derive(Debug, Clone)]
enum Column {
    Numeric(Vec<f64>),
    /// The bin of each contract value (domain enum order); missing is `missing`.
    Categorical {
        bins: Vec<u8>,
        missing: u8,
    },
}

/// One bin index per tracked column: the score, then the model features.
pub type Bins = [u8; NUM_TRACKED];

/// A [`DriftReference`] compiled for binning decisions: the score then the features.
#[derive(Debug, Clone)]
pub struct Binner {
    reference: DriftReference,
    pre: FittedPreprocessor,
    columns: Vec<Column>,
    /// Where each column's bins start in a flat count vector; `offsets[NUM_TRACKED]` is the
    /// total.
    offsets: Vec<usize>,
    /// Expected shares of every bin, flat.
    expected: Vec<f64>,
    names: Vec<&'static str>,
}

impl Binner {
    /// Compiles a reference (which must have no [`DriftReference::problems`]) for a model whose
    /// preprocessing is `pre` (its derived features).
    pub fn new(reference: DriftReference, pre: &FittedPreprocessor) -> Result<Binner, String> {
        let problems = reference.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let mut columns = vec![Column::Numeric(reference.score.edges.clone())];
        let mut expected = reference.score.expected();
        let mut offsets = vec![0, expected.len()];
        for (j, f) in reference.features.iter().enumerate() {
            match &f.distribution {
                Distribution::Numeric(n) => columns.push(Column::Numeric(n.edges.clone())),
                Distribution::Categorical(c) => {
                    let other = c.categories.len() as u8;
                    let bins = contract_values(j - NUM_NUMERIC)
                        .iter()
                        .map(|v| {
                            c.categories
                                .iter()
                                .position(|c| c == v)
                                .map_or(other, |i| i as u8)
                        })
                        .collect();
                    columns.push(Column::Categorical {
                        bins,
                        missing: other + 1,
                    });
                }
            }
            expected.extend(f.distribution.expected());
            offsets.push(expected.len());
        }
        Ok(Binner {
            reference,
            pre: pre.clone(),
            columns,
            offsets,
            expected,
            names: std::iter::once(SCORE).chain(feature_names()).collect(),
        })
    }

    pub fn reference(&self) -> &DriftReference {
        &self.reference
    }

    /// The tracked columns' names: `score`, then the model features.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Bins in all tracked columns together (the length of a [`BinCounts`]).
    pub fn total_bins(&self) -> usize {
        self.offsets[NUM_TRACKED]
    }

    /// Column `c`'s bins in a flat count vector.
    pub fn range(&self, c: usize) -> std::ops::Range<usize> {
        self.offsets[c]..self.offsets[c + 1]
    }

    /// Column `c`'s expected shares.
    pub fn expected(&self, c: usize) -> &[f64] {
        &self.expected[self.range(c)]
    }

    /// The bins of an application scored `probability_default`.
    #[inline]
    pub fn bins(&self, a: &Application, probability_default: f64, out: &mut Bins) {
        let numeric = numeric_values(&self.pre, a);
        let codes = a.category_codes();
        out[0] = self.numeric(0, probability_default);
        for (j, v) in numeric.iter().enumerate() {
            out[1 + j] = self.numeric(1 + j, *v);
        }
        for (k, code) in codes.iter().enumerate() {
            let c = 1 + NUM_NUMERIC + k;
            out[c] = match &self.columns[c] {
                Column::Categorical { bins, missing } => match code {
                    Some(i) => bins.get(*i).copied().unwrap_or(*missing - 1),
                    None => *missing,
                },
                Column::Numeric(_) => unreachable!("categorical columns come last"),
            };
        }
    }

    #[inline]
    fn numeric(&self, c: usize, v: f64) -> u8 {
        match &self.columns[c] {
            Column::Numeric(edges) => numeric_bin(edges, v) as u8,
            Column::Categorical { .. } => unreachable!("numeric columns come first"),
        }
    }

    /// A label for each bin of column `c`: `< a`, `[a, b)`, `>= b` and `missing` for a numeric
    /// column; the categories, `other` and `missing` for a categorical one.
    pub fn bin_labels(&self, c: usize) -> Vec<String> {
        let numeric = |edges: &[f64]| {
            let mut out = Vec::with_capacity(edges.len() + 2);
            for (i, e) in edges.iter().enumerate() {
                out.push(match i {
                    0 => format!("< {e}"),
                    _ => format!("[{}, {e})", edges[i - 1]),
                });
            }
            out.push(match edges.last() {
                Some(e) => format!(">= {e}"),
                None => "all".to_string(),
            });
            out.push("missing".to_string());
            out
        };
        if c == 0 {
            return numeric(&self.reference.score.edges);
        }
        match &self.reference.features[c - 1].distribution {
            Distribution::Numeric(n) => numeric(&n.edges),
            Distribution::Categorical(k) => k
                .categories
                .iter()
                .cloned()
                .chain(["other".to_string(), "missing".to_string()])
                .collect(),
        }
    }

    /// Empty counts for this binner.
    pub fn counts(&self) -> BinCounts {
        BinCounts {
            counts: vec![0; self.total_bins()],
            rows: 0,
        }
    }
}

/// Per-bin counts of some decisions, flat as the [`Binner`] lays them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinCounts {
    pub counts: Vec<u64>,
    pub rows: u64,
}

/// PSI of every tracked column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftPsi {
    pub rows: u64,
    pub score_psi: f64,
    /// The model features in order, with their PSI.
    pub features: Vec<(&'static str, f64)>,
}

impl BinCounts {
    /// Counts one decision's bins.
    #[inline]
    pub fn add(&mut self, binner: &Binner, bins: &Bins) {
        for (c, b) in bins.iter().enumerate() {
            self.counts[binner.offsets[c] + *b as usize] += 1;
        }
        self.rows += 1;
    }

    /// Takes back one decision's bins (counted before with [`Self::add`]).
    #[inline]
    pub fn remove(&mut self, binner: &Binner, bins: &Bins) {
        for (c, b) in bins.iter().enumerate() {
            self.counts[binner.offsets[c] + *b as usize] -= 1;
        }
        self.rows -= 1;
    }

    /// Column `c`'s counts.
    pub fn column(&self, binner: &Binner, c: usize) -> &[u64] {
        &self.counts[binner.range(c)]
    }

    /// The PSI of the score and of each feature against the reference.
    pub fn psi(&self, binner: &Binner) -> DriftPsi {
        let of = |c: usize| psi(binner.expected(c), self.column(binner, c));
        DriftPsi {
            rows: self.rows,
            score_psi: of(0),
            features: (1..NUM_TRACKED).map(|c| (binner.names[c], of(c))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::PreprocessParams;

    /// Three bins, the last empty on the actual side:
    ///
    /// | bin | expected e | actual a (counts 6, 4, 0 of 10) | (a − e)·ln(a/e) |
    /// |---|---|---|---|
    /// | 0 | 0.5 | 0.6 | 0.1 · ln 1.2 = 0.0182322 |
    /// | 1 | 0.3 | 0.4 | 0.1 · ln(4/3) = 0.0287682 |
    /// | 2 | 0.2 | 0 → ε = 1e-4 | (1e-4 − 0.2) · ln(1e-4 / 0.2) = −0.1999 · −7.6009025 = 1.5194204 |
    ///
    /// PSI = 0.0182322 + 0.0287682 + 1.5194204 = 1.5664208.
    #[test]
    fn psi_matches_the_hand_computation_with_an_empty_bin() {
        let got = psi(&[0.5, 0.3, 0.2], &[6, 4, 0]);
        let by_hand =
            0.1 * 1.2f64.ln() + 0.1 * (4.0f64 / 3.0).ln() + (1e-4 - 0.2) * (1e-4f64 / 0.2).ln();
        assert!((got - by_hand).abs() < 1e-12, "{got} vs {by_hand}");
        assert!((got - 1.5664208).abs() < 1e-6, "{got}");
        // A bin empty on both sides adds nothing; identical distributions give 0.
        assert_eq!(psi(&[0.5, 0.5, 0.0], &[5, 5, 0]), 0.0);
        // An expected-empty bin that fills: (0.5 − 1e-4) · ln(0.5 / 1e-4) for it.
        let got = psi(&[1.0, 0.0], &[1, 1]);
        let by_hand = (0.5 - 1.0) * 0.5f64.ln() + (0.5 - 1e-4) * (0.5f64 / 1e-4).ln();
        assert!((got - by_hand).abs() < 1e-12, "{got} vs {by_hand}");
        assert!(psi(&[1.0], &[0]).is_nan(), "no rows, no PSI");
    }

    #[test]
    fn bands_follow_the_thresholds() {
        assert_eq!(Band::of(0.0), Band::Stable);
        assert_eq!(Band::of(0.0999), Band::Stable);
        assert_eq!(Band::of(0.1), Band::Moderate);
        assert_eq!(Band::of(0.25), Band::Moderate);
        assert_eq!(Band::of(0.2501), Band::Significant);
        assert_eq!(Band::of(3.0), Band::Significant);
    }

    #[test]
    fn decile_edges_collapse_ties_and_bin_left_closed() {
        // 1..=100: the cut points are the 11th, 21st, ... values.
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let r = NumericReference::fit(&values);
        assert_eq!(
            r.edges,
            [11.0, 21.0, 31.0, 41.0, 51.0, 61.0, 71.0, 81.0, 91.0]
        );
        assert!(r.shares.iter().all(|s| (s - 0.1).abs() < 1e-12));
        assert_eq!(r.missing, 0.0);
        assert_eq!(numeric_bin(&r.edges, 10.999), 0);
        assert_eq!(numeric_bin(&r.edges, 11.0), 1);
        assert_eq!(numeric_bin(&r.edges, 1e9), 9);
        assert_eq!(numeric_bin(&r.edges, f64::NAN), 10);
        // Mostly zeros, a few ones and twos, two missing: the cut at the minimum is dropped.
        let mut values = vec![0.0; 14];
        values.extend([1.0, 1.0, 2.0, 2.0, f64::NAN, f64::NAN]);
        let r = NumericReference::fit(&values);
        assert_eq!(r.edges, [1.0, 2.0]);
        assert_eq!(r.shares, [0.7, 0.1, 0.1]);
        assert_eq!(r.missing, 0.1);
    }

    #[test]
    fn a_reference_bins_the_training_rows_into_its_own_shares() {
        let data = crate::synthetic::generate(&crate::synthetic::GeneratorParams {
            rows: 2_000,
            ..Default::default()
        })
        .unwrap();
        let pre = PreprocessParams::default().fit(&data.rows).unwrap();
        let scores: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let reference = DriftReference::build(&pre, &data.rows, &scores).unwrap();
        assert!(reference.problems().is_empty());
        let json = serde_json::to_string(&reference).unwrap();
        let back: DriftReference = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reference);
        let binner = Binner::new(back, &pre).unwrap();
        let mut counts = binner.counts();
        let mut bins = [0u8; NUM_TRACKED];
        for (a, p) in data.rows.iter().zip(scores.iter().cycle()) {
            binner.bins(a, *p, &mut bins);
            counts.add(&binner, &bins);
        }
        let psi = counts.psi(&binner);
        assert_eq!(psi.rows, 2_000);
        for (name, v) in &psi.features {
            assert!(v.abs() < 1e-9, "{name}: {v}");
        }
        // Income halved moves income and payment_to_income, nothing else among the features.
        let mut shifted = binner.counts();
        for (a, p) in data.rows.iter().zip(&scores) {
            let mut a = *a;
            a.income = (a.income / 2.0).round();
            binner.bins(&a, *p, &mut bins);
            shifted.add(&binner, &bins);
        }
        for (name, v) in shifted.psi(&binner).features {
            let moved = name == "income" || name == "payment_to_income";
            assert_eq!(v > 0.25, moved, "{name}: {v}");
        }
        // Taking the rows back out leaves nothing.
        for (a, p) in data.rows.iter().zip(&scores) {
            let mut a = *a;
            a.income = (a.income / 2.0).round();
            binner.bins(&a, *p, &mut bins);
            shifted.remove(&binner, &bins);
        }
        assert_eq!(shifted, binner.counts());
    }

    #[test]
    fn problems_are_named() {
        let data = crate::synthetic::generate(&Default::default()).unwrap();
        let pre = PreprocessParams::default().fit(&data.rows).unwrap();
        let mut r = DriftReference::build(&pre, &data.rows, &[0.1, 0.2, 0.3]).unwrap();
        r.features.swap(0, 1);
        r.score.shares[0] += 0.5;
        let p = r.problems().join("; ");
        assert!(p.contains("differ from this build's"), "{p}");
        assert!(
            p.contains("score: shares must be in [0, 1] and add up to 1"),
            "{p}"
        );
        assert!(Binner::new(r, &pre).is_err());
    }
}
