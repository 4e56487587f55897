//! The one place where domain errors become gRPC statuses (and inline stream item errors).
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::recorder::RecordError;
use crate::contract::{
    pb,
    validate::{violations_to_pb, FieldViolation},
};

/// Why a call (or one item of a stream) was not answered with a score.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    /// The model is still loading (readiness is NOT_SERVING).
    #[error("the model is not loaded yet; wait for the readiness check to report SERVING")]
    NotReady,
    /// The client's grpc-timeout ran out before the answer was ready.
    #[error("the deadline of {0:?} was exceeded")]
    DeadlineExceeded(Duration),
    /// The decision log could take neither the record nor spool it: no decision without a record.
    #[error("the decision could not be recorded, so it was not made: {0}")]
    Unrecorded(#[from] RecordError),
}

fn summary(v: &[FieldViolation]) -> String {
    let fields: Vec<&str> = v.iter().map(|v| v.field).collect();
    format!("{} invalid field(s): {}", v.len(), fields.join(", "))
}

impl ServeError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            ServeError::InvalidArgument(_) | ServeError::TooManyItems { .. } => {
                Code::InvalidArgument
            }
            ServeError::Overloaded { .. }
            | ServeError::MessageTooLarge { .. }
            | ServeError::BufferBudget { .. } => Code::ResourceExhausted,
            ServeError::NotReady | ServeError::Unrecorded(_) => Code::Unavailable,
            ServeError::DeadlineExceeded(_) | ServeError::StreamIdle(_) => Code::DeadlineExceeded,
        }
    }

    /// The violation of a ScoreRequest without an application.
    pub fn missing_application_violations() -> Vec<FieldViolation> {
        vec![FieldViolation::new(
            "application",
            "is required: ScoreRequest.application must hold the application to score",
        )]
    }

    /// The inline form of this error for one item of a ScoreBatch stream; the message is cut
    /// to [`MAX_ITEM_MESSAGE_BYTES`], so that every answer has a bounded size.
    pub fn to_item_error(&self) -> pb::ItemError {
        pb::ItemError {
            code: self.code() as i32,
            message: truncated(self.to_string(), MAX_ITEM_MESSAGE_BYTES),
            field_violations: match self {
                ServeError::InvalidArgument(v) => violations_to_pb(v),
                _ => Vec::new(),
            },
        }
    }
}

/// Longest `ItemError.message` sent, in bytes.
pub const MAX_ITEM_MESSAGE_BYTES: usize = 512;

/// `s` cut to at most `max` bytes at a character boundary, marked with an ellipsis when cut.
fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The inline error of a stream item that failed validation.
pub fn invalid_item_error(v: &[FieldViolation]) -> pb::ItemError {
    pb::ItemError {
        code: Code::InvalidArgument as i32,
        message: format!("invalid application: {}", summary(v)),
        field_violations: violations_to_pb(v),
    }
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Status {
        let code = e.code();
        let message = e.to_string();
        match e {
            ServeError::InvalidArgument(violations) => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(code, message, details)
            }
            ServeError::TooManyItems { limit } => {
                let details = ErrorDetails::with_bad_request_violation(
                    "applications",
                    format!("at most {limit} applications per ScoreBatch request message"),
                );
                Status::with_error_details(code, message, details)
            }
            _ => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_details_name_every_field() {
        let status: Status = ServeError::InvalidArgument(vec![
            FieldViolation::new("age", "too young"),
            FieldViolation::new("income", "negative"),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["age", "income"]);
    }

    #[test]
    fn overload_is_resource_exhausted() {
        let status: Status = ServeError::Overloaded {
            limit: 1,
            what: "calls",
            flag: "max-concurrent-requests",
        }
        .into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("--max-concurrent-requests"));
    }

    #[test]
    fn item_error_messages_are_bounded() {
        let e = ServeError::Unrecorded(RecordError("é".repeat(10_000)));
        let item = e.to_item_error();
        assert!(
            item.message.len() <= MAX_ITEM_MESSAGE_BYTES,
            "{}",
            item.message.len()
        );
        assert!(item.message.ends_with('…'));
        assert_eq!(truncated("short".into(), 10), "short");
    }
}
