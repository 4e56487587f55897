//! Traces: one server span per call, a gRPC method or an HTTP route, parented on the caller's
//! W3C `traceparent` (gRPC metadata or HTTP header), and exported over OTLP/gRPC when
//! `--otlp-endpoint` is set.
//!
//! The span is a `tracing` span named `call`; its fields are what a trace backend shows as
//! attributes and what every log line logged during the call carries: `transport`, `rpc`,
//! `request_id`, `trace_id`, and, once decided, `model_version`, `model_role`, `outcome`,
//! `decision_id` (one decision) or `decisions` (a batch). The scoring core fills those in
//! ([`record_decision`], [`record_decisions`]); the transports record the status code.
//!
//! Whether a call is sampled is decided before its span exists ([`sampled`]): a sampled call's
//! span gets the target [`SAMPLED`] and its ids, which [`super::span_export`] turns into an
//! OpenTelemetry span when it closes; any other call's span is for the logs alone and costs
//! the exporter nothing.
//!
//! The trace id also goes into every decision row (`decisions.trace_id`), so that a trace
//! leads to its decisions and a decision to its trace: the exported span's trace id, or, when
//! nothing is exported, the trace id of the caller's `traceparent`, if it sent one.
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::{trace::TraceState, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{trace::SpanExporter as _, Resource};
use tracing::field::Empty;

use super::span_export::{self, CallIds, ExportLayer, SpanQueue};

/// The target of a sampled call's span, the only one the [`ExportLayer`] keeps; a call that
/// is not sampled gets the same span under [`LOCAL`], for the logs alone.
pub(crate) const SAMPLED: &str = "cra::call::sampled";
const LOCAL: &str = "cra::call";

/// Spans are being exported: their trace ids are the ones to record.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The share of new traces sampled, as a threshold on a random `u64` (`u64::MAX`: all).
static SAMPLE_THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// Whether a call is sampled, decided before its span exists: a caller's `traceparent`
/// decides (its `sampled` flag), else `--otlp-sample-ratio` (as the SDK's `ParentBased`
/// `TraceIdRatioBased` sampler would, which is then left with nothing to refuse).
fn sampled(traceparent: Option<&TraceParent>) -> bool {
    if let Some(tp) = traceparent {
        return tp.flags & 1 == 1;
    }
    match SAMPLE_THRESHOLD.load(Ordering::Relaxed) {
        0 => false,
        u64::MAX => true,
        t => rand::random::<u64>() < t,
    }
}

/// The flags of a valid `traceparent`.
#[cfg(test)]
fn traceparent_flags(value: &str) -> Option<u8> {
    TraceParent::parse(value).map(|tp| tp.flags)
}

/// A valid W3C `traceparent` header: the caller's trace, its span (this call's parent) and
/// its flags. Parsed once per call.
#[derive(Debug, Clone, Copy)]
struct TraceParent {
    trace: TraceId,
    parent: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// The fields of `value` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is a valid `traceparent`;
    /// all-zero trace or parent ids are invalid (W3C Trace Context, §3.2.2.3).
    fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex_of = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex_of(version, 2) || version == "ff" || !hex_of(parent, 16) || !hex_of(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !hex_of(trace, 32) {
            return None;
        }
        let mut tp = TraceParent {
            trace: TraceId([0; 16]),
            parent: [0; 8],
            flags: 0,
        };
        hex::decode_to_slice(trace, &mut tp.trace.0).ok()?;
        hex::decode_to_slice(parent, &mut tp.parent).ok()?;
        let mut f = [0u8; 1];
        hex::decode_to_slice(flags, &mut f).ok()?;
        tp.flags = f[0];
        (tp.trace.0 != [0; 16] && tp.parent != [0; 8]).then_some(tp)
    }
}

/// A W3C trace id: 16 bytes, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

impl fmt::Display for TraceId {
    /// 32 lowercase hex digits, written at once (a log line and a span field of every traced
    /// call carry it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl TraceId {
    /// The trace id of a `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`), if it is
    /// a valid one (see [`TraceParent::parse`]).
    pub fn from_traceparent(value: &str) -> Option<TraceId> {
        TraceParent::parse(value).map(|tp| tp.trace)
    }

    /// The id as 32 lowercase hex digits (ASCII): how logs, spans and the decision log's
    /// `trace_id` column write it.
    pub fn hex(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        out
    }
}

/// The trace of a call, left in the request's extensions by the transport's span layer for
/// the handler to put in its decision rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTrace(pub Option<TraceId>);

/// The exporter's settings (`cra serve --otlp-*`).
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// The OTLP/gRPC collector, e.g. `http://otel-collector:4317`; `None`: nothing is exported.
    pub endpoint: Option<String>,
    /// Share of new traces sampled (0 to 1); a call with a `traceparent` follows its caller's
    /// sampling decision.
    pub sample_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// Why traces could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("--otlp-sample-ratio must be between 0 and 1, not {0}")]
    Ratio(f64),
    #[error("--otlp-endpoint `{endpoint}`: {source}; give the collector's URL, e.g. http://localhost:4317")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("the log subscriber was installed by another program; traces cannot be added to it")]
    NoSubscriber,
}

/// The running exporter; [`Traces::shutdown`] sends what is queued.
#[must_use = "shut it down to send the last spans"]
pub struct Traces {
    exporter: Option<Exporting>,
    endpoint: Option<String>,
    sample_ratio: f64,
}

/// The exporter task and what stops it.
struct Exporting {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
    queue: Arc<SpanQueue>,
}

impl Traces {
    /// Nothing exported.
    pub fn off() -> Traces {
        Traces {
            exporter: None,
            endpoint: None,
            sample_ratio: 0.0,
        }
    }

    /// True when spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.exporter.is_some()
    }

    /// Builds the exporter to `cfg.endpoint` (nothing when it is `None`), starts its task, and
    /// returns the layer that feeds it, for the subscriber to be installed with. Must run
    /// inside the tokio runtime: the exporter's gRPC channel and its task live on it.
    pub fn start(cfg: &TracesConfig) -> Result<(Traces, Option<ExportLayer>), TracesError> {
        let Some(endpoint) = &cfg.endpoint else {
            return Ok((Traces::off(), None));
        };
        if !(0.0..=1.0).contains(&cfg.sample_ratio) {
            return Err(TracesError::Ratio(cfg.sample_ratio));
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| TracesError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        exporter.set_resource(
            &Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let queue = Arc::new(SpanQueue::default());
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(span_export::run_exporter(
            queue.clone(),
            exporter,
            stop.clone(),
        ));
        let threshold = if cfg.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (cfg.sample_ratio * u64::MAX as f64) as u64
        };
        SAMPLE_THRESHOLD.store(threshold, Ordering::Relaxed);
        EXPORTING.store(true, Ordering::Relaxed);
        Ok((
            Traces {
                exporter: Some(Exporting {
                    task,
                    stop,
                    queue: queue.clone(),
                }),
                endpoint: Some(endpoint.clone()),
                sample_ratio: cfg.sample_ratio,
            },
            Some(ExportLayer::new(queue)),
        ))
    }

    /// Logs where spans go (once the subscriber is installed).
    pub fn announce(&self) {
        if let Some(endpoint) = &self.endpoint {
            tracing::info!(%endpoint, sample_ratio = self.sample_ratio, "exporting traces over OTLP");
        }
    }

    /// Stops exporting and sends the spans still queued (up to the export timeout per batch).
    pub async fn shutdown(self) {
        if let Some(e) = self.exporter {
            EXPORTING.store(false, Ordering::Relaxed);
            e.stop.notify_one();
            if tokio::time::timeout(Duration::from_secs(10), e.task)
                .await
                .is_err()
            {
                tracing::warn!("the last spans could not be sent to the OTLP collector in 10 s");
            }
            let dropped = e.queue.dropped();
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "spans were dropped while the OTLP collector fell behind"
                );
            }
        }
    }
}

/// Longest caller `tracestate` a sampled span keeps, in bytes.
const MAX_TRACESTATE_LEN: usize = 512;

/// The ids of a sampled call's span: the caller's trace (and its span as the parent) when it
/// sent a valid `traceparent`, else a new trace.
fn call_ids(traceparent: Option<&TraceParent>, tracestate: Option<&str>) -> CallIds {
    let nonzero_span = || loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    };
    match traceparent {
        Some(tp) => CallIds {
            trace: tp.trace.0,
            span: nonzero_span(),
            parent: Some(tp.parent),
            // W3C Trace Context lets a server cut a `tracestate` past 512 characters; a longer
            // one is dropped rather than kept in every queued span.
            trace_state: tracestate
                .filter(|t| t.len() <= MAX_TRACESTATE_LEN)
                .and_then(|t| t.parse::<TraceState>().ok())
                .unwrap_or_default(),
        },
        None => CallIds {
            trace: loop {
                let id: [u8; 16] = rand::random();
                if id != [0; 16] {
                    break id;
                }
            },
            span: nonzero_span(),
            parent: None,
            trace_state: TraceState::default(),
        },
    }
}

/// The span of one call and the trace id its decisions record. `transport` is `grpc` or
/// `http`; `rpc` the method or route.
pub fn call_span(
    transport: &'static str,
    rpc: &str,
    headers: &axum::http::HeaderMap,
) -> (tracing::Span, Option<TraceId>) {
    macro_rules! call_span {
        ($target:expr) => {
            tracing::info_span!(
                target: $target,
                "call",
                otel.name = %format_args!("{transport} {rpc}"),
                otel.kind = "server",
                otel.status_code = Empty,
                transport,
                rpc = %rpc,
                request_id = Empty,
                trace_id = Empty,
                model_version = Empty,
                model_role = Empty,
                outcome = Empty,
                decision_id = Empty,
                decisions = Empty,
                status = Empty,
            )
        };
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let traceparent = header("traceparent").and_then(TraceParent::parse);
    let mut trace = None;
    let span = if EXPORTING.load(Ordering::Relaxed) && sampled(traceparent.as_ref()) {
        let ids = call_ids(traceparent.as_ref(), header("tracestate"));
        let id = TraceId(ids.trace);
        let (span, exported) = span_export::with_ids(ids, || call_span!(SAMPLED));
        if exported {
            trace = Some(id);
        }
        span
    } else {
        call_span!(LOCAL)
    };
    if trace.is_none() {
        trace = traceparent.map(|tp| tp.trace);
    }
    if let Some(t) = trace {
        span.record("trace_id", tracing::field::display(t));
    }
    (span, trace)
}

/// Records the answer's status on the current call span: `error` for the server's faults
/// (what a trace backend flags), the code itself either way.
pub fn record_status(code: &str, server_fault: bool) {
    let span = tracing::Span::current();
    span.record("status", code);
    if server_fault {
        span.record("otel.status_code", "error");
    }
}

/// Records one decision on the current call span.
pub fn record_decision(
    request_id: &str,
    model_version: &str,
    model_role: &str,
    outcome: &str,
    decision_id: uuid::Uuid,
) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("request_id", request_id);
    span.record("model_version", model_version);
    span.record("model_role", model_role);
    span.record("outcome", outcome);
    if !decision_id.is_nil() {
        span.record("decision_id", tracing::field::display(decision_id));
    }
}

/// Records a batch's decisions on the current call span: how many, and the champion's version.
pub fn record_decisions(request_id: &str, model_version: &str, outcome: &str, n: usize) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("request_id", request_id);
    span.record("model_version", model_version);
    span.record("outcome", outcome);
    span.record("decisions", n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_flags() -> &'static str {
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"
    }

    #[test]
    fn traceparent_parsing_follows_w3c() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceId::from_traceparent(ok)
                .map(|t| t.to_string())
                .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceId::from_traceparent(bad), None, "{bad}");
        }
        assert_eq!(traceparent_flags(ok), Some(1));
        assert_eq!(
            traceparent_flags("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            Some(0)
        );
        assert_eq!(traceparent_flags(bad_flags()), None);
        // A later version may carry more fields.
        assert!(TraceId::from_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
    }

    #[test]
    fn a_sampled_span_keeps_a_short_tracestate_and_drops_a_long_one() {
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let ids = call_ids(tp.as_ref(), Some("vendor=x"));
        assert_eq!(ids.trace_state.header(), "vendor=x");
        assert_eq!(
            ids.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let long = format!("vendor={}", "x".repeat(MAX_TRACESTATE_LEN));
        assert_eq!(call_ids(tp.as_ref(), Some(&long)).trace_state.header(), "");
    }
}
