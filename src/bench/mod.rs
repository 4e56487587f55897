//! `cra bench`: a gRPC load generator for `cra serve`, the successor of the original's
//! `stress_test.py`. Random valid applications are generated (seeded) before the clock starts;
//! it reports latency percentiles (HdrHistogram), throughput and the success rate, as text or
//! JSON. Unary mode runs closed-loop (`--concurrency` calls in flight) or open-loop at a fixed
//! `--rate`, where latency counts from each call's scheduled start (no coordinated omission).
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    config::{BenchArgs, BenchMode},
    grpc::pb::{
        self, credit_risk_service_client::CreditRiskServiceClient, CreditApplication,
        ScoreBatchRequest, ScoreRequest,
    },
};

const DEFAULT_REQUESTS: u64 = 100_000;

/// Adds `authorization: Bearer KEY` to every call when `--api-key` is given.
#[derive(Clone)]
pub struct ApiKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The client `cra bench` drives.
pub type Client = CreditRiskServiceClient<InterceptedService<Channel, ApiKey>>;

/// The TLS of `--tls-ca`, `--tls-cert`, `--tls-key` and `--tls-domain`, if any.
fn client_tls(args: &BenchArgs, host: &str) -> Result<Option<ClientTlsConfig>> {
    let Some(ca) = &args.tls_ca else {
        anyhow::ensure!(
            args.tls_cert.is_none() && args.tls_key.is_none(),
            "--tls-cert and --tls-key need --tls-ca (the CA of the server's certificate)"
        );
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .domain_name(args.tls_domain.clone().unwrap_or_else(|| host.to_owned()));
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    }
    Ok(Some(tls))
}

/// Random valid applications (within the server's accepted ranges), reproducible by seed.
pub fn random_applications(n: usize, seed: u64) -> Vec<CreditApplication> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    const TERMS: [i32; 8] = [12, 24, 36, 48, 60, 84, 120, 360];
    (0..n)
        .map(|i| {
            let maybe = |rng: &mut ChaCha8Rng, v: i32| rng.random_bool(0.95).then_some(v);
            let credit_score = rng.random_range(300..=850);
            let lines = rng.random_range(0..=25);
            let late = rng.random_range(0..=8);
            let bankrupt = rng.random_range(0..=2);
            let inquiries = rng.random_range(0..=10);
            CreditApplication {
                application_id: format!("bench-{i}"),
                age: rng.random_range(18..=80),
                income: rng.random_range(12_000.0..300_000.0),
                employment_length: rng.random_range(0.0..40.0),
                credit_score: maybe(&mut rng, credit_score),
                num_credit_lines: maybe(&mut rng, lines),
                credit_utilization: rng.random_bool(0.95).then(|| rng.random_range(0.0..1.2)),
                debt_to_income: rng.random_range(0.0..1.5),
                total_debt: rng.random_range(0.0..250_000.0),
                savings: rng.random_range(0.0..200_000.0),
                loan_amount: rng.random_range(1_000.0..100_000.0),
                loan_term: TERMS[rng.random_range(0..TERMS.len())],
                num_late_payments: maybe(&mut rng, late),
                num_bankruptcies: maybe(&mut rng, bankrupt),
                inquiries_last_6m: maybe(&mut rng, inquiries),
                employment_status: rng.random_range(1..=5),
                home_ownership: rng.random_range(1..=4),
                loan_purpose: rng.random_range(1..=8),
            }
        })
        .collect()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds are valid")
}

/// What each worker measured after the warm-up.
struct Tally {
    latency_ns: Histogram<u64>,
    server_ns: Histogram<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency_ns: histogram(),
            server_ns: histogram(),
            ok: 0,
            failed: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, o: Tally) {
        let _ = self.latency_ns.add(&o.latency_ns);
        let _ = self.server_ns.add(&o.server_ns);
        self.ok += o.ok;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn error(&mut self, e: String) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn server_time(&mut self, score: Option<&pb::RiskScore>) {
        if let Some(d) = score.and_then(|s| s.processing_time.as_ref()) {
            let ns = d.seconds as u64 * 1_000_000_000 + d.nanos.max(0) as u64;
            self.server_ns.saturating_record(ns.max(1));
        }
    }
}

/// The bench report (`--json` prints it as one object).
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub addr: String,
    pub connections: usize,
    pub concurrency: usize,
    pub chunk: Option<usize>,
    pub target_rate: Option<u64>,
    /// Applications answered with a score (stream mode) or successful calls (unary).
    pub ok: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub elapsed_s: f64,
    /// Calls (unary) or messages (stream) per second.
    pub requests_per_s: f64,
    /// Applications scored per second.
    pub applications_per_s: f64,
    /// Client-side latency of a call (unary) or of a message's answer (stream), in ms.
    pub latency_ms: Percentiles,
    /// Server time reported in `processing_time`, in µs.
    pub server_time_us: Percentiles,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    let q = |q: f64| h.value_at_quantile(q) as f64 / scale;
    Percentiles {
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max() as f64 / scale,
    }
}

/// When to stop, and when the clock started.
#[derive(Clone, Copy)]
struct Plan {
    measure_from: Instant,
    until: Option<Instant>,
    budget: Option<u64>,
}

async fn connect(args: &BenchArgs) -> Result<Vec<Client>> {
    let (addr, n) = (&args.addr, args.connections);
    let scheme = if args.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let key = args
        .api_key
        .as_deref()
        .map(|k| format!("Bearer {k}").parse())
        .transpose()
        .context("--api-key must be printable ASCII")?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .with_context(|| format!("`{addr}` is not a valid address"))?;
        let host = endpoint.uri().host().unwrap_or("localhost").to_owned();
        if let Some(tls) = client_tls(args, &host)? {
            endpoint = endpoint.tls_config(tls).context("the TLS settings")?;
        }
        let channel = endpoint
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {uri}; is `cra serve` running?"))?;
        clients.push(
            CreditRiskServiceClient::with_interceptor(channel, ApiKey(key.clone()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    }
    Ok(clients)
}

/// `cra bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let threads = crate::config::worker_threads(None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(bench(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs the benchmark described by `args` and returns its report.
pub async fn bench(args: &BenchArgs) -> Result<Report> {
    let pool = Arc::new(random_applications(args.pool.max(1), args.seed));
    let clients = connect(args).await?;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let budget = match (args.requests, args.duration) {
        (None, None) => Some(DEFAULT_REQUESTS),
        (r, _) => r,
    };
    let plan = Plan {
        measure_from,
        until: args.duration.map(|d| measure_from + d),
        budget,
    };
    let (tally, end) = match args.mode {
        BenchMode::Unary => match args.rate {
            None => unary_closed(args, &clients, pool, plan).await,
            Some(rate) => unary_open(args, &clients, pool, plan, rate).await,
        },
        BenchMode::Stream => stream(args, &clients, pool, plan).await,
    };
    let elapsed = end.saturating_duration_since(measure_from).as_secs_f64();
    let (requests, apps) = match args.mode {
        BenchMode::Unary => (tally.latency_ns.len(), tally.ok),
        BenchMode::Stream => (tally.latency_ns.len(), tally.ok),
    };
    let total = tally.ok + tally.failed;
    Ok(Report {
        mode: format!("{:?}", args.mode).to_lowercase(),
        addr: args.addr.clone(),
        connections: args.connections,
        concurrency: args.concurrency,
        chunk: (args.mode == BenchMode::Stream).then_some(args.chunk),
        target_rate: args.rate,
        ok: tally.ok,
        failed: tally.failed,
        success_rate: if total == 0 {
            0.0
        } else {
            tally.ok as f64 / total as f64
        },
        elapsed_s: elapsed,
        requests_per_s: requests as f64 / elapsed.max(1e-9),
        applications_per_s: apps as f64 / elapsed.max(1e-9),
        latency_ms: percentiles(&tally.latency_ns, 1e6),
        server_time_us: percentiles(&tally.server_ns, 1e3),
        first_error: tally.first_error,
    })
}

/// The `google.rpc.RetryInfo` delay of a refusal, if it carries one.
fn retry_delay(s: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    s.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// Claims one unit of work after the warm-up; false when the run is over.
fn claim(plan: &Plan, issued: &AtomicU64, now: Instant) -> bool {
    if plan.until.is_some_and(|u| now >= u) {
        return false;
    }
    if now < plan.measure_from {
        return true;
    }
    match plan.budget {
        Some(b) => issued.fetch_add(1, Ordering::Relaxed) < b,
        None => true,
    }
}

async fn unary_closed(
    args: &BenchArgs,
    clients: &[Client],
    pool: Arc<Vec<CreditApplication>>,
    plan: Plan,
) -> (Tally, Instant) {
    let explain = args.explain;
    let respect_retry = args.respect_retry;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let mut client = clients[w % clients.len()].clone();
        let pool = pool.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let mut i = w * 7919;
            loop {
                let sent = Instant::now();
                if !claim(&plan, &issued, sent) {
                    break;
                }
                let app = pool[i % pool.len()].clone();
                i += 1;
                let res = client
                    .score(ScoreRequest {
                        application: Some(app),
                        explain,
                    })
                    .await;
                if sent < plan.measure_from {
                    continue;
                }
                match res {
                    Ok(r) => {
                        t.latency_ns
                            .saturating_record(sent.elapsed().as_nanos() as u64);
                        t.ok += 1;
                        t.server_time(r.get_ref().score.as_ref());
                    }
                    Err(s) => {
                        t.error(format!("{:?}: {}", s.code(), s.message()));
                        if respect_retry {
                            if let Some(after) = retry_delay(&s) {
                                tokio::time::sleep(after).await;
                            }
                        }
                    }
                }
            }
            t
        }));
    }
    collect(tasks).await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> (Tally, Instant) {
    let mut total = Tally::new();
    for t in tasks {
        match t.await {
            Ok(t) => total.merge(t),
            Err(e) => total.error(format!("worker failed: {e}")),
        }
    }
    (total, Instant::now())
}

async fn unary_open(
    args: &BenchArgs,
    clients: &[Client],
    pool: Arc<Vec<CreditApplication>>,
    plan: Plan,
    rate: u64,
) -> (Tally, Instant) {
    let explain = args.explain;
    let rate = rate.max(1) as f64;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let tally = Arc::new(Mutex::new(Tally::new()));
    // A dedicated thread paces the schedule: its sleeps are ~0.1 ms, where tokio's timer has
    // 1 ms granularity and would send the calls in bursts.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(65_536);
    let pacer = std::thread::spawn(move || {
        let issued = AtomicU64::new(0);
        let start = Instant::now();
        let mut sent: u64 = 0;
        loop {
            // Call k is due at k / rate: calls 0..=floor(elapsed * rate) are due now. (Sending
            // call k only once elapsed * rate reached k + 1 put every call one period late,
            // and counted that period in its latency.)
            let due = ((Instant::now() - start).as_secs_f64() * rate) as u64 + 1;
            while sent < due {
                let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
                if !claim(&plan, &issued, scheduled) || tx.blocking_send(scheduled).is_err() {
                    return;
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    });
    let mut handles = Vec::new();
    let mut n = 0usize;
    while let Some(scheduled) = rx.recv().await {
        let mut client = clients[n % clients.len()].clone();
        let app = pool[n % pool.len()].clone();
        n += 1;
        let permit = in_flight.clone().acquire_owned().await;
        let tally = tally.clone();
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let res = client
                .score(ScoreRequest {
                    application: Some(app),
                    explain,
                })
                .await;
            if scheduled < plan.measure_from {
                return;
            }
            let latency = scheduled.elapsed().as_nanos() as u64;
            if let Ok(mut t) = tally.lock() {
                match res {
                    Ok(r) => {
                        t.latency_ns.saturating_record(latency);
                        t.ok += 1;
                        t.server_time(r.get_ref().score.as_ref());
                    }
                    Err(s) => t.error(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        }));
        if handles.len() > 10_000 {
            handles.retain(|h| !h.is_finished());
        }
    }
    let _ = pacer.join();
    for h in handles {
        let _ = h.await;
    }
    let end = Instant::now();
    let t = std::mem::replace(
        &mut *tally.lock().expect("no worker panicked"),
        Tally::new(),
    );
    (t, end)
}

async fn stream(
    args: &BenchArgs,
    clients: &[Client],
    pool: Arc<Vec<CreditApplication>>,
    plan: Plan,
) -> (Tally, Instant) {
    let explain = args.explain;
    let chunk = args.chunk.max(1);
    // The budget counts applications; each claim takes one message of `chunk` of them.
    let plan = Plan {
        budget: plan.budget.map(|b| b.div_ceil(chunk as u64)),
        ..plan
    };
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let mut client = clients[w % clients.len()].clone();
        let pool = pool.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
            let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(8);
            let sender_times = sent_at.clone();
            let sender = tokio::spawn(async move {
                let mut i = w * 7919;
                loop {
                    let now = Instant::now();
                    if !claim(&plan, &issued, now) {
                        break;
                    }
                    let applications: Vec<_> = (0..chunk)
                        .map(|k| pool[(i + k) % pool.len()].clone())
                        .collect();
                    i += chunk;
                    if let Ok(mut q) = sender_times.lock() {
                        q.push_back(now);
                    }
                    if tx
                        .send(ScoreBatchRequest {
                            applications,
                            explain,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let inbound = tokio_stream::wrappers::ReceiverStream::new(rx);
            match client.score_batch(inbound).await {
                Ok(resp) => {
                    let mut responses = resp.into_inner();
                    // The answers of one request message may come in several response
                    // messages (the server splits a round whose answer would be too large,
                    // as explained results are): a request is answered once `chunk` results
                    // have arrived for it.
                    let mut current: Option<Instant> = None;
                    let mut awaited = 0usize;
                    loop {
                        match responses.message().await {
                            Ok(Some(msg)) => {
                                if awaited == 0 {
                                    current = sent_at.lock().ok().and_then(|mut q| q.pop_front());
                                    awaited = chunk;
                                }
                                awaited = awaited.saturating_sub(msg.results.len());
                                let Some(sent) = current else { continue };
                                if sent < plan.measure_from {
                                    continue;
                                }
                                if awaited == 0 {
                                    t.latency_ns
                                        .saturating_record(sent.elapsed().as_nanos() as u64);
                                }
                                for r in &msg.results {
                                    match &r.result {
                                        Some(pb::batch_result::Result::Score(s)) => {
                                            t.ok += 1;
                                            if r.position % 64 == 0 {
                                                t.server_time(Some(s));
                                            }
                                        }
                                        Some(pb::batch_result::Result::Error(e)) => {
                                            t.error(format!("item {}: {}", r.position, e.message))
                                        }
                                        None => t.error("empty result".into()),
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(s) => {
                                t.error(format!("{:?}: {}", s.code(), s.message()));
                                break;
                            }
                        }
                    }
                }
                Err(s) => t.error(format!("{:?}: {}", s.code(), s.message())),
            }
            let _ = sender.await;
            t
        }));
    }
    collect(tasks).await
}

fn print_report(r: &Report) {
    println!(
        "cra bench: {} against {} ({} connection(s), concurrency {}{}{})",
        r.mode,
        r.addr,
        r.connections,
        r.concurrency,
        r.chunk
            .map(|c| format!(", {c} apps/message"))
            .unwrap_or_default(),
        r.target_rate
            .map(|c| format!(", target {c} req/s"))
            .unwrap_or_default()
    );
    println!(
        "  ok {}  failed {}  success rate {:.4}%  elapsed {:.2}s",
        r.ok,
        r.failed,
        r.success_rate * 100.0,
        r.elapsed_s
    );
    println!(
        "  throughput: {:.0} requests/s, {:.0} applications/s",
        r.requests_per_s, r.applications_per_s
    );
    let l = &r.latency_ms;
    println!(
        "  latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        l.p50, l.p95, l.p99, l.p999, l.max
    );
    let s = &r.server_time_us;
    println!(
        "  handler time µs (processing_time): p50 {:.1}  p95 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        s.p50, s.p95, s.p99, s.p999, s.max
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}
