//! The Open Inference Protocol over HTTP: each input is the body of a
//! `POST /v2/models/credit-risk/infer`, sent to the server's own routes (`http::v2::routes`)
//! with the server's state: the JSON request (bare NaN read as null), its tensors (JSON data,
//! or raw bytes after the JSON header with the binary tensor data extension) read into
//! applications (`v2::inputs_from_tensors`), scored all or nothing by the core, and the
//! output tensors or the error as the client receives them.
//!
//! Input: `B`, 4 bytes (little-endian) of `Inference-Header-Content-Length`, then the body
//! (JSON header and binary data); anything else is a JSON body alone.
#![no_main]

use std::sync::OnceLock;

use axum::{body::Body, extract::Request, Router};
use cra::http::v2;
use libfuzzer_sys::fuzz_target;

/// Rows per request: small, so that inputs of a few KiB reach the cap.
const MAX_ROWS: usize = 8;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| v2::routes().with_state(cra_fuzz::http_state(MAX_ROWS)))
}

fuzz_target!(|data: &[u8]| {
    let mut request = Request::post("/v2/models/credit-risk/infer");
    let body = match data {
        [b'B', a, b, c, d, body @ ..] => {
            let len = u32::from_le_bytes([*a, *b, *c, *d]);
            request = request.header(v2::HEADER_LENGTH, len.to_string());
            body
        }
        body => {
            request = request.header("content-type", "application/json");
            body
        }
    };
    let request = request.body(Body::from(body.to_vec())).expect("a request");
    let answer = cra_fuzz::http_call(router(), request);
    cra_fuzz::check_http_answer(&answer);
    if answer.status == 200 {
        let outputs = answer.body["outputs"].as_array().expect("outputs");
        assert!(!outputs.is_empty(), "{}", answer.body);
        for o in outputs {
            let rows = o["shape"][0].as_u64().expect("a batch dimension");
            assert!((1..=MAX_ROWS as u64).contains(&rows), "{}", answer.body);
        }
    }
});
