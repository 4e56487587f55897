//! The Open Inference Protocol's REST routes (`/v2/...`), a thin adapter from its JSON (and
//! the binary tensor data extension tritonclient uses) to [`crate::v2`] and the core.
//!
//! - `GET /v2/health/live`, `GET /v2/health/ready` (503 when not ready);
//! - `GET /v2`: server metadata;
//! - `GET /v2/models/{name}[/versions/{version}]`: model metadata;
//! - `GET /v2/models/{name}[/versions/{version}]/ready`;
//! - `POST /v2/models/{name}[/versions/{version}]/infer`.
//!
//! JSON tensor `data` is row-major, flat or nested; `null` in a numeric tensor is missing
//! (JSON has no NaN). With the binary extension (`Inference-Header-Content-Length`), an input
//! whose `parameters.binary_data_size` is set takes its raw little-endian bytes from the body
//! after the JSON header, in input order; outputs are returned binary when the request's
//! `parameters.binary_data_output` or the output's `parameters.binary_data` is true.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    body,
    error::{HttpError, V2Error},
    rest::request_id,
    HttpState, PeerAddr,
};
use crate::{
    scoring::{CallContext, Delivery, Rpc, ScoreError, TraceId},
    security::Caller,
    telemetry::traces::CallTrace,
    v2::{self, tensor, Data, DataType, InputTensor},
};
use cra_model::FieldViolation;

/// The binary tensor data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_at),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_at),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_at))
}

async fn live() -> Response {
    Json(json!({"live": true})).into_response()
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let ready = state.readiness.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"ready": ready}))).into_response()
}

async fn server_metadata() -> Response {
    Json(json!({
        "name": v2::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": v2::EXTENSIONS,
    }))
    .into_response()
}

fn not_found(e: v2::ModelNotFound) -> V2Error {
    V2Error(HttpError::NotFound(e.to_string()))
}

fn metadata_json(state: &HttpState, name: &str, version: &str) -> Result<Response, V2Error> {
    let m = v2::metadata(&state.scorer, name, version).map_err(not_found)?;
    let tensors = |ts: &[v2::TensorMetadata]| {
        ts.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape}))
            .collect::<Vec<_>>()
    };
    Ok(Json(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    }))
    .into_response())
}

async fn model_metadata(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Result<Response, V2Error> {
    metadata_json(&state, &name, "")
}

async fn model_metadata_at(
    State(state): State<Arc<HttpState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    metadata_json(&state, &name, &version)
}

fn model_ready_json(state: &HttpState, name: &str, version: &str) -> Result<Response, V2Error> {
    v2::resolve(&state.scorer, name, version).map_err(not_found)?;
    let ready = state.readiness.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(json!({"name": name, "ready": ready}))).into_response())
}

async fn model_ready(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Result<Response, V2Error> {
    model_ready_json(&state, &name, "")
}

async fn model_ready_at(
    State(state): State<Arc<HttpState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    model_ready_json(&state, &name, &version)
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(CallTrace(trace_id)): Extension<CallTrace>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_response(&state, (peer, trace_id), &caller, &name, "", &headers, body).await
}

async fn infer_at(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(CallTrace(trace_id)): Extension<CallTrace>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_response(
        &state,
        (peer, trace_id),
        &caller,
        &name,
        &version,
        &headers,
        body,
    )
    .await
}

async fn infer_response(
    state: &HttpState,
    (peer, trace_id): (SocketAddr, Option<TraceId>),
    caller: &Caller,
    name: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(headers);
    let mut resp = match infer_inner(
        state,
        (peer, trace_id),
        caller,
        name,
        version,
        headers,
        body,
        &request_id,
        started,
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(super::rest::REQUEST_ID_HEADER, v);
    }
    resp
}

/// The JSON text with every bare `NaN` token (outside strings) written as `null`. JSON has no
/// NaN, but Python's `json.dumps` (and so tritonclient's JSON requests) writes one for a missing
/// value, which the protocol's tensors use NaN for; `null` is what this adapter reads as
/// missing. Borrowed when there is none. Occurrences do not overlap: `NaNaN` has one, at its
/// start (and is no JSON either way).
fn nan_as_null(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut found = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if text[i..].starts_with(b"NaN") {
            found.push(i);
            i += 3;
            continue;
        }
        i += 1;
    }
    if found.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len() + found.len());
    let mut from = 0;
    for i in found {
        out.extend_from_slice(&text[from..i]);
        out.extend_from_slice(b"null");
        from = i + 3;
    }
    out.extend_from_slice(&text[from..]);
    std::borrow::Cow::Owned(out)
}

/// Flattens nested JSON arrays, row-major.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

/// The JSON `data` of a tensor of `datatype`, `count` elements expected. Nothing is reserved
/// for `count` before the values are counted: it comes from the client's shape.
fn json_data(datatype: DataType, data: &Value, count: usize) -> Result<Data, String> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if flat.len() != count {
        return Err(format!(
            "holds {} values in its data; its shape needs {count}",
            flat.len()
        ));
    }
    let bad = |i: usize, what: &str| format!("has {what} at element {i} of its data");
    Ok(match datatype {
        DataType::Fp64 | DataType::Fp32 => {
            let mut v = Vec::with_capacity(count);
            for (i, x) in flat.iter().enumerate() {
                v.push(match x {
                    Value::Null => f64::NAN,
                    Value::Number(n) => n.as_f64().ok_or_else(|| bad(i, "an unreadable number"))?,
                    _ => return Err(bad(i, "a value that is not a number")),
                });
            }
            if datatype == DataType::Fp32 {
                Data::Fp32(v.into_iter().map(|x| x as f32).collect())
            } else {
                Data::Fp64(v)
            }
        }
        DataType::Int64 | DataType::Int32 => {
            let mut v = Vec::with_capacity(count);
            for (i, x) in flat.iter().enumerate() {
                v.push(
                    x.as_i64()
                        .ok_or_else(|| bad(i, "a value that is not a whole number"))?,
                );
            }
            if datatype == DataType::Int32 {
                let mut w = Vec::with_capacity(count);
                for (i, x) in v.into_iter().enumerate() {
                    w.push(i32::try_from(x).map_err(|_| bad(i, "a value outside INT32"))?);
                }
                Data::Int32(w)
            } else {
                Data::Int64(v)
            }
        }
        DataType::Bytes => {
            let mut v = Vec::with_capacity(count);
            for (i, x) in flat.iter().enumerate() {
                match x {
                    Value::String(s) => v.push(s.clone().into_bytes()),
                    _ => return Err(bad(i, "a value that is not a string")),
                }
            }
            Data::Bytes(v)
        }
        _ => Data::Other(count),
    })
}

fn param_bool(params: &Map<String, Value>, key: &str) -> bool {
    params.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// The input tensors of a request: JSON `data`, or raw bytes from `binary` (the part of the
/// body after the JSON header), taken in input order.
fn tensors(inputs: Vec<InferInput>, binary: &[u8]) -> Result<Vec<InputTensor>, ScoreError> {
    let mut violations = Vec::new();
    let mut out = Vec::with_capacity(inputs.len());
    let mut offset = 0usize;
    for t in inputs {
        let name = body::field_name(&t.name, 64);
        let (datatype, count) = match tensor::header(&t.datatype, &t.shape) {
            Ok(h) => h,
            Err(why) => {
                violations.push(FieldViolation::new(name, why));
                continue;
            }
        };
        let binary_size = t.parameters.get("binary_data_size").and_then(Value::as_u64);
        let data = match (binary_size, &t.data) {
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                match offset.checked_add(size).filter(|end| *end <= binary.len()) {
                    Some(end) => {
                        let d = Data::from_raw(datatype, &binary[offset..end], count);
                        offset = end;
                        d
                    }
                    None => Err(format!(
                        "has binary_data_size {size} but the body holds {} bytes after its JSON header from this input on",
                        binary.len().saturating_sub(offset)
                    )),
                }
            }
            (None, Some(data)) => json_data(datatype, data, count),
            (Some(_), Some(_)) => Err("has both data and binary_data_size; send one".into()),
            (None, None) => Err("has no data (and no binary_data_size)".into()),
        };
        match data {
            Ok(data) => out.push(InputTensor {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                data,
            }),
            Err(why) => violations.push(FieldViolation::new(name, why)),
        }
    }
    if violations.is_empty() && offset != binary.len() {
        violations.push(FieldViolation::new(
            "inputs",
            format!(
                "the body holds {} bytes after its JSON header that no input's binary_data_size accounts for",
                binary.len() - offset
            ),
        ));
    }
    if violations.is_empty() {
        Ok(out)
    } else {
        Err(ScoreError::InvalidArgument(violations))
    }
}

fn data_json(d: &Data) -> Value {
    match d {
        Data::Fp64(v) => json!(v),
        Data::Fp32(v) => json!(v),
        Data::Int64(v) => json!(v),
        Data::Int32(v) => json!(v),
        Data::Bytes(v) => Value::Array(
            v.iter()
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        ),
        Data::Other(_) => Value::Array(Vec::new()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn infer_inner(
    state: &HttpState,
    (peer, trace_id): (SocketAddr, Option<TraceId>),
    caller: &Caller,
    name: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
) -> Result<Response, V2Error> {
    let received_at = SystemTime::now();
    let permit = state.admission.admit()?;
    let set = v2::resolve(&state.scorer, name, version).map_err(not_found)?;
    let header_len = match headers.get(HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    HttpError::invalid(
                        "Inference-Header-Content-Length",
                        "must be the byte length of the JSON part of the body",
                    )
                })?,
        ),
        None => {
            body::require_json(headers)?;
            None
        }
    };
    let bytes = body::read(
        body,
        headers,
        "ModelInfer",
        state.max_batch_bytes,
        "max-message-bytes",
    )
    .await?;
    let (json_part, binary) = match header_len {
        Some(n) if n <= bytes.len() => bytes.split_at(n),
        Some(n) => {
            return Err(HttpError::invalid(
                "Inference-Header-Content-Length",
                format!("is {n}, longer than the {}-byte body", bytes.len()),
            )
            .into())
        }
        None => (&bytes[..], &[][..]),
    };
    let json_part = nan_as_null(json_part);
    let request: InferRequest = serde_json::from_slice(&json_part).map_err(|e| {
        if e.is_data() {
            HttpError::invalid(
                "inputs",
                format!("the request is not an inference request: {e}"),
            )
        } else {
            body::malformed(e)
        }
    })?;
    let requested: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
    let outputs = v2::outputs_for(&requested)?;
    let all_binary = param_bool(&request.parameters, "binary_data_output");
    let binary_out: Vec<bool> = outputs
        .iter()
        .map(|(n, _)| {
            request
                .outputs
                .iter()
                .find(|o| o.name == *n)
                .and_then(|o| o.parameters.get("binary_data").and_then(Value::as_bool))
                .unwrap_or(all_binary)
        })
        .collect();
    let first_shape = request.inputs.first().map(|t| t.shape.clone());
    let tensors = tensors(request.inputs, binary)?;
    let inputs = v2::inputs_from_tensors(tensors, state.max_batch_items)?;
    let deadline = started + state.request_timeout;
    let mut caller = caller.clone();
    let wait = state
        .admission
        .turn(&mut caller, inputs.len(), Some(deadline))?;
    let _permit = state.admission.wait_turn(wait, permit).await?;
    let ctx = CallContext {
        request_id,
        rpc: Rpc::V2 {
            call_id: Uuid::now_v7(),
            position: 0,
        },
        peer: Some(peer),
        caller: &caller,
        received_at,
        started,
        deadline: Some((deadline, state.request_timeout)),
        trace_id,
    };
    let answer = state
        .scorer
        .score_all(&ctx, set, &inputs, &[], Delivery::NoExplanations)?;
    let shape = v2::output_shape(first_shape.as_deref(), inputs.len());
    let mut out_json = Vec::with_capacity(outputs.len());
    let mut blob = Vec::new();
    for (t, binary) in v2::output_tensors(&answer, &outputs, &shape)
        .into_iter()
        .zip(binary_out)
    {
        let mut o = json!({"name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape});
        if binary {
            let raw = t.data.to_raw();
            o["parameters"] = json!({"binary_data_size": raw.len()});
            blob.extend_from_slice(&raw);
        } else {
            o["data"] = data_json(&t.data);
        }
        out_json.push(o);
    }
    let model_version = match answer.set.live.as_slice() {
        [only] => only.bundle.version().to_owned(),
        _ => String::new(),
    };
    let mut head = json!({
        "model_name": name,
        "model_version": model_version,
        "outputs": out_json,
    });
    if let Some(id) = request.id {
        head["id"] = Value::String(id);
    }
    if blob.is_empty() {
        return Ok(Json(head).into_response());
    }
    let mut bytes = serde_json::to_vec(&head).unwrap_or_default();
    let json_len = bytes.len();
    bytes.extend_from_slice(&blob);
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::{json_data, nan_as_null, DataType};

    #[test]
    fn bare_nans_become_nulls_and_strings_are_left_alone() {
        let text = br#"{"data": [1.0, NaN, 2], "name": "NaN \" NaN", "x": [NaN]}"#;
        let out = nan_as_null(text);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"data": [1.0, null, 2], "name": "NaN \" NaN", "x": [null]}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["data"][1].is_null());
        assert!(matches!(
            nan_as_null(b"[1, 2]"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Found by the fuzz target `v2_http` (the input is `fuzz/corpus/v2_http/crash-nan-overlapping`):
    /// `NaNaN` held two overlapping matches, and replacing the second sliced backwards.
    #[test]
    fn overlapping_nans_are_replaced_once_without_a_panic() {
        assert_eq!(&*nan_as_null(b"[NaNaN]"), b"[nullaN]");
        assert_eq!(&*nan_as_null(b"[NaNNaN]"), b"[nullnull]");
        let found = include_bytes!("../../fuzz/corpus/v2_http/crash-nan-overlapping");
        let out = nan_as_null(found);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_err());
    }

    /// Found while writing the fuzz target `v2_http`, which crashed on this input
    /// (`fuzz/corpus/v2_http/crash-huge-shape`): a shape of 10^12 rows made the server reserve
    /// room for 10^12 values before counting the few it was sent, and an allocation that size
    /// aborts the process.
    #[test]
    fn a_huge_shape_is_a_violation_not_an_allocation() {
        for count in [1_000_000_000_000, usize::MAX] {
            let err = json_data(DataType::Fp64, &serde_json::json!([]), count).unwrap_err();
            assert!(err.contains("holds 0 values"), "{err}");
        }
    }
}
