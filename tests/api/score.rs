//! Unary Score and GetModelInfo.
use approx::assert_abs_diff_eq;
use cra::grpc::pb::{self, GetModelInfoRequest, ScoreRequest};
use cra_model::{Application, RiskLevel};
use tonic::{Code, Request};

use crate::helpers::{example, spawn_app};

#[tokio::test]
async fn the_original_example_application_is_scored_consistently_with_the_model() {
    let mut app = spawn_app().await;
    let resp = app
        .client
        .score(ScoreRequest {
            application: Some(example()),
            explain: false,
        })
        .await
        .expect("score succeeds");
    let header_id = resp
        .metadata()
        .get("x-request-id")
        .expect("x-request-id in response metadata")
        .to_str()
        .unwrap()
        .to_owned();
    let s = resp.into_inner().score.expect("a score");

    let expected = app.bundle.score(&Application::example());
    assert_abs_diff_eq!(
        s.probability_default,
        expected.probability_default,
        epsilon = 1e-9
    );
    assert_abs_diff_eq!(s.risk_score, expected.risk_score, epsilon = 1e-9);
    assert_abs_diff_eq!(s.margin, f64::from(expected.margin), epsilon = 1e-6);
    assert_eq!(s.prediction, i32::from(expected.prediction));
    let level = match expected.risk_level {
        RiskLevel::Low => pb::RiskLevel::Low,
        RiskLevel::Medium => pb::RiskLevel::Medium,
        RiskLevel::High => pb::RiskLevel::High,
    };
    assert_eq!(s.risk_level, level as i32);

    // Internal consistency of the answer.
    assert!((0.0..=1.0).contains(&s.probability_default));
    assert_abs_diff_eq!(
        s.probability_default + s.probability_repayment,
        1.0,
        epsilon = 1e-12
    );
    assert_abs_diff_eq!(
        s.risk_score,
        (s.probability_default * 10_000.0).round() / 100.0,
        epsilon = 1e-9
    );
    assert_eq!(s.application_id, "example-1");
    assert_eq!(s.model_version, app.bundle.version());
    assert_eq!(s.decision_id, "", "no decision log in this test");
    assert_eq!(s.request_id, header_id);
    let generated = uuid::Uuid::parse_str(&s.request_id).expect("generated id is a UUID");
    assert_eq!(generated.get_version_num(), 7);
    let took = s.processing_time.expect("processing_time");
    assert!(took.seconds == 0 && took.nanos > 0, "{took:?}");
    assert!(s.scored_at.expect("scored_at").seconds > 1_700_000_000);

    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_callers_request_id_is_echoed() {
    let mut app = spawn_app().await;
    let mut req = Request::new(ScoreRequest {
        application: Some(example()),
        explain: false,
    });
    req.metadata_mut()
        .insert("x-request-id", "req-abc-123".parse().unwrap());
    let resp = app.client.score(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "req-abc-123");
    assert_eq!(resp.into_inner().score.unwrap().request_id, "req-abc-123");
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_without_an_application_names_the_field() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .score(ScoreRequest {
            application: None,
            explain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = crate::validation::bad_fields(&status);
    assert_eq!(fields, ["application"]);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn model_info_describes_the_loaded_bundle() {
    let mut app = spawn_app().await;
    let info = app
        .client
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .model
        .expect("model info");
    let m = &app.bundle.manifest;
    assert_eq!(info.model_version, m.model_version);
    assert_eq!(info.artifact_sha256, m.artifact_sha256);
    assert_eq!(info.num_trees as usize, app.bundle.num_trees());
    assert!(info.num_trees > 0);
    assert_eq!(info.training_rows, m.training_rows);
    assert_eq!(info.xgboost_version, m.xgboost_version);
    assert_eq!(info.features.len(), m.features.len());
    assert_eq!(info.features[0].name, m.features[0].name);
    let t = info.thresholds.expect("thresholds");
    assert_eq!(t.decision_threshold, m.thresholds.decision_threshold);
    assert_eq!(t.low_max, m.thresholds.low_max);
    assert_eq!(t.medium_max, m.thresholds.medium_max);
    assert_eq!(info.metrics.len(), app.bundle.metrics.len());
    assert_eq!(info.hyperparameters.len(), m.hyperparameters.len());
    assert_eq!(info.trained_at.unwrap().seconds, m.trained_at.timestamp());
    app.handle.shutdown().await.unwrap();
}
