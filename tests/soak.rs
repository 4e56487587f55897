//! The load test with the decision log on (issue 8, "Done when"). Ignored by default; run it with
//!
//! ```text
//! cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! It starts a throwaway PostgreSQL cluster of its own (`initdb` into a temporary directory, trust
//! authentication, a free port; stopped at the end, even on failure) and the real `cra serve`
//! binary against it, with its own spool directory. Then, for `CRA_SOAK_SECONDS`:
//! - `CRA_SOAK_CLIENTS` tonic clients (one connection each) send unary `Score` calls and keep
//!   the `decision_id` of every answer with status OK;
//! - one client sends an application with a 3 KB `application_id` (random, so incompressible)
//!   every second (expected: `INVALID_ARGUMENT`);
//! - another holds `CRA_SOAK_IDLE_STREAMS` `ScoreBatch` streams open and never sends on them
//!   (reopening any that the server ends);
//! - half-way through, PostgreSQL is restarted (`pg_ctl restart -m fast`).
//!
//! Then it waits (at most `CRA_SOAK_DRAIN_SECONDS`, default 120, and no longer than 30 s without
//! progress) until every decision answered is stored, stops the server with SIGTERM and checks:
//! every OK `decision_id` is in `decisions` exactly once; no valid unary call failed; every
//! over-long id was refused with `INVALID_ARGUMENT`; no spool segment was quarantined or set
//! aside; the server exited cleanly. It prints the figures first and fails with every broken
//! promise at once.
//!
//! More settings: `CRA_SOAK_LONG_IDS=false` and `CRA_SOAK_PG_RESTART=false` leave out the
//! over-long ids or the restart (to tell their effects apart); `CRA_SOAK_SERVE_ARGS` (extra
//! `cra serve` arguments, whitespace-separated); `CRA_SOAK_PG_BIN` (the directory of `initdb` and
//! `pg_ctl`; default: the newest `/usr/lib/postgresql/<version>/bin`); `CRA_SOAK_PG_USER` (the
//! user PostgreSQL runs as when the test runs as root, which `initdb` refuses; default
//! `postgres`).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cra::{
    bench::random_applications,
    grpc::pb::{
        credit_risk_service_client::CreditRiskServiceClient, CreditApplication, ScoreBatchRequest,
        ScoreRequest,
    },
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use uuid::Uuid;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A PostgreSQL cluster of its own in a temporary directory, stopped when dropped.
struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
}

impl PgCluster {
    fn bin_dir() -> PathBuf {
        if let Ok(b) = std::env::var("CRA_SOAK_PG_BIN") {
            return b.into();
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, b)| b).expect(
            "no initdb in /usr/lib/postgresql/<version>/bin: install PostgreSQL's server \
             (Debian: apt-get install postgresql) or set CRA_SOAK_PG_BIN",
        )
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgresql.log")
    }

    fn run(&self, what: &str, cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("cra-soak-pg")
            .tempdir()
            .unwrap();
        let run_as = running_as_root().then(|| env_or("CRA_SOAK_PG_USER", "postgres".to_owned()));
        if run_as.is_some() {
            // PostgreSQL's own user creates the cluster and its log in here.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let pg = PgCluster {
            dir,
            bin: Self::bin_dir(),
            run_as,
            port: free_port(),
        };
        pg.run(
            "initdb",
            pg.command("initdb").arg("-D").arg(pg.data()).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
        );
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             max_connections = 100\n",
            pg.port
        );
        let conf_path = pg.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        pg.run(
            "pg_ctl start",
            pg.command("pg_ctl")
                .arg("-D")
                .arg(pg.data())
                .arg("-l")
                .arg(pg.log())
                .args(["-w", "-t", "60", "start"]),
        );
        pg
    }

    /// `pg_ctl restart -m fast`: every connection is dropped, the server is down for a moment.
    fn restart(&self) {
        self.run(
            "pg_ctl restart",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log())
                .args(["-w", "-t", "60", "-m", "fast", "restart"]),
        );
    }

    fn postmaster_pid(&self) -> String {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The real `cra serve` binary on a free port, killed if still running when dropped.
struct CraServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl CraServer {
    fn spawn(database_url: &str, spool: &Path, log: PathBuf) -> CraServer {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let extra = std::env::var("CRA_SOAK_SERVE_ARGS").unwrap_or_default();
        let child = Command::new(env!("CARGO_BIN_EXE_cra"))
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(&model)
            .arg("--spool-dir")
            .arg(spool)
            .args(["--database-url", database_url])
            .args(["--audit", "on"])
            .args(extra.split_whitespace())
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cra serve starts");
        CraServer { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("cra serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "cra serve never became ready:\n{}",
                self.log()
            );
            if let Ok(ch) = self.channel().await {
                let serving = HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: cra::grpc::SERVICE_NAME.into(),
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
                if serving {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new connection to the server.
    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
    }

    /// The peak resident memory of the process, from /proc (Linux), in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CraServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts per status code name.
#[derive(Default)]
struct Codes(Mutex<BTreeMap<String, u64>>);

impl Codes {
    fn add(&self, code: impl Into<String>) {
        *self.0.lock().unwrap().entry(code.into()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

fn code_name(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok_ids: Mutex<Vec<Uuid>>,
    ok: AtomicU64,
    /// Unary calls with a valid application that did not get OK, by code.
    unary_errors: Codes,
    /// A few of their messages.
    unary_error_samples: Mutex<Vec<String>>,
    /// Client-side latency of the OK unary calls, in µs.
    latencies_us: Mutex<Vec<u32>>,
    /// The over-long application ids, by the code they got.
    long_id: Codes,
    /// Idle streams: opened (response headers received), open right now, the most open at once,
    /// how the server ended them, and how it refused to open them.
    streams_opened: AtomicU64,
    streams_open: AtomicI64,
    streams_open_max: AtomicI64,
    streams_ended: Codes,
    streams_refused: Codes,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After the load, stop waiting for the missing decisions once none has arrived for this long.
const DRAIN_STALL: Duration = Duration::from_secs(30);

fn request(app: CreditApplication) -> tonic::Request<ScoreRequest> {
    let mut r = tonic::Request::new(ScoreRequest {
        application: Some(app),
        explain: false,
    });
    r.set_timeout(CALL_TIMEOUT);
    r
}

async fn unary_client(
    mut client: CreditRiskServiceClient<Channel>,
    pool: Arc<Vec<CreditApplication>>,
    t: usize,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) {
    let mut ids = Vec::new();
    let mut lat = Vec::new();
    let mut k = t * 7919;
    while !stop.load(Ordering::Relaxed) {
        let mut app = pool[k % pool.len()].clone();
        app.application_id = format!("soak-{t}-{k}");
        k += 1;
        let start = Instant::now();
        match client.score(request(app)).await {
            Ok(r) => {
                lat.push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match r.into_inner().score.map(|s| s.decision_id.parse::<Uuid>()) {
                    Some(Ok(id)) => {
                        ids.push(id);
                        seen.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => seen
                        .unary_errors
                        .add(format!("OK without a decision id: {other:?}")),
                }
            }
            Err(s) => {
                seen.unary_errors.add(code_name(&s));
                {
                    let mut samples = seen.unary_error_samples.lock().unwrap();
                    if samples.len() < 5 {
                        samples.push(format!("{:?}: {}", s.code(), s.message()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    seen.ok_ids.lock().unwrap().extend(ids);
    seen.latencies_us.lock().unwrap().extend(lat);
}

/// `len` random characters of a 64-letter alphabet: PostgreSQL cannot compress them, so such an
/// id, stored whole, is over the B-tree row limit (2,704 bytes) of an index on it.
fn incompressible(len: usize) -> String {
    const LETTERS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.extend(
            Uuid::new_v4()
                .as_bytes()
                .iter()
                .map(|b| LETTERS[(b & 63) as usize] as char),
        );
    }
    s.truncate(len);
    s
}

async fn long_id_client(
    mut client: CreditRiskServiceClient<Channel>,
    app: CreditApplication,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut app = app.clone();
        app.application_id = format!("{n:08}-{}", incompressible(3000));
        n += 1;
        match client.score(request(app)).await {
            Ok(_) => seen.long_id.add("Ok"),
            Err(s) => seen.long_id.add(code_name(&s)),
        }
    }
}

/// One idle `ScoreBatch` stream, reopened whenever the server ends it, until `stop`.
async fn idle_stream(
    mut client: CreditRiskServiceClient<Channel>,
    seen: Arc<Seen>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        // The sender is held, never used: the stream stays open and idle until `stop`.
        let (tx, rx) = mpsc::channel::<ScoreBatchRequest>(1);
        let opened = tokio::select! {
            r = client.score_batch(tokio_stream::wrappers::ReceiverStream::new(rx)) => r,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(resp) => {
                seen.streams_opened.fetch_add(1, Ordering::Relaxed);
                let now = seen.streams_open.fetch_add(1, Ordering::Relaxed) + 1;
                seen.streams_open_max.fetch_max(now, Ordering::Relaxed);
                let mut inbound = resp.into_inner();
                let ended = tokio::select! {
                    m = inbound.message() => Some(m),
                    _ = stop.changed() => None,
                };
                seen.streams_open.fetch_sub(1, Ordering::Relaxed);
                match ended {
                    None => {
                        drop(tx); // half-close: the server ends the stream
                        return;
                    }
                    Some(Ok(None)) => seen.streams_ended.add("Ok (end of stream)"),
                    Some(Ok(Some(_))) => seen.streams_ended.add("an unexpected message"),
                    Some(Err(s)) => seen.streams_ended.add(code_name(&s)),
                }
            }
            Err(s) => seen.streams_refused.add(code_name(&s)),
        }
        drop(tx);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How many times each id is stored (ids not stored are absent).
async fn stored(c: &tokio_postgres::Client, ids: &[Uuid]) -> BTreeMap<Uuid, i64> {
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(20_000) {
        let rows = c
            .query(
                "SELECT decision_id, count(*) FROM decisions WHERE decision_id = ANY($1) \
                 GROUP BY decision_id",
                &[&chunk],
            )
            .await
            .expect("looking the decisions up");
        found.extend(
            rows.iter()
                .map(|r| (r.get::<_, Uuid>(0), r.get::<_, i64>(1))),
        );
    }
    found
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a load test of a minute or more; run with --ignored (see the module doc)"]
async fn soak_with_decision_log_postgres_restart_long_ids_and_idle_streams() {
    let seconds: u64 = env_or("CRA_SOAK_SECONDS", 30);
    let clients: usize = env_or("CRA_SOAK_CLIENTS", 8);
    let idle_streams: usize = env_or("CRA_SOAK_IDLE_STREAMS", 500);
    let drain_seconds: u64 = env_or("CRA_SOAK_DRAIN_SECONDS", 120);
    let long_ids: bool = env_or("CRA_SOAK_LONG_IDS", true);
    let restart_pg: bool = env_or("CRA_SOAK_PG_RESTART", true);

    let pg = PgCluster::start();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let mut server = CraServer::spawn(&pg.url("cra_soak"), &spool, work.path().join("serve.log"));
    server.ready().await;
    eprintln!(
        "soak: cra serve at {}, PostgreSQL on port {}, {seconds} s, {clients} unary clients, \
         {idle_streams} idle streams",
        server.addr, pg.port
    );

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (stop_streams, stop_rx) = watch::channel(false);
    let pool = Arc::new(random_applications(10_000, 8));
    let mut tasks = Vec::new();

    // The idle streams first, over connections of 50 streams each, so they hold what they can
    // before the load starts.
    for c in 0..idle_streams.div_ceil(50) {
        let ch = server
            .channel()
            .await
            .expect("a connection for idle streams");
        for _ in 0..50.min(idle_streams - c * 50) {
            tasks.push(tokio::spawn(idle_stream(
                CreditRiskServiceClient::new(ch.clone()),
                seen.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let settle = Instant::now() + Duration::from_secs(5);
    while (seen.streams_opened.load(Ordering::Relaxed) + seen.streams_refused.total())
        < idle_streams as u64
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "soak: {} idle streams open, {:?} refused",
        seen.streams_open.load(Ordering::Relaxed),
        seen.streams_refused.snapshot()
    );

    let started = Instant::now();
    let mut load = Vec::new();
    for t in 0..clients {
        let ch = server.channel().await.expect("a connection for a client");
        load.push(tokio::spawn(unary_client(
            CreditRiskServiceClient::new(ch),
            pool.clone(),
            t,
            seen.clone(),
            stop.clone(),
        )));
    }
    if long_ids {
        load.push(tokio::spawn(long_id_client(
            CreditRiskServiceClient::new(server.channel().await.unwrap()),
            pool[0].clone(),
            seen.clone(),
            stop.clone(),
        )));
    }

    // Half-way: restart PostgreSQL.
    let run = Duration::from_secs(seconds);
    let mut restarted = None;
    let mut next_report = started + Duration::from_secs(5);
    while started.elapsed() < run {
        if restart_pg && restarted.is_none() && started.elapsed() >= run / 2 {
            let before = pg.postmaster_pid();
            let t0 = Instant::now();
            let pg_ref = &pg;
            tokio::task::block_in_place(|| pg_ref.restart());
            let after = pg.postmaster_pid();
            eprintln!(
                "soak: PostgreSQL restarted in {:.1} s (postmaster {before} -> {after})",
                t0.elapsed().as_secs_f64()
            );
            restarted = Some((before, after));
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "soak: {:>3} s: {} OK, unary errors {:?}, long ids {:?}, {} idle streams open",
                started.elapsed().as_secs(),
                seen.ok.load(Ordering::Relaxed),
                seen.unary_errors.snapshot(),
                seen.long_id.snapshot(),
                seen.streams_open.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let _ = stop_streams.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let ok_ids = std::mem::take(&mut *seen.ok_ids.lock().unwrap());

    // Wait (bounded) until every decision answered is stored, then stop the server gracefully.
    // (A connection of its own, made after PostgreSQL's restart.)
    let db = cra::decision_log::db::connect(
        &pg.url("cra_soak").parse().unwrap(),
        Duration::from_secs(10),
    )
    .await
    .expect("the test's PostgreSQL");
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(drain_seconds);
    let mut present = stored(&db, &ok_ids).await.len();
    let mut progress_at = Instant::now();
    while present < ok_ids.len()
        && Instant::now() < drain_deadline
        && progress_at.elapsed() < DRAIN_STALL
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now_present = stored(&db, &ok_ids).await.len();
        if now_present > present {
            progress_at = Instant::now();
        }
        present = now_present;
    }
    let drained_in = drain_started.elapsed();
    let peak_rss = server.peak_rss_mb();
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let exit = server.wait_exit(Duration::from_secs(60)).await;

    // The figures.
    let found = stored(&db, &ok_ids).await;
    let missing: Vec<&Uuid> = ok_ids.iter().filter(|id| !found.contains_key(id)).collect();
    let stored_twice = found.values().filter(|n| **n > 1).count();
    let table = db
        .query_one(
            "SELECT count(*), count(DISTINCT decision_id), \
             count(*) FILTER (WHERE outcome = 'ok'), count(*) FILTER (WHERE outcome = 'invalid'), \
             count(*) FILTER (WHERE octet_length(application_id) > 256) FROM decisions",
            &[],
        )
        .await
        .expect("counting the decisions");
    let (rows, distinct, rows_ok, rows_invalid, rows_long): (i64, i64, i64, i64, i64) = (
        table.get(0),
        table.get(1),
        table.get(2),
        table.get(3),
        table.get(4),
    );
    let mut spool_files: Vec<(String, u64)> = std::fs::read_dir(&spool)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default();
    spool_files.sort();
    let set_aside: Vec<&(String, u64)> = spool_files
        .iter()
        .filter(|(name, _)| {
            let n = name.to_ascii_lowercase();
            n.contains("quarantine") || n.contains("aside")
        })
        .collect();
    let mut lat = std::mem::take(&mut *seen.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let unary_errors = seen.unary_errors.snapshot();
    let long_id = seen.long_id.snapshot();
    let log = server.log();
    let log_lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();

    eprintln!("==== soak figures ====");
    eprintln!(
        "unary: {} OK in {:.1} s = {:.0} calls/s; errors {:?} {:?}",
        ok_ids.len(),
        elapsed.as_secs_f64(),
        ok_ids.len() as f64 / elapsed.as_secs_f64(),
        unary_errors,
        seen.unary_error_samples.lock().unwrap()
    );
    eprintln!(
        "unary client latency (OK): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or(0)
    );
    eprintln!("over-long application ids: {long_id:?}");
    eprintln!(
        "idle streams: {} opened, at most {} open at once; ended by the server {:?}; refused {:?}",
        seen.streams_opened.load(Ordering::Relaxed),
        seen.streams_open_max.load(Ordering::Relaxed),
        seen.streams_ended.snapshot(),
        seen.streams_refused.snapshot()
    );
    eprintln!(
        "PostgreSQL restart: {:?}; drain wait after the load {:.1} s",
        restarted,
        drained_in.as_secs_f64()
    );
    eprintln!(
        "table: {rows} rows ({distinct} distinct ids; {rows_ok} ok, {rows_invalid} invalid, \
         {rows_long} with an application_id over 256 bytes)"
    );
    eprintln!(
        "answered OK: {} ; stored: {} ; missing: {} (e.g. {:?}) ; stored more than once: {}",
        ok_ids.len(),
        found.len(),
        missing.len(),
        &missing[..missing.len().min(3)],
        stored_twice
    );
    eprintln!(
        "spool directory after exit: {} files, {} bytes; quarantined or set aside: {} files, {} \
         bytes; e.g. {:?}",
        spool_files.len(),
        spool_files.iter().map(|f| f.1).sum::<u64>(),
        set_aside.len(),
        set_aside.iter().map(|f| f.1).sum::<u64>(),
        &spool_files[..spool_files.len().min(4)]
    );
    eprintln!(
        "server: exit {exit:?}, peak RSS {peak_rss:?} MB; log: {} lines, {} WARN, {} ERROR",
        log.lines().count(),
        log_lines("WARN"),
        log_lines("ERROR")
    );
    for l in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(12)
    {
        eprintln!("  {}", l.chars().take(400).collect::<String>());
    }

    // The promises.
    let mut broken = Vec::new();
    if ok_ids.is_empty() {
        broken.push("no unary call got OK: the load never ran".to_owned());
    }
    if !missing.is_empty() {
        broken.push(format!(
            "{} of {} decisions answered OK are not in the table",
            missing.len(),
            ok_ids.len()
        ));
    }
    if stored_twice > 0 || rows != distinct {
        broken.push(format!(
            "decisions stored more than once: {stored_twice} answered ids, {} rows in all",
            rows - distinct
        ));
    }
    if !set_aside.is_empty() {
        broken.push(format!(
            "{} spool segments quarantined or set aside, e.g. {:?}",
            set_aside.len(),
            &set_aside[..set_aside.len().min(3)]
        ));
    }
    if !unary_errors.is_empty() {
        broken.push(format!(
            "valid unary calls failed: {unary_errors:?}, e.g. {:?}",
            seen.unary_error_samples.lock().unwrap()
        ));
    }
    if long_ids && (long_id.is_empty() || long_id.keys().any(|k| k != "InvalidArgument")) {
        broken.push(format!(
            "over-long application ids must each get INVALID_ARGUMENT: {long_id:?}"
        ));
    }
    match &restarted {
        Some((before, after)) if before != after && !after.is_empty() => {}
        _ if !restart_pg => {}
        other => broken.push(format!("PostgreSQL was not restarted: {other:?}")),
    }
    if !exit.is_some_and(|s| s.success()) {
        broken.push(format!(
            "cra serve did not exit cleanly after SIGTERM: {exit:?}"
        ));
    }
    assert!(
        broken.is_empty(),
        "the soak test found {} broken promise(s):\n- {}\n---- server log (last 40 lines) ----\n{}",
        broken.len(),
        broken.join("\n- "),
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
