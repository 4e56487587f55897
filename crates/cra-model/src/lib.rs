//! The model runtime of CRA: everything needed to turn an application into a decision, and
//! nothing else. No async runtime, no network, no database, no libxgboost.
//!
//! - [`application`]: the domain application (17 inputs) and its categories;
//! - [`input`]: an application as a client sent it, and its validation;
//! - [`preprocess`]: the fitted preprocessing shared by the trainer and every scorer;
//! - [`ensemble`]: the compiled XGBoost trees (read from XGBoost's JSON model);
//! - [`bundle`]: the model bundle on disk, loaded and verified against its stored canaries;
//! - [`shap`]: exact TreeSHAP on the compiled trees;
//! - [`registry`]: a set of models (champion, challengers, shadows) from a models file, and the
//!   routing of live traffic between them;
//! - [`decide`]: a batch validated, routed, scored and explained on a set;
//! - [`drift`]: the training distribution of the score and the features (the bundle's drift
//!   reference), the binning of decisions against it, and their PSI;
//! - [`import`]: a bundle written from a booster trained elsewhere (XGBoost JSON or UBJSON) and
//!   a fitted preprocessing spec, such as a scikit-learn pipeline's;
//! - [`arrow_io`] (feature `arrow`): applications read from Arrow record batches, decisions
//!   written back as Arrow columns;
//! - [`dataset`], [`synthetic`]: labelled tables and the synthetic generator.
pub mod application;
#[cfg(feature = "arrow")]
pub mod arrow_io;
pub mod bundle;
pub mod dataset;
pub mod decide;
pub mod drift;
pub mod ensemble;
pub mod explain;
pub mod import;
pub mod input;
pub mod preprocess;
pub mod registry;
pub mod shap;
pub mod synthetic;

pub use application::{Application, EmploymentStatus, HomeOwnership, LoanPurpose};
pub use bundle::{Decision, ModelBundle, RiskLevel, Thresholds};
pub use input::{ApplicationInput, Category, FieldViolation};
pub use preprocess::{FittedPreprocessor, PreprocessParams, NUM_FEATURES};
