//! Per-stage server latency histograms (HdrHistogram, nanoseconds), summarised in the log at
//! shutdown and readable in-process.
use std::{sync::Mutex, time::Duration};

use hdrhistogram::Histogram;

/// Latency of unary calls (handler time: from the handler's start to the answer built) and
/// of streamed applications.
#[derive(Debug)]
pub struct Metrics {
    unary: Mutex<Histogram<u64>>,
    /// Server time per streamed application (chunk time / chunk size).
    stream_item: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds are valid")
}

fn nanos(d: Duration) -> u64 {
    (d.as_nanos() as u64).max(1)
}

/// Percentiles of one stage, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

fn summary(h: &Histogram<u64>) -> Summary {
    Summary {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            unary: Mutex::new(histogram()),
            stream_item: Mutex::new(histogram()),
        }
    }
}

impl Metrics {
    /// Records one unary call's handler time.
    pub fn record_unary(&self, total: Duration) {
        if let Ok(mut h) = self.unary.lock() {
            h.saturating_record(nanos(total));
        }
    }

    /// Records a stream chunk of `items` applications that took `took`.
    pub fn record_chunk(&self, items: usize, took: Duration) {
        if items == 0 {
            return;
        }
        if let Ok(mut h) = self.stream_item.lock() {
            let _ = h.record_n(nanos(took / items as u32), items as u64);
        }
    }

    /// The unary handler summary and the per-item stream summary.
    pub fn summaries(&self) -> [(&'static str, Summary); 2] {
        let empty = summary(&histogram());
        let t = self.unary.lock().map(|h| summary(&h)).unwrap_or(empty);
        let item = self
            .stream_item
            .lock()
            .map(|h| summary(&h))
            .unwrap_or(empty);
        [("unary.handler", t), ("stream.per_item", item)]
    }

    /// Writes the summaries to the log.
    pub fn log(&self) {
        for (stage, s) in self.summaries() {
            if s.count > 0 {
                tracing::info!(
                    stage,
                    count = s.count,
                    p50_us = s.p50_us,
                    p99_us = s.p99_us,
                    p999_us = s.p999_us,
                    max_us = s.max_us,
                    "server latency"
                );
            }
        }
    }
}
