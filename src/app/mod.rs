//! The composition root: [`App::build`] wires the models, the decision log, the scoring core,
//! readiness, hot reload and the gRPC adapter, for `cra serve` and for the tests alike.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cra::app::AppError> {
//! use cra::{app::App, config::ServeConfig};
//! let app = App::build(ServeConfig::with_listen("127.0.0.1:0".parse().unwrap())).await?;
//! let handle = app.spawn(); // or: app.run_until(shutdown_signal()).await
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown().await
//! # }
//! ```
//!
//! Start-up order: the settings are checked and the port is bound first, so that a start that
//! fails on them (say, a second `cra serve` on the same port) never opens, replays or changes
//! the spool, which may belong to a running process; then the models are loaded and verified
//! (a bad bundle stops the start with the reason); then the decision log starts. Readiness is
//! SERVING once the models are loaded and the decision log can record; on the shutdown signal
//! it flips to NOT_SERVING, in-flight calls finish, and every accepted decision is flushed.
pub mod reload;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::{
    admission::Admission,
    config::ServeConfig,
    decision_log::{recorder::follow_readiness, DecisionLog, DecisionLogError},
    grpc::{self, GrpcServer, GrpcState, ServerError},
    http::{HttpServer, HttpState},
    readiness::{Readiness, DECISION_LOG_CONDITION, MODEL_CONDITION},
    scoring::{registry::RegistryError, DecisionRecorder, Registry, Scorer},
    security::Security,
};
use reload::Trigger;

/// Start-up and serving failures, each saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Grpc(#[from] ServerError),
    #[error("cannot listen for HTTP on {addr}: {source}. Is another process using the port? Choose another with --http-listen")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("cannot serve the models: {0}")]
    Models(#[from] RegistryError),
    #[error("cannot start the decision log (see --database-url, --spool-dir, --audit): {0}")]
    DecisionLog(#[from] DecisionLogError),
    #[error("cannot listen for SIGHUP (model reloads): {0}")]
    Signal(std::io::Error),
    #[error("cannot watch the models file {path} for changes: {source}; pass --watch-models false to rely on SIGHUP")]
    Watch {
        path: std::path::PathBuf,
        source: notify::Error,
    },
    #[error("a start-up task stopped unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start with these security settings: {0}")]
    Security(#[from] crate::security::SecurityError),
    #[error("cannot watch the security files ({files}) for changes: {source}")]
    WatchSecurity {
        files: String,
        source: notify::Error,
    },
}

type Gate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// [`App::build`] with parts replaced, for tests: a recorder instead of the configured
/// decision log, extra readiness gates, a listener bound beforehand.
pub struct AppBuilder {
    config: ServeConfig,
    recorder: Option<Arc<dyn DecisionRecorder>>,
    /// A decision log started by the caller, who also stops it.
    decision_log: Option<DecisionLog>,
    gates: Vec<(&'static str, Gate)>,
    listener: Option<tokio::net::TcpListener>,
}

impl AppBuilder {
    /// Every decision goes to `recorder` instead of the decision log of `config`.
    pub fn recorder(mut self, recorder: Arc<dyn DecisionRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Records into `log`, started by the caller with settings of its own, instead of the
    /// decision log of `config`; readiness follows it. The caller shuts it down.
    pub fn decision_log(mut self, log: DecisionLog) -> Self {
        self.decision_log = Some(log);
        self
    }

    /// Readiness stays NOT_SERVING until `gate` resolves `Ok`. An `Err` is logged and keeps
    /// readiness NOT_SERVING.
    pub fn readiness_gate(
        mut self,
        name: &'static str,
        gate: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Self {
        self.gates.push((name, Box::pin(gate)));
        self
    }

    /// Serves on this bound listener instead of binding `config.listen`.
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    pub async fn build(self) -> Result<App, AppError> {
        let AppBuilder {
            config,
            recorder,
            decision_log: given_log,
            gates,
            listener,
        } = self;
        let checked = grpc::check_limits(&config)?;
        let security = Security::from_args(&config.security)?;
        crate::monitoring::set_enabled(config.metrics);
        let listener = match listener {
            Some(l) => l,
            None => grpc::bind_listener(config.listen).await?,
        };
        let http_listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| AppError::HttpBind {
                addr: config.http_listen,
                source,
            })?;
        let source = config.model_source();
        let registry =
            Arc::new(tokio::task::spawn_blocking(move || Registry::load(source)).await??);
        // The log readiness follows, and whether this app shuts it down.
        let (recorder, decision_log, owns_log) = match (recorder, given_log) {
            (Some(r), _) => (Some(r), None, false),
            (None, Some(log)) => {
                let r = log
                    .is_enabled()
                    .then(|| Arc::new(log.clone()) as Arc<dyn DecisionRecorder>);
                (r, Some(log), false)
            }
            (None, None) => {
                let log = DecisionLog::from_args(&config.decision_log).await?;
                let r = log
                    .is_enabled()
                    .then(|| Arc::new(log.clone()) as Arc<dyn DecisionRecorder>);
                (r, Some(log), true)
            }
        };
        let scorer = Arc::new(
            Scorer::new(registry.clone(), recorder, config.batch_chunk)
                .with_explain_policy(config.explain)
                // Nobody would read the windows without the metrics.
                .with_drift_window(if config.metrics {
                    config.drift_window
                } else {
                    0
                }),
        );
        let readiness = Readiness::new();
        for (name, _) in &gates {
            readiness.set(name, false);
        }
        let follower = decision_log
            .as_ref()
            .and_then(|log| follow_readiness(log, readiness.clone(), DECISION_LOG_CONDITION));
        readiness.set(MODEL_CONDITION, true);

        let (reload_tx, reloader) = reload::spawn_reloader(registry.clone());
        let watcher = match (&config.models, config.watch_models) {
            (Some(file), true) => Some(reload::watch_file(file, reload_tx.clone()).map_err(
                |source| AppError::Watch {
                    path: file.clone(),
                    source,
                },
            )?),
            _ => None,
        };
        let admission = Arc::new(
            Admission::new(config.max_concurrent_requests, checked.max_streams)
                .with_rate_limit_wait(config.security.rate_limit_wait),
        );
        let (security_tx, security_reloader) = {
            let security = security.clone();
            reload::spawn_files_reloader("security files", security.files(), move || {
                security.reload()
            })
        };
        let security_watch = match security.files() {
            files if files.is_empty() => None,
            files => Some(
                reload::watch_files(&files, security_tx.clone()).map_err(|source| {
                    AppError::WatchSecurity {
                        files: files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        source,
                    }
                })?,
            ),
        };
        // Anonymous callers and clients under the default limit each hold a limiter state;
        // those back to a full burst are forgotten, so memory follows the recent callers.
        let forget = security.auth.limits().shared().cloned().map(|shared| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    shared.forget_idle();
                }
            })
        });
        let http = HttpServer::new(
            &config,
            http_listener,
            Arc::new(HttpState {
                scorer: scorer.clone(),
                admission: admission.clone(),
                readiness: readiness.clone(),
                max_single_bytes: config.max_unary_message_bytes,
                max_batch_bytes: config.max_message_bytes,
                max_batch_items: config.max_batch_items,
                request_timeout: config.request_timeout,
                decision_log: decision_log.clone(),
            }),
            &security,
        )
        .map_err(AppError::Http)?;
        let grpc = GrpcServer::bind(
            config,
            listener,
            scorer.clone(),
            admission.clone(),
            readiness.clone(),
            &security,
        )
        .await?;
        let sighup = reload::on_sighup(vec![reload_tx.clone(), security_tx.clone()])
            .map_err(AppError::Signal)?;
        Ok(App {
            grpc,
            http,
            admission,
            scorer,
            readiness,
            decision_log: if owns_log { decision_log } else { None },
            gates,
            reload_tx,
            background: [
                follower,
                Some(reloader),
                Some(sighup),
                Some(security_reloader),
                forget,
            ]
            .into_iter()
            .flatten()
            .collect(),
            _watcher: watcher,
            _security_watch: security_watch,
            _security_tx: security_tx,
        })
    }
}

/// A built application: bound, models loaded, decision log started; not serving yet.
pub struct App {
    grpc: GrpcServer,
    http: HttpServer,
    admission: Arc<Admission>,
    scorer: Arc<Scorer>,
    readiness: Readiness,
    /// The decision log this app started (flushed when it stops); `None` with a test recorder.
    decision_log: Option<DecisionLog>,
    gates: Vec<(&'static str, Gate)>,
    reload_tx: mpsc::Sender<Trigger>,
    background: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
    _security_watch: Option<notify::RecommendedWatcher>,
    _security_tx: mpsc::Sender<Trigger>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("local_addr", &self.local_addr())
            .field("models", &self.scorer.registry().source().to_string())
            .finish_non_exhaustive()
    }
}

impl App {
    /// The application `config` describes, as `cra serve` runs it.
    pub async fn build(config: ServeConfig) -> Result<App, AppError> {
        App::builder(config).build().await
    }

    pub fn builder(config: ServeConfig) -> AppBuilder {
        AppBuilder {
            config,
            recorder: None,
            decision_log: None,
            gates: Vec::new(),
            listener: None,
        }
    }

    /// The address actually bound (the real port when `--listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The HTTP server's address (the real port when `--http-listen` used port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Serves until `signal`, then drains and flushes the decision log.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App {
            grpc,
            http,
            admission: _,
            scorer,
            readiness,
            decision_log,
            gates,
            reload_tx,
            background,
            _watcher,
            _security_watch,
            _security_tx,
        } = self;
        let gate_task = tokio::spawn({
            let readiness = readiness.clone();
            async move {
                for (name, gate) in gates {
                    match gate.await {
                        Ok(()) => readiness.set(name, true),
                        Err(e) => tracing::error!(gate = name, "readiness gate failed: {e}"),
                    }
                }
            }
        });
        // One signal stops both servers; either one stopping on its own stops the other.
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let signal_task = tokio::spawn({
            let stop_tx = stop_tx.clone();
            async move {
                signal.await;
                let _ = stop_tx.send(true);
            }
        });
        let grpc_run = {
            let stop_tx = stop_tx.clone();
            let signal = stopped(stop_rx.clone());
            async move {
                let r = grpc.run_until(signal).await;
                let _ = stop_tx.send(true);
                r
            }
        };
        let http_run = {
            let stop_tx = stop_tx.clone();
            let signal = stopped(stop_rx.clone());
            async move {
                let r = http.run_until(signal).await;
                let _ = stop_tx.send(true);
                r
            }
        };
        let (served, http_served) = tokio::join!(grpc_run, http_run);
        signal_task.abort();
        gate_task.abort();
        drop(reload_tx);
        drop(_watcher);
        drop(_security_watch);
        drop(_security_tx);
        for task in background {
            task.abort();
        }
        drop(scorer);
        // In-flight calls have finished (or the grace period ran out): flush what they recorded.
        if let Some(log) = decision_log {
            log.shutdown().await;
        }
        tracing::info!("server stopped");
        served?;
        http_served.map_err(AppError::Http)
    }

    /// Runs the application on the current tokio runtime; the handle stops it.
    pub fn spawn(self) -> AppHandle {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let local_addr = self.local_addr();
        let http_addr = self.http_addr();
        let admission = self.admission.clone();
        let readiness = self.readiness.clone();
        let scorer = self.scorer.clone();
        let grpc_state = self.grpc.state();
        let reload = self.reload_tx.clone();
        let task = tokio::spawn(self.run_until(async move {
            if stop_rx.wait_for(|stop| *stop).await.is_err() {
                // The handle was dropped without a shutdown: serve until the runtime ends.
                std::future::pending::<()>().await;
            }
        }));
        AppHandle {
            local_addr,
            http_addr,
            admission,
            readiness,
            scorer,
            grpc_state,
            reload,
            stop: stop_tx,
            task,
        }
    }
}

/// A running application: its address, readiness, scoring core, and a way to stop it.
pub struct AppHandle {
    local_addr: SocketAddr,
    http_addr: SocketAddr,
    admission: Arc<Admission>,
    readiness: Readiness,
    scorer: Arc<Scorer>,
    grpc_state: Arc<GrpcState>,
    reload: mpsc::Sender<Trigger>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), AppError>>,
}

impl AppHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The HTTP server's address (REST and the Open Inference Protocol's /v2 routes).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The process's concurrency limit, which every transport admits its calls through.
    pub fn admission(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    pub fn scorer(&self) -> Arc<Scorer> {
        self.scorer.clone()
    }

    /// The gRPC adapter's state, e.g. for reading the latency histograms.
    pub fn grpc_state(&self) -> Arc<GrpcState> {
        self.grpc_state.clone()
    }

    /// Asks for a reload, as SIGHUP does; it runs in the background.
    pub async fn request_reload(&self) {
        let _ = self.reload.send(Trigger::Api).await;
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the application has stopped (after [`Self::begin_shutdown`] or a failure).
    pub async fn stopped(self) -> Result<(), AppError> {
        self.task.await?
    }

    /// Shuts down gracefully and waits for it.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.begin_shutdown();
        self.stopped().await
    }
}

/// `cra serve`: builds the runtime and the application, serves until SIGINT/SIGTERM, drains,
/// flushes the decision log (to PostgreSQL or the spool), exits.
pub fn serve(config: ServeConfig, log_format: crate::config::LogFormat) -> anyhow::Result<()> {
    let threads = grpc::worker_threads(config.worker_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        // The logs, and the traces' exporter, whose gRPC channel lives on this runtime.
        let traces = crate::telemetry::init_serving(log_format, &config.traces.config())?;
        tracing::info!(worker_threads = threads, models = %config.model_source(), "starting cra serve");
        let served = async {
            App::build(config)
                .await?
                .run_until(grpc::shutdown_signal())
                .await
        }
        .await;
        // The last spans are sent whether serving ended well or not.
        traces.shutdown().await;
        served.map_err(anyhow::Error::from)
    })?;
    Ok(())
}
