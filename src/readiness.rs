//! Readiness: SERVING only while every registered condition holds (the models are loaded, the
//! decision log can record) and shutdown has not begun. Transports follow it: gRPC health
//! publishes it as the [`crate::grpc::SERVICE_NAME`] service, HTTP later as `/ready`.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

/// The condition set once the models are loaded and verified.
pub const MODEL_CONDITION: &str = "model";
/// The condition that follows the decision log ("decisions can be recorded").
pub const DECISION_LOG_CONDITION: &str = "decision-log";

#[derive(Debug, Default)]
struct State {
    conditions: BTreeMap<&'static str, bool>,
    shutting_down: bool,
}

impl State {
    fn ready(&self) -> bool {
        !self.shutting_down && self.conditions.values().all(|ok| *ok)
    }
}

/// Shared readiness state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Starts NOT_SERVING, waiting for the model condition.
    pub fn new() -> Self {
        let mut state = State::default();
        state.conditions.insert(MODEL_CONDITION, false);
        let (tx, _) = watch::channel(false);
        Readiness {
            state: Arc::new(Mutex::new(state)),
            tx: Arc::new(tx),
        }
    }

    /// Sets one named condition and publishes the result (watchers are notified on change).
    pub fn set(&self, condition: &'static str, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.conditions.insert(condition, ok);
        self.publish(&state);
    }

    /// Marks the start of shutdown: NOT_SERVING from now on, whatever the conditions say.
    pub fn begin_shutdown(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.shutting_down = true;
        self.publish(&state);
    }

    /// Whether readiness currently reports SERVING.
    pub fn is_ready(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).ready()
    }

    /// Follows readiness: the current value, then every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn publish(&self, state: &State) {
        let ready = state.ready();
        let changed = self
            .tx
            .send_if_modified(|v| std::mem::replace(v, ready) != ready);
        if changed {
            tracing::info!(
                conditions = ?state.conditions,
                shutting_down = state.shutting_down,
                "readiness: {}",
                if ready { "SERVING" } else { "NOT_SERVING" }
            );
        }
    }
}
