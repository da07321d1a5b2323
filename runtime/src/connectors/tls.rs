//! TLS to external systems (PostgreSQL, Redis): always verified, against
//! the system's CA certificates, or only against the CA file the manifest
//! names (a private CA in a mounted Secret), as libpq's `sslrootcert`.
//! There is no unverified mode: a connection that does not check who
//! answers is not worth encrypting.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The CA certificates of `ca_file` (PEM), for the error messages of the
/// field at `at`.
pub fn read_ca_file(at: &str, ca_file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("{at}.caFile: cannot read {ca_file}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{at}.caFile: {ca_file} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{at}.caFile: {ca_file} holds no certificate"));
    }
    Ok(certs)
}

/// A client configuration that trusts `ca_file`'s CAs, or the system's.
pub fn client_config(at: &str, ca_file: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in read_ca_file(at, file)? {
                roots.add(cert).map_err(|e| format!("{at}.caFile: {file}: {e}"))?;
            }
        }
        // Partly unreadable system certificates are not fatal; none at all is.
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    if roots.is_empty() {
        return Err(format!("{at}: no CA certificate to verify the server with: the system has none; set {at}.caFile"));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{at}: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_is_named_in_the_error() {
        let err = client_config("spec.x.tls", Some("/no/such/ca.crt")).unwrap_err();
        assert!(err.starts_with("spec.x.tls.caFile: cannot read /no/such/ca.crt"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.crt");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = client_config("spec.x.tls", junk.to_str()).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
