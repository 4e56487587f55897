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
    /// Apply the decision log schema (migrations) to PostgreSQL and print what was applied.
    Migrate(MigrateArgs),
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

/// Where the decision log's PostgreSQL is. The password is never printed (not even by `--help`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the decision log; the database is created if missing and the role may.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/cra"
    )]
    pub database_url: crate::audit::DatabaseUrl,
}

/// `cra migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Whether decisions are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditMode {
    On,
    Off,
}

/// The decision log's settings (flattened into `cra serve`).
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Record every decision in PostgreSQL. `off` is for benchmarks only: nothing is recorded.
    #[arg(long, env = "CRA_AUDIT", value_enum, default_value_t = AuditMode::On)]
    pub audit: AuditMode,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Most decisions written per binary COPY.
    #[arg(long, env = "CRA_AUDIT_BATCH_SIZE", default_value_t = 2048)]
    pub audit_batch_size: usize,
    /// Longest a decision waits in memory before its batch is written, in milliseconds.
    #[arg(long, env = "CRA_AUDIT_FLUSH_INTERVAL_MS", default_value_t = 50)]
    pub audit_flush_interval_ms: u64,
    /// Decisions held in memory; beyond this they go straight to the spool.
    #[arg(long, env = "CRA_AUDIT_QUEUE_CAPACITY", default_value_t = 65536)]
    pub audit_queue_capacity: usize,
    /// PostgreSQL connections writing decisions (one more replays the spool).
    #[arg(long, env = "CRA_AUDIT_POOL_SIZE", default_value_t = 2)]
    pub audit_pool_size: usize,
    /// Directory of the on-disk spool used while PostgreSQL is down or slow.
    #[arg(long, env = "CRA_SPOOL_DIR", default_value = "spool")]
    pub spool_dir: PathBuf,
    /// Cap on the spool's size in bytes; when it is full and PostgreSQL is down, scoring is refused.
    #[arg(long, env = "CRA_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Fail at start-up when PostgreSQL is unreachable (default: warn, spool, replay later).
    #[arg(long, env = "CRA_REQUIRE_DATABASE")]
    pub require_database: bool,
}
