//! The decision log wired into the server, against the real PostgreSQL (default
//! `postgres://postgres@127.0.0.1:5432`; override with `CRA_TEST_PG`, or `DATABASE_URL` whose
//! database name is ignored). Each test creates its own database and drops it at the end.
//! Counting and outage run the server in-process; crash (SIGKILL) and SIGTERM run the real
//! `cra` binary.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cra::{
    bench::random_applications,
    decision_log::{DatabaseUrl, DecisionLog, DecisionLogConfig},
    grpc::pb::{
        self, batch_result::Result as Item, credit_risk_service_client::CreditRiskServiceClient,
        ScoreBatchRequest, ScoreRequest,
    },
};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::pg::{Proxy, TestDb};
use crate::helpers::{config, spawn_app_with, TestApp};

/// The in-process server with a decision log writing to `url`, readiness following the log.
async fn spawn_audited(url: DatabaseUrl, spool: &Path) -> (TestApp, DecisionLog) {
    spawn_audited_with(url, spool, |_| {}).await
}

/// [`spawn_audited`], with the log's configuration adjusted by `adjust`.
async fn spawn_audited_with(
    url: DatabaseUrl,
    spool: &Path,
    adjust: impl FnOnce(&mut DecisionLogConfig),
) -> (TestApp, DecisionLog) {
    let mut cfg = DecisionLogConfig::new(url, spool.to_owned());
    cfg.flush_interval = Duration::from_millis(20);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.write_timeout = Duration::from_secs(2);
    cfg.retry_interval = Duration::from_millis(200);
    cfg.batch_size = 500;
    adjust(&mut cfg);
    let audit = DecisionLog::start(cfg).await.expect("decision log starts");
    let recorder = audit.clone();
    let app = spawn_app_with(config(), move |b| b.decision_log(recorder)).await;
    app.wait_ready().await;
    (app, audit)
}

/// What a client received for one application.
#[derive(Debug, Clone)]
enum Received {
    Scored(pb::RiskScore),
    /// Rejected: the application id sent and the fields the error named.
    Invalid {
        application_id: String,
        fields: Vec<String>,
    },
}

fn invalid_app(i: usize, app: &mut pb::CreditApplication) {
    match i % 3 {
        0 => app.age = 7,
        1 => {
            app.income = f64::NAN;
            app.loan_term = 0;
        }
        _ => app.loan_purpose = 77,
    }
}

fn risk_level_name(v: i32) -> String {
    pb::RiskLevel::try_from(v)
        .map(|l| {
            l.as_str_name()
                .trim_start_matches("RISK_LEVEL_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

async fn stream_all(
    client: &mut CreditRiskServiceClient<Channel>,
    messages: Vec<ScoreBatchRequest>,
) -> Result<Vec<pb::BatchResult>, tonic::Status> {
    let mut inbound = client
        .score_batch(tokio_stream::iter(messages))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = inbound.message().await? {
        out.extend(m.results);
    }
    Ok(out)
}

fn received_item(r: pb::BatchResult) -> Received {
    match r.result.expect("every item has a result") {
        Item::Score(s) => Received::Scored(s),
        Item::Error(e) => Received::Invalid {
            application_id: r.application_id,
            fields: e.field_violations.into_iter().map(|v| v.field).collect(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_and_stream_items_give_exactly_one_row_each_with_what_the_client_got() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let (mut app, audit) = spawn_audited(db.url(), spool.path()).await;
    let model_version = app.bundle.version().to_owned();

    let mut received = Vec::new();
    // N unary calls: every 4th invalid, plus one request without an application.
    let n_unary = 40;
    for (i, mut a) in random_applications(n_unary - 1, 21).into_iter().enumerate() {
        a.application_id = format!("unary-{i}");
        if i % 4 == 3 {
            invalid_app(i, &mut a);
        }
        let mut req = tonic::Request::new(ScoreRequest {
            application: Some(a.clone()),
            explain: false,
        });
        req.metadata_mut()
            .insert("x-request-id", format!("req-{i}").parse().unwrap());
        match app.client.score(req).await {
            Ok(r) => {
                let s = r.into_inner().score.unwrap();
                assert_eq!(s.request_id, format!("req-{i}"));
                received.push(Received::Scored(s));
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                assert_eq!(i % 4, 3, "only the invalid ones are rejected");
                let fields = status
                    .get_details_bad_request()
                    .expect("BadRequest details")
                    .field_violations
                    .into_iter()
                    .map(|v| v.field)
                    .collect();
                received.push(Received::Invalid {
                    application_id: a.application_id,
                    fields,
                });
            }
        }
    }
    let status = app
        .client
        .score(ScoreRequest {
            application: None,
            explain: false,
        })
        .await
        .expect_err("no application");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    received.push(Received::Invalid {
        application_id: String::new(),
        fields: vec!["application".into()],
    });

    // M stream items in messages of 1 to 60, every 13th invalid.
    let m_stream = 700;
    let mut apps = random_applications(m_stream, 22);
    for (i, a) in apps.iter_mut().enumerate() {
        a.application_id = format!("stream-{i}");
        if i % 13 == 5 {
            invalid_app(i, a);
        }
    }
    let mut messages = Vec::new();
    let mut rest = apps.as_slice();
    let mut size = 1;
    while !rest.is_empty() {
        let take = size.min(rest.len());
        messages.push(ScoreBatchRequest {
            applications: rest[..take].to_vec(),
            explain: false,
        });
        rest = &rest[take..];
        size = size % 60 + 7;
    }
    let results = stream_all(&mut app.client, messages).await.unwrap();
    assert_eq!(results.len(), m_stream);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.position, i as u64);
    }
    received.extend(results.into_iter().map(received_item));
    assert_eq!(received.len(), n_unary + m_stream);

    // Stop as `cra serve` does: drain the server, then flush the log.
    let TestApp { handle, .. } = app;
    handle.shutdown().await.unwrap();
    audit.shutdown().await;
    assert_eq!(audit.stats().lost, 0);

    let c = db.client().await;
    let rows = c
        .query(
            "SELECT decision_id, application_id, outcome, probability_default, risk_score, \
             risk_level, prediction, margin, request_id, model_version, rpc, violations \
             FROM decisions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), n_unary + m_stream, "exactly N+M rows");
    let by_id: HashMap<Uuid, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, Uuid>(0), r)).collect();
    assert_eq!(by_id.len(), rows.len(), "distinct decision ids");
    let mut by_app: HashMap<String, Vec<&tokio_postgres::Row>> = HashMap::new();
    for r in &rows {
        by_app.entry(r.get(1)).or_default().push(r);
    }
    let mut unary_rows = 0;
    for rec in &received {
        match rec {
            Received::Scored(s) => {
                let id: Uuid = s.decision_id.parse().expect("decision_id is a UUID");
                assert_eq!(id.get_version_num(), 7);
                let row = by_id.get(&id).expect("the client's decision is stored");
                let ctx = &s.application_id;
                assert_eq!(row.get::<_, String>(1), s.application_id);
                assert_eq!(row.get::<_, String>(2), "ok", "{ctx}");
                assert_eq!(
                    row.get::<_, Option<f64>>(3),
                    Some(s.probability_default),
                    "{ctx}"
                );
                assert_eq!(row.get::<_, Option<f64>>(4), Some(s.risk_score), "{ctx}");
                assert_eq!(
                    row.get::<_, Option<String>>(5),
                    Some(risk_level_name(s.risk_level)),
                    "{ctx}"
                );
                assert_eq!(
                    row.get::<_, Option<i16>>(6),
                    Some(s.prediction as i16),
                    "{ctx}"
                );
                assert_eq!(row.get::<_, Option<f64>>(7), Some(s.margin), "{ctx}");
                assert_eq!(row.get::<_, String>(8), s.request_id, "{ctx}");
                assert_eq!(row.get::<_, String>(9), model_version, "{ctx}");
                let rpc: String = row.get(10);
                assert_eq!(
                    rpc,
                    if ctx.starts_with("unary") {
                        "unary"
                    } else {
                        "stream"
                    }
                );
                unary_rows += usize::from(rpc == "unary");
            }
            Received::Invalid {
                application_id,
                fields,
            } => {
                let rows = &by_app[application_id];
                assert_eq!(rows.len(), 1, "{application_id}: one row");
                let row = rows[0];
                assert_eq!(row.get::<_, String>(2), "invalid", "{application_id}");
                assert_eq!(row.get::<_, Option<f64>>(3), None, "{application_id}");
                let v: serde_json::Value = row.get(11);
                let stored: Vec<String> = v
                    .as_array()
                    .expect("violations array")
                    .iter()
                    .map(|x| x["field"].as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(&stored, fields, "{application_id}");
                let rpc: String = row.get(10);
                unary_rows += usize::from(rpc == "unary");
            }
        }
    }
    assert_eq!(unary_rows, n_unary);
}

/// Client load for the outage and SIGTERM tests: unary loops and repeated short streams,
/// collecting the decision ids of every score received, until `stop` or the first error.
struct Load {
    ids: Arc<Mutex<Vec<Uuid>>>,
    errors: Arc<Mutex<Vec<String>>>,
    scored: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(channel: Channel, unary_tasks: usize, stream_tasks: usize) -> Load {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let scored = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let pool = Arc::new(random_applications(2_000, 5));
        for t in 0..unary_tasks + stream_tasks {
            let (ids, errors, scored, stop, pool) = (
                ids.clone(),
                errors.clone(),
                scored.clone(),
                stop.clone(),
                pool.clone(),
            );
            let mut client = CreditRiskServiceClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = t * 7;
                while !stop.load(Ordering::SeqCst) {
                    let got: Result<Vec<String>, tonic::Status> = if t < unary_tasks {
                        let app = pool[k % pool.len()].clone();
                        client
                            .score(ScoreRequest {
                                application: Some(app),
                                explain: false,
                            })
                            .await
                            .map(|r| vec![r.into_inner().score.unwrap().decision_id])
                    } else {
                        let apps: Vec<_> = (0..200)
                            .map(|j| pool[(k + j) % pool.len()].clone())
                            .collect();
                        let msgs = apps
                            .chunks(50)
                            .map(|c| ScoreBatchRequest {
                                applications: c.to_vec(),
                                explain: false,
                            })
                            .collect();
                        stream_all(&mut client, msgs).await.and_then(|rs| {
                            rs.into_iter()
                                .map(|r| match r.result {
                                    Some(Item::Score(s)) => Ok(s.decision_id),
                                    other => Err(tonic::Status::internal(format!("{other:?}"))),
                                })
                                .collect()
                        })
                    };
                    k += 1;
                    match got {
                        Ok(got) => {
                            scored.fetch_add(got.len() as u64, Ordering::Relaxed);
                            ids.lock()
                                .unwrap()
                                .extend(got.iter().map(|d| d.parse::<Uuid>().unwrap()));
                        }
                        Err(s) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{:?}: {}", s.code(), s.message()));
                            return;
                        }
                    }
                }
            }));
        }
        Load {
            ids,
            errors,
            scored,
            stop,
            tasks,
        }
    }

    fn scored(&self) -> u64 {
        self.scored.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns the decision ids received and the errors seen.
    async fn finish(self) -> (Vec<Uuid>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ids = std::mem::take(&mut *self.ids.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (ids, errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_loses_and_duplicates_nothing() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(true).await;
    let (app, audit) = spawn_audited(db.url_via(proxy.addr), spool.path()).await;
    assert!(audit.status().database_up);

    let load = Load::start(app.channel.clone(), 4, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit.status().database_up {
        assert!(Instant::now() < deadline, "the outage was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_outage = load.scored();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = load.scored() - at_outage;
    assert!(
        during > 0,
        "scoring continues while PostgreSQL is unreachable"
    );
    assert!(app.handle.readiness().is_ready(), "still ready");
    assert!(audit.stats().spooled > 0, "{:?}", audit.stats());
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !audit.status().database_up {
        assert!(Instant::now() < deadline, "PostgreSQL never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ids, errors) = load.finish().await;
    assert!(errors.is_empty(), "no call failed: {errors:?}");
    assert!(ids.len() > 100, "load ran: {}", ids.len());
    eprintln!(
        "outage test: {} decisions, {during} during the outage, stats {:?}",
        ids.len(),
        audit.stats()
    );
    // The spool is replayed while the server keeps running.
    db.assert_each_once(&ids, Duration::from_secs(30)).await;
    let TestApp { handle, .. } = app;
    handle.shutdown().await.unwrap();
    audit.shutdown().await;
    assert_eq!(audit.stats().lost, 0);
    let (rows, _) = db.counts().await;
    assert_eq!(
        rows as usize,
        ids.len(),
        "no decision beyond those answered"
    );
}

/// The real `cra serve` binary, on a free port, its log in `log`.
struct CraProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl CraProcess {
    fn spawn(database_url: &str, spool: &Path, log: PathBuf) -> CraProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
        let child = Command::new(env!("CARGO_BIN_EXE_cra"))
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(&model)
            .arg("--spool-dir")
            .arg(spool)
            .args(["--database-url", database_url])
            .args(["--audit-flush-interval-ms", "20"])
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cra serve starts");
        CraProcess { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until readiness is SERVING and returns a channel to it.
    async fn ready(&mut self) -> Channel {
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
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let serving = HealthClient::new(ch.clone())
                    .check(HealthCheckRequest {
                        service: cra::grpc::SERVICE_NAME.into(),
                    })
                    .await
                    .is_ok_and(|r| {
                        r.into_inner().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                                as i32
                    });
                if serving {
                    return ch;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "cra serve did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CraProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The decision ids found in the spool's segment files.
fn spooled_ids(dir: &Path) -> HashSet<Uuid> {
    let mut ids = HashSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "spool") {
            let data = std::fs::read(&p).unwrap();
            ids.extend(
                cra::decision_log::spool::decode_segment(&data)
                    .frames
                    .records()
                    .iter()
                    .map(|r| r.decision_id),
            );
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_decisions_spooled_then_restart_stores_each_exactly_once() {
    let db = TestDb::create("cra_api_test").await;
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let proxy = Proxy::start(false).await; // PostgreSQL unreachable: decisions are spooled

    let mut first = CraProcess::spawn(
        &db.url_via(proxy.addr).to_string(),
        &spool,
        work.path().join("first.log"),
    );
    let channel = first.ready().await;
    let mut client = CreditRiskServiceClient::new(channel);
    let mut ids = Vec::new();
    for (i, a) in random_applications(200, 31).into_iter().enumerate() {
        let s = client
            .score(ScoreRequest {
                application: Some(a),
                explain: false,
            })
            .await
            .unwrap_or_else(|e| panic!("unary {i}: {e:?}"))
            .into_inner()
            .score
            .unwrap();
        ids.push(s.decision_id.parse::<Uuid>().unwrap());
    }
    let msgs = random_applications(3_000, 32)
        .chunks(250)
        .map(|c| ScoreBatchRequest {
            applications: c.to_vec(),
            explain: false,
        })
        .collect();
    for r in stream_all(&mut client, msgs).await.unwrap() {
        match r.result {
            Some(Item::Score(s)) => ids.push(s.decision_id.parse().unwrap()),
            other => panic!("{other:?}"),
        }
    }
    // SIGKILL right after the last answer: every decision answered must already be on disk
    // (the journal), whatever the writers had done with it.
    first.child.kill().unwrap(); // SIGKILL
    let status = first.child.wait().unwrap();
    assert!(!status.success(), "killed: {status}");
    assert_eq!(
        db.counts().await,
        (0, 0),
        "nothing reached PostgreSQL before"
    );

    // Restart against the reachable database: the spool is replayed at start-up.
    let mut second = CraProcess::spawn(
        &db.url().to_string(),
        &spool,
        work.path().join("second.log"),
    );
    let _ = second.ready().await;
    db.assert_each_once(&ids, Duration::from_secs(30)).await;
    let (rows, _) = db.counts().await;
    assert_eq!(rows as usize, ids.len(), "{}", second.log());
    Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(second.wait_exit(Duration::from_secs(30)).await.success());
    assert!(
        spooled_ids(&spool).is_empty(),
        "the replayed spool is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_decision_a_client_received() {
    let db = TestDb::create("cra_api_test").await;
    let work = tempfile::tempdir().unwrap();
    let mut cra = CraProcess::spawn(
        &db.url().to_string(),
        &work.path().join("spool"),
        work.path().join("serve.log"),
    );
    let channel = cra.ready().await;
    let load = Load::start(channel, 4, 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(load.scored() > 0, "load is running");
    Command::new("kill")
        .args(["-TERM", &cra.child.id().to_string()])
        .status()
        .unwrap();
    let status = cra.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{status}:\n{}", cra.log());
    let (ids, errors) = load.finish().await;
    eprintln!(
        "SIGTERM test: {} decisions received; client errors after SIGTERM: {:?}",
        ids.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(ids.len() > 100, "load ran: {}", ids.len());
    // The process has exited: whatever it recorded is already in PostgreSQL or the spool.
    let log = cra.log();
    assert!(log.contains("decision log stopped"), "{log}");
    db.assert_each_once(&ids, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_postgres_up_then_restart_keeps_every_decision_answered() {
    let db = TestDb::create("cra_api_test").await;
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let mut first = CraProcess::spawn(&db.url().to_string(), &spool, work.path().join("first.log"));
    let channel = first.ready().await;
    let load = Load::start(channel, 4, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.child.kill().unwrap(); // SIGKILL while decisions are queued and being written
    let _ = first.child.wait();
    let (ids, errors) = load.finish().await;
    assert!(ids.len() > 100, "load ran: {}", ids.len());
    assert!(!errors.is_empty(), "the clients saw the server die");
    // At the kill, every decision answered is in PostgreSQL or in the journal on disk: the
    // restart can only recover what one of them holds.
    let in_db = db.occurrences(&ids).await;
    let journaled = spooled_ids(&spool);
    let before = in_db.len();
    eprintln!(
        "SIGKILL under load: {} decisions answered, {before} in PostgreSQL at the kill, {} in \
         the journal",
        ids.len(),
        journaled.len()
    );
    assert!(
        before > 0,
        "PostgreSQL was up: decisions were being stored before the kill"
    );
    let nowhere: Vec<_> = ids
        .iter()
        .filter(|id| !in_db.contains_key(id) && !journaled.contains(id))
        .collect();
    assert!(
        nowhere.is_empty(),
        "{} decisions answered before the kill are neither in PostgreSQL nor in the journal, \
         e.g. {:?}",
        nowhere.len(),
        &nowhere[..nowhere.len().min(3)]
    );

    let mut second = CraProcess::spawn(
        &db.url().to_string(),
        &spool,
        work.path().join("second.log"),
    );
    let _ = second.ready().await;
    db.assert_each_once(&ids, Duration::from_secs(30)).await;
}

/// A recorder that refuses every decision, like a decision log whose spool is full while
/// PostgreSQL is down.
#[derive(Debug)]
struct Refusing;

impl cra::scoring::DecisionRecorder for Refusing {
    fn record(
        &self,
        _: &cra::scoring::DecisionRecord<'_>,
    ) -> Result<(), cra::scoring::RecordError> {
        Err(cra::scoring::RecordError("spool full".into()))
    }
}

#[tokio::test]
async fn a_decision_that_cannot_be_recorded_is_not_made() {
    let mut app = spawn_app_with(config(), |b| b.recorder(Arc::new(Refusing))).await;
    app.wait_ready().await;
    let mut a = random_applications(1, 3).remove(0);
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(a.clone()),
            explain: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    a.age = 7;
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(a.clone()),
            explain: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "invalid ones too");
    let results = stream_all(
        &mut app.client,
        vec![ScoreBatchRequest {
            applications: vec![a.clone(); 3],
            explain: false,
        }],
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        match r.result {
            Some(Item::Error(e)) => assert_eq!(e.code, tonic::Code::Unavailable as i32),
            other => panic!("{other:?}"),
        }
    }
}

/// A recorder that keeps every decision and reports a backlog while `behind` is set.
#[derive(Debug, Default)]
struct Behind {
    behind: AtomicBool,
    recorded: AtomicU64,
}

impl cra::scoring::DecisionRecorder for Behind {
    fn record(
        &self,
        _: &cra::scoring::DecisionRecord<'_>,
    ) -> Result<(), cra::scoring::RecordError> {
        self.recorded.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn backlogged(&self) -> bool {
        self.behind.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_stream_waits_while_the_decision_log_is_behind_instead_of_failing() {
    let recorder = Arc::new(Behind::default());
    recorder.behind.store(true, Ordering::SeqCst);
    let r = recorder.clone();
    let mut app = spawn_app_with(config(), move |b| b.recorder(r)).await;
    app.wait_ready().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(4);
    let mut answers = app
        .client
        .score_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(ScoreBatchRequest {
        applications: random_applications(10, 5),
        explain: false,
    })
    .await
    .unwrap();
    // While the log is behind, nothing is decided and nothing is answered...
    let waited = tokio::time::timeout(Duration::from_millis(300), answers.message()).await;
    assert!(waited.is_err(), "answered while the log was behind");
    assert_eq!(recorder.recorded.load(Ordering::SeqCst), 0);
    // ...and once it catches up, every item is scored, none refused.
    recorder.behind.store(false, Ordering::SeqCst);
    let msg = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("answered after the log caught up")
        .unwrap()
        .expect("a response");
    assert_eq!(msg.results.len(), 10);
    assert!(msg
        .results
        .iter()
        .all(|r| matches!(r.result, Some(Item::Score(_)))));
    assert_eq!(recorder.recorded.load(Ordering::SeqCst), 10);
    drop(tx);
}

// The database helpers the tests above rely on must fail loudly: a query that fails proves
// nothing about what reached PostgreSQL.

#[tokio::test]
async fn counting_in_a_database_never_migrated_gives_zero() {
    let db = TestDb::create("cra_api_test").await;
    assert_eq!(db.counts().await, (0, 0));
    assert!(db.occurrences(&[Uuid::now_v7()]).await.is_empty());
}

#[tokio::test]
#[should_panic(expected = "counting the decisions")]
async fn counting_panics_when_the_query_fails() {
    let db = TestDb::create("cra_api_test").await;
    // A `decisions` table the count query cannot read.
    db.client()
        .await
        .batch_execute("CREATE TABLE decisions (id integer)")
        .await
        .unwrap();
    let counts = db.counts().await;
    eprintln!("a failed count was taken for {counts:?}");
}

#[tokio::test]
#[should_panic(expected = "looking the decisions up")]
async fn looking_decisions_up_panics_when_the_query_fails() {
    let db = TestDb::create("cra_api_test").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE decisions (decision_id text)")
        .await
        .unwrap();
    let found = db.occurrences(&[Uuid::now_v7()]).await;
    eprintln!("a failed look-up was taken for {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_log_refuses_tells_the_client_nothing_of_the_spool() {
    let db = TestDb::new("cra_api_test");
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool-dir-of-this-test");
    let proxy = Proxy::start(false).await; // PostgreSQL unreachable: the spool fills
    let (mut app, audit) = spawn_audited_with(db.url_via(proxy.addr), &spool, |cfg| {
        cfg.spool_max_bytes = 64 * 1024;
    })
    .await;
    let apps = random_applications(2000, 11);
    let mut refused = None;
    for a in apps {
        if let Err(status) = app
            .client
            .score(ScoreRequest {
                application: Some(a),
                explain: false,
            })
            .await
        {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("the full spool refuses a decision");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let msg = status.message();
    assert!(msg.contains("retry later"), "{msg}");
    for internal in ["spool", "bytes", "limit", &spool.display().to_string()] {
        assert!(
            !msg.contains(internal),
            "{internal:?} in the client's message: {msg}"
        );
    }
    assert!(audit.stats().refused >= 1);
    audit.shutdown().await;
}

/// With a shadow in the models file, each live decision (unary and streamed) has exactly one
/// shadow row in PostgreSQL: its own id, role `shadow`, the shadow's version, `shadow_of` the
/// live id, and the live row's application, rpc and stream position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_decisions_are_rows_of_their_own_linked_to_the_live_ones() {
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = dir.path().join("models.toml");
    std::fs::write(
        &models,
        format!(
            "[[models]]\npath = {:?}\nrole = \"champion\"\n[[models]]\npath = {:?}\nrole = \"shadow\"\n",
            root.join("models/default"),
            root.join("models/challenger")
        ),
    )
    .unwrap();
    let mut cfg = DecisionLogConfig::new(db.url(), spool.path().to_owned());
    cfg.flush_interval = Duration::from_millis(20);
    let audit = DecisionLog::start(cfg).await.expect("decision log starts");
    let mut serve = config();
    serve.models = Some(models);
    let log = audit.clone();
    let mut app = spawn_app_with(serve, move |b| b.decision_log(log)).await;
    app.wait_ready().await;
    for (i, mut a) in random_applications(20, 5).into_iter().enumerate() {
        a.application_id = format!("u-{i}");
        app.client
            .score(ScoreRequest {
                application: Some(a),
                explain: false,
            })
            .await
            .unwrap();
    }
    let mut apps = random_applications(50, 6);
    for (i, a) in apps.iter_mut().enumerate() {
        a.application_id = format!("s-{i}");
    }
    let answered = stream_all(
        &mut app.client,
        vec![ScoreBatchRequest {
            applications: apps,
            explain: false,
        }],
    )
    .await
    .unwrap();
    assert_eq!(answered.len(), 50);
    let (rows, _) = db.wait_for_rows(140, Duration::from_secs(20)).await;
    assert_eq!(rows, 140, "70 live and 70 shadow rows");
    let c = db.client().await;
    let shadow_version = cra_model::ModelBundle::load(root.join("models/challenger"))
        .unwrap()
        .version()
        .to_owned();
    let linked: i64 = c
        .query_one(
            "SELECT count(*) FROM decisions s JOIN decisions l ON s.shadow_of = l.decision_id \
             WHERE s.model_role = 'shadow' AND l.model_role = 'champion' AND l.shadow_of IS NULL \
               AND s.model_version = $1 AND l.model_version <> $1 \
               AND s.decision_id <> l.decision_id AND s.application_id = l.application_id \
               AND s.rpc = l.rpc AND s.stream_id IS NOT DISTINCT FROM l.stream_id \
               AND s.stream_position IS NOT DISTINCT FROM l.stream_position \
               AND s.outcome = 'ok' AND l.outcome = 'ok'",
            &[&shadow_version],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        linked, 70,
        "every shadow row is linked to its live decision"
    );
    app.handle.shutdown().await.unwrap();
    audit.shutdown().await;
}

/// REST and Open Inference Protocol decisions are rows like any other: `rpc` `rest` or `v2`,
/// the decision ids the clients received, a batch's items at their positions in one call, and
/// of a refused batch only its invalid items (as rejected), never the valid ones it did not
/// decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_v2_decisions_are_recorded_with_their_entry_point() {
    use serde_json::{json, Value};
    let db = TestDb::create("cra_api_test").await;
    let spool = tempfile::tempdir().unwrap();
    let (app, audit) = spawn_audited(db.url(), spool.path()).await;
    let http = reqwest::Client::new();
    let example = crate::rest::original_example();
    let post = |path: &str, body: Value| {
        let req = http.post(app.url(path)).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // One decision, one refusal, a batch of 3, a refused batch (1 bad item of 3).
    let (status, one) = post("/predict", json!(example)).await;
    assert_eq!(status, 200);
    let mut bad = example.clone();
    bad["age"] = json!(12);
    let (status, _) = post("/predict", bad.clone()).await;
    assert_eq!(status, 400);
    let (status, batch) = post(
        "/predict/batch",
        json!({"applications": [example, example, example]}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        "/predict/batch",
        json!({"applications": [example, bad, example]}),
    )
    .await;
    assert_eq!(status, 400);
    // Four rows through /v2.
    let fields: Vec<String> = cra_model::input::NUMBER_FIELDS
        .iter()
        .map(|f| f.name.to_owned())
        .chain(["employment_status", "home_ownership", "loan_purpose"].map(String::from))
        .collect();
    let inputs: Vec<Value> = fields
        .iter()
        .map(|f| {
            let v = &example[f.as_str()];
            let datatype = if v.is_string() { "BYTES" } else { "FP64" };
            json!({"name": f, "datatype": datatype, "shape": [4], "data": [v, v, v, v]})
        })
        .collect();
    let (status, v2) = post("/v2/models/credit-risk/infer", json!({"inputs": inputs})).await;
    assert_eq!(status, 200, "{v2}");

    let (rows, _) = db
        .wait_for_rows(1 + 1 + 3 + 1 + 4, Duration::from_secs(20))
        .await;
    assert_eq!(rows, 10);
    let c = db.client().await;
    let by_rpc: Vec<(String, String, i64, i64, i64)> = c
        .query(
            "SELECT rpc, outcome, count(*), count(DISTINCT stream_id), \
                    coalesce(max(stream_position), -1) \
             FROM decisions GROUP BY rpc, outcome ORDER BY rpc, outcome",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        by_rpc,
        [
            // The single /predict has no stream; 3 batch items at 0..2; the refused batch's
            // bad item at its position, 1.
            ("rest".to_owned(), "invalid".to_owned(), 2, 1, 1),
            ("rest".to_owned(), "ok".to_owned(), 4, 1, 2),
            ("v2".to_owned(), "ok".to_owned(), 4, 1, 3),
        ]
    );
    // The ids the clients got are the rows' ids.
    let mut ids: Vec<Uuid> = vec![one["decision_id"].as_str().unwrap().parse().unwrap()];
    for p in batch["predictions"].as_array().unwrap() {
        ids.push(p["decision_id"].as_str().unwrap().parse().unwrap());
    }
    let v2_ids = v2["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "decision_id")
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse::<Uuid>().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(v2_ids.len(), 4);
    ids.extend(v2_ids);
    db.assert_each_once(&ids, Duration::from_secs(5)).await;
    app.handle.shutdown().await.unwrap();
    audit.shutdown().await;
}

/// A decision the log can neither take nor spool is not made: REST answers 503 with
/// Retry-After, and tells the client nothing of the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_decision_that_cannot_be_recorded_is_a_503() {
    let db = TestDb::new("cra_api_test");
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool-dir-of-this-test");
    let proxy = Proxy::start(false).await; // PostgreSQL unreachable: the spool fills
    let (app, audit) = spawn_audited_with(db.url_via(proxy.addr), &spool, |cfg| {
        cfg.spool_max_bytes = 64 * 1024;
    })
    .await;
    let http = reqwest::Client::new();
    let mut refused = None;
    for _ in 0..2000 {
        let resp = http
            .post(app.url("/predict"))
            .json(&crate::rest::original_example())
            .send()
            .await
            .unwrap();
        if resp.status() != reqwest::StatusCode::OK {
            refused = Some(resp);
            break;
        }
    }
    let resp = refused.expect("the full spool refuses a decision");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("retry later"), "{msg}");
    for internal in ["spool", "bytes", "limit", &spool.display().to_string()] {
        assert!(
            !msg.contains(internal),
            "{internal:?} in the client's message: {msg}"
        );
    }
    audit.shutdown().await;
}
