//! Training: the stratified split, evaluation metrics, the drift reference of an existing
//! bundle (`reference`), and the trainer on libxgboost (feature
//! `trainer`; serving never needs it).
pub mod metrics;
pub mod reference;
pub mod split;
#[cfg(feature = "trainer")]
pub mod train;
