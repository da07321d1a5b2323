//! TLS to external systems (Kafka, PostgreSQL, Redis): always verified,
//! against the system's CA certificates, or only against the CA file the
//! manifest names (a private CA in a mounted Secret), as libpq's
//! `sslrootcert`; with a client certificate where the manifest names one.
//! There is no unverified mode: a connection that does not check who
//! answers is not worth encrypting.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::manifest::ClientTlsSpec;

/// A file the manifest names, read whole, for the error messages of the
/// field `at`.
pub fn read_file(at: &str, file: &str) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("{at}: cannot read {file}: {e}"))
}

/// The certificates of the PEM `pem`, read from `file` for the field `at`.
pub fn parse_certificates(at: &str, file: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{at}: {file} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{at}: {file} holds no certificate"));
    }
    Ok(certs)
}

/// The CA certificates of `ca_file` (PEM), for the error messages of the
/// TLS settings at `at`.
pub fn read_ca_file(at: &str, ca_file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let field = format!("{at}.caFile");
    parse_certificates(&field, ca_file, &read_file(&field, ca_file)?)
}

/// The PEM bytes of the CA file at `at.caFile`, checked to hold
/// certificates, for clients that take a file's bytes.
pub fn read_ca_pem(at: &str, ca_file: &str) -> Result<Vec<u8>, String> {
    let field = format!("{at}.caFile");
    let pem = read_file(&field, ca_file)?;
    parse_certificates(&field, ca_file, &pem)?;
    Ok(pem)
}

/// A client certificate chain and its key, as the files held them (PEM,
/// for clients that take files' bytes) and parsed.
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The client certificate and key the settings at `at` name, each checked
/// to parse; none if they name none.
pub fn read_identity(at: &str, tls: &ClientTlsSpec) -> Result<Option<Identity>, String> {
    let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(format!("{at}.keyFile: required with certFile")),
        (None, Some(_)) => return Err(format!("{at}.certFile: required with keyFile")),
        (Some(c), Some(k)) => (c, k),
    };
    let cert_field = format!("{at}.certFile");
    let key_field = format!("{at}.keyFile");
    let cert_pem = read_file(&cert_field, cert_file)?;
    let chain = parse_certificates(&cert_field, cert_file, &cert_pem)?;
    let key_pem = read_file(&key_field, key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{key_field}: {key_file} is not an unencrypted PEM private key: {e}"))?;
    Ok(Some(Identity { cert_pem, key_pem, chain, key }))
}

/// A client configuration that trusts `tls.caFile`'s CAs, or the system's,
/// and presents `tls.certFile` if set.
pub fn client_config(at: &str, tls: &ClientTlsSpec) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match tls.ca_file.as_deref() {
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
    let builder = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{at}: {e}"))?
        .with_root_certificates(roots);
    let config = match read_identity(at, tls)? {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| format!("{at}.keyFile: does not go with {at}.certFile: {e}"))?,
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_is_named_in_the_error() {
        let tls = |ca: &str| ClientTlsSpec { ca_file: Some(ca.into()), ..ClientTlsSpec::default() };
        let err = client_config("spec.x.tls", &tls("/no/such/ca.crt")).unwrap_err();
        assert!(err.starts_with("spec.x.tls.caFile: cannot read /no/such/ca.crt"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.crt");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = client_config("spec.x.tls", &tls(junk.to_str().unwrap())).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
    }

    fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_a_key_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let ca_file = write(dir.path(), "ca.crt", &ca.cert.pem());
        let cert_file = write(dir.path(), "tls.crt", &ca.cert.pem());
        let spec = ClientTlsSpec { ca_file: Some(ca_file), cert_file: Some(cert_file), key_file: None };
        let err = client_config("spec.x.tls", &spec).unwrap_err();
        assert_eq!(err, "spec.x.tls.keyFile: required with certFile");
        let junk = write(dir.path(), "tls.key", "-----BEGIN NOTHING-----\n");
        let err =
            client_config("spec.x.tls", &ClientTlsSpec { key_file: Some(junk.clone()), ..spec.clone() }).unwrap_err();
        assert!(err.starts_with(&format!("spec.x.tls.keyFile: {junk} is not an unencrypted PEM private key")), "{err}");
    }

    #[test]
    fn a_client_certificate_with_its_key_makes_a_client_that_presents_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["client.test".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other.test".into()]).unwrap();
        let spec = ClientTlsSpec {
            ca_file: Some(write(dir.path(), "ca.crt", &ca.cert.pem())),
            cert_file: Some(write(dir.path(), "tls.crt", &client.cert.pem())),
            key_file: Some(write(dir.path(), "tls.key", &client.signing_key.serialize_pem())),
        };
        let config = client_config("spec.x.tls", &spec).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let mismatched = ClientTlsSpec {
            key_file: Some(write(dir.path(), "other.key", &other.signing_key.serialize_pem())),
            ..spec
        };
        let err = client_config("spec.x.tls", &mismatched).unwrap_err();
        assert!(err.starts_with("spec.x.tls.keyFile: does not go with spec.x.tls.certFile"), "{err}");
    }
}
