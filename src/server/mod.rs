//! The gRPC scoring server: `creditrisk.v1.CreditRiskService`, `grpc.health.v1` and server
//! reflection (v1 and v1alpha) on one port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cra::server::ServerError> {
//! use cra::{config::ServeConfig, server::ServerBuilder};
//! let server = ServerBuilder::new(ServeConfig::with_listen("127.0.0.1:0".parse().unwrap()))
//!     .bind()
//!     .await?;
//! let handle = server.spawn(); // or: server.run_until(shutdown_signal()).await
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown().await
//! # }
//! ```
//!
//! Lifecycle: `bind` binds the port (readiness NOT_SERVING, liveness SERVING); running loads the
//! model bundle off the reactor, scores a canary application, awaits every readiness gate, then
//! reports SERVING. On the shutdown signal readiness flips to NOT_SERVING first, then the server
//! stops accepting and in-flight calls get up to `shutdown_grace` to finish.
//!
//! Limits against abuse: at most `max_connections` TCP connections; per-method message limits
//! and the ScoreBatch item cap checked as the bytes arrive ([`limits`]); a send limit derived
//! from that cap so every accepted request has a sendable answer; a share of the call slots
//! for streams; an idle timeout for streams.

pub mod connections;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod recorder;
pub mod service;
pub mod shutdown;
pub mod status;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc};

use anyhow::Context as _;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use connections::LimitedIncoming;
use limits::{batch_response_limit, MessageLimits, MAX_BATCH_ITEMS_LIMIT, MAX_MODEL_VERSION_BYTES};

pub use health::{Readiness, SERVICE_NAME};
pub use recorder::{DecisionRecord, DecisionRecorder, Outcome, RecordError, Rpc};
pub use service::{AppState, CreditRisk, REQUEST_ID_HEADER};
pub use shutdown::shutdown_signal;
pub use status::ServeError;

use crate::{
    config::ServeConfig,
    contract::{pb::credit_risk_service_server::CreditRiskServiceServer, FILE_DESCRIPTOR_SET},
    data::Application,
    model::{bundle::BundleError, ModelBundle},
};

/// Start-up and serving failures, each saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}. Is another process using the port? Choose another with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the model bundle from {dir}: {source}")]
    Model { dir: PathBuf, source: BundleError },
    #[error("the model loaded but the canary application scored {0}, not a probability; the bundle is broken, retrain it")]
    Canary(f64),
    #[error("the model version is {len} bytes long; at most {max} are served (it is part of every answer): fix model_version in bundle.json")]
    ModelVersion { len: usize, max: usize },
    #[error("invalid server settings: {0}")]
    Config(String),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the model loader stopped unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
}

type Gate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Configures a server before binding: the config, and optionally a pre-loaded model, a
/// decision recorder and extra readiness gates.
pub struct ServerBuilder {
    config: ServeConfig,
    model: Option<Arc<ModelBundle>>,
    recorder: Option<Arc<dyn DecisionRecorder>>,
    gates: Vec<(&'static str, Gate)>,
    listener: Option<tokio::net::TcpListener>,
}

impl ServerBuilder {
    pub fn new(config: ServeConfig) -> Self {
        ServerBuilder {
            config,
            model: None,
            recorder: None,
            gates: Vec::new(),
            listener: None,
        }
    }

    /// Serves on this bound listener (from [`bind_listener`]) instead of binding
    /// `config.listen` in [`Self::bind`].
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Serves this bundle instead of loading `config.model` from disk.
    pub fn model(mut self, bundle: Arc<ModelBundle>) -> Self {
        self.model = Some(bundle);
        self
    }

    /// Hands every decision (each unary call and each stream item, valid or rejected) to
    /// `recorder` before the client sees it. Without one, `decision_id` is empty.
    pub fn recorder(mut self, recorder: Arc<dyn DecisionRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Readiness stays NOT_SERVING until `gate` resolves `Ok` (e.g. the decision log connected).
    /// An `Err` is logged and keeps readiness NOT_SERVING. Later changes go through
    /// [`Readiness::set`] with the same name.
    pub fn readiness_gate(
        mut self,
        name: &'static str,
        gate: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Self {
        self.gates.push((name, Box::pin(gate)));
        self
    }

    /// Checks the limits, binds the listening socket (unless one was given) and registers
    /// readiness as NOT_SERVING.
    pub async fn bind(self) -> Result<Server, ServerError> {
        let cfg = self.config;
        let checked = check_limits(&cfg)?;
        let listener = match self.listener {
            Some(listener) => listener,
            None => bind_listener(cfg.listen).await?,
        };
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let incoming = LimitedIncoming::new(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            cfg.max_connections,
        );
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter).await;
        for (name, _) in &self.gates {
            readiness.set(name, false).await;
        }
        let state = Arc::new(AppState::new(
            &cfg,
            checked.max_streams,
            worker_threads(cfg.worker_threads),
            self.recorder,
        ));
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so that grpcurl can show BadRequest field violations.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        // tonic's receive limit is per service: the largest of the methods' limits, each method's
        // own limit (and the item cap) applied by `limits` before tonic buffers a message. The
        // send limit follows from the item cap, so that every accepted request has an answer
        // that can be sent.
        let limits = checked.messages;
        let scoring = limits.wrap(
            CreditRiskServiceServer::new(CreditRisk::new(state.clone()))
                .max_decoding_message_size(limits.largest_message())
                .max_encoding_message_size(batch_response_limit(limits.batch_items)),
        );
        // Deadlines are enforced by the service itself (unary: the client's grpc-timeout capped
        // by --request-timeout; streams: per round), so that an expired one is always answered
        // DEADLINE_EXCEEDED; tonic's own timeout layer would answer CANCELLED.
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(cfg.keepalive_interval))
            .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(scoring);
        tracing::info!(%local_addr, "listening (readiness NOT_SERVING until the model is loaded)");
        Ok(Server {
            local_addr,
            config: cfg,
            model: self.model,
            gates: self.gates,
            state,
            readiness,
            incoming,
            router,
        })
    }
}

/// A bound, not yet running server.
pub struct Server {
    local_addr: SocketAddr,
    config: ServeConfig,
    model: Option<Arc<ModelBundle>>,
    gates: Vec<(&'static str, Gate)>,
    state: Arc<AppState>,
    readiness: Readiness,
    incoming: LimitedIncoming,
    router: tonic::transport::server::Router,
}

impl Server {
    /// The address actually bound (the real port when `--listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Shared state, e.g. for reading the latency histograms.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `signal` resolves (or the model fails to load), then drains gracefully.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            config,
            model,
            gates,
            state,
            readiness,
            incoming,
            router,
            ..
        } = self;
        let (failed_tx, mut failed_rx) = watch::channel(false);
        let startup = tokio::spawn(start_up(
            config.model.clone(),
            model,
            gates,
            state.clone(),
            readiness.clone(),
            failed_tx,
        ));

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown_readiness = readiness.clone();
        let shutdown = async move {
            tokio::select! {
                _ = signal => {}
                // The start-up task drops the sender when it succeeds: then never fire.
                Ok(_) = failed_rx.wait_for(|failed| *failed) => {}
            }
            shutdown_readiness.begin_shutdown().await;
            tracing::info!("draining: no new connections; in-flight calls may finish");
            let _ = draining_tx.send(());
        };
        let serve = router.serve_with_incoming_shutdown(incoming, shutdown);
        tokio::pin!(serve);
        tokio::select! {
            res = &mut serve => res?,
            _ = draining_rx => {
                match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                    Ok(res) => res?,
                    Err(_) => tracing::warn!(
                        grace = ?config.shutdown_grace,
                        "calls still in flight after the shutdown grace period; closing them"
                    ),
                }
            }
        }
        state.metrics.log();
        if startup.is_finished() {
            startup.await??;
        } else {
            startup.abort();
        }
        tracing::info!("server stopped");
        Ok(())
    }

    /// Runs the server on the current tokio runtime; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let local_addr = self.local_addr;
        let readiness = self.readiness.clone();
        let state = self.state.clone();
        let task = tokio::spawn(self.run_until(async move {
            if stop_rx.wait_for(|stop| *stop).await.is_err() {
                // The handle was dropped without a shutdown: serve until the runtime ends.
                std::future::pending::<()>().await;
            }
        }));
        ServerHandle {
            local_addr,
            readiness,
            state,
            stop: stop_tx,
            task,
        }
    }
}

/// Loads the model (unless given), scores the canary, awaits the gates, then reports SERVING.
/// A model failure triggers shutdown and is returned.
async fn start_up(
    dir: PathBuf,
    model: Option<Arc<ModelBundle>>,
    gates: Vec<(&'static str, Gate)>,
    state: Arc<AppState>,
    readiness: Readiness,
    failed: watch::Sender<bool>,
) -> Result<(), ServerError> {
    let loaded = match model {
        Some(m) => Ok(m),
        None => {
            let d = dir.clone();
            // A panicking loader is a failed start-up too, not a server that is never ready.
            match tokio::task::spawn_blocking(move || ModelBundle::load(&d)).await {
                Ok(loaded) => loaded
                    .map(Arc::new)
                    .map_err(|source| ServerError::Model { dir, source }),
                Err(e) => Err(ServerError::Task(e)),
            }
        }
    };
    let bundle = match loaded.and_then(|b| {
        let p = b.score(&Application::example()).probability_default;
        if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
            Err(ServerError::Canary(p))
        } else if b.version().len() > MAX_MODEL_VERSION_BYTES {
            Err(ServerError::ModelVersion {
                len: b.version().len(),
                max: MAX_MODEL_VERSION_BYTES,
            })
        } else {
            Ok(b)
        }
    }) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e}");
            let _ = failed.send(true);
            return Err(e);
        }
    };
    tracing::info!(
        model_version = bundle.version(),
        trees = bundle.num_trees(),
        "model loaded; canary application scored"
    );
    let _ = state.model.set(bundle);
    readiness.set(health::MODEL_CONDITION, true).await;
    for (name, gate) in gates {
        match gate.await {
            Ok(()) => readiness.set(name, true).await,
            Err(e) => tracing::error!(gate = name, "readiness gate failed: {e}"),
        }
    }
    Ok(())
}

/// A running server: its address, readiness, and a way to stop it and wait for it.
pub struct ServerHandle {
    local_addr: SocketAddr,
    readiness: Readiness,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the server has stopped (after [`Self::begin_shutdown`] or a failure).
    pub async fn stopped(self) -> Result<(), ServerError> {
        self.task.await?
    }

    /// Shuts down gracefully and waits for it.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.begin_shutdown();
        self.stopped().await
    }
}

/// Binds the listening socket of `addr`.
pub async fn bind_listener(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// The limits of a configuration, checked.
#[derive(Debug, Clone, Copy)]
pub struct CheckedLimits {
    /// Stream slots (a share of `max_concurrent_requests`).
    pub max_streams: usize,
    pub messages: MessageLimits,
}

/// Checks the limits of `cfg` against each other; the error says which flag to fix.
pub fn check_limits(cfg: &ServeConfig) -> Result<CheckedLimits, ServerError> {
    let bad = |m: String| Err(ServerError::Config(m));
    let total = cfg.max_concurrent_requests;
    if total < 2 {
        return bad(format!(
            "--max-concurrent-requests is {total}; it must be at least 2 (streams get a share of \
             the slots and unary calls keep the rest)"
        ));
    }
    let max_streams = cfg.max_concurrent_streams.unwrap_or((total / 4).max(1));
    if max_streams == 0 || max_streams >= total {
        return bad(format!(
            "--max-concurrent-streams is {max_streams}; it must be at least 1 and below \
             --max-concurrent-requests ({total}), so that open streams leave slots to unary calls"
        ));
    }
    if cfg.max_connections == 0 {
        return bad("--max-connections must be at least 1".into());
    }
    if cfg.stream_idle_timeout.is_zero() {
        return bad("--stream-idle-timeout must be longer than 0".into());
    }
    if !(1..=MAX_BATCH_ITEMS_LIMIT).contains(&cfg.max_batch_items) {
        return bad(format!(
            "--max-batch-items is {}; it must be between 1 and {MAX_BATCH_ITEMS_LIMIT}",
            cfg.max_batch_items
        ));
    }
    for (flag, v) in [
        ("--max-message-bytes", cfg.max_message_bytes),
        ("--max-unary-message-bytes", cfg.max_unary_message_bytes),
    ] {
        if !(1024..=u32::MAX as usize).contains(&v) {
            return bad(format!(
                "{flag} is {v}; it must be between 1024 and {} bytes",
                u32::MAX
            ));
        }
    }
    if cfg.max_buffered_message_bytes < cfg.max_message_bytes {
        return bad(format!(
            "--max-buffered-message-bytes is {}; it must be at least --max-message-bytes ({}), \
             or no message of the largest size could ever be received",
            cfg.max_buffered_message_bytes, cfg.max_message_bytes
        ));
    }
    Ok(CheckedLimits {
        max_streams,
        messages: MessageLimits {
            unary_message_bytes: cfg.max_unary_message_bytes,
            batch_message_bytes: cfg.max_message_bytes,
            batch_items: cfg.max_batch_items,
            buffered_bytes: cfg.max_buffered_message_bytes,
        },
    })
}

/// The number of worker threads: the CPUs this process may use (respects cgroup quotas and
/// CPU affinity), unless overridden.
pub fn worker_threads(configured: Option<usize>) -> usize {
    configured.filter(|n| *n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// The readiness condition that follows the decision log ("decisions can be recorded").
pub const DECISION_LOG_CONDITION: &str = "decision-log";

/// `cra serve`: builds the runtime, starts the decision log, serves until SIGINT/SIGTERM,
/// drains, flushes the decision log (to PostgreSQL or the spool), exits.
pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let threads = worker_threads(config.worker_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    tracing::info!(worker_threads = threads, model = %config.model.display(), "starting cra serve");
    runtime.block_on(serve_until(config, shutdown_signal()))
}

/// Runs `cra serve` on the current runtime until `signal`: the decision log of
/// `config.audit` as the recorder (none with `--audit off`), readiness following it; after
/// the drain, every accepted decision is flushed before this returns.
///
/// The settings are checked and the port is bound before the decision log starts: a start
/// that fails on them (say, a second `cra serve` on the same port) never opens, replays or
/// changes the spool, which may belong to a running process.
pub async fn serve_until(
    config: ServeConfig,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check_limits(&config)?;
    let listener = bind_listener(config.listen).await?;
    let audit = crate::audit::AuditLog::from_args(&config.audit)
        .await
        .context("starting the decision log (see --database-url, --spool-dir, --audit)")?;
    let mut builder = ServerBuilder::new(config).listener(listener);
    if audit.is_enabled() {
        builder = builder.recorder(Arc::new(audit.clone()));
    }
    let served = match builder.bind().await {
        Ok(server) => {
            let follower = crate::audit::recorder::follow_readiness(
                &audit,
                server.readiness(),
                DECISION_LOG_CONDITION,
            );
            let res = server.run_until(signal).await;
            if let Some(f) = follower {
                f.abort();
            }
            res
        }
        Err(e) => Err(e),
    };
    // In-flight calls have finished (or the grace period ran out): flush what they recorded.
    audit.shutdown().await;
    Ok(served?)
}
