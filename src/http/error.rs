//! The one place where the HTTP adapter's errors become statuses and bodies: the REST API's
//! `{"status": "error", "error", "violations"}` and the Open Inference Protocol's
//! `{"error"}` (with the same `violations` added).
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use crate::{grpc::status::row_path, scoring::ScoreError};
use cra_model::FieldViolation;

/// Why an HTTP request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The scoring core's refusal (invalid fields, overload, decision log, deadline).
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// The body's Content-Type says it is not JSON (415). (A body that says JSON but is not is a
    /// violation of the field `body`: 400.)
    #[error("{0}")]
    NotJson(String),
    /// A route or a model that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The server is not ready to score (503): starting, shutting down, or the decision log
    /// cannot record.
    #[error("the server is not ready: {0}")]
    NotReady(&'static str),
}

impl HttpError {
    /// A 400 naming one field.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> HttpError {
        HttpError::Score(ScoreError::InvalidArgument(vec![FieldViolation::new(
            field,
            description,
        )]))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::Score(e) => match e {
                ScoreError::InvalidArgument(_)
                | ScoreError::InvalidItems(_)
                | ScoreError::TooManyItems { .. }
                | ScoreError::Unexplainable(_) => StatusCode::BAD_REQUEST,
                ScoreError::Overloaded { .. }
                | ScoreError::BufferBudget { .. }
                | ScoreError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                ScoreError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ScoreError::Unrecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
                ScoreError::DeadlineExceeded(_) | ScoreError::StreamIdle(_) => {
                    StatusCode::GATEWAY_TIMEOUT
                }
            },
            HttpError::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Every bad field, an item's position in its path as the Open Inference Protocol names
    /// rows (`age[3]`); the REST batch names its items itself before this.
    pub fn violations(&self) -> Vec<ViolationJson> {
        match self {
            HttpError::Score(e) => e
                .violations_with_paths(row_path)
                .into_iter()
                .map(|v| ViolationJson {
                    field: v.field.into_owned(),
                    description: v.description,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Headers every error response carries: `Retry-After` when the client should retry (for
    /// a rate limit: when its call would pass, in whole seconds rounded up; none for a batch
    /// larger than the burst, which no retry can pass).
    fn finish(&self, mut resp: Response) -> Response {
        if let HttpError::Score(ScoreError::RateLimited(limited)) = self {
            if let Some(after) = limited.retry_after() {
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            return resp;
        }
        if matches!(
            self.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[derive(Debug, Serialize)]
pub struct ViolationJson {
    pub field: String,
    pub description: String,
}

/// The REST API's error body: the original's `{"status": "error", "error"}`, with every bad
/// field in `violations`.
#[derive(Debug)]
pub struct RestError(pub HttpError);

impl<E: Into<HttpError>> From<E> for RestError {
    fn from(e: E) -> Self {
        RestError(e.into())
    }
}

#[derive(Serialize)]
struct RestErrorBody {
    status: &'static str,
    error: String,
    violations: Vec<ViolationJson>,
    timestamp: f64,
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = RestErrorBody {
            status: "error",
            error: e.to_string(),
            violations: e.violations(),
            timestamp: crate::http::rest::epoch_seconds(),
        };
        let resp = (e.status(), Json(body)).into_response();
        e.finish(resp)
    }
}

/// The Open Inference Protocol's error body, `{"error": "..."}`, with every bad field in
/// `violations`.
#[derive(Debug)]
pub struct V2Error(pub HttpError);

impl<E: Into<HttpError>> From<E> for V2Error {
    fn from(e: E) -> Self {
        V2Error(e.into())
    }
}

#[derive(Serialize)]
struct V2ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    violations: Vec<ViolationJson>,
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = V2ErrorBody {
            error: e.to_string(),
            violations: e.violations(),
        };
        let resp = (e.status(), Json(body)).into_response();
        e.finish(resp)
    }
}
