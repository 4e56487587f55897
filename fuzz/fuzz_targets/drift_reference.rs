//! A bundle's drift reference (`drift_reference.json`), as the bundle loader reads it: parsed,
//! checked (`DriftReference::problems`) and compiled into a `Binner` for the committed default
//! model's preprocessing; a reference it accepts is then used as the server's live windows and
//! `cra drift` use it: real applications (the canary rows and the original's example) binned
//! at several scores, including the edges of [0, 1] and NaN, counted in and out of the running
//! counts, and the PSI of every column computed.
//!
//! Every bin must fall inside its own column's range (a bin past it would count a decision in
//! the next column's, or out of bounds), and every PSI must be a finite number ≥ 0.
#![no_main]

use std::sync::OnceLock;

use cra_model::{
    drift::{Binner, Bins, DriftReference, NUM_TRACKED},
    Application, ModelBundle,
};
use libfuzzer_sys::fuzz_target;

fn bundle() -> &'static ModelBundle {
    static BUNDLE: OnceLock<ModelBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| ModelBundle::load(cra_fuzz::model_dir()).expect("the default model loads"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(reference) = serde_json::from_slice::<DriftReference>(data) else {
        return;
    };
    let b = bundle();
    let Ok(binner) = Binner::new(reference, b.preprocessor()) else {
        return;
    };
    let mut rows: Vec<Application> = b.manifest.canary.rows.clone();
    rows.push(Application::example());
    let mut counts = binner.counts();
    let mut all = Vec::new();
    for (i, app) in rows.iter().enumerate() {
        for p in [0.0, 1.0, 0.5, f64::NAN, i as f64 / rows.len() as f64] {
            let mut bins: Bins = [0; NUM_TRACKED];
            binner.bins(app, p, &mut bins);
            for (c, bin) in bins.iter().enumerate() {
                let width = binner.range(c).len();
                assert!(
                    (*bin as usize) < width,
                    "column {} ({}): bin {bin} of {width}",
                    c,
                    binner.names()[c]
                );
            }
            counts.add(&binner, &bins);
            all.push(bins);
        }
    }
    let psi = counts.psi(&binner);
    assert_eq!(psi.rows, all.len() as u64);
    for (name, v) in std::iter::once(("score", psi.score_psi)).chain(psi.features.iter().copied()) {
        assert!(v.is_finite() && v >= 0.0, "{name}: PSI {v}");
    }
    for bins in &all {
        counts.remove(&binner, bins);
    }
    assert_eq!(counts.rows, 0);
    assert!(counts.counts.iter().all(|&n| n == 0));
});
