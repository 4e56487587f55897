//! Telemetry: logs and traces.
//!
//! - Logs: `RUST_LOG`-filtered tracing to stderr, as text or JSON (`--log-format`,
//!   `CRA_LOG_FORMAT`); colour codes only when stderr is a terminal, so a log file or pipe holds
//!   plain text. A line logged during a call carries the call's span: its `request_id`,
//!   `decision_id` and `trace_id`.
//! - [`traces`]: one span per call, exported over OTLP when `--otlp-endpoint` is set.
pub mod span_export;
pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use traces::{Traces, TracesConfig, TracesError};

/// Installs the global subscriber (logs only). Safe to call more than once (later calls do
/// nothing).
pub fn init(format: crate::config::LogFormat) {
    let _ = install(format, None);
}

/// Installs the global subscriber of `cra serve`: the logs, and the span exporter when
/// `traces.endpoint` is set. Must run inside the tokio runtime (the exporter's gRPC channel
/// lives on it).
pub fn init_serving(
    format: crate::config::LogFormat,
    traces: &TracesConfig,
) -> Result<Traces, TracesError> {
    let (traces, layer) = Traces::start(traces)?;
    if install(format, layer).is_err() && traces.is_exporting() {
        return Err(TracesError::NoSubscriber);
    }
    traces.announce();
    Ok(traces)
}

fn install(
    format: crate::config::LogFormat,
    otel: Option<span_export::ExportLayer>,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if otel.is_some() {
        // A sampled call's span is exported whatever level the logs are kept at.
        if let Ok(d) = format!("{}=info", traces::SAMPLED).parse() {
            filter = filter.add_directive(d);
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let logs = if format == crate::config::LogFormat::Json {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(filter)
        .with(logs)
        .try_init()
}
