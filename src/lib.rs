//! CRA: a gRPC credit-risk scoring service.
//!
//! - [`contract`]: the protobuf contract and its conversion to domain types;
//! - [`data`]: applications, the synthetic generator, Parquet/CSV I/O;
//! - [`model`]: preprocessing, XGBoost training, the model bundle, metrics;
//! - [`audit`]: the decision log in PostgreSQL (writer, spool, migrations);
//! - [`config`], [`cli`], [`telemetry`]: the `cra` binary's plumbing.
pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod contract;
pub mod data;
pub mod model;
pub mod server;
pub mod telemetry;
