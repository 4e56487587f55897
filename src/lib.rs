//! CRA: a credit-risk scoring service.
//!
//! - [`app`]: the composition root ([`app::App::build`]), used by `cra serve` and the tests;
//! - [`scoring`]: the scoring core (validate → route → score → record), the model registry,
//!   shadows; it knows no transport;
//! - [`grpc`]: the gRPC adapter (contract, conversions, limits, health, reflection);
//! - [`http`]: the HTTP adapter: the original REST API and the Open Inference Protocol's
//!   REST routes;
//! - [`v2`]: the Open Inference Protocol (KServe V2) without a transport: metadata, tensors;
//! - [`decision_log`]: every decision recorded in PostgreSQL (COPY writer, spool, migrations);
//! - [`admission`]: the one concurrency limit every transport admits its calls through;
//! - [`readiness`]: the SERVING / NOT_SERVING state the transports publish;
//! - [`security`]: API keys, client certificates and TLS, per-client rate limits;
//! - [`monitoring`]: Prometheus metrics (`GET /metrics` on the HTTP port);
//! - [`drift`]: `cra drift`, the PSI of a model's decisions in the decision log;
//! - [`offline`]: `cra score`, a Parquet file scored through the same core;
//! - [`data`]: Parquet and CSV files of applications;
//! - [`training`]: the split, the metrics and (feature `trainer`) the libxgboost trainer;
//! - [`report`]: `cra report`, the model report as one self-contained HTML page;
//! - [`bench`], [`cli`], [`config`], [`telemetry`]: the `cra` binary's plumbing.
//!
//! The model runtime (preprocessing, compiled trees, bundles) is the `cra-model` crate.
pub mod admission;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod decision_log;
pub mod drift;
pub mod grpc;
pub mod http;
pub mod monitoring;
pub mod offline;
pub mod readiness;
pub mod report;
pub mod scoring;
pub mod security;
pub mod telemetry;
pub mod training;
pub mod v2;

/// The fuzz targets' seed corpora (`fuzz/corpus`), written by an ignored test.
#[cfg(test)]
mod fuzz_seeds;
/// Helpers the unit tests of several modules share.
#[cfg(test)]
mod test_support;
