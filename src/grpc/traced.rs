//! The span of each call of a scoring service ([`crate::telemetry::traces`]): created from the
//! method's path and the request's headers (W3C `traceparent`) before tonic decodes anything,
//! and entered whenever the handler runs. The trace id is left in the request's extensions for
//! the handler to put in its decision rows. Health and reflection calls get no span.
use std::task::{Context, Poll};

use tonic::{
    codegen::{http, Service},
    server::NamedService,
};
use tracing::{instrument::Instrumented, Instrument};

use crate::telemetry::traces::{call_span, CallTrace, TraceId};

/// The trace id the call's decisions record.
pub fn trace_of<T>(request: &tonic::Request<T>) -> Option<TraceId> {
    request.extensions().get::<CallTrace>().and_then(|t| t.0)
}

/// A gRPC service whose calls each run in their own span.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Traced<S> {
        Traced { inner }
    }
}

impl<S: NamedService> NamedService for Traced<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Traced<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let method = path.rsplit('/').next().unwrap_or(path);
        let (span, trace) = call_span("grpc", method, req.headers());
        req.extensions_mut().insert(CallTrace(trace));
        self.inner.call(req).instrument(span)
    }
}
