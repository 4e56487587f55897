//! The data pipeline: the application type, the synthetic generator, and Parquet/CSV I/O.
pub mod application;
pub mod generator;
pub mod parquet;

pub use application::{Application, EmploymentStatus, HomeOwnership, LoanPurpose};
