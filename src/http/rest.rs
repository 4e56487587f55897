//! The original Flask service's REST API, served by the scoring core:
//!
//! - `POST /predict`: one application (the original's body) → the original's answer keys
//!   (`status`, `prediction`, `risk_score`, `risk_level`, `probability`, `processing_time_ms`,
//!   `timestamp`) plus `probability_default` (the full-precision probability, the same bits as
//!   gRPC's), `request_id`, `decision_id`, `application_id`, `model_version`, `model_role`
//!   and, for an explained decision, `reasons` (and with `?explain=true`, `explanation`);
//! - `POST /predict/batch`: `{"applications": [...]}`, all or nothing;
//! - `GET /health`: 200 `{"status": "healthy", ...}` when ready, else 503;
//! - `GET /openapi.json`: the OpenAPI 3.1 document of these routes.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use cra_model::{explain::Explanation, ApplicationInput, Decision, FieldViolation};

use super::{
    body,
    error::{HttpError, RestError},
    json_input::application_from_json,
    HttpState, PeerAddr,
};
use crate::{
    scoring::{CallContext, Delivery, FeatureValue, Item, Role, Rpc, ScoreError, TraceId},
    security::Caller,
    telemetry::traces::CallTrace,
};

/// The header of the request id, read from the client and echoed (as on gRPC).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/predict", post(predict))
        .route("/predict/batch", post(predict_batch))
        .route("/health", get(health))
        .route("/openapi.json", get(super::openapi::document))
}

/// Seconds since the epoch, as the original's `timestamp`.
pub fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The caller's request id when usable, else a new UUID v7.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

/// `?explain=true`: the full explanation (every feature's contribution), not only the reasons.
#[derive(Debug, Default, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    explain: bool,
}

#[derive(Serialize)]
struct Probability {
    low_risk: f64,
    high_risk: f64,
}

#[derive(Serialize)]
pub struct ReasonJson<'a> {
    code: &'a str,
    description: &'a str,
    features: &'a [String],
    contribution: f64,
    fifth_factor: bool,
}

#[derive(Serialize)]
pub struct ContributionJson {
    feature: &'static str,
    /// The applicant's value: a number, a category's name, or null when missing.
    value: Value,
    contribution: f64,
}

#[derive(Serialize)]
pub struct ExplanationJson<'a> {
    base_margin: f64,
    contributions: Vec<ContributionJson>,
    reasons: Vec<ReasonJson<'a>>,
}

pub fn reasons_json(e: &Explanation) -> Vec<ReasonJson<'_>> {
    e.reasons
        .iter()
        .map(|r| ReasonJson {
            code: &r.code,
            description: &r.description,
            features: &r.features,
            contribution: r.contribution,
            fifth_factor: r.fifth_factor,
        })
        .collect()
}

pub fn explanation_json(e: &Explanation) -> ExplanationJson<'_> {
    ExplanationJson {
        base_margin: e.base_margin,
        contributions: e
            .contributions
            .iter()
            .map(|c| ContributionJson {
                feature: c.feature,
                value: match c.value {
                    FeatureValue::Missing => Value::Null,
                    FeatureValue::Number(v) => {
                        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
                    }
                    FeatureValue::Category(name) => Value::String(name.to_owned()),
                },
                contribution: c.contribution,
            })
            .collect(),
        reasons: reasons_json(e),
    }
}

/// One decision, in the original's keys and ours.
#[derive(Serialize)]
struct PredictionJson<'a> {
    prediction: u8,
    risk_score: f64,
    risk_level: &'static str,
    probability: Probability,
    probability_default: f64,
    #[serde(skip_serializing_if = "str::is_empty")]
    application_id: &'a str,
    /// Absent when the decision log is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_id: Option<String>,
    model_version: &'a str,
    model_role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<Vec<ReasonJson<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<ExplanationJson<'a>>,
}

#[allow(clippy::too_many_arguments)]
fn prediction_json<'a>(
    d: &Decision,
    application_id: &'a str,
    decision_id: Uuid,
    model_version: &'a str,
    role: Role,
    explanation: Option<&'a Explanation>,
    full: bool,
) -> PredictionJson<'a> {
    PredictionJson {
        prediction: d.prediction,
        risk_score: d.risk_score,
        risk_level: d.risk_level.as_str(),
        probability: Probability {
            low_risk: 1.0 - d.probability_default,
            high_risk: d.probability_default,
        },
        probability_default: d.probability_default,
        application_id,
        decision_id: (!decision_id.is_nil()).then(|| decision_id.to_string()),
        model_version,
        model_role: role.as_str(),
        reasons: explanation.map(reasons_json),
        explanation: explanation.filter(|_| full).map(explanation_json),
    }
}

#[derive(Serialize)]
struct PredictResponse<'a> {
    status: &'static str,
    #[serde(flatten)]
    prediction: PredictionJson<'a>,
    processing_time_ms: f64,
    timestamp: f64,
    request_id: &'a str,
}

/// A handler's answer or error as the response, carrying the request id.
pub fn answered<E: IntoResponse>(answer: Result<Response, E>, request_id: &str) -> Response {
    let mut resp = answer.unwrap_or_else(IntoResponse::into_response);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// The context of a REST call: its deadline is `--request-timeout`.
fn call_context<'a>(
    state: &HttpState,
    request_id: &'a str,
    rpc: Rpc,
    peer: SocketAddr,
    caller: &'a Caller,
    started: Instant,
    trace_id: Option<TraceId>,
) -> CallContext<'a> {
    CallContext {
        request_id,
        rpc,
        peer: Some(peer),
        caller,
        received_at: SystemTime::now(),
        started,
        deadline: Some((started + state.request_timeout, state.request_timeout)),
        trace_id,
    }
}

/// `POST /predict`.
async fn predict(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(CallTrace(trace_id)): Extension<CallTrace>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ExplainQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(&headers);
    let answer = predict_one(
        &state,
        (peer, trace_id),
        &caller,
        query.explain,
        &headers,
        body,
        &request_id,
        started,
    )
    .await;
    answered(answer, &request_id)
}

#[allow(clippy::too_many_arguments)]
async fn predict_one(
    state: &HttpState,
    (peer, trace_id): (SocketAddr, Option<TraceId>),
    caller: &Caller,
    explain: bool,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
) -> Result<Response, RestError> {
    // The caller's turn under its rate limit, waited for before it takes a slot.
    let mut caller = caller.clone();
    let deadline = started + state.request_timeout;
    let wait = state.admission.turn(&mut caller, 1, Some(deadline))?;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let _permit = state.admission.admit()?;
    body::require_json(headers)?;
    let bytes = body::read(
        body,
        headers,
        "/predict",
        state.max_single_bytes,
        "max-unary-message-bytes",
    )
    .await?;
    let value = body::json(&bytes)?;
    let input = application_from_json(&value);
    let ctx = call_context(
        state,
        request_id,
        Rpc::Rest { batch: None },
        peer,
        &caller,
        started,
        trace_id,
    );
    let answer = state.scorer.score(&ctx, Some(&input), explain)?;
    let model = answer.model();
    let body = PredictResponse {
        status: "success",
        prediction: prediction_json(
            &answer.decision,
            &input.application_id,
            answer.decision_id,
            model.bundle.version(),
            model.role,
            answer.explanation.as_ref(),
            explain,
        ),
        processing_time_ms: millis(started),
        timestamp: epoch_seconds(),
        request_id,
    };
    Ok(Json(body).into_response())
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    status: &'static str,
    count: usize,
    predictions: Vec<PredictionJson<'a>>,
    processing_time_ms: f64,
    timestamp: f64,
    request_id: &'a str,
}

/// `POST /predict/batch`.
async fn predict_batch(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(CallTrace(trace_id)): Extension<CallTrace>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ExplainQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(&headers);
    let answer = predict_many(
        &state,
        (peer, trace_id),
        &caller,
        query.explain,
        &headers,
        body,
        &request_id,
        started,
    )
    .await;
    answered(answer, &request_id)
}

/// The applications of a batch body, each read as `/predict` reads one.
fn batch_inputs(value: &Value, max_items: usize) -> Result<Vec<ApplicationInput>, HttpError> {
    let Some(obj) = value.as_object() else {
        return Err(HttpError::invalid(
            "applications",
            "the body must be a JSON object {\"applications\": [...]}",
        ));
    };
    let mut violations = Vec::new();
    for key in obj.keys().filter(|k| k.as_str() != "applications") {
        violations.push(FieldViolation::new(
            body::field_name(key, 64),
            "is not a field of a batch request; the only field is applications",
        ));
    }
    let apps = match obj.get("applications") {
        Some(Value::Array(apps)) if apps.is_empty() => {
            violations.push(FieldViolation::new(
                "applications",
                "must hold at least one application",
            ));
            &[][..]
        }
        Some(Value::Array(apps)) => apps.as_slice(),
        Some(_) => {
            violations.push(FieldViolation::new(
                "applications",
                "must be a JSON array of applications",
            ));
            &[][..]
        }
        None => {
            violations.push(FieldViolation::new(
                "applications",
                "is required: a JSON array of the applications to score",
            ));
            &[][..]
        }
    };
    if apps.len() > max_items {
        return Err(ScoreError::TooManyItems {
            limit: max_items,
            field: "applications",
        }
        .into());
    }
    if !violations.is_empty() {
        return Err(ScoreError::InvalidArgument(violations).into());
    }
    Ok(apps.iter().map(application_from_json).collect())
}

#[allow(clippy::too_many_arguments)]
async fn predict_many(
    state: &HttpState,
    (peer, trace_id): (SocketAddr, Option<TraceId>),
    caller: &Caller,
    explain: bool,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
) -> Result<Response, RestError> {
    let permit = state.admission.admit()?;
    body::require_json(headers)?;
    let bytes = body::read(
        body,
        headers,
        "/predict/batch",
        state.max_batch_bytes,
        "max-message-bytes",
    )
    .await?;
    let value = body::json(&bytes)?;
    drop(bytes);
    let inputs = batch_inputs(&value, state.max_batch_items)?;
    drop(value);
    let mut caller = caller.clone();
    let wait = state.admission.turn(
        &mut caller,
        inputs.len(),
        Some(started + state.request_timeout),
    )?;
    let _permit = state.admission.wait_turn(wait, permit).await?;
    let rpc = Rpc::Rest {
        batch: Some((Uuid::now_v7(), 0)),
    };
    let ctx = call_context(state, request_id, rpc, peer, &caller, started, trace_id);
    let asked = vec![explain; if explain { inputs.len() } else { 0 }];
    let set = state.scorer.models();
    let answer = state
        .scorer
        .score_all(&ctx, set, &inputs, &asked, Delivery::Explanations)
        .map_err(|e| match e {
            // The original's batch names each item by its index in `applications`.
            ScoreError::InvalidItems(_) => ScoreError::InvalidArgument(
                e.violations_with_paths(|i, field| format!("applications[{i}].{field}")),
            ),
            other => other,
        })?;
    let predictions = answer
        .items
        .iter()
        .zip(&answer.decision_ids)
        .zip(&inputs)
        .filter_map(|((item, id), input)| match item {
            Item::Scored {
                member,
                decision,
                explanation,
                ..
            } => {
                let m = &answer.set.live[*member];
                Some(prediction_json(
                    decision,
                    &input.application_id,
                    *id,
                    m.bundle.version(),
                    m.role,
                    explanation.as_deref(),
                    explain,
                ))
            }
            Item::Invalid(_) => None,
        })
        .collect::<Vec<_>>();
    let body = BatchResponse {
        status: "success",
        count: predictions.len(),
        predictions,
        processing_time_ms: millis(started),
        timestamp: epoch_seconds(),
        request_id,
    };
    Ok(Json(body).into_response())
}

#[derive(Serialize)]
struct HealthResponse {
    status: &'static str,
    model_loaded: bool,
    timestamp: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<String>,
}

/// `GET /health`: 200 when the server is ready to score (models loaded, decision log able to
/// record, not shutting down), else 503.
async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let ready = state.readiness.is_ready();
    let models = state.scorer.models();
    let body = HealthResponse {
        status: if ready { "healthy" } else { "unhealthy" },
        model_loaded: true,
        timestamp: epoch_seconds(),
        model_version: Some(models.champion().bundle.version().to_owned()),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
