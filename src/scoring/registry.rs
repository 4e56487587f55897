//! The model registry of the server: the current [`ModelSet`] behind an `ArcSwap`, replaced
//! atomically by [`Registry::reload`] only once the new set is fully verified. A call takes the
//! set once and finishes on it; a set that fails is refused, the old one keeps serving, and the
//! refusal is kept for `GetModelInfo`.
//!
//! The models file, the set and its routing are the model runtime's
//! ([`cra_model::registry`]), shared with `cra score` and the Python package.
use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;

pub use cra_model::registry::{
    load_set, sticky_hash, Member, ModelSet, ModelSource, RegistryError, Role, MAX_MODELS,
    MAX_MODEL_VERSION_BYTES,
};

/// Logs, for each model of a set just loaded, that it cannot explain its decisions.
fn warn_unexplainable(set: &ModelSet) {
    for m in set.members() {
        if let Some(why) = m.explainer_problem() {
            tracing::warn!(
                dir = %m.dir.display(),
                "this model cannot explain its decisions ({why}); decisions go unexplained, and a client that asks for an explanation gets FAILED_PRECONDITION"
            );
        }
    }
}

/// Reloads and refusals, for `GetModelInfo`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Successful reloads since start (the first load is not one).
    pub reloads: u64,
    /// Sets refused since start.
    pub refusals: u64,
    pub last_reload_at: Option<SystemTime>,
    /// The reason of the last refusal, until the next successful reload.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// The current model set and its history.
#[derive(Debug)]
pub struct Registry {
    source: ModelSource,
    current: ArcSwap<ModelSet>,
    status: Mutex<ReloadStatus>,
    /// Held while a reload loads, so that two reloads never interleave.
    reloading: Mutex<()>,
}

impl Registry {
    /// Loads the first set; an error is the operator's to fix before the server can start.
    pub fn load(source: ModelSource) -> Result<Registry, RegistryError> {
        let set = load_set(&source, 1)?;
        warn_unexplainable(&set);
        for m in set.members() {
            tracing::info!(
                model_version = m.bundle.version(),
                role = m.role.as_str(),
                weight = m.weight,
                dir = %m.dir.display(),
                "model loaded and verified"
            );
        }
        Ok(Registry::with_set(source, set))
    }

    /// A registry serving `set` (already verified).
    pub fn with_set(source: ModelSource, set: ModelSet) -> Registry {
        Registry {
            source,
            current: ArcSwap::from_pointee(set),
            status: Mutex::new(ReloadStatus::default()),
            reloading: Mutex::new(()),
        }
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The set serving now. A call keeps the `Arc` it took until it has answered.
    pub fn current(&self) -> Arc<ModelSet> {
        self.current.load_full()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads and verifies the source again, then swaps the new set in; on failure the old set
    /// keeps serving and the refusal is logged and kept. Blocking (reads the bundles).
    pub fn reload(&self) -> Result<Arc<ModelSet>, Arc<RegistryError>> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.current.load().generation + 1;
        let loaded = load_set(&self.source, generation);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok(set) => {
                warn_unexplainable(&set);
                let set = Arc::new(set);
                self.current.store(set.clone());
                status.reloads += 1;
                status.last_reload_at = Some(set.loaded_at);
                status.last_error = None;
                let versions: Vec<String> = set
                    .members()
                    .map(|m| format!("{} {}", m.role.as_str(), m.bundle.version()))
                    .collect();
                tracing::info!(
                    generation,
                    models = %versions.join(", "),
                    "models reloaded from {}",
                    self.source
                );
                Ok(set)
            }
            Err(e) => {
                tracing::error!("model reload refused, the previous models keep serving: {e}");
                status.refusals += 1;
                status.last_error = Some(e.to_string());
                status.last_error_at = Some(SystemTime::now());
                Err(Arc::new(e))
            }
        }
    }
}
