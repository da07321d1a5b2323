//! Mutual TLS between a job's processes: the coordinator's worker endpoint,
//! worker registration and the shuffle channels. Every process of a job
//! holds a certificate signed by the job's own CA and trusts only that CA,
//! so a process with another job's certificate is refused in the
//! handshake, and nothing a job sends travels in clear.
//!
//! Peers are addressed by pod IP or Service name; the identity checked is
//! membership of the job, so every certificate carries the one DNS name
//! [`JOB_NAME`] and clients ask for it whatever address they dial.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The DNS name in every job certificate, and the name clients ask for.
pub const JOB_NAME: &str = "weir-job";

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what}: no {expected} found")]
    Empty { what: &'static str, expected: &'static str },
    #[error("invalid TLS set-up: {0}")]
    Config(String),
    #[error("TLS is half configured: set {missing} as well as {present}, or neither")]
    Partial { missing: String, present: String },
}

/// Any byte stream a framed connection runs on: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A job's TLS identity: this process's certificate and key, and the job CA.
///
/// Read from files, it follows them: certificates from cert-manager are
/// renewed in place (the Secret volume changes under a running pod), and
/// a pod that kept its first certificate past its expiry could no longer
/// connect to a peer that restarted. Each handshake looks at the files
/// at most every [`RELOAD_CHECK`] and takes a changed set that parses;
/// connections made before keep the certificate they started with.
pub struct JobTls {
    configs: std::sync::RwLock<Configs>,
    files: Option<Files>,
}

#[derive(Clone)]
struct Configs {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    /// The coordinator's HTTP API: the same certificate, but no client
    /// certificate asked, since its clients (the operator, a user's curl)
    /// are no members of the job; mutating calls carry the job token.
    api_acceptor: TlsAcceptor,
}

/// The PEM files an identity was read from, what they held and when they
/// were last looked at.
struct Files {
    paths: [PathBuf; 3],
    seen: std::sync::Mutex<(Vec<Vec<u8>>, Instant)>,
}

/// How often a handshake may read the PEM files for a renewal.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

impl std::fmt::Debug for JobTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobTls")
    }
}

/// The environment variables naming the three PEM files.
pub const ENV_CERT: &str = "WEIR_TLS_CERT";
pub const ENV_KEY: &str = "WEIR_TLS_KEY";
pub const ENV_CA: &str = "WEIR_TLS_CA";

impl JobTls {
    /// From `WEIR_TLS_CERT`, `WEIR_TLS_KEY` and `WEIR_TLS_CA` (PEM file
    /// paths): all three, or none for plain TCP.
    pub fn from_env() -> Result<Option<JobTls>, TlsError> {
        let vars = [ENV_CERT, ENV_KEY, ENV_CA].map(|v| (v, std::env::var_os(v).filter(|p| !p.is_empty())));
        let (set, unset): (Vec<_>, Vec<_>) = vars.iter().partition(|(_, p)| p.is_some());
        if set.is_empty() {
            return Ok(None);
        }
        if !unset.is_empty() {
            let names = |vs: &[&(&str, _)]| vs.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(TlsError::Partial { missing: names(&unset), present: names(&set) });
        }
        let path = |i: usize| PathBuf::from(vars[i].1.clone().unwrap_or_default());
        JobTls::from_files(&path(0), &path(1), &path(2)).map(Some)
    }

    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<JobTls, TlsError> {
        let paths = [cert, key, ca].map(Path::to_path_buf);
        let pems = read_pems(&paths)?;
        let configs = Configs::from_pem(&pems[0], &pems[1], &pems[2])?;
        let files = Files { paths, seen: std::sync::Mutex::new((pems, Instant::now())) };
        Ok(JobTls { configs: std::sync::RwLock::new(configs), files: Some(files) })
    }

    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<JobTls, TlsError> {
        Ok(JobTls { configs: std::sync::RwLock::new(Configs::from_pem(cert, key, ca)?), files: None })
    }

    /// Reads the files again and takes them if they changed and parse.
    /// Returns whether the identity changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else { return Ok(false) };
        let pems = read_pems(&files.paths)?;
        let mut seen = files.seen.lock().map_err(|_| TlsError::Config("a reload panicked".into()))?;
        seen.1 = Instant::now();
        if seen.0 == pems {
            return Ok(false);
        }
        let configs = Configs::from_pem(&pems[0], &pems[1], &pems[2])?;
        if let Ok(mut current) = self.configs.write() {
            *current = configs;
        }
        seen.0 = pems;
        Ok(true)
    }

    /// The configs to handshake with, after a reload if one is due.
    fn current(&self) -> std::io::Result<Configs> {
        let due = self.files.as_ref().is_some_and(|f| f.seen.lock().is_ok_and(|s| s.1.elapsed() >= RELOAD_CHECK));
        if due {
            match self.reload() {
                Ok(true) => tracing::info!("the job's TLS files changed: new connections use the new certificate"),
                Ok(false) => {}
                // Mid-renewal files may not match yet: keep the last good set.
                Err(e) => tracing::warn!("the job's TLS files changed but cannot be used ({e}); keeping the last ones"),
            }
        }
        self.configs.read().map(|c| c.clone()).map_err(|_| std::io::Error::other("tls configs poisoned"))
    }
}

fn read_pems(paths: &[PathBuf; 3]) -> Result<Vec<Vec<u8>>, TlsError> {
    let whats = ["the certificate", "the key", "the job CA"];
    paths
        .iter()
        .zip(whats)
        .map(|(path, what)| std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.clone(), source }))
        .collect()
}

impl Configs {
    fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Configs, TlsError> {
        let chain = certs("the certificate", cert)?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem { what: "the key", reason: e.to_string() })?;
        let mut roots = RootCertStore::empty();
        for c in certs("the job CA", ca)? {
            roots.add(c).map_err(|e| TlsError::Config(format!("the job CA: {e}")))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(aws_lc_rs::default_provider());
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        let mut api = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        api.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        Ok(Configs {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            api_acceptor: TlsAcceptor::from(Arc::new(api)),
        })
    }
}

impl JobTls {
    /// The client side of a handshake on `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<Box<dyn Io>> {
        let name = ServerName::try_from(JOB_NAME).map_err(std::io::Error::other)?;
        let stream = within(self.current()?.connector.connect(name, tcp)).await?;
        Ok(Box::new(stream))
    }

    /// The server side of a handshake on `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Box<dyn Io>> {
        let stream = within(self.current()?.acceptor.accept(tcp)).await?;
        Ok(Box::new(stream))
    }

    /// The server side of an HTTP API handshake: no client certificate asked.
    pub async fn accept_api(&self, tcp: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        within(self.current()?.api_acceptor.accept(tcp)).await
    }
}

/// Trust in one job's CA, for a client that is no member of the job and
/// holds no certificate of its own: the operator calling a coordinator's API.
#[derive(Clone)]
pub struct JobTrust {
    connector: TlsConnector,
}

impl std::fmt::Debug for JobTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobTrust")
    }
}

impl JobTrust {
    pub fn from_ca_pem(ca: &[u8]) -> Result<JobTrust, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in certs("the job CA", ca)? {
            roots.add(c).map_err(|e| TlsError::Config(format!("the job CA: {e}")))?;
        }
        let mut client = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(JobTrust { connector: TlsConnector::from(Arc::new(client)) })
    }

    /// The client side of a handshake on `tcp`, checking that the server
    /// holds a certificate of this job.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(JOB_NAME).map_err(std::io::Error::other)?;
        within(self.connector.connect(name, tcp)).await
    }
}

/// Whether a failed handshake failed because the peer does not speak TLS
/// at all (it answered in plain text), as a coordinator of an image from
/// before its API took TLS does.
pub fn peer_speaks_plain(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType))
    )
}

async fn within<T>(handshake: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(HANDSHAKE_LIMIT, handshake).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no TLS handshake within {HANDSHAKE_LIMIT:?}"))
    })?
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, expected: "PEM certificate" });
    }
    Ok(certs)
}

/// Plain TCP or TLS, as the job is configured: the client side.
pub async fn client(tls: Option<&JobTls>, tcp: TcpStream) -> std::io::Result<Box<dyn Io>> {
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(t) => t.connect(tcp).await,
        None => Ok(Box::new(tcp)),
    }
}

/// Plain TCP or TLS, as the job is configured: the server side.
pub async fn server(tls: Option<&JobTls>, tcp: TcpStream) -> std::io::Result<Box<dyn Io>> {
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(t) => t.accept(tcp).await,
        None => Ok(Box::new(tcp)),
    }
}

/// A job's TLS material in PEM: the certificate and key every process of
/// the job presents, and the job CA that signed it (its key is thrown
/// away: a new job identity is a new CA).
#[derive(Clone)]
pub struct JobIdentity {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl std::fmt::Debug for JobIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobIdentity { .. }")
    }
}

impl JobIdentity {
    /// A fresh job CA and the one member certificate (for [`JOB_NAME`]) it signs.
    pub fn generate(job: &str) -> Result<JobIdentity, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Config(format!("cannot make the job's certificates: {e}"));
        let ca_key = rcgen::KeyPair::generate().map_err(gen)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("weir job CA {job}"));
        let ca = ca_params.self_signed(&ca_key).map_err(gen)?;
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(vec![JOB_NAME.to_string()]).map_err(gen)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("weir job {job}"));
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(gen)?;
        Ok(JobIdentity { cert: cert.pem(), key: key.serialize_pem(), ca: ca.pem() })
    }

    pub fn tls(&self) -> Result<JobTls, TlsError> {
        JobTls::from_pem(self.cert.as_bytes(), self.key.as_bytes(), self.ca.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn identity() -> JobTls {
        JobIdentity::generate("other").unwrap().tls().unwrap()
    }

    /// Client `a` talks to server `b`; what the server read, or the error either side saw.
    async fn exchange(a: &JobTls, b: &JobTls) -> Result<Vec<u8>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut s = b.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; 5];
            s.read_exact(&mut got).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(got)
        };
        let client = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut c = a.connect(tcp).await.map_err(|e| e.to_string())?;
            c.write_all(b"hello").await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(c)
        };
        let (got, sent) = tokio::join!(server, client);
        let _keep_open = sent?;
        got
    }

    #[tokio::test]
    async fn members_of_one_job_talk_and_a_member_of_another_job_is_refused() {
        let job = JobIdentity::generate("counts").unwrap();
        let (a, b) = (job.tls().unwrap(), job.tls().unwrap());
        assert_eq!(exchange(&a, &b).await.unwrap(), b"hello");
        let stranger = identity();
        assert!(exchange(&stranger, &b).await.is_err(), "a client with another job's certificate is refused");
        assert!(exchange(&a, &stranger).await.is_err(), "a server with another job's certificate is refused");
    }

    #[tokio::test]
    async fn renewed_files_are_taken_for_new_connections_and_a_broken_renewal_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ["tls.crt", "tls.key", "ca.crt"].map(|f| dir.path().join(f));
        let write = |id: &JobIdentity| {
            for (path, pem) in paths.iter().zip([&id.cert, &id.key, &id.ca]) {
                std::fs::write(path, pem).unwrap();
            }
        };
        let (first, renewed) = (JobIdentity::generate("counts").unwrap(), JobIdentity::generate("counts").unwrap());
        write(&first);
        let process = JobTls::from_files(&paths[0], &paths[1], &paths[2]).unwrap();
        assert_eq!(exchange(&first.tls().unwrap(), &process).await.unwrap(), b"hello");
        assert!(!process.reload().unwrap(), "unchanged files are no renewal");

        write(&renewed);
        assert!(process.reload().unwrap());
        assert_eq!(exchange(&renewed.tls().unwrap(), &process).await.unwrap(), b"hello");
        assert!(exchange(&process, &renewed.tls().unwrap()).await.is_ok(), "as a client too");
        assert!(exchange(&first.tls().unwrap(), &process).await.is_err(), "the old CA is no longer trusted");

        // A renewal caught half written: the new key with the old certificate.
        std::fs::write(&paths[1], &first.key).unwrap();
        assert!(process.reload().is_err());
        assert_eq!(exchange(&renewed.tls().unwrap(), &process).await.unwrap(), b"hello", "the last good set stays");
    }

    #[tokio::test]
    async fn a_trust_in_two_cas_reaches_a_coordinator_of_either_and_no_other() {
        let (old, issued, other) = (
            JobIdentity::generate("counts").unwrap(),
            JobIdentity::generate("counts").unwrap(),
            JobIdentity::generate("other").unwrap(),
        );
        let trust = JobTrust::from_ca_pem(format!("{}\n{}", old.ca, issued.ca).as_bytes()).unwrap();
        for (server, reached) in [(&old, true), (&issued, true), (&other, false)] {
            let server = server.tls().unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = async {
                let (tcp, _) = listener.accept().await.unwrap();
                server.accept_api(tcp).await.is_ok()
            };
            let connect = async { trust.connect(TcpStream::connect(addr).await.unwrap()).await.is_ok() };
            let (_, connected) = tokio::join!(accept, connect);
            assert_eq!(connected, reached);
        }
    }

    #[test]
    fn half_configured_tls_names_what_is_missing() {
        let e = TlsError::Partial { missing: ENV_CA.into(), present: format!("{ENV_CERT}, {ENV_KEY}") };
        assert!(e.to_string().contains("WEIR_TLS_CA"), "{e}");
        let bad = JobTls::from_pem(b"not pem", b"", b"");
        assert!(matches!(bad, Err(TlsError::Empty { what: "the certificate", .. })), "{bad:?}");
    }
}
