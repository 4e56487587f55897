//! The HTTP adapter (axum), beside gRPC on its own port (`--http-listen`), over the same
//! scoring core, concurrency limit, readiness and shutdown:
//!
//! - [`rest`]: the original Flask service's API, `POST /predict`, `POST /predict/batch`,
//!   `GET /health`, and its OpenAPI document at `GET /openapi.json` ([`openapi`]);
//! - [`v2`]: the Open Inference Protocol's REST routes, `/v2/...`;
//! - [`error`]: the one mapping of the core's errors to HTTP statuses and JSON bodies;
//! - [`body`]: reading a request body within its limit, as JSON.
pub mod body;
pub mod error;
pub mod json_input;
pub mod openapi;
pub mod rest;
pub mod v2;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::DefaultBodyLimit, Router};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    admission::Admission, config::ServeConfig, grpc::connections::Counted, readiness::Readiness,
    scoring::Scorer,
};

/// The readiness condition of the HTTP listener: set once it accepts connections.
pub const HTTP_CONDITION: &str = "http-listener";

/// What every HTTP request shares.
#[derive(Debug)]
pub struct HttpState {
    pub scorer: Arc<Scorer>,
    pub admission: Arc<Admission>,
    pub readiness: Readiness,
    /// Longest body of `/predict` (`--max-unary-message-bytes`).
    pub max_single_bytes: usize,
    /// Longest body of `/predict/batch` and `ModelInfer` (`--max-message-bytes`).
    pub max_batch_bytes: usize,
    /// Most applications of one batch request (`--max-batch-items`).
    pub max_batch_items: usize,
    /// How long a request may take (`--request-timeout`).
    pub request_timeout: Duration,
    /// The decision log, for its gauges at `/metrics` (`None` when off or replaced in tests).
    pub decision_log: Option<crate::decision_log::DecisionLog>,
}

/// Counts each routed call and its time in `cra_requests_total` and
/// `cra_request_duration_seconds`: transport `v2` for the Open Inference Protocol's routes,
/// `rest` for the others; the route's template as the `rpc`.
async fn track(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::telemetry::traces::{call_span, record_status, CallTrace};
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if route == "/metrics" {
        return next.run(req).await;
    }
    let transport = if route.starts_with("/v2") {
        "v2"
    } else {
        "rest"
    };
    // Probes get no span: a trace every few seconds per pod would drown the calls.
    let resp = if route == "/health" || route.starts_with("/v2/health") {
        next.run(req).await
    } else {
        let (span, trace) = call_span("http", &format!("{} {route}", req.method()), req.headers());
        let mut req = req;
        req.extensions_mut().insert(CallTrace(trace));
        let resp = next.run(req).instrument(span.clone()).await;
        let status = resp.status();
        span.in_scope(|| {
            record_status(
                status.as_str(),
                status.is_server_error() && status != axum::http::StatusCode::SERVICE_UNAVAILABLE,
            )
        });
        resp
    };
    crate::monitoring::request(transport, &route, resp.status().as_str(), started.elapsed());
    resp
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<HttpState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let models = state.scorer.models();
    let reloads = state.scorer.registry().status();
    match crate::monitoring::render(&models, &reloads, state.decision_log.as_ref()) {
        Some(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics are off (--metrics false), or another metrics recorder was installed in this process\n",
        )
            .into_response(),
    }
}

/// A bound, not yet running HTTP server.
pub struct HttpServer {
    local_addr: SocketAddr,
    listener: TcpListener,
    max_connections: usize,
    router: Router,
    readiness: Readiness,
    shutdown_grace: Duration,
}

impl HttpServer {
    /// Serves the routes of [`rest`] and [`v2`] on `listener`.
    pub fn new(cfg: &ServeConfig, listener: TcpListener, state: Arc<HttpState>) -> HttpServer {
        let local_addr = listener.local_addr().unwrap_or(cfg.http_listen);
        let readiness = state.readiness.clone();
        // Bodies are read by `body::read` within each route's own limit; axum's default
        // limit would only add a second, smaller one.
        // CORS as the original service had it (flask-cors with its defaults: any origin, any
        // method and header, preflight answered), so browser clients keep working.
        let router = Router::new()
            .merge(rest::routes())
            .merge(v2::routes())
            .route("/metrics", axum::routing::get(metrics))
            .route_layer(axum::middleware::from_fn(track))
            .layer(DefaultBodyLimit::disable())
            .layer(tower_http::cors::CorsLayer::permissive())
            .with_state(state);
        readiness.set(HTTP_CONDITION, false);
        tracing::info!(%local_addr, "HTTP listening");
        HttpServer {
            local_addr,
            listener,
            max_connections: cfg.max_connections,
            router,
            readiness,
            shutdown_grace: cfg.shutdown_grace,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `signal`, then stops accepting, lets requests in flight finish for up to
    /// the shutdown grace period, and returns.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = LimitedListener {
            inner: self.listener,
            permits: Arc::new(Semaphore::new(self.max_connections.max(1))),
            max: self.max_connections,
            refused: 0,
        };
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<PeerAddr>(),
        )
        .with_graceful_shutdown(async move {
            signal.await;
            let _ = draining_tx.send(());
        });
        self.readiness.set(HTTP_CONDITION, true);
        let serve = std::future::IntoFuture::into_future(serve);
        tokio::pin!(serve);
        tokio::select! {
            res = &mut serve => res,
            _ = draining_rx => {
                match tokio::time::timeout(self.shutdown_grace, &mut serve).await {
                    Ok(res) => res,
                    Err(_) => {
                        tracing::warn!(
                            grace = ?self.shutdown_grace,
                            "HTTP requests still in flight after the shutdown grace period; closing them"
                        );
                        Ok(())
                    }
                }
            }
        }
    }
}

/// The client's address, for the decision log's `peer` column.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Accepts at most `max` connections at once; one beyond it is closed as soon as it is
/// accepted (as the gRPC port does, `--max-connections` each).
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
    refused: u64,
}

impl axum::serve::Listener for LimitedListener {
    type Io = Counted<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = match self.inner.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own listener does.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = io.set_nodelay(true);
                    return (Counted::new(io, permit), addr);
                }
                Err(_) => {
                    self.refused += 1;
                    if self.refused.is_power_of_two() {
                        tracing::warn!(
                            limit = self.max,
                            refused = self.refused,
                            peer = %addr,
                            "HTTP connection limit reached (--max-connections): closing new connections"
                        );
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
