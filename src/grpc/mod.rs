//! The gRPC adapter: `creditrisk.v1.CreditRiskService`, the Open Inference Protocol's
//! `inference.GRPCInferenceService` ([`inference`]), `grpc.health.v1` and server reflection
//! (v1 and v1alpha) on one port, over the scoring core.
//!
//! [`GrpcServer::bind`] checks the limits and binds the port; [`GrpcServer::run_until`] serves
//! until a signal, then drains: readiness flips to NOT_SERVING first, the server stops
//! accepting, and in-flight calls get up to `shutdown_grace` to finish. The composition (models,
//! decision log, readiness conditions) is [`crate::app::App`]'s.
//!
//! Who may call: the authentication layer of [`crate::security::auth`] before every service,
//! TLS by [`crate::security::listener`].
//!
//! Limits against abuse: at most `max_connections` TCP connections; per-method message limits
//! and the ScoreBatch item cap checked as the bytes arrive ([`limits`]); a send limit derived
//! from that cap so every accepted request has a sendable answer; a share of the call slots
//! for streams; an idle timeout for streams.

pub mod convert;
pub mod health;
pub mod inference;
pub mod limits;
pub mod metrics;
pub mod pb;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod traced;

use std::{future::Future, net::SocketAddr, sync::Arc};

use limits::{batch_response_limit, MessageLimits, MAX_BATCH_ITEMS_LIMIT};

pub use crate::config::worker_threads;
pub use health::SERVICE_NAME;
pub use service::{CreditRisk, GrpcState, REQUEST_ID_HEADER};
pub use shutdown::shutdown_signal;
pub use status::ServeError;

use crate::{
    admission::Admission,
    config::ServeConfig,
    readiness::Readiness,
    scoring::Scorer,
    security::{auth::GrpcAuthLayer, listener::Incoming, tls::Port, ReflectionAccess, Security},
};
use pb::{
    credit_risk_service_server::CreditRiskServiceServer,
    inference::grpc_inference_service_server::GrpcInferenceServiceServer, FILE_DESCRIPTOR_SET,
};

/// Start-up and serving failures of the gRPC adapter, each saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}. Is another process using the port? Choose another with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid server settings: {0}")]
    Config(String),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, not yet running gRPC server.
pub struct GrpcServer {
    local_addr: SocketAddr,
    config: ServeConfig,
    state: Arc<GrpcState>,
    readiness: Readiness,
    incoming: Incoming,
    router: tonic::transport::server::Router<
        tower::layer::util::Stack<GrpcAuthLayer, tower::layer::util::Identity>,
    >,
}

impl GrpcServer {
    /// Checks the limits of `cfg`, takes `listener` (from [`bind_listener`]), and builds the
    /// services over `scorer`, admitting calls through `admission`; health follows `readiness`;
    /// `security` authenticates every call and gives the port its TLS.
    pub async fn bind(
        cfg: ServeConfig,
        listener: tokio::net::TcpListener,
        scorer: Arc<Scorer>,
        admission: Arc<Admission>,
        readiness: Readiness,
        security: &Security,
    ) -> Result<GrpcServer, ServerError> {
        let checked = check_limits(&cfg)?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let incoming = Incoming::new(
            listener,
            cfg.max_connections,
            security.tls.clone().map(|t| (t, Port::Grpc)),
            "grpc",
        )
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        health::follow(&readiness, reporter).await;
        let state = Arc::new(GrpcState::new(
            &cfg,
            admission,
            worker_threads(cfg.worker_threads),
            scorer.clone(),
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
        let scoring = traced::Traced::new(
            limits.wrap(
                CreditRiskServiceServer::new(CreditRisk::new(state.clone()))
                    .max_decoding_message_size(limits.largest_message())
                    .max_encoding_message_size(batch_response_limit(limits.batch_items)),
            ),
        );
        // Deadlines are enforced by the service itself (unary: the client's grpc-timeout capped
        // by --request-timeout; streams: per round), so that an expired one is always answered
        // DEADLINE_EXCEEDED; tonic's own timeout layer would answer CANCELLED.
        // Reflection is not served at all with --reflection off.
        let reflection = security.auth.reflection() != ReflectionAccess::Off;
        let router = tonic::transport::Server::builder()
            .layer(GrpcAuthLayer::new(security.auth.clone()))
            .http2_keepalive_interval(Some(cfg.keepalive_interval))
            .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .add_service(health_service)
            .add_optional_service(reflection.then_some(reflection_v1))
            .add_optional_service(reflection.then_some(reflection_v1alpha))
            .add_service(scoring)
            .add_service(traced::Traced::new(
                GrpcInferenceServiceServer::new(inference::Inference::new(
                    state.clone(),
                    readiness.clone(),
                    limits.batch_items,
                ))
                .max_decoding_message_size(limits.batch_message_bytes)
                .max_encoding_message_size(batch_response_limit(limits.batch_items)),
            ));
        tracing::info!(%local_addr, "gRPC listening");
        Ok(GrpcServer {
            local_addr,
            config: cfg,
            state,
            readiness,
            incoming,
            router,
        })
    }

    /// The address actually bound (the real port when `--listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shared state, e.g. for reading the latency histograms.
    pub fn state(&self) -> Arc<GrpcState> {
        self.state.clone()
    }

    /// Serves until `signal` resolves, then drains gracefully.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let GrpcServer {
            config,
            state,
            readiness,
            incoming,
            router,
            ..
        } = self;
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            signal.await;
            readiness.begin_shutdown();
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
        Ok(())
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
