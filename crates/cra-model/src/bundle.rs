//! The model bundle: the directory the trainer writes and the server loads.
//!
//! ```text
//! DIR/booster.json      the booster, in XGBoost's own JSON format
//! DIR/bundle.json       manifest: version, fitted preprocessing, feature schema, thresholds,
//!                       hashes of the booster and the training data, canary rows
//! DIR/metrics.json      test-set metrics written by the trainer
//! DIR/checksums.sha256  SHA-256 of the three files above, as `sha256sum` writes it
//! DIR/reason_codes.json      optional: the reason-code table (checksummed when present)
//! DIR/drift_reference.json   optional: the training distributions drift is measured against
//!                            (checksummed when present; see [`crate::drift`])
//! ```
//!
//! Loading refuses the bundle, with a message naming the directory, the file and what to do,
//! unless every file matches `checksums.sha256`; the manifest is consistent (thresholds in
//! range, the feature schema of this build, at least [`MIN_CANARY_ROWS`] canary rows with one
//! probability each); the booster has this build's feature count; and the compiled
//! [`Ensemble`] reproduces, to 1e-6, the probabilities the booster gave the canary rows at
//! training time. Loading needs no libxgboost: the trainer checked, when it wrote the bundle,
//! that libxgboost and the compiled trees agree on the canaries, and those stored probabilities
//! are what every later load is held to.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    drift::{Binner, DriftReference},
    ensemble::{sigmoid, Ensemble, EnsembleError},
    explain::{Explainer, ReasonCodeTable},
    preprocess::{feature_names, FittedPreprocessor, PreprocessError, NUM_FEATURES},
    shap::TreeShap,
};
use crate::application::Application;

pub const BOOSTER_FILE: &str = "booster.json";
pub const MANIFEST_FILE: &str = "bundle.json";
pub const METRICS_FILE: &str = "metrics.json";
/// SHA-256 of every other file of the bundle, one `HEX  NAME` line each (`sha256sum` format).
pub const CHECKSUMS_FILE: &str = "checksums.sha256";
/// The files [`CHECKSUMS_FILE`] covers, in the order it lists them.
pub const CHECKSUMMED_FILES: [&str; 3] = [BOOSTER_FILE, MANIFEST_FILE, METRICS_FILE];
/// The reason-code table (see [`crate::explain`]); optional: a bundle without it explains with
/// [`ReasonCodeTable::standard`]. When present it must be in the checksum file.
pub const REASON_CODES_FILE: &str = "reason_codes.json";
/// The drift reference (see [`crate::drift`]); optional: a bundle without it loads, and
/// drift is unavailable for it. When present it must be in the checksum file.
pub const DRIFT_REFERENCE_FILE: &str = "drift_reference.json";
/// Files a bundle may have, checksummed when present.
pub const OPTIONAL_FILES: [&str; 2] = [REASON_CODES_FILE, DRIFT_REFERENCE_FILE];
/// Bumped when the layout of `bundle.json` changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// How far a reloaded model's probability may be from the training-time one.
pub const CANARY_TOLERANCE: f64 = 1e-6;
/// The fewest canary rows a bundle may carry; the trainer writes 64.
pub const MIN_CANARY_ROWS: usize = 8;

/// What to do about a bundle whose content is wrong.
const RETRAIN: &str = "retrain the model with `cra train`, or copy the bundle again";

/// Errors loading or saving a bundle. Each names the directory or file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("no model bundle at {dir}: {MANIFEST_FILE} is missing. Train one with `cra train --data FILE.parquet --out {dir}`, or pass --model DIR")]
    NotFound { dir: PathBuf },
    #[error("cannot read {path}: {source}. A bundle is booster.json, bundle.json, metrics.json and checksums.sha256; {RETRAIN}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: {CHECKSUMS_FILE} is missing, so nothing vouches for the bundle's files (a bundle written before checksums were recorded, or half-copied). Retrain the model with `cra train --out {dir}`, or, for a bundle you trust, record its checksums by running `sha256sum booster.json bundle.json metrics.json > checksums.sha256` in {dir}")]
    MissingChecksums { dir: PathBuf },
    #[error("{path} is malformed: {problem}. It must list the SHA-256 of booster.json, bundle.json and metrics.json, one `HEX  NAME` line each, as `sha256sum` writes; {RETRAIN}")]
    BadChecksums { path: PathBuf, problem: String },
    #[error("{dir}: {file} does not match {CHECKSUMS_FILE}: its sha256 is {actual}, the checksum file says {expected}. The bundle was modified or half-copied; {RETRAIN}")]
    Checksum {
        dir: PathBuf,
        file: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{path} is not a valid bundle manifest: {source}; {RETRAIN}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: bundle format {found} is not supported by this build (expects {FORMAT_VERSION}); retrain the model with `cra train`")]
    Format { path: PathBuf, found: u32 },
    #[error("{path} is inconsistent: {}; {RETRAIN}", .problems.join("; "))]
    Invalid {
        path: PathBuf,
        /// Every problem found, each naming the field.
        problems: Vec<String>,
    },
    #[error("{path} is not a usable metrics file: {problem}; {RETRAIN}")]
    Metrics { path: PathBuf, problem: String },
    #[error("{path}: {source}; {RETRAIN}")]
    Booster {
        path: PathBuf,
        source: EnsembleError,
    },
    #[error("{path}: {source}; {RETRAIN}")]
    Preprocess {
        path: PathBuf,
        source: PreprocessError,
    },
    #[error("{path}: the booster expects {found} features; this build produces {NUM_FEATURES}. Retrain the model with this build")]
    Features { path: PathBuf, found: usize },
    #[error("{dir}: canary row {row}: {who} predicts {got:.9}, training time recorded {expected:.9}. This build does not reproduce the model (another XGBoost, or a damaged bundle); retrain the model with this build")]
    Canary {
        dir: PathBuf,
        row: usize,
        who: &'static str,
        got: f64,
        expected: f64,
    },
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

impl Thresholds {
    /// Every problem with these cut-offs: the decision threshold must be a probability strictly
    /// between 0 and 1, and the band limits risk scores with `0 <= low_max <= medium_max <= 100`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let t = self.decision_threshold;
        if !(t > 0.0 && t < 1.0) {
            out.push(format!(
                "thresholds.decision_threshold is {t}, expected a probability in (0, 1)"
            ));
        }
        let (low, medium) = (self.low_max, self.medium_max);
        if !(low.is_finite()
            && medium.is_finite()
            && 0.0 <= low
            && low <= medium
            && medium <= 100.0)
        {
            out.push(format!(
                "thresholds.low_max is {low} and thresholds.medium_max is {medium}, expected 0 <= low_max <= medium_max <= 100"
            ));
        }
        out
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

impl Manifest {
    /// Every inconsistency of the manifest on its own (the booster is checked separately):
    /// thresholds, the feature schema, the model version and the canary rows.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.thresholds.problems();
        if self.model_version != model_version_for(&self.artifact_sha256) {
            out.push(format!(
                "model_version is {:?}, but artifact_sha256 gives {:?}",
                self.model_version,
                model_version_for(&self.artifact_sha256)
            ));
        }
        let expected = feature_specs();
        if self.features != expected {
            let names: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
            out.push(format!(
                "features ({} entries: {names:?}) differ from this build's {NUM_FEATURES}-feature schema",
                self.features.len()
            ));
        }
        let (rows, probabilities) = (self.canary.rows.len(), self.canary.probabilities.len());
        if rows != probabilities {
            out.push(format!(
                "canary has {rows} rows but {probabilities} probabilities; they must pair up"
            ));
        }
        if rows.min(probabilities) < MIN_CANARY_ROWS {
            out.push(format!(
                "canary has {} rows, at least {MIN_CANARY_ROWS} are needed to verify the model",
                rows.min(probabilities)
            ));
        }
        if let Some((i, p)) = self
            .canary
            .probabilities
            .iter()
            .enumerate()
            .find(|(_, p)| !(0.0..=1.0).contains(*p))
        {
            out.push(format!(
                "canary.probabilities[{i}] is {p}, not a probability"
            ));
        }
        out
    }
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
    /// reason_codes.json, or the standard table for a bundle without one.
    pub reason_codes: ReasonCodeTable,
    /// drift_reference.json compiled for binning decisions; `None` for a bundle without one
    /// (drift is then unavailable).
    drift: Option<Binner>,
    /// TreeSHAP tables and the reason codes, built on first use ([`Self::explainer`]).
    explainer: std::sync::OnceLock<std::result::Result<Arc<Explainer>, String>>,
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Content-addressed model version: the same booster always gets the same version.
pub fn model_version_for(artifact_sha256: &str) -> String {
    let prefix: String = artifact_sha256.chars().take(12).collect();
    format!("cra-{prefix}")
}

/// The text of [`CHECKSUMS_FILE`] for the given `(file name, content)` pairs, in `sha256sum`
/// format, so that `sha256sum -c checksums.sha256` in the bundle directory checks it too.
pub fn checksums_text<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    files
        .into_iter()
        .map(|(name, bytes)| format!("{}  {name}\n", sha256_hex(bytes)))
        .collect()
}

/// Writes [`CHECKSUMS_FILE`] for the files already in `dir`. The trainer writes it with the
/// bundle; this is for a bundle whose files are trusted but which has no checksum file yet.
pub fn write_checksums(dir: &Path) -> Result<()> {
    let names: Vec<&str> = CHECKSUMMED_FILES
        .iter()
        .chain(OPTIONAL_FILES.iter().filter(|f| dir.join(f).exists()))
        .copied()
        .collect();
    let contents = names
        .iter()
        .map(|name| read(&dir.join(name)))
        .collect::<Result<Vec<_>>>()?;
    let text = checksums_text(
        names
            .iter()
            .copied()
            .zip(contents.iter().map(Vec::as_slice)),
    );
    let path = dir.join(CHECKSUMS_FILE);
    fs::write(&path, text).map_err(|source| BundleError::Write { path, source })
}

/// Parses [`CHECKSUMS_FILE`]: exactly one well-formed line for each of [`CHECKSUMMED_FILES`].
fn parse_checksums(path: &Path, text: &str) -> Result<BTreeMap<&'static str, String>> {
    let bad = |problem: String| BundleError::BadChecksums {
        path: path.to_owned(),
        problem,
    };
    let mut out = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let n = n + 1;
        // `sha256sum` writes "HEX  NAME" (text mode) or "HEX *NAME" (binary mode).
        let (hex, name) = match (line.get(..64), line.get(64..66), line.get(66..)) {
            (Some(hex), Some("  " | " *"), Some(name)) => (hex, name.trim_end()),
            _ => return Err(bad(format!("line {n} is not `HEX  NAME`"))),
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("line {n}: {hex:?} is not a hex SHA-256")));
        }
        let Some(&file) = CHECKSUMMED_FILES
            .iter()
            .chain(&OPTIONAL_FILES)
            .find(|f| **f == name)
        else {
            return Err(bad(format!(
                "line {n} names {name:?}, which is not a bundle file"
            )));
        };
        if out.insert(file, hex.to_ascii_lowercase()).is_some() {
            return Err(bad(format!("{file} is listed twice")));
        }
    }
    let missing: Vec<&str> = CHECKSUMMED_FILES
        .iter()
        .copied()
        .filter(|f| !out.contains_key(f))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("no checksum for {}", missing.join(", "))));
    }
    Ok(out)
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

/// `metrics.json` as numbers: a JSON object whose non-numeric entries are left out.
fn parse_metrics(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, f64>> {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Metrics {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| v.as_f64().map(|f| (k, f)))
        .collect())
}

/// The bytes of an optional bundle file: `None` when the bundle has none; the file when the
/// checksum file lists it and it matches; a file present but not vouched for is refused.
fn optional_file(
    dir: &Path,
    checksums: &BTreeMap<&'static str, String>,
    file: &'static str,
) -> Result<Option<Vec<u8>>> {
    let path = dir.join(file);
    let Some(expected) = checksums.get(file) else {
        if path.exists() {
            return Err(BundleError::BadChecksums {
                path: dir.join(CHECKSUMS_FILE),
                problem: format!(
                    "{file} is in the bundle but has no checksum; add its line (`sha256sum {file} >> {CHECKSUMS_FILE}` in {}) or remove the file",
                    dir.display()
                ),
            });
        }
        return Ok(None);
    };
    let bytes = read(&path)?;
    let actual = sha256_hex(&bytes);
    if &actual != expected {
        return Err(BundleError::Checksum {
            dir: dir.to_owned(),
            file,
            expected: expected.clone(),
            actual,
        });
    }
    Ok(Some(bytes))
}

/// The reason-code table of a bundle: `reason_codes.json` when the checksum file lists it (it
/// must then match), the standard table when the bundle has none.
fn load_reason_codes(
    dir: &Path,
    checksums: &BTreeMap<&'static str, String>,
) -> Result<ReasonCodeTable> {
    let Some(bytes) = optional_file(dir, checksums, REASON_CODES_FILE)? else {
        return Ok(ReasonCodeTable::standard());
    };
    let path = dir.join(REASON_CODES_FILE);
    let table: ReasonCodeTable =
        serde_json::from_slice(&bytes).map_err(|source| BundleError::Manifest {
            path: path.clone(),
            source,
        })?;
    let problems = table.problems();
    if !problems.is_empty() {
        return Err(BundleError::Invalid { path, problems });
    }
    Ok(table)
}

/// The drift reference of a bundle, compiled: `None` when the bundle has none.
fn load_drift(
    dir: &Path,
    checksums: &BTreeMap<&'static str, String>,
    pre: &FittedPreprocessor,
) -> Result<Option<Binner>> {
    let Some(bytes) = optional_file(dir, checksums, DRIFT_REFERENCE_FILE)? else {
        return Ok(None);
    };
    let path = dir.join(DRIFT_REFERENCE_FILE);
    let reference: DriftReference =
        serde_json::from_slice(&bytes).map_err(|source| BundleError::Manifest {
            path: path.clone(),
            source,
        })?;
    Binner::new(reference, pre)
        .map(Some)
        .map_err(|problem| BundleError::Invalid {
            path,
            problems: vec![problem],
        })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })
}

impl ModelBundle {
    /// Loads and verifies the bundle in `dir`; see the module documentation for the checks.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.exists() {
            return Err(BundleError::NotFound { dir });
        }
        let checksums_path = dir.join(CHECKSUMS_FILE);
        if !checksums_path.exists() {
            return Err(BundleError::MissingChecksums { dir });
        }
        let checksums_text =
            String::from_utf8(read(&checksums_path)?).map_err(|_| BundleError::BadChecksums {
                path: checksums_path.clone(),
                problem: "it is not UTF-8 text".into(),
            })?;
        let checksums = parse_checksums(&checksums_path, &checksums_text)?;
        let mut files = BTreeMap::new();
        for file in CHECKSUMMED_FILES {
            let bytes = read(&dir.join(file))?;
            let actual = sha256_hex(&bytes);
            if actual != checksums[file] {
                return Err(BundleError::Checksum {
                    dir,
                    file,
                    expected: checksums[file].clone(),
                    actual,
                });
            }
            files.insert(file, bytes);
        }
        let (booster_json, metrics_json) = (&files[BOOSTER_FILE], &files[METRICS_FILE]);

        let manifest: Manifest =
            serde_json::from_slice(&files[MANIFEST_FILE]).map_err(|source| {
                BundleError::Manifest {
                    path: manifest_path.clone(),
                    source,
                }
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(BundleError::Format {
                path: manifest_path,
                found: manifest.format_version,
            });
        }
        let mut problems = Vec::new();
        let booster_sha256 = sha256_hex(booster_json);
        if manifest.artifact_sha256 != booster_sha256 {
            problems.push(format!(
                "artifact_sha256 is {}, but {BOOSTER_FILE} has sha256 {booster_sha256}",
                manifest.artifact_sha256
            ));
        }
        problems.extend(manifest.problems());
        if !problems.is_empty() {
            return Err(BundleError::Invalid {
                path: manifest_path,
                problems,
            });
        }
        manifest
            .preprocessor
            .validate()
            .map_err(|source| BundleError::Preprocess {
                path: manifest_path.clone(),
                source,
            })?;
        let booster_path = dir.join(BOOSTER_FILE);
        let ensemble =
            Ensemble::from_xgboost_json(booster_json).map_err(|source| BundleError::Booster {
                path: booster_path.clone(),
                source,
            })?;
        if ensemble.num_features() != NUM_FEATURES {
            return Err(BundleError::Features {
                path: booster_path,
                found: ensemble.num_features(),
            });
        }
        let metrics = parse_metrics(&dir.join(METRICS_FILE), metrics_json)?;
        let reason_codes = load_reason_codes(&dir, &checksums)?;
        let drift = load_drift(&dir, &checksums, &manifest.preprocessor)?;
        let bundle = ModelBundle {
            drift,
            manifest,
            metrics,
            dir,
            ensemble,
            reason_codes,
            explainer: std::sync::OnceLock::new(),
        };
        bundle.verify_canary()?;
        Ok(bundle)
    }

    /// Checks that the compiled trees reproduce the training-time probabilities of the canary
    /// rows ([`Manifest::problems`] has checked that there are enough of them, one probability
    /// per row).
    fn verify_canary(&self) -> Result<()> {
        let canary = &self.manifest.canary;
        let matrix = self.manifest.preprocessor.transform(&canary.rows);
        let native: Vec<f64> = self
            .ensemble
            .margins(&matrix)
            .into_iter()
            .map(|m| sigmoid(m) as f64)
            .collect();
        for (row, (expected, got)) in canary.probabilities.iter().zip(native).enumerate() {
            let off = (got - expected).abs();
            if off.is_nan() || off > CANARY_TOLERANCE {
                return Err(BundleError::Canary {
                    dir: self.dir.clone(),
                    row,
                    who: "the compiled ensemble",
                    got,
                    expected: *expected,
                });
            }
        }
        Ok(())
    }

    pub fn version(&self) -> &str {
        &self.manifest.model_version
    }

    /// The drift reference compiled for binning, or `None`: the bundle has no
    /// `drift_reference.json` and drift is unavailable for it.
    pub fn drift(&self) -> Option<&Binner> {
        self.drift.as_ref()
    }

    /// The explainer of this model (TreeSHAP tables, built once, then shared), or why the
    /// model cannot be explained (a booster without node covers).
    pub fn explainer(&self) -> std::result::Result<&Arc<Explainer>, &str> {
        self.explainer
            .get_or_init(|| {
                TreeShap::new(&self.ensemble)
                    .map(|shap| Arc::new(Explainer::new(shap, self.reason_codes.clone())))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(String::as_str)
    }

    pub fn num_trees(&self) -> usize {
        self.ensemble.num_trees()
    }

    /// Every model feature's total gain over the trees (in feature order), or why the booster
    /// carries no split gains.
    pub fn feature_gains(&self) -> std::result::Result<&[f64], &str> {
        self.ensemble.feature_gains()
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

    /// A copy of the committed default bundle, to damage.
    fn default_copy() -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let dir = tempfile::tempdir().unwrap();
        for f in CHECKSUMMED_FILES
            .iter()
            .chain(&OPTIONAL_FILES)
            .chain([&CHECKSUMS_FILE])
        {
            if src.join(f).exists() {
                fs::copy(src.join(f), dir.path().join(f)).unwrap();
            }
        }
        dir
    }

    #[test]
    fn the_drift_reference_is_checksummed_validated_and_optional() {
        let dir = default_copy();
        let _ = fs::remove_file(dir.path().join(DRIFT_REFERENCE_FILE));
        write_checksums(dir.path()).unwrap();
        let b = ModelBundle::load(dir.path()).unwrap();
        assert!(b.drift().is_none(), "no reference: drift unavailable");
        // A reference of the training rows' kind, present without a checksum: refused.
        let data = crate::synthetic::generate(&Default::default()).unwrap();
        let reference =
            DriftReference::build(b.preprocessor(), &data.rows, &[0.1, 0.5, 0.9]).unwrap();
        let path = dir.path().join(DRIFT_REFERENCE_FILE);
        fs::write(&path, serde_json::to_vec(&reference).unwrap()).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains("drift_reference.json is in the bundle but has no checksum"),
            "{e}"
        );
        write_checksums(dir.path()).unwrap();
        let b = ModelBundle::load(dir.path()).unwrap();
        assert_eq!(b.drift().unwrap().reference(), &reference);
        // Inconsistent: named.
        let mut bad = reference.clone();
        bad.features.pop();
        fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        write_checksums(dir.path()).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains("drift_reference.json is inconsistent") && e.contains("differ from"),
            "{e}"
        );
    }

    #[test]
    fn reason_codes_are_checksummed_validated_and_optional() {
        // Without the file: the standard table.
        let dir = default_copy();
        fs::remove_file(dir.path().join(REASON_CODES_FILE)).unwrap();
        write_checksums(dir.path()).unwrap();
        let b = ModelBundle::load(dir.path()).unwrap();
        assert_eq!(b.reason_codes, ReasonCodeTable::standard());
        // Present but not in the checksum file: refused, with the remedy.
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/reason_codes.json"),
            dir.path().join(REASON_CODES_FILE),
        )
        .unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains("reason_codes.json is in the bundle but has no checksum"),
            "{e}"
        );
        // Changed after its checksum was taken: refused.
        write_checksums(dir.path()).unwrap();
        fs::write(dir.path().join(REASON_CODES_FILE), b"{}").unwrap();
        let e = load_err(dir.path());
        assert!(e.contains("reason_codes.json does not match"), "{e}");
        // A table that leaves a feature out: every problem named.
        let mut t = ReasonCodeTable::standard();
        t.codes.retain(|c| c.code != "R13");
        fs::write(
            dir.path().join(REASON_CODES_FILE),
            serde_json::to_vec(&t).unwrap(),
        )
        .unwrap();
        write_checksums(dir.path()).unwrap();
        let e = load_err(dir.path());
        assert!(e.contains("feature age belongs to no code"), "{e}");
    }

    /// Edits the copy's manifest as JSON and, like an operator who "fixes" the checksums,
    /// records the new hashes, so that only the manifest checks stand in the way.
    fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(MANIFEST_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edit(&mut v);
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        write_checksums(dir).unwrap();
    }

    fn load_err(dir: &Path) -> String {
        match ModelBundle::load(dir) {
            Ok(_) => panic!("the damaged bundle in {} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_committed_checksums_are_what_write_checksums_writes() {
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let dir = default_copy();
        write_checksums(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(CHECKSUMS_FILE)).unwrap(),
            fs::read_to_string(committed.join(CHECKSUMS_FILE)).unwrap()
        );
        ModelBundle::load(dir.path()).unwrap();
    }

    #[test]
    fn an_edited_manifest_fails_its_checksum() {
        let dir = default_copy();
        let path = dir.path().join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"decision_threshold\": 0.5", "\"decision_threshold\": 0.9");
        fs::write(&path, text).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("bundle.json does not match checksums.sha256")
                && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_missing_or_malformed_checksum_file_is_refused_with_the_remedy() {
        let dir = default_copy();
        let sums = dir.path().join(CHECKSUMS_FILE);
        fs::remove_file(&sums).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("checksums.sha256 is missing") && err.contains("sha256sum"),
            "{err}"
        );
        let zeros = "0".repeat(64);
        for (text, problem) in [
            (
                String::new(),
                "no checksum for booster.json, bundle.json, metrics.json",
            ),
            ("abc  booster.json\n".into(), "line 1 is not `HEX  NAME`"),
            (
                format!("{zeros}  other.json\n"),
                "which is not a bundle file",
            ),
            (
                format!("{zeros}  booster.json\n{zeros}  booster.json\n"),
                "booster.json is listed twice",
            ),
        ] {
            fs::write(&sums, &text).unwrap();
            let err = load_err(dir.path());
            assert!(err.contains(problem), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_canary_array_of_the_wrong_length_is_refused_not_a_panic() {
        for (field, delta) in [("probabilities", 1), ("probabilities", -1), ("rows", -1)] {
            let dir = default_copy();
            edit_manifest(dir.path(), |v| {
                let a = v["canary"][field].as_array_mut().unwrap();
                if delta > 0 {
                    a.push(a[0].clone());
                } else {
                    a.pop();
                }
            });
            let err = load_err(dir.path());
            assert!(err.contains("canary has"), "{field} {delta}: {err}");
            assert!(err.contains("they must pair up"), "{field} {delta}: {err}");
        }
    }

    #[test]
    fn too_few_canaries_are_refused() {
        for keep in [0, MIN_CANARY_ROWS - 1] {
            let dir = default_copy();
            edit_manifest(dir.path(), |v| {
                for field in ["rows", "probabilities"] {
                    v["canary"][field].as_array_mut().unwrap().truncate(keep);
                }
            });
            let err = load_err(dir.path());
            assert!(
                err.contains(&format!(
                    "canary has {keep} rows, at least {MIN_CANARY_ROWS}"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn insane_thresholds_features_and_versions_are_each_named() {
        let dir = default_copy();
        edit_manifest(dir.path(), |v| {
            v["thresholds"]["decision_threshold"] = 1.5.into();
            v["thresholds"]["low_max"] = 70.0.into();
            v["features"].as_array_mut().unwrap().pop();
            v["model_version"] = "cra-000000000000".into();
            v["canary"]["probabilities"][3] = 1.25.into();
        });
        let err = load_err(dir.path());
        for problem in [
            "thresholds.decision_threshold is 1.5",
            "thresholds.low_max is 70 and thresholds.medium_max is 60",
            "features (18 entries",
            "model_version is \"cra-000000000000\"",
            "canary.probabilities[3] is 1.25",
            "retrain the model",
        ] {
            assert!(err.contains(problem), "{problem}: {err}");
        }
    }

    #[test]
    fn a_changed_canary_probability_or_a_changed_booster_is_refused() {
        let dir = default_copy();
        edit_manifest(dir.path(), |v| {
            let p = v["canary"]["probabilities"][5].as_f64().unwrap();
            v["canary"]["probabilities"][5] = (p + 1e-3).into();
        });
        let err = load_err(dir.path());
        assert!(err.contains("canary row 5"), "{err}");

        let dir = default_copy();
        let booster = dir.path().join(BOOSTER_FILE);
        let mut bytes = fs::read(&booster).unwrap();
        bytes.push(b' ');
        fs::write(&booster, bytes).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("booster.json does not match"), "{err}");
        // With its checksum "fixed", the manifest's own booster hash still refuses it.
        write_checksums(dir.path()).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("artifact_sha256"), "{err}");
    }

    #[test]
    fn malformed_metrics_are_refused() {
        let dir = default_copy();
        fs::write(dir.path().join(METRICS_FILE), b"[1, 2").unwrap();
        write_checksums(dir.path()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("metrics.json is not a usable metrics file"),
            "{err}"
        );
    }
}
