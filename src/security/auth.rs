//! The one authentication decision of both ports ([`Authenticator::authenticate`]), applied by
//! a tower layer on the gRPC port ([`GrpcAuthLayer`]) and an axum middleware on the HTTP port
//! ([`http_middleware`]) before any handler runs, so before any body is read or scored.
//!
//! - Nothing configured (no `--api-keys`, no `--tls-client-ca`): every call is anonymous
//!   (no client id), limited by its IP address under the default rate limit.
//! - `--api-keys`: a call needs `authorization: Bearer KEY` with a key of the file, not
//!   revoked; its client is the key's.
//! - `--tls-client-ca`: a call needs a verified client certificate; its identity is the client.
//!   A key is then optional; one that is sent must be valid and of the same client.
//!
//! Open whatever is configured: gRPC health (`grpc.health.v1`), the Open Inference
//! Protocol's liveness and readiness (gRPC and HTTP), `GET /health`, `GET /metrics` (probes and
//! scrapers send no credential), and CORS preflights. Reflection (and the OpenAPI document,
//! which describes the HTTP port as reflection describes the gRPC one) follows `--reflection`.
//! Everything else, scoring and model metadata alike, needs a credential.
//!
//! A refusal is gRPC `UNAUTHENTICATED` or HTTP 401 with `WWW-Authenticate: Bearer`, counted in
//! `cra_auth_refusals_total{transport, reason}` and logged with the peer's address and the
//! reason, never the key.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use axum::http::{self, header, HeaderMap, HeaderValue};

use super::{
    caller::{Caller, Credential},
    keys::{self, KeySet, Lookup},
    listener::ConnInfo,
    rate::{Bucket, RateLimits},
};

/// `--reflection`: who may use gRPC server reflection (and read `GET /openapi.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReflectionAccess {
    /// Not served.
    Off,
    /// Served to callers with a credential, as scoring is.
    Authenticated,
    /// Served to anyone.
    #[default]
    Open,
}

/// Which port a call came in on (the `transport` label of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// Whether a route needs a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Protected,
    /// Not served at all (reflection with `--reflection off`).
    Hidden,
}

/// Why a call was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `authorization` header.
    MissingKey,
    /// An `authorization` header that is not `Bearer KEY`.
    Malformed,
    /// A key that is in no entry of the keys file.
    UnknownKey,
    RevokedKey,
    /// `--tls-client-ca` is set and the client sent no certificate.
    NoCertificate,
    /// A certificate without a usable identity.
    BadIdentity,
    /// A key of another client than the certificate's.
    ClientMismatch,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::Malformed => "malformed",
            Reason::UnknownKey => "unknown_key",
            Reason::RevokedKey => "revoked_key",
            Reason::NoCertificate => "no_certificate",
            Reason::BadIdentity => "bad_identity",
            Reason::ClientMismatch => "client_mismatch",
        }
    }

    /// What the client is told (nothing about which keys exist).
    pub fn message(self) -> &'static str {
        match self {
            Reason::MissingKey => {
                "this call needs an API key: send the header `authorization: Bearer KEY`"
            }
            Reason::Malformed => "the authorization header must be `Bearer KEY`",
            Reason::UnknownKey | Reason::RevokedKey => "the API key is not valid",
            Reason::NoCertificate => {
                "this call needs a client certificate (mutual TLS) signed by the server's client CA"
            }
            Reason::BadIdentity => {
                "the client certificate has no usable identity (a subject CN or a DNS name)"
            }
            Reason::ClientMismatch => {
                "the API key belongs to another client than the client certificate"
            }
        }
    }

    /// Whether the client sent a key that was refused (RFC 6750's `invalid_token`).
    fn bad_token(self) -> bool {
        matches!(
            self,
            Reason::Malformed | Reason::UnknownKey | Reason::RevokedKey | Reason::ClientMismatch
        )
    }
}

/// The API keys of `--api-keys`, replaced whole on reload.
#[derive(Debug)]
pub struct KeyStore {
    path: std::path::PathBuf,
    set: ArcSwap<KeySet>,
}

impl KeyStore {
    /// Loads the keys file at `path`; the error says what to fix.
    pub fn load(path: &std::path::Path, limits: &RateLimits) -> Result<KeyStore, String> {
        let file = keys::load(path)?;
        Ok(KeyStore {
            path: path.to_owned(),
            set: ArcSwap::from_pointee(KeySet::compile(&file, limits)),
        })
    }

    /// Reads the file again; on an error the previous keys stay in force.
    pub fn reload(&self, limits: &RateLimits) -> Result<(usize, usize), String> {
        let file = keys::load(&self.path)?;
        let set = KeySet::compile(&file, limits);
        let counts = (set.clients(), set.active_keys());
        self.set.store(Arc::new(set));
        Ok(counts)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.set.load_full()
    }
}

/// The authentication of both ports.
#[derive(Debug)]
pub struct Authenticator {
    keys: Option<KeyStore>,
    require_certificate: bool,
    limits: Arc<RateLimits>,
    reflection: ReflectionAccess,
    log_throttle: governor::DefaultDirectRateLimiter,
    unlogged: AtomicU64,
}

/// Refusals logged per second at most; the others are counted, and the next line says how many.
const REFUSAL_LOG_LINES_PER_SECOND: u32 = 10;

impl Authenticator {
    pub fn new(
        keys: Option<KeyStore>,
        require_certificate: bool,
        limits: Arc<RateLimits>,
        reflection: ReflectionAccess,
    ) -> Authenticator {
        let per_second = std::num::NonZeroU32::new(REFUSAL_LOG_LINES_PER_SECOND)
            .unwrap_or(std::num::NonZeroU32::MIN);
        Authenticator {
            keys,
            require_certificate,
            limits,
            reflection,
            log_throttle: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
            unlogged: AtomicU64::new(0),
        }
    }

    /// No credential configured: every call is anonymous.
    pub fn open() -> Authenticator {
        Authenticator::new(
            None,
            false,
            Arc::new(RateLimits::new(None)),
            ReflectionAccess::Open,
        )
    }

    pub fn keys(&self) -> Option<&KeyStore> {
        self.keys.as_ref()
    }

    pub fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    pub fn reflection(&self) -> ReflectionAccess {
        self.reflection
    }

    /// Whether calls must prove who they are.
    pub fn requires_credentials(&self) -> bool {
        self.keys.is_some() || self.require_certificate
    }

    fn reflection_access(&self) -> Access {
        match self.reflection {
            ReflectionAccess::Off => Access::Hidden,
            ReflectionAccess::Authenticated => Access::Protected,
            ReflectionAccess::Open => Access::Open,
        }
    }

    /// The access of a gRPC method (`/package.Service/Method`).
    pub fn grpc_access(&self, path: &str) -> Access {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        match service {
            "grpc.health.v1.Health" => Access::Open,
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
                self.reflection_access()
            }
            "inference.GRPCInferenceService"
                if matches!(method, "ServerLive" | "ServerReady" | "ModelReady") =>
            {
                Access::Open
            }
            _ => Access::Protected,
        }
    }

    /// The access of an HTTP route.
    pub fn http_access(&self, method: &http::Method, path: &str) -> Access {
        if method == http::Method::OPTIONS {
            return Access::Open; // CORS preflights carry no credential
        }
        match path {
            "/health" | "/metrics" | "/v2/health/live" | "/v2/health/ready" => Access::Open,
            "/openapi.json" => self.reflection_access(),
            p if p.starts_with("/v2/models/") && p.ends_with("/ready") => Access::Open,
            _ => Access::Protected,
        }
    }

    /// Who a call on `conn` with `headers` comes from, or why it is refused. Called only for
    /// protected routes; open ones are anonymous.
    pub fn authenticate(&self, headers: &HeaderMap, conn: &ConnInfo) -> Result<Caller, Reason> {
        let key = bearer(headers);
        if self.require_certificate {
            let id = match &conn.identity {
                None => return Err(Reason::NoCertificate),
                Some(Err(_)) => return Err(Reason::BadIdentity),
                Some(Ok(id)) => id.clone(),
            };
            let set = self.keys.as_ref().map(KeyStore::current);
            if let (Some(set), Some(key)) = (&set, key) {
                match set.lookup(key?) {
                    Lookup::Valid(c) if c.id == id => {}
                    Lookup::Valid(_) => return Err(Reason::ClientMismatch),
                    Lookup::Revoked(_) => return Err(Reason::RevokedKey),
                    Lookup::Unknown => return Err(Reason::UnknownKey),
                }
            }
            let own = set
                .as_ref()
                .and_then(|s| s.client(&id).and_then(|c| c.limiter.clone()));
            let bucket = match own {
                Some(l) => Some(Bucket::Own(l)),
                None => self.limits.for_client(&id),
            };
            return Ok(Caller::new(Some(id), Credential::Certificate, bucket));
        }
        if let Some(store) = &self.keys {
            let key = key.ok_or(Reason::MissingKey)??;
            return match store.current().lookup(key) {
                Lookup::Valid(c) => {
                    let bucket = match &c.limiter {
                        Some(l) => Some(Bucket::Own(l.clone())),
                        None => self.limits.for_client(&c.id),
                    };
                    Ok(Caller::new(Some(c.id.clone()), Credential::ApiKey, bucket))
                }
                Lookup::Revoked(_) => Err(Reason::RevokedKey),
                Lookup::Unknown => Err(Reason::UnknownKey),
            };
        }
        Ok(Caller::new(
            None,
            Credential::None,
            self.limits.for_ip(conn.remote.ip()),
        ))
    }

    /// Counts and logs a refusal (the log at most a few lines a second; the rest are counted
    /// and reported with the next line).
    pub fn refused(&self, transport: Transport, route: &str, peer: SocketAddr, reason: Reason) {
        crate::monitoring::auth_refusal(transport.as_str(), reason.as_str());
        if self.log_throttle.check().is_ok() {
            let suppressed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                transport = transport.as_str(),
                %peer,
                reason = reason.as_str(),
                route = crate::http::body::truncate(route, 128),
                suppressed,
                "refused a call without a valid credential"
            );
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The key of an `authorization: Bearer KEY` header: `None` without the header, an error when
/// it is not of that form.
pub fn bearer(headers: &HeaderMap) -> Option<Result<&str, Reason>> {
    let v = headers.get(header::AUTHORIZATION)?;
    let parsed = v.to_str().ok().and_then(|s| {
        let (scheme, key) = s.trim().split_once(' ')?;
        let key = key.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
    });
    Some(parsed.ok_or(Reason::Malformed))
}

/// The `ConnInfo` of a request, and the peer address in the forms the handlers read
/// (tonic's `remote_addr()`, axum's `ConnectInfo<PeerAddr>`).
fn conn_of<B>(req: &mut http::Request<B>) -> Option<ConnInfo> {
    let conn = req.extensions().get::<ConnInfo>().cloned().or_else(|| {
        req.extensions()
            .get::<axum::extract::ConnectInfo<ConnInfo>>()
            .map(|c| c.0.clone())
    })?;
    req.extensions_mut()
        .insert(tonic::transport::server::TcpConnectInfo {
            local_addr: conn.local,
            remote_addr: Some(conn.remote),
        });
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(crate::http::PeerAddr(
            conn.remote,
        )));
    Some(conn)
}

/// The tower layer of the gRPC port.
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer {
    auth: Arc<Authenticator>,
}

impl GrpcAuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        GrpcAuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// [`GrpcAuthLayer`]'s service: refuses with `UNAUTHENTICATED` (or `UNIMPLEMENTED` for
/// reflection that is off), else hands the call on with its [`Caller`] in the extensions.
#[derive(Debug, Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<http::Response<RB>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use futures::future::{ready, Either};
        let conn = conn_of(&mut req);
        let path = req.uri().path();
        let refuse = |status: tonic::Status| Either::Right(ready(Ok(status.into_http())));
        let caller = match (self.auth.grpc_access(path), conn) {
            (Access::Hidden, _) => {
                return refuse(tonic::Status::unimplemented(
                    "server reflection is off on this server (--reflection off)",
                ))
            }
            (Access::Open, _) => Caller::ANONYMOUS,
            (Access::Protected, None) => {
                tracing::error!("a gRPC call without connection information; refused");
                return refuse(tonic::Status::unauthenticated(Reason::MissingKey.message()));
            }
            (Access::Protected, Some(conn)) => match self.auth.authenticate(req.headers(), &conn) {
                Ok(caller) => caller,
                Err(reason) => {
                    self.auth
                        .refused(Transport::Grpc, path, conn.remote, reason);
                    return refuse(tonic::Status::unauthenticated(reason.message()));
                }
            },
        };
        req.extensions_mut().insert(caller);
        Either::Left(self.inner.call(req))
    }
}

/// The axum middleware of the HTTP port: 401 with `WWW-Authenticate` (404 for the OpenAPI
/// document when reflection is off), else the request goes on with its [`Caller`].
pub async fn http_middleware(
    axum::extract::State(auth): axum::extract::State<Arc<Authenticator>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let conn = conn_of(&mut req);
    let path = req.uri().path().to_owned();
    let caller = match (auth.http_access(req.method(), &path), conn) {
        (Access::Hidden, _) => return http::StatusCode::NOT_FOUND.into_response(),
        (Access::Open, _) => Caller::ANONYMOUS,
        (Access::Protected, None) => {
            tracing::error!("an HTTP request without connection information; refused");
            return unauthorized(Reason::MissingKey);
        }
        (Access::Protected, Some(conn)) => match auth.authenticate(req.headers(), &conn) {
            Ok(caller) => caller,
            Err(reason) => {
                auth.refused(Transport::Http, &path, conn.remote, reason);
                return unauthorized(reason);
            }
        },
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// HTTP 401: a JSON body the REST and Open Inference Protocol clients both read (`status`,
/// `error`), and `WWW-Authenticate: Bearer` (RFC 6750).
fn unauthorized(reason: Reason) -> axum::response::Response {
    use axum::response::IntoResponse;
    let challenge = if reason.bad_token() {
        "Bearer realm=\"cra\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"cra\""
    };
    let body = serde_json::json!({"status": "error", "error": reason.message()});
    let mut resp = (http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        assert!(bearer(&headers(None)).is_none());
        assert_eq!(
            bearer(&headers(Some("Bearer cra_abc"))),
            Some(Ok("cra_abc"))
        );
        assert_eq!(
            bearer(&headers(Some("bearer  cra_abc "))),
            Some(Ok("cra_abc"))
        );
        for bad in ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "cra_abc"] {
            assert_eq!(
                bearer(&headers(Some(bad))),
                Some(Err(Reason::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn health_metrics_and_readiness_are_open_and_the_rest_protected() {
        let a = Authenticator::new(
            None,
            true,
            Arc::new(RateLimits::new(None)),
            ReflectionAccess::Authenticated,
        );
        for p in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/inference.GRPCInferenceService/ServerLive",
            "/inference.GRPCInferenceService/ModelReady",
        ] {
            assert_eq!(a.grpc_access(p), Access::Open, "{p}");
        }
        for p in [
            "/creditrisk.v1.CreditRiskService/Score",
            "/creditrisk.v1.CreditRiskService/ScoreBatch",
            "/creditrisk.v1.CreditRiskService/GetModelInfo",
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelMetadata",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/nothing/here",
        ] {
            assert_eq!(a.grpc_access(p), Access::Protected, "{p}");
        }
        let get = http::Method::GET;
        for p in [
            "/health",
            "/metrics",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/m/ready",
        ] {
            assert_eq!(a.http_access(&get, p), Access::Open, "{p}");
        }
        let post = http::Method::POST;
        for p in [
            "/predict",
            "/predict/batch",
            "/v2/models/m/infer",
            "/v2",
            "/openapi.json",
        ] {
            assert_eq!(a.http_access(&post, p), Access::Protected, "{p}");
        }
        assert_eq!(
            a.http_access(&http::Method::OPTIONS, "/predict"),
            Access::Open
        );
        let off = Authenticator::new(
            None,
            false,
            Arc::new(RateLimits::new(None)),
            ReflectionAccess::Off,
        );
        assert_eq!(
            off.grpc_access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Hidden
        );
        assert_eq!(off.http_access(&get, "/openapi.json"), Access::Hidden);
    }
}
