//! The model-bundle loader (`ModelBundle::load`): the files of a bundle directory written into
//! a scratch directory and loaded as `cra serve` loads a model (checksums, manifest, feature
//! schema, preprocessing, the booster compiled into trees, reason codes, the canary rows);
//! a bundle that loads is then used as the server uses it: scoring one row and many, and
//! explaining.
//!
//! Input: one flags byte, then the files separated by 0xFF bytes (which no UTF-8 text holds):
//! `booster.json`, `bundle.json`, `metrics.json`, and optionally `reason_codes.json` (an empty
//! part: no such file) and `checksums.sha256`. The flags make the manifest agree with the
//! booster as the trainer would write it, so that changes to the booster reach the compiled
//! trees and the canary check instead of stopping at a hash:
//! - bit 0: `artifact_sha256` and `model_version` of the booster given;
//! - bit 1: the canary probabilities the booster given computes (when it compiles);
//! - bit 2: `checksums.sha256` as given (the fifth part), not the one the trainer writes.
#![no_main]

use std::{fs, path::Path, sync::OnceLock};

use cra_model::{
    bundle::{self, checksums_text, sha256_hex, Manifest},
    ensemble::{sigmoid, Ensemble},
    Application, ModelBundle, NUM_FEATURES,
};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

/// The manifest as the trainer would have written it for `booster` (see the flags).
fn agreeing(manifest: &[u8], booster: &[u8], flags: u8) -> Vec<u8> {
    let Ok(mut m) = serde_json::from_slice::<Manifest>(manifest) else {
        return manifest.to_vec();
    };
    if flags & 1 != 0 {
        m.artifact_sha256 = sha256_hex(booster);
        m.model_version = bundle::model_version_for(&m.artifact_sha256);
    }
    if flags & 2 != 0 {
        if let Ok(e) = Ensemble::from_xgboost_json(booster) {
            if e.num_features() == NUM_FEATURES && m.preprocessor.validate().is_ok() {
                let matrix = m.preprocessor.transform(&m.canary.rows);
                m.canary.probabilities = e
                    .margins(&matrix)
                    .into_iter()
                    .map(|x| f64::from(sigmoid(x)))
                    .collect();
            }
        }
    }
    serde_json::to_vec(&m).expect("a manifest serialises")
}

/// Uses a loaded bundle as the server does.
fn serve(b: &ModelBundle) {
    let mut rows: Vec<Application> = b.manifest.canary.rows.clone();
    rows.push(Application::example());
    let many = b.score_many(&rows);
    assert_eq!(many.len(), rows.len());
    for (app, d) in rows.iter().zip(&many) {
        // One row and a block of rows walk the trees differently; they decide the same.
        let one = b.score(app);
        assert_eq!(
            one.margin.to_bits(),
            d.margin.to_bits(),
            "one row gives {}, a block {}",
            one.margin,
            d.margin
        );
        assert!((0.0..=1.0).contains(&d.probability_default) || d.probability_default.is_nan());
    }
    if let Ok(explainer) = b.explainer() {
        let mut scratch = explainer.scratch();
        for app in &rows {
            let e = explainer.explain(b.preprocessor(), app, &mut scratch);
            assert_eq!(e.contributions.len(), NUM_FEATURES);
            assert!(e.reasons.len() <= 5);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xff);
    let booster = parts.next().unwrap_or_default();
    let manifest = agreeing(parts.next().unwrap_or_default(), booster, flags);
    let metrics = parts.next().unwrap_or_default();
    let reason_codes = parts.next().filter(|p| !p.is_empty());
    let checksums = parts.next().filter(|_| flags & 4 != 0);

    let dir = scratch();
    let write = |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes).expect("writing");
    write(bundle::BOOSTER_FILE, booster);
    write(bundle::MANIFEST_FILE, &manifest);
    write(bundle::METRICS_FILE, metrics);
    let mut files = vec![
        (bundle::BOOSTER_FILE, booster),
        (bundle::MANIFEST_FILE, &manifest[..]),
        (bundle::METRICS_FILE, metrics),
    ];
    let codes = dir.join(bundle::REASON_CODES_FILE);
    match reason_codes {
        Some(r) => {
            write(bundle::REASON_CODES_FILE, r);
            files.push((bundle::REASON_CODES_FILE, r));
        }
        None => {
            let _ = fs::remove_file(&codes);
        }
    }
    match checksums {
        Some(c) => write(bundle::CHECKSUMS_FILE, c),
        None => write(bundle::CHECKSUMS_FILE, checksums_text(files).as_bytes()),
    }

    match ModelBundle::load(dir) {
        Ok(b) => serve(&b),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
