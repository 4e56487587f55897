//! The data pipeline: the application type, the synthetic generator, and Parquet/CSV I/O.
pub mod application;

pub use application::{Application, EmploymentStatus, HomeOwnership, LoanPurpose};
