//! grpc.health.v1: liveness "", readiness of the scoring service, Watch across shutdown.
use std::time::Duration;

use cra::grpc::SERVICE_NAME;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

use crate::helpers::{config, spawn_app_with};

#[tokio::test]
async fn readiness_goes_not_serving_then_serving_then_not_serving_on_shutdown() {
    // Hold readiness with a gate until the test releases it.
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let app = spawn_app_with(config(), |b| {
        b.readiness_gate(
            "test-gate",
            async move { gate.await.map_err(|e| e.to_string()) },
        )
    })
    .await;
    let mut health = app.health();

    let live = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        live.status,
        ServingStatus::Serving as i32,
        "liveness is up at once"
    );

    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);

    release.send(()).unwrap();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    let check = health
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status, ServingStatus::Serving as i32);

    app.handle.begin_shutdown();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(30), app.handle.stopped())
        .await
        .expect("server stops within its grace period")
        .unwrap();
}

/// The next status sent on a Watch stream (at most 10 s away).
async fn next(w: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a status change within 10 s")
        .expect("watch stream ok")
        .expect("watch stream open")
        .status
}
