//! Live drift: for each model serving (version and role), a window of the last N decisions
//! (`cra serve --drift-window N`, 0: off) binned against the bundle's drift reference
//! ([`cra_model::drift`]), with running per-bin counts: recording a decision bins it (one
//! comparison pass per feature, no allocation, outside any lock), then, under the window's
//! own short lock, takes the evicted decision's bins out of the counts and adds the new ones.
//! The PSI of the score and of each feature is computed from the counts only when `/metrics`
//! is rendered, and only once a window holds [`MIN_DECISIONS`] decisions (fewer give a PSI
//! that is mostly sampling noise).
//!
//! Shadow models have windows too, filled off the response path by the shadow thread. A reload
//! keeps the window of a model that stays (same version and role) and starts an empty one for a
//! new model; the windows of models no longer served are dropped. A model whose
//! bundle has no drift reference gets no window: its drift is unavailable
//! (`cra_drift_available 0`).
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use cra_model::{
    decide::Item,
    drift::{BinCounts, Bins, DriftPsi, NUM_TRACKED},
    Application, ModelBundle,
};

use super::registry::{Member, ModelSet, Role};

/// Default of `--drift-window`.
pub const DEFAULT_WINDOW: usize = 10_000;
/// The fewest decisions a window needs before its PSI is exported.
pub const MIN_DECISIONS: u64 = 100;
/// Decisions of a batch binned (outside the lock) then counted under one hold of a window's
/// lock.
const LOCK_CHUNK: usize = 256;

/// The last decisions' bins of one model, as a ring, and their counts.
#[derive(Debug)]
struct Ring {
    rows: Vec<Bins>,
    /// Where the next decision goes once the ring is full.
    next: usize,
    counts: BinCounts,
}

/// The window of one model.
#[derive(Debug)]
pub struct Window {
    bundle: Arc<ModelBundle>,
    role: Role,
    capacity: usize,
    ring: Mutex<Ring>,
}

impl Window {
    fn new(bundle: Arc<ModelBundle>, role: Role, capacity: usize) -> Option<Window> {
        let counts = bundle.drift()?.counts();
        Some(Window {
            ring: Mutex::new(Ring {
                rows: Vec::with_capacity(capacity),
                next: 0,
                counts,
            }),
            bundle,
            role,
            capacity,
        })
    }

    /// Records the decisions `(application, probability_default)`: binned outside the lock,
    /// up to [`LOCK_CHUNK`] at a time (on the stack), then counted under it.
    fn record<'a>(&self, decisions: impl Iterator<Item = (&'a Application, f64)>) {
        let Some(binner) = self.bundle.drift() else {
            return;
        };
        let mut chunk: [Bins; LOCK_CHUNK] = [[0; NUM_TRACKED]; LOCK_CHUNK];
        let mut decisions = decisions.peekable();
        while decisions.peek().is_some() {
            let mut n = 0;
            for (bins, (application, p)) in chunk.iter_mut().zip(decisions.by_ref()) {
                binner.bins(application, p, bins);
                n += 1;
            }
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let ring = &mut *ring;
            for bins in &chunk[..n] {
                if ring.rows.len() < self.capacity {
                    ring.rows.push(*bins);
                } else {
                    let old = std::mem::replace(&mut ring.rows[ring.next], *bins);
                    ring.counts.remove(binner, &old);
                    ring.next = (ring.next + 1) % self.capacity;
                }
                ring.counts.add(binner, bins);
            }
        }
    }

    /// Records one decision: binned outside the lock, counted under it.
    #[inline]
    fn record_one(&self, application: &Application, p: f64) {
        let Some(binner) = self.bundle.drift() else {
            return;
        };
        let mut bins: Bins = [0; NUM_TRACKED];
        binner.bins(application, p, &mut bins);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let ring = &mut *ring;
        if ring.rows.len() < self.capacity {
            ring.rows.push(bins);
        } else {
            let old = std::mem::replace(&mut ring.rows[ring.next], bins);
            ring.counts.remove(binner, &old);
            ring.next = (ring.next + 1) % self.capacity;
        }
        ring.counts.add(binner, &bins);
    }

    /// The decisions in the window and, when there are at least [`MIN_DECISIONS`], their PSI.
    fn snapshot(&self) -> (u64, Option<DriftPsi>) {
        let Some(binner) = self.bundle.drift() else {
            return (0, None);
        };
        let counts = self
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone();
        let psi = (counts.rows >= MIN_DECISIONS).then(|| counts.psi(binner));
        (counts.rows, psi)
    }
}

/// The windows of one model set, by member.
#[derive(Debug, Default)]
struct Windows {
    generation: u64,
    live: Vec<Option<Arc<Window>>>,
    shadows: Vec<Option<Arc<Window>>>,
}

impl Windows {
    /// Whether these are the windows of `set`.
    #[inline]
    fn of(&self, set: &ModelSet) -> bool {
        self.generation == set.generation
            && self.live.len() == set.live.len()
            && self.shadows.len() == set.shadows.len()
    }
}

/// One model's drift, as `/metrics` exports it.
#[derive(Debug)]
pub struct ModelDrift {
    pub model_version: String,
    pub role: Role,
    /// `false`: the bundle has no drift reference.
    pub available: bool,
    /// Decisions in the window.
    pub decisions: u64,
    /// `None` until the window holds [`MIN_DECISIONS`] decisions.
    pub psi: Option<DriftPsi>,
}

/// The live windows of every model serving.
#[derive(Debug)]
pub struct DriftMonitor {
    capacity: usize,
    windows: ArcSwap<Windows>,
    /// Held while the windows are rebuilt for a new set.
    rebuilding: Mutex<()>,
}

impl DriftMonitor {
    /// Windows of `capacity` decisions (at least 1).
    pub fn new(capacity: usize) -> DriftMonitor {
        DriftMonitor {
            capacity: capacity.max(1),
            windows: ArcSwap::from_pointee(Windows::default()),
            rebuilding: Mutex::new(()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The windows of `set`'s live models, rebuilt when the set is newer than the windows;
    /// `None` for a call still finishing on a set that has since been replaced.
    fn windows(&self, set: &ModelSet) -> Option<Arc<Windows>> {
        let current = self.windows.load();
        if current.of(set) {
            return Some(arc_swap::Guard::into_inner(current));
        }
        drop(current);
        self.rebuild(set)
    }

    /// [`Self::windows`] when they are not current: builds them for `set`, keeping the windows
    /// of the models that stay.
    #[cold]
    fn rebuild(&self, set: &ModelSet) -> Option<Arc<Windows>> {
        let _one = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.windows.load_full();
        if old.of(set) {
            return Some(old);
        }
        if old.generation > set.generation {
            return None;
        }
        let keep = |m: &Member| {
            old.live
                .iter()
                .chain(&old.shadows)
                .flatten()
                .find(|w| w.role == m.role && w.bundle.version() == m.bundle.version())
        };
        let window = |m: &Member| match keep(m) {
            Some(w) => Some(w.clone()),
            None => {
                let w = Window::new(m.bundle.clone(), m.role, self.capacity).map(Arc::new);
                if w.is_none() {
                    tracing::warn!(
                        model_version = m.bundle.version(),
                        role = m.role.as_str(),
                        dir = %m.dir.display(),
                        "this model's bundle has no drift reference (drift_reference.json): live drift is unavailable for it; add one with `cra train --drift-reference-only`"
                    );
                }
                w
            }
        };
        let new = Arc::new(Windows {
            generation: set.generation,
            live: set.live.iter().map(window).collect(),
            shadows: set.shadows.iter().map(window).collect(),
        });
        self.windows.store(new.clone());
        Some(new)
    }

    /// Records one scored decision of `set.live[member]`.
    pub fn record(&self, set: &ModelSet, member: usize, application: &Application, p: f64) {
        // The fast path borrows the current windows without touching their reference count.
        let current = self.windows.load();
        if current.of(set) {
            if let Some(Some(w)) = current.live.get(member) {
                w.record_one(application, p);
            }
            return;
        }
        drop(current);
        if let Some(Some(w)) = self.rebuild(set).as_ref().and_then(|w| w.live.get(member)) {
            w.record_one(application, p);
        }
    }

    /// Records the scored decisions of a batch decided on `set`.
    pub fn record_items(&self, set: &ModelSet, items: &[Item]) {
        let Some(windows) = self.windows(set) else {
            return;
        };
        for (m, window) in windows.live.iter().enumerate() {
            let Some(window) = window else { continue };
            window.record(items.iter().filter_map(|item| match item {
                Item::Scored {
                    member,
                    application,
                    decision,
                    ..
                } if *member == m => Some((application, decision.probability_default)),
                _ => None,
            }));
        }
    }

    /// Records the decisions of `set.shadows[shadow]` (scored off the response path).
    pub fn record_shadow<'a>(
        &self,
        set: &ModelSet,
        shadow: usize,
        decisions: impl Iterator<Item = (&'a Application, f64)>,
    ) {
        if let Some(Some(w)) = self
            .windows(set)
            .as_ref()
            .and_then(|w| w.shadows.get(shadow))
        {
            w.record(decisions);
        }
    }

    /// The drift of every model of `set` (the live ones, then the shadows), for `/metrics`.
    pub fn report(&self, set: &ModelSet) -> Vec<ModelDrift> {
        let windows = self.windows(set);
        let live = set.live.iter().enumerate().map(|(i, m)| (m, false, i));
        let shadows = set.shadows.iter().enumerate().map(|(i, m)| (m, true, i));
        live.chain(shadows)
            .map(|(m, shadow, i)| {
                let window = windows.as_ref().and_then(|w| {
                    let list = if shadow { &w.shadows } else { &w.live };
                    list.get(i).cloned().flatten()
                });
                let (decisions, psi) = window.map_or((0, None), |w| w.snapshot());
                ModelDrift {
                    model_version: m.bundle.version().to_owned(),
                    role: m.role,
                    available: m.bundle.drift().is_some(),
                    decisions,
                    psi,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ModelSet {
        load("models/default", 1)
    }

    fn load(dir: &str, generation: u64) -> ModelSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        load_dir(dir, generation)
    }

    fn load_dir(dir: std::path::PathBuf, generation: u64) -> ModelSet {
        cra_model::registry::load_set(&super::super::ModelSource::Bundle(dir), generation).unwrap()
    }

    #[test]
    fn a_reload_keeps_the_window_of_a_model_that_stays_and_starts_a_new_one_empty() {
        let monitor = DriftMonitor::new(1000);
        let a = Application::example();
        let first = load("models/default", 1);
        for _ in 0..5 {
            monitor.record(&first, 0, &a, 0.2);
        }
        // The same model after a reload: its window goes on.
        let same = load("models/default", 2);
        monitor.record(&same, 0, &a, 0.2);
        assert_eq!(monitor.report(&same)[0].decisions, 6);
        // Another version: an empty window of its own.
        let other = load("models/challenger", 3);
        let r = monitor.report(&other);
        assert_eq!(r[0].model_version, other.live[0].bundle.version());
        assert_ne!(r[0].model_version, first.live[0].bundle.version());
        assert_eq!((r[0].decisions, r[0].available), (0, true));
        // A call still finishing on the old set is not counted anywhere, and does not fail.
        monitor.record(&first, 0, &a, 0.2);
        monitor.record_items(&first, &[]);
        assert_eq!(monitor.report(&other)[0].decisions, 0);
        // A bundle without a reference: no window, drift unavailable.
        let dir = crate::test_support::default_bundle_without_drift_reference();
        let bare = load_dir(dir.path().to_owned(), 4);
        monitor.record(&bare, 0, &a, 0.2);
        let r = monitor.report(&bare);
        assert_eq!((r[0].decisions, r[0].available), (0, false));
        assert!(r[0].psi.is_none());
    }

    #[test]
    fn shadows_have_windows_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let file = dir.path().join("models.toml");
        std::fs::write(
            &file,
            format!(
                "[[models]]\npath = {:?}\nrole = \"champion\"\n\n[[models]]\npath = {:?}\nrole = \"shadow\"\n",
                models.join("default"),
                models.join("challenger")
            ),
        )
        .unwrap();
        let set = cra_model::registry::load_set(&super::super::ModelSource::File(file), 1).unwrap();
        let monitor = DriftMonitor::new(1000);
        let a = Application::example();
        monitor.record(&set, 0, &a, 0.2);
        monitor.record_shadow(&set, 0, std::iter::repeat_n((&a, 0.3), 600));
        let r = monitor.report(&set);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].role, r[0].decisions), (Role::Champion, 1));
        assert_eq!((r[1].role, r[1].decisions), (Role::Shadow, 600));
        assert_eq!(r[1].model_version, set.shadows[0].bundle.version());
        assert!(r[1].psi.is_some());
    }

    #[test]
    fn the_window_keeps_the_last_n_decisions_and_their_counts() {
        let set = set();
        let monitor = DriftMonitor::new(150);
        let a = Application::example();
        let mut b = a;
        b.income /= 2.0;
        for _ in 0..99 {
            monitor.record(&set, 0, &a, 0.2);
        }
        let r = monitor.report(&set);
        assert_eq!(r[0].decisions, 99);
        assert!(r[0].available);
        assert!(
            r[0].psi.is_none(),
            "under {MIN_DECISIONS} decisions, no PSI"
        );
        for _ in 0..200 {
            monitor.record(&set, 0, &b, 0.2);
        }
        let r = monitor.report(&set);
        assert_eq!(r[0].decisions, 150);
        // Every decision of the window is now `b`: its counts are those of 150 `b`s.
        let binner = set.live[0].bundle.drift().unwrap();
        let mut only_b = binner.counts();
        let mut bins = [0; NUM_TRACKED];
        binner.bins(&b, 0.2, &mut bins);
        for _ in 0..150 {
            only_b.add(binner, &bins);
        }
        assert_eq!(r[0].psi.as_ref().unwrap(), &only_b.psi(binner));
    }
}
