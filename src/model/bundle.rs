//! The model bundle: the directory the trainer writes and the server loads.
//!
//! ```text
//! DIR/booster.json   the booster, in XGBoost's own JSON format
//! DIR/bundle.json    manifest: version, fitted preprocessing, feature schema, thresholds,
//!                    hashes of the booster and the training data, canary rows
//! DIR/metrics.json   test-set metrics written by the trainer
//! ```
//!
//! Loading checks the booster's hash, the preprocessing, and that both the compiled
//! [`Ensemble`] and libxgboost reproduce, to 1e-6, the probabilities the booster gave the canary
//! rows at training time.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    ensemble::{sigmoid, Ensemble, EnsembleError},
    preprocess::{feature_names, FittedPreprocessor, PreprocessError, NUM_FEATURES},
};
use crate::data::Application;

pub const BOOSTER_FILE: &str = "booster.json";
pub const MANIFEST_FILE: &str = "bundle.json";
pub const METRICS_FILE: &str = "metrics.json";
/// Bumped when the layout of `bundle.json` changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// How far a reloaded model's probability may be from the training-time one.
pub const CANARY_TOLERANCE: f64 = 1e-6;

/// Errors loading or saving a bundle. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("no model bundle at {dir}: {MANIFEST_FILE} is missing. Train one with `cra train --data FILE.parquet --out {dir}`, or pass --model DIR")]
    NotFound { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid bundle manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("bundle format {found} is not supported by this build (expects {FORMAT_VERSION}); retrain the model")]
    Format { found: u32 },
    #[error("{BOOSTER_FILE} does not match the manifest: sha256 {actual}, manifest says {expected}. The bundle was modified or half-copied")]
    Checksum { expected: String, actual: String },
    #[error(transparent)]
    Booster(#[from] EnsembleError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("the booster expects {found} features; this build produces {NUM_FEATURES}")]
    Features { found: usize },
    #[error("canary row {row}: {who} predicts {got:.9}, training time recorded {expected:.9}")]
    Canary {
        row: usize,
        who: &'static str,
        got: f64,
        expected: f64,
    },
    #[error("libxgboost: {0}")]
    Xgboost(String),
}

pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Cut-offs that turn a probability into a decision and a risk band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// prediction = 1 when the probability of default is at or above this.
    pub decision_threshold: f64,
    /// risk_score below this is LOW.
    pub low_max: f64,
    /// risk_score below this (and not LOW) is MEDIUM; from it on, HIGH.
    pub medium_max: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            decision_threshold: 0.5,
            low_max: 30.0,
            medium_max: 60.0,
        }
    }
}

/// Risk band of a risk score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
        }
    }
}

/// One model feature as described to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    /// "numeric", "derived" or "categorical".
    pub kind: String,
    pub transform: String,
    pub nullable: bool,
}

/// Rows whose training-time probabilities are re-checked whenever the bundle is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub rows: Vec<Application>,
    /// Probability of default the booster gave each row at training time.
    pub probabilities: Vec<f64>,
}

/// `bundle.json`: everything about the model except the trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model_version: String,
    pub trained_at: DateTime<Utc>,
    /// XGBoost version that trained the booster, e.g. "3.1.1".
    pub xgboost_version: String,
    /// SHA-256 of `booster.json`.
    pub artifact_sha256: String,
    /// SHA-256 of the training data file.
    pub training_data_sha256: String,
    pub training_rows: u64,
    pub hyperparameters: BTreeMap<String, String>,
    pub thresholds: Thresholds,
    pub features: Vec<FeatureSpec>,
    pub preprocessor: FittedPreprocessor,
    pub canary: Canary,
}

/// The probability and decision for one application.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub margin: f32,
    pub probability_default: f64,
    /// probability × 100, rounded to 2 decimals.
    pub risk_score: f64,
    pub risk_level: RiskLevel,
    pub prediction: u8,
}

/// A loaded, verified model: preprocessing, compiled trees and thresholds. `Sync`, so one
/// instance serves every request.
#[derive(Debug)]
pub struct ModelBundle {
    pub manifest: Manifest,
    /// metrics.json, as numbers (non-numeric entries are left out).
    pub metrics: BTreeMap<String, f64>,
    pub dir: PathBuf,
    ensemble: Ensemble,
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Content-addressed model version: the same booster always gets the same version.
pub fn model_version_for(artifact_sha256: &str) -> String {
    format!("cra-{}", &artifact_sha256[..12])
}

/// The XGBoost version recorded in a JSON model (`"version": [3, 1, 1]`).
pub fn xgboost_version_of(booster_json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(booster_json)
        .ok()
        .and_then(|v| v.get("version").cloned())
        .and_then(|v| serde_json::from_value::<Vec<u32>>(v).ok())
        .map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
        .unwrap_or_else(|| "unknown".into())
}

/// The feature schema of this build.
pub fn feature_specs() -> Vec<FeatureSpec> {
    let nullable = [
        "credit_score",
        "num_credit_lines",
        "credit_utilization",
        "num_late_payments",
        "num_bankruptcies",
        "inquiries_last_6m",
    ];
    feature_names()
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let (kind, transform) = match i {
                0..=13 => ("numeric", "standard_scaler"),
                14 => ("derived", "amortised payment; standard_scaler"),
                15 => (
                    "derived",
                    "monthly_payment / (income / 12); standard_scaler",
                ),
                _ => ("categorical", "ordinal"),
            };
            FeatureSpec {
                name: name.into(),
                kind: kind.into(),
                transform: transform.into(),
                nullable: nullable.contains(&name),
            }
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Predicts probabilities with libxgboost itself for a row-major matrix.
pub fn xgboost_predict(booster_json: &[u8], matrix: &[f32]) -> Result<Vec<f32>> {
    let rows = matrix.len() / NUM_FEATURES;
    let booster =
        xgb::Booster::load_buffer(booster_json).map_err(|e| BundleError::Xgboost(e.to_string()))?;
    let dmat =
        xgb::DMatrix::from_dense(matrix, rows).map_err(|e| BundleError::Xgboost(e.to_string()))?;
    booster
        .predict(&dmat)
        .map_err(|e| BundleError::Xgboost(e.to_string()))
}

impl ModelBundle {
    /// Loads and verifies the bundle in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.exists() {
            return Err(BundleError::NotFound { dir });
        }
        let manifest: Manifest =
            serde_json::from_slice(&read(&manifest_path)?).map_err(|source| {
                BundleError::Manifest {
                    path: manifest_path.clone(),
                    source,
                }
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(BundleError::Format {
                found: manifest.format_version,
            });
        }
        let booster_json = read(&dir.join(BOOSTER_FILE))?;
        let actual = sha256_hex(&booster_json);
        if actual != manifest.artifact_sha256 {
            return Err(BundleError::Checksum {
                expected: manifest.artifact_sha256.clone(),
                actual,
            });
        }
        manifest.preprocessor.validate()?;
        let ensemble = Ensemble::from_xgboost_json(&booster_json)?;
        if ensemble.num_features() != NUM_FEATURES {
            return Err(BundleError::Features {
                found: ensemble.num_features(),
            });
        }
        let metrics = match fs::read(dir.join(METRICS_FILE)) {
            Ok(bytes) => serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&bytes)
                .map(|m| {
                    m.into_iter()
                        .filter_map(|(k, v)| v.as_f64().map(|f| (k, f)))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let bundle = ModelBundle {
            manifest,
            metrics,
            dir,
            ensemble,
        };
        bundle.verify_canary(&booster_json)?;
        Ok(bundle)
    }

    /// Checks that the compiled trees and libxgboost both reproduce the training-time
    /// probabilities of the canary rows.
    fn verify_canary(&self, booster_json: &[u8]) -> Result<()> {
        let canary = &self.manifest.canary;
        if canary.rows.is_empty() {
            return Ok(());
        }
        let matrix = self.manifest.preprocessor.transform(&canary.rows);
        let native: Vec<f64> = self
            .ensemble
            .margins(&matrix)
            .into_iter()
            .map(|m| sigmoid(m) as f64)
            .collect();
        let libxgb = xgboost_predict(booster_json, &matrix)?;
        for (row, expected) in canary.probabilities.iter().enumerate() {
            for (who, got) in [
                ("the compiled ensemble", native[row]),
                ("libxgboost", libxgb[row] as f64),
            ] {
                if (got - expected).abs() > CANARY_TOLERANCE {
                    return Err(BundleError::Canary {
                        row,
                        who,
                        got,
                        expected: *expected,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn version(&self) -> &str {
        &self.manifest.model_version
    }

    pub fn num_trees(&self) -> usize {
        self.ensemble.num_trees()
    }

    pub fn preprocessor(&self) -> &FittedPreprocessor {
        &self.manifest.preprocessor
    }

    /// Scores one application: preprocessing, trees, logistic link and thresholds.
    #[inline]
    pub fn score(&self, a: &Application) -> Decision {
        let mut x = [0.0f32; NUM_FEATURES];
        self.manifest.preprocessor.transform_into(a, &mut x);
        self.decide(self.ensemble.margin(&x))
    }

    /// Scores many applications with one preprocessing pass and one tree pass.
    pub fn score_many(&self, apps: &[Application]) -> Vec<Decision> {
        let matrix = self.manifest.preprocessor.transform(apps);
        self.ensemble
            .margins(&matrix)
            .into_iter()
            .map(|m| self.decide(m))
            .collect()
    }

    /// Turns a margin into a probability and a decision with this bundle's thresholds.
    pub fn decide(&self, margin: f32) -> Decision {
        decide(margin, &self.manifest.thresholds)
    }
}

/// Turns a margin into a probability and a decision with the given thresholds.
pub fn decide(margin: f32, t: &Thresholds) -> Decision {
    let p = sigmoid(margin) as f64;
    let risk_score = (p * 10_000.0).round() / 100.0;
    let risk_level = if risk_score < t.low_max {
        RiskLevel::Low
    } else if risk_score < t.medium_max {
        RiskLevel::Medium
    } else {
        RiskLevel::High
    };
    Decision {
        margin,
        probability_default: p,
        risk_score,
        risk_level,
        prediction: u8::from(p >= t.decision_threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_band_scores_like_the_original() {
        let t = Thresholds::default();
        let at = |p: f64| decide((p / (1.0 - p)).ln() as f32, &t);
        assert_eq!(at(0.2456).risk_level, RiskLevel::Low);
        assert_eq!(at(0.2456).prediction, 0);
        assert_eq!(at(0.45).risk_level, RiskLevel::Medium);
        assert_eq!(at(0.75).risk_level, RiskLevel::High);
        assert_eq!(at(0.75).prediction, 1);
        assert!((at(0.2456).risk_score - 24.56).abs() < 1e-9);
    }

    #[test]
    fn missing_bundle_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelBundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cra train"), "{err}");
    }
}
