//! TLS for the connections the sidecar opens (identity providers' key sets, the revocation
//! store): rustls with the ring provider, the system's trust roots plus an optional CA file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Trust roots: the system's (`rustls-native-certs`: `SSL_CERT_FILE`, `SSL_CERT_DIR` or the
/// platform store), then every certificate of `ca_file` (PEM). With `system: false`, only
/// `ca_file`'s: a private CA that must be the only one trusted. May be empty (a container
/// without a CA bundle): the caller decides whether that is an error.
pub fn roots(ca_file: Option<&Path>, system: bool) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if system {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system trust root could not be read");
        }
        store.add_parsable_certificates(found.certs);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .with_context(|| format!("cannot read the CA file {}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("the CA file {} holds no certificate", path.display());
        }
        for cert in certs {
            store.add(cert).with_context(|| format!("a certificate in {} is not a usable CA", path.display()))?;
        }
    }
    Ok(store)
}

/// A client configuration trusting `roots` (TLS 1.2 and 1.3, ring).
pub fn client_config(roots: RootCertStore) -> anyhow::Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
