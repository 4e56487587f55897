//! `cra score`: offline scoring of a Parquet file through the same scoring core as the server.
//!
//! ```text
//! reader thread ──batches──▶ N scoring threads ──scored batches──▶ writer (in input order)
//! ```
//!
//! The reader streams the file a batch at a time; every batch goes through
//! [`Scorer::decide`] and [`Scorer::record_batch`] exactly as a gRPC stream round does, so the
//! numbers are the server's to the last bit. The queues between the stages are bounded, so
//! memory stays constant whatever the file's size. Invalid rows are written with an `error`
//! naming every violation, never scored with a default.
pub mod parquet_io;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use uuid::Uuid;

use crate::{
    config::ScoreArgs,
    decision_log::{DecisionLog, DecisionLogConfig},
    scoring::{CallContext, DecisionRecorder, ExplainPolicy, Item, Registry, Rpc, Scorer},
};
use parquet_io::{IdColumn, InputBatch, InputReader, OutputWriter};

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSummary {
    pub rows: u64,
    pub scored: u64,
    pub invalid: u64,
    /// Rows per model version (live decisions only).
    pub by_model: BTreeMap<String, u64>,
    pub seconds: f64,
    pub run_id: Uuid,
    pub out: PathBuf,
}

/// One batch after scoring, waiting for its turn at the writer.
struct Scored {
    index: u64,
    batch: InputBatch,
    items: Vec<Item>,
    versions: Vec<(String, crate::scoring::Role)>,
}

/// Runs `cra score`.
pub fn run(args: &ScoreArgs) -> anyhow::Result<ScoreSummary> {
    let started = Instant::now();
    let source = args.model_source();
    let registry = Arc::new(Registry::load(source).context("loading the models")?);
    let run_id = Uuid::now_v7();

    // The decision log, when asked for: it runs on a small runtime of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime of the decision log")?;
    let log = match &args.database_url {
        Some(url) => {
            let mut cfg = DecisionLogConfig::new(url.clone(), args.spool_dir.clone());
            cfg.require_database = true;
            let log = runtime
                .block_on(DecisionLog::start(cfg))
                .with_context(|| format!("starting the decision log at {url}"))?;
            Some(log)
        }
        None => None,
    };
    let recorder = log
        .as_ref()
        .map(|l| Arc::new(l.clone()) as Arc<dyn DecisionRecorder>);
    let scorer = Arc::new(
        Scorer::new(registry.clone(), recorder, 1024).with_explain_policy(if args.explain {
            ExplainPolicy::Always
        } else {
            ExplainPolicy::Never
        }),
    );

    let mut reader = InputReader::open(&args.data, args.batch_rows.max(1))?;
    let total = reader.num_rows();
    let id_column = if reader.has_application_id() {
        IdColumn::ApplicationId
    } else {
        IdColumn::RowNumber
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut writer = OutputWriter::create_with(&args.out, id_column, args.explain)?;
    let threads = crate::config::worker_threads(args.threads).max(1);
    let progress = progress_bar(total, args.quiet);

    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, InputBatch)>(threads);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<anyhow::Result<Scored>>(threads);
    let mut summary = ScoreSummary {
        rows: 0,
        scored: 0,
        invalid: 0,
        by_model: BTreeMap::new(),
        seconds: 0.0,
        run_id,
        out: args.out.clone(),
    };
    let request_id = format!("cra-score-{run_id}");

    std::thread::scope(|scope| -> anyhow::Result<()> {
        // Reader: batches in file order.
        let reader_done = done_tx.clone();
        scope.spawn(move || {
            let mut index = 0u64;
            while let Some(batch) = reader.next_batch() {
                match batch {
                    Ok(b) => {
                        if work_tx.send((index, b)).is_err() {
                            return;
                        }
                        index += 1;
                    }
                    Err(e) => {
                        let _ = reader_done.send(Err(e.into()));
                        return;
                    }
                }
            }
        });
        // Scorers.
        for _ in 0..threads {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let scorer = scorer.clone();
            let request_id = request_id.clone();
            scope.spawn(move || loop {
                let next = work_rx.lock().map(|rx| rx.recv());
                let Ok(Ok((index, batch))) = next else { return };
                let result = score_batch(&scorer, &request_id, run_id, index, batch);
                if done_tx.send(result).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        // Writer: in input order.
        let mut pending: BTreeMap<u64, Scored> = BTreeMap::new();
        let mut next = 0u64;
        for done in done_rx {
            let scored = done?;
            pending.insert(scored.index, scored);
            while let Some(s) = pending.remove(&next) {
                write_scored(&mut writer, &s, &mut summary)?;
                progress.inc(s.batch.inputs.len() as u64);
                next += 1;
            }
        }
        anyhow::ensure!(
            pending.is_empty(),
            "scoring stopped before every batch was written"
        );
        Ok(())
    })?;
    let written = writer.finish()?;
    progress.finish_and_clear();
    if let Some(log) = log {
        runtime.block_on(log.shutdown());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        written == summary.rows,
        "wrote {written} rows for {} read",
        summary.rows
    );
    Ok(summary)
}

/// Scores and records one batch through the core, as a stream round does.
fn score_batch(
    scorer: &Scorer,
    request_id: &str,
    run_id: Uuid,
    index: u64,
    batch: InputBatch,
) -> anyhow::Result<Scored> {
    // Back-pressure from the decision log: wait while it catches up.
    while scorer.backlogged() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let received_at = SystemTime::now();
    let set = scorer.models();
    let items = scorer.decide(&set, &batch.inputs, &[])?;
    let ctx = CallContext {
        request_id,
        rpc: Rpc::Offline {
            run_id,
            position: batch.first_row,
        },
        peer: None,
        caller: crate::security::Caller::anonymous(),
        received_at,
        started,
        deadline: None,
        trace_id: None,
    };
    scorer
        .record_batch(
            &ctx,
            &set,
            &batch.inputs,
            &items,
            SystemTime::now(),
            started.elapsed(),
        )
        .context("recording the decisions")?;
    let versions = set
        .live
        .iter()
        .map(|m| (m.bundle.version().to_owned(), m.role))
        .collect();
    Ok(Scored {
        index,
        batch,
        items,
        versions,
    })
}

fn write_scored(
    writer: &mut OutputWriter,
    s: &Scored,
    summary: &mut ScoreSummary,
) -> anyhow::Result<()> {
    let errors = cra_model::arrow_io::error_texts(&s.items);
    let rows = cra_model::arrow_io::output_rows(
        s.batch.first_row,
        &s.batch.inputs,
        &s.items,
        &errors,
        |m| &s.versions[m].0,
    );
    let explanations = cra_model::arrow_io::explanations_of(&s.items);
    writer.write_explained(&rows, &explanations)?;
    for item in &s.items {
        summary.rows += 1;
        match item {
            Item::Scored { member, .. } => {
                summary.scored += 1;
                *summary
                    .by_model
                    .entry(s.versions[*member].0.clone())
                    .or_default() += 1;
            }
            Item::Invalid(_) => summary.invalid += 1,
        }
    }
    Ok(())
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} scoring [{bar:40}] {human_pos}/{human_len} rows {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
