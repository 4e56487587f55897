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
    /// A batch answered all or nothing (REST `/predict/batch`, `ModelInfer`) had invalid
    /// items: each one's position and every bad field of it. No item was decided.
    #[error("invalid request: {} of the batch's items are invalid: {}", .0.len(), items_summary(.0))]
    InvalidItems(Vec<(usize, Vec<FieldViolation>)>),
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
    /// A ScoreBatch request message (or a REST batch, or a `ModelInfer` call) with more
    /// applications than the cap; refused before any of them is decoded. `field` is where the
    /// request holds them (`applications`, or the tensors' batch dimension, `inputs`).
    #[error("a request may hold at most {limit} applications (--max-batch-items); this one holds more: split it into several")]
    TooManyItems { limit: usize, field: &'static str },
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
    /// The caller's rate limit is used up (or a batch is larger than its burst); nothing was
    /// decided.
    #[error(transparent)]
    RateLimited(#[from] crate::security::rate::RateLimited),
    /// The decision log could take neither the record nor spool it: no decision without a record.
    #[error("the decision could not be recorded, so it was not made: {0}")]
    Unrecorded(#[from] RecordError),
}

pub fn summary(v: &[FieldViolation]) -> String {
    let fields: Vec<&str> = v.iter().map(|v| v.field.as_ref()).collect();
    format!("{} invalid field(s): {}", v.len(), fields.join(", "))
}

/// The first few invalid items of a batch, for a message of bounded length.
fn items_summary(items: &[(usize, Vec<FieldViolation>)]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = items
        .iter()
        .take(SHOWN)
        .map(|(i, v)| format!("item {i}: {}", summary(v)))
        .collect();
    if items.len() > SHOWN {
        parts.push(format!("and {} more", items.len() - SHOWN));
    }
    parts.join("; ")
}

impl ScoreError {
    /// Every violation of an [`ScoreError::InvalidItems`] (or [`ScoreError::InvalidArgument`])
    /// with its field made a path by `path(position, field)`: how a transport names the item
    /// (`applications[3].age`, `age[3]`).
    pub fn violations_with_paths(
        &self,
        path: impl Fn(usize, &str) -> String,
    ) -> Vec<FieldViolation> {
        match self {
            ScoreError::InvalidArgument(v) => v.clone(),
            ScoreError::InvalidItems(items) => items
                .iter()
                .flat_map(|(i, v)| {
                    v.iter()
                        .map(|v| FieldViolation::new(path(*i, &v.field), v.description.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            ScoreError::TooManyItems { limit, field } => vec![FieldViolation::new(
                *field,
                format!(
                    "holds more than {limit} applications, the most one request may hold \
                     (--max-batch-items): split it into several"
                ),
            )],
            _ => Vec::new(),
        }
    }

    /// The violation of a request without an application.
    pub fn missing_application_violations() -> Vec<FieldViolation> {
        vec![FieldViolation::new(
            "application",
            "is required: ScoreRequest.application must hold the application to score",
        )]
    }
}
