//! The trainer: a stratified, seeded train/test split (`split.rs`), preprocessing fitted on the
//! training rows, gradient boosting through libxgboost (`xgb`), test-set evaluation, and the
//! model bundle (`booster.json`, `bundle.json`, `metrics.json`) that the server loads.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{
    metrics::{auc_roc, Evaluation, MetricsError},
    split::{stratified_split, SplitError, SplitMethod},
};
use crate::data::parquet::{read_dataset, DataError, Dataset};
use cra_model::{
    bundle::{
        checksums_text, feature_specs, model_version_for, sha256_hex, xgboost_version_of,
        BundleError, Canary, Manifest, ModelBundle, Thresholds, BOOSTER_FILE, CHECKSUMS_FILE,
        DRIFT_REFERENCE_FILE, FORMAT_VERSION, MANIFEST_FILE, METRICS_FILE, MIN_CANARY_ROWS,
        REASON_CODES_FILE,
    },
    drift::DriftReference,
    explain::ReasonCodeTable,
    preprocess::{FittedPreprocessor, PreprocessError, PreprocessParams, NUM_FEATURES},
    Application,
};

/// Predicts probabilities with libxgboost itself for a row-major matrix (the trainer checks
/// that the compiled trees agree with it on the canaries before it writes a bundle).
pub fn xgboost_predict(booster_json: &[u8], matrix: &[f32]) -> Result<Vec<f32>, TrainError> {
    let rows = matrix.len() / NUM_FEATURES;
    let booster =
        xgb::Booster::load_buffer(booster_json).map_err(|e| TrainError::Xgboost(e.to_string()))?;
    let dmat =
        xgb::DMatrix::from_dense(matrix, rows).map_err(|e| TrainError::Xgboost(e.to_string()))?;
    booster
        .predict(&dmat)
        .map_err(|e| TrainError::Xgboost(e.to_string()))
}

/// Number of test rows whose training-time probabilities go into the bundle as canaries.
pub const CANARY_ROWS: usize = 64;

/// Errors of training. Each says what went wrong and, for operator mistakes, what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("invalid hyper-parameter: {0}")]
    Param(String),
    #[error("cannot split the rows into train and test sets: {0}")]
    Split(#[from] SplitError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("evaluating the model: {0}")]
    Metrics(#[from] MetricsError),
    #[error("libxgboost: {0}")]
    Xgboost(String),
    #[error("only {found} test rows have every numeric field; the bundle needs at least {MIN_CANARY_ROWS} such rows as canaries. Use more rows or a larger test_fraction")]
    TooFewCanaries { found: usize },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bundle just written does not load back: {0}")]
    SelfCheck(#[from] BundleError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

fn xgb_err(e: xgb::XGBError) -> TrainError {
    TrainError::Xgboost(e.to_string())
}

/// Hyper-parameters of one training run; the defaults are the original service's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Boosting rounds (trees).
    pub n_estimators: u32,
    pub max_depth: u32,
    /// Learning rate.
    pub eta: f64,
    /// L1 regularisation on leaf weights.
    pub reg_alpha: f64,
    /// L2 regularisation on leaf weights.
    pub reg_lambda: f64,
    pub seed: u64,
    /// Share of rows held out for testing, per class.
    pub test_fraction: f64,
    /// How the test rows are chosen (scikit-learn's exact split by default).
    pub split: SplitMethod,
    pub tree_method: String,
    /// Stop when validation log loss has not improved for this many rounds.
    pub early_stopping_rounds: Option<u32>,
    /// Share of the training rows held out for early stopping (only with early stopping).
    pub validation_fraction: f64,
    /// libxgboost threads; pinned so that the same data and seed give the same trees.
    pub nthread: u32,
    /// Probability at or above which an application is predicted to default.
    pub decision_threshold: f64,
    /// Show a progress bar (drawn only on a terminal).
    pub progress: bool,
    /// The reason-code table written with the bundle (`--reason-codes FILE`; the standard
    /// table by default).
    pub reason_codes: ReasonCodeTable,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            n_estimators: 100,
            max_depth: 6,
            eta: 0.1,
            reg_alpha: 0.1,
            reg_lambda: 1.0,
            seed: 42,
            test_fraction: 0.3,
            split: SplitMethod::default(),
            tree_method: "hist".into(),
            early_stopping_rounds: None,
            validation_fraction: 0.2,
            nthread: 1,
            decision_threshold: 0.5,
            progress: true,
            reason_codes: ReasonCodeTable::standard(),
        }
    }
}

impl TrainParams {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Param(m));
        let problems = self.reason_codes.problems();
        if !problems.is_empty() {
            return bad(format!("the reason-code table: {}", problems.join("; ")));
        }
        if self.n_estimators == 0 {
            return bad("n_estimators must be at least 1".into());
        }
        if self.max_depth == 0 {
            return bad("max_depth must be at least 1".into());
        }
        if !(self.eta > 0.0 && self.eta <= 1.0) {
            return bad(format!("eta must be in (0, 1], got {}", self.eta));
        }
        if !(self.reg_alpha >= 0.0 && self.reg_lambda >= 0.0) {
            return bad("reg_alpha and reg_lambda must be >= 0".into());
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return bad(format!(
                "test_fraction must be in (0, 1), got {}",
                self.test_fraction
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(format!(
                "validation_fraction must be in (0, 1), got {}",
                self.validation_fraction
            ));
        }
        if self.split == SplitMethod::Sklearn && u32::try_from(self.seed).is_err() {
            return bad(format!(
                "seed must be below 2^32 with the sklearn split (numpy's RandomState), got {}",
                self.seed
            ));
        }
        if !["hist", "approx", "exact"].contains(&self.tree_method.as_str()) {
            return bad(format!(
                "tree_method must be hist, approx or exact, got {}",
                self.tree_method
            ));
        }
        if self.early_stopping_rounds == Some(0) {
            return bad("early_stopping_rounds must be at least 1".into());
        }
        if !(self.decision_threshold > 0.0 && self.decision_threshold < 1.0) {
            return bad("decision_threshold must be in (0, 1)".into());
        }
        Ok(())
    }

    /// The hyper-parameters as recorded in the manifest.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("objective".into(), "binary:logistic".into());
        m.insert("n_estimators".into(), self.n_estimators.to_string());
        m.insert("max_depth".into(), self.max_depth.to_string());
        m.insert("eta".into(), self.eta.to_string());
        m.insert("reg_alpha".into(), self.reg_alpha.to_string());
        m.insert("reg_lambda".into(), self.reg_lambda.to_string());
        m.insert("seed".into(), self.seed.to_string());
        m.insert("test_fraction".into(), self.test_fraction.to_string());
        m.insert("split".into(), self.split.as_str().into());
        m.insert("tree_method".into(), self.tree_method.clone());
        m.insert("nthread".into(), self.nthread.to_string());
        if let Some(r) = self.early_stopping_rounds {
            m.insert("early_stopping_rounds".into(), r.to_string());
            m.insert(
                "validation_fraction".into(),
                self.validation_fraction.to_string(),
            );
        }
        m
    }
}

/// Row counts of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub train: usize,
    pub test: usize,
    pub total: usize,
}

/// `metrics.json`: test-set metrics and facts about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    #[serde(flatten)]
    pub eval: Evaluation,
    /// AUC of the generator's `true_pd` on the same test rows, when the data has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle_auc: Option<f64>,
    pub rows: RowCounts,
    /// Share of defaults in the whole file.
    pub default_rate: f64,
    pub test_default_rate: f64,
    /// Trees in the saved booster (fewer than n_estimators after early stopping).
    pub num_trees: usize,
}

fn pick<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i].clone()).collect()
}

fn dmatrix(pre: &FittedPreprocessor, rows: &[Application], labels: &[u8]) -> Result<xgb::DMatrix> {
    let x = pre.transform(rows);
    let mut d = xgb::DMatrix::from_dense(&x, rows.len()).map_err(xgb_err)?;
    let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    d.set_labels(&y).map_err(xgb_err)?;
    Ok(d)
}

/// A trained model with everything the bundle holds and the training-time test predictions.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    pub booster_json: Vec<u8>,
    pub reason_codes: ReasonCodeTable,
    /// The training rows' feature distributions and the test rows' score distribution.
    pub drift_reference: DriftReference,
    pub manifest: Manifest,
    pub metrics: TrainMetrics,
    pub test_rows: Vec<Application>,
    pub test_labels: Vec<u8>,
    /// Probability of default libxgboost gave each test row at training time.
    pub test_probabilities: Vec<f64>,
}

/// Trains on `data`; `data_sha256` identifies the training file in the manifest.
pub fn train(data: &Dataset, data_sha256: &str, params: &TrainParams) -> Result<TrainedModel> {
    params.validate()?;
    let split = stratified_split(
        params.split,
        &data.labels,
        params.test_fraction,
        params.seed,
    )?;
    let (mut fit_idx, mut val_idx) = (split.train.clone(), Vec::new());
    if params.early_stopping_rounds.is_some() {
        let train_labels = pick(&data.labels, &split.train);
        let inner = stratified_split(
            params.split,
            &train_labels,
            params.validation_fraction,
            params.seed,
        )?;
        fit_idx = pick(&split.train, &inner.train);
        val_idx = pick(&split.train, &inner.test);
    }
    let train_rows = pick(&data.rows, &split.train);
    let pre = PreprocessParams::default().fit(&train_rows)?;

    let fit_labels = pick(&data.labels, &fit_idx);
    let dtrain = dmatrix(&pre, &pick(&data.rows, &fit_idx), &fit_labels)?;
    let dval = if val_idx.is_empty() {
        None
    } else {
        Some(dmatrix(
            &pre,
            &pick(&data.rows, &val_idx),
            &pick(&data.labels, &val_idx),
        )?)
    };
    let test_rows = pick(&data.rows, &split.test);
    let test_labels = pick(&data.labels, &split.test);
    let dtest = dmatrix(&pre, &test_rows, &test_labels)?;

    let mut cached = vec![&dtrain];
    cached.extend(dval.as_ref());
    let mut booster = xgb::Booster::new_with_cached_dmats(
        &xgb::parameters::BoosterParameters::default(),
        &cached,
    )
    .map_err(xgb_err)?;
    // The training default rate as intercept, as XGBoost itself estimates for binary:logistic.
    let base_score = fit_labels.iter().map(|&l| l as f64).sum::<f64>() / fit_labels.len() as f64;
    let settings = [
        ("objective", "binary:logistic".to_string()),
        ("eval_metric", "logloss".to_string()),
        ("base_score", base_score.to_string()),
        ("eta", params.eta.to_string()),
        ("max_depth", params.max_depth.to_string()),
        ("alpha", params.reg_alpha.to_string()),
        ("lambda", params.reg_lambda.to_string()),
        ("tree_method", params.tree_method.clone()),
        ("seed", params.seed.to_string()),
        ("nthread", params.nthread.to_string()),
        ("verbosity", "0".to_string()),
    ];
    for (k, v) in &settings {
        booster.set_param(k, v).map_err(xgb_err)?;
    }

    let bar = if params.progress {
        ProgressBar::with_draw_target(
            Some(u64::from(params.n_estimators)),
            ProgressDrawTarget::stderr(),
        )
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("boosting {bar:40} {pos}/{len} trees {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut best, mut best_loss) = (0usize, f64::INFINITY);
    let mut rounds = 0usize;
    for i in 0..params.n_estimators as i32 {
        booster.update(&dtrain, i).map_err(xgb_err)?;
        rounds = i as usize + 1;
        bar.inc(1);
        if let (Some(patience), Some(dval)) = (params.early_stopping_rounds, dval.as_ref()) {
            let loss = booster
                .evaluate(dval)
                .map_err(xgb_err)?
                .get("logloss")
                .copied()
                .unwrap_or(f32::NAN) as f64;
            bar.set_message(format!("validation logloss {loss:.4}"));
            if loss < best_loss {
                best_loss = loss;
                best = i as usize;
            } else if i as usize - best >= patience as usize {
                break;
            }
        }
    }
    bar.finish_and_clear();
    if params.early_stopping_rounds.is_some() && best + 1 < rounds {
        booster = booster.slice(0, best as i32 + 1).map_err(xgb_err)?;
        booster
            .set_param("nthread", &params.nthread.to_string())
            .map_err(xgb_err)?;
    }
    let num_trees = if params.early_stopping_rounds.is_some() {
        best + 1
    } else {
        rounds
    };

    let test_probabilities: Vec<f64> = booster
        .predict(&dtest)
        .map_err(xgb_err)?
        .into_iter()
        .map(f64::from)
        .collect();
    let booster_json = booster.save_buffer(false).map_err(xgb_err)?;

    let eval = Evaluation::compute(&test_labels, &test_probabilities, params.decision_threshold)?;
    let oracle_auc = match &data.true_pd {
        Some(pd) => {
            let pd_test = pick(pd, &split.test);
            if pd_test.iter().all(|p| p.is_finite()) {
                Some(auc_roc(&test_labels, &pd_test)?)
            } else {
                None
            }
        }
        None => None,
    };
    let metrics = TrainMetrics {
        eval,
        oracle_auc,
        rows: RowCounts {
            train: split.train.len(),
            test: split.test.len(),
            total: data.len(),
        },
        default_rate: data.default_rate(),
        test_default_rate: test_labels.iter().map(|&l| l as f64).sum::<f64>()
            / test_labels.len() as f64,
        num_trees,
    };

    let artifact_sha256 = sha256_hex(&booster_json);
    // Canary rows must survive bundle.json: serde_json writes a NaN as null and cannot read it
    // back into an f64, so they are taken from the complete test rows.
    let canary_idx: Vec<usize> = (0..test_rows.len())
        .filter(|&i| test_rows[i].numerics().iter().all(|v| !v.is_nan()))
        .take(CANARY_ROWS)
        .collect();
    if canary_idx.len() < MIN_CANARY_ROWS {
        return Err(TrainError::TooFewCanaries {
            found: canary_idx.len(),
        });
    }
    // Drift is measured against the training rows' features and the score the model gives
    // rows it has not seen (on its own training rows it is over-confident).
    let drift_reference =
        DriftReference::build(&pre, &train_rows, &test_probabilities).map_err(TrainError::Param)?;
    let thresholds = Thresholds {
        decision_threshold: params.decision_threshold,
        ..Thresholds::default()
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_version: model_version_for(&artifact_sha256),
        trained_at: chrono::Utc::now(),
        xgboost_version: xgboost_version_of(&booster_json),
        artifact_sha256,
        training_data_sha256: data_sha256.to_string(),
        training_rows: split.train.len() as u64,
        hyperparameters: params.to_map(),
        thresholds,
        features: feature_specs(),
        preprocessor: pre,
        canary: Canary {
            rows: pick(&test_rows, &canary_idx),
            probabilities: pick(&test_probabilities, &canary_idx),
        },
    };
    debug_assert_eq!(manifest.features.len(), NUM_FEATURES);
    Ok(TrainedModel {
        reason_codes: params.reason_codes.clone(),
        drift_reference,
        booster_json,
        manifest,
        metrics,
        test_rows,
        test_labels,
        test_probabilities,
    })
}

fn write_file(path: PathBuf, bytes: &[u8]) -> Result<()> {
    fs::write(&path, bytes).map_err(|source| TrainError::Io { path, source })
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("bundle types serialise to JSON");
    s.push(b'\n');
    s
}

impl TrainedModel {
    /// Writes `booster.json`, `metrics.json`, `reason_codes.json`, `drift_reference.json`,
    /// `checksums.sha256` and `bundle.json` into `dir`
    /// (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let metrics = to_json(&self.metrics);
        let manifest = to_json(&self.manifest);
        let reason_codes = to_json(&self.reason_codes);
        let drift_reference = to_json(&self.drift_reference);
        let checksums = checksums_text([
            (BOOSTER_FILE, self.booster_json.as_slice()),
            (MANIFEST_FILE, manifest.as_slice()),
            (METRICS_FILE, metrics.as_slice()),
            (REASON_CODES_FILE, reason_codes.as_slice()),
            (DRIFT_REFERENCE_FILE, drift_reference.as_slice()),
        ]);
        write_file(dir.join(BOOSTER_FILE), &self.booster_json)?;
        write_file(dir.join(METRICS_FILE), &metrics)?;
        write_file(dir.join(REASON_CODES_FILE), &reason_codes)?;
        write_file(dir.join(DRIFT_REFERENCE_FILE), &drift_reference)?;
        write_file(dir.join(CHECKSUMS_FILE), checksums.as_bytes())?;
        // The manifest last: a bundle without it is "not found" rather than half-written.
        write_file(dir.join(MANIFEST_FILE), &manifest)
    }
}

/// What `cra train` did: the verified bundle and the trained model.
#[derive(Debug)]
pub struct TrainReport {
    pub model: TrainedModel,
    pub bundle: ModelBundle,
}

/// Reads `data`, trains, writes the bundle to `out` and loads it back as a self-check.
pub fn train_file(data: &Path, out: &Path, params: &TrainParams) -> Result<TrainReport> {
    let dataset = read_dataset(data)?;
    let bytes = fs::read(data).map_err(|source| DataError::Io {
        path: data.to_owned(),
        source,
    })?;
    let model = train(&dataset, &sha256_hex(&bytes), params)?;
    model.write(out)?;
    let bundle = ModelBundle::load(out)?;
    Ok(TrainReport { model, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_hyper_parameters_are_named() {
        let p = TrainParams {
            eta: 0.0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("eta"));
    }
}
