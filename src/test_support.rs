//! What the unit tests of several modules share.
use std::path::Path;

/// A copy of the committed default bundle without its drift reference (the bundle of a model
/// trained before references existed), checksummed, in a fresh directory.
pub fn default_bundle_without_drift_reference() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    for f in [
        cra_model::bundle::BOOSTER_FILE,
        cra_model::bundle::MANIFEST_FILE,
        cra_model::bundle::METRICS_FILE,
        cra_model::bundle::REASON_CODES_FILE,
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    cra_model::bundle::write_checksums(dir.path()).unwrap();
    dir
}
