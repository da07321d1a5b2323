//! `spec.pipeline.source.kafka` and `spec.pipeline.sink.kafka`: records
//! from Kafka topics, replayed by offset, and records into a topic, in a
//! transaction per checkpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Each record's value is a JSON object (or an Avro record, see `format`); its offsets live in the job's
/// checkpoints (not in the consumer group), so a restore reads every record
/// after the checkpoint exactly once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port...]` of one or more brokers.
    pub bootstrap_servers: String,
    /// Topics to read. Exactly one of `topics` and `topicPattern` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// A regular expression over topic names (whole-name match); topics that
    /// appear later are found by partition discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// The consumer group that offsets are committed to when a checkpoint
    /// completes: for monitoring lag, and for `startingOffsets: GroupOffsets`.
    /// The job never reads its position back from the group once it has a
    /// checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Where a job without a checkpoint starts in each partition.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Milliseconds since the Unix epoch, for `startingOffsets: Timestamp`:
    /// each partition starts at its first record at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_timestamp_ms: Option<i64>,
    /// Makes the source bounded: it ends once it has read every partition up
    /// to the offsets these name, taken when the job first starts and kept in
    /// its checkpoints. Absent: the source reads forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_offsets: Option<StoppingOffsets>,
    /// How often new partitions (and, with `topicPattern`, new topics) are
    /// looked for; `0s` turns discovery off. Partitions found after the start
    /// are read from their beginning, so nothing written to them is missed.
    #[serde(default = "default_discovery")]
    pub partition_discovery_interval: HumanDuration,
    /// Kafka metadata added to each record as fields `kafka_<name>`
    /// (`kafka_key`, `kafka_partition`, ...), overwriting value fields of
    /// the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<KafkaMetadata>,
    /// How record values are written: JSON objects (the default) or Avro
    /// records (with `avro`).
    #[serde(default, skip_serializing_if = "KafkaValueFormat::is_json")]
    pub format: KafkaValueFormat,
    /// The Avro schema values are written with, for `format: Avro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro: Option<KafkaAvroSpec>,
    /// Further librdkafka consumer settings (`sasl.mechanism`,
    /// `sasl.username`, ...). Passwords do not go here: see `passwordEnv`
    /// and `passwordFile`; TLS is set by `tls`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Verified TLS to the brokers (`security.protocol` SSL, or SASL_SSL
    /// with a SASL password), with a client certificate if the brokers ask
    /// for one (`tls: {}` for brokers with a public certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::ClientTlsSpec>,
    /// The environment variable that holds the SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file that holds the SASL password (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

fn default_discovery() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum KafkaValueFormat {
    /// A JSON object per value.
    #[default]
    Json,
    /// An Avro record per value, in the schema `avro` gives.
    Avro,
}

impl KafkaValueFormat {
    fn is_json(&self) -> bool {
        *self == KafkaValueFormat::Json
    }
}

/// Values in Avro's binary encoding, without a registry: the writer's
/// schema is in the manifest, as with Flink's `avro` format (bare values)
/// or `avro-confluent` with a fixed schema (values framed as Confluent
/// serializers frame them).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaAvroSpec {
    /// The writer's schema as Avro JSON: a record, whose fields become
    /// the record's fields (timestamps as milliseconds since the epoch,
    /// dates as text, decimals as numbers, as for Avro files).
    pub schema: String,
    /// Set: each value is in Confluent's wire format (a zero byte, this
    /// schema id as 4 bytes big-endian, then the datum); a value with
    /// another id is a bad record, since no registry is asked for its
    /// schema. Absent: each value is the bare datum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confluent_schema_id: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The oldest record each partition still holds.
    #[default]
    Earliest,
    /// The end of each partition when the job starts: only newer records.
    Latest,
    /// The offsets last committed by `groupId`; partitions it never
    /// committed start at their earliest record.
    GroupOffsets,
    /// The first record at or after `startingTimestampMs`.
    Timestamp,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum StoppingOffsets {
    /// The end of each partition when the job first started.
    Latest,
}

/// Kafka metadata a record can carry as a field.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
pub enum KafkaMetadata {
    /// `kafka_topic`: the topic's name.
    Topic,
    /// `kafka_partition`: the partition number.
    Partition,
    /// `kafka_offset`: the record's offset in its partition.
    Offset,
    /// `kafka_timestamp`: milliseconds since the epoch, or null.
    Timestamp,
    /// `kafka_key`: the key as UTF-8 text (invalid bytes replaced), or null.
    Key,
    /// `kafka_headers`: an object of header name to UTF-8 text (or null).
    Headers,
}

impl KafkaMetadata {
    pub fn field(self) -> &'static str {
        match self {
            KafkaMetadata::Topic => "kafka_topic",
            KafkaMetadata::Partition => "kafka_partition",
            KafkaMetadata::Offset => "kafka_offset",
            KafkaMetadata::Timestamp => "kafka_timestamp",
            KafkaMetadata::Key => "kafka_key",
            KafkaMetadata::Headers => "kafka_headers",
        }
    }
}

/// Settings that carry secrets and must come from `passwordEnv` or `passwordFile`.
const SECRET_PROPERTIES: [&str; 4] = ["sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem"];

/// Settings that would let a client talk TLS to a broker it did not verify.
const UNVERIFIED_TLS_PROPERTIES: [&str; 2] =
    ["enable.ssl.certificate.verification", "ssl.endpoint.identification.algorithm"];

/// Settings `tls` makes.
const TLS_PROPERTIES: [&str; 4] =
    ["security.protocol", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location"];

/// Settings the source sets itself: its correctness rests on them.
const OWN_PROPERTIES: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "enable.partition.eof",
];

/// Each record's JSON goes to `topic`. `ExactlyOnce` writes a checkpoint
/// interval's records in one Kafka transaction when the checkpoint
/// completes; readers with `isolation.level=read_committed` see each once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// `host:port[,host:port...]` of one or more brokers.
    pub bootstrap_servers: String,
    pub topic: String,
    /// Record fields whose values, joined by `:`, make the message key (and
    /// so the partition); absent: no key, partitions chosen by the producer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    #[serde(default)]
    pub delivery: KafkaDelivery,
    /// Start of the transactional ids (`<prefix>-<incarnation>-<subtask>`).
    #[serde(default = "default_prefix")]
    pub transactional_id_prefix: String,
    /// The producer's `transaction.timeout.ms`: how long a transaction may
    /// stay open before the broker aborts it. At most the broker's
    /// `transaction.max.timeout.ms` (15 minutes by default).
    #[serde(default = "default_transaction_timeout")]
    pub transaction_timeout: HumanDuration,
    /// Further librdkafka producer settings; passwords do not go here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Verified TLS to the brokers (`security.protocol` SSL, or SASL_SSL
    /// with a SASL password), with a client certificate if the brokers ask
    /// for one (`tls: {}` for brokers with a public certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::ClientTlsSpec>,
    /// The environment variable that holds the SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file that holds the SASL password (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

fn default_prefix() -> String {
    "weir".into()
}

fn default_transaction_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// A transaction per subtask and checkpoint, committed when the
    /// checkpoint completes.
    #[default]
    ExactlyOnce,
    /// Records are sent as they arrive by an idempotent producer and
    /// flushed at each barrier: none is lost, and a replay after a failure
    /// sends some again.
    AtLeastOnce,
}

/// Settings a sink sets itself.
const OWN_SINK_PROPERTIES: [&str; 4] =
    ["bootstrap.servers", "transactional.id", "enable.idempotence", "transaction.timeout.ms"];

/// What is wrong with the fields every Kafka client has, each naming its field under `at`.
fn client_problems(
    at: &str,
    bootstrap_servers: &str,
    properties: &BTreeMap<String, String>,
    own: &[&str],
    tls: &Option<super::ClientTlsSpec>,
    password_env: &Option<String>,
    password_file: &Option<String>,
) -> Vec<String> {
    let mut errors = Vec::new();
    if bootstrap_servers.trim().is_empty() {
        errors.push(format!("{at}.bootstrapServers: required, expected host:port[,host:port...]"));
    }
    if password_env.is_some() && password_file.is_some() {
        errors.push(format!("{at}: expected at most one of passwordEnv, passwordFile"));
    }
    for name in properties.keys() {
        if SECRET_PROPERTIES.contains(&name.as_str()) {
            errors.push(format!(
                "{at}.properties.{name}: a secret in clear; put it in a Secret and name it with passwordEnv \
                 or passwordFile"
            ));
        } else if UNVERIFIED_TLS_PROPERTIES.contains(&name.as_str()) {
            errors.push(format!(
                "{at}.properties.{name}: refused: TLS to brokers is always verified (trust a private CA with \
                 {at}.tls.caFile)"
            ));
        } else if tls.is_some() && TLS_PROPERTIES.contains(&name.as_str()) {
            errors.push(format!("{at}.properties.{name}: set by {at}.tls; leave it out"));
        } else if own.contains(&name.as_str()) {
            errors.push(format!(
                "{at}.properties.{name}: set by Weir itself (exactly-once depends on it); use the connector's \
                 own fields"
            ));
        }
    }
    if let Some(tls) = tls {
        errors.extend(tls.problems(&format!("{at}.tls")));
    }
    errors.extend(sasl_problems(at, properties, tls.is_some(), password_env, password_file));
    errors
}

/// A password that librdkafka would never send (no SASL protocol) or would
/// offer to the wrong mechanism (GSSAPI, its default) fails only at the
/// broker, as a timeout; say so before the job starts.
fn sasl_problems(
    at: &str,
    properties: &BTreeMap<String, String>,
    tls: bool,
    password_env: &Option<String>,
    password_file: &Option<String>,
) -> Vec<String> {
    let field = match (password_env, password_file) {
        (Some(_), _) => "passwordEnv",
        (None, Some(_)) => "passwordFile",
        (None, None) => return Vec::new(),
    };
    let mut errors = Vec::new();
    let protocol = properties.get("security.protocol").map(|p| p.to_ascii_uppercase());
    match protocol.as_deref() {
        _ if tls => {}
        Some("SASL_PLAINTEXT" | "SASL_SSL") => {}
        Some(other) => errors.push(format!(
            "{at}.{field}: a password is sent only over SASL, but properties.security.protocol is {other}; \
             use SASL_PLAINTEXT, or tls for SASL_SSL"
        )),
        None => errors.push(format!(
            "{at}.{field}: a password is sent only over SASL: set tls (SASL_SSL) or properties.security.protocol: \
             SASL_PLAINTEXT"
        )),
    }
    match properties.get("sasl.mechanism").map(String::as_str) {
        Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
        Some(other) => errors.push(format!(
            "{at}.properties.sasl.mechanism: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a password, \
             got {other}"
        )),
        None => errors.push(format!(
            "{at}.properties.sasl.mechanism: required with {field} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
        )),
    }
    if !properties.contains_key("sasl.username") {
        errors.push(format!("{at}.properties.sasl.username: required with {field}"));
    }
    errors
}

fn topic_problem(at: &str, t: &str) -> Option<String> {
    (t.is_empty() || t.len() > 249 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        .then(|| format!("{at}: expected 1 to 249 ASCII letters, digits, `.`, `_` or `-`, got `{t}`"))
}

impl KafkaSinkSpec {
    /// What is wrong with this sink, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = client_problems(
            at,
            &self.bootstrap_servers,
            &self.properties,
            &OWN_SINK_PROPERTIES,
            &self.tls,
            &self.password_env,
            &self.password_file,
        );
        errors.extend(topic_problem(&format!("{at}.topic"), &self.topic));
        for (i, k) in self.key.iter().enumerate() {
            if k.is_empty() {
                errors.push(format!("{at}.key[{i}]: expected a field name, got an empty one"));
            }
        }
        let prefix_ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if self.transactional_id_prefix.is_empty() || !self.transactional_id_prefix.chars().all(prefix_ok) {
            errors.push(format!(
                "{at}.transactionalIdPrefix: expected ASCII letters, digits, `.`, `_` or `-`, got `{}`",
                self.transactional_id_prefix
            ));
        }
        if self.transaction_timeout.get() < Duration::from_secs(1) {
            errors.push(format!("{at}.transactionTimeout: expected at least 1s, got {}", self.transaction_timeout));
        }
        errors
    }
}

impl KafkaSourceSpec {
    /// What is wrong with this source, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = client_problems(
            at,
            &self.bootstrap_servers,
            &self.properties,
            &OWN_PROPERTIES,
            &self.tls,
            &self.password_env,
            &self.password_file,
        );
        match (self.topics.is_empty(), &self.topic_pattern) {
            (true, None) => errors.push(format!("{at}: expected one of topics, topicPattern")),
            (false, Some(_)) => errors.push(format!("{at}: expected only one of topics, topicPattern")),
            (_, Some(p)) => {
                if let Err(e) = regex::Regex::new(p) {
                    errors.push(format!("{at}.topicPattern: not a regular expression: {e}"));
                }
            }
            (false, None) => {}
        }
        for (i, t) in self.topics.iter().enumerate() {
            errors.extend(topic_problem(&format!("{at}.topics[{i}]"), t));
        }
        match (self.format, &self.avro) {
            (KafkaValueFormat::Avro, None) => errors.push(format!("{at}.avro: required by format: Avro (the schema)")),
            (KafkaValueFormat::Json, Some(_)) => errors.push(format!("{at}.avro: only for format: Avro; remove it")),
            (KafkaValueFormat::Avro, Some(avro)) => {
                if let Err(e) = crate::connectors::avro_values::AvroValues::new(avro) {
                    errors.push(format!("{at}.avro.schema: {e}"));
                }
            }
            (KafkaValueFormat::Json, None) => {}
        }
        match (self.starting_offsets, self.starting_timestamp_ms) {
            (StartingOffsets::Timestamp, None) => {
                errors.push(format!("{at}.startingTimestampMs: required by startingOffsets: Timestamp"))
            }
            (StartingOffsets::Timestamp, Some(ms)) if ms < 0 => {
                errors.push(format!("{at}.startingTimestampMs: expected milliseconds since the epoch, got {ms}"))
            }
            (StartingOffsets::Timestamp, Some(_)) => {}
            (other, Some(_)) => errors.push(format!(
                "{at}.startingTimestampMs: only used with startingOffsets: Timestamp, got startingOffsets: {other:?}"
            )),
            (_, None) => {}
        }
        if self.starting_offsets == StartingOffsets::GroupOffsets && self.group_id.is_none() {
            errors.push(format!("{at}.groupId: required by startingOffsets: GroupOffsets"));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KafkaSourceSpec {
        serde_yaml::from_str("{bootstrapServers: '127.0.0.1:9092', topics: [orders]}").unwrap()
    }

    #[test]
    fn a_source_of_named_topics_is_accepted_with_flink_like_defaults() {
        let s = spec();
        assert_eq!(s.problems("src"), Vec::<String>::new());
        assert_eq!(s.starting_offsets, StartingOffsets::Earliest);
        assert_eq!(s.partition_discovery_interval.get(), Duration::from_secs(30));
        assert_eq!(s.stopping_offsets, None);
    }

    #[test]
    fn avro_values_need_their_schema_and_a_schema_that_is_not_an_avro_record_is_refused() {
        let no_schema = KafkaSourceSpec { format: KafkaValueFormat::Avro, ..spec() };
        assert_eq!(no_schema.problems("src"), vec!["src.avro: required by format: Avro (the schema)"]);
        let avro = |schema: &str| KafkaAvroSpec { schema: schema.into(), confluent_schema_id: Some(3) };
        let record = r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}"#;
        let json_with_schema = KafkaSourceSpec { avro: Some(avro(record)), ..spec() };
        assert_eq!(json_with_schema.problems("src"), vec!["src.avro: only for format: Avro; remove it"]);
        let good = KafkaSourceSpec { format: KafkaValueFormat::Avro, avro: Some(avro(record)), ..spec() };
        assert_eq!(good.problems("src"), Vec::<String>::new());
        let not_record = KafkaSourceSpec { format: KafkaValueFormat::Avro, avro: Some(avro("\"long\"")), ..spec() };
        let errors = not_record.problems("src");
        assert!(
            errors.len() == 1 && errors[0].starts_with("src.avro.schema: expected an Avro record schema"),
            "{errors:?}"
        );
        let unknown_type = record.replace("long", "lng");
        let bad = KafkaSourceSpec { format: KafkaValueFormat::Avro, avro: Some(avro(&unknown_type)), ..spec() };
        let errors = bad.problems("src");
        assert!(errors.len() == 1 && errors[0].starts_with("src.avro.schema: not a usable Avro schema"), "{errors:?}");
    }

    #[test]
    fn topics_and_a_pattern_together_or_neither_are_refused() {
        let both = KafkaSourceSpec { topic_pattern: Some("orders-.*".into()), ..spec() };
        assert_eq!(both.problems("src"), vec!["src: expected only one of topics, topicPattern"]);
        let neither = KafkaSourceSpec { topics: vec![], ..spec() };
        assert_eq!(neither.problems("src"), vec!["src: expected one of topics, topicPattern"]);
        let bad = KafkaSourceSpec { topics: vec![], topic_pattern: Some("orders-(".into()), ..spec() };
        assert!(bad.problems("src")[0].starts_with("src.topicPattern: not a regular expression"));
    }

    #[test]
    fn a_timestamp_start_needs_its_timestamp_and_group_offsets_a_group() {
        let no_ts = KafkaSourceSpec { starting_offsets: StartingOffsets::Timestamp, ..spec() };
        assert_eq!(no_ts.problems("src"), vec!["src.startingTimestampMs: required by startingOffsets: Timestamp"]);
        let no_group = KafkaSourceSpec { starting_offsets: StartingOffsets::GroupOffsets, ..spec() };
        assert_eq!(no_group.problems("src"), vec!["src.groupId: required by startingOffsets: GroupOffsets"]);
    }

    #[test]
    fn a_sink_refuses_settings_it_owns_and_a_bad_topic() {
        let mut s: KafkaSinkSpec = serde_yaml::from_str("{bootstrapServers: 'b:9092', topic: 'a b'}").unwrap();
        s.properties.insert("transactional.id".into(), "mine".into());
        let problems = s.problems("sink");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("sink.properties.transactional.id: set by Weir itself"), "{problems:?}");
        assert!(problems[1].starts_with("sink.topic: expected 1 to 249"), "{problems:?}");
        assert_eq!(s.delivery, KafkaDelivery::ExactlyOnce);
    }

    #[test]
    fn tls_cannot_be_turned_unverified_or_set_twice_and_a_certificate_needs_its_key() {
        let mut s = spec();
        s.properties.insert("enable.ssl.certificate.verification".into(), "false".into());
        s.properties.insert("security.protocol".into(), "SSL".into());
        assert_eq!(s.problems("src").len(), 1, "without tls, security.protocol is the user's: {:?}", s.problems("src"));
        s.tls = Some(super::super::ClientTlsSpec { cert_file: Some("/tls/tls.crt".into()), ..Default::default() });
        let problems = s.problems("src");
        assert_eq!(
            problems,
            [
                "src.properties.enable.ssl.certificate.verification: refused: TLS to brokers is always verified \
                 (trust a private CA with src.tls.caFile)",
                "src.properties.security.protocol: set by src.tls; leave it out",
                "src.tls.keyFile: required with certFile",
            ]
        );
    }

    #[test]
    fn a_password_in_properties_is_refused_without_echoing_it() {
        let mut s = spec();
        s.properties.insert("sasl.password".into(), "hunter2".into());
        s.properties.insert("enable.auto.commit".into(), "true".into());
        let problems = s.problems("src");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("src.properties.enable.auto.commit: set by Weir itself"), "{problems:?}");
        assert!(problems[1].starts_with("src.properties.sasl.password: a secret in clear"), "{problems:?}");
        assert!(!problems.iter().any(|p| p.contains("hunter2")));
    }

    #[test]
    fn a_password_that_would_never_be_sent_or_offered_to_the_wrong_mechanism_is_refused() {
        let bare = KafkaSourceSpec { password_env: Some("KAFKA_PASSWORD".into()), ..spec() };
        assert_eq!(
            bare.problems("src"),
            [
                "src.passwordEnv: a password is sent only over SASL: set tls (SASL_SSL) or \
                 properties.security.protocol: SASL_PLAINTEXT",
                "src.properties.sasl.mechanism: required with passwordEnv (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                "src.properties.sasl.username: required with passwordEnv",
            ]
        );
        let mut scram = bare.clone();
        for (k, v) in
            [("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "SCRAM-SHA-512"), ("sasl.username", "weir")]
        {
            scram.properties.insert(k.into(), v.into());
        }
        assert_eq!(scram.problems("src"), Vec::<String>::new());
        let mut gssapi = scram.clone();
        gssapi.properties.insert("sasl.mechanism".into(), "GSSAPI".into());
        gssapi.properties.insert("security.protocol".into(), "SSL".into());
        let problems = gssapi.problems("src");
        assert!(problems[0].contains("properties.security.protocol is SSL"), "{problems:?}");
        assert!(problems[1].ends_with("got GSSAPI"), "{problems:?}");
        let mut over_tls = scram.clone();
        over_tls.properties.remove("security.protocol");
        over_tls.tls = Some(super::super::ClientTlsSpec::default());
        assert_eq!(over_tls.problems("src"), Vec::<String>::new());
    }
}
