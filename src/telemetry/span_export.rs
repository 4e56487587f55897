//! The export of sampled call spans: a `tracing` layer that keeps, for each sampled call span,
//! its ids, start time and attributes as they are recorded, turns it into one OpenTelemetry
//! [`SpanData`] when the span closes, and queues it; a task on the runtime sends the queue to
//! the collector in batches with `opentelemetry-otlp`'s exporter (OTLP/gRPC over tonic).
//!
//! Why not `tracing-opentelemetry`'s layer and the SDK's batch processor: on every sampled call
//! they built an SDK span beside the `tracing` one (a span builder, then a span with its own
//! lock, attribute by attribute through `Debug` formatting), and the per-layer filter that
//! kept unsampled calls away from them made every callsite's interest dynamic, so that every
//! `tracing` callsite of h2 and tonic was checked again on every hit. Together that was 16 to
//! 20 µs of CPU per call, a quarter to a third of what the server spent on a call
//! (docs/PERFORMANCE.md).
//! Here a sampled call costs one small struct in the span's extensions, one `Vec` of
//! attributes whose keys are the fields' static names, and one push under a mutex; the layer
//! is a plain one, so `RUST_LOG` still decides which callsites are enabled once and for all.
use std::{
    borrow::Cow,
    cell::RefCell,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    trace::{Event as OtelEvent, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState},
    InstrumentationScope, Key, KeyValue, Value,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tracing::{field::Field, span, Subscriber};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

/// Spans sent per export call.
const BATCH: usize = 512;
/// Spans kept waiting for the collector at most; past that new spans are dropped and counted
/// (a collector that is down must not grow the server's memory).
const MAX_QUEUED: usize = 16 * BATCH;
/// How often the queue is sent when it holds less than a batch.
const INTERVAL: Duration = Duration::from_millis(500);
/// Events (log lines) kept per span, at WARN and above.
const MAX_EVENTS: usize = 16;

/// The ids of the next sampled call span, handed from [`super::traces::call_span`] to
/// [`ExportLayer::on_new_span`] on the same thread, as the span is created.
#[derive(Debug, Clone)]
pub struct CallIds {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub trace_state: TraceState,
}

thread_local! {
    static NEXT: RefCell<Option<CallIds>> = const { RefCell::new(None) };
}

/// Makes `make` create the span of a sampled call with `ids`; true when the layer took them
/// (the span is enabled and the layer is installed).
pub fn with_ids<T>(ids: CallIds, make: impl FnOnce() -> T) -> (T, bool) {
    NEXT.with(|n| *n.borrow_mut() = Some(ids));
    let made = make();
    let left = NEXT.with(|n| n.borrow_mut().take());
    (made, left.is_none())
}

/// What the layer keeps for a sampled span while it is open.
struct Pending {
    ids: CallIds,
    start: SystemTime,
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
    error: bool,
    events: Vec<OtelEvent>,
}

/// Fields that are not attributes: the span's name, kind and status, and the trace id, which
/// the span carries as its own.
fn is_attribute(name: &str) -> bool {
    !matches!(
        name,
        "otel.name" | "otel.kind" | "otel.status_code" | "trace_id"
    )
}

/// Fields whose values repeat from call to call (a handful of transports, methods, model
/// versions, roles, outcomes and status codes): kept once, so that recording them allocates
/// nothing. Every other field (request and decision ids) is copied.
fn repeats(field: &str) -> bool {
    matches!(
        field,
        "otel.name" | "transport" | "rpc" | "model_version" | "model_role" | "outcome" | "status"
    )
}

/// Most distinct values kept by [`intern`]: a client that sends many method names, or a
/// registry reloaded with many versions, costs at most this much memory, then allocations.
const MAX_INTERNED: usize = 512;

static INTERNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's view of [`INTERNED`], searched first without a lock.
    static SEEN: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// Longest value kept by [`intern`]: method names, versions and codes are short; a client's
/// long path is copied, never kept.
const MAX_INTERNED_LEN: usize = 128;

/// `s` as a `'static` string kept for the life of the process, or `None` when it is longer
/// than [`MAX_INTERNED_LEN`] or [`MAX_INTERNED`] strings are kept.
fn intern(s: &str) -> Option<&'static str> {
    if s.len() > MAX_INTERNED_LEN {
        return None;
    }
    if let Some(found) = SEEN.with(|seen| seen.borrow().iter().copied().find(|k| *k == s)) {
        return Some(found);
    }
    let found = {
        let mut all = INTERNED.lock().ok()?;
        match all.iter().copied().find(|k| *k == s) {
            Some(k) => k,
            None if all.len() < MAX_INTERNED => {
                let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
                all.push(k);
                k
            }
            None => return None,
        }
    };
    SEEN.with(|seen| seen.borrow_mut().push(found));
    Some(found)
}

/// A `Debug` value written out, on the stack when it is short.
struct Written {
    buf: [u8; 96],
    len: usize,
    spilled: Option<String>,
}

impl Written {
    fn of(value: &dyn fmt::Debug) -> Written {
        use fmt::Write as _;
        let mut w = Written {
            buf: [0; 96],
            len: 0,
            spilled: None,
        };
        let _ = write!(w, "{value:?}");
        w
    }
    fn as_str(&self) -> &str {
        match &self.spilled {
            Some(s) => s,
            // Only whole `str`s are copied into `buf`.
            None => std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default(),
        }
    }
    fn into_string(self) -> String {
        match self.spilled {
            Some(s) => s,
            None => self.as_str().to_owned(),
        }
    }
}

impl fmt::Write for Written {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(spilled) = &mut self.spilled {
            spilled.push_str(s);
        } else if self.len + s.len() <= self.buf.len() {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut spilled = String::with_capacity(self.len + s.len() + 32);
            spilled.push_str(self.as_str());
            spilled.push_str(s);
            self.spilled = Some(spilled);
        }
        Ok(())
    }
}

/// The value of `field`: kept once when it is a repeating one, else copied.
fn text_value(field: &str, s: &str) -> Value {
    match repeats(field).then(|| intern(s)).flatten() {
        Some(k) => Value::from(k),
        None => Value::from(s.to_owned()),
    }
}

impl Pending {
    fn set(&mut self, key: &'static str, value: Value) {
        match self.attributes.iter_mut().find(|kv| kv.key.as_str() == key) {
            Some(kv) => kv.value = value,
            None => self
                .attributes
                .push(KeyValue::new(Key::from_static_str(key), value)),
        }
    }
}

impl tracing::field::Visit for Pending {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "otel.status_code" => self.error = value.eq_ignore_ascii_case("error"),
            "otel.name" => {
                self.name = match intern(value) {
                    Some(k) => Cow::Borrowed(k),
                    None => Cow::Owned(value.to_owned()),
                }
            }
            name if is_attribute(name) => self.set(name, text_value(name, value)),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if is_attribute(field.name()) {
            self.set(
                field.name(),
                Value::I64(i64::try_from(value).unwrap_or(i64::MAX)),
            );
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if is_attribute(field.name()) {
            self.set(field.name(), Value::I64(value));
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if is_attribute(field.name()) {
            self.set(field.name(), Value::F64(value));
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if is_attribute(field.name()) {
            self.set(field.name(), Value::Bool(value));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // The span's kind is always "server"; its trace id is its own.
        if matches!(name, "otel.kind" | "trace_id") {
            return;
        }
        let written = Written::of(value);
        if name == "otel.name" || name == "otel.status_code" || repeats(name) {
            self.record_str(field, written.as_str());
        } else {
            self.set(name, Value::from(written.into_string()));
        }
    }
}

/// The text of an event (its `message` and other fields), for a span event.
#[derive(Default)]
struct EventText {
    message: String,
    attributes: Vec<KeyValue>,
}

impl tracing::field::Visit for EventText {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.attributes.push(KeyValue::new(
                Key::from_static_str(field.name()),
                Value::from(format!("{value:?}")),
            ));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.attributes.push(KeyValue::new(
                Key::from_static_str(field.name()),
                Value::from(value.to_owned()),
            ));
        }
    }
}

/// The spans waiting for the exporter task.
#[derive(Debug, Default)]
pub struct SpanQueue {
    spans: Mutex<Vec<SpanData>>,
    ready: tokio::sync::Notify,
    dropped: AtomicU64,
}

impl SpanQueue {
    fn push(&self, span: SpanData) {
        let Ok(mut spans) = self.spans.lock() else {
            return;
        };
        if spans.len() >= MAX_QUEUED {
            drop(spans);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    max = MAX_QUEUED,
                    "the OTLP collector does not keep up: spans are being dropped"
                );
            }
            return;
        }
        spans.push(span);
        if spans.len() == BATCH {
            self.ready.notify_one();
        }
    }

    /// Everything queued, leaving room for a batch (so that the queue does not grow again from
    /// nothing, copying its spans at each doubling).
    fn take(&self) -> Vec<SpanData> {
        match self.spans.lock() {
            Ok(mut s) if !s.is_empty() => std::mem::replace(&mut *s, Vec::with_capacity(BATCH)),
            _ => Vec::new(),
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The layer: sees only the spans that [`with_ids`] created.
pub struct ExportLayer {
    queue: Arc<SpanQueue>,
    scope: InstrumentationScope,
}

impl ExportLayer {
    pub fn new(queue: Arc<SpanQueue>) -> ExportLayer {
        ExportLayer {
            queue,
            scope: InstrumentationScope::builder("cra")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }
}

impl<S> Layer<S> for ExportLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != super::traces::SAMPLED {
            return;
        }
        let Some(ids) = NEXT.with(|n| n.borrow_mut().take()) else {
            return;
        };
        let Some(span) = ctx.span(id) else { return };
        let mut pending = Pending {
            ids,
            start: SystemTime::now(),
            name: Cow::Borrowed(attrs.metadata().name()),
            attributes: Vec::with_capacity(12),
            error: false,
            events: Vec::new(),
        };
        attrs.record(&mut pending);
        span.extensions_mut().insert(pending);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.metadata().target() != super::traces::SAMPLED {
            return;
        }
        let mut ext = span.extensions_mut();
        if let Some(pending) = ext.get_mut::<Pending>() {
            values.record(pending);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        // The call's span, or the nearest one inside it.
        let Some(call) = span
            .scope()
            .find(|s| s.metadata().target() == super::traces::SAMPLED)
        else {
            return;
        };
        let mut ext = call.extensions_mut();
        let Some(pending) = ext.get_mut::<Pending>() else {
            return;
        };
        if pending.events.len() >= MAX_EVENTS {
            return;
        }
        let mut text = EventText::default();
        event.record(&mut text);
        text.attributes.push(KeyValue::new(
            "level",
            event.metadata().level().as_str().to_ascii_lowercase(),
        ));
        pending.events.push(OtelEvent::new(
            text.message,
            SystemTime::now(),
            text.attributes,
            0,
        ));
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if span.metadata().target() != super::traces::SAMPLED {
            return;
        }
        let Some(p) = span.extensions_mut().remove::<Pending>() else {
            return;
        };
        let mut events = SpanEvents::default();
        events.events = p.events;
        self.queue.push(SpanData {
            span_context: SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes(p.ids.trace),
                SpanId::from_bytes(p.ids.span),
                TraceFlags::SAMPLED,
                false,
                p.ids.trace_state,
            ),
            parent_span_id: p.ids.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: p.ids.parent.is_some(),
            span_kind: SpanKind::Server,
            name: p.name,
            start_time: p.start,
            end_time: SystemTime::now(),
            attributes: p.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: if p.error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// Sends the queue to the collector: a batch as soon as one is full, else every
/// [`INTERVAL`]; everything left when `stop` is notified, then returns.
pub async fn run_exporter(
    queue: Arc<SpanQueue>,
    exporter: opentelemetry_otlp::SpanExporter,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut failures = 0u64;
    loop {
        let stopping = tokio::select! {
            _ = queue.ready.notified() => false,
            _ = tokio::time::sleep(INTERVAL) => false,
            _ = stop.notified() => true,
        };
        let mut spans = queue.take();
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(BATCH));
            let n = spans.len();
            if let Err(e) = exporter.export(spans).await {
                failures += 1;
                // The first failure, then one in a hundred: a collector that is down must not
                // flood the log.
                if failures % 100 == 1 {
                    tracing::warn!(error = %e, spans = n, failures, "spans could not be sent to the OTLP collector");
                }
            }
            spans = rest;
        }
        if stopping {
            let _ = exporter.shutdown();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::traces::SAMPLED;
    use tracing::field::{display, Empty};
    use tracing_subscriber::layer::SubscriberExt as _;

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_sampled_call_span_is_queued_once_with_its_ids_attributes_status_and_warnings() {
        let queue = Arc::new(SpanQueue::default());
        let subscriber = tracing_subscriber::registry().with(ExportLayer::new(queue.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let ids = CallIds {
                trace: [1; 16],
                span: [2; 8],
                parent: Some([3; 8]),
                trace_state: "vendor=x".parse().unwrap(),
            };
            let rpc = "Score";
            let (span, taken) = with_ids(ids, || {
                tracing::info_span!(
                    target: SAMPLED,
                    "call",
                    otel.name = %format_args!("grpc {rpc}"),
                    otel.status_code = Empty,
                    transport = "grpc",
                    rpc = %rpc,
                    trace_id = Empty,
                    decision_id = Empty,
                    decisions = Empty,
                )
            });
            assert!(taken, "the layer takes the ids of the span it keeps");
            span.in_scope(|| {
                let current = tracing::Span::current();
                current.record("trace_id", "0101");
                current.record("decision_id", display("d-1"));
                current.record("decisions", 3u64);
                current.record("otel.status_code", "error");
                tracing::warn!(reason = "slow", "took long");
                tracing::info!("not kept: below WARN");
            });
            // A call that is not sampled: nothing is queued for it.
            let (local, taken) = with_ids(
                CallIds {
                    trace: [9; 16],
                    span: [9; 8],
                    parent: None,
                    trace_state: TraceState::default(),
                },
                || tracing::info_span!(target: "cra::call", "call", rpc = "Score"),
            );
            assert!(!taken);
            drop(local);
            assert!(
                queue.take().is_empty(),
                "nothing is queued before the span closes"
            );
            drop(span);
        });
        let spans = queue.take();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.name, "grpc Score");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(s.span_context.trace_id().to_bytes(), [1; 16]);
        assert_eq!(s.span_context.span_id().to_bytes(), [2; 8]);
        assert_eq!(s.span_context.trace_state().header(), "vendor=x");
        assert_eq!(s.parent_span_id.to_bytes(), [3; 8]);
        assert!(s.parent_span_is_remote);
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(
            attribute(s, "transport").map(|v| v.as_str()),
            Some("grpc".into())
        );
        assert_eq!(
            attribute(s, "rpc").map(|v| v.as_str()),
            Some("Score".into())
        );
        assert_eq!(
            attribute(s, "decision_id").map(|v| v.as_str()),
            Some("d-1".into())
        );
        assert_eq!(attribute(s, "decisions"), Some(&Value::I64(3)));
        assert!(
            attribute(s, "trace_id").is_none(),
            "the span's own trace id"
        );
        assert!(attribute(s, "otel.name").is_none() && attribute(s, "otel.status_code").is_none());
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "took long");
        assert!(s.start_time <= s.end_time);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let queue = SpanQueue::default();
        let span = |i: u8| SpanData {
            span_context: SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes([i.max(1); 16]),
                SpanId::from_bytes([1; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("x"),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        };
        for i in 0..MAX_QUEUED + 5 {
            queue.push(span(i as u8));
        }
        assert_eq!(queue.dropped(), 5);
        assert_eq!(queue.take().len(), MAX_QUEUED);
    }

    #[test]
    fn repeating_values_are_kept_once_and_long_ones_spill_to_the_heap() {
        let a = intern("model-a").unwrap();
        let b = intern(&String::from("model-a")).unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(intern(&"m".repeat(MAX_INTERNED_LEN + 1)), None);
        let long = "x".repeat(200);
        assert_eq!(Written::of(&format_args!("{long}")).as_str(), long);
        assert_eq!(Written::of(&format_args!("short")).as_str(), "short");
    }
}
