//! The asynchronous, batched writer of the decision log and its handle, [`DecisionLog`].
//!
//! `record()` appends each decision, encoded once as a row of PostgreSQL's binary COPY format,
//! to the write-ahead journal and to a bounded in-memory queue of such frames, and never waits
//! for the database. A collector task cuts the queue into batches for `pool_size` writer tasks,
//! each with its own connection, which stream the rows as they are.
//! A batch that PostgreSQL does not take in time goes to the on-disk spool; a maintenance
//! task watches the database, replays the spool when it is reachable, and keeps partitions
//! created ahead. When the queue is full, the record's journal copy stays in the spool, to be
//! replayed. When the journal cannot take a record (spool full, no prepared segment, a failed
//! fsync, an oversized record) `record()` returns [`DecisionLogError::Unavailable`]: no decision is
//! acknowledged without its journal copy. A thread of its own fsyncs the journal every
//! `spool_fsync_interval`, whatever the database does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::db::{self, DbError, ErrorClass, Writer};
use super::row::DecisionRow;
use super::spool::{Frames, Spool, SpoolConfig, SpoolError};
use crate::config::DatabaseUrl;

/// Everything the decision log needs to run.
#[derive(Debug, Clone)]
pub struct DecisionLogConfig {
    pub database_url: DatabaseUrl,
    /// Writer connections (one more is used for replay and upkeep).
    pub pool_size: usize,
    /// Most records per COPY.
    pub batch_size: usize,
    /// Longest a record waits in the queue before its batch is written.
    pub flush_interval: Duration,
    /// Records held in memory before `record()` spills to the spool.
    pub queue_capacity: usize,
    pub spool_dir: PathBuf,
    /// Cap on the spool's total size on disk.
    pub spool_max_bytes: u64,
    /// Size at which a spool segment is sealed.
    pub spool_segment_bytes: u64,
    /// How often the journal is fsync'd: the most a power loss can lose of decisions not yet
    /// in PostgreSQL.
    pub spool_fsync_interval: Duration,
    /// Fail start-up when PostgreSQL is unreachable instead of spooling.
    pub require_database: bool,
    pub connect_timeout: Duration,
    /// A batch write slower than this counts as a failure; the batch is spooled.
    pub write_timeout: Duration,
    /// How often an unreachable database is retried and the spool replayed; after each
    /// further failure the wait doubles, up to `retry_max_interval`.
    pub retry_interval: Duration,
    /// Longest wait between two attempts while PostgreSQL keeps failing transiently.
    pub retry_max_interval: Duration,
}

impl DecisionLogConfig {
    /// Defaults for everything but the URL and the spool directory.
    pub fn new(database_url: DatabaseUrl, spool_dir: PathBuf) -> DecisionLogConfig {
        DecisionLogConfig {
            database_url,
            pool_size: 2,
            batch_size: 2048,
            flush_interval: Duration::from_millis(50),
            queue_capacity: 65_536,
            spool_dir,
            spool_max_bytes: 1 << 30,
            spool_segment_bytes: 16 << 20,
            spool_fsync_interval: Duration::from_secs(1),
            require_database: false,
            connect_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
            retry_max_interval: Duration::from_secs(30),
        }
    }
}

/// What a client is told when its decision cannot be recorded: nothing of the spool's
/// internals (the details are logged).
pub const UNAVAILABLE_MESSAGE: &str =
    "the decision log cannot record this decision right now; retry later";

/// Failure modes of the decision log.
#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    /// The journal cannot take the record: the decision must not be made. The message
    /// ([`UNAVAILABLE_MESSAGE`]) is what a client may see; the detail it holds (paths, sizes)
    /// is for the logs only.
    #[error("{}", UNAVAILABLE_MESSAGE)]
    Unavailable(String),
    #[error("the decision log cannot start: {0}")]
    Database(#[from] DbError),
    #[error("the decision log spool cannot be used: {0}")]
    Spool(#[from] SpoolError),
    #[error("invalid decision log configuration: {0}")]
    Config(String),
}

/// What readiness needs to know about the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionLogStatus {
    /// New decisions can be recorded (false: the server must answer UNAVAILABLE).
    pub accepting: bool,
    /// PostgreSQL takes writes: false from a transient failure (connection lost, read-only
    /// standby, disk full, timeout…) until a write or a replay succeeds again.
    pub database_up: bool,
}

/// Counters since start, for tests, benchmarks and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionLogStats {
    /// Records `record()` accepted (queue or spool).
    pub accepted: u64,
    /// Records `record()` refused with `Unavailable`.
    pub refused: u64,
    /// Records `record()` sent straight to the spool because the queue was full.
    pub overflowed: u64,
    /// Records written to the spool by the writers (database down or slow).
    pub spooled: u64,
    /// Rows committed to PostgreSQL (new rows only).
    pub written: u64,
    /// Records read back from the spool and committed (new or already present).
    pub replayed: u64,
    /// Records accepted but then lost. Always 0: every accepted record is in the journal
    /// first (kept so that checks of it keep their meaning).
    pub lost: u64,
    /// Rows PostgreSQL refused (a data error), kept in `decisions_set_aside` (or, failing
    /// that, in a file under `<spool>/set-aside/`) instead of `decisions`.
    pub set_aside: u64,
    /// Spool segments set aside (renamed `corrupt-<seq>.spool`) because they held corrupt
    /// bytes; their valid records were replayed.
    pub segments_set_aside: u64,
    /// Corrupt bytes skipped in replayed segments.
    pub corrupt_bytes: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    overflowed: AtomicU64,
    spooled: AtomicU64,
    written: AtomicU64,
    replayed: AtomicU64,
    lost: AtomicU64,
    set_aside: AtomicU64,
    segments_set_aside: AtomicU64,
    corrupt_bytes: AtomicU64,
}

struct Shared {
    cfg: DecisionLogConfig,
    spool: Arc<Spool>,
    /// `record()` refuses beyond this spool size, keeping room for what is already queued.
    soft_limit: u64,
    db_up: AtomicBool,
    schema_ready: AtomicBool,
    /// The last journal append failed; cleared by a success, a replay, or the fsync thread
    /// once the spool is below 15/16 of `soft_limit` again.
    spool_broken: AtomicBool,
    /// When a refusal was last logged (ms since `started`), to log at most one a second.
    refusal_logged_ms: AtomicU64,
    started: Instant,
    refusing: AtomicBool,
    status: watch::Sender<DecisionLogStatus>,
    counters: Counters,
    /// Rate limit of the warnings about transient database failures.
    warned: Mutex<WarnLimit>,
}

/// The last warning about a transient database failure: at most one per
/// [`TRANSIENT_WARN_EVERY`] for the same SQLSTATE, with a count of those left out.
#[derive(Default)]
struct WarnLimit {
    at: Option<Instant>,
    sqlstate: Option<String>,
    suppressed: u64,
}

const TRANSIENT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Decisions waiting for PostgreSQL: their frames, whose journal copy is in the spool, with
/// how many went to each journal segment.
#[derive(Default)]
struct Batch {
    journaled: Frames,
    segs: Vec<(u64, u64)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.journaled.len()
    }
}

/// The in-memory queue between `record()` and the collector.
struct Queue {
    batch: Mutex<QueueState>,
    /// Wakes the collector when the queue stops being empty.
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    pending: Batch,
    /// Set once the collector has taken its last batch (shutdown): records then stay in the spool.
    closed: bool,
}

struct Running {
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Option<Vec<JoinHandle<()>>>>,
    /// Stops the fsync thread (dropping it does too).
    stop_fsync: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    fsync_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle to the decision log; cheap to clone. See the module docs.
#[derive(Clone)]
pub struct DecisionLog {
    inner: Option<Arc<Running>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("DecisionLog(disabled)"),
            Some(r) => f
                .debug_struct("DecisionLog")
                .field("database_url", &r.shared.cfg.database_url)
                .field("status", &*r.shared.status.borrow())
                .finish(),
        }
    }
}

impl DecisionLog {
    /// A log that records nothing (`--audit off`, for benchmarks only).
    pub fn disabled() -> DecisionLog {
        DecisionLog { inner: None }
    }

    /// True unless this is [`DecisionLog::disabled`].
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Opens the spool, connects to PostgreSQL (creating the database and applying the
    /// migrations), and starts the background tasks, which replay any spooled records.
    /// An unreachable database is an error only with `require_database`; otherwise records
    /// are spooled until it is reachable.
    pub async fn start(cfg: DecisionLogConfig) -> Result<DecisionLog, DecisionLogError> {
        if cfg.pool_size == 0 || cfg.batch_size == 0 || cfg.queue_capacity == 0 {
            return Err(DecisionLogError::Config(
                "pool size, batch size and queue capacity must be at least 1".into(),
            ));
        }
        if cfg.spool_fsync_interval.is_zero() {
            return Err(DecisionLogError::Config(
                "the spool fsync interval must be longer than zero (e.g. 1s)".into(),
            ));
        }
        let spool_cfg = SpoolConfig {
            dir: cfg.spool_dir.clone(),
            max_bytes: cfg.spool_max_bytes,
            segment_bytes: cfg.spool_segment_bytes.max(4096),
        };
        // Opening prepares the first segments (megabytes of zeros): off the async threads.
        let spool = match tokio::task::spawn_blocking(move || Spool::open(spool_cfg)).await {
            Ok(r) => Arc::new(r?),
            Err(e) => panic!("spool open task panicked: {e}"),
        };
        let pending = spool.bytes();

        let first = match connect_and_migrate(&cfg).await {
            Ok(w) => Some(w),
            Err(e) if cfg.require_database => return Err(e.into()),
            Err(e) => {
                tracing::warn!(
                    database_url = %cfg.database_url,
                    spool_dir = %cfg.spool_dir.display(),
                    error = %e,
                    "PostgreSQL is unreachable: serving anyway; decisions are spooled to disk \
                     and replayed once it is back (use --require-database to fail instead)"
                );
                None
            }
        };
        if pending > 0 {
            tracing::info!(
                bytes = pending,
                "found spooled decisions from an earlier run; replaying them"
            );
        }

        // Room for everything already accepted but not yet spooled: the queue, the batches in
        // flight, at a generous per-record size.
        let reserve = ((cfg.queue_capacity + (cfg.pool_size + 2) * cfg.batch_size) as u64 * 512)
            .min(cfg.spool_max_bytes / 2);
        let db_up = first.is_some();
        let (status, _) = watch::channel(DecisionLogStatus {
            accepting: true,
            database_up: db_up,
        });
        let shared = Arc::new(Shared {
            soft_limit: cfg.spool_max_bytes - reserve,
            spool,
            db_up: AtomicBool::new(db_up),
            schema_ready: AtomicBool::new(db_up),
            spool_broken: AtomicBool::new(false),
            refusal_logged_ms: AtomicU64::new(0),
            started: Instant::now(),
            refusing: AtomicBool::new(false),
            status,
            counters: Counters::default(),
            warned: Mutex::new(WarnLimit::default()),
            cfg,
        });
        shared.refresh();

        let queue = Arc::new(Queue {
            batch: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        });
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(shared.cfg.pool_size);
        let batch_rx = Arc::new(tokio::sync::Mutex::new(batch_rx));
        let (shutdown, shutdown_rx) = watch::channel(false);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(collector(
            shared.clone(),
            queue.clone(),
            batch_tx,
            shutdown_rx.clone(),
        )));
        for _ in 0..shared.cfg.pool_size {
            tasks.push(tokio::spawn(worker(shared.clone(), batch_rx.clone())));
        }
        tasks.push(tokio::spawn(maintenance(
            shared.clone(),
            first,
            shutdown_rx,
        )));
        let (stop_fsync, stop_rx) = std::sync::mpsc::channel();
        let weak = Arc::downgrade(&shared);
        let fsync_thread = std::thread::Builder::new()
            .name("cra-spool-fsync".into())
            .spawn(move || fsync_loop(weak, stop_rx))
            .map_err(|e| {
                DecisionLogError::Config(format!("cannot start the spool fsync thread: {e}"))
            })?;

        Ok(DecisionLog {
            inner: Some(Arc::new(Running {
                queue,
                shared,
                shutdown,
                tasks: Mutex::new(Some(tasks)),
                stop_fsync: Mutex::new(Some(stop_fsync)),
                fsync_thread: Mutex::new(Some(fsync_thread)),
            })),
        })
    }

    /// Records a decision without waiting. Its row is first appended to the spool's current
    /// segment (the write-ahead journal: a copy into the segment's memory mapping, so it
    /// survives a crash of the process), then queued for PostgreSQL; the segment is deleted only once its records are
    /// committed. `Unavailable` means the decision cannot be recorded and must not be made.
    pub fn record(&self, rec: DecisionRow) -> Result<(), DecisionLogError> {
        self.record_many(vec![rec])
    }

    /// Records several decisions, all or none (see [`DecisionLog::record`]).
    pub fn record_many(&self, recs: Vec<DecisionRow>) -> Result<(), DecisionLogError> {
        self.record_frames(&Frames::of_records(&recs))
    }

    /// Records the decisions whose rows `frames` holds, all or none: one journal append, then
    /// the queue if it has room for all of them (else they stay in the spool, to be replayed).
    /// `Unavailable` means none was recorded: the journal could not take them.
    pub fn record_frames(&self, frames: &Frames) -> Result<(), DecisionLogError> {
        let Some(run) = &self.inner else {
            return Ok(());
        };
        if frames.is_empty() {
            return Ok(());
        }
        let s = &run.shared;
        let n = frames.len() as u64;
        let placed = match s.spool.journal(frames, s.soft_limit) {
            Ok(p) => {
                if s.spool_broken.load(Ordering::Relaxed) {
                    s.spool_broken.store(false, Ordering::Relaxed);
                    s.refresh();
                }
                p
            }
            Err(e) => {
                // No journal copy, no decision: a crash would lose it.
                s.spool_broken.store(true, Ordering::Relaxed);
                s.refresh();
                s.counters.refused.fetch_add(n, Ordering::Relaxed);
                s.log_refusal(n, &e);
                return Err(DecisionLogError::Unavailable(format!(
                    "the spool refused the journal copy of {n} record(s): {e}"
                )));
            }
        };
        let queued = {
            let mut q = run.queue.batch.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed || q.pending.len() + frames.len() > s.cfg.queue_capacity {
                false
            } else {
                let was_empty = q.pending.len() == 0;
                let b = &mut q.pending;
                b.journaled.extend(frames);
                for (seq, k) in placed.iter() {
                    match b.segs.last_mut() {
                        Some((last, m)) if *last == seq => *m += k,
                        _ => b.segs.push((seq, k)),
                    }
                }
                if was_empty {
                    run.queue.ready.notify_one();
                }
                true
            }
        };
        if !queued {
            // Queue full (or closed): the journal copy stays in the spool and is replayed.
            for (seq, k) in placed.iter() {
                s.spool.resolve(seq, k, false);
            }
            s.counters.overflowed.fetch_add(n, Ordering::Relaxed);
        }
        s.counters.accepted.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// The current status (readiness: `accepting`).
    pub fn status(&self) -> DecisionLogStatus {
        match &self.inner {
            None => DecisionLogStatus {
                accepting: true,
                database_up: true,
            },
            Some(r) => *r.shared.status.borrow(),
        }
    }

    /// True while decisions can be recorded; readiness should follow it.
    pub fn is_healthy(&self) -> bool {
        self.status().accepting
    }

    /// A watch on the status, for a readiness reporter; `None` when the log is disabled.
    pub fn subscribe(&self) -> Option<watch::Receiver<DecisionLogStatus>> {
        self.inner.as_ref().map(|r| r.shared.status.subscribe())
    }

    /// Counters since start.
    pub fn stats(&self) -> DecisionLogStats {
        let Some(r) = &self.inner else {
            return DecisionLogStats::default();
        };
        let c = &r.shared.counters;
        DecisionLogStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            overflowed: c.overflowed.load(Ordering::Relaxed),
            spooled: c.spooled.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            set_aside: c.set_aside.load(Ordering::Relaxed),
            segments_set_aside: c.segments_set_aside.load(Ordering::Relaxed),
            corrupt_bytes: c.corrupt_bytes.load(Ordering::Relaxed),
        }
    }

    /// True while PostgreSQL is up but behind: the spool holds more than a quarter of its cap.
    /// Streams pause on it (see `DecisionRecorder::backlogged`); during an outage it is false,
    /// so the spool absorbs decisions up to its cap.
    pub fn backlogged(&self) -> bool {
        self.inner.as_ref().is_some_and(|r| {
            r.shared.spool.bytes() > r.shared.cfg.spool_max_bytes / 4
                && r.shared.status.borrow().database_up
        })
    }

    /// Bytes waiting in the spool.
    pub fn spool_bytes(&self) -> u64 {
        self.inner.as_ref().map_or(0, |r| r.shared.spool.bytes())
    }

    /// Segment files in the spool.
    pub fn spool_segments(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.shared.spool.segments())
    }

    /// Decisions in the in-memory queue, waiting for a writer.
    pub fn queue_depth(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| {
            r.queue
                .batch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending
                .len()
        })
    }

    /// How long the oldest decision not yet committed to PostgreSQL has waited (zero when
    /// all are committed).
    pub fn oldest_unrecorded_age(&self) -> Duration {
        self.inner
            .as_ref()
            .and_then(|r| r.shared.spool.oldest_unrecorded_age())
            .unwrap_or_default()
    }

    /// Flushes the queue to PostgreSQL or, failing that, leaves it to the spool, stops the
    /// background tasks and closes the spool (releasing its directory's lock). Records passed
    /// to `record()` afterwards are refused with `Unavailable`.
    pub async fn shutdown(&self) {
        let Some(run) = &self.inner else { return };
        let _ = run.shutdown.send(true);
        let tasks = run.tasks.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in tasks.into_iter().flatten() {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a decision log task failed");
            }
        }
        // The final fsync, sealing, deleting what is committed, releasing the directory's
        // lock: blocking work, off the async threads.
        let spool = run.shared.spool.clone();
        let closed = tokio::task::spawn_blocking(move || {
            if let Err(e) = spool.sync() {
                tracing::error!(error = %e, "final fsync of the spool failed");
            }
            spool.close();
        })
        .await;
        if let Err(e) = closed {
            tracing::error!(error = %e, "closing the spool failed");
        }
        run.stop_fsync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let fsync_thread = run
            .fsync_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = fsync_thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        run.shared.refresh();
        let st = self.stats();
        tracing::info!(
            written = st.written,
            spooled = st.spooled,
            overflowed = st.overflowed,
            replayed = st.replayed,
            lost = st.lost,
            set_aside = st.set_aside,
            spool_bytes = run.shared.spool.bytes(),
            "decision log stopped"
        );
    }
}

async fn connect_and_migrate(cfg: &DecisionLogConfig) -> Result<Writer, DbError> {
    let mut client = db::connect(&cfg.database_url, cfg.connect_timeout).await?;
    db::migrate(&mut client).await?;
    Writer::new(client).await
}

impl Shared {
    /// Recomputes `refusing` and publishes the status when it changed. Decisions are
    /// accepted only while the journal can take them, whether PostgreSQL is up or not.
    fn refresh(&self) {
        let db_up = self.db_up.load(Ordering::SeqCst);
        let spool_ok = self.spool.bytes() < self.soft_limit
            && !self.spool_broken.load(Ordering::SeqCst)
            && self.spool.is_healthy()
            && self.spool.prepare_failure().is_none()
            && !self.spool.is_closed();
        let refusing = !spool_ok;
        self.refusing.store(refusing, Ordering::SeqCst);
        let new = DecisionLogStatus {
            accepting: !refusing,
            database_up: db_up,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// Logs a refusal with its detail (paths, sizes: for the logs, never for clients), at
    /// most once a second, with how many were refused since.
    fn log_refusal(&self, n: u64, e: &SpoolError) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.refusal_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 1000)
            && self
                .refusal_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %e,
                records = n,
                refused_total = self.counters.refused.load(Ordering::Relaxed),
                "the journal cannot take decisions: they are refused (UNAVAILABLE)"
            );
        }
    }

    /// Clears `spool_broken` once the spool has room again (below 15/16 of the soft limit),
    /// so that readiness comes back without waiting for a decision to succeed.
    fn recheck_spool(&self) {
        if self.spool_broken.load(Ordering::SeqCst)
            && self.spool.bytes() < self.soft_limit - self.soft_limit / 16
            && self.spool.is_healthy()
            && self.spool.prepare_failure().is_none()
        {
            self.spool_broken.store(false, Ordering::SeqCst);
        }
        self.refresh();
    }

    /// A transient failure: `database_up` goes false (decisions keep being journaled in the
    /// spool, replayed with backoff), with a warning naming the SQLSTATE, rate-limited.
    fn mark_db_down(&self, why: &DbError) {
        let was_up = self.db_up.swap(false, Ordering::SeqCst);
        let sqlstate = why.sqlstate().map(str::to_owned);
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let due = was_up
            || w.sqlstate != sqlstate
            || w.at.is_none_or(|t| t.elapsed() >= TRANSIENT_WARN_EVERY);
        if due {
            tracing::warn!(
                sqlstate = sqlstate.as_deref().unwrap_or("-"),
                error = %why.summary(),
                similar_failures_not_logged = w.suppressed,
                "PostgreSQL cannot take writes now: decisions are journaled in the spool and \
                 retried with backoff until it is back"
            );
            *w = WarnLimit {
                at: Some(Instant::now()),
                sqlstate,
                suppressed: 0,
            };
        } else {
            w.suppressed += 1;
        }
        drop(w);
        self.refresh();
    }

    /// A write succeeded: PostgreSQL takes writes again.
    fn mark_db_up(&self) {
        if !self.db_up.swap(true, Ordering::SeqCst) {
            tracing::info!(
                "PostgreSQL takes writes again: writing decisions and replaying the spool"
            );
            self.refresh();
        }
    }

    /// Writes `frames` (never offered before, or a replay). When PostgreSQL refuses rows (a
    /// [`ErrorClass::Data`] error), the batch is split in halves, recursively down to single
    /// rows: every row it takes is committed and each row it refuses is set aside (see
    /// [`Shared::set_aside`]), so one bad row never holds back the others. Returns the rows
    /// new in `decisions`; an error is transient and means the rows must be retried later
    /// (some may be stored already: the retry is idempotent).
    async fn write_or_set_aside(&self, w: &mut Writer, frames: &Frames) -> Result<u64, DbError> {
        let timeout = self.cfg.write_timeout;
        let first = match w.write_new(frames, timeout).await {
            Ok(n) => return Ok(n),
            Err(e) if e.class() == ErrorClass::Data => e,
            Err(e) => return Err(e),
        };
        tracing::warn!(
            records = frames.len(),
            sqlstate = first.sqlstate().unwrap_or("-"),
            error = %first.summary(),
            "PostgreSQL refuses rows of a decision batch: splitting it to set aside only those"
        );
        let mut written = 0;
        // Runs known to fail (with their error) or not yet tried; the first half on top.
        let mut todo: Vec<(Frames, Option<DbError>)> = vec![(frames.clone(), Some(first))];
        while let Some((run, known)) = todo.pop() {
            let err = match known {
                Some(e) => e,
                None => match w.write_new(&run, timeout).await {
                    Ok(n) => {
                        written += n;
                        continue;
                    }
                    Err(e) if e.class() == ErrorClass::Data => e,
                    Err(e) => return Err(e),
                },
            };
            if run.len() <= 1 {
                if let Some(row) = run.rows().next() {
                    self.set_aside(w, row, &err).await?;
                }
                continue;
            }
            let mut halves = run.chunks(run.len().div_ceil(2));
            while let Some(h) = halves.pop() {
                todo.push((h, None));
            }
        }
        Ok(written)
    }

    /// Keeps a row PostgreSQL refused out of `decisions`, without losing it: in
    /// `decisions_set_aside`, or, when that insert fails too while the connection is up, in a
    /// file `<spool>/set-aside/<decision_id>-<sqlstate>.copyrow`. Logs the decision id, the
    /// SQLSTATE and PostgreSQL's message, never the row.
    async fn set_aside(&self, w: &Writer, row: &[u8], why: &DbError) -> Result<(), DbError> {
        let id = super::copy_row::decision_id_of(row);
        let id_text = id.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
        let sqlstate = why.sqlstate().unwrap_or("-").to_owned();
        let kept_in = match w.set_aside(row, why, self.cfg.write_timeout).await {
            Ok(_) => "the decisions_set_aside table".to_owned(),
            Err(e) if w.is_closed() || matches!(e, DbError::Timeout(_)) => return Err(e),
            Err(e) => {
                let dir = self.cfg.spool_dir.join("set-aside");
                let path = dir.join(format!(
                    "{id_text}-{sqlstate}-{}.copyrow",
                    uuid::Uuid::new_v4().simple()
                ));
                let row = row.to_vec();
                let p = path.clone();
                let wrote = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    use std::io::Write;
                    std::fs::create_dir_all(&dir)?;
                    let mut f = std::fs::File::create(&p)?;
                    f.write_all(&row)?;
                    f.sync_all()?;
                    std::fs::File::open(&dir)?.sync_all()
                })
                .await
                .unwrap_or_else(|j| Err(std::io::Error::other(j.to_string())));
                if let Err(source) = wrote {
                    return Err(DbError::SetAsideFile { path, source });
                }
                tracing::error!(error = %e.summary(), "cannot insert into decisions_set_aside; keeping the refused row in a file instead");
                path.display().to_string()
            }
        };
        self.counters.set_aside.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            decision_id = %id_text,
            sqlstate = %sqlstate,
            error = %why.summary(),
            kept_in = %kept_in,
            "PostgreSQL refused a decision row: set aside (the rest of its batch is stored)"
        );
        Ok(())
    }

    async fn open_writer(&self) -> Result<Writer, DbError> {
        let client = db::connect(&self.cfg.database_url, self.cfg.connect_timeout).await?;
        Writer::new(client).await
    }

    /// Journaled records of a batch are resolved: committed, or left to the spool's replay.
    fn resolve(&self, batch: &Batch, committed: bool) {
        for &(seq, n) in &batch.segs {
            self.spool.resolve(seq, n, committed);
        }
    }

    /// Gets a batch into PostgreSQL or leaves it to the spool's replay. Its records are in the
    /// journal already: when PostgreSQL cannot take them they are fsync'd (a failed fsync makes
    /// the spool refuse new records until one succeeds) and left there for the replay.
    async fn deliver(self: &Arc<Self>, conn: &mut Option<Writer>, batch: Batch) {
        if self.write_to_db(conn, &batch.journaled).await {
            self.resolve(&batch, true);
            return;
        }
        let in_journal = batch.journaled.len() as u64;
        if in_journal > 0 {
            let spool = self.spool.clone();
            let synced = tokio::task::spawn_blocking(move || spool.sync()).await;
            if !matches!(synced, Ok(Ok(()))) {
                tracing::error!(
                    "fsync of the spool failed; journaled decisions wait in the page cache, \
                     and no new decision is taken until an fsync succeeds"
                );
            }
            self.resolve(&batch, false);
            self.counters
                .spooled
                .fetch_add(in_journal, Ordering::Relaxed);
            self.refresh();
        }
    }

    /// One attempt to write a batch to PostgreSQL (if it is thought up); true when committed.
    async fn write_to_db(self: &Arc<Self>, conn: &mut Option<Writer>, batch: &Frames) -> bool {
        if !self.db_up.load(Ordering::SeqCst) {
            return false;
        }
        if conn.as_ref().is_none_or(Writer::is_closed) {
            match self.open_writer().await {
                Ok(w) => *conn = Some(w),
                Err(e) => {
                    *conn = None;
                    self.mark_db_down(&e);
                    return false;
                }
            }
        }
        let Some(w) = conn.as_mut() else { return false };
        match self.write_or_set_aside(w, batch).await {
            Ok(n) => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Transient (rows refused by PostgreSQL are set aside, not failed): the batch
                // waits in the spool; the maintenance task retries it with backoff.
                *conn = None;
                self.mark_db_down(&e);
                false
            }
        }
    }
}

/// Cuts the queue into batches of about `batch_size` records, at least every flush interval.
async fn collector(
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    batch_tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    let size = shared.cfg.batch_size;
    // How often a filling batch is looked at: a tenth of the flush interval, 1 to 10 ms.
    let look =
        (shared.cfg.flush_interval / 10).clamp(Duration::from_millis(1), Duration::from_millis(10));
    let queued = || {
        queue
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len()
    };
    let mut closing = false;
    loop {
        // Wait for the first record (or shutdown), then let the batch fill until it is full or
        // the deadline passes, looking every few milliseconds rather than waking on each record:
        // one wake-up per record would cost the scoring threads more than the records themselves.
        if !closing && queued() == 0 {
            tokio::select! {
                _ = queue.ready.notified() => {}
                _ = shutdown.wait_for(|s| *s) => closing = true,
            }
        }
        let deadline = tokio::time::Instant::now() + shared.cfg.flush_interval;
        while !closing && queued() < size {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.min(now + look)) => {}
                _ = shutdown.wait_for(|s| *s) => closing = true,
            }
        }
        let batch = {
            let mut q = queue.batch.lock().unwrap_or_else(|p| p.into_inner());
            if closing {
                // Whatever arrives from now on stays in the spool, to be replayed.
                q.closed = true;
            }
            std::mem::take(&mut q.pending)
        };
        if batch.len() > 0 && batch_tx.send(batch).await.is_err() {
            tracing::error!("decision log writers are gone");
            break;
        }
        if closing {
            break;
        }
    }
}

/// Writes batches with its own connection.
async fn worker(shared: Arc<Shared>, batches: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>) {
    let mut conn: Option<Writer> = None;
    loop {
        let batch = batches.lock().await.recv().await;
        let Some(batch) = batch else { break };
        shared.deliver(&mut conn, batch).await;
    }
}

/// Watches the database, applies migrations once it is reachable, replays the spool, and
/// keeps partitions created ahead. (The journal's fsync has a thread of its own, [`fsync_loop`],
/// so that it never waits behind a long replay.)
async fn maintenance(
    shared: Arc<Shared>,
    mut conn: Option<Writer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(shared.cfg.retry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partitions_checked = Instant::now();
    // While PostgreSQL fails transiently, attempts back off: the wait doubles after each
    // failure, from `retry_interval` up to `retry_max_interval`.
    let mut backoff = Backoff::new(shared.cfg.retry_interval, shared.cfg.retry_max_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if !backoff.due() {
            continue;
        }
        // (Re)connect and confirm the database answers.
        if conn.as_ref().is_none_or(Writer::is_closed) {
            conn = match maintenance_connect(&shared).await {
                Ok(w) => Some(w),
                Err(e) => {
                    shared.mark_db_down(&e);
                    backoff.failed();
                    continue;
                }
            };
        }
        let Some(w) = conn.as_mut() else { continue };
        if !shared.db_up.load(Ordering::SeqCst) {
            // Answering is not enough: a standby, or a database set read-only, answers too.
            if let Err(e) = w.check_writable(shared.cfg.connect_timeout).await {
                conn = None;
                shared.mark_db_down(&e);
                backoff.failed();
                continue;
            }
        }
        if partitions_checked.elapsed() > Duration::from_secs(3600) {
            partitions_checked = Instant::now();
            if let Err(e) = db::ensure_partitions(w.client()).await {
                tracing::warn!(error = %e.summary(), "creating decision log partitions ahead failed");
            }
        }
        // The replay is the write probe: `database_up` comes back with its first commit (or
        // when there was nothing to replay).
        match replay(&shared, w, &shutdown).await {
            Ok(()) => {
                shared.mark_db_up();
                backoff.succeeded();
            }
            Err(e) => {
                conn = None;
                shared.mark_db_down(&e);
                backoff.failed();
            }
        }
    }
}

/// Exponential backoff between attempts while PostgreSQL fails transiently.
struct Backoff {
    first: Duration,
    max: Duration,
    delay: Duration,
    next: Instant,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            delay: first,
            next: Instant::now(),
        }
    }

    /// True when the next attempt may be made.
    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// An attempt failed: wait `delay` before the next, and double it (capped).
    fn failed(&mut self) {
        self.next = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(self.max);
    }

    fn succeeded(&mut self) {
        self.delay = self.first;
        self.next = Instant::now();
    }
}

/// fsyncs the journal every `spool_fsync_interval`, on a thread of its own (never behind a
/// replay, never on an async worker), and keeps the status up to date: a failed fsync makes the
/// log refuse decisions until a later one succeeds. Ends when the log is dropped or shut down.
fn fsync_loop(shared: std::sync::Weak<Shared>, stop: std::sync::mpsc::Receiver<()>) {
    let Some(interval) = shared.upgrade().map(|s| s.cfg.spool_fsync_interval) else {
        return;
    };
    let mut failing = false;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let Some(s) = shared.upgrade() else { break };
        match s.spool.sync() {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "fsync of the spool failed: decisions are refused (UNAVAILABLE, readiness NOT_SERVING) until an fsync succeeds");
                }
                failing = true;
            }
        }
        s.recheck_spool();
    }
}

async fn maintenance_connect(shared: &Shared) -> Result<Writer, DbError> {
    let mut client = db::connect(&shared.cfg.database_url, shared.cfg.connect_timeout).await?;
    if !shared.schema_ready.load(Ordering::SeqCst) {
        let applied = db::migrate(&mut client).await?;
        for m in &applied {
            tracing::info!(version = m.version, name = %m.name, "applied decision log migration");
        }
        shared.schema_ready.store(true, Ordering::SeqCst);
    }
    Writer::new(client).await
}

/// Replays every sealed spool segment that may hold records missing from PostgreSQL, deleting
/// each once its records are committed; journal segments already committed are just deleted.
async fn replay(
    shared: &Arc<Shared>,
    w: &mut Writer,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), DbError> {
    if shared.spool.is_empty() {
        return Ok(());
    }
    // Records spooled into the active segment are replayed once it is sealed.
    shared.spool.seal_active_if_dirty();
    for (seq, dirty) in shared.spool.settled_segments() {
        if *shutdown.borrow() {
            break;
        }
        if !dirty {
            // Every record of this journal segment is committed.
            if let Err(e) = shared.spool.remove_segment(seq) {
                tracing::warn!(error = %e, segment = seq, "cannot delete a committed journal segment (replaying it is harmless)");
            }
            shared.refresh();
            continue;
        }
        let spool = shared.spool.clone();
        let contents = match tokio::task::spawn_blocking(move || spool.read_segment(seq)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::error!(error = %e, segment = seq, "cannot read a spool segment; will retry");
                continue;
            }
            Err(e) => panic!("spool read task panicked: {e}"),
        };
        let started = Instant::now();
        let mut new_rows = 0;
        for chunk in contents.frames.chunks(shared.cfg.batch_size) {
            // Rows PostgreSQL refuses are set aside one by one, the rest committed: a segment
            // is never kept from deletion by its rows. Only a transient error stops the
            // replay; the segment is then replayed again (idempotently) on a later attempt.
            new_rows += shared.write_or_set_aside(w, &chunk).await?;
            shared.mark_db_up();
        }
        let n = contents.frames.len() as u64;
        shared.counters.replayed.fetch_add(n, Ordering::Relaxed);
        shared
            .counters
            .written
            .fetch_add(new_rows, Ordering::Relaxed);
        shared.spool_broken.store(false, Ordering::SeqCst);
        if contents.is_damaged() {
            // Corrupt bytes: the valid records are committed; the segment is kept, never deleted.
            set_aside(shared, seq, &contents);
        } else if let Err(e) = shared.spool.remove_segment(seq) {
            tracing::error!(error = %e, segment = seq, "cannot delete a replayed spool segment (replaying it again is harmless)");
        }
        shared.refresh();
        tracing::info!(
            segment = seq,
            records = n,
            new_rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replayed a spool segment"
        );
    }
    Ok(())
}

/// Sets aside a replayed segment with corrupt bytes (renamed `corrupt-<seq>.spool`), counted
/// and logged.
fn set_aside(shared: &Shared, seq: u64, contents: &super::spool::SegmentContents) {
    let c = &shared.counters;
    c.segments_set_aside.fetch_add(1, Ordering::Relaxed);
    c.corrupt_bytes
        .fetch_add(contents.skipped_bytes, Ordering::Relaxed);
    match shared.spool.set_aside_segment(seq) {
        Ok(path) => tracing::error!(
            segment = %path.display(),
            skipped_bytes = contents.skipped_bytes,
            undecodable = contents.undecodable,
            records = contents.frames.len(),
            "a spool segment held corrupt bytes: its valid records are replayed, and it was set aside for inspection"
        ),
        Err(e) => tracing::error!(
            error = %e,
            segment = seq,
            "a spool segment held corrupt bytes and could not be set aside; it will be replayed again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::decision_log::row::tests::sample;

    fn config(url: &str, dir: &Path) -> DecisionLogConfig {
        let mut c = DecisionLogConfig::new(url.parse().unwrap(), dir.to_owned());
        c.connect_timeout = Duration::from_millis(500);
        c.retry_interval = Duration::from_millis(100);
        c.spool_fsync_interval = Duration::from_millis(20);
        c.spool_segment_bytes = 1 << 16;
        c
    }

    /// Nothing listens there: PostgreSQL is down, decisions are spooled.
    const DEAD: &str = "postgres://postgres@127.0.0.1:1/cra_none";

    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn spool(log: &DecisionLog) -> Arc<Spool> {
        log.inner.as_ref().unwrap().shared.spool.clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_stops_new_decisions_until_an_fsync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let log = DecisionLog::start(config(DEAD, dir.path())).await.unwrap();
        log.record(sample(0)).unwrap();
        assert!(log.status().accepting);
        spool(&log).fail_fsyncs(true);
        wait_until("readiness is NOT_SERVING", || !log.status().accepting).await;
        let err = log.record(sample(1)).unwrap_err();
        assert!(matches!(err, DecisionLogError::Unavailable(_)), "{err}");
        assert_eq!(log.stats().refused, 1);
        // The fsync thread re-checks: once an fsync works, decisions are taken again.
        spool(&log).fail_fsyncs(false);
        wait_until("readiness is SERVING again", || log.status().accepting).await;
        log.record(sample(2)).unwrap();
        assert_eq!(log.stats().accepted, 2);
        log.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fsync_tick_does_not_wait_for_the_maintenance_task() {
        // A "database" that accepts connections and never answers: every connection attempt
        // of the maintenance task takes its whole timeout.
        let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "postgres://postgres@{}/cra_none",
            hole.local_addr().unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(&url, dir.path());
        cfg.connect_timeout = Duration::from_secs(5);
        let log = DecisionLog::start(cfg).await.unwrap();
        log.record(sample(0)).unwrap();
        // The maintenance task is now stuck in a 5 s connection attempt; the journal is
        // fsync'd every 20 ms all the same.
        let before = spool(&log).fsync_count();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = spool(&log).fsync_count() - before;
        assert!(during >= 5, "only {during} fsync(s) in 2 s");
        drop(hole);
        log.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_shutdown_decisions_are_refused_and_the_directory_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let log = DecisionLog::start(config(DEAD, dir.path())).await.unwrap();
        // While it runs, the directory is locked.
        let err = DecisionLog::start(config(DEAD, dir.path()))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        log.record(sample(0)).unwrap();
        log.shutdown().await;
        assert!(matches!(
            log.record(sample(1)),
            Err(DecisionLogError::Unavailable(_))
        ));
        assert!(!log.status().accepting);
        let again = DecisionLog::start(config(DEAD, dir.path())).await.unwrap();
        again.shutdown().await;
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets_on_success() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        assert!(b.due());
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(b.delay);
            b.failed();
            assert!(!b.due());
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.succeeded();
        assert!(b.due());
        assert_eq!(b.delay, Duration::from_millis(100));
    }
}
