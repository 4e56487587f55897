//! Reading a request body: within the route's byte limit (413 beyond it, refused before it is
//! read when Content-Length says so), and as JSON: 415 when its Content-Type says it is
//! something else, 400 naming `body` when it says JSON (or nothing) but the bytes are not, as
//! the original service answered a body it could not parse.
use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap},
};

use super::error::HttpError;
use crate::scoring::ScoreError;

/// The body of a request to `route`, at most `limit` bytes (`flag` names the setting).
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    route: &'static str,
    limit: usize,
    flag: &'static str,
) -> Result<Bytes, HttpError> {
    let too_large = |bytes: usize| {
        HttpError::Score(ScoreError::MessageTooLarge {
            method: route,
            bytes,
            limit,
            flag,
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        return Err(too_large(n));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The only error with the body fully sent is its length; a client that went away
        // reads nothing either way.
        tracing::debug!("reading a {route} body: {e}");
        too_large(declared.unwrap_or(limit.saturating_add(1)))
    })
}

/// Refuses a body whose Content-Type says it is not JSON. A request without one is read as
/// JSON, as clients of the original service may send it so.
pub fn require_json(headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = v.to_str().unwrap_or("");
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json" || media.ends_with("+json") {
        Ok(())
    } else {
        Err(HttpError::NotJson(format!(
            "the body must be JSON (Content-Type: application/json); this one is {:?}",
            truncate(text, 64)
        )))
    }
}

/// The body as a JSON value; a client's malformed JSON is a 400 naming `body`.
pub fn json(bytes: &[u8]) -> Result<serde_json::Value, HttpError> {
    serde_json::from_slice(bytes).map_err(malformed)
}

/// A body that was meant to be JSON but is not: a violation of the field `body`.
pub fn malformed(e: serde_json::Error) -> HttpError {
    HttpError::invalid("body", format!("is not valid JSON: {e}"))
}

/// A key or name the client chose, as the field of a violation: at most `max` bytes of it, or
/// `""` (two quotes) when it is empty, so that every violation names a field.
pub fn field_name(s: &str, max: usize) -> String {
    if s.is_empty() {
        "\"\"".to_owned()
    } else {
        truncate(s, max).to_owned()
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}
