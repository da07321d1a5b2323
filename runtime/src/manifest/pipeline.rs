//! `spec.pipeline`: a job declared as source -> steps -> sink, and the
//! checks that name a wrong field before the job starts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// A job declared as source -> steps -> sink.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    pub source: SourceSpec,
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    pub sink: SinkSpec,
}

/// Exactly one field is set (the Kubernetes way of writing a union).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.generator) ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.kafka) ? 1 : 0) == 1",
    "message": "exactly one of generator, file, kafka must be set in spec.pipeline.source"
}]))]
pub struct SourceSpec {
    /// Deterministic records `{"seq", "key", "value"}`: replaying from an
    /// offset yields the same records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSpec>,
    /// JSON objects, one per line, read from files and replayed by offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSourceSpec>,
    /// JSON objects from Kafka topics, replayed by offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSourceSpec>,
}

/// The source a [`SourceSpec`] sets.
#[derive(Debug, Clone, Copy)]
pub enum SourceKind<'a> {
    Generator(&'a GeneratorSpec),
    File(&'a FileSourceSpec),
    Kafka(&'a KafkaSourceSpec),
}

impl SourceSpec {
    pub fn kind(&self) -> Result<SourceKind<'_>, String> {
        match (&self.generator, &self.file, &self.kafka) {
            (Some(g), None, None) => Ok(SourceKind::Generator(g)),
            (None, Some(f), None) => Ok(SourceKind::File(f)),
            (None, None, Some(k)) => Ok(SourceKind::Kafka(k)),
            _ => Err("expected exactly one of generator, file, kafka".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Number of distinct keys (`k0` .. `k{keys-1}`).
    #[schemars(range(min = 1))]
    pub keys: u64,
    /// Records per second over all subtasks; 0 means as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Total records; absent means unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Independent replayable splits; fixed for the life of the job so that
    /// positions survive a change of parallelism.
    #[serde(default = "default_splits")]
    #[schemars(range(min = 1))]
    pub splits: u32,
}

fn default_splits() -> u32 {
    8
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSourceSpec {
    /// A file, or a directory whose `*.jsonl` / `*.json` files are read in
    /// name order; each file is one split.
    pub path: String,
}

/// One step; exactly one field is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.keyBy) ? 1 : 0) + (has(self.aggregate) ? 1 : 0) == 1",
    "message": "exactly one of keyBy, aggregate must be set in each spec.pipeline.steps item"
}]))]
pub struct StepSpec {
    /// A stable id for the step's state (as Flink's `uid`): a checkpoint's
    /// state goes back to the operator of the same id, wherever the step
    /// moves in the list. Without one, the id is derived from the step's
    /// content, so changing the step (or its keyBy) starts it without state
    /// (refused unless `allowNonRestoredState`). Lowercase letters, digits,
    /// `-`, `_` and `.`; unique within the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Repartition by the value of a field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<KeyBySpec>,
    /// Running aggregates per key (needs a preceding `keyBy`); emits the
    /// updated aggregate for every input record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateSpec>,
}

/// Ids the pipeline gives its own stateful parts.
const RESERVED_IDS: [&str; 3] = ["source", "sink", "bad-records"];

/// Checks a step id: it names state files, so it is kept to a safe alphabet.
fn check_operator_id(id: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 63 || !id.chars().all(safe) || id.starts_with(['-', '.']) {
        return Err(format!("expected 1 to 63 lowercase letters, digits, `-`, `_` or `.` (not first), got `{id}`"));
    }
    if RESERVED_IDS.contains(&id) {
        return Err(format!("`{id}` is the id of the pipeline's own {id}; choose another"));
    }
    Ok(())
}

/// The step a [`StepSpec`] sets.
#[derive(Debug, Clone, Copy)]
pub enum StepKind<'a> {
    KeyBy(&'a KeyBySpec),
    Aggregate(&'a AggregateSpec),
}

impl StepSpec {
    pub fn kind(&self) -> Result<StepKind<'_>, String> {
        match (&self.key_by, &self.aggregate) {
            (Some(k), None) => Ok(StepKind::KeyBy(k)),
            (None, Some(a)) => Ok(StepKind::Aggregate(a)),
            _ => Err("expected exactly one of keyBy, aggregate".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyBySpec {
    pub field: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregateSpec {
    /// Emit `count`, the number of records of the key so far.
    #[serde(default)]
    pub count: bool,
    /// Fields to sum; emitted as `sum_<field>`.
    #[serde(default)]
    pub sum: Vec<String>,
    /// Fields to take the minimum of; emitted as `min_<field>`.
    #[serde(default)]
    pub min: Vec<String>,
    /// Fields to take the maximum of; emitted as `max_<field>`.
    #[serde(default)]
    pub max: Vec<String>,
}

/// Exactly one field is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.file) ? 1 : 0) + (has(self.stdout) ? 1 : 0) + (has(self.discard) ? 1 : 0) + (has(self.postgres) ? 1 : 0) + (has(self.redis) ? 1 : 0) + (has(self.kafka) ? 1 : 0) == 1",
    "message": "exactly one of file, stdout, discard, postgres, redis, kafka must be set in spec.pipeline.sink"
}]))]
pub struct SinkSpec {
    /// Exactly-once part files (JSON lines or Parquet) in a directory or
    /// object storage, visible only once their checkpoint completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkSpec>,
    /// Prints records as JSON lines as they arrive (at-least-once: records
    /// replayed after a failure are printed again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSinkSpec>,
    /// Counts records and drops them, as Flink's blackhole connector: for
    /// measuring a source and the steps alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<StdoutSinkSpec>,
    /// Rows into a PostgreSQL table, with two-phase commit (exactly once)
    /// or as upserts by key (idempotent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSinkSpec>,
    /// The latest record per key into Redis (idempotent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSinkSpec>,
    /// Records as JSON into a Kafka topic, in a transaction per checkpoint
    /// (exactly once) or as they arrive (at least once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,
}

/// The sink a [`SinkSpec`] sets.
#[derive(Debug, Clone, Copy)]
pub enum SinkKind<'a> {
    File(&'a FileSinkSpec),
    Stdout(&'a StdoutSinkSpec),
    Discard,
    Postgres(&'a PostgresSinkSpec),
    Redis(&'a RedisSinkSpec),
    Kafka(&'a KafkaSinkSpec),
}

impl SinkSpec {
    pub fn kind(&self) -> Result<SinkKind<'_>, String> {
        let set: Vec<SinkKind<'_>> = [
            self.file.as_ref().map(SinkKind::File),
            self.stdout.as_ref().map(SinkKind::Stdout),
            self.discard.as_ref().map(|_| SinkKind::Discard),
            self.postgres.as_ref().map(SinkKind::Postgres),
            self.redis.as_ref().map(SinkKind::Redis),
            self.kafka.as_ref().map(SinkKind::Kafka),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Ok(*one),
            _ => Err("expected exactly one of file, stdout, discard, postgres, redis, kafka".into()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdoutSinkSpec {}

impl PipelineSpec {
    pub(super) fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        match self.source.kind() {
            Err(e) => errors.push(format!("spec.pipeline.source: {e}")),
            Ok(SourceKind::Generator(g)) => {
                if g.keys == 0 {
                    errors.push("spec.pipeline.source.generator.keys: expected at least 1, got 0".into());
                }
                if g.splits == 0 {
                    errors.push("spec.pipeline.source.generator.splits: expected at least 1, got 0".into());
                }
            }
            Ok(SourceKind::File(f)) => {
                if f.path.is_empty() {
                    errors.push("spec.pipeline.source.file.path: required, got an empty path".into());
                }
            }
            Ok(SourceKind::Kafka(k)) => errors.extend(k.problems("spec.pipeline.source.kafka")),
        }
        let mut keyed = false;
        let mut ids: Vec<&str> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(id) = step.id.as_deref() {
                if let Err(e) = check_operator_id(id) {
                    errors.push(format!("spec.pipeline.steps[{i}].id: {e}"));
                } else if ids.contains(&id) {
                    errors.push(format!("spec.pipeline.steps[{i}].id: `{id}` is already the id of another step"));
                }
                ids.push(id);
            }
            match step.kind() {
                Err(e) => errors.push(format!("spec.pipeline.steps[{i}]: {e}")),
                Ok(StepKind::KeyBy(k)) => {
                    if k.field.is_empty() {
                        errors.push(format!("spec.pipeline.steps[{i}].keyBy.field: required, got an empty name"));
                    }
                    keyed = true;
                }
                Ok(StepKind::Aggregate(a)) => {
                    if !keyed {
                        errors.push(format!("spec.pipeline.steps[{i}].aggregate: needs a keyBy step before it"));
                    }
                    if !a.count && a.sum.is_empty() && a.min.is_empty() && a.max.is_empty() {
                        errors.push(format!(
                            "spec.pipeline.steps[{i}].aggregate: expected at least one of count, sum, min, max"
                        ));
                    }
                    keyed = false;
                }
            }
        }
        match self.sink.kind() {
            Err(e) => errors.push(format!("spec.pipeline.sink: {e}")),
            Ok(SinkKind::File(f)) => errors.extend(f.problems("spec.pipeline.sink.file")),
            Ok(SinkKind::Postgres(p)) => errors.extend(p.problems("spec.pipeline.sink.postgres")),
            Ok(SinkKind::Redis(r)) => errors.extend(r.problems("spec.pipeline.sink.redis")),
            Ok(SinkKind::Kafka(k)) => errors.extend(k.problems("spec.pipeline.sink.kafka")),
            Ok(_) => {}
        }
        errors
    }
}
