//! API tests: the real server started in-process on port 0, driven by real tonic clients.
mod batch;
mod decision_log;
mod health;
mod helpers;
mod reflection;
mod robustness;
mod score;
mod validation;
