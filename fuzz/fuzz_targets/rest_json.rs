//! The original REST API: each input is the body of a `POST /predict?explain=true` and of a
//! `POST /predict/batch`, sent to the server's own routes (`http::rest::routes`) with the
//! server's state: the body read within its limit, parsed as JSON, each application read
//! (`json_input::application_from_json`), validated, scored and recorded by the core, and
//! the answer or the error as the client receives it.
#![no_main]

use std::sync::OnceLock;

use axum::{body::Body, extract::Request, Router};
use cra::http::rest;
use libfuzzer_sys::fuzz_target;

/// Applications per batch: small, so that inputs of a few KiB reach the cap.
const MAX_BATCH_ITEMS: usize = 8;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| rest::routes().with_state(cra_fuzz::http_state(MAX_BATCH_ITEMS)))
}

fn post(uri: &str, body: &[u8]) -> Request {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request")
}

fn count(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}

fuzz_target!(|data: &[u8]| {
    let one = cra_fuzz::http_call(router(), post("/predict?explain=true", data));
    cra_fuzz::check_http_answer(&one);
    if one.status == 200 {
        let p = one.body["probability_default"]
            .as_f64()
            .expect("a probability");
        assert!((0.0..=1.0).contains(&p), "{}", one.body);
        assert!(
            one.body.get("explanation").is_some(),
            "asked, not explained: {}",
            one.body
        );
    }

    let batch = cra_fuzz::http_call(router(), post("/predict/batch", data));
    cra_fuzz::check_http_answer(&batch);
    if batch.status == 200 {
        let sent = serde_json::from_slice::<serde_json::Value>(data).expect("a 200 body is JSON");
        let n = sent["applications"].as_array().map(Vec::len);
        assert_eq!(
            count(&batch.body, "count").map(|c| c as usize),
            n,
            "{}",
            batch.body
        );
        assert!(n.is_some_and(|n| (1..=MAX_BATCH_ITEMS).contains(&n)));
    }
});
