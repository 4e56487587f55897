//! The model: preprocessing, the XGBoost booster (training and the compiled serving form),
//! the bundle that carries them from trainer to server, and evaluation metrics.
pub mod bundle;
pub mod ensemble;
pub mod metrics;
pub mod preprocess;
pub mod shap;
pub mod split;
pub mod train;

pub use bundle::{Decision, ModelBundle, RiskLevel, Thresholds};
pub use preprocess::{FittedPreprocessor, PreprocessParams, NUM_FEATURES};
