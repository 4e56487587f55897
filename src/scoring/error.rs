//! The scoring core's one error type: why a call, or one item of a stream, got no score.
//! Each transport maps it once (gRPC: `grpc::status`; HTTP: later), and nothing else.
use std::time::Duration;

use cra_model::FieldViolation;

use super::record::RecordError;

/// Why a call (or one item of a stream) was not answered with a score.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The client sent an invalid request; every bad field is listed.
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// Too many calls (or streams) in flight; the client should back off and retry.
    #[error(
        "the server is at its limit of {limit} concurrent {what} (--{flag}); retry with backoff"
    )]
    Overloaded {
        limit: usize,
        what: &'static str,
        flag: &'static str,
    },
    /// A request message over its method's size limit; refused before it is read.
    #[error("a {method} request message of {bytes} bytes is over the server's limit of {limit} bytes (--{flag})")]
    MessageTooLarge {
        method: &'static str,
        bytes: usize,
        limit: usize,
        flag: &'static str,
    },
    /// The ScoreBatch messages being received at once, across every stream and connection,
    /// would hold more bytes than the server's budget; refused before this one is read.
    #[error("the server is receiving {limit} bytes of ScoreBatch messages at once, its limit (--max-buffered-message-bytes); retry later, or send smaller messages")]
    BufferBudget { limit: usize },
    /// A ScoreBatch request message with more applications than the cap; refused before any
    /// of them is decoded.
    #[error("a ScoreBatch request message may hold at most {limit} applications (--max-batch-items); this one holds more: split it into several messages")]
    TooManyItems { limit: usize },
    /// A stream sent no message, or read no answer, for the idle timeout.
    #[error("the stream was idle for {0:?} (no message sent or no answer read; --stream-idle-timeout) and was closed; open a new stream when there is work")]
    StreamIdle(Duration),
    /// The client's grpc-timeout ran out before the answer was ready.
    #[error("the deadline of {0:?} was exceeded")]
    DeadlineExceeded(Duration),
    /// An explanation was asked for, but this model cannot give one (a booster without node
    /// covers); retraining the model writes them.
    #[error("this decision cannot be explained: {0}")]
    Unexplainable(String),
    /// The decision log could take neither the record nor spool it: no decision without a record.
    #[error("the decision could not be recorded, so it was not made: {0}")]
    Unrecorded(#[from] RecordError),
}

pub fn summary(v: &[FieldViolation]) -> String {
    let fields: Vec<&str> = v.iter().map(|v| v.field).collect();
    format!("{} invalid field(s): {}", v.len(), fields.join(", "))
}

impl ScoreError {
    /// The violation of a request without an application.
    pub fn missing_application_violations() -> Vec<FieldViolation> {
        vec![FieldViolation::new(
            "application",
            "is required: ScoreRequest.application must hold the application to score",
        )]
    }
}
