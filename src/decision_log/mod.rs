//! The decision log: every scored or rejected application recorded in PostgreSQL exactly once.
//!
//! - [`record`]: [`DecisionRow`], a decision as an owned value;
//! - [`tuple`]: a decision as one row of PostgreSQL's binary `COPY` format, encoded once, straight
//!   from the server's view of the call, and then journaled, queued and streamed as is;
//! - [`writer`]: [`DecisionLog`], the non-blocking, batched writer with its spool fallback;
//! - [`spool`]: the checksummed on-disk segments used while PostgreSQL is down or slow;
//! - [`recorder`]: the `DecisionLog` as the server's `DecisionRecorder`;
//! - [`db`]: connecting, migrations (`migrations/`), partitions, the idempotent COPY path;
//! - [`pg_tls`]: TLS to PostgreSQL as the URL's `sslmode` and `sslrootcert` say.

pub mod copy_row;
pub mod db;
pub mod pg_tls;
pub mod recorder;
pub mod row;
pub mod spool;
pub mod writer;

use std::time::Duration;

pub use crate::config::DatabaseUrl;
pub use db::DbError;
pub use row::{
    new_decision_id, DecisionRow, Outcome, RecordedInputs, Rpc, ScoredResult, Violation,
};
pub use writer::{
    DecisionLog, DecisionLogConfig, DecisionLogError, DecisionLogStats, DecisionLogStatus,
};

use crate::config::{DecisionLogArgs, DecisionLogMode, MigrateArgs};

impl DecisionLogConfig {
    /// The writer configuration from the command line; `None` when `--audit off`.
    pub fn from_args(args: &DecisionLogArgs) -> Option<DecisionLogConfig> {
        if args.audit == DecisionLogMode::Off {
            return None;
        }
        let mut cfg =
            DecisionLogConfig::new(args.database.database_url.clone(), args.spool_dir.clone());
        cfg.pool_size = args.audit_pool_size;
        cfg.batch_size = args.audit_batch_size;
        cfg.flush_interval = Duration::from_millis(args.audit_flush_interval_ms);
        cfg.queue_capacity = args.audit_queue_capacity;
        cfg.spool_max_bytes = args.spool_max_bytes;
        cfg.spool_fsync_interval = args.spool_fsync_interval;
        cfg.require_database = args.require_database;
        Some(cfg)
    }
}

impl DecisionLog {
    /// Starts the decision log as configured on the command line (disabled with `--audit off`).
    pub async fn from_args(args: &DecisionLogArgs) -> Result<DecisionLog, DecisionLogError> {
        match DecisionLogConfig::from_args(args) {
            None => {
                tracing::warn!("decision log is OFF (--audit off): decisions are not recorded; for benchmarks only");
                Ok(DecisionLog::disabled())
            }
            Some(cfg) => DecisionLog::start(cfg).await,
        }
    }
}

/// `cra migrate`: applies the decision log schema and prints what it applied.
pub fn run_migrate_command(args: &MigrateArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = &args.database.database_url;
    rt.block_on(async {
        let mut client = db::connect(url, Duration::from_secs(10))
            .await
            .with_context(|| format!("connecting to {url} (set --database-url or DATABASE_URL)"))?;
        let applied = db::migrate(&mut client)
            .await
            .context("applying the decision log migrations")?;
        if applied.is_empty() {
            println!("{url}: schema is up to date (no migration applied)");
        } else {
            for m in &applied {
                println!("{url}: applied V{}__{}", m.version, m.name);
            }
        }
        Ok(())
    })
}
