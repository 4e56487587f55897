//! The drift reference of an existing bundle, from the data it was trained on (`cra train
//! --drift-reference-only`): the same split the trainer made (the manifest records the
//! split method, seed and test fraction), the features of the training rows, and the model's
//! probabilities on the held-out test rows, scored by the bundle's compiled trees. Only
//! `drift_reference.json` and `checksums.sha256` are written: the booster, the manifest and
//! so the model version stay as they are. Needs no libxgboost.
use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use cra_model::{
    bundle::{sha256_hex, write_checksums, DRIFT_REFERENCE_FILE},
    drift::DriftReference,
    ModelBundle,
};

use super::split::{stratified_split, SplitMethod};
use crate::data::parquet::read_dataset;

/// What [`add_reference`] wrote.
#[derive(Debug)]
pub struct ReferenceReport {
    pub bundle: ModelBundle,
    pub feature_rows: usize,
    pub score_rows: usize,
}

/// Computes the drift reference of the bundle in `dir` from `data` (which must be the file it
/// was trained on: its SHA-256 is checked against the manifest), writes it into the bundle,
/// updates the checksums and loads the bundle back.
pub fn add_reference(data: &Path, dir: &Path) -> Result<ReferenceReport> {
    let bundle = ModelBundle::load(dir)?;
    let m = &bundle.manifest;
    let bytes = fs::read(data).with_context(|| format!("reading {}", data.display()))?;
    let sha = sha256_hex(&bytes);
    if sha != m.training_data_sha256 {
        bail!(
            "{} (sha256 {sha}) is not the data {} was trained on (sha256 {}); pass that file with --data",
            data.display(),
            dir.display(),
            m.training_data_sha256
        );
    }
    let dataset = read_dataset(data)?;
    let param = |k: &str| {
        m.hyperparameters.get(k).with_context(|| {
            format!(
                "{}: the manifest records no hyper-parameter {k}, so the training split cannot be reproduced; retrain with `cra train`",
                dir.display()
            )
        })
    };
    let method = match param("split").map(String::as_str) {
        Ok("native") => SplitMethod::Native,
        // Bundles written before the split was recorded used scikit-learn's.
        Ok("sklearn") | Err(_) => SplitMethod::Sklearn,
        Ok(other) => bail!("{}: unknown split method {other:?}", dir.display()),
    };
    let seed: u64 = param("seed")?.parse().context("the manifest's seed")?;
    let fraction: f64 = param("test_fraction")?
        .parse()
        .context("the manifest's test_fraction")?;
    let split = stratified_split(method, &dataset.labels, fraction, seed)?;
    if split.train.len() as u64 != m.training_rows {
        bail!(
            "the split of {} gives {} training rows, the manifest records {}; retrain with `cra train`",
            data.display(),
            split.train.len(),
            m.training_rows
        );
    }
    let train: Vec<_> = split.train.iter().map(|&i| dataset.rows[i]).collect();
    let test: Vec<_> = split.test.iter().map(|&i| dataset.rows[i]).collect();
    let scores: Vec<f64> = bundle
        .score_many(&test)
        .iter()
        .map(|d| d.probability_default)
        .collect();
    let reference = DriftReference::build(bundle.preprocessor(), &train, &scores)
        .map_err(anyhow::Error::msg)?;
    let mut json = serde_json::to_vec_pretty(&reference)?;
    json.push(b'\n');
    let path = dir.join(DRIFT_REFERENCE_FILE);
    fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    write_checksums(dir)?;
    let bundle = ModelBundle::load(dir)?;
    Ok(ReferenceReport {
        bundle,
        feature_rows: train.len(),
        score_rows: test.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
    }

    /// The committed default bundle without its reference gets it back, byte for byte, and
    /// the booster and manifest stay as they were.
    #[test]
    fn the_committed_reference_is_what_the_training_data_gives() {
        let dir = crate::test_support::default_bundle_without_drift_reference();
        let r = add_reference(&repo("data/credit_data.parquet"), dir.path()).unwrap();
        assert_eq!((r.feature_rows, r.score_rows), (700, 300));
        for f in [
            DRIFT_REFERENCE_FILE,
            "checksums.sha256",
            "bundle.json",
            "booster.json",
        ] {
            assert_eq!(
                fs::read(dir.path().join(f)).unwrap(),
                fs::read(repo("models/default").join(f)).unwrap(),
                "{f}"
            );
        }
    }

    #[test]
    fn other_data_than_the_training_file_is_refused() {
        let dir = crate::test_support::default_bundle_without_drift_reference();
        let other = dir.path().join("other.parquet");
        let data = cra_model::synthetic::generate(&cra_model::synthetic::GeneratorParams {
            rows: 100,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        crate::data::parquet::write_parquet(&data, &other).unwrap();
        let e = add_reference(&other, dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not the data") && e.contains("--data"), "{e}");
        assert!(!dir.path().join(DRIFT_REFERENCE_FILE).exists());
    }
}
