//! Training: the stratified split, evaluation metrics, and the trainer on libxgboost (feature
//! `trainer`; serving never needs it).
pub mod metrics;
pub mod split;
#[cfg(feature = "trainer")]
pub mod train;
