//! Shadow scoring, off the response path.
//!
//! A live decision that has been recorded hands its application to the shadow thread through
//! a bounded queue and returns at once: a shadow never delays an answer and never fails one.
//! The thread scores the applications with every shadow model of the set the live call used
//! and records each shadow decision as its own row, linked to the live one (`shadow_of`).
//!
//! When the queue is full (shadows slower than live traffic), the work is dropped and counted,
//! never waited for; a shadow that panics or whose rows cannot be recorded is counted too.
use std::{
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
    time::{Instant, SystemTime},
};

use cra_model::{Application, ApplicationInput};
use uuid::Uuid;

use super::{
    record::{DecisionRecord, DecisionRecorder, Outcome, Rpc},
    registry::ModelSet,
    CallContext,
};

/// Batches of shadow work waiting before new ones are dropped.
const QUEUE: usize = 4096;

/// What happened to shadow work since start.
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Shadow decisions made (one per application and shadow model).
    pub scored: AtomicU64,
    /// Applications not shadowed because the queue was full.
    pub dropped: AtomicU64,
    /// Shadow decisions that could not be recorded.
    pub unrecorded: AtomicU64,
    /// Shadow batches that panicked.
    pub failed: AtomicU64,
}

/// One live call's scored applications: `(live decision id, offset in the call, input as
/// received, validated application)`.
type Work = Vec<(Uuid, u64, ApplicationInput, Application)>;

struct Job {
    set: Arc<ModelSet>,
    request_id: String,
    rpc: Rpc,
    peer: Option<SocketAddr>,
    client_id: Option<String>,
    received_at: SystemTime,
    trace_id: Option<super::TraceId>,
    work: Work,
}

/// The shadow thread and its queue.
#[derive(Debug)]
pub struct ShadowRunner {
    tx: SyncSender<Job>,
    stats: Arc<ShadowStats>,
}

impl ShadowRunner {
    /// Starts the shadow thread; it ends when the runner is dropped and its queue is empty.
    pub fn start(recorder: Option<Arc<dyn DecisionRecorder>>) -> ShadowRunner {
        ShadowRunner::start_with_drift(recorder, None)
    }

    /// [`Self::start`], the shadow decisions also going into the shadows' drift windows.
    pub fn start_with_drift(
        recorder: Option<Arc<dyn DecisionRecorder>>,
        drift: Option<Arc<super::drift::DriftMonitor>>,
    ) -> ShadowRunner {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let stats = Arc::new(ShadowStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("cra-shadow".into())
            .spawn(move || {
                for job in rx {
                    let n = job.work.len() as u64 * job.set.shadows.len() as u64;
                    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        run(&job, recorder.as_deref(), drift.as_deref(), &thread_stats)
                    }));
                    if ran.is_err() {
                        thread_stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            request_id = %job.request_id,
                            "shadow scoring panicked; {n} shadow decisions lost (live answers unaffected)"
                        );
                    }
                }
            })
            .expect("spawning the shadow thread");
        ShadowRunner { tx, stats }
    }

    pub fn stats(&self) -> &ShadowStats {
        &self.stats
    }

    /// Queues `work` for the shadows of `set`, or drops it (counted) when the queue is full.
    pub fn submit(&self, set: &Arc<ModelSet>, ctx: &CallContext<'_>, work: Work) {
        if set.shadows.is_empty() || work.is_empty() {
            return;
        }
        let n = work.len() as u64;
        let job = Job {
            set: set.clone(),
            request_id: ctx.request_id.to_owned(),
            rpc: ctx.rpc,
            peer: ctx.peer,
            trace_id: ctx.trace_id,
            client_id: ctx.caller.client_id().map(str::to_owned),
            received_at: ctx.received_at,
            work,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self.stats.dropped.fetch_add(n, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "shadow models are behind live traffic: shadow work is being dropped (counted in GetModelInfo)"
                    );
                }
            }
        }
    }
}

/// Scores one job with every shadow model and records the decisions.
fn run(
    job: &Job,
    recorder: Option<&dyn DecisionRecorder>,
    drift: Option<&super::drift::DriftMonitor>,
    stats: &ShadowStats,
) {
    let apps: Vec<Application> = job.work.iter().map(|w| w.3).collect();
    for (k, shadow) in job.set.shadows.iter().enumerate() {
        let started = Instant::now();
        let decisions = shadow.bundle.score_many(&apps);
        let decided_at = SystemTime::now();
        let latency = started.elapsed();
        stats
            .scored
            .fetch_add(decisions.len() as u64, Ordering::Relaxed);
        if let Some(drift) = drift {
            drift.record_shadow(
                &job.set,
                k,
                apps.iter()
                    .zip(decisions.iter().map(|d| d.probability_default)),
            );
        }
        let Some(recorder) = recorder else { continue };
        let records: Vec<DecisionRecord<'_>> = job
            .work
            .iter()
            .zip(&decisions)
            .map(
                |((live_id, offset, input, application), decision)| DecisionRecord {
                    decision_id: Uuid::now_v7(),
                    request_id: &job.request_id,
                    rpc: job.rpc.advanced(*offset),
                    peer: job.peer,
                    client_id: job.client_id.as_deref(),
                    received_at: job.received_at,
                    decided_at,
                    latency,
                    model: &shadow.bundle,
                    role: shadow.role,
                    shadow_of: (!live_id.is_nil()).then_some(*live_id),
                    input: Some(input),
                    outcome: Outcome::Scored {
                        application,
                        decision,
                    },
                    explanation: None,
                    trace_id: job.trace_id,
                },
            )
            .collect();
        if let Err(e) = recorder.record_chunk(&records) {
            stats
                .unrecorded
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                model_version = shadow.bundle.version(),
                "shadow decisions not recorded (live answers unaffected): {e}"
            );
        }
    }
}
