//! The original REST API (`/predict`, `/predict/batch`, `/health`, `/openapi.json`) of the
//! in-process server, driven by a real HTTP client (reqwest) on its HTTP port.
use std::time::Duration;

use cra::grpc::pb::ScoreRequest;
use reqwest::{header, Client, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{config, example, spawn_app, spawn_app_with};

/// The original service's example application.
pub fn original_example() -> Value {
    json!({
        "age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
        "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
        "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
        "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
        "employment_status": "employed", "home_ownership": "mortgage",
        "loan_purpose": "debt_consolidation"
    })
}

/// The fields named in a 400 answer's violations.
fn violation_fields(body: &Value) -> Vec<String> {
    body["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations in {body}"))
        .iter()
        .map(|v| v["field"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(client: &Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn predict_answers_with_the_original_keys_and_meanings() {
    let app = spawn_app().await;
    let client = Client::new();
    let resp = client
        .post(app.url("/predict"))
        .header("x-request-id", "rest-req-1")
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "rest-req-1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "success");
    let p = body["probability"]["high_risk"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert_eq!(body["probability"]["low_risk"].as_f64().unwrap(), 1.0 - p);
    assert_eq!(body["prediction"].as_u64().unwrap(), u64::from(p >= 0.5));
    let score = body["risk_score"].as_f64().unwrap();
    assert_eq!(score, (p * 10_000.0).round() / 100.0);
    assert!(["low", "medium", "high"].contains(&body["risk_level"].as_str().unwrap()));
    assert!(body["processing_time_ms"].as_f64().unwrap() >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((body["timestamp"].as_f64().unwrap() - now).abs() < 60.0);
    assert_eq!(body["request_id"], "rest-req-1");
    assert_eq!(body["model_version"], app.bundle.version());
    assert_eq!(body["model_role"], "champion");
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn rest_and_grpc_give_bit_identical_probabilities() {
    let app = spawn_app().await;
    let client = Client::new();
    // The gRPC example and the original's example are the same application.
    let mut grpc = app.client.clone();
    let g = grpc
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap();
    let mut rest_body = original_example();
    // The gRPC example: see helpers::example (Application::example()).
    let a = cra_model::Application::example();
    for (k, v) in [
        ("age", a.age),
        ("income", a.income),
        ("employment_length", a.employment_length),
        ("credit_score", a.credit_score),
        ("num_credit_lines", a.num_credit_lines),
        ("credit_utilization", a.credit_utilization),
        ("debt_to_income", a.debt_to_income),
        ("total_debt", a.total_debt),
        ("savings", a.savings),
        ("loan_amount", a.loan_amount),
        ("loan_term", a.loan_term),
        ("num_late_payments", a.num_late_payments),
        ("num_bankruptcies", a.num_bankruptcies),
        ("inquiries_last_6m", a.inquiries_last_6m),
    ] {
        rest_body[k] = json!(v);
    }
    rest_body["employment_status"] = json!(a.employment_status.unwrap().as_str());
    rest_body["home_ownership"] = json!(a.home_ownership.unwrap().as_str());
    rest_body["loan_purpose"] = json!(a.loan_purpose.unwrap().as_str());
    let (status, r) = post(&client, &app.url("/predict"), &rest_body).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let rest_p = r["probability_default"].as_f64().unwrap();
    assert_eq!(rest_p.to_bits(), g.probability_default.to_bits());
    assert_eq!(
        r["probability"]["high_risk"].as_f64().unwrap().to_bits(),
        g.probability_default.to_bits()
    );
    assert_eq!(r["risk_score"].as_f64().unwrap(), g.risk_score);
    // And a batch gives the same bits for the same application.
    let (status, b) = post(
        &client,
        &app.url("/predict/batch"),
        &json!({"applications": [rest_body.clone(), original_example()]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["count"], 2);
    assert_eq!(
        b["predictions"][0]["probability_default"]
            .as_f64()
            .unwrap()
            .to_bits(),
        g.probability_default.to_bits()
    );
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_originals_invalid_cases_are_400s_naming_the_field() {
    let app = spawn_app().await;
    let client = Client::new();
    let url = app.url("/predict");
    for (field, value) in [
        ("age", json!("45")),
        ("credit_score", json!(900)),
        ("employment_status", json!("astronaut")),
        ("income", json!(0)),
        ("loan_term", json!(36.5)),
        ("age", json!(true)),
    ] {
        let mut body = original_example();
        body[field] = value.clone();
        let (status, answer) = post(&client, &url, &body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{field} = {value}: {answer}"
        );
        assert_eq!(answer["status"], "error");
        assert!(
            answer["error"].as_str().unwrap().contains(field),
            "{answer}"
        );
        assert_eq!(violation_fields(&answer), [field], "{field} = {value}");
    }
    // A missing field.
    let mut body = original_example();
    body.as_object_mut().unwrap().remove("income");
    let (status, answer) = post(&client, &url, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(violation_fields(&answer), ["income"]);
    // Every bad field at once, and a misspelt one.
    let mut body = original_example();
    body["age"] = json!(12);
    body["savings"] = json!(-1);
    body["credit_scor"] = json!(700);
    let (status, answer) = post(&client, &url, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut fields = violation_fields(&answer);
    fields.sort();
    assert_eq!(fields, ["age", "credit_scor", "savings"]);
    // A JSON value that is not an object.
    let (status, answer) = post(&client, &url, &json!([1, 2])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(violation_fields(&answer), ["application"]);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_400_other_media_types_415_and_too_large_bodies_413() {
    let app = spawn_app().await;
    let client = Client::new();
    let url = app.url("/predict");
    // Not JSON at all.
    let resp = client
        .post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body("age=45&income=75000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "error");
    assert_eq!(body["violations"][0]["field"], "body", "{body}");
    assert!(
        body["violations"][0]["description"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );
    // A form, by its Content-Type.
    let resp = client
        .post(&url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(original_example().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Over --max-unary-message-bytes (64 KiB by default), by Content-Length...
    let mut big = original_example();
    big["application_id"] = json!("x".repeat(100_000));
    let resp = client.post(&url).json(&big).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-unary-message-bytes"),
        "{body}"
    );
    // ...and streamed without one.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let resp = client
        .post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn batches_are_scored_in_order_or_refused_naming_each_bad_item() {
    let app = spawn_app().await;
    let client = Client::new();
    let url = app.url("/predict/batch");
    let mut second = original_example();
    second["application_id"] = json!("b-2");
    second["credit_score"] = Value::Null; // no bureau file: missing, allowed
    let (status, body) = post(
        &client,
        &url,
        &json!({"applications": [original_example(), second]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["count"], 2);
    assert_eq!(body["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(body["predictions"][1]["application_id"], "b-2");
    assert!(body["processing_time_ms"].as_f64().is_some());
    assert!(body["timestamp"].as_f64().is_some());

    // An empty batch.
    let (status, body) = post(&client, &url, &json!({"applications": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(violation_fields(&body), ["applications"]);
    // No applications key, or not a list.
    let (status, body) = post(&client, &url, &json!({"apps": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut f = violation_fields(&body);
    f.sort();
    assert_eq!(f, ["applications", "apps"]);
    let (status, _) = post(&client, &url, &json!({"applications": 3})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // One bad item among good ones: the whole batch is refused, naming the item and field.
    let mut bad = original_example();
    bad["age"] = json!("45");
    let mut worse = original_example();
    worse["loan_term"] = json!(36.5);
    worse["employment_status"] = json!("astronaut");
    let (status, body) = post(
        &client,
        &url,
        &json!({"applications": [original_example(), bad, original_example(), worse]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut f = violation_fields(&body);
    f.sort();
    assert_eq!(
        f,
        [
            "applications[1].age",
            "applications[3].employment_status",
            "applications[3].loan_term"
        ]
    );
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_batch_over_the_item_cap_is_refused_before_it_is_scored() {
    let mut cfg = config();
    cfg.max_batch_items = 3;
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    let client = Client::new();
    let apps: Vec<Value> = (0..4).map(|_| original_example()).collect();
    let (status, body) = post(
        &client,
        &app.url("/predict/batch"),
        &json!({"applications": apps}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-batch-items"),
        "{body}"
    );
    // Found by the fuzz target rest_json (fuzz/corpus/rest_json/crash-too-many-items, against
    // its cap of 8): this 400 named no field. It names `applications`.
    assert_eq!(body["violations"][0]["field"], "applications", "{body}");
    assert!(
        body["violations"][0]["description"]
            .as_str()
            .unwrap()
            .contains("more than 3 applications"),
        "{body}"
    );
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_overloaded_server_answers_429_with_retry_after() {
    let mut cfg = config();
    cfg.max_concurrent_requests = 2;
    cfg.max_concurrent_streams = Some(1);
    let app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;
    // Every slot of the one limit taken (as two calls in flight on any transport would).
    let admission = app.handle.admission();
    let held = (admission.admit().unwrap(), admission.admit().unwrap());
    let client = Client::new();
    let resp = client
        .post(app.url("/predict"))
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("--max-concurrent-requests"));
    // gRPC is refused by the same limit.
    let err = app
        .client
        .clone()
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    drop(held);
    let (status, _) = post(&client, &app.url("/predict"), &original_example()).await;
    assert_eq!(status, StatusCode::OK);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_is_200_when_ready_and_503_while_shutting_down() {
    let app = spawn_app().await;
    let client = Client::new();
    let resp = client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["model_loaded"], true);
    assert!(body["timestamp"].as_f64().is_some());
    app.handle.readiness().begin_shutdown();
    let resp = client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn explained_declines_carry_their_reasons_and_explain_true_the_contributions() {
    let app = spawn_app().await;
    let client = Client::new();
    // A risky applicant: declined, so explained by the default policy.
    let mut risky = original_example();
    for (k, v) in [
        ("credit_score", json!(520)),
        ("num_late_payments", json!(6)),
        ("debt_to_income", json!(0.9)),
        ("credit_utilization", json!(0.95)),
        ("inquiries_last_6m", json!(6)),
        ("income", json!(18000)),
        ("loan_amount", json!(40000)),
        ("savings", json!(0)),
        ("employment_status", json!("unemployed")),
    ] {
        risky[k] = v;
    }
    let (status, body) = post(&client, &app.url("/predict"), &risky).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["prediction"], 1,
        "the risky applicant is declined: {body}"
    );
    let reasons = body["reasons"]
        .as_array()
        .expect("a decline carries reasons");
    assert!(!reasons.is_empty() && reasons.len() <= 5);
    assert!(reasons[0]["code"].as_str().unwrap().starts_with('R'));
    assert!(body.get("explanation").is_none());
    let (status, body) = post(&client, &app.url("/predict?explain=true"), &risky).await;
    assert_eq!(status, StatusCode::OK);
    let e = &body["explanation"];
    let sum: f64 = e["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contribution"].as_f64().unwrap())
        .sum::<f64>()
        + e["base_margin"].as_f64().unwrap();
    let p = body["probability_default"].as_f64().unwrap();
    let margin = (p / (1.0 - p)).ln();
    assert!((sum - margin).abs() < 1e-4, "{sum} vs {margin}");
    app.handle.shutdown().await.unwrap();
}

/// The OpenAPI document is JSON, describes the routes, and states exactly what the server
/// accepts: its fields, required fields, categories and bounds, checked against the server.
#[tokio::test]
async fn the_openapi_document_matches_what_the_server_accepts() {
    let app = spawn_app().await;
    let client = Client::new();
    let doc: Value = client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/predict", "/predict/batch", "/health", "/openapi.json"] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    let schema = &doc["components"]["schemas"]["Application"];
    let props = schema["properties"].as_object().unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let url = app.url("/predict");
    let mut checked = 0;
    for (name, p) in props {
        if name == "application_id" {
            continue;
        }
        // Absent: refused exactly when the document says it is required.
        let mut body = original_example();
        body.as_object_mut().unwrap().remove(name);
        let (status, _) = post(&client, &url, &body).await;
        assert_eq!(
            status == StatusCode::BAD_REQUEST,
            required.contains(&name.as_str()),
            "{name} absent"
        );
        if let Some(values) = p["enum"].as_array() {
            for v in values {
                let mut body = original_example();
                body[name] = v.clone();
                assert_eq!(
                    post(&client, &url, &body).await.0,
                    StatusCode::OK,
                    "{name} = {v}"
                );
            }
            let mut body = original_example();
            body[name] = json!("not-a-value");
            assert_eq!(post(&client, &url, &body).await.0, StatusCode::BAD_REQUEST);
            checked += 1;
            continue;
        }
        let integer = p["type"] == "integer" || p["type"][0] == "integer";
        let step: f64 = if integer { 1.0 } else { 1e-3 };
        let max = p["maximum"].as_f64().unwrap();
        let accept = |v: f64| {
            let mut body = original_example();
            body[name] = json!(v);
            body
        };
        assert_eq!(
            post(&client, &url, &accept(max)).await.0,
            StatusCode::OK,
            "{name} max"
        );
        assert_eq!(
            post(&client, &url, &accept(max + step.max(max * 1e-6)))
                .await
                .0,
            StatusCode::BAD_REQUEST,
            "{name} over max"
        );
        if let Some(min) = p["minimum"].as_f64() {
            assert_eq!(
                post(&client, &url, &accept(min)).await.0,
                StatusCode::OK,
                "{name} min"
            );
            assert_eq!(
                post(&client, &url, &accept(min - step)).await.0,
                StatusCode::BAD_REQUEST,
                "{name} under min"
            );
        } else {
            let min = p["exclusiveMinimum"].as_f64().unwrap();
            assert_eq!(
                post(&client, &url, &accept(min)).await.0,
                StatusCode::BAD_REQUEST,
                "{name} at exclusive min"
            );
            assert_eq!(
                post(&client, &url, &accept(min + step)).await.0,
                StatusCode::OK,
                "{name} above min"
            );
        }
        if integer {
            assert_eq!(
                post(&client, &url, &accept(max - 0.5)).await.0,
                StatusCode::BAD_REQUEST,
                "{name} fractional"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 17, "every contract field is in the document");
    assert_eq!(schema["additionalProperties"], false);
    let mut body = original_example();
    body["nickname"] = json!("x");
    assert_eq!(post(&client, &url, &body).await.0, StatusCode::BAD_REQUEST);
    app.handle.shutdown().await.unwrap();
}

/// Browser clients of the original (flask-cors) keep working: a preflight is answered and
/// answers allow any origin.
#[tokio::test]
async fn cors_is_open_as_the_originals_was() {
    let app = spawn_app().await;
    let client = Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, app.url("/predict"))
        .header("Origin", "https://lender.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let resp = client
        .post(app.url("/predict"))
        .header("Origin", "https://lender.example")
        .json(&original_example())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_http_port_stops_with_the_server() {
    let app = spawn_app().await;
    let url = app.url("/health");
    app.handle.shutdown().await.unwrap();
    let err = Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await;
    assert!(err.is_err(), "nothing listens after shutdown");
}
