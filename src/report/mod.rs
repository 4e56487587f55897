//! `cra report`: one self-contained HTML file about a model bundle on labelled rows.
//!
//! The page has the model's facts and key metrics (AUC, Gini, KS, Brier, log loss), the ROC,
//! precision–recall, KS and calibration plots, the score distribution by class, the risk-band
//! and confusion tables at the bundle's thresholds, global importance by gain and by mean
//! |SHAP|, a SHAP summary (beeswarm), dependence plots of the four most important features, and
//! how often each reason code is given among the declines. Every chart is inline SVG drawn with
//! plotters; the page loads nothing from anywhere.
//!
//! [`analyse`] computes everything (metrics from [`crate::training::metrics`], scores from
//! [`ModelBundle::score_many`], contributions and reasons from the bundle's
//! [`cra_model::explain::Explainer`]); [`html::render`] and [`plots`] turn it into the page;
//! [`write_report`] does both and writes the file, and [`run`] is the command.
pub mod html;
pub mod plots;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use cra_model::{
    explain::{Contribution, FeatureValue},
    Application, ModelBundle, RiskLevel, NUM_FEATURES,
};

use crate::training::metrics::{self, CalibrationBin, Evaluation, KsCurve, MetricsError, PrCurve};

/// The report `cra train` writes into the bundle directory, next to `metrics.json`.
pub const REPORT_FILE: &str = "report.html";
/// Rows of the synthetic holdout when no `--data` is given.
pub const SYNTHETIC_ROWS: usize = 20_000;
/// Seed of the synthetic holdout (the committed training data used 42).
pub const SYNTHETIC_SEED: u64 = 314_159;
/// Most rows explained for the importance, beeswarm and dependence plots (TreeSHAP costs about
/// 80 µs a row); an evenly spaced sample when there are more.
pub const MAX_SHAP_ROWS: usize = 2_000;
/// Most of those rows drawn in the beeswarm (one point per feature each) and the dependence
/// plots; all of them count in the mean |SHAP|.
pub const MAX_BEESWARM_ROWS: usize = 1_000;
/// Features drawn in the beeswarm (the most important by mean |SHAP|).
pub const BEESWARM_FEATURES: usize = 12;
/// Most declined rows explained for the reason-code frequencies.
pub const MAX_EXPLAINED_DECLINES: usize = 5_000;
/// Bins of the reliability diagram.
pub const CALIBRATION_BINS: usize = 10;

/// What went wrong, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Model(#[from] cra_model::bundle::BundleError),
    #[error(transparent)]
    Data(#[from] crate::data::parquet::DataError),
    #[error("cannot generate the synthetic holdout: {0}")]
    Generator(#[from] cra_model::synthetic::GeneratorError),
    #[error("cannot evaluate the model on {source_name}: {error}. The report needs labelled rows of both classes (`default` 0 and 1)")]
    Metrics {
        source_name: String,
        error: MetricsError,
    },
    #[error("--out {path} is a directory; pass the path of the HTML file to write, e.g. --out {}", path.join("report.html").display())]
    OutIsDir { path: PathBuf },
    #[error("cannot write the report to {path}: {source}. Pass --out a file in a directory you can write to")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing the {plot} plot: {message}")]
    Plot { plot: &'static str, message: String },
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;

/// The SHAP analysis of a sample of rows.
#[derive(Debug, Clone)]
pub struct ShapSample {
    /// Rows explained (an evenly spaced sample of at most [`MAX_SHAP_ROWS`]).
    pub rows: usize,
    /// Mean |contribution| of each model feature, in feature order (log-odds).
    pub mean_abs: Vec<f64>,
    /// Each explained row's contributions, in feature order.
    pub contributions: Vec<[f64; NUM_FEATURES]>,
    /// Each explained row's feature values (raw: unscaled numbers, category names).
    pub values: Vec<[FeatureValue; NUM_FEATURES]>,
}

/// How often each reason code is given to the declined rows.
#[derive(Debug, Clone)]
pub struct ReasonFrequency {
    /// Declined rows (prediction 1) in the data.
    pub declines: usize,
    /// Of them, the ones explained (all, or an evenly spaced [`MAX_EXPLAINED_DECLINES`]).
    pub explained: usize,
    /// `(code, description, times given)` for every code of the table, in table order.
    pub counts: Vec<(String, String, usize)>,
}

/// One risk band's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub level: RiskLevel,
    /// The band's risk scores, e.g. "30 ≤ score < 60".
    pub range: String,
    pub count: usize,
    pub defaults: usize,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub model_version: String,
    pub num_trees: usize,
    pub trained_at: String,
    pub xgboost_version: String,
    pub training_rows: u64,
    /// The test AUC recorded in `metrics.json` at training time, when there is one.
    pub training_auc: Option<f64>,
    pub thresholds: cra_model::Thresholds,
    /// Where the rows come from, in words.
    pub source: String,
    pub rows: usize,
    pub default_rate: f64,
    pub eval: Evaluation,
    pub labels: Vec<u8>,
    pub probabilities: Vec<f64>,
    pub roc: Vec<(f64, f64)>,
    pub pr: PrCurve,
    pub ks: KsCurve,
    pub calibration: Vec<CalibrationBin>,
    pub bands: Vec<Band>,
    /// Total gain per model feature, or why the booster has none.
    pub gains: std::result::Result<Vec<f64>, String>,
    /// Contributions of a sample, or why the model cannot be explained.
    pub shap: std::result::Result<ShapSample, String>,
    pub reasons: std::result::Result<ReasonFrequency, String>,
    /// The categories of the three categorical features, by code (for the dependence plots).
    pub categories: Vec<Vec<String>>,
}

impl Analysis {
    /// Feature indices by mean |SHAP|, largest first (empty without SHAP).
    pub fn shap_order(&self) -> Vec<usize> {
        match &self.shap {
            Ok(s) => {
                let mut idx: Vec<usize> = (0..NUM_FEATURES).collect();
                idx.sort_by(|&a, &b| s.mean_abs[b].total_cmp(&s.mean_abs[a]));
                idx
            }
            Err(_) => Vec::new(),
        }
    }
}

/// `count` evenly spaced indices of `0..n` (all of them when `n <= count`).
fn spread(n: usize, count: usize) -> Vec<usize> {
    if n <= count {
        (0..n).collect()
    } else {
        (0..count).map(|i| i * n / count).collect()
    }
}

/// Scores and explains `rows` with `bundle` and computes everything the report shows.
pub fn analyse(
    bundle: &ModelBundle,
    rows: &[Application],
    labels: &[u8],
    source: &str,
) -> Result<Analysis> {
    let metrics_err = |error| ReportError::Metrics {
        source_name: source.to_string(),
        error,
    };
    let decisions = bundle.score_many(rows);
    let probs: Vec<f64> = decisions.iter().map(|d| d.probability_default).collect();
    let t = bundle.manifest.thresholds;
    let eval = Evaluation::compute(labels, &probs, t.decision_threshold).map_err(metrics_err)?;
    let roc = metrics::roc_curve(labels, &probs).map_err(metrics_err)?;
    let pr = metrics::pr_curve(labels, &probs).map_err(metrics_err)?;
    let ks = metrics::ks_curve(labels, &probs).map_err(metrics_err)?;
    let calibration =
        metrics::calibration(labels, &probs, CALIBRATION_BINS).map_err(metrics_err)?;

    let bands = [
        (RiskLevel::Low, format!("score < {}", t.low_max)),
        (
            RiskLevel::Medium,
            format!("{} ≤ score < {}", t.low_max, t.medium_max),
        ),
        (RiskLevel::High, format!("score ≥ {}", t.medium_max)),
    ]
    .into_iter()
    .map(|(level, range)| {
        let mut band = Band {
            level,
            range,
            count: 0,
            defaults: 0,
        };
        for (d, &y) in decisions.iter().zip(labels) {
            if d.risk_level == level {
                band.count += 1;
                band.defaults += usize::from(y == 1);
            }
        }
        band
    })
    .collect();

    let (shap, reasons) = match bundle.explainer() {
        Err(why) => (Err(why.to_string()), Err(why.to_string())),
        Ok(explainer) => {
            let pre = bundle.preprocessor();
            let mut scratch = explainer.scratch();
            let sample = spread(rows.len(), MAX_SHAP_ROWS);
            let mut s = ShapSample {
                rows: sample.len(),
                mean_abs: vec![0.0; NUM_FEATURES],
                contributions: Vec::with_capacity(sample.len()),
                values: Vec::with_capacity(sample.len()),
            };
            for &i in &sample {
                let e = explainer.explain(pre, &rows[i], &mut scratch);
                let mut c = [0.0; NUM_FEATURES];
                let mut v = [FeatureValue::Missing; NUM_FEATURES];
                for (
                    f,
                    Contribution {
                        contribution,
                        value,
                        ..
                    },
                ) in e.contributions.iter().enumerate()
                {
                    c[f] = *contribution;
                    v[f] = *value;
                    s.mean_abs[f] += contribution.abs();
                }
                s.contributions.push(c);
                s.values.push(v);
            }
            for m in &mut s.mean_abs {
                *m /= s.rows.max(1) as f64;
            }
            let declined: Vec<usize> = (0..rows.len())
                .filter(|&i| decisions[i].prediction == 1)
                .collect();
            let explained = spread(declined.len(), MAX_EXPLAINED_DECLINES);
            let table = explainer.table();
            let mut counts: Vec<(String, String, usize)> = table
                .codes
                .iter()
                .map(|c| (c.code.clone(), c.description.clone(), 0))
                .collect();
            for &k in &explained {
                let e = explainer.explain(pre, &rows[declined[k]], &mut scratch);
                for r in &e.reasons {
                    if let Some(slot) = counts.iter_mut().find(|(code, _, _)| *code == r.code) {
                        slot.2 += 1;
                    }
                }
            }
            (
                Ok(s),
                Ok(ReasonFrequency {
                    declines: declined.len(),
                    explained: explained.len(),
                    counts,
                }),
            )
        }
    };

    let m = &bundle.manifest;
    Ok(Analysis {
        model_version: m.model_version.clone(),
        num_trees: bundle.num_trees(),
        trained_at: m.trained_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        xgboost_version: m.xgboost_version.clone(),
        training_rows: m.training_rows,
        training_auc: bundle.metrics.get("auc_roc").copied(),
        thresholds: t,
        source: source.to_string(),
        rows: rows.len(),
        default_rate: labels.iter().map(|&l| f64::from(l)).sum::<f64>() / labels.len() as f64,
        eval,
        labels: labels.to_vec(),
        probabilities: probs,
        roc,
        pr,
        ks,
        calibration,
        bands,
        gains: bundle
            .feature_gains()
            .map(<[f64]>::to_vec)
            .map_err(str::to_string),
        shap,
        reasons,
        categories: m
            .preprocessor
            .categorical
            .iter()
            .map(|c| c.categories().to_vec())
            .collect(),
    })
}

/// The report of `bundle` on `rows` and their `labels`, as one HTML page.
pub fn render(
    bundle: &ModelBundle,
    rows: &[Application],
    labels: &[u8],
    source: &str,
) -> Result<String> {
    html::render(&analyse(bundle, rows, labels, source)?)
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub path: PathBuf,
    pub bytes: usize,
    pub rows: usize,
    pub seconds: f64,
}

/// Renders the report of `bundle` on `rows`/`labels` (described by `source`, e.g. "the 300
/// test rows of data/credit_data.parquet") and writes it to `out`, creating its directory.
pub fn write_report(
    bundle: &ModelBundle,
    rows: &[Application],
    labels: &[u8],
    source: &str,
    out: &Path,
) -> Result<ReportSummary> {
    let started = Instant::now();
    check_out(out)?;
    let page = render(bundle, rows, labels, source)?;
    std::fs::write(out, &page).map_err(|source| ReportError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(ReportSummary {
        path: out.to_owned(),
        bytes: page.len(),
        rows: rows.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fails early, before any work, when `out` cannot be the report file.
fn check_out(out: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(ReportError::OutIsDir {
            path: out.to_owned(),
        });
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
            path: out.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// `cra report`: loads the bundle, reads `--data` or generates the synthetic holdout, writes
/// the page.
pub fn run(args: &crate::config::ReportArgs) -> Result<ReportSummary> {
    check_out(&args.out)?;
    let bundle = ModelBundle::load(&args.model)?;
    let (data, source) = match &args.data {
        Some(path) => {
            let data = crate::data::parquet::read_dataset(path)?;
            let source = format!(
                "{} ({} labelled rows)",
                path.display(),
                html::count(data.len() as u64)
            );
            (data, source)
        }
        None => {
            let params = cra_model::synthetic::GeneratorParams {
                rows: args.rows,
                seed: args.seed,
                ..Default::default()
            };
            let data = cra_model::synthetic::generate(&params)?;
            let source = format!(
                "a synthetic holdout: {} rows from CRA's generator with seed {} (no --data given; \
                 the committed training data used seed 42)",
                html::count(data.len() as u64),
                args.seed
            );
            (data, source)
        }
    };
    write_report(&bundle, &data.rows, &data.labels, &source, &args.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_bundle() -> ModelBundle {
        ModelBundle::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")).unwrap()
    }

    fn holdout(rows: usize) -> cra_model::dataset::Dataset {
        cra_model::synthetic::generate(&cra_model::synthetic::GeneratorParams {
            rows,
            seed: 11,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_analysis_adds_up() {
        let bundle = default_bundle();
        let data = holdout(600);
        let a = analyse(&bundle, &data.rows, &data.labels, "test rows").unwrap();
        assert_eq!(a.rows, 600);
        assert_eq!(a.bands.iter().map(|b| b.count).sum::<usize>(), 600);
        let defaults: usize = data.labels.iter().map(|&l| l as usize).sum();
        assert_eq!(a.bands.iter().map(|b| b.defaults).sum::<usize>(), defaults);
        let c = a.eval.confusion_matrix;
        assert_eq!((c.tp + c.fp + c.tn + c.fn_) as usize, 600);
        let r = a.reasons.as_ref().unwrap();
        assert_eq!(r.declines as u64, c.tp + c.fp);
        assert_eq!(r.explained, r.declines);
        // Every decline has at least one reason toward default.
        assert!(r.counts.iter().map(|c| c.2).sum::<usize>() >= r.declines);
        let s = a.shap.as_ref().unwrap();
        assert_eq!(s.rows, 600);
        assert!(s.mean_abs.iter().all(|m| m.is_finite() && *m >= 0.0));
        assert_eq!(a.gains.as_ref().unwrap().len(), NUM_FEATURES);
        assert!(a.eval.auc_roc > 0.8, "{}", a.eval.auc_roc);
    }

    #[test]
    fn one_class_data_is_an_error_that_says_what_is_needed() {
        let bundle = default_bundle();
        let data = holdout(50);
        let ones = vec![1u8; data.len()];
        let e = analyse(&bundle, &data.rows, &ones, "f.parquet")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.parquet") && e.contains("both classes"), "{e}");
    }

    #[test]
    fn an_unwritable_out_is_an_error_not_a_panic() {
        let bundle = default_bundle();
        let data = holdout(50);
        let dir = tempfile::tempdir().unwrap();
        let e = write_report(&bundle, &data.rows, &data.labels, "x", dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = write_report(&bundle, &data.rows, &data.labels, "x", &file.join("r.html"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot write the report"), "{e}");
    }

    #[test]
    fn spread_is_even_and_bounded() {
        assert_eq!(spread(3, 5), [0, 1, 2]);
        assert_eq!(spread(10, 5), [0, 2, 4, 6, 8]);
    }
}
