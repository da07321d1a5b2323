//! Kafka, through librdkafka (`rdkafka`).
//!
//! # Layout
//! - this module: connection settings resolved from the manifest (the
//!   password included) and the librdkafka client configuration.
//! - [`source`]: partitions as replayable splits, offsets in checkpoints.
//! - [`sink`]: a transaction per subtask and checkpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

use super::secret::read_password;
use super::tls::{read_ca_file, read_identity};
use crate::manifest::{ClientTlsSpec, KafkaSinkSpec, KafkaSourceSpec, StartingOffsets, StoppingOffsets};
use crate::task::TaskError;

pub mod sink;
pub mod source;

pub use sink::{KafkaSink, KafkaSinkConfig};
pub use source::{KafkaDecoder, KafkaRecord, KafkaSource};

/// The last error librdkafka reported from its own threads (a refused
/// authentication, a failed TLS handshake): a call that then times out
/// names it, instead of only "timed out".
#[derive(Default)]
pub struct LastError(Mutex<Option<String>>);

impl LastError {
    pub(crate) fn record(&self, error: &KafkaError, reason: &str) {
        tracing::error!("librdkafka: {error}: {reason}");
        // "All brokers are down" follows the cause and would hide it.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        if let Ok(mut last) = self.0.lock() {
            *last = Some(reason.to_string());
        }
    }

    /// librdkafka's log line, logged as its default context does; a
    /// connection's failure (`FAIL`: refused credentials, a TLS error) is
    /// kept, with librdkafka's own words for the cause.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Notice => tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
        let severe = matches!(
            level,
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error
        );
        if fac == "FAIL" && severe {
            if let Ok(mut last) = self.0.lock() {
                // The text after the thread and broker prefix.
                let reason = message.split_once("]: ").map_or(message, |(_, rest)| rest);
                *last = Some(reason.to_string());
            }
        }
    }

    /// `; the brokers' last error: …`, or nothing.
    pub(crate) fn suffix(&self) -> String {
        match self.0.lock().ok().and_then(|last| last.clone()) {
            Some(reason) => format!("; the last error from the brokers: {reason}"),
            None => String::new(),
        }
    }
}

/// A consumer's context that keeps librdkafka's last error.
#[derive(Default)]
pub struct Watched {
    pub last_error: LastError,
}

impl ClientContext for Watched {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.last_error.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
    }
}

impl ConsumerContext for Watched {}

/// How to reach the brokers: what every client of a connector shares.
#[derive(Clone)]
pub struct KafkaClient {
    /// Where in the manifest these came from, for error messages.
    pub at: String,
    pub bootstrap_servers: String,
    properties: BTreeMap<String, String>,
    password: Option<String>,
    tls: Option<ClientTlsSpec>,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaClient({} at {})", self.at, self.bootstrap_servers)
    }
}

impl KafkaClient {
    /// Reads the password where the spec says (on the worker that runs the
    /// connector); a missing variable or file is an error naming the field.
    fn new(
        at: &str,
        bootstrap_servers: &str,
        properties: &BTreeMap<String, String>,
        tls: Option<&ClientTlsSpec>,
        password_env: Option<&str>,
        password_file: Option<&str>,
    ) -> Result<KafkaClient, String> {
        // librdkafka reads the files itself, on its own threads, and says
        // only "ssl.ca.location failed"; read them here for messages that
        // name the field.
        if let Some(tls) = tls {
            let at = format!("{at}.tls");
            if let Some(file) = &tls.ca_file {
                read_ca_file(&at, file)?;
            }
            read_identity(&at, tls)?;
        }
        Ok(KafkaClient {
            at: at.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            properties: properties.clone(),
            password: read_password(at, password_env, password_file, None)?,
            tls: tls.cloned(),
        })
    }

    /// The librdkafka settings of this connection, with a client id naming the subtask.
    pub(crate) fn config(&self, subtask: u32) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.bootstrap_servers);
        client.set("client.id", format!("weir-{subtask}"));
        for (k, v) in &self.properties {
            client.set(k, v);
        }
        if let Some(password) = &self.password {
            client.set("sasl.password", password);
        }
        if let Some(tls) = &self.tls {
            let sasl = self.password.is_some() || self.properties.keys().any(|k| k.starts_with("sasl."));
            client.set("security.protocol", if sasl { "SASL_SSL" } else { "SSL" });
            // Without a CA file: the system's CAs, wherever this machine or
            // image keeps them.
            client.set("ssl.ca.location", tls.ca_file.as_deref().unwrap_or("probe"));
            client.set("ssl.endpoint.identification.algorithm", "https");
            client.set("enable.ssl.certificate.verification", "true");
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                client.set("ssl.certificate.location", cert);
                client.set("ssl.key.location", key);
            }
        }
        client
    }
}

/// A Kafka source's settings, ready for a subtask to connect with.
#[derive(Clone)]
pub struct KafkaConfig {
    pub client: KafkaClient,
    pub topics: Vec<String>,
    pub pattern: Option<regex::Regex>,
    pub group_id: Option<String>,
    pub starting: StartingOffsets,
    pub starting_timestamp_ms: i64,
    pub stopping: Option<StoppingOffsets>,
    pub discovery_interval: Duration,
}

impl KafkaConfig {
    /// Reads the password where the spec says (on the worker that runs the
    /// source); a pattern that does not compile is an error naming it.
    pub fn from_source_spec(spec: &KafkaSourceSpec, at: &str) -> Result<KafkaConfig, TaskError> {
        let pattern = match &spec.topic_pattern {
            // Whole-name match, as Kafka clients' patterns are.
            Some(p) => Some(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| TaskError::source("kafka", format!("{at}.topicPattern: {e}")))?,
            ),
            None => None,
        };
        let client = KafkaClient::new(
            at,
            &spec.bootstrap_servers,
            &spec.properties,
            spec.tls.as_ref(),
            spec.password_env.as_deref(),
            spec.password_file.as_deref(),
        )
        .map_err(|e| TaskError::source("kafka", e))?;
        Ok(KafkaConfig {
            client,
            topics: spec.topics.clone(),
            pattern,
            group_id: spec.group_id.clone(),
            starting: spec.starting_offsets,
            starting_timestamp_ms: spec.starting_timestamp_ms.unwrap_or(0),
            stopping: spec.stopping_offsets,
            discovery_interval: spec.partition_discovery_interval.get(),
        })
    }
}

impl KafkaSinkConfig {
    /// Reads the password where the spec says (on the worker that runs the sink).
    pub fn from_spec(spec: &KafkaSinkSpec, at: &str) -> Result<KafkaSinkConfig, TaskError> {
        let client = KafkaClient::new(
            at,
            &spec.bootstrap_servers,
            &spec.properties,
            spec.tls.as_ref(),
            spec.password_env.as_deref(),
            spec.password_file.as_deref(),
        )
        .map_err(|e| TaskError::sink("kafka", e))?;
        Ok(KafkaSinkConfig {
            client,
            topic: spec.topic.clone(),
            key: spec.key.clone(),
            delivery: spec.delivery,
            transactional_id_prefix: spec.transactional_id_prefix.clone(),
            transaction_timeout: spec.transaction_timeout.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(tls: Option<ClientTlsSpec>, properties: &[(&str, &str)], password_env: Option<&str>) -> ClientConfig {
        let properties = properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        KafkaClient::new("src", "b:9093", &properties, tls.as_ref(), password_env, None).unwrap().config(0)
    }

    #[test]
    fn tls_settings_become_a_verified_ssl_or_sasl_ssl_client() {
        let plain = client(None, &[], None);
        assert_eq!(plain.get("security.protocol"), None);
        let public = client(Some(ClientTlsSpec::default()), &[], None);
        assert_eq!(public.get("security.protocol"), Some("SSL"));
        assert_eq!(public.get("ssl.ca.location"), Some("probe"));
        assert_eq!(public.get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(public.get("ssl.certificate.location"), None);
        let sasl = client(Some(ClientTlsSpec::default()), &[("sasl.mechanism", "PLAIN")], None);
        assert_eq!(sasl.get("security.protocol"), Some("SASL_SSL"));
    }

    #[test]
    fn tls_files_are_read_at_start_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ClientTlsSpec {
            ca_file: Some(dir.path().join("ca.crt").display().to_string()),
            ..ClientTlsSpec::default()
        };
        let err = KafkaClient::new("spec.k", "b:9093", &BTreeMap::new(), Some(&tls), None, None).unwrap_err();
        assert!(err.starts_with("spec.k.tls.caFile: cannot read"), "{err}");
    }
}
