//! Who may call, how fast, and over what (docs/SECURITY.md):
//!
//! - [`keys`]: the API keys file (only SHA-256 hashes of the keys), its pure parser
//!   ([`keys::parse`]), `cra keys add|list|revoke`, and the constant-time lookup;
//! - [`caller`]: [`Caller`], who a call comes from, as the scoring path receives it;
//! - [`rate`]: per-client rate limits (a GCRA that reserves turns), counted in applications;
//! - [`tls`]: the servers' TLS (rustls) and a client certificate's identity;
//! - [`auth`]: the one authentication decision of both ports, its gRPC tower layer and its
//!   axum middleware: health, readiness and metrics stay open, everything else needs a
//!   credential when one is configured;
//! - [`listener`]: the accepting side of both ports: the connection limit, the TLS handshake
//!   off the accept loop, the peer's address and identity.
pub mod auth;
pub mod caller;
pub mod keys;
pub mod listener;
pub mod rate;
pub mod tls;

pub use auth::{Authenticator, ReflectionAccess};
pub use caller::{Caller, ClientId, Credential};
pub use rate::RateLimited;

use std::{path::PathBuf, sync::Arc};

use crate::config::SecurityArgs;

/// Why the security settings cannot be used, saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{0}")]
    Keys(String),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("--rate-limit/--burst: {0}")]
    Limit(String),
}

/// The security of a server: its authentication (keys, client certificates, rate limits) and
/// the TLS of its ports.
#[derive(Debug, Clone)]
pub struct Security {
    pub auth: Arc<Authenticator>,
    pub tls: Option<Arc<tls::ServerTls>>,
}

impl Security {
    /// Loads the keys file and the certificates of `args`.
    pub fn from_args(args: &SecurityArgs) -> Result<Security, SecurityError> {
        let default = args
            .rate_limit
            .map(|r| rate::Limit::new(r, args.burst))
            .transpose()
            .map_err(SecurityError::Limit)?;
        let limits = Arc::new(rate::RateLimits::new(default));
        let keys = args
            .api_keys
            .as_deref()
            .map(|p| auth::KeyStore::load(p, &limits))
            .transpose()
            .map_err(SecurityError::Keys)?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(tls::ServerTls::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })?)),
            _ => None,
        };
        let auth = Authenticator::new(
            keys,
            tls.as_ref().is_some_and(|t| t.asks_client_certificates()),
            limits,
            args.reflection,
        );
        if let Some(k) = auth.keys() {
            let set = k.current();
            tracing::info!(
                clients = set.clients(),
                active_keys = set.active_keys(),
                "API keys from {}",
                k.path().display()
            );
        }
        Ok(Security {
            auth: Arc::new(auth),
            tls,
        })
    }

    /// No credential, no TLS.
    pub fn open() -> Security {
        Security {
            auth: Arc::new(Authenticator::open()),
            tls: None,
        }
    }

    /// The files to watch: the keys file and the certificates.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .auth
            .keys()
            .map(|k| k.path().to_owned())
            .into_iter()
            .collect();
        if let Some(t) = &self.tls {
            files.extend(t.files().paths());
        }
        files
    }

    /// Reads the keys file and the certificates again; what fails to load is logged and
    /// keeps its previous version in force.
    pub fn reload(&self) {
        if let Some(k) = self.auth.keys() {
            match k.reload(self.auth.limits()) {
                Ok((clients, active_keys)) => tracing::info!(
                    clients,
                    active_keys,
                    "API keys reloaded from {}",
                    k.path().display()
                ),
                Err(e) => {
                    tracing::error!("API keys not reloaded, the previous ones stay in force: {e}")
                }
            }
        }
        if let Some(t) = &self.tls {
            match t.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => tracing::error!(
                    "TLS certificates not reloaded, the previous ones stay in force: {e}"
                ),
            }
        }
    }
}
