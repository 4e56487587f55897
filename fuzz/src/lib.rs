//! What CRA's fuzz targets share: the scoring core over the committed default model, as
//! `cra serve` builds it; a decision recorder that writes every decision as the decision log's
//! row and reads it back; the HTTP routes with the server's state; and the checks every
//! error answer must pass (a bad request names its bad fields).
//!
//! Each target (`fuzz_targets/*.rs`) feeds its input to the same functions the server uses on
//! what a client sends, and panics when an answer breaks the contract: a panic anywhere is a
//! crash libFuzzer reports and keeps.
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Instant, SystemTime},
};

use cra::{
    admission::Admission,
    config::ServeConfig,
    decision_log::copy_row,
    http::{HttpState, PeerAddr},
    readiness::Readiness,
    telemetry::traces::CallTrace,
    scoring::{
        CallContext, DecisionRecord, DecisionRecorder, ModelSource, RecordError, Registry, Rpc,
        Scorer, TraceId,
    },
};
use cra_model::input::{category_fields, NUMBER_FIELDS};

/// The committed default model bundle.
pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default")
}

/// The defaults of `cra serve`.
pub fn serve_config() -> ServeConfig {
    ServeConfig::with_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The scoring core of `cra serve` with its defaults (explain policy, chunk), over the default
/// model, recording every decision through [`RowCheck`]. Built once per process.
pub fn scorer() -> &'static Arc<Scorer> {
    static SCORER: OnceLock<Arc<Scorer>> = OnceLock::new();
    SCORER.get_or_init(|| {
        let cfg = serve_config();
        let registry =
            Registry::load(ModelSource::Bundle(model_dir())).expect("the default model loads");
        Arc::new(
            Scorer::new(
                Arc::new(registry),
                Some(Arc::new(RowCheck)),
                cfg.batch_chunk,
            )
            .with_explain_policy(cfg.explain),
        )
    })
}

/// A call's context as the gRPC and HTTP adapters make it, for `rpc`, with the default
/// request timeout as its deadline.
pub fn call_context(request_id: &str, rpc: Rpc) -> CallContext<'_> {
    let timeout = serve_config().request_timeout;
    let started = Instant::now();
    CallContext {
        request_id,
        rpc,
        peer: Some(peer()),
        caller: cra::security::Caller::anonymous(),
        received_at: SystemTime::now(),
        started,
        deadline: Some((started + timeout, timeout)),
        trace_id: Some(TraceId([0x4b; 16])),
    }
}

/// The client address of every call.
pub fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40_000))
}

/// The longest text PostgreSQL indexes in a B-tree entry (`decisions_application_id_idx`).
const MAX_INDEXED_TEXT_BYTES: usize = 2704;

/// Records nothing, but writes each decision as the decision log writes it (a row of
/// PostgreSQL's binary COPY format, the spool frame's payload) and reads the row back: every
/// decision a client can cause must give a row the log can store and replay.
#[derive(Debug)]
pub struct RowCheck;

impl DecisionRecorder for RowCheck {
    fn record(&self, r: &DecisionRecord<'_>) -> Result<(), RecordError> {
        let mut row = Vec::new();
        copy_row::encode_view(r, &mut row);
        if let Err(e) = copy_row::check(&row) {
            panic!("a decision's row is malformed: {e}");
        }
        let back = copy_row::decode(&row)
            .unwrap_or_else(|e| panic!("a decision's row does not read back: {e}"));
        assert_eq!(back.decision_id, r.decision_id);
        let i = &back.inputs;
        let texts = [
            Some(&back.request_id),
            Some(&back.application_id),
            back.peer.as_ref(),
            back.client_id.as_ref(),
            i.employment_status.as_ref(),
            i.home_ownership.as_ref(),
            i.loan_purpose.as_ref(),
            back.trace_id.as_ref(),
        ];
        for t in texts.into_iter().flatten() {
            assert!(!t.contains('\0'), "PostgreSQL text holds no NUL: {t:?}");
        }
        for id in [&back.request_id, &back.application_id] {
            assert!(
                id.len() <= MAX_INDEXED_TEXT_BYTES,
                "an id of {} bytes cannot be indexed",
                id.len()
            );
        }
        if let cra::decision_log::Outcome::Invalid(v) = &back.outcome {
            assert!(!v.is_empty(), "a refused decision's row names no field");
            for x in v {
                assert!(!x.field.contains('\0') && !x.description.contains('\0'));
            }
        }
        if let Some(e) = &back.explanation {
            let json = serde_json::from_str::<serde_json::Value>(e)
                .unwrap_or_else(|err| panic!("the explanation column is not JSON: {err}"));
            assert!(!holds_nul(&json), "PostgreSQL jsonb holds no NUL: {e}");
        }
        Ok(())
    }
}

/// Whether any string (or key) of `v` holds a NUL.
fn holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The HTTP adapter's state as `cra serve` builds it, with `max_batch_items` items at most
/// per batch (small, so that inputs of a few KiB reach the cap).
pub fn http_state(max_batch_items: usize) -> Arc<HttpState> {
    let cfg = serve_config();
    Arc::new(HttpState {
        scorer: scorer().clone(),
        admission: Arc::new(Admission::new(
            cfg.max_concurrent_requests,
            cfg.max_concurrent_requests / 4,
        )),
        readiness: Readiness::new(),
        max_single_bytes: cfg.max_unary_message_bytes,
        max_batch_bytes: cfg.max_message_bytes,
        max_batch_items,
        request_timeout: cfg.request_timeout,
        decision_log: None,
    })
}

/// Runs `f` to completion on one current-thread runtime (built once per process).
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
        })
        .block_on(f)
}

/// The answer of an HTTP route to one request: its status and its body as JSON.
pub struct HttpAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Sends `request` to `router` with what the server's layers attach to it: the client's
/// address, the caller the authentication layer established (anonymous: no keys) and the
/// call's trace.
pub fn http_call(router: &axum::Router, mut request: axum::extract::Request) -> HttpAnswer {
    use tower::ServiceExt;
    let extensions = request.extensions_mut();
    extensions.insert(axum::extract::ConnectInfo(PeerAddr(peer())));
    extensions.insert(cra::security::Caller::ANONYMOUS);
    extensions.insert(CallTrace(Some(TraceId([0x4b; 16]))));
    let response = block_on(router.clone().oneshot(request)).expect("a router is infallible");
    let status = response.status().as_u16();
    // With the binary tensor data extension, the JSON part is the header's length of bytes.
    let json_len = response
        .headers()
        .get(cra::http::v2::HEADER_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .expect("a binary answer says its JSON length")
        });
    let bytes = block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .expect("a response body reads");
    let bytes = match json_len {
        Some(n) => bytes.get(..n).expect("the JSON length is within the body"),
        None => &bytes[..],
    };
    let body = serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "a {status} answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    HttpAnswer { status, body }
}

/// Checks an HTTP error answer: a 400 names at least one field, every field named is
/// non-empty, and nothing but a client error (or success) comes back from client input.
pub fn check_http_answer(answer: &HttpAnswer) {
    let HttpAnswer { status, body } = answer;
    match status {
        200 => {}
        400 | 413 | 415 => {
            let error = body.get("error").and_then(|e| e.as_str());
            assert!(
                error.is_some_and(|e| !e.is_empty()),
                "a {status} answer says nothing: {body}"
            );
            let violations = body.get("violations").and_then(|v| v.as_array());
            if *status == 400 {
                let v =
                    violations.unwrap_or_else(|| panic!("a 400 answer names no bad field: {body}"));
                assert!(!v.is_empty(), "a 400 answer names no bad field: {body}");
            }
            for v in violations.into_iter().flatten() {
                let field = v.get("field").and_then(|f| f.as_str());
                assert!(
                    field.is_some_and(|f| !f.is_empty()),
                    "a violation without a field: {body}"
                );
            }
        }
        other => panic!("client input got a {other}: {body}"),
    }
}

/// Every field name a violation of one application may carry: the contract's fields, the
/// application as a whole.
pub fn contract_fields() -> Vec<&'static str> {
    let mut names = vec!["application", "application_id"];
    names.extend(NUMBER_FIELDS.iter().map(|f| f.name));
    names.extend(category_fields().iter().map(|(n, _)| *n));
    names
}

/// The most bytes of gRPC status metadata (`grpc-message` and `grpc-status-details-bin`) an
/// error answer may take: gRPC's C core (grpcio, the Python client) refuses response metadata
/// over 8 KiB by default, so an error larger than that reaches such a client as some other
/// error, its field violations lost.
pub const MAX_STATUS_METADATA_BYTES: usize = 8 * 1024;

/// Checks a gRPC error answer as a client would receive it: the status encodes into headers
/// of at most [`MAX_STATUS_METADATA_BYTES`], and an INVALID_ARGUMENT carries a
/// `google.rpc.BadRequest` naming at least one field, each of them non-empty.
pub fn check_status(status: &tonic::Status) {
    use tonic_types::StatusExt;
    let mut headers = tonic::codegen::http::HeaderMap::new();
    status
        .add_header(&mut headers)
        .unwrap_or_else(|e| panic!("the status cannot be sent: {e}"));
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    assert!(
        size <= MAX_STATUS_METADATA_BYTES,
        "a {:?} status of {size} bytes of metadata: {}",
        status.code(),
        status.message().chars().take(200).collect::<String>()
    );
    if status.code() == tonic::Code::InvalidArgument {
        let bad = status
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("INVALID_ARGUMENT without field violations: {status:?}"));
        assert!(
            !bad.field_violations.is_empty(),
            "no field named: {status:?}"
        );
        for v in &bad.field_violations {
            assert!(
                !v.field.is_empty(),
                "a violation without a field: {status:?}"
            );
        }
    }
}
