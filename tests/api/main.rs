//! API tests: the real server started in-process on port 0, driven by real tonic clients.
mod batch;
#[path = "../common/mod.rs"]
mod common;
mod decision_log;
mod decision_log_errors;
mod drift;
mod explain;
mod health;
mod helpers;
mod reflection;
mod registry;
mod rest;
mod robustness;
mod score;
mod security;
mod v2;
mod validation;
