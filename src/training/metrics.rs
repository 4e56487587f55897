//! Evaluation metrics of a binary classifier's probabilities: ROC AUC (rank statistic with
//! average ranks for ties), Gini, KS, Brier score, log loss, and the confusion matrix at a
//! threshold with precision, recall, F1 and accuracy.

use serde::{Deserialize, Serialize};

/// Errors of metrics that are undefined for the given labels.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("labels and scores differ in length ({labels} vs {scores})")]
    Length { labels: usize, scores: usize },
    #[error("no rows to evaluate")]
    Empty,
    #[error("AUC and KS need both classes; all {n} labels are {class}")]
    OneClass { n: usize, class: u8 },
}

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Probabilities are clipped to [EPS, 1 - EPS] in the log loss.
pub const LOG_LOSS_EPS: f64 = 1e-15;

fn check(labels: &[u8], scores: &[f64]) -> Result<(usize, usize)> {
    if labels.len() != scores.len() {
        return Err(MetricsError::Length {
            labels: labels.len(),
            scores: scores.len(),
        });
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty);
    }
    let pos = labels.iter().filter(|&&l| l == 1).count();
    Ok((pos, labels.len() - pos))
}

fn check_both(labels: &[u8], scores: &[f64]) -> Result<(usize, usize)> {
    let (pos, neg) = check(labels, scores)?;
    if pos == 0 || neg == 0 {
        return Err(MetricsError::OneClass {
            n: labels.len(),
            class: u8::from(pos > 0),
        });
    }
    Ok((pos, neg))
}

/// Indices sorted by score ascending (NaN last), stable.
fn order(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    idx
}

/// Area under the ROC curve by the Mann–Whitney rank statistic; tied scores get their average
/// rank, so a tie between a positive and a negative counts one half.
pub fn auc_roc(labels: &[u8], scores: &[f64]) -> Result<f64> {
    let (pos, neg) = check_both(labels, scores)?;
    let idx = order(scores);
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let avg = (i + j) as f64 / 2.0 + 1.0;
        let pos_in_group = idx[i..=j].iter().filter(|&&k| labels[k] == 1).count();
        rank_sum_pos += avg * pos_in_group as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Ok((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// Gini coefficient, 2·AUC − 1.
pub fn gini(labels: &[u8], scores: &[f64]) -> Result<f64> {
    Ok(2.0 * auc_roc(labels, scores)? - 1.0)
}

/// Kolmogorov–Smirnov statistic: the largest gap between the score distributions of the two
/// classes, max over thresholds of |TPR − FPR|, with tied scores moved across together.
pub fn ks(labels: &[u8], scores: &[f64]) -> Result<f64> {
    let (pos, neg) = check_both(labels, scores)?;
    let idx = order(scores);
    let (mut cp, mut cn, mut best) = (0usize, 0usize, 0.0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            if labels[k] == 1 {
                cp += 1;
            } else {
                cn += 1;
            }
        }
        let gap = (cn as f64 / neg as f64 - cp as f64 / pos as f64).abs();
        best = best.max(gap);
        i = j + 1;
    }
    Ok(best)
}

/// Brier score: mean squared difference between probability and label.
pub fn brier(labels: &[u8], probs: &[f64]) -> Result<f64> {
    check(labels, probs)?;
    let s: f64 = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| (p - y as f64).powi(2))
        .sum();
    Ok(s / labels.len() as f64)
}

/// Mean binary cross-entropy, with probabilities clipped to [`LOG_LOSS_EPS`, 1 − EPS].
pub fn log_loss(labels: &[u8], probs: &[f64]) -> Result<f64> {
    check(labels, probs)?;
    let s: f64 = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            let p = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
            if y == 1 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    Ok(s / labels.len() as f64)
}

/// Counts of predicted (p ≥ threshold) versus actual classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tp: u64,
}

impl Confusion {
    /// Predicts 1 where the probability is at or above `threshold`.
    pub fn at(labels: &[u8], probs: &[f64], threshold: f64) -> Result<Self> {
        check(labels, probs)?;
        let mut c = Confusion {
            tn: 0,
            fp: 0,
            fn_: 0,
            tp: 0,
        };
        for (&y, &p) in labels.iter().zip(probs) {
            match (y == 1, p >= threshold) {
                (false, false) => c.tn += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                (true, true) => c.tp += 1,
            }
        }
        Ok(c)
    }

    fn total(&self) -> u64 {
        self.tn + self.fp + self.fn_ + self.tp
    }

    pub fn accuracy(&self) -> f64 {
        (self.tp + self.tn) as f64 / self.total() as f64
    }

    /// tp / (tp + fp); 0 when nothing is predicted positive (scikit-learn's zero_division=0).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// tp / (tp + fn); 0 when there are no positives.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// All test-set metrics of one model, as written to `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub auc_roc: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub gini: f64,
    pub ks: f64,
    pub brier: f64,
    pub log_loss: f64,
    pub threshold: f64,
    pub confusion_matrix: Confusion,
}

impl Evaluation {
    /// Evaluates probabilities of default against labels at a decision threshold.
    pub fn compute(labels: &[u8], probs: &[f64], threshold: f64) -> Result<Self> {
        let c = Confusion::at(labels, probs, threshold)?;
        let auc = auc_roc(labels, probs)?;
        Ok(Evaluation {
            auc_roc: auc,
            accuracy: c.accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            gini: 2.0 * auc - 1.0,
            ks: ks(labels, probs)?,
            brier: brier(labels, probs)?,
            log_loss: log_loss(labels, probs)?,
            threshold,
            confusion_matrix: c,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn auc_without_ties_counts_ordered_pairs() {
        // Pairs (pos, neg): (0.8,0.1) ok, (0.8,0.4) ok, (0.35,0.1) ok, (0.35,0.4) wrong -> 3/4.
        let y = [0, 0, 1, 1];
        let s = [0.1, 0.4, 0.35, 0.8];
        assert_relative_eq!(auc_roc(&y, &s).unwrap(), 0.75);
        assert_relative_eq!(gini(&y, &s).unwrap(), 0.5);
    }

    #[test]
    fn auc_counts_a_tie_between_classes_as_one_half() {
        // pos {0.5, 0.9}, neg {0.5, 0.2, 0.5}: pairs with 0.9 all won (3); with 0.5: beats
        // 0.2 (1) and ties two 0.5s (0.5 + 0.5) -> (3 + 2) / 6.
        let y = [1, 0, 1, 0, 0];
        let s = [0.5, 0.5, 0.9, 0.2, 0.5];
        assert_relative_eq!(auc_roc(&y, &s).unwrap(), 5.0 / 6.0);
        // All scores equal: AUC exactly one half.
        assert_relative_eq!(auc_roc(&[0, 1, 0, 1], &[0.3; 4]).unwrap(), 0.5);
        // Perfectly inverted.
        assert_relative_eq!(auc_roc(&[1, 0], &[0.1, 0.9]).unwrap(), 0.0);
    }

    #[test]
    fn ks_is_the_largest_cdf_gap() {
        // neg scores 0.1,0.2,0.3 ; pos scores 0.25,0.6,0.7.
        // After 0.2: FPR-side cdf 2/3, pos cdf 0 -> gap 2/3; after 0.3: 1 vs 1/3 -> 2/3.
        let y = [0, 0, 0, 1, 1, 1];
        let s = [0.1, 0.2, 0.3, 0.25, 0.6, 0.7];
        assert_relative_eq!(ks(&y, &s).unwrap(), 2.0 / 3.0);
        // Perfect separation: KS 1. A tie across classes is not split: {0.5,0.5} -> gap 0.
        assert_relative_eq!(ks(&[0, 0, 1, 1], &[0.1, 0.2, 0.8, 0.9]).unwrap(), 1.0);
        assert_relative_eq!(ks(&[0, 1], &[0.5, 0.5]).unwrap(), 0.0);
    }

    #[test]
    fn brier_log_loss_and_confusion_by_hand() {
        let y = [1, 0, 1, 0];
        let p = [0.9, 0.2, 0.4, 0.6];
        // (0.01 + 0.04 + 0.36 + 0.36) / 4
        assert_relative_eq!(brier(&y, &p).unwrap(), 0.1925, epsilon = 1e-12);
        let ll = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln() + 0.4f64.ln()) / 4.0;
        assert_relative_eq!(log_loss(&y, &p).unwrap(), ll, epsilon = 1e-12);
        // Clipping keeps a confident mistake finite: -ln(1e-15) = 34.54.
        assert_relative_eq!(
            log_loss(&[1], &[0.0]).unwrap(),
            34.538776394910684,
            epsilon = 1e-9
        );
        let c = Confusion::at(&y, &p, 0.5).unwrap();
        assert_eq!(
            c,
            Confusion {
                tn: 1,
                fp: 1,
                fn_: 1,
                tp: 1
            }
        );
        assert_relative_eq!(c.accuracy(), 0.5);
        assert_relative_eq!(c.precision(), 0.5);
        assert_relative_eq!(c.recall(), 0.5);
        assert_relative_eq!(c.f1(), 0.5);
        // p == threshold predicts 1.
        assert_eq!(Confusion::at(&[1], &[0.5], 0.5).unwrap().tp, 1);
        let e = Evaluation::compute(&[1, 0, 1, 1, 0], &[0.8, 0.3, 0.6, 0.2, 0.1], 0.5).unwrap();
        // tp 2, fn 1, tn 2, fp 0 -> precision 1, recall 2/3, f1 0.8
        assert_relative_eq!(e.precision, 1.0);
        assert_relative_eq!(e.recall, 2.0 / 3.0);
        assert_relative_eq!(e.f1, 0.8, epsilon = 1e-12);
        assert_relative_eq!(e.accuracy, 0.8);
    }

    #[test]
    fn undefined_metrics_are_errors() {
        assert_eq!(
            auc_roc(&[1, 1], &[0.2, 0.3]),
            Err(MetricsError::OneClass { n: 2, class: 1 })
        );
        assert_eq!(auc_roc(&[], &[]), Err(MetricsError::Empty));
        assert!(matches!(
            brier(&[1], &[0.1, 0.2]),
            Err(MetricsError::Length { .. })
        ));
    }
}
