//! TLS of the two listeners (rustls, ring provider): `--tls-cert` and `--tls-key` turn it on;
//! `--tls-client-ca` asks every client for a certificate and verifies any it gets against that
//! CA. The handshake lets a client without a certificate through, so that probes and scrapers
//! reach health, readiness and metrics; the authentication layer then refuses such a client
//! every other call ([`super::auth`]). A certificate that does not verify fails the handshake.
//!
//! The files are read again on change and on SIGHUP ([`ServerTls::reload`]): new connections
//! use the new certificate, open ones keep theirs. A set of files that does not load leaves the
//! previous one serving.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::caller::ClientId;

/// Longest client-certificate identity taken as a client id.
pub const MAX_IDENTITY_LEN: usize = 256;

/// The certificate files of `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

/// Why the TLS files could not be used, saying which file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks is expected)")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the client CA file {path} is not usable: {why}")]
    ClientCa { path: PathBuf, why: String },
    #[error("the certificate {cert} and key {key} are not usable together: {why}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A rustls server configuration of `files`, offering `alpn`.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let chain = certs("the certificate file (--tls-cert)", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        what: "the private key file (--tls-key)",
        path: files.key.clone(),
        source,
    })?;
    let config_error = |why: String| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        why,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_error = |why: String| TlsError::ClientCa {
                path: ca.clone(),
                why,
            };
            let mut roots = RootCertStore::empty();
            for c in certs("the client CA file (--tls-client-ca)", ca)? {
                roots.add(c).map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| config_error(e.to_string()))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Which listener a configuration is for: gRPC speaks HTTP/2 only, the HTTP port both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Http,
}

impl Port {
    fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Port::Grpc => &[b"h2"],
            Port::Http => &[b"h2", b"http/1.1"],
        }
    }
}

/// The servers' TLS configurations, replaced whole on reload.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    grpc: ArcSwap<ServerConfig>,
    http: ArcSwap<ServerConfig>,
}

impl ServerTls {
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let grpc = server_config(&files, Port::Grpc.alpn())?;
        let http = server_config(&files, Port::Http.alpn())?;
        Ok(ServerTls {
            files,
            grpc: ArcSwap::from_pointee(grpc),
            http: ArcSwap::from_pointee(http),
        })
    }

    /// Reads the files again; on an error the previous configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let grpc = server_config(&self.files, Port::Grpc.alpn())?;
        let http = server_config(&self.files, Port::Http.alpn())?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients are asked for certificates (`--tls-client-ca`).
    pub fn asks_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the configuration of `port` as it is now.
    pub fn acceptor(&self, port: Port) -> tokio_rustls::TlsAcceptor {
        let cfg = match port {
            Port::Grpc => self.grpc.load_full(),
            Port::Http => self.http.load_full(),
        };
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

/// The identity of a verified client certificate: its subject CN, else its first DNS name
/// (subject alternative name). Printable ASCII of at most 256 bytes; anything else is refused.
pub fn identity(cert: &CertificateDer<'_>) -> Result<ClientId, String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.is_empty());
    let dns = || {
        x.subject_alternative_name().ok().flatten().and_then(|ext| {
            ext.value.general_names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) if !d.is_empty() => Some(*d),
                _ => None,
            })
        })
    };
    let id = cn
        .or_else(dns)
        .ok_or("the client certificate has neither a subject CN nor a DNS name to identify it")?;
    if id.len() > MAX_IDENTITY_LEN || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "the client certificate's identity must be printable ASCII of at most {MAX_IDENTITY_LEN} bytes"
        ));
    }
    Ok(ClientId::new(id))
}
