//! Evaluation metrics of a binary classifier's probabilities: ROC AUC (rank statistic with
//! average ranks for ties), Gini, KS, Brier score, log loss, and the confusion matrix at a
//! threshold with precision, recall, F1 and accuracy; and the curves the model report draws
//! (ROC, precision–recall with average precision, the KS distributions, calibration bins).

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
    Ok(ks_curve(labels, scores)?.ks)
}

/// The two classes' cumulative score distributions and their largest gap (the KS statistic).
#[derive(Debug, Clone, PartialEq)]
pub struct KsCurve {
    /// `(score, share of negatives at or below it, share of positives at or below it)`, one
    /// point per distinct score, ascending.
    pub points: Vec<(f64, f64, f64)>,
    /// The largest gap between the two shares.
    pub ks: f64,
    /// The score at which the gap is largest (the first such, from below).
    pub at: f64,
}

/// The cumulative distributions of the scores of each class (see [`KsCurve`]).
pub fn ks_curve(labels: &[u8], scores: &[f64]) -> Result<KsCurve> {
    let (pos, neg) = check_both(labels, scores)?;
    let mut out = KsCurve {
        points: Vec::new(),
        ks: 0.0,
        at: f64::NAN,
    };
    let (mut cp, mut cn) = (0usize, 0usize);
    for group in tie_groups(scores, &order(scores)) {
        for &k in group {
            if labels[k] == 1 {
                cp += 1;
            } else {
                cn += 1;
            }
        }
        let (neg_share, pos_share) = (cn as f64 / neg as f64, cp as f64 / pos as f64);
        let score = scores[group[0]];
        let gap = (neg_share - pos_share).abs();
        if gap > out.ks || out.at.is_nan() {
            out.ks = gap;
            out.at = score;
        }
        out.points.push((score, neg_share, pos_share));
    }
    Ok(out)
}

/// Runs of indices of `idx` (sorted by score) whose scores are equal.
fn tie_groups<'a>(scores: &'a [f64], idx: &'a [usize]) -> impl Iterator<Item = &'a [usize]> + 'a {
    idx.chunk_by(move |&a, &b| scores[a] == scores[b])
}

/// The ROC curve: `(false positive rate, true positive rate)` from (0, 0) to (1, 1), one point
/// per distinct score taken as the threshold, highest first; tied scores move together, so the
/// area under it (trapezoids) is [`auc_roc`].
pub fn roc_curve(labels: &[u8], scores: &[f64]) -> Result<Vec<(f64, f64)>> {
    let (pos, neg) = check_both(labels, scores)?;
    let mut idx = order(scores);
    idx.reverse();
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    for group in tie_groups(scores, &idx) {
        let p = group.iter().filter(|&&k| labels[k] == 1).count();
        tp += p;
        fp += group.len() - p;
        out.push((fp as f64 / neg as f64, tp as f64 / pos as f64));
    }
    Ok(out)
}

/// The precision–recall curve and the average precision.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    /// `(recall, precision)`, one point per distinct score taken as the threshold, highest
    /// first, after a first point (0, precision of the highest scores).
    pub points: Vec<(f64, f64)>,
    /// Σ (Rₙ − Rₙ₋₁)·Pₙ over the thresholds (scikit-learn's `average_precision_score`).
    pub average_precision: f64,
}

/// Precision and recall at every threshold, and the average precision.
pub fn pr_curve(labels: &[u8], scores: &[f64]) -> Result<PrCurve> {
    let (pos, _) = check_both(labels, scores)?;
    let mut idx = order(scores);
    idx.reverse();
    let mut points = Vec::new();
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    for group in tie_groups(scores, &idx) {
        tp += group.iter().filter(|&&k| labels[k] == 1).count();
        seen += group.len();
        let (recall, precision) = (tp as f64 / pos as f64, tp as f64 / seen as f64);
        if points.is_empty() {
            points.push((0.0, precision));
        }
        ap += (recall - last_recall) * precision;
        last_recall = recall;
        points.push((recall, precision));
    }
    Ok(PrCurve {
        points,
        average_precision: ap,
    })
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationBin {
    /// The bin is `[lo, hi)` (the last one includes 1).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean predicted probability of the bin's rows.
    pub mean_predicted: f64,
    /// Share of the bin's rows labelled 1.
    pub observed_rate: f64,
}

/// Rows grouped into `bins` equal-width probability bins; empty bins are left out.
pub fn calibration(labels: &[u8], probs: &[f64], bins: usize) -> Result<Vec<CalibrationBin>> {
    check(labels, probs)?;
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&y, &p) in labels.iter().zip(probs) {
        if !p.is_finite() {
            continue;
        }
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += usize::from(y == 1);
    }
    Ok(sums
        .into_iter()
        .enumerate()
        .filter(|(_, (n, _, _))| *n > 0)
        .map(|(b, (n, sum, ones))| CalibrationBin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count: n,
            mean_predicted: sum / n as f64,
            observed_rate: ones as f64 / n as f64,
        })
        .collect())
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
    fn curves_agree_with_the_scalar_metrics() {
        let y = [1, 0, 1, 0, 0, 1, 0, 1];
        let s = [0.9, 0.8, 0.7, 0.7, 0.3, 0.3, 0.2, 0.95];
        let roc = roc_curve(&y, &s).unwrap();
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert_relative_eq!(area, auc_roc(&y, &s).unwrap(), epsilon = 1e-12);
        let k = ks_curve(&y, &s).unwrap();
        assert_relative_eq!(k.ks, ks(&y, &s).unwrap());
        let (_, n, p) = k.points.iter().find(|(sc, _, _)| *sc == k.at).unwrap();
        assert_relative_eq!((n - p).abs(), k.ks);
        // By hand, descending: 0.95 (1), 0.9 (1), 0.8 (0), {0.7: 1, 0}, {0.3: 0, 1}, 0.2 (0).
        // Recall steps of 1/4 at precisions 1, 1, 3/5, 4/7 -> AP = (2 + 3/5 + 4/7) / 4.
        let pr = pr_curve(&y, &s).unwrap();
        assert_relative_eq!(
            pr.average_precision,
            (2.0 + 0.6 + 4.0 / 7.0) / 4.0,
            epsilon = 1e-12
        );
        assert_eq!(pr.points[0], (0.0, 1.0));
        let bins = calibration(&[1, 0, 0, 1], &[0.05, 0.08, 0.95, 1.0], 10).unwrap();
        assert_eq!(bins.len(), 2);
        assert_eq!((bins[0].count, bins[0].observed_rate), (2, 0.5));
        assert_relative_eq!(bins[1].mean_predicted, 0.975);
        assert_relative_eq!(bins[1].hi, 1.0);
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
