//! Logging: `RUST_LOG`-filtered tracing to stderr (JSON when `CRA_LOG_FORMAT=json`); colour
//! codes only when stderr is a terminal, so a log file or pipe holds plain text.
use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if std::env::var("CRA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
