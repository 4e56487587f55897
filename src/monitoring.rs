//! Prometheus metrics, `GET /metrics` on the HTTP port. Call sites use the `metrics` facade;
//! the one process-wide recorder is `metrics-exporter-prometheus`'s, rendered on each scrape
//! with the gauges read at that moment (the decision log, the models, the process).
//!
//! Names follow Prometheus' conventions, each prefixed `cra_`, with its unit:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `cra_requests_total` | counter | `transport` (grpc, rest, v2), `rpc`, `code` |
//! | `cra_request_duration_seconds` | histogram | `transport`, `rpc` |
//! | `cra_decisions_total` | counter | `model_version`, `role`, `outcome` (ok, invalid) |
//! | `cra_decisions_by_risk_level_total` | counter | `risk_level` |
//! | `cra_explanations_total` | counter | |
//! | `cra_decision_log_*` | gauges | rows written, replayed, set aside, refused, lost; spool bytes and segments; queue depth; oldest unrecorded age; database up |
//! | `cra_model_info` | gauge (1) | `model_version`, `role` |
//! | `cra_drift_available` | gauge (1, or 0: the bundle has no drift reference) | `model_version`, `role` |
//! | `cra_drift_window_decisions` | gauge | `model_version`, `role` |
//! | `cra_drift_score_psi` | gauge | `model_version`, `role` |
//! | `cra_drift_feature_psi` | gauge | `model_version`, `role`, `feature` |
//! | `cra_model_reloads_total` | counter | `result` (ok, failed) |
//! | `cra_auth_refusals_total` | counter | `transport` (grpc, http), `reason` |
//! | `cra_rate_limited_total` | counter | `client` (the client id, or `anonymous`) |
//! | `cra_tls_handshake_failures_total` | counter | `port` (grpc, http) |
//! | `cra_process_resident_memory_bytes`, `cra_process_open_fds`, `cra_process_threads` | gauges | |
//!
//! The drift gauges come from the live windows of [`crate::scoring::drift`] (`--drift-window`):
//! the PSI ones only once a model's window holds
//! [`MIN_DECISIONS`](crate::scoring::drift::MIN_DECISIONS) decisions. Every gauge is set when
//! `/metrics` is rendered, so a gauge not set for [`GAUGE_IDLE`] (that of a model no longer
//! served) is dropped from the exposition.
use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::Duration,
};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    decision_log::DecisionLog,
    scoring::{drift::DriftMonitor, registry::ReloadStatus, ModelSet},
};

/// A gauge not set for this long is dropped: every gauge is set at each render, so only those
/// of models no longer served (their version and role) go.
pub const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// Bucket bounds of `cra_request_duration_seconds`: 10 µs to 10 s.
const DURATION_BUCKETS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the metrics on or off for the process (`--metrics`); on by default.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The process's recorder, installed on first use. `None` when the metrics are off, or when
/// another recorder was installed first (by an embedding program).
pub fn handle() -> Option<&'static PrometheusHandle> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("cra_request_duration_seconds".into()),
                    &DURATION_BUCKETS,
                )
                .ok()?
                .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .install_recorder()
                .map_err(|e| tracing::warn!("Prometheus metrics unavailable: {e}"))
                .ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(
        "cra_requests_total",
        "Calls answered, by transport, RPC or route, and status code."
    );
    describe_histogram!(
        "cra_request_duration_seconds",
        Unit::Seconds,
        "Server-side time of a call, from its arrival at the handler to its answer."
    );
    describe_counter!(
        "cra_decisions_total",
        "Decisions made, by model version, role and outcome."
    );
    describe_counter!(
        "cra_decisions_by_risk_level_total",
        "Scored decisions by risk level."
    );
    describe_counter!(
        "cra_explanations_total",
        "Explanations (TreeSHAP and reasons) computed."
    );
    describe_counter!("cra_model_reloads_total", "Model reloads, by result.");
    describe_counter!(
        "cra_auth_refusals_total",
        "Calls refused for want of a valid credential, by transport and reason."
    );
    describe_counter!(
        "cra_rate_limited_total",
        "Calls refused over their client's rate limit, by client."
    );
    describe_counter!(
        "cra_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by port."
    );
    describe_gauge!(
        "cra_model_info",
        "1 for each model loaded, with its version and role."
    );
    describe_gauge!(
        "cra_drift_available",
        "1 when the model's bundle has a drift reference, 0 when its drift is unavailable."
    );
    describe_gauge!(
        "cra_drift_window_decisions",
        "Scored decisions in the model's live drift window."
    );
    describe_gauge!(
        "cra_drift_score_psi",
        "PSI of the score (probability of default) over the drift window against training; 0.1 moderate, 0.25 significant."
    );
    describe_gauge!(
        "cra_drift_feature_psi",
        "PSI of a model feature over the drift window against training; 0.1 moderate, 0.25 significant."
    );
    describe_gauge!(
        "cra_decision_log_rows_written",
        "Rows committed to PostgreSQL since start."
    );
    describe_gauge!(
        "cra_decision_log_rows_replayed",
        "Rows replayed from the spool since start."
    );
    describe_gauge!(
        "cra_decision_log_rows_set_aside",
        "Rows PostgreSQL refused, kept aside, since start."
    );
    describe_gauge!(
        "cra_decision_log_rows_refused",
        "Decisions refused because they could not be recorded, since start."
    );
    describe_gauge!(
        "cra_decision_log_rows_lost",
        "Accepted decisions lost; must stay 0."
    );
    describe_gauge!(
        "cra_decision_log_spool_bytes",
        Unit::Bytes,
        "Bytes waiting in the spool."
    );
    describe_gauge!(
        "cra_decision_log_spool_segments",
        "Segment files in the spool."
    );
    describe_gauge!(
        "cra_decision_log_queue_depth",
        "Decisions in the in-memory queue, waiting for a writer."
    );
    describe_gauge!(
        "cra_decision_log_oldest_unrecorded_age_seconds",
        Unit::Seconds,
        "Age of the oldest accepted decision not yet committed to PostgreSQL; 0 when none waits."
    );
    describe_gauge!(
        "cra_decision_log_database_up",
        "1 when PostgreSQL takes the decision log's writes."
    );
    describe_gauge!(
        "cra_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!(
        "cra_process_open_fds",
        "Open file descriptors of the process."
    );
    describe_gauge!("cra_process_threads", "Threads of the process.");
}

/// One call answered.
pub fn request(transport: &'static str, rpc: &str, code: &str, elapsed: Duration) {
    if handle().is_none() {
        return;
    }
    HANDLES.with_borrow_mut(|h| {
        let calls = h
            .calls
            .entry(transport)
            .or_default()
            .entry_ref(rpc, || CallHandles {
                duration: histogram!(
                    "cra_request_duration_seconds",
                    "transport" => transport,
                    "rpc" => rpc.to_owned()
                ),
                by_code: HashMap::new(),
            });
        calls.duration.record(elapsed.as_secs_f64());
        calls
            .by_code
            .entry_ref(code, || {
                counter!(
                    "cra_requests_total",
                    "transport" => transport,
                    "rpc" => rpc.to_owned(),
                    "code" => code.to_owned()
                )
            })
            .increment(1);
    });
}

/// The handles of the metrics every call moves, registered on first use, per thread: a call
/// then finds its counter and histogram by two map lookups, without building the metric's key
/// (its label strings) or looking it up in the recorder's registry. Labels are bounded: the
/// transports, the gRPC methods and HTTP route templates, the status codes, the models loaded.
#[derive(Default)]
struct Handles {
    calls: HashMap<&'static str, HashMap<String, CallHandles>>,
    /// By model version, then role and outcome.
    decisions: HashMap<String, HashMap<(&'static str, &'static str), Counter>>,
    /// By client id.
    rate_limited: HashMap<String, Counter>,
}

struct CallHandles {
    duration: Histogram,
    by_code: HashMap<String, Counter>,
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

/// `entry`, for a map keyed by `String`, that allocates the key only when it is new.
trait EntryRef<V> {
    fn entry_ref(&mut self, key: &str, new: impl FnOnce() -> V) -> &mut V;
}

impl<V> EntryRef<V> for HashMap<String, V> {
    fn entry_ref(&mut self, key: &str, new: impl FnOnce() -> V) -> &mut V {
        if !self.contains_key(key) {
            self.insert(key.to_owned(), new());
        }
        self.get_mut(key).expect("inserted above")
    }
}

/// A call refused for want of a valid credential.
pub fn auth_refusal(transport: &'static str, reason: &'static str) {
    if handle().is_none() {
        return;
    }
    counter!("cra_auth_refusals_total", "transport" => transport, "reason" => reason).increment(1);
}

/// A call refused over its client's rate limit. (A client hammering past its limit makes this
/// the hottest path of all: its handle is kept like the per-call ones.)
pub fn rate_limited(client: Option<&str>) {
    if handle().is_none() {
        return;
    }
    let client = client.unwrap_or("anonymous");
    HANDLES.with_borrow_mut(|h| {
        h.rate_limited
            .entry_ref(
                client,
                || counter!("cra_rate_limited_total", "client" => client.to_owned()),
            )
            .increment(1);
    });
}

/// A TLS handshake that failed or timed out.
pub fn tls_handshake_failure(port: &'static str) {
    if handle().is_none() {
        return;
    }
    counter!("cra_tls_handshake_failures_total", "port" => port).increment(1);
}

/// `n` decisions of one model, role and outcome.
pub fn decisions(model_version: &str, role: &'static str, outcome: &'static str, n: u64) {
    if n == 0 || handle().is_none() {
        return;
    }
    HANDLES.with_borrow_mut(|h| {
        h.decisions
            .entry_ref(model_version, HashMap::new)
            .entry((role, outcome))
            .or_insert_with(|| {
                counter!(
                    "cra_decisions_total",
                    "model_version" => model_version.to_owned(),
                    "role" => role,
                    "outcome" => outcome
                )
            })
            .increment(n);
    });
}

/// Scored decisions by risk level, and the explanations computed.
pub fn risk_levels(low: u64, medium: u64, high: u64, explanations: u64) {
    if handle().is_none() {
        return;
    }
    static COUNTERS: OnceLock<([Counter; 3], Counter)> = OnceLock::new();
    let (levels, explained) = COUNTERS.get_or_init(|| {
        (
            ["low", "medium", "high"]
                .map(|level| counter!("cra_decisions_by_risk_level_total", "risk_level" => level)),
            counter!("cra_explanations_total"),
        )
    });
    for (counter, n) in levels.iter().zip([low, medium, high]) {
        if n > 0 {
            counter.increment(n);
        }
    }
    if explanations > 0 {
        explained.increment(explanations);
    }
}

/// `/proc/self`'s resident memory, open file descriptors and threads (Linux).
fn process_gauges() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next().and_then(|v| v.parse::<f64>().ok()),
            ) {
                (Some("VmRSS:"), Some(kib)) => {
                    gauge!("cra_process_resident_memory_bytes").set(kib * 1024.0)
                }
                (Some("Threads:"), Some(n)) => gauge!("cra_process_threads").set(n),
                _ => {}
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!("cra_process_open_fds").set(fds.count() as f64);
    }
}

/// The drift gauges of every live model.
fn drift_gauges(drift: &DriftMonitor, models: &ModelSet) {
    for m in drift.report(models) {
        let (version, role) = (m.model_version, m.role.as_str());
        gauge!("cra_drift_available", "model_version" => version.clone(), "role" => role)
            .set(if m.available { 1.0 } else { 0.0 });
        if !m.available {
            continue;
        }
        gauge!("cra_drift_window_decisions", "model_version" => version.clone(), "role" => role)
            .set(m.decisions as f64);
        if let Some(psi) = m.psi {
            gauge!("cra_drift_score_psi", "model_version" => version.clone(), "role" => role)
                .set(psi.score_psi);
            for (feature, v) in psi.features {
                gauge!(
                    "cra_drift_feature_psi",
                    "model_version" => version.clone(),
                    "role" => role,
                    "feature" => feature
                )
                .set(v);
            }
        }
    }
}

/// The text exposition of every metric, with the gauges read now.
pub fn render(
    models: &ModelSet,
    reloads: &ReloadStatus,
    decision_log: Option<&DecisionLog>,
    drift: Option<&DriftMonitor>,
) -> Option<String> {
    let handle = handle()?;
    counter!("cra_model_reloads_total", "result" => "ok").absolute(reloads.reloads);
    counter!("cra_model_reloads_total", "result" => "failed").absolute(reloads.refusals);
    for m in models.members() {
        gauge!("cra_model_info", "model_version" => m.bundle.version().to_owned(), "role" => m.role.as_str())
            .set(1.0);
    }
    if let Some(drift) = drift {
        drift_gauges(drift, models);
    }
    if let Some(log) = decision_log.filter(|l| l.is_enabled()) {
        let s = log.stats();
        gauge!("cra_decision_log_rows_written").set(s.written as f64);
        gauge!("cra_decision_log_rows_replayed").set(s.replayed as f64);
        gauge!("cra_decision_log_rows_set_aside").set(s.set_aside as f64);
        gauge!("cra_decision_log_rows_refused").set(s.refused as f64);
        gauge!("cra_decision_log_rows_lost").set(s.lost as f64);
        gauge!("cra_decision_log_spool_bytes").set(log.spool_bytes() as f64);
        gauge!("cra_decision_log_spool_segments").set(log.spool_segments() as f64);
        gauge!("cra_decision_log_queue_depth").set(log.queue_depth() as f64);
        gauge!("cra_decision_log_oldest_unrecorded_age_seconds")
            .set(log.oldest_unrecorded_age().as_secs_f64());
        gauge!("cra_decision_log_database_up").set(if log.status().database_up {
            1.0
        } else {
            0.0
        });
    }
    process_gauges();
    handle.run_upkeep();
    Some(handle.render())
}
