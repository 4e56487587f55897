//! Files of applications: Parquet (training sets, `cra score` input) and CSV.
pub mod parquet;
