//! Hot reload of the models, and of the security files (the API keys file and the TLS
//! certificates): on SIGHUP, and when a file changes.
//!
//! The models' triggers end in [`Registry::reload`], run on a blocking thread: the new set is
//! loaded and verified before it replaces the old one; a refused set leaves the old one
//! serving. The security files' end in [`crate::security::Security::reload`], with the same
//! rule. Reloads never touch readiness.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::scoring::Registry;

/// Changes to the models file within this window are one reload (editors write in steps).
const SETTLE: Duration = Duration::from_millis(300);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChanged,
    Api,
}

/// The content of the models file, to tell a real change from a directory event that left it
/// as it was (a Kubernetes ConfigMap volume swaps a `..data` symlink beside it, an editor writes
/// swap files there).
fn file_digest(registry: &Registry) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    match registry.source() {
        crate::scoring::ModelSource::File(path) => std::fs::read(path)
            .ok()
            .map(|bytes| Sha256::digest(bytes).to_vec()),
        crate::scoring::ModelSource::Bundle(_) => None,
    }
}

/// Runs reloads one after another for the triggers sent to the returned sender; ends when
/// every sender is dropped. A file event reloads only when the models file's content changed;
/// SIGHUP and explicit requests always reload (bundles may have changed under the same file).
pub fn spawn_reloader(
    registry: Arc<Registry>,
) -> (mpsc::Sender<Trigger>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Trigger>(16);
    let task = tokio::spawn(async move {
        let mut last = file_digest(&registry);
        while let Some(mut trigger) = rx.recv().await {
            if trigger == Trigger::FileChanged {
                // Let the writer finish, and fold the burst of events into one reload.
                tokio::time::sleep(SETTLE).await;
                while let Ok(t) = rx.try_recv() {
                    if t != Trigger::FileChanged {
                        trigger = t;
                    }
                }
            }
            let now = file_digest(&registry);
            if trigger == Trigger::FileChanged && now == last {
                continue;
            }
            last = now;
            tracing::info!(?trigger, "reloading the models from {}", registry.source());
            let r = registry.clone();
            // Errors are logged and kept by the registry; the old set keeps serving.
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
    });
    (tx, task)
}

/// Sends [`Trigger::Signal`] to each of `txs` on every SIGHUP (Unix only).
pub fn on_sighup(txs: Vec<mpsc::Sender<Trigger>>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the models and the security files");
                for tx in &txs {
                    let _ = tx.send(Trigger::Signal).await;
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        drop(txs);
        Ok(tokio::spawn(async {}))
    }
}

/// The content of `files`, to tell a real change from a directory event that left them as
/// they were.
fn files_digest(files: &[PathBuf]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            }
            Err(_) => h.update(u64::MAX.to_le_bytes()),
        }
    }
    h.finalize().to_vec()
}

/// Runs `reload` for the triggers sent to the returned sender, one after another, on a
/// blocking thread: for a file event only when the content of `files` changed (after the
/// writer settles), for SIGHUP and explicit requests always. Ends when every sender is dropped.
pub fn spawn_files_reloader(
    what: &'static str,
    files: Vec<PathBuf>,
    reload: impl Fn() + Send + Sync + 'static,
) -> (mpsc::Sender<Trigger>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Trigger>(16);
    let reload = Arc::new(reload);
    let task = tokio::spawn(async move {
        let mut last = files_digest(&files);
        while let Some(mut trigger) = rx.recv().await {
            if trigger == Trigger::FileChanged {
                tokio::time::sleep(SETTLE).await;
                while let Ok(t) = rx.try_recv() {
                    if t != Trigger::FileChanged {
                        trigger = t;
                    }
                }
            }
            let now = files_digest(&files);
            if trigger == Trigger::FileChanged && now == last {
                continue;
            }
            last = now;
            tracing::info!(?trigger, "reloading the {what}");
            let reload = reload.clone();
            let _ = tokio::task::spawn_blocking(move || reload()).await;
        }
    });
    (tx, task)
}

/// Watches the directories of `files` (see [`watch_file`]) with one watcher, and sends
/// [`Trigger::FileChanged`] on any change in them.
pub fn watch_files(
    files: &[PathBuf],
    tx: mpsc::Sender<Trigger>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let _ = tx.try_send(Trigger::FileChanged);
    })?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            let f = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            f.parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("."))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Watches the directory of `file` (editors, `mv` and Kubernetes ConfigMap volumes replace the
/// file or a symlink to it, so the file itself cannot be watched) and sends
/// [`Trigger::FileChanged`] on any change in it; the reloader then reloads only if the file's
/// content changed. The watcher stops when the returned value is dropped.
pub fn watch_file(
    file: &Path,
    tx: mpsc::Sender<Trigger>,
) -> notify::Result<notify::RecommendedWatcher> {
    let file: PathBuf = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let dir = file
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // A full queue already holds a reload that will read the file.
        let _ = tx.try_send(Trigger::FileChanged);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
