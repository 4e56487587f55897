//! The one place where the scoring core's errors become gRPC statuses (and inline stream item
//! errors).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{convert::violations_to_pb, pb};
use crate::scoring::error::summary;
pub use crate::scoring::ScoreError as ServeError;
use cra_model::FieldViolation;

/// The gRPC mapping of [`ServeError`].
pub trait GrpcError {
    fn code(&self) -> Code;
    fn to_item_error(&self) -> pb::ItemError;
}

impl GrpcError for ServeError {
    /// The gRPC code of this error.
    fn code(&self) -> Code {
        match self {
            ServeError::InvalidArgument(_)
            | ServeError::InvalidItems(_)
            | ServeError::TooManyItems { .. } => Code::InvalidArgument,
            ServeError::Overloaded { .. }
            | ServeError::MessageTooLarge { .. }
            | ServeError::BufferBudget { .. }
            | ServeError::RateLimited(_) => Code::ResourceExhausted,
            ServeError::Unrecorded(_) => Code::Unavailable,
            ServeError::Unexplainable(_) => Code::FailedPrecondition,
            ServeError::DeadlineExceeded(_) | ServeError::StreamIdle(_) => Code::DeadlineExceeded,
        }
    }

    /// The inline form of this error for one item of a ScoreBatch stream; the message is cut
    /// to [`MAX_ITEM_MESSAGE_BYTES`], so that every answer has a bounded size.
    fn to_item_error(&self) -> pb::ItemError {
        pb::ItemError {
            code: self.code() as i32,
            message: truncated(self.to_string(), MAX_ITEM_MESSAGE_BYTES),
            field_violations: match self {
                ServeError::InvalidArgument(v) => violations_to_pb(v),
                ServeError::InvalidItems(_) => {
                    violations_to_pb(&self.violations_with_paths(row_path))
                }
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

/// How a gRPC error names the field of a batch row (Open Inference Protocol): `age[3]` is
/// `age` of the row at position 3 along the batch dimension.
pub fn row_path(row: usize, field: &str) -> String {
    format!("{field}[{row}]")
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
        match &e {
            ServeError::InvalidArgument(_)
            | ServeError::InvalidItems(_)
            | ServeError::TooManyItems { .. } => {
                let details = ErrorDetails::with_bad_request(
                    e.violations_with_paths(row_path)
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(code, message, details)
            }
            ServeError::RateLimited(limited) => match limited.retry_after() {
                Some(after) => Status::with_error_details(
                    code,
                    message,
                    ErrorDetails::with_retry_info(Some(after)),
                ),
                None => Status::new(code, message),
            },
            _ => Status::new(code, message),
        }
    }
}

/// True for the codes that mean the server failed (what an error rate and a trace's error flag
/// count), false for the client's mistakes and for load shedding it can retry.
pub fn is_server_fault(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::DataLoss
            | tonic::Code::Unimplemented
    )
}

/// A status code's name as the metrics and spans record it (`InvalidArgument`: tonic's
/// `Debug`), without formatting one per call.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::RecordError;

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
            .collect::<Vec<String>>();
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

    #[test]
    fn code_names_are_tonics_debug_names() {
        for i in 0..=16 {
            let code = Code::from_i32(i);
            assert_eq!(super::code_name(code), format!("{code:?}"));
        }
    }
}
