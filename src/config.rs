//! The one typed configuration of the `cra` binary: every flag has an environment fallback and
//! its doc comment is its `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// CRA: gRPC credit-risk scoring (preprocessing + XGBoost) with a PostgreSQL decision log.
#[derive(Debug, Parser)]
#[command(name = "cra", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate synthetic credit applications into a Parquet (or CSV) file.
    Generate(GenerateArgs),
    /// Train the preprocessing + XGBoost pipeline on a Parquet file and write a model bundle.
    Train(TrainArgs),
}

/// `cra generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Number of applications to generate.
    #[arg(long, env = "CRA_ROWS", default_value_t = 1000)]
    pub rows: usize,
    /// Random seed; the same seed gives the same file.
    #[arg(long, env = "CRA_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Output file (.parquet, or .csv with --csv).
    #[arg(long, env = "CRA_OUT", default_value = "data/credit_data.parquet")]
    pub out: PathBuf,
    /// Write CSV instead of Parquet.
    #[arg(long, env = "CRA_CSV")]
    pub csv: bool,
}

/// `cra train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Parquet file with the 17 inputs and the `default` label.
    #[arg(long, env = "CRA_DATA", default_value = "data/credit_data.parquet")]
    pub data: PathBuf,
    /// Directory to write the model bundle into.
    #[arg(long, env = "CRA_MODEL_OUT", default_value = "models/default")]
    pub out: PathBuf,
}
