//! The `StreamJob` manifest: the one definition of a job that `weir run`,
//! the coordinator and the operator all read.
//!
//! The spec types derive both serde and schemars so the CRD schema, the YAML
//! a user writes and the runtime's view of a job can never drift apart.
//!
//! # Layout
//! - this file: the job, its spec and its validation.
//! - [`pipeline`]: `spec.pipeline`, source -> steps -> sink.
//! - [`event_time`]: `spec.pipeline.eventTime`, watermarks and late records.
//! - [`sources`]: the sources' checks, `union`, and `intervalJoin`'s source.
//! - [`steps`]: `spec.pipeline.steps`, each step and its checks.
//! - [`top_n`]: the `topN` step, its ranking functions and windows.
//! - [`planned`]: the steps a pipeline runs, from `steps` or `sql`.
//! - [`checkpoints`]: `spec.checkpoints`, when and where checkpoints go.
//! - [`lifecycle`]: upgrades, savepoints and deletion of a running job.
//! - [`schema`]: `spec.pipeline.schema`, the source records' typed fields.
//! - [`kafka`], [`postgres`], [`redis`]: those connectors' settings.
//! - [`tls`]: verified TLS to a server, shared by the connectors.
//! - [`duration`]: durations as people write them (`500ms`, `1h 30m`).
//! - [`restart`]: `spec.restartStrategy`, Flink's restart strategies.
//! - `tests`: parsing and validation as a user meets them.

use std::path::PathBuf;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub mod postgres;
pub use self::postgres::{PostgresSinkMode, PostgresSinkSpec};
pub mod redis;
pub use self::redis::{RedisSinkSpec, RedisValueFormat};
pub mod kafka;
pub use self::kafka::{
    KafkaAvroSpec, KafkaDelivery, KafkaMetadata, KafkaSinkSpec, KafkaSourceSpec, KafkaValueFormat, StartingOffsets,
    StoppingOffsets,
};
pub mod pipeline;
pub use self::pipeline::*;
pub mod event_time;
pub use self::event_time::{AlignmentSpec, EventTimeSpec, LateRecords};
pub mod steps;
pub use self::steps::*;
pub mod top_n;
pub use self::top_n::*;
pub mod sources;
pub use self::sources::{
    IntervalJoinSpec, JoinType, JoinedSource, RegularJoinSpec, StreamSpec, TemporalJoinSpec, TemporalJoinType,
    WindowJoinSpec, WindowJoinType,
};
pub mod planned;
pub use self::planned::PlannedSteps;
pub mod checkpoints;
use self::checkpoints::default_one;
pub use self::checkpoints::{CheckpointMode, CheckpointOptions, FallbackPolicy};
pub mod lifecycle;
pub use self::lifecycle::{DeletionPolicy, SavepointFallback, SavepointOptions, UpgradeMode};
pub mod schema;
pub use self::schema::{names_problems, FieldSpec, FieldType};
pub mod duration;
pub mod restart;
pub use self::restart::{ExponentialDelay, FailureRate, FixedDelay, NoRestart, RestartStrategy, RestartStrategyKind};
pub mod file_sink;
pub use self::duration::HumanDuration;
pub mod tls;
pub use self::file_sink::{
    AvroCompression, AvroSpec, ByteSize, ColumnSpec, ColumnType, CsvSinkSpec, FileFormat, FileSinkSpec,
    ParquetCompression, ParquetSpec,
};
pub use self::tls::ClientTlsSpec;

pub const API_VERSION: &str = "weir.dev/v1alpha1";
pub const KIND: &str = "StreamJob";
/// Flink's default number of key groups.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// Upper bound of key groups: key groups are stored as `u16`.
pub const MAX_MAX_PARALLELISM: u32 = 32768;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("manifest is not a valid StreamJob: {0}")]
    Parse(String),
    #[error("manifest has {}: {}", if .0.len() == 1 { "an invalid field" } else { "invalid fields" }, .0.join("; "))]
    Invalid(Vec<String>),
}

/// A `StreamJob` exactly as `kubectl apply` would receive it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJob {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: StreamJobSpec,
}

/// The part of Kubernetes object metadata a job run needs; other fields
/// (labels, annotations) are accepted and ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ObjectMeta {
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// What a user asks for: the job, how wide it runs, how it checkpoints.
// Rules the API server checks at admission (CEL, Kubernetes 1.25+; older
// servers ignore them and the operator's own checks still apply). Fields
// with defaults may be absent when a rule runs, hence the `has` guards.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.workers) || !has(self.parallelism) || self.workers <= self.parallelism",
        "message": "spec.workers must not exceed spec.parallelism: a worker would have nothing to run"
    },
    {
        "rule": "!has(self.parallelism) || !has(self.maxParallelism) || self.parallelism <= self.maxParallelism",
        "message": "spec.parallelism must not exceed spec.maxParallelism"
    },
    {
        "rule": "has(self.pipeline) != has(self.program)",
        "message": "exactly one of spec.pipeline and spec.program must be set"
    }
]))]
pub struct StreamJobSpec {
    /// Number of parallel subtasks of every operator.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    pub parallelism: u32,
    /// Number of key groups: the upper bound for parallelism and the unit in
    /// which keyed state is redistributed when parallelism changes. Changing
    /// it discards the compatibility of existing checkpoints.
    #[serde(default = "default_max_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "spec.maxParallelism is immutable: the job's checkpoints are split into that many key groups"
    }]))]
    pub max_parallelism: u32,
    #[serde(default)]
    pub checkpoints: CheckpointOptions,
    /// A savepoint (or completed checkpoint) directory to start from, e.g.
    /// `file:///data/checkpoints/default/old-job/savepoints/sp-1764100000000`,
    /// as Flink's `initialSavepointPath`: used only while the job has no
    /// completed checkpoint of its own; after that the job resumes from its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint_path: Option<String>,
    /// Start even if the restored checkpoint holds state of an operator the
    /// job no longer has (Flink's `allowNonRestoredState`); that state is
    /// dropped. Off by default: such state usually means an operator's id
    /// changed, and starting without it would silently reset it.
    #[serde(default)]
    pub allow_non_restored_state: bool,
    /// What happens to a record that cannot be parsed or processed.
    #[serde(default)]
    pub error_policy: ErrorPolicy,
    /// The job, declared without compiling anything. Exactly one of
    /// `pipeline` and `program` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSpec>,
    /// A job written with the typed Rust API and compiled into the `weir`
    /// binary (or a custom image), chosen by its entry name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramSpec>,

    // What follows is read by the operator; `weir run` ignores it.
    /// Worker pods the subtasks are spread over.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1024))]
    pub workers: u32,
    /// Container image of the job's pods (default: the operator's `--job-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resource requests and limits of each job pod, e.g. `{requests: {cpu: 500m, memory: 1Gi}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<PodResources>,
    /// What happens when a job pod fails.
    #[serde(default)]
    pub restart_strategy: RestartStrategy,
    /// Take the job down (pods deleted, state kept); `false` resumes it.
    #[serde(default)]
    pub suspend: bool,
    /// How spec changes and suspension carry state over.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// Change to any new value to take a savepoint once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_nonce: Option<i64>,
    /// How the operator takes, keeps and disposes of savepoints (ignored by `weir run`).
    #[serde(default)]
    pub savepoints: SavepointOptions,
    /// Change to any new value to restart the job's pods once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    /// What deleting the StreamJob does to its checkpoints.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// A Kubernetes pod template (`metadata` and `spec`) merged into every
    /// job pod, as in Flink's operator: volumes and their mounts (a shared
    /// volume for `file://` checkpoints and file sinks), node selector,
    /// tolerations, service account, security context, sidecars, labels and
    /// annotations. The container named `weir` is merged with the
    /// operator's own; its command, args, image and ports stay the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: Option<serde_json::Value>,
}

/// Kubernetes' own pod schema is large and version-specific, so the CRD
/// keeps the template as free-form object (as Flink's operator does) and the
/// operator checks it field by field when it reconciles.
fn pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodResources {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub requests: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub limits: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgramSpec {
    /// The registered name of the program, like Flink's entry class.
    pub entry: String,
    /// Arguments the program reads.
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, String>,
}

fn default_parallelism() -> u32 {
    1
}
fn default_max_parallelism() -> u32 {
    DEFAULT_MAX_PARALLELISM
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorPolicy {
    #[serde(default)]
    pub on_bad_record: BadRecordAction,
    /// Directory for rejected records when `onBadRecord: deadLetter`. It is
    /// written transactionally, like a file sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_path: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BadRecordAction {
    /// The job fails, naming the record.
    #[default]
    Fail,
    /// The record is dropped and counted.
    Skip,
    /// The record is written to the dead-letter directory and counted.
    DeadLetter,
}

impl StreamJob {
    /// Reads and validates a manifest file.
    pub fn from_file(path: &std::path::Path) -> Result<StreamJob, ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates a manifest; errors name the offending field.
    /// A manifest of another kind is refused by its kind, before its fields.
    pub fn from_yaml(text: &str) -> Result<StreamJob, ManifestError> {
        if let Ok(serde_yaml::Value::Mapping(top)) = serde_yaml::from_str::<serde_yaml::Value>(text) {
            let field = |name: &str| top.get(name).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let (api_version, kind) = (field("apiVersion"), field("kind"));
            if kind != KIND || api_version != API_VERSION {
                return Err(ManifestError::Invalid(vec![format!(
                    "expected a manifest of kind `{KIND}` and apiVersion `{API_VERSION}`, got kind `{kind}` \
                     and apiVersion `{api_version}`: this is not a Weir job"
                )]));
            }
        }
        // serde_path_to_error names the exact field even for errors raised
        // inside a field's own deserializer (a malformed duration).
        let job: StreamJob =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                if path == "." || inner.starts_with(&path) {
                    ManifestError::Parse(inner)
                } else {
                    ManifestError::Parse(format!("{path}: {inner}"))
                }
            })?;
        job.validate()?;
        Ok(job)
    }

    /// Checks what the schema cannot express. Every message starts with the
    /// field's path.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut errors = Vec::new();
        if self.api_version != API_VERSION {
            errors.push(format!("apiVersion: expected `{API_VERSION}`, got `{}`", self.api_version));
        }
        if self.kind != KIND {
            errors.push(format!("kind: expected `{KIND}`, got `{}`", self.kind));
        }
        if self.metadata.name.is_empty() {
            errors.push("metadata.name: required, must be a non-empty name".into());
        } else if !is_dns_label(&self.metadata.name) {
            errors.push(format!(
                "metadata.name: expected a DNS label (lowercase letters, digits, '-'), got `{}`",
                self.metadata.name
            ));
        }
        errors.extend(self.spec.problems());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid(errors))
        }
    }
}

/// The shortest checkpoint interval and timeout that can work (Flink's 10 ms).
const MIN_CHECKPOINT_DURATION: Duration = Duration::from_millis(10);

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl StreamJobSpec {
    /// Problems with the spec, each naming its field; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.max_parallelism == 0 || self.max_parallelism > MAX_MAX_PARALLELISM {
            errors
                .push(format!("spec.maxParallelism: expected 1..={MAX_MAX_PARALLELISM}, got {}", self.max_parallelism));
        }
        if self.parallelism == 0 {
            errors.push("spec.parallelism: expected at least 1, got 0".into());
        } else if self.parallelism > self.max_parallelism {
            errors.push(format!(
                "spec.parallelism: {} exceeds spec.maxParallelism {}",
                self.parallelism, self.max_parallelism
            ));
        }
        let c = &self.checkpoints;
        if c.max_concurrent == 0 {
            errors.push("spec.checkpoints.maxConcurrent: expected at least 1, got 0".into());
        }
        if c.retained == 0 {
            errors.push("spec.checkpoints.retained: expected at least 1, got 0".into());
        }
        for (field, value) in [("interval", c.interval.0), ("timeout", c.timeout.0)] {
            if value < MIN_CHECKPOINT_DURATION {
                errors.push(format!(
                    "spec.checkpoints.{field}: expected at least {}, got {}",
                    humantime::format_duration(MIN_CHECKPOINT_DURATION),
                    humantime::format_duration(value)
                ));
            }
        }
        if let Err(e) = crate::storage::StorageUri::parse(&c.storage) {
            errors.push(format!("spec.checkpoints.storage: {e}"));
        }
        if let Some(Err(e)) = self.initial_savepoint_path.as_deref().map(crate::storage::StorageUri::parse) {
            errors.push(format!("spec.initialSavepointPath: {e}"));
        }
        if self.error_policy.on_bad_record == BadRecordAction::DeadLetter
            && self.error_policy.dead_letter_path.is_none()
        {
            errors.push("spec.errorPolicy.deadLetterPath: required when onBadRecord is deadLetter".into());
        }
        let late = self.pipeline.as_ref().and_then(|p| p.event_time.as_ref()).map(|t| t.late_records);
        if late == Some(LateRecords::ErrorPolicy) && self.error_policy.on_bad_record == BadRecordAction::Fail {
            errors.push(
                "spec.pipeline.eventTime.lateRecords: ErrorPolicy hands late records to spec.errorPolicy, whose \
                 onBadRecord is fail: the first late record would stop the job; set onBadRecord to skip or deadLetter"
                    .into(),
            );
        }
        if self.pod_template.as_ref().is_some_and(|t| !t.is_object()) {
            errors.push("spec.podTemplate: expected an object with metadata and spec, as in a Deployment".into());
        }
        if self.workers == 0 {
            errors.push("spec.workers: expected at least 1, got 0".into());
        } else if self.workers > self.parallelism.max(1) {
            errors.push(format!(
                "spec.workers: {} exceeds spec.parallelism {}: a worker would have nothing to run",
                self.workers, self.parallelism
            ));
        }
        match self.restart_strategy.kind() {
            Err(e) => errors.push(format!("spec.restartStrategy: {e}")),
            Ok(RestartStrategyKind::ExponentialDelay(e)) => {
                if e.multiplier < 1.0 {
                    errors.push(format!(
                        "spec.restartStrategy.exponentialDelay.multiplier: expected at least 1.0, got {}",
                        e.multiplier
                    ));
                }
                if !(0.0..=1.0).contains(&e.jitter) {
                    errors.push(format!(
                        "spec.restartStrategy.exponentialDelay.jitter: expected 0.0 to 1.0, got {}",
                        e.jitter
                    ));
                }
                if e.max_backoff < e.initial_backoff {
                    errors.push(
                        "spec.restartStrategy.exponentialDelay.maxBackoff: must not be below initialBackoff".into(),
                    );
                }
            }
            Ok(RestartStrategyKind::FailureRate(f)) if f.max_failures_per_interval == 0 => errors
                .push("spec.restartStrategy.failureRate.maxFailuresPerInterval: expected at least 1, got 0".into()),
            Ok(_) => {}
        }
        match (&self.pipeline, &self.program) {
            (Some(p), None) => errors.extend(p.problems()),
            (None, Some(p)) if p.entry.is_empty() => {
                errors.push("spec.program.entry: required, got an empty name".into())
            }
            (None, Some(_)) => {}
            _ => errors.push("spec: expected exactly one of pipeline, program".into()),
        }
        errors
    }
}

#[cfg(test)]
mod tests;
