//! Per-stage server latency histograms (HdrHistogram, nanoseconds), summarised in the log at
//! shutdown and readable in-process.
use std::{sync::Mutex, time::Duration};

use hdrhistogram::Histogram;

/// Latency of the stages of a unary call and of stream chunks.
#[derive(Debug)]
pub struct Metrics {
    unary: Mutex<UnaryStages>,
    /// Server time per streamed application (chunk time / chunk size).
    stream_item: Mutex<Histogram<u64>>,
}

#[derive(Debug)]
struct UnaryStages {
    validate: Histogram<u64>,
    score: Histogram<u64>,
    total: Histogram<u64>,
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
            unary: Mutex::new(UnaryStages {
                validate: histogram(),
                score: histogram(),
                total: histogram(),
            }),
            stream_item: Mutex::new(histogram()),
        }
    }
}

impl Metrics {
    /// Records one unary call: validation, scoring, and the whole server time.
    pub fn record_unary(&self, validate: Duration, score: Duration, total: Duration) {
        if let Ok(mut s) = self.unary.lock() {
            s.validate.saturating_record(nanos(validate));
            s.score.saturating_record(nanos(score));
            s.total.saturating_record(nanos(total));
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

    /// Unary validate, score and total summaries, and the per-item stream summary.
    pub fn summaries(&self) -> [(&'static str, Summary); 4] {
        let empty = summary(&histogram());
        let (v, s, t) = self
            .unary
            .lock()
            .map(|u| (summary(&u.validate), summary(&u.score), summary(&u.total)))
            .unwrap_or((empty, empty, empty));
        let item = self
            .stream_item
            .lock()
            .map(|h| summary(&h))
            .unwrap_or(empty);
        [
            ("unary.validate", v),
            ("unary.score", s),
            ("unary.total", t),
            ("stream.per_item", item),
        ]
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
