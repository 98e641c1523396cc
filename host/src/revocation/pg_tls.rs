//! TLS to Postgres: libpq's `sslmode` and `sslrootcert`, through rustls.
//!
//! tokio-postgres parses neither `verify-ca`/`verify-full` nor `sslrootcert`, so they are taken
//! out of the connection string here (URL query or `key=value` form) before it is parsed.
//! Unlike libpq, no mode connects to a server whose certificate chain is not verified: the
//! revocation store decides what is denied, and an impostor could un-revoke anything.
//!
//! | `sslmode` | TLS | chain verified | host name checked |
//! |---|---|---|---|
//! | absent, `disable` | no | | |
//! | `allow`, `prefer` | if the server offers it | yes | no |
//! | `require`, `verify-ca` | required | yes | no |
//! | `verify-full` | required | yes | yes |
//!
//! The chain is verified against `sslrootcert` (a PEM file) alone when given, against the
//! system's roots otherwise (or with `sslrootcert=system`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;

use super::StoreError;

/// The TLS settings taken out of a connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TlsParams {
    /// `sslmode`, when given.
    pub mode: Option<String>,
    /// `sslrootcert`, when given.
    pub root_cert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a connection string; the rest is for tokio-postgres.
pub(super) fn take_params(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let mut keep = |key: &str, value: &str| match key {
        "sslmode" => {
            params.mode = Some(value.to_owned());
            false
        }
        "sslrootcert" => {
            params.root_cert = Some(value.to_owned());
            false
        }
        _ => true,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), params) };
        let rest: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                keep(k, &percent_encoding::percent_decode_str(v).decode_utf8_lossy())
            })
            .collect();
        let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
        (url, params)
    } else {
        let rest: Vec<&str> = url
            .split_ascii_whitespace()
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                keep(k.trim(), v.trim_matches('\''))
            })
            .collect();
        (rest.join(" "), params)
    }
}

/// The mode tokio-postgres is given and the TLS connector it uses.
pub(super) fn connector(params: &TlsParams) -> Result<(SslMode, tokio_postgres_rustls::MakeRustlsConnect), StoreError> {
    let (mode, check_name) = match params.mode.as_deref() {
        None | Some("disable") => {
            if params.root_cert.is_some() {
                return Err(invalid("`sslrootcert` is set but `sslmode` does not ask for TLS"));
            }
            let unused = crate::tls::client_config(rustls::RootCertStore::empty()).map_err(invalid)?;
            return Ok((SslMode::Disable, tokio_postgres_rustls::MakeRustlsConnect::new(unused)));
        }
        Some("allow" | "prefer") => (SslMode::Prefer, false),
        Some("require" | "verify-ca") => (SslMode::Require, false),
        Some("verify-full") => (SslMode::Require, true),
        Some(_) => {
            return Err(invalid("`sslmode` must be disable, allow, prefer, require, verify-ca or verify-full"));
        }
    };
    let roots = match params.root_cert.as_deref() {
        None | Some("system") => crate::tls::roots(None, true),
        Some(file) => crate::tls::roots(Some(&PathBuf::from(file)), false),
    }
    .map_err(|e| StoreError::Unavailable(format!("TLS to Postgres: {e:#}")))?;
    if roots.is_empty() {
        return Err(invalid("no trust root: the system has none; name a CA file with `sslrootcert`"));
    }
    let mut config = crate::tls::client_config(roots.clone()).map_err(invalid)?;
    if !check_name {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(invalid)?;
        config.dangerous().set_certificate_verifier(Arc::new(ChainOnly(inner)));
    }
    Ok((mode, tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

fn invalid(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("TLS to Postgres: {e}"))
}

/// libpq's `verify-ca`: the chain must verify to a trusted root; the name in the certificate
/// is not compared with the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let (url, p) = take_params(
            "postgres://u:pw@db:5432/auth?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(url, "postgres://u:pw@db:5432/auth?application_name=x");
        assert_eq!(p, TlsParams { mode: Some("verify-full".into()), root_cert: Some("/etc/ca.pem".into()) });
        let (url, p) = take_params("postgres://db/auth?sslmode=require");
        assert_eq!((url.as_str(), p.mode.as_deref()), ("postgres://db/auth", Some("require")));
        let (url, p) = take_params("host=db user=u sslmode=verify-ca sslrootcert='/ca.pem' dbname=auth");
        assert_eq!(url, "host=db user=u dbname=auth");
        assert_eq!(p, TlsParams { mode: Some("verify-ca".into()), root_cert: Some("/ca.pem".into()) });
        let (url, p) = take_params("postgres://db/auth");
        assert_eq!((url.as_str(), p), ("postgres://db/auth", TlsParams::default()));
    }

    #[test]
    fn modes_map_to_tls_that_always_verifies() {
        let mode = |m: &str| connector(&TlsParams { mode: Some(m.into()), root_cert: None }).map(|(m, _)| m);
        assert!(matches!(mode("disable"), Ok(SslMode::Disable)));
        assert!(matches!(mode("prefer"), Ok(SslMode::Prefer)));
        assert!(matches!(mode("require"), Ok(SslMode::Require)));
        assert!(matches!(mode("verify-full"), Ok(SslMode::Require)));
        assert!(mode("verify-everything").is_err());
        let orphan = TlsParams { mode: None, root_cert: Some("/ca.pem".into()) };
        assert!(connector(&orphan).is_err(), "a CA file without TLS is a mistake, not ignored");
        let missing = TlsParams { mode: Some("verify-full".into()), root_cert: Some("/nonexistent/ca.pem".into()) };
        let e = connector(&missing).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
