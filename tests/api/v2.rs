//! The Open Inference Protocol (KServe V2) of the in-process server: over gRPC with the
//! generated tonic client, raw and typed contents; over HTTP with reqwest, JSON and the binary
//! tensor data extension. (tests/e2e_v2.py drives the real binary with tritonclient.)
use cra::grpc::pb::{
    inference::{
        grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
        InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
        ServerLiveRequest, ServerReadyRequest,
    },
    ScoreRequest,
};
use cra_model::{input::NUMBER_FIELDS, Application};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tonic_types::StatusExt;

use crate::helpers::{spawn_app, TestApp};

/// `n` generated applications (a third without a bureau file).
fn applications(n: usize) -> Vec<Application> {
    cra::bench::random_applications(n, 7)
        .iter()
        .map(|p| cra::grpc::convert::validate(p).expect("bench applications are valid"))
        .enumerate()
        .map(|(i, mut a)| {
            if i % 3 == 2 {
                a.credit_score = f64::NAN;
                a.num_credit_lines = f64::NAN;
                a.credit_utilization = f64::NAN;
                a.num_late_payments = f64::NAN;
                a.num_bankruptcies = f64::NAN;
                a.inquiries_last_6m = f64::NAN;
            }
            a
        })
        .collect()
}

/// The gRPC `Score` probability of each application, for comparison.
async fn grpc_probabilities(app: &TestApp, apps: &[Application]) -> Vec<f64> {
    let mut out = Vec::new();
    for a in apps {
        let s = app
            .client
            .clone()
            .score(ScoreRequest {
                application: Some(cra::grpc::convert::application_to_pb(a, "")),
                explain: false,
            })
            .await
            .unwrap()
            .into_inner()
            .score
            .unwrap();
        out.push(s.probability_default);
    }
    out
}

fn numbers(a: &Application) -> [f64; 14] {
    [
        a.age,
        a.income,
        a.employment_length,
        a.credit_score,
        a.num_credit_lines,
        a.credit_utilization,
        a.debt_to_income,
        a.total_debt,
        a.savings,
        a.loan_amount,
        a.loan_term,
        a.num_late_payments,
        a.num_bankruptcies,
        a.inquiries_last_6m,
    ]
}

fn categories(a: &Application) -> [&'static str; 3] {
    [
        a.employment_status.unwrap().as_str(),
        a.home_ownership.unwrap().as_str(),
        a.loan_purpose.unwrap().as_str(),
    ]
}

const CATEGORY_NAMES: [&str; 3] = ["employment_status", "home_ownership", "loan_purpose"];

/// A ModelInfer request for `apps`: raw contents (as tritonclient sends) or typed ones.
fn grpc_request(apps: &[Application], raw: bool) -> ModelInferRequest {
    let n = apps.len() as i64;
    let mut inputs = Vec::new();
    let mut raw_contents = Vec::new();
    for (i, f) in NUMBER_FIELDS.iter().enumerate() {
        let values: Vec<f64> = apps.iter().map(|a| numbers(a)[i]).collect();
        let mut t = InferInputTensor {
            name: f.name.into(),
            datatype: "FP64".into(),
            shape: vec![n, 1],
            ..Default::default()
        };
        if raw {
            raw_contents.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            t.contents = Some(InferTensorContents {
                fp64_contents: values,
                ..Default::default()
            });
        }
        inputs.push(t);
    }
    for (i, name) in CATEGORY_NAMES.iter().enumerate() {
        let values: Vec<Vec<u8>> = apps
            .iter()
            .map(|a| categories(a)[i].as_bytes().to_vec())
            .collect();
        let mut t = InferInputTensor {
            name: (*name).into(),
            datatype: "BYTES".into(),
            shape: vec![n, 1],
            ..Default::default()
        };
        if raw {
            let mut b = Vec::new();
            for v in &values {
                b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                b.extend_from_slice(v);
            }
            raw_contents.push(b);
        } else {
            t.contents = Some(InferTensorContents {
                bytes_contents: values,
                ..Default::default()
            });
        }
        inputs.push(t);
    }
    ModelInferRequest {
        model_name: "credit-risk".into(),
        id: "req-7".into(),
        inputs,
        raw_input_contents: raw_contents,
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_model_infer_matches_score_with_raw_and_typed_contents() {
    let app = spawn_app().await;
    let mut v2 = GrpcInferenceServiceClient::new(app.channel.clone());
    assert!(
        v2.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        v2.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        v2.model_ready(ModelReadyRequest {
            name: "credit-risk".into(),
            version: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .ready
    );
    let meta = v2
        .model_metadata(ModelMetadataRequest {
            name: "credit-risk".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs.len(), 18, "17 fields and application_id");
    assert_eq!(meta.outputs.len(), 6);
    assert!(meta.versions.contains(&app.bundle.version().to_owned()));

    let apps = applications(100);
    let expected = grpc_probabilities(&app, &apps).await;
    for raw in [true, false] {
        let resp = v2
            .model_infer(grpc_request(&apps, raw))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.id, "req-7");
        assert_eq!(resp.model_version, app.bundle.version());
        assert_eq!(resp.outputs[0].name, "probability_default");
        assert_eq!(resp.outputs[0].shape, vec![100, 1]);
        let probs: Vec<f64> = if raw {
            assert_eq!(resp.raw_output_contents.len(), 6);
            resp.raw_output_contents[0]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            assert!(resp.raw_output_contents.is_empty());
            resp.outputs[0].contents.clone().unwrap().fp64_contents
        };
        let same = probs
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && probs.len() == 100, "raw={raw}: V2 and Score differ");
    }
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn grpc_model_infer_errors_name_the_row_and_the_field() {
    let app = spawn_app().await;
    let mut v2 = GrpcInferenceServiceClient::new(app.channel.clone());
    let mut apps = applications(5);
    apps[3].age = f64::NAN; // not a bureau field: may not be missing
    apps[1].loan_term = 36.5;
    let err = v2.model_infer(grpc_request(&apps, true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    fields.sort();
    assert_eq!(fields, ["age[3]", "loan_term[1]"]);
    // A missing tensor, and an unknown model.
    let mut req = grpc_request(&applications(2), false);
    req.inputs.retain(|t| t.name != "income");
    let err = v2.model_infer(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("income"), "{}", err.message());
    let mut req = grpc_request(&applications(2), false);
    req.model_name = "no-such-model".into();
    assert_eq!(
        v2.model_infer(req).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // An unknown output.
    let mut req = grpc_request(&applications(2), false);
    req.outputs = vec![InferRequestedOutputTensor {
        name: "pd".into(),
        ..Default::default()
    }];
    assert_eq!(
        v2.model_infer(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    // The outputs asked for, in the order asked; the bundle addressed by its version.
    let mut req = grpc_request(&applications(2), false);
    req.model_name = app.bundle.version().into();
    req.outputs = ["risk_level", "prediction"]
        .map(|n| InferRequestedOutputTensor {
            name: n.into(),
            ..Default::default()
        })
        .to_vec();
    let resp = v2.model_infer(req).await.unwrap().into_inner();
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["risk_level", "prediction"]);
    assert_eq!(
        resp.outputs[0]
            .contents
            .as_ref()
            .unwrap()
            .bytes_contents
            .len(),
        2
    );
    app.handle.shutdown().await.unwrap();
}

/// The JSON inputs of `apps` (missing bureau values as null).
fn json_inputs(apps: &[Application]) -> Vec<Value> {
    let n = apps.len();
    let mut inputs = Vec::new();
    for (i, f) in NUMBER_FIELDS.iter().enumerate() {
        let data: Vec<Value> = apps
            .iter()
            .map(|a| {
                let v = numbers(a)[i];
                if v.is_nan() {
                    Value::Null
                } else {
                    json!(v)
                }
            })
            .collect();
        inputs.push(json!({"name": f.name, "datatype": "FP64", "shape": [n], "data": data}));
    }
    for (i, name) in CATEGORY_NAMES.iter().enumerate() {
        let data: Vec<&str> = apps.iter().map(|a| categories(a)[i]).collect();
        inputs.push(json!({"name": name, "datatype": "BYTES", "shape": [n], "data": data}));
    }
    inputs
}

#[tokio::test]
async fn rest_v2_json_and_binary_match_score() {
    let app = spawn_app().await;
    let client = Client::new();
    let live = client.get(app.url("/v2/health/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let ready = client
        .get(app.url("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let server: Value = client
        .get(app.url("/v2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(server["name"], "cra");
    let meta: Value = client
        .get(app.url("/v2/models/credit-risk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["inputs"].as_array().unwrap().len(), 18);
    let missing = client.get(app.url("/v2/models/nope")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let apps = applications(30);
    let expected = grpc_probabilities(&app, &apps).await;
    // JSON.
    let resp = client
        .post(app.url("/v2/models/credit-risk/infer"))
        .json(&json!({"id": "j1", "inputs": json_inputs(&apps)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "j1");
    let probs: Vec<f64> = body["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(body["outputs"][0]["name"], "probability_default");
    assert!(probs
        .iter()
        .zip(&expected)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(probs.len(), 30);

    // Binary inputs and outputs (the extension tritonclient uses), at the bundle's version.
    let mut inputs = json_inputs(&apps);
    let mut blob = Vec::new();
    for t in inputs.iter_mut() {
        let raw: Vec<u8> = if t["datatype"] == "FP64" {
            t["data"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|v| v.as_f64().unwrap_or(f64::NAN).to_le_bytes())
                .collect()
        } else {
            let mut b = Vec::new();
            for s in t["data"].as_array().unwrap() {
                let s = s.as_str().unwrap().as_bytes();
                b.extend_from_slice(&(s.len() as u32).to_le_bytes());
                b.extend_from_slice(s);
            }
            b
        };
        t.as_object_mut().unwrap().remove("data");
        t["parameters"] = json!({"binary_data_size": raw.len()});
        blob.extend_from_slice(&raw);
    }
    let head = serde_json::to_vec(&json!({
        "inputs": inputs,
        "outputs": [{"name": "probability_default", "parameters": {"binary_data": true}}, {"name": "risk_level"}],
    }))
    .unwrap();
    let mut body = head.clone();
    body.extend_from_slice(&blob);
    let resp = client
        .post(app.url(&format!(
            "/v2/models/credit-risk/versions/{}/infer",
            app.bundle.version()
        )))
        .header("Inference-Header-Content-Length", head.len())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let json_len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 240);
    assert_eq!(head["outputs"][1]["data"].as_array().unwrap().len(), 30);
    let probs: Vec<f64> = bytes[json_len..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(probs
        .iter()
        .zip(&expected)
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    // A bad row: 400 naming the row and the field.
    let mut inputs = json_inputs(&apps[..4]);
    inputs[0]["data"][2] = json!(12); // age 12
    let resp = client
        .post(app.url("/v2/models/credit-risk/infer"))
        .json(&json!({"inputs": inputs}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("age"), "{body}");
    assert_eq!(body["violations"][0]["field"], "age[2]");
    app.handle.shutdown().await.unwrap();
}
