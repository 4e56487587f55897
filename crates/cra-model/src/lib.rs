//! The model runtime of CRA: everything needed to turn an application into a decision, and
//! nothing else. No async runtime, no network, no database, no libxgboost.
//!
//! - [`application`]: the domain application (17 inputs) and its categories;
//! - [`input`]: an application as a client sent it, and its validation;
//! - [`preprocess`]: the fitted preprocessing shared by the trainer and every scorer;
//! - [`ensemble`]: the compiled XGBoost trees (read from XGBoost's JSON model);
//! - [`bundle`]: the model bundle on disk, loaded and verified against its stored canaries;
//! - [`shap`]: exact TreeSHAP on the compiled trees;
//! - [`dataset`], [`synthetic`]: labelled tables and the synthetic generator.
pub mod application;
pub mod bundle;
pub mod dataset;
pub mod ensemble;
pub mod explain;
pub mod input;
pub mod preprocess;
pub mod shap;
pub mod synthetic;

pub use application::{Application, EmploymentStatus, HomeOwnership, LoanPurpose};
pub use bundle::{Decision, ModelBundle, RiskLevel, Thresholds};
pub use input::{ApplicationInput, Category, FieldViolation};
pub use preprocess::{FittedPreprocessor, PreprocessParams, NUM_FEATURES};
