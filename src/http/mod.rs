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
use tokio::net::TcpListener;

use crate::{
    admission::Admission,
    config::ServeConfig,
    readiness::Readiness,
    scoring::Scorer,
    security::{
        auth::http_middleware,
        listener::{ConnInfo, Incoming},
        tls::Port,
        Security,
    },
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
    match crate::monitoring::render(
        &models,
        &reloads,
        state.decision_log.as_ref(),
        state.scorer.drift(),
    ) {
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
    incoming: Incoming,
    router: Router,
    readiness: Readiness,
    shutdown_grace: Duration,
}

impl HttpServer {
    /// Serves the routes of [`rest`] and [`v2`] on `listener`, authenticated and with the TLS
    /// of `security`.
    pub fn new(
        cfg: &ServeConfig,
        listener: TcpListener,
        state: Arc<HttpState>,
        security: &Security,
    ) -> std::io::Result<HttpServer> {
        let incoming = Incoming::new(
            listener,
            cfg.max_connections,
            security.tls.clone().map(|t| (t, Port::Http)),
            "http",
        )?;
        let local_addr = incoming.local_addr();
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
            // Before any handler (so before any body is read): who calls, or 401.
            .layer(axum::middleware::from_fn_with_state(
                security.auth.clone(),
                http_middleware,
            ))
            .layer(DefaultBodyLimit::disable())
            .layer(tower_http::cors::CorsLayer::permissive())
            .with_state(state);
        readiness.set(HTTP_CONDITION, false);
        tracing::info!(%local_addr, "HTTP listening");
        Ok(HttpServer {
            local_addr,
            incoming,
            router,
            readiness,
            shutdown_grace: cfg.shutdown_grace,
        })
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
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(
            self.incoming,
            self.router
                .into_make_service_with_connect_info::<ConnInfo>(),
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

/// The client's address, for the decision log's `peer` column (set by the authentication
/// middleware from the connection's [`ConnInfo`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);
