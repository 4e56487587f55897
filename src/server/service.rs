//! `creditrisk.v1.CreditRiskService`: Score, ScoreBatch and GetModelInfo.
//!
//! The scoring path never waits on I/O: validation, preprocessing and the tree walk run inline,
//! and the decision recorder only enqueues. ScoreBatch answers an empty request message (zero
//! applications) with an empty response message.
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataMap, Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    metrics::Metrics,
    recorder::{DecisionRecord, DecisionRecorder, Outcome, Rpc},
    status::{invalid_item_error, ServeError},
};
use crate::{
    contract::{
        pb::{self, credit_risk_service_server::CreditRiskService},
        validate::{self, risk_score_to_pb, FieldViolation, ScoreContext},
    },
    data::Application,
    model::{Decision, ModelBundle},
};

/// Metadata key of the request id, read from the client and echoed in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from the client; longer ones are replaced by a generated one.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Response messages of one stream waiting for a slow reader before the server stops reading.
const STREAM_RESPONSE_QUEUE: usize = 4;

/// What every call shares: the model, the concurrency limit, the recorder and the metrics.
#[derive(Debug)]
pub struct AppState {
    /// Set once the bundle is loaded and the canary scored.
    pub(crate) model: OnceLock<Arc<ModelBundle>>,
    pub(crate) limiter: Arc<Semaphore>,
    pub(crate) max_concurrent: usize,
    /// Where every decision goes; `None` when the decision log is off.
    pub(crate) recorder: Option<Arc<dyn DecisionRecorder>>,
    /// Most applications of a stream scored by one `score_many` call.
    pub(crate) batch_chunk: usize,
    /// CPUs available to the process (worker threads); 1 disables parallel stream scoring.
    pub(crate) cpus: usize,
    /// Cap on a unary call's time, on top of the client's grpc-timeout.
    pub(crate) request_timeout: Duration,
    pub metrics: Metrics,
}

impl AppState {
    pub(crate) fn new(
        max_concurrent: usize,
        batch_chunk: usize,
        cpus: usize,
        request_timeout: Duration,
        recorder: Option<Arc<dyn DecisionRecorder>>,
    ) -> Self {
        AppState {
            model: OnceLock::new(),
            limiter: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            recorder,
            batch_chunk: batch_chunk.max(1),
            cpus,
            request_timeout,
            metrics: Metrics::default(),
        }
    }

    /// Takes a concurrency permit or refuses at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ServeError> {
        self.limiter
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServeError::Overloaded {
                limit: self.max_concurrent,
            })
    }

    fn model(&self) -> Result<&Arc<ModelBundle>, ServeError> {
        self.model.get().ok_or(ServeError::NotReady)
    }

    /// A fresh decision id when the decision log is on, else the nil UUID (sent as "").
    fn decision_id(&self) -> Uuid {
        if self.recorder.is_some() {
            Uuid::now_v7()
        } else {
            Uuid::nil()
        }
    }
}

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct CreditRisk {
    state: Arc<AppState>,
}

impl CreditRisk {
    pub fn new(state: Arc<AppState>) -> Self {
        CreditRisk { state }
    }
}

/// The caller's request id when it is usable as one, else a new UUID v7.
fn request_id(md: &MetadataMap) -> String {
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

fn set_request_id<T>(resp: &mut Response<T>, request_id: &str) {
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
        let received_at = SystemTime::now();
        let state = &*self.state;
        let _permit = state.admit()?;
        let model = state.model()?;
        let request_id = request_id(request.metadata());
        let timeout = grpc_timeout(request.metadata())
            .map_or(state.request_timeout, |t| t.min(state.request_timeout));
        let peer = request.remote_addr();
        // A request without an application is rejected, and recorded, like any invalid one.
        let input = request.into_inner().application;
        let validated = match &input {
            Some(input) => validate::validate(input),
            None => Err(ServeError::missing_application_violations()),
        };
        let validated_at = Instant::now();
        let decision_id = state.decision_id();
        let scored = validated.map(|app| {
            let decision = model.score(&app);
            (app, decision)
        });
        let scored_at = Instant::now();
        if let Some(recorder) = &state.recorder {
            let outcome = match &scored {
                Ok((application, decision)) => Outcome::Scored {
                    application,
                    decision,
                },
                Err(violations) => Outcome::Invalid { violations },
            };
            recorder
                .record(&DecisionRecord {
                    decision_id,
                    request_id: &request_id,
                    rpc: Rpc::Unary,
                    peer,
                    received_at,
                    decided_at: SystemTime::now(),
                    latency: started.elapsed(),
                    model,
                    input: input.as_ref(),
                    outcome,
                })
                .map_err(ServeError::from)?;
        }
        let (_, decision) = scored.map_err(ServeError::InvalidArgument)?;
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            return Err(ServeError::DeadlineExceeded(timeout).into());
        }
        let score = risk_score_to_pb(
            &decision,
            &ScoreContext {
                request_id: &request_id,
                application_id: input.as_ref().map_or("", |a| a.application_id.as_str()),
                decision_id: &decision_id_str(decision_id),
                model_version: model.version(),
                processing_time: elapsed,
                scored_at: SystemTime::now(),
            },
        );
        state.metrics.record_unary(
            validated_at - started,
            scored_at - validated_at,
            started.elapsed(),
        );
        tracing::debug!(%request_id, risk_score = decision.risk_score, "scored");
        let mut resp = Response::new(pb::ScoreResponse { score: Some(score) });
        set_request_id(&mut resp, &request_id);
        Ok(resp)
    }

    type ScoreBatchStream = ReceiverStream<Result<pb::ScoreBatchResponse, Status>>;

    async fn score_batch(
        &self,
        request: Request<Streaming<pb::ScoreBatchRequest>>,
    ) -> Result<Response<Self::ScoreBatchStream>, Status> {
        let permit = self.state.admit()?;
        let model = self.state.model()?.clone();
        let request_id = request_id(request.metadata());
        let deadline = grpc_timeout(request.metadata()).map(|t| (Instant::now() + t, t));
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_RESPONSE_QUEUE);
        let job = StreamJob {
            state: self.state.clone(),
            model,
            request_id: request_id.clone(),
            stream_id: Uuid::now_v7(),
            peer,
            deadline,
            tx,
        };
        tokio::spawn(async move {
            let _permit = permit;
            job.run(inbound).await;
        });
        let mut resp = Response::new(ReceiverStream::new(rx));
        set_request_id(&mut resp, &request_id);
        Ok(resp)
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        let model = self.state.model()?;
        Ok(Response::new(pb::GetModelInfoResponse {
            model: Some(validate::model_info_to_pb(model)),
        }))
    }
}

/// One ScoreBatch stream: reads request messages in rounds of at most `batch_chunk`
/// applications (plus one message), scores each round with `score_many`, and answers every
/// request message with one response message. The bounded response channel carries the back
/// pressure: while a slow reader leaves it full, this task stops reading the inbound stream.
struct StreamJob {
    state: Arc<AppState>,
    model: Arc<ModelBundle>,
    request_id: String,
    stream_id: Uuid,
    peer: Option<SocketAddr>,
    deadline: Option<(Instant, Duration)>,
    tx: mpsc::Sender<Result<pb::ScoreBatchResponse, Status>>,
}

/// How one application of a round turned out before scoring.
enum Slot {
    /// Index into the round's valid applications.
    Valid(usize),
    Invalid(Vec<FieldViolation>),
}

/// Rounds smaller than this are scored on one thread; larger ones are split in two halves
/// scored in parallel (the tree walk dominates a stream's CPU time).
const PARALLEL_ROUND: usize = 256;

impl StreamJob {
    /// Scores `apps` into `decisions` (same order) in slices of `batch_chunk`, the second half
    /// on the blocking pool when the round is large and more than one CPU is available.
    async fn score_round(
        &self,
        apps: &mut Vec<Application>,
        decisions: &mut Vec<Decision>,
    ) -> Result<(), Status> {
        let chunk = self.state.batch_chunk;
        let score = move |model: &ModelBundle, apps: &[Application], out: &mut Vec<Decision>| {
            for slice in apps.chunks(chunk) {
                out.extend(model.score_many(slice));
            }
        };
        if apps.len() < PARALLEL_ROUND || self.state.cpus < 2 {
            score(&self.model, apps, decisions);
            return Ok(());
        }
        let second = apps.split_off(apps.len() / 2);
        let model = self.model.clone();
        let helper = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(second.len());
            score(&model, &second, &mut out);
            (second, out)
        });
        score(&self.model, apps, decisions);
        let (second, out) = helper.await.map_err(|e| {
            tracing::error!("parallel scoring failed: {e}");
            Status::internal("scoring failed; the server logged the cause")
        })?;
        apps.extend(second);
        decisions.extend(out);
        Ok(())
    }

    async fn run(self, mut inbound: Streaming<pb::ScoreBatchRequest>) {
        let mut position: u64 = 0;
        let mut apps: Vec<Application> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut decisions: Vec<Decision> = Vec::new();
        loop {
            // Back-pressure from the decision log: while it is behind, read no more work (the
            // client's sends then block on HTTP/2 flow control), bounded by the deadline.
            if let Some(recorder) = &self.state.recorder {
                while recorder.backlogged() {
                    if self.deadline.is_some_and(|(at, _)| Instant::now() >= at) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // Wait for the first message of a round, bounded by the deadline.
            let first = match self.deadline {
                Some((at, limit)) => {
                    match tokio::time::timeout_at(at.into(), inbound.next()).await {
                        Ok(m) => m,
                        Err(_) => {
                            let _ = self
                                .tx
                                .send(Err(ServeError::DeadlineExceeded(limit).into()))
                                .await;
                            return;
                        }
                    }
                }
                None => inbound.next().await,
            };
            let mut round = match first {
                None => return,
                Some(Err(status)) => {
                    tracing::debug!(request_id = %self.request_id, "stream read error: {status}");
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
                Some(Ok(m)) => vec![m],
            };
            // Take whatever else has already arrived, up to one chunk of applications.
            let mut items = round[0].applications.len();
            let mut trailing: Option<Option<Status>> = None;
            while items < self.state.batch_chunk {
                match inbound.next().now_or_never() {
                    Some(Some(Ok(m))) => {
                        items += m.applications.len();
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
            let started = Instant::now();
            let received_at = SystemTime::now();
            if let Some((at, limit)) = self.deadline {
                if started >= at {
                    let _ = self
                        .tx
                        .send(Err(ServeError::DeadlineExceeded(limit).into()))
                        .await;
                    return;
                }
            }

            // Validate everything, then score the valid ones in slices of batch_chunk.
            apps.clear();
            slots.clear();
            decisions.clear();
            for app in round.iter().flat_map(|m| &m.applications) {
                slots.push(match validate::validate(app) {
                    Ok(a) => {
                        apps.push(a);
                        Slot::Valid(apps.len() - 1)
                    }
                    Err(v) => Slot::Invalid(v),
                });
            }
            if let Err(status) = self.score_round(&mut apps, &mut decisions).await {
                let _ = self.tx.send(Err(status)).await;
                return;
            }
            let decided_at = SystemTime::now();
            let latency = started.elapsed();

            let ids: Vec<Uuid> = slots.iter().map(|_| self.state.decision_id()).collect();
            let recorded = match &self.state.recorder {
                Some(recorder) => {
                    let records: Vec<DecisionRecord<'_>> = round
                        .iter()
                        .flat_map(|m| &m.applications)
                        .zip(&slots)
                        .zip(&ids)
                        .enumerate()
                        .map(|(i, ((input, slot), id))| DecisionRecord {
                            decision_id: *id,
                            request_id: &self.request_id,
                            rpc: Rpc::Stream {
                                stream_id: self.stream_id,
                                position: position + i as u64,
                            },
                            peer: self.peer,
                            received_at,
                            decided_at,
                            latency,
                            model: &self.model,
                            input: Some(input),
                            outcome: match slot {
                                Slot::Valid(j) => Outcome::Scored {
                                    application: &apps[*j],
                                    decision: &decisions[*j],
                                },
                                Slot::Invalid(v) => Outcome::Invalid { violations: v },
                            },
                        })
                        .collect();
                    recorder.record_chunk(&records).map_err(ServeError::from)
                }
                None => Ok(()),
            };

            // Answer each request message with its own response message, in order.
            let model_version = self.model.version();
            let mut k = 0usize;
            for msg in round {
                let mut results = Vec::with_capacity(msg.applications.len());
                for input in msg.applications {
                    let result = match (&recorded, &slots[k]) {
                        (Err(e), _) => pb::batch_result::Result::Error(e.to_item_error()),
                        (Ok(()), Slot::Invalid(v)) => {
                            pb::batch_result::Result::Error(invalid_item_error(v))
                        }
                        (Ok(()), Slot::Valid(j)) => {
                            pb::batch_result::Result::Score(risk_score_to_pb(
                                &decisions[*j],
                                &ScoreContext {
                                    request_id: &self.request_id,
                                    application_id: &input.application_id,
                                    decision_id: &decision_id_str(ids[k]),
                                    model_version,
                                    processing_time: latency,
                                    scored_at: decided_at,
                                },
                            ))
                        }
                    };
                    results.push(pb::BatchResult {
                        position,
                        application_id: input.application_id,
                        result: Some(result),
                    });
                    position += 1;
                    k += 1;
                }
                if self
                    .tx
                    .send(Ok(pb::ScoreBatchResponse { results }))
                    .await
                    .is_err()
                {
                    tracing::debug!(request_id = %self.request_id, "client went away mid-stream");
                    return;
                }
            }
            self.state.metrics.record_chunk(k, started.elapsed());
            match trailing {
                None => {}
                Some(None) => return,
                Some(Some(status)) => {
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
            }
        }
    }
}
