//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` in the URL say (rustls through
//! tokio-postgres-rustls):
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default, as libpq's) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, checked as `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by `sslrootcert`'s CA |
//! | `verify-full` | always | signed by that CA and naming the host of the URL |
//!
//! `sslrootcert` is a PEM file of CA certificates; `verify-ca` and `verify-full` without it use
//! `~/.postgresql/root.crt` as libpq does. Both parameters are taken out of the URL before
//! tokio-postgres reads it (it knows neither `verify-*` nor `sslrootcert`). Only the URL form
//! (`postgres://…?sslmode=…`) carries them; a `key=value` string is passed on as it is.
use std::{path::PathBuf, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode as PgSslMode;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is required.
    pub fn for_tokio_postgres(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// The TLS settings of a database URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL: the URL tokio-postgres is
/// given, and the TLS settings. Other connection strings are returned as they are.
pub fn split_url(url: &str) -> Result<(String, PgTls), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok((url.to_owned(), PgTls::default()));
    }
    let Ok(mut u) = url::Url::parse(url) else {
        // tokio-postgres parses it and reports the error (redacted by the caller).
        return Ok((url.to_owned(), PgTls::default()));
    };
    let mut tls = PgTls::default();
    let mut kept = Vec::new();
    for (k, v) in u.query_pairs() {
        match &*k {
            "sslmode" => tls.mode = SslMode::parse(&v)?,
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(&*v)),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    if tls.mode == SslMode::Require && tls.root_cert.is_some() {
        tls.mode = SslMode::VerifyCa; // as libpq: a root certificate given is checked
    }
    Ok((u.to_string(), tls))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates for `verify-ca` and `verify-full`.
fn roots(tls: &PgTls) -> Result<RootCertStore, String> {
    let path = match &tls.root_cert {
        Some(p) if p.as_os_str() == "system" => {
            return Err(
                "sslrootcert=system is not supported: give the file of the server's CA".into(),
            )
        }
        Some(p) => p.clone(),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
            .filter(|p| p.exists())
            .ok_or(
                "sslmode=verify-ca and verify-full need the server's CA: add sslrootcert=FILE (a PEM file) to the URL",
            )?,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        ));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The rustls connector for `tls`.
pub fn connector(tls: &PgTls) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match tls.mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider())))
            .with_no_client_auth(),
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(tls)?)
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(tls)?),
                provider(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                .with_no_client_auth()
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `prefer` and `require` without a CA: the connection is encrypted, the server's certificate
/// is not checked (libpq's behaviour), though the handshake's signatures are.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name in the certificate is not checked.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (u, tls) = split_url(
            "postgres://u:p@db:5432/cra?sslmode=verify-full&application_name=x&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(u, "postgres://u:p@db:5432/cra?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(
            tls.root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let (u, tls) = split_url("postgres://db/cra?sslmode=disable").unwrap();
        assert_eq!(
            (u.as_str(), tls.mode),
            ("postgres://db/cra", SslMode::Disable)
        );
        let (_, tls) = split_url("postgres://db/cra").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer, "libpq's default");
        let (_, tls) = split_url("postgres://db/cra?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            tls.mode,
            SslMode::VerifyCa,
            "require with a CA checks it, as libpq"
        );
        let e = split_url("postgres://db/cra?sslmode=verify").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let kv = "host=db sslmode=require";
        assert_eq!(split_url(kv).unwrap().0, kv);
    }

    #[test]
    fn verify_modes_need_a_readable_ca() {
        let tls = PgTls {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let e = connector(&tls).err().unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(connector(&PgTls::default()).is_ok());
    }
}
