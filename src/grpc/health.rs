//! `grpc.health.v1`: service "" is liveness (SERVING while the process runs); [`SERVICE_NAME`]
//! follows the application's [`Readiness`].
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::readiness::Readiness;

/// The readiness service name probed by Kubernetes (`grpc: {port, service}`).
pub const SERVICE_NAME: &str = "creditrisk.v1.CreditRiskService";

/// Publishes readiness to the health service now and on every change, until readiness is
/// dropped everywhere.
pub async fn follow(
    readiness: &Readiness,
    reporter: HealthReporter,
) -> tokio::task::JoinHandle<()> {
    let mut rx = readiness.subscribe();
    let status = |ready: bool| {
        if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let first = status(*rx.borrow_and_update());
    reporter.set_service_status(SERVICE_NAME, first).await;
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = status(*rx.borrow_and_update());
            reporter.set_service_status(SERVICE_NAME, now).await;
        }
    })
}
