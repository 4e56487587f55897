//! gRPC `ScoreBatch`, one request message: first through the frame scanner in front of tonic
//! (`grpc::limits`), which counts the applications as the bytes arrive and refuses a message
//! over `--max-batch-items` before it is decoded; then, as a stream round does, the
//! applications converted (`convert::input_from_pb`), decided (`Scorer::decide`), recorded
//! (`Scorer::record_batch`) and answered one `BatchResult` each.
//!
//! Input: one control byte (low nibble: the item cap - 1; high nibble: the size - 1 of the
//! pieces the body arrives in), then the message.
#![no_main]

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::Bytes;
use cra::{
    grpc::{
        convert::{input_from_pb, risk_score_to_pb, ScoreContext},
        limits::{MessageLimits, MAX_BATCH_RESULT_BYTES, SCORE_BATCH_PATH},
        pb::{self, batch_result::Result as Answer},
        status::invalid_item_error,
    },
    scoring::{Item, Rpc},
};
use cra_model::input::MAX_APPLICATION_ID_BYTES;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::{body::Body, codegen::http, Status};
use tower::{Service, ServiceExt};

/// The service behind the scanner: reads the whole request body, as tonic would.
#[derive(Clone)]
struct ReadBody;

impl Service<http::Request<Body>> for ReadBody {
    type Response = ();
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move { req.into_body().collect().await.map(|_| ()) })
    }
}

/// The gRPC frame of `message` sent through the scanner in pieces of `piece` bytes, with at
/// most `cap` applications per message.
fn scan(message: &[u8], piece: usize, cap: usize) -> Result<(), Status> {
    let cfg = cra_fuzz::serve_config();
    let limits = MessageLimits {
        unary_message_bytes: cfg.max_unary_message_bytes,
        batch_message_bytes: cfg.max_message_bytes,
        batch_items: cap,
        buffered_bytes: cfg.max_buffered_message_bytes,
    };
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let pieces: Vec<Result<http_body::Frame<Bytes>, Status>> = frame
        .chunks(piece)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
        pieces,
    )));
    let request = http::Request::post(SCORE_BATCH_PATH)
        .body(body)
        .expect("a request");
    cra_fuzz::block_on(limits.wrap(ReadBody).oneshot(request))
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, message)) = data.split_first() else {
        return;
    };
    let cap = usize::from(control & 0x0f) + 1;
    let piece = usize::from(control >> 4) + 1;
    let scanned = scan(message, piece, cap);
    let decoded = pb::ScoreBatchRequest::decode(message);
    if let Ok(request) = &decoded {
        // The scanner counts exactly what prost decodes: it refuses a message iff it holds
        // more applications than the cap.
        let n = request.applications.len();
        match &scanned {
            Ok(()) => assert!(n <= cap, "{n} applications passed a cap of {cap}"),
            Err(status) => {
                assert!(
                    n > cap,
                    "{n} applications refused at a cap of {cap}: {status:?}"
                );
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                cra_fuzz::check_status(status);
            }
        }
    }
    let (Ok(request), Ok(())) = (decoded, scanned) else {
        return;
    };

    // One round of the stream, as `StreamJob::run` scores it.
    let scorer = cra_fuzz::scorer();
    let explain = request.explain;
    let inputs: Vec<_> = request
        .applications
        .into_iter()
        .map(input_from_pb)
        .collect();
    let asked = if explain {
        vec![true; inputs.len()]
    } else {
        Vec::new()
    };
    let set = scorer.models();
    let decided = scorer
        .decide(&set, &inputs, &asked)
        .expect("the default model explains every decision");
    assert_eq!(decided.len(), inputs.len());
    // The longest request id the server takes from a client, for the largest answers.
    let request_id = "r".repeat(128);
    let ctx = cra_fuzz::call_context(
        &request_id,
        Rpc::Stream {
            stream_id: uuid::Uuid::now_v7(),
            position: 0,
        },
    );
    let decided_at = SystemTime::now();
    let ids = scorer
        .record_batch(
            &ctx,
            &set,
            &inputs,
            &decided,
            decided_at,
            ctx.started.elapsed(),
        )
        .expect("every decision is recorded");
    for (k, (input, item)) in inputs.iter().zip(&decided).enumerate() {
        let answer = match item {
            Item::Invalid(v) => {
                assert!(!v.is_empty(), "an invalid item names no field");
                Answer::Error(invalid_item_error(v))
            }
            Item::Scored {
                member,
                decision,
                explanation,
                ..
            } => {
                assert!(!explain || explanation.is_some(), "asked, not explained");
                let model = &set.live[*member];
                Answer::Score(risk_score_to_pb(
                    decision,
                    &ScoreContext {
                        request_id: &request_id,
                        application_id: &input.application_id,
                        decision_id: &ids[k].to_string(),
                        model_version: model.bundle.version(),
                        model_role: model.role,
                        explanation: explanation.as_deref(),
                        processing_time: ctx.started.elapsed(),
                        scored_at: decided_at,
                    },
                ))
            }
        };
        // The stream echoes an application id only up to the accepted length.
        let application_id = if input.application_id.len() <= MAX_APPLICATION_ID_BYTES {
            input.application_id.clone()
        } else {
            String::new()
        };
        let result = pb::BatchResult {
            position: u64::MAX,
            application_id,
            result: Some(answer),
        };
        // The send limit is derived from this bound.
        let len = result.encoded_len();
        assert!(
            len <= MAX_BATCH_RESULT_BYTES,
            "a BatchResult of {len} bytes is over MAX_BATCH_RESULT_BYTES: {result:?}"
        );
    }
});
