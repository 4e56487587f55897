//! Helpers shared by the integration-test binaries (`tests/audit.rs`, `tests/api/`).
pub mod certs;
pub mod pg;
