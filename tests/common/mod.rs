//! Helpers the process-level suites share: ports, a tiny HTTP client for the
//! coordinator's API, and process states read from `/proc`.

#![allow(dead_code)]

pub mod cluster;
pub mod run;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A port free now, below the kernel's ephemeral range: a process started
/// later (or started again after a kill) listens on it, and an ephemeral
/// port could meanwhile become some other process's outgoing connection
/// (seen in CI: "Address already in use" on a coordinator's restart).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_001));
    for attempt in 0u64..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request to `127.0.0.1:port`; the status code and body, or `None`
/// when nothing answers.
pub fn http(port: u16, method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{headers}Connection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// One request over TLS to `127.0.0.1:port`, trusting only the CA in
/// `ca_pem` and asking for the name every job certificate holds; `None`
/// when nothing answers or the handshake fails.
pub fn https(port: u16, ca_pem: &[u8], method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.ok()?).ok()?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from(weir_runtime::distributed::tls::JOB_NAME).ok()?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{headers}Connection: close\r\n\r\n")
        .ok()?;
    let mut bytes = Vec::new();
    // The server may close without a TLS close_notify; what came is enough.
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8(bytes).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// The state letter of a live process (`R`, `S`, `T` for stopped, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; the state follows it.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Sends a signal by name (`STOP`, `CONT`, `KILL`) to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args(["-s", sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -s {sig} {pid} failed");
}
