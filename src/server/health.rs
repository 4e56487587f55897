//! Readiness for `grpc.health.v1`: service "" is liveness (SERVING while the process runs);
//! [`SERVICE_NAME`] is readiness, SERVING only while every registered condition holds and
//! shutdown has not begun.
use std::{collections::BTreeMap, sync::Arc};

use tonic_health::{server::HealthReporter, ServingStatus};

/// The readiness service name probed by Kubernetes (`grpc: {port, service}`).
pub const SERVICE_NAME: &str = "creditrisk.v1.CreditRiskService";

/// The condition set by the server once the model is loaded and the canary application scores.
pub const MODEL_CONDITION: &str = "model";

/// Shared readiness state. Other components (e.g. the decision log) add a condition with
/// [`Readiness::set`] and flip it when their dependency comes and goes.
#[derive(Clone, Debug)]
pub struct Readiness {
    reporter: HealthReporter,
    state: Arc<tokio::sync::Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    conditions: BTreeMap<&'static str, bool>,
    shutting_down: bool,
}

impl State {
    fn status(&self) -> ServingStatus {
        if !self.shutting_down && self.conditions.values().all(|ok| *ok) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

impl Readiness {
    /// Starts NOT_SERVING, waiting for the model condition.
    pub(crate) async fn new(reporter: HealthReporter) -> Self {
        let mut state = State::default();
        state.conditions.insert(MODEL_CONDITION, false);
        reporter
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        Readiness {
            reporter,
            state: Arc::new(tokio::sync::Mutex::new(state)),
        }
    }

    /// Sets one named condition and publishes the resulting status (watchers are notified).
    pub async fn set(&self, condition: &'static str, ok: bool) {
        let mut state = self.state.lock().await;
        state.conditions.insert(condition, ok);
        self.publish(&state).await;
    }

    /// Marks the start of shutdown: NOT_SERVING from now on, whatever the conditions say.
    pub async fn begin_shutdown(&self) {
        let mut state = self.state.lock().await;
        state.shutting_down = true;
        self.publish(&state).await;
    }

    /// Whether readiness currently reports SERVING.
    pub async fn is_ready(&self) -> bool {
        self.state.lock().await.status() == ServingStatus::Serving
    }

    async fn publish(&self, state: &State) {
        let status = state.status();
        tracing::info!(
            conditions = ?state.conditions,
            shutting_down = state.shutting_down,
            "readiness: {status}"
        );
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }
}
