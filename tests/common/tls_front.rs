//! A TLS front for a plaintext test broker, with the certificates
//! `scripts/test-certs` made: it ends TLS as the server certificate,
//! requires a client certificate of the test CA, and pipes the bytes on.
//! The broker behind it advertises the front's address, so every client
//! connection goes through TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The test certificates in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn read(dir: &Path) -> Pki {
        let certs = |name: &str| CertificateDer::pem_file_iter(dir.join(name)).unwrap().map(Result::unwrap);
        let mut client_roots = RootCertStore::empty();
        for ca in certs("ca.crt") {
            client_roots.add(ca).unwrap();
        }
        let provider = Arc::new(aws_lc_rs::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone()).build().unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs("server.crt").collect(),
                PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap(),
            )
            .unwrap();
        Pki {
            ca: dir.join("ca.crt"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.crt"),
            server: Arc::new(server),
        }
    }

    /// Serves TLS on `listen`, piping each connection to `backend`, until
    /// the test process ends.
    pub fn serve(&self, listen: String, backend: String) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
                ready.send(()).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let (acceptor, backend) = (acceptor.clone(), backend.clone());
                    tokio::spawn(async move {
                        // A client without a good certificate is turned away here.
                        let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                        let Ok(mut broker) = tokio::net::TcpStream::connect(&backend).await else { return };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    });
                }
            });
        });
        bound.recv().unwrap();
    }
}
