//! `creditrisk.v1.CreditRiskService`: Score, ScoreBatch and GetModelInfo.
//!
//! The scoring path never waits on I/O: validation, preprocessing and the tree walk run inline,
//! and the decision recorder only enqueues. ScoreBatch answers an empty request message (zero
//! applications) with an empty response message.
//!
//! A decision is recorded only when its answer can be delivered: a unary call whose deadline
//! has passed before recording is answered DEADLINE_EXCEEDED and has no row (like a call shed
//! for overload), and a stream round is recorded only once room for its answers is reserved.
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tonic::{metadata::MetadataMap, Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use cra_model::{input::MAX_APPLICATION_ID_BYTES, ApplicationInput};

use super::{
    convert::{self, input_from_pb, risk_score_to_pb, ScoreContext},
    metrics::Metrics,
    pb::{self, credit_risk_service_server::CreditRiskService},
    status::{invalid_item_error, GrpcError, ServeError},
};
use crate::{
    admission::Admission,
    config::ServeConfig,
    scoring::{CallContext, Item, ModelSet, Rpc, Scorer},
    security::Caller,
};

/// Metadata key of the request id, read from the client and echoed in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from the client; longer ones are replaced by a generated one.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Answered rounds of one stream waiting for a slow reader before the server stops reading.
const STREAM_RESPONSE_QUEUE: usize = 2;

/// What every call shares: the scoring core, the concurrency limit and the metrics.
#[derive(Debug)]
pub struct GrpcState {
    pub(crate) scorer: Arc<Scorer>,
    /// The process's one concurrency limit, shared with the HTTP adapter.
    pub(crate) admission: Arc<Admission>,
    /// A stream that sends no message or reads no answer for this long is ended.
    pub(crate) stream_idle_timeout: Duration,
    /// Most applications of a stream round.
    pub(crate) batch_chunk: usize,
    /// CPUs available to the process (worker threads); 1 disables parallel stream scoring.
    pub(crate) cpus: usize,
    /// Cap on a unary call's time, on top of the client's grpc-timeout.
    pub(crate) request_timeout: Duration,
    pub metrics: Metrics,
}

impl GrpcState {
    /// The state of a server configured by `cfg` (see `GrpcServer::bind`, which checks the
    /// limits), admitting calls through `admission`.
    pub(crate) fn new(
        cfg: &ServeConfig,
        admission: Arc<Admission>,
        cpus: usize,
        scorer: Arc<Scorer>,
    ) -> Self {
        GrpcState {
            scorer,
            admission,
            stream_idle_timeout: cfg.stream_idle_timeout,
            batch_chunk: cfg.batch_chunk.max(1),
            cpus,
            request_timeout: cfg.request_timeout,
            metrics: Metrics::default(),
        }
    }

    /// Takes a call permit or refuses at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ServeError> {
        self.admission.admit()
    }

    /// Takes a stream permit and a call permit, or refuses at once.
    fn admit_stream(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ServeError> {
        self.admission.admit_stream()
    }
}

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct CreditRisk {
    state: Arc<GrpcState>,
}

impl CreditRisk {
    pub fn new(state: Arc<GrpcState>) -> Self {
        CreditRisk { state }
    }
}

impl CreditRisk {
    async fn score_call(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let started = Instant::now();
        let received_at = SystemTime::now();
        let state = &*self.state;
        let mut caller = caller(&request)?;
        let timeout = grpc_timeout(request.metadata())
            .map_or(state.request_timeout, |t| t.min(state.request_timeout));
        // The caller's turn under its rate limit, waited for before it takes a slot.
        let wait = state
            .admission
            .turn(&mut caller, 1, Some(started + timeout))?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let _permit = state.admit()?;
        let request_id = request_id(request.metadata());
        let ctx = CallContext {
            request_id: &request_id,
            rpc: Rpc::Unary,
            peer: request.remote_addr(),
            caller: &caller,
            received_at,
            started,
            deadline: Some((started + timeout, timeout)),
            trace_id: super::traced::trace_of(&request),
        };
        let request = request.into_inner();
        let asked = request.explain;
        let input = request.application.map(input_from_pb);
        let answer = state.scorer.score(&ctx, input.as_ref(), asked)?;
        let model = answer.model();
        let score = risk_score_to_pb(
            &answer.decision,
            &ScoreContext {
                request_id: &request_id,
                application_id: input.as_ref().map_or("", |a| a.application_id.as_str()),
                decision_id: &decision_id_str(answer.decision_id),
                model_version: model.bundle.version(),
                model_role: model.role,
                explanation: answer.explanation.as_ref(),
                processing_time: started.elapsed(),
                scored_at: SystemTime::now(),
            },
        );
        state.metrics.record_unary(started.elapsed());
        tracing::debug!(%request_id, risk_score = answer.decision.risk_score, "scored");
        let mut resp = Response::new(pb::ScoreResponse { score: Some(score) });
        set_request_id(&mut resp, &request_id);
        Ok(resp)
    }
}

/// Counts a gRPC call in `cra_requests_total` and `cra_request_duration_seconds`.
pub(crate) fn record_call<T>(rpc: &str, answer: &Result<T, Status>, started: Instant) {
    let code = match answer {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    let name = super::status::code_name(code);
    crate::telemetry::traces::record_status(name, super::status::is_server_fault(code));
    crate::monitoring::request("grpc", rpc, name, started.elapsed());
}

/// The caller the authentication layer established (`security::auth`); a call it did not see
/// is refused.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!("a call reached a service without the authentication layer; refused");
            Status::unauthenticated("the server could not authenticate this call")
        })
}

/// The caller's request id when it is usable as one, else a new UUID v7.
pub(crate) fn request_id(md: &MetadataMap) -> String {
    md.get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

/// Parses gRPC's `grpc-timeout` header (up to 8 digits and a unit H, M, S, m, u or n).
pub fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) fn set_request_id<T>(resp: &mut Response<T>, request_id: &str) {
    if let Ok(v) = request_id.parse() {
        resp.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
}

fn decision_id_str(id: Uuid) -> String {
    if id.is_nil() {
        String::new()
    } else {
        id.to_string()
    }
}

#[tonic::async_trait]
impl CreditRiskService for CreditRisk {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let started = Instant::now();
        let answer = self.score_call(request).await;
        record_call("Score", &answer, started);
        answer
    }

    type ScoreBatchStream = BatchAnswers;

    async fn score_batch(
        &self,
        request: Request<Streaming<pb::ScoreBatchRequest>>,
    ) -> Result<Response<Self::ScoreBatchStream>, Status> {
        let caller = caller(&request)?;
        let permits = self.state.admit_stream()?;
        let request_id = request_id(request.metadata());
        let deadline = grpc_timeout(request.metadata()).map(|t| (Instant::now() + t, t));
        let peer = request.remote_addr();
        let trace_id = super::traced::trace_of(&request);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_RESPONSE_QUEUE);
        let (end_tx, end_rx) = oneshot::channel();
        let job = StreamJob {
            state: self.state.clone(),
            request_id: request_id.clone(),
            stream_id: Uuid::now_v7(),
            peer,
            caller,
            deadline,
            trace_id,
            tx,
        };
        let stream_started = Instant::now();
        // The stream's span lasts as long as the stream.
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let _permits = permits;
                let ended = job.run(inbound).await;
                record_call("ScoreBatch", &ended, stream_started);
                if let Err(status) = ended {
                    // Sent before the job and its sender are dropped: the answers end with it.
                    let _ = end_tx.send(status);
                }
                drop(job);
            }
            .instrument(span),
        );
        let mut resp = Response::new(BatchAnswers {
            rounds: rx,
            pending: Vec::new().into_iter(),
            end: Some(end_rx),
        });
        set_request_id(&mut resp, &request_id);
        Ok(resp)
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        let scorer = &self.state.scorer;
        let registry = scorer.registry();
        Ok(Response::new(convert::model_info_response(
            &scorer.models(),
            &registry.source().to_string(),
            &registry.status(),
            scorer.shadow_stats(),
        )))
    }
}

/// The answers of one ScoreBatch stream: the response messages of each answered round, in
/// order, then the stream's final error if it ended with one.
pub struct BatchAnswers {
    rounds: mpsc::Receiver<Vec<pb::ScoreBatchResponse>>,
    pending: std::vec::IntoIter<pb::ScoreBatchResponse>,
    end: Option<oneshot::Receiver<Status>>,
}

impl Stream for BatchAnswers {
    type Item = Result<pb::ScoreBatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(m) = self.pending.next() {
                return Poll::Ready(Some(Ok(m)));
            }
            match self.rounds.poll_recv(cx) {
                Poll::Ready(Some(round)) => self.pending = round.into_iter(),
                Poll::Ready(None) => {
                    // The job has ended; its final status, if any, was sent before.
                    let end = self.end.take().and_then(|mut end| end.try_recv().ok());
                    return Poll::Ready(end.map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The `application_id` echoed in a stream result: empty when it is over the accepted length
/// (that application is refused), so that every answer has a bounded size.
fn echoed_id(id: String) -> String {
    if id.len() <= MAX_APPLICATION_ID_BYTES {
        id
    } else {
        String::new()
    }
}

/// One ScoreBatch stream: reads request messages in rounds of at most `batch_chunk`
/// applications (an empty message counts as one, plus one message), scores each round with
/// `score_many`, and answers every request message with one response message. The bounded
/// channel of answered rounds carries the back pressure: while a slow reader leaves it full,
/// this task stops reading the inbound stream. A stream that sends nothing, or reads nothing,
/// for the idle timeout is ended.
struct StreamJob {
    state: Arc<GrpcState>,
    request_id: String,
    stream_id: Uuid,
    peer: Option<SocketAddr>,
    caller: Caller,
    deadline: Option<(Instant, Duration)>,
    trace_id: Option<crate::scoring::TraceId>,
    tx: mpsc::Sender<Vec<pb::ScoreBatchResponse>>,
}

/// Rounds smaller than this are scored on one thread; larger ones are split in two halves
/// scored in parallel (the tree walk dominates a stream's CPU time).
const PARALLEL_ROUND: usize = 256;

/// A stream's task yields to the runtime once it has scored for this long, so that a call
/// arriving meanwhile on the same worker thread waits about this long, not for the whole round
/// (a round of thousands, with explanations, takes tens of milliseconds).
const YIELD_AFTER: Duration = Duration::from_micros(500);

/// The applications of one [`Scorer::decide`] call of a stream round: from one block of the tree
/// walk (16 rows) to 1,024. The size adapts to how long a slice takes (explanations make an
/// application ten times dearer), aiming at slices of about [`YIELD_AFTER`].
const MIN_SLICE: usize = 16;
const MAX_SLICE: usize = 1024;

/// [`Scorer::decide`] a slice at a time, yielding whenever [`YIELD_AFTER`] has passed.
async fn decide_in_slices(
    scorer: &Scorer,
    set: &ModelSet,
    inputs: &[ApplicationInput],
    asked: &[bool],
) -> Result<Vec<Item>, ServeError> {
    let mut items = Vec::with_capacity(inputs.len());
    let mut size = 4 * MIN_SLICE;
    let mut since_yield = Instant::now();
    let mut at = 0;
    while at < inputs.len() {
        if at > 0 && since_yield.elapsed() >= YIELD_AFTER {
            tokio::task::yield_now().await;
            since_yield = Instant::now();
        }
        let end = (at + size).min(inputs.len());
        let started = Instant::now();
        items.extend(scorer.decide(set, &inputs[at..end], asked.get(at..end).unwrap_or(&[]))?);
        let took = started.elapsed();
        if took > YIELD_AFTER {
            size = (size / 2).max(MIN_SLICE);
        } else if took < YIELD_AFTER / 4 {
            size = (size * 2).min(MAX_SLICE);
        }
        at = end;
    }
    Ok(items)
}

impl StreamJob {
    /// Decides a round on `set`: on this thread, or in two halves, the second on the blocking
    /// pool, when the round is large and more than one CPU is available.
    async fn decide_round(
        &self,
        set: &Arc<ModelSet>,
        inputs: &mut Vec<ApplicationInput>,
        asked: &[bool],
    ) -> Result<Vec<Item>, Status> {
        let scorer = &self.state.scorer;
        if inputs.len() < PARALLEL_ROUND || self.state.cpus < 2 {
            return Ok(decide_in_slices(scorer, set, inputs, asked).await?);
        }
        let half = inputs.len() / 2;
        let second = inputs.split_off(half);
        let second_asked = asked.get(half..).unwrap_or(&[]).to_vec();
        let (helper_scorer, helper_set) = (scorer.clone(), set.clone());
        let helper = tokio::task::spawn_blocking(move || {
            let items = helper_scorer.decide(&helper_set, &second, &second_asked);
            (second, items)
        });
        let first = decide_in_slices(scorer, set, inputs, asked.get(..half).unwrap_or(&[])).await;
        let (second, more) = helper.await.map_err(|e| {
            tracing::error!("parallel scoring failed: {e}");
            Status::internal("scoring failed; the server logged the cause")
        })?;
        inputs.extend(second);
        let mut items = first?;
        items.extend(more?);
        Ok(items)
    }

    /// Awaits `fut` until the stream's deadline or for at most the idle timeout, whichever
    /// comes first; the error names the one that ran out.
    async fn wait<F: Future>(&self, fut: F) -> Result<F::Output, ServeError> {
        let idle = self.state.stream_idle_timeout;
        let idle_at = Instant::now().checked_add(idle);
        match (self.deadline, idle_at) {
            (Some((at, limit)), idle_at) if idle_at.is_none_or(|i| at <= i) => {
                tokio::time::timeout_at(at.into(), fut)
                    .await
                    .map_err(|_| ServeError::DeadlineExceeded(limit))
            }
            (_, Some(idle_at)) => tokio::time::timeout_at(idle_at.into(), fut)
                .await
                .map_err(|_| ServeError::StreamIdle(idle)),
            (_, None) => Ok(fut.await),
        }
    }

    fn context(&self, position: u64, received_at: SystemTime, started: Instant) -> CallContext<'_> {
        CallContext {
            request_id: &self.request_id,
            rpc: Rpc::Stream {
                stream_id: self.stream_id,
                position,
            },
            peer: self.peer,
            caller: &self.caller,
            received_at,
            started,
            deadline: self.deadline,
            trace_id: self.trace_id,
        }
    }

    /// Serves the stream until the client ends it (`Ok`) or it must end with an error status,
    /// which the caller sends after the answers already queued.
    async fn run(&self, mut inbound: Streaming<pb::ScoreBatchRequest>) -> Result<(), Status> {
        let scorer = &self.state.scorer;
        let mut position: u64 = 0;
        loop {
            // Back-pressure from the decision log: while it is behind, read no more work (the
            // client's sends then block on HTTP/2 flow control), bounded by the deadline.
            while scorer.backlogged() {
                if self.deadline.is_some_and(|(at, _)| Instant::now() >= at) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Wait for the first message of a round, bounded by the deadline and the idle
            // timeout.
            let first = match self.wait(inbound.next()).await? {
                None => return Ok(()),
                Some(Err(status)) => {
                    tracing::debug!(request_id = %self.request_id, "stream read error: {status}");
                    return Err(status);
                }
                Some(Ok(m)) => m,
            };
            // Take whatever else has already arrived, up to one chunk of applications; an
            // empty message counts as one, so that a round always has a bounded size.
            let mut items = first.applications.len().max(1);
            let mut round = vec![first];
            let mut trailing: Option<Option<Status>> = None;
            while items < self.state.batch_chunk {
                match inbound.next().now_or_never() {
                    Some(Some(Ok(m))) => {
                        items += m.applications.len().max(1);
                        round.push(m);
                    }
                    Some(Some(Err(status))) => {
                        trailing = Some(Some(status));
                        break;
                    }
                    Some(None) => {
                        trailing = Some(None);
                        break;
                    }
                    None => break,
                }
            }
            // The caller's rate limit, counted in applications: wait until the round may go
            // (reading nothing more meanwhile, so the client's sends block on HTTP/2 flow
            // control), bounded by the deadline.
            let applications: usize = round.iter().map(|m| m.applications.len()).sum();
            let paced = self.caller.pace(applications);
            match self.deadline {
                Some((at, limit)) => tokio::time::timeout_at(at.into(), paced)
                    .await
                    .map_err(|_| ServeError::DeadlineExceeded(limit))?,
                None => paced.await,
            }
            let started = Instant::now();
            let received_at = SystemTime::now();
            let ctx = self.context(position, received_at, started);
            ctx.check_deadline()?;

            // How many applications each request message holds, whether it asks for
            // explanations, then every input, in order.
            let sizes: Vec<usize> = round.iter().map(|m| m.applications.len()).collect();
            let asked: Vec<bool> = if round.iter().any(|m| m.explain) {
                round
                    .iter()
                    .flat_map(|m| std::iter::repeat_n(m.explain, m.applications.len()))
                    .collect()
            } else {
                Vec::new()
            };
            let mut inputs: Vec<ApplicationInput> = round
                .into_iter()
                .flat_map(|m| m.applications)
                .map(input_from_pb)
                .collect();
            let set = scorer.models();
            let decided = self.decide_round(&set, &mut inputs, &asked).await?;
            let decided_at = SystemTime::now();
            let latency = started.elapsed();

            // Room for this round's answers before anything is recorded: a decision is recorded
            // only when its answer can be handed over. A client that reads no answer for the
            // idle timeout ends the stream, with nothing of this round recorded.
            let slot = match self.wait(self.tx.reserve()).await? {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::debug!(request_id = %self.request_id, "client went away mid-stream");
                    return Ok(());
                }
            };
            ctx.check_deadline()?;
            let recorded = scorer.record_batch(&ctx, &set, &inputs, &decided, decided_at, latency);

            // Answer each request message with its own response message, in order.
            // Explained answers are dear to build: yield now and then, as while deciding.
            let mut k = 0usize;
            let mut inputs = inputs.into_iter();
            let mut answers = Vec::with_capacity(sizes.len());
            let mut since_yield = Instant::now();
            for size in sizes {
                let mut results = Vec::with_capacity(size);
                for input in inputs.by_ref().take(size) {
                    if k % MIN_SLICE == MIN_SLICE - 1 && since_yield.elapsed() >= YIELD_AFTER {
                        tokio::task::yield_now().await;
                        since_yield = Instant::now();
                    }
                    let result = match (&recorded, &decided[k]) {
                        (Err(e), _) => pb::batch_result::Result::Error(e.to_item_error()),
                        (Ok(_), Item::Invalid(v)) => {
                            pb::batch_result::Result::Error(invalid_item_error(v))
                        }
                        (
                            Ok(ids),
                            Item::Scored {
                                member,
                                decision,
                                explanation,
                                ..
                            },
                        ) => {
                            let model = &set.live[*member];
                            pb::batch_result::Result::Score(risk_score_to_pb(
                                decision,
                                &ScoreContext {
                                    request_id: &self.request_id,
                                    application_id: &input.application_id,
                                    decision_id: &decision_id_str(ids[k]),
                                    model_version: model.bundle.version(),
                                    model_role: model.role,
                                    explanation: explanation.as_deref(),
                                    processing_time: latency,
                                    scored_at: decided_at,
                                },
                            ))
                        }
                    };
                    results.push(pb::BatchResult {
                        position,
                        application_id: echoed_id(input.application_id),
                        result: Some(result),
                    });
                    position += 1;
                    k += 1;
                }
                answers.push(pb::ScoreBatchResponse { results });
            }
            slot.send(answers);
            self.state.metrics.record_chunk(k, started.elapsed());
            match trailing {
                None => {}
                Some(None) => return Ok(()),
                Some(Some(status)) => return Err(status),
            }
        }
    }
}
