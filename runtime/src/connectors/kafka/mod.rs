//! Kafka, through librdkafka (`rdkafka`).
//!
//! # Layout
//! - this module: a source's settings resolved from the manifest (the
//!   password included) and the librdkafka client configuration.
//! - [`source`]: partitions as replayable splits, offsets in checkpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use super::secret::read_password;
use crate::manifest::{KafkaSourceSpec, StartingOffsets, StoppingOffsets};
use crate::task::TaskError;

pub mod source;

pub use source::{KafkaDecoder, KafkaRecord, KafkaSource};

/// A Kafka source's settings, ready for a subtask to connect with.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Where in the manifest these came from, for error messages.
    pub at: String,
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub pattern: Option<regex::Regex>,
    pub group_id: Option<String>,
    pub starting: StartingOffsets,
    pub starting_timestamp_ms: i64,
    pub stopping: Option<StoppingOffsets>,
    pub discovery_interval: Duration,
    properties: BTreeMap<String, String>,
    password: Option<String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaConfig({} from {})", self.at, self.bootstrap_servers)
    }
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
        let password = read_password(at, spec.password_env.as_deref(), spec.password_file.as_deref(), None)
            .map_err(|e| TaskError::source("kafka", e))?;
        Ok(KafkaConfig {
            at: at.to_string(),
            bootstrap_servers: spec.bootstrap_servers.clone(),
            topics: spec.topics.clone(),
            pattern,
            group_id: spec.group_id.clone(),
            starting: spec.starting_offsets,
            starting_timestamp_ms: spec.starting_timestamp_ms.unwrap_or(0),
            stopping: spec.stopping_offsets,
            discovery_interval: spec.partition_discovery_interval.get(),
            properties: spec.properties.clone(),
            password,
        })
    }
}

/// The settings every client of this source shares: brokers, the user's
/// properties, the password, a client id naming the subtask.
pub(crate) fn client_config(config: &KafkaConfig, subtask: u32) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    client.set("client.id", format!("weir-{subtask}"));
    // librdkafka refuses to assign partitions without a group id, though
    // an assigning consumer never joins the group: without `groupId`, a
    // name nothing is committed under.
    client.set("group.id", config.group_id.as_deref().unwrap_or("weir-no-commits"));
    for (k, v) in &config.properties {
        client.set(k, v);
    }
    if let Some(password) = &config.password {
        client.set("sasl.password", password);
    }
    client
}
