//! Deadlines, load shedding and abuse: oversized messages, idle streams, too many connections.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cra::{
    config::ServeConfig,
    grpc::pb::{
        self, credit_risk_service_client::CreditRiskServiceClient, ScoreBatchRequest, ScoreRequest,
    },
    scoring::{DecisionRecord, DecisionRecorder, RecordError},
};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Request, Status};

use crate::helpers::{config, example, spawn_app, spawn_app_with, TestApp};

#[tokio::test]
async fn an_exceeded_deadline_is_deadline_exceeded() {
    // The server's own cap (--request-timeout) shorter than any scoring: always exceeded.
    let mut cfg = config();
    cfg.request_timeout = Duration::from_nanos(1);
    let mut app = spawn_app_with(cfg, |b| b).await;
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    app.handle.shutdown().await.unwrap();

    // A client deadline of 1 ns: the call ends in an error, never a score. Which side notices
    // first is a race: the server answers DEADLINE_EXCEEDED, tonic's client reports CANCELLED.
    let mut app = spawn_app().await;
    let mut req = Request::new(ScoreRequest {
        application: Some(example()),
        explain: false,
    });
    req.set_timeout(Duration::from_nanos(1));
    let status = app.client.score(req).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    // A generous deadline is met.
    let mut req = Request::new(ScoreRequest {
        application: Some(example()),
        explain: false,
    });
    req.set_timeout(Duration::from_secs(5));
    app.client.score(req).await.expect("met deadline");
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
    let mut app = spawn_app().await;
    // The client opens the stream but sends nothing for longer than its 200 ms deadline.
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(Duration::from_millis(200));
    let mut inbound = app.client.score_batch(req).await.unwrap().into_inner();
    let status = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("answered within 10 s")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn calls_beyond_the_limit_are_shed_with_resource_exhausted() {
    let mut cfg = config();
    cfg.max_concurrent_requests = 2;
    cfg.max_concurrent_streams = Some(1);
    let mut app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;

    // An open stream holds the only stream slot: a second stream is shed...
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
    let held = app
        .client
        .score_batch(ReceiverStream::new(rx))
        .await
        .expect("the stream takes the slot");
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
    let status = app
        .client
        .score_batch(ReceiverStream::new(rx2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-concurrent-streams"),
        "{status:?}"
    );
    // ...while unary calls keep their own slots.
    still_scores(&mut app).await;

    // Once the stream ends its slot is free again.
    drop(tx);
    let mut inbound = held.into_inner();
    while inbound.message().await.unwrap().is_some() {}
    let mut ok = false;
    for _ in 0..100 {
        let (_tx3, rx3) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
        if app
            .client
            .score_batch(ReceiverStream::new(rx3))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was released");
    app.handle.shutdown().await.unwrap();
}

#[test]
fn limits_that_would_let_streams_starve_unary_calls_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (total, streams) in [(1, None), (4, Some(4)), (4, Some(0)), (8, Some(9))] {
        let mut cfg = config();
        cfg.max_concurrent_requests = total;
        cfg.max_concurrent_streams = streams;
        let Err(err) = rt.block_on(cra::app::App::build(cfg)) else {
            panic!("limits {total}/{streams:?} were accepted")
        };
        assert!(
            err.to_string().contains("--max-concurrent-"),
            "says which flag to fix: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The server under abuse (issue 8, findings 9-12 and the server half of 6).
// ---------------------------------------------------------------------------------------------

/// Counts what the server hands to the decision log; `hold` makes streams wait before a round.
#[derive(Debug, Default)]
struct Counting {
    records: AtomicUsize,
    chunks: AtomicUsize,
    hold: AtomicBool,
}

impl DecisionRecorder for Counting {
    fn record(&self, _: &DecisionRecord<'_>) -> Result<(), RecordError> {
        self.records.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn record_chunk(&self, records: &[DecisionRecord<'_>]) -> Result<(), RecordError> {
        self.chunks.fetch_add(1, Ordering::SeqCst);
        self.records.fetch_add(records.len(), Ordering::SeqCst);
        Ok(())
    }

    fn backlogged(&self) -> bool {
        self.hold.load(Ordering::SeqCst)
    }
}

impl Counting {
    fn records(&self) -> usize {
        self.records.load(Ordering::SeqCst)
    }
}

async fn spawn_counted(cfg: ServeConfig) -> (TestApp, Arc<Counting>) {
    let counting = Arc::new(Counting::default());
    let recorder = counting.clone();
    let app = spawn_app_with(cfg, move |b| b.recorder(recorder)).await;
    app.wait_ready().await;
    (app, counting)
}

/// One normal Score call succeeds.
async fn still_scores(app: &mut TestApp) {
    let resp = app
        .client
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .expect("the server still scores");
    assert!(resp.into_inner().score.is_some());
}

/// Sends one ScoreBatch stream of `messages` and returns the responses and the final status.
async fn stream_messages(
    app: &mut TestApp,
    messages: Vec<ScoreBatchRequest>,
) -> (Vec<pb::ScoreBatchResponse>, Result<(), Status>) {
    let mut inbound = match app.client.score_batch(tokio_stream::iter(messages)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut out = Vec::new();
    loop {
        match inbound.message().await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, Ok(())),
            Err(status) => return (out, Err(status)),
        }
    }
}

/// Finding 9: a ScoreBatch message of more applications than the cap is refused as a whole,
/// before any of them is validated, scored or recorded.
#[tokio::test]
async fn a_batch_message_over_the_item_cap_is_refused_before_any_item_is_decided() {
    let (mut app, counting) = spawn_counted(config()).await;
    // 10,001 empty applications: 20 KB on the wire, one over the default cap of 10,000.
    let message = ScoreBatchRequest {
        applications: vec![pb::CreditApplication::default(); 10_001],
        explain: false,
    };
    let (answers, end) = stream_messages(&mut app, vec![message]).await;
    let status = end.expect_err("the message is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("--max-batch-items") && status.message().contains("10000"),
        "the refusal names the limit: {status:?}"
    );
    assert!(answers.is_empty(), "no item was answered");
    assert_eq!(counting.records(), 0, "no item was decided or recorded");

    // A message at the cap is served, and so is a unary call.
    let message = ScoreBatchRequest {
        applications: vec![example(); 10_000],
        explain: false,
    };
    let (answers, end) = stream_messages(&mut app, vec![message]).await;
    end.expect("a message at the cap is served");
    assert_eq!(
        answers.iter().map(|m| m.results.len()).sum::<usize>(),
        10_000
    );
    still_scores(&mut app).await;
    app.handle.shutdown().await.unwrap();
}

/// Finding 9: a unary request over its own (small) receive limit is refused before it is
/// decoded, and nothing is recorded.
#[tokio::test]
async fn a_unary_request_over_its_own_limit_is_refused_before_decoding() {
    let (mut app, counting) = spawn_counted(config()).await;
    let mut big = example();
    big.application_id = "x".repeat(100 * 1024);
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(big),
            explain: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-unary-message-bytes"),
        "the refusal names the limit: {status:?}"
    );
    assert_eq!(counting.records(), 0, "nothing was decided or recorded");
    still_scores(&mut app).await;
    app.handle.shutdown().await.unwrap();
}

/// Finding 10: with the decision log on, an answer is about twice the size of its request; a
/// request message near the receive limit must still get its whole answer, and every recorded
/// decision is one the client received.
#[tokio::test]
async fn every_accepted_batch_message_gets_an_answer_that_can_be_sent() {
    let mut cfg = config();
    cfg.max_message_bytes = 64 * 1024;
    let (mut app, counting) = spawn_counted(cfg).await;
    let item = example();
    let per_item = item.encoded_len() + 3;
    let n = (60 * 1024) / per_item;
    let message = ScoreBatchRequest {
        applications: vec![item; n],
        explain: false,
    };
    assert!(message.encoded_len() <= 64 * 1024);
    let (answers, end) = stream_messages(&mut app, vec![message]).await;
    end.expect("the answer was sent");
    let answered: usize = answers
        .iter()
        .flat_map(|m| &m.results)
        .filter(|r| matches!(r.result, Some(pb::batch_result::Result::Score(_))))
        .count();
    assert_eq!(answered, n, "every application was answered with a score");
    assert!(
        answers.iter().map(|m| m.encoded_len()).sum::<usize>() > 64 * 1024,
        "the answer is larger than the request limit (the case under test)"
    );
    assert_eq!(counting.records(), n, "recorded exactly what was answered");
    app.handle.shutdown().await.unwrap();
}

/// Finding 11: a unary call already past its deadline is refused with DEADLINE_EXCEEDED before
/// it is scored, and is not recorded (the client never gets a decision, so there is none).
#[tokio::test]
async fn a_unary_call_past_its_deadline_is_not_recorded() {
    let mut cfg = config();
    cfg.request_timeout = Duration::from_nanos(1);
    let (mut app, counting) = spawn_counted(cfg).await;
    for _ in 0..10 {
        let status = app
            .client
            .score(ScoreRequest {
                application: Some(example()),
                explain: false,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(counting.records(), 0, "a late call has no decision row");
    app.handle.shutdown().await.unwrap();
}

/// Finding 12: 1,100 idle ScoreBatch streams (no grpc-timeout) must not take the slots of
/// unary calls.
#[tokio::test]
async fn idle_streams_do_not_starve_unary_calls() {
    let mut app = spawn_app().await;
    let addr = app.handle.local_addr();
    let mut held = Vec::new();
    let mut opened = 0usize;
    // 11 connections of 100 streams each.
    for _ in 0..11 {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let calls = (0..100).map(|_| {
            let mut client = CreditRiskServiceClient::new(channel.clone());
            let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
            async move {
                let r = client.score_batch(ReceiverStream::new(rx)).await;
                (tx, r)
            }
        });
        for (tx, r) in futures::future::join_all(calls).await {
            match r {
                Ok(resp) => {
                    opened += 1;
                    held.push((tx, resp.into_inner()));
                }
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            }
        }
    }
    assert!(opened > 0, "some streams were admitted");
    for i in 0..50 {
        app.client
            .score(ScoreRequest {
                application: Some(example()),
                explain: false,
            })
            .await
            .unwrap_or_else(|s| panic!("unary call {i} with {opened} idle streams open: {s:?}"));
    }
    drop(held);
    app.handle.shutdown().await.unwrap();
}

/// Finding 12: empty stream messages count toward the round size, so a round never gathers
/// more messages than --batch-chunk, whatever they hold.
#[tokio::test]
async fn empty_stream_messages_count_toward_the_round_size() {
    let mut cfg = config();
    cfg.batch_chunk = 1;
    let (mut app, counting) = spawn_counted(cfg).await;
    // The stream waits before its first round until every message has arrived.
    counting.hold.store(true, Ordering::SeqCst);
    let mut messages = vec![ScoreBatchRequest::default(); 1_000];
    messages.push(ScoreBatchRequest {
        applications: vec![example()],
        explain: false,
    });
    let resp = app
        .client
        .score_batch(tokio_stream::iter(messages))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    counting.hold.store(false, Ordering::SeqCst);
    let mut inbound = resp.into_inner();
    let mut answers = 0;
    while inbound.message().await.unwrap().is_some() {
        answers += 1;
    }
    assert_eq!(answers, 1_001, "every message answered");
    assert_eq!(
        counting.chunks.load(Ordering::SeqCst),
        1_001,
        "with --batch-chunk 1 every round holds one message"
    );
    app.handle.shutdown().await.unwrap();
}

/// Finding 6: a start that fails on the port does not touch the decision log's spool (another
/// process may own it): the port is bound before the decision log starts.
#[tokio::test]
async fn a_start_that_fails_on_the_port_leaves_the_spool_alone() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut cfg = config();
    cfg.listen = taken.local_addr().unwrap();
    cfg.decision_log.audit = cra::config::DecisionLogMode::On;
    cfg.decision_log.spool_dir = spool.clone();
    // Nothing listens on port 1: the decision log would spool.
    cfg.decision_log.database.database_url = "postgres://postgres@127.0.0.1:1/cra".parse().unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), cra::app::App::build(cfg))
        .await
        .expect("returns at once")
        .expect_err("the port is taken");
    assert!(
        format!("{err:#}").contains("cannot listen"),
        "names the port: {err:#}"
    );
    assert!(
        !spool.exists(),
        "the spool directory was not touched: {:?}",
        std::fs::read_dir(&spool).map(|d| d.count())
    );
}

/// Reads a field of /proc/<pid>/status in kB.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A codec that sends pre-encoded message bytes and decodes prost messages.
struct RawCodec<T>(std::marker::PhantomData<T>);

impl<T> Default for RawCodec<T> {
    fn default() -> Self {
        RawCodec(std::marker::PhantomData)
    }
}

struct RawEncoder;
struct ProstDecoder<T>(std::marker::PhantomData<T>);

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl<T: Message + Default> tonic::codec::Decoder for ProstDecoder<T> {
    type Item = T;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl<T: Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<T> {
    type Encode = bytes::Bytes;
    type Decode = T;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<T>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ProstDecoder<T> {
        ProstDecoder(std::marker::PhantomData)
    }
}

/// `cra serve` in a child process, killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 8, "Done when": the real binary's peak RSS stays under 512 MB when it gets a
/// ScoreBatch message of 4 million empty applications and a 12 MB unary request; both are
/// refused with a clear status and the server keeps scoring.
#[tokio::test]
async fn peak_memory_stays_bounded_under_oversized_messages() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    assert!(model.exists(), "the committed bundle models/default");
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_cra"))
            .args([
                "serve",
                "--audit",
                "off",
                "--http-listen",
                "127.0.0.1:0",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--model")
            .arg(&model)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("cra serve starts"),
    );
    let pid = child.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let channel = loop {
        if let Ok(ch) = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            let ready = tonic_health::pb::health_client::HealthClient::new(ch.clone())
                .check(tonic_health::pb::HealthCheckRequest {
                    service: cra::grpc::SERVICE_NAME.into(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                });
            if ready {
                break ch;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cra serve never became ready: {}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = CreditRiskServiceClient::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let before_kb = proc_status_kb(pid, "VmHWM");

    // A 12 MB unary request.
    let mut big = example();
    big.application_id = "x".repeat(12_000_000);
    let status = client
        .score(ScoreRequest {
            application: Some(big),
            explain: false,
        })
        .await
        .expect_err("a 12 MB request is refused");
    eprintln!(
        "12 MB unary request: {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        matches!(
            status.code(),
            Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );

    // One ScoreBatch message of 4 million empty applications (field 1, length 0: 2 bytes each).
    let raw = bytes::Bytes::from([0x0au8, 0x00].repeat(4_000_000));
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/creditrisk.v1.CreditRiskService/ScoreBatch",
    );
    let started = std::time::Instant::now();
    let outcome = match grpc
        .streaming(
            Request::new(tokio_stream::once(raw)),
            path,
            RawCodec::<pb::ScoreBatchResponse>::default(),
        )
        .await
    {
        Err(status) => Err(status),
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            let mut items = 0usize;
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => items += m.results.len(),
                    Ok(None) => break Ok(items),
                    Err(status) => break Err(status),
                }
            }
        }
    };
    let peak_kb = proc_status_kb(pid, "VmHWM");
    eprintln!(
        "4M empty applications: {:?} after {:?}; server VmHWM {} MB before the two requests, {} MB after",
        outcome.as_ref().map_err(|s| (s.code(), s.message().to_owned())),
        started.elapsed(),
        before_kb / 1024,
        peak_kb / 1024
    );
    let status = outcome.expect_err("4 million applications in one message are refused");
    assert!(
        matches!(
            status.code(),
            Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );
    assert!(
        peak_kb < 512 * 1024,
        "peak RSS {} MB is over 512 MB",
        peak_kb / 1024
    );

    // The server keeps scoring.
    let resp = client
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .expect("still scores");
    assert!(resp.into_inner().score.is_some());
    drop(child);
}

/// Finding 12: a stream with no message for --stream-idle-timeout is ended with a clear status
/// (after the answers it is owed), and its slot is free again.
#[tokio::test]
async fn an_idle_stream_is_ended_and_frees_its_slot() {
    let mut cfg = config();
    cfg.max_concurrent_requests = 2;
    cfg.max_concurrent_streams = Some(1);
    cfg.stream_idle_timeout = Duration::from_millis(300);
    let (mut app, _counting) = spawn_counted(cfg).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
    let mut inbound = app
        .client
        .score_batch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(ScoreBatchRequest {
        applications: vec![example()],
        explain: false,
    })
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("answered")
        .expect("an answer")
        .expect("a message");
    assert_eq!(answer.results.len(), 1);
    // Then nothing more is sent: the stream ends.
    let status = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("ended within 10 s")
        .expect_err("ended with a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--stream-idle-timeout"),
        "{status:?}"
    );
    // Its slot is free: a new stream is admitted and served.
    let (answers, end) = stream_messages(
        &mut app,
        vec![ScoreBatchRequest {
            applications: vec![example()],
            explain: false,
        }],
    )
    .await;
    end.expect("a new stream is served");
    assert_eq!(answers.len(), 1);
    drop(tx);
    app.handle.shutdown().await.unwrap();
}

/// Finding 12: connections beyond --max-connections are closed at once; existing ones keep
/// working, and a slot is free again when a connection closes.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let mut app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    let addr = app.handle.local_addr();
    let connect = || async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        CreditRiskServiceClient::new(channel)
            .score(ScoreRequest {
                application: Some(example()),
                explain: false,
            })
            .await
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    // The test client holds one connection; a second one is served and kept open.
    let second = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut second_client = CreditRiskServiceClient::new(second);
    second_client
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .expect("the second connection is served");
    // A third is closed.
    assert!(connect().await.is_err(), "a third connection is refused");
    // The open ones keep working.
    still_scores(&mut app).await;
    // Once the second closes, a new connection is served (the server notices the close).
    drop(second_client);
    let mut served = false;
    for _ in 0..200 {
        if connect().await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(served, "a slot was freed when a connection closed");
    app.handle.shutdown().await.unwrap();
}

/// Inputs that crashed the fuzz targets (`fuzz/corpus/*/crash-*`, docs/SECURITY.md), sent to
/// the real server: each is answered as bad input, every violation names a field, nothing is
/// scored, and the server goes on scoring.
#[tokio::test]
async fn inputs_the_fuzzers_found_are_refused_naming_their_fields() {
    use cra::grpc::pb::inference::{
        grpc_inference_service_client::GrpcInferenceServiceClient, ModelInferRequest,
    };
    use tonic_types::StatusExt;

    let (mut app, counting) = spawn_counted(config()).await;
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/predict",
            &include_bytes!("../../fuzz/corpus/rest_json/crash-empty-key")[..],
        ),
        (
            "/v2/models/credit-risk/infer",
            &include_bytes!("../../fuzz/corpus/v2_http/crash-nan-overlapping")[..],
        ),
        (
            "/v2/models/credit-risk/infer",
            &include_bytes!("../../fuzz/corpus/v2_http/crash-huge-shape")[..],
        ),
    ] {
        let resp = http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{path}: {answer}");
        let violations = answer["violations"].as_array().cloned().unwrap_or_default();
        assert!(!violations.is_empty(), "{path}: {answer}");
        for v in violations {
            assert!(
                v["field"].as_str().is_some_and(|f| !f.is_empty()),
                "{path}: {answer}"
            );
        }
    }

    let found = include_bytes!("../../fuzz/corpus/v2_grpc/crash-empty-tensor-name");
    let request = ModelInferRequest::decode(&found[..]).unwrap();
    let status = GrpcInferenceServiceClient::new(app.channel.clone())
        .model_infer(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(fields.contains(&"\"\"".to_owned()), "{fields:?}");
    assert!(fields.iter().all(|f| !f.is_empty()), "{fields:?}");

    // Only /predict's application was decided (refused, and recorded so); the others were
    // refused before any application was read.
    assert_eq!(counting.records(), 1);
    still_scores(&mut app).await;
    app.handle.shutdown().await.unwrap();
}
