//! Kafka, through librdkafka (`rdkafka`).
//!
//! # Layout
//! - this module: connection settings resolved from the manifest (the
//!   password included) and the librdkafka client configuration.
//! - [`source`]: partitions as replayable splits, offsets in checkpoints.
//! - [`sink`]: a transaction per subtask and checkpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use super::secret::read_password;
use crate::manifest::{KafkaSinkSpec, KafkaSourceSpec, StartingOffsets, StoppingOffsets};
use crate::task::TaskError;

pub mod sink;
pub mod source;

pub use sink::{KafkaSink, KafkaSinkConfig};
pub use source::{KafkaDecoder, KafkaRecord, KafkaSource};

/// How to reach the brokers: what every client of a connector shares.
#[derive(Clone)]
pub struct KafkaClient {
    /// Where in the manifest these came from, for error messages.
    pub at: String,
    pub bootstrap_servers: String,
    properties: BTreeMap<String, String>,
    password: Option<String>,
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
        password_env: Option<&str>,
        password_file: Option<&str>,
    ) -> Result<KafkaClient, String> {
        Ok(KafkaClient {
            at: at.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            properties: properties.clone(),
            password: read_password(at, password_env, password_file, None)?,
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
