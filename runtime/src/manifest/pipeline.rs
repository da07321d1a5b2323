//! `spec.pipeline`: a job declared as source -> steps -> sink, and the
//! checks that name a wrong field before the job starts.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// A job declared as source -> steps -> sink.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    pub source: SourceSpec,
    /// More sources whose records go through the steps with the main
    /// source's (Flink's `union`): the same schema and event-time field
    /// apply to all. Each needs an `id`, which names its state
    /// (`source-<id>`), so that sources can be added and removed between
    /// runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub union: Vec<SourceSpec>,
    /// The types of the source's fields, for `filter`, `select` and
    /// `keyBy.expr` steps (whose SQL expressions are type-checked against
    /// it when the manifest is loaded) and for checking records where they
    /// enter: a record whose field has another type goes to `errorPolicy`,
    /// naming the field. Fields not listed pass through unchecked and
    /// unseen by expressions. The generator's records have a fixed schema
    /// (`seq`, `key`, `value`, and `ts` with `timestampStep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// The records' event time and how its watermarks are made; needed by
    /// `window` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSpec>,
    /// Instead of `steps`, one query over the source, `SELECT … FROM source
    /// [JOIN stream ON …] [WHERE …] [GROUP BY key[, TUMBLE(ts, INTERVAL '1'
    /// MINUTE)]] [HAVING …]`, turned into the same steps (see the README
    /// for what it supports; the rest is refused by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Flink's table options for how `sql`'s window emits, by their Flink
    /// names: `table.exec.emit.early-fire.enabled` and `.early-fire.delay`
    /// (early results by processing time), `table.exec.emit.late-fire.enabled`
    /// and `table.exec.emit.allow-lateness` (late records update their
    /// window); others are refused by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sql_options: BTreeMap<String, String>,
    /// The streams `sql` can join with the source (an interval join), each
    /// named in the query by its source's `id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamSpec>,
    pub sink: SinkSpec,
}

/// Exactly one field is set (the Kubernetes way of writing a union).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.generator) ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.kafka) ? 1 : 0) + (has(self.nexmark) ? 1 : 0) == 1",
    "message": "exactly one of generator, file, kafka, nexmark must be set in spec.pipeline.source"
}]))]
pub struct SourceSpec {
    /// Names a union or intervalJoin source and its state
    /// (`source-<id>`): lowercase letters, digits, `-`, `_` and `.`,
    /// unique among the pipeline's sources. The main source has none: its
    /// state is `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
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
    /// The Nexmark benchmark's people, auctions and bids (deterministic,
    /// replayed by position), as flat records with `event_type` 0, 1 or 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexmark: Option<NexmarkSpec>,
}

/// The source a [`SourceSpec`] sets.
#[derive(Debug, Clone, Copy)]
pub enum SourceKind<'a> {
    Generator(&'a GeneratorSpec),
    File(&'a FileSourceSpec),
    Kafka(&'a KafkaSourceSpec),
    Nexmark(&'a NexmarkSpec),
}

impl SourceSpec {
    pub fn kind(&self) -> Result<SourceKind<'_>, String> {
        match (&self.generator, &self.file, &self.kafka, &self.nexmark) {
            (Some(g), None, None, None) => Ok(SourceKind::Generator(g)),
            (None, Some(f), None, None) => Ok(SourceKind::File(f)),
            (None, None, Some(k), None) => Ok(SourceKind::Kafka(k)),
            (None, None, None, Some(n)) => Ok(SourceKind::Nexmark(n)),
            _ => Err("expected exactly one of generator, file, kafka, nexmark".into()),
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
    /// Adds a field `ts` to every record: record `seq`'s event time, `seq`
    /// times this step, in milliseconds since the epoch (`1ms`: one record
    /// per millisecond of event time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_step: Option<HumanDuration>,
    /// Independent replayable splits; fixed for the life of the job so that
    /// positions survive a change of parallelism.
    #[serde(default = "default_splits")]
    #[schemars(range(min = 1))]
    pub splits: u32,
}

fn default_splits() -> u32 {
    8
}

/// The Nexmark generator (see `weir nexmark` for the same events as JSON
/// lines).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NexmarkSpec {
    /// Events per second over all subtasks; 0 means as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Total events; absent means unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Events per second of event time: event `n`'s `dateTime` is
    /// 2026-01-01T00:00:00Z plus `n` / this many seconds (the standard
    /// generator's first event rate).
    #[serde(default = "default_nexmark_event_rate")]
    #[schemars(range(min = 1))]
    pub events_per_second: u64,
    /// Independent replayable splits, as the generator's.
    #[serde(default = "default_splits")]
    #[schemars(range(min = 1))]
    pub splits: u32,
}

fn default_nexmark_event_rate() -> u64 {
    10_000
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSourceSpec {
    /// A file, or a directory whose `*.jsonl` / `*.json` files (`*.csv`,
    /// `*.parquet`, `*.avro` for those formats) are read in name order;
    /// each file is one split.
    pub path: String,
    /// How records are written in the files. Left out when JSON lines, so
    /// that the spec digest of a job written before CSV stays as it was.
    #[serde(default, skip_serializing_if = "SourceFormat::is_json_lines")]
    pub format: SourceFormat,
    /// CSV options (for `format: Csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSpec>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SourceFormat {
    /// One JSON object per line.
    #[default]
    JsonLines,
    /// Comma-separated values (RFC 4180: quoted fields may hold the
    /// delimiter, `""` and line breaks), typed by `spec.pipeline.schema`,
    /// which it needs.
    Csv,
    /// Parquet files (any codec the sink writes: Snappy, Zstd, none), typed
    /// by their own schema. Timestamps become milliseconds since the
    /// epoch, dates text. Read whole: a file must be complete when found.
    Parquet,
    /// Avro object container files, typed by the writer's schema they
    /// carry (Snappy, Zstd, Deflate or no codec), converted as Parquet's.
    Avro,
}

impl SourceFormat {
    pub(crate) fn is_json_lines(&self) -> bool {
        *self == SourceFormat::JsonLines
    }

    /// The columnar format, for Parquet and Avro.
    pub fn columnar(self) -> Option<crate::connectors::columnar_files::ColumnarFormat> {
        use crate::connectors::columnar_files::ColumnarFormat;
        match self {
            SourceFormat::Parquet => Some(ColumnarFormat::Parquet),
            SourceFormat::Avro => Some(ColumnarFormat::Avro),
            SourceFormat::JsonLines | SourceFormat::Csv => None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSpec {
    /// Whether each file's first line names its columns. With a header,
    /// columns are matched to schema fields by name (other columns are
    /// not read); without one, the columns are the schema's fields in
    /// order.
    #[serde(default)]
    pub header: bool,
    /// The field delimiter: one ASCII character (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
}

impl CsvSpec {
    /// The delimiter byte; `spec` was validated.
    pub fn delimiter_byte(&self) -> u8 {
        delimiter_byte(self.delimiter.as_deref())
    }
}

/// A CSV delimiter's byte, `,` when none is given (or one that
/// [`delimiter_problem`] refuses).
pub(crate) fn delimiter_byte(delimiter: Option<&str>) -> u8 {
    match delimiter.map(str::as_bytes) {
        Some([b]) if b.is_ascii() => *b,
        _ => b',',
    }
}

/// What is wrong with a CSV delimiter given at `{at}.csv.delimiter`.
pub(crate) fn delimiter_problem(at: &str, delimiter: Option<&str>) -> Option<String> {
    let d = delimiter?;
    (!matches!(d.as_bytes(), [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r'))).then(|| {
        format!("{at}.csv.delimiter: expected one ASCII character other than a quote or line break, got `{d}`")
    })
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
        if self.sql.is_some() && !self.steps.is_empty() {
            errors.push("spec.pipeline: expected either steps or sql, not both".into());
        }
        let steps = self.planned_steps().unwrap_or_else(|e| {
            errors.push(e);
            PlannedSteps::default()
        });
        let found = self.unlabeled_problems(&steps);
        errors.extend(steps.relabeled(found));
        errors.extend(self.streams_problems(&steps));
        if self.sql.is_none() && !self.sql_options.is_empty() {
            errors.push(
                "spec.pipeline.sqlOptions: only with spec.pipeline.sql; in steps, set the window's own fields".into(),
            );
        }
        errors
    }

    /// The streams that `sql` cannot join or does not.
    fn streams_problems(&self, steps: &PlannedSteps) -> Vec<String> {
        if self.sql.is_none() {
            return match self.streams.is_empty() {
                true => Vec::new(),
                false => vec!["spec.pipeline.streams: only spec.pipeline.sql joins these; in steps, an \
                               intervalJoin names its own source"
                    .into()],
            };
        }
        let joined: Vec<usize> = steps.joined_streams().collect();
        let mut errors = Vec::new();
        for (k, stream) in self.streams.iter().enumerate() {
            if stream.schema.is_none() && matches!(stream.source.kind(), Ok(SourceKind::File(_) | SourceKind::Kafka(_)))
            {
                errors.push(format!(
                    "spec.pipeline.streams[{k}].schema: required: the query names the stream's fields, and its \
                     records are checked against it"
                ));
            }
            if stream.source.id.is_none() {
                errors
                    .push(format!("spec.pipeline.streams[{k}].source.id: required: the query joins the stream by it"));
            } else if !joined.contains(&k) && !steps.is_empty() {
                errors.push(format!(
                    "spec.pipeline.streams[{k}]: `{}` is not joined by spec.pipeline.sql; remove it or JOIN it",
                    stream.source.id.as_deref().unwrap_or_default()
                ));
            }
        }
        errors
    }

    fn unlabeled_problems(&self, steps: &[StepSpec]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut source_ids = Vec::new();
        errors.extend(self.sources_problems(&mut source_ids));
        if let Some(t) = &self.event_time {
            if t.field.is_empty() {
                errors.push("spec.pipeline.eventTime.field: required, got an empty name".into());
            }
            if t.idle_timeout.is_some_and(|d| d.get().is_zero()) {
                errors.push("spec.pipeline.eventTime.idleTimeout: expected a positive duration, got 0s".into());
            }
            if t.alignment.is_some() && t.idle_timeout.is_none() {
                errors.push(
                    "spec.pipeline.eventTime.alignment: needs eventTime.idleTimeout: a partition or split that \
                     gets no records would otherwise hold every other one back for ever"
                        .into(),
                );
            }
            if t.alignment.as_ref().and_then(|a| a.update_interval).is_some_and(|d| d.get().is_zero()) {
                errors.push(
                    "spec.pipeline.eventTime.alignment.updateInterval: expected a positive duration, got 0s".into(),
                );
            }
        }
        let mut keyed = false;
        let mut aggregated = false;
        let mut window = None;
        let mut ids: Vec<&str> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
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
                    if a.is_empty() {
                        errors.push(format!("spec.pipeline.steps[{i}].aggregate: {}", AggregateSpec::EMPTY));
                    }
                    keyed = false;
                    aggregated = true;
                    window = None;
                }
                Ok(StepKind::Window(w)) => {
                    let at = format!("spec.pipeline.steps[{i}].window");
                    errors.extend(w.problems(&at, keyed, aggregated, self.event_time.is_some()));
                    window = Some(w);
                    keyed = false;
                    aggregated = true;
                }
                Ok(StepKind::Deduplicate(d)) => {
                    let at = format!("spec.pipeline.steps[{i}].deduplicate");
                    if !keyed {
                        errors.push(format!("{at}: needs a keyBy step before it"));
                    }
                    if self.event_time.is_none() {
                        errors.push(format!("{at}: needs spec.pipeline.eventTime (which field holds the event time)"));
                    }
                    if aggregated {
                        errors.push(format!(
                            "{at}: must come before any aggregate or window step (event time is a field of the source's records)"
                        ));
                    }
                    if d.within.get().is_zero() {
                        errors.push(format!("{at}.within: expected at least 1ms, got 0s"));
                    }
                    keyed = false;
                }
                // A filter keeps the records' fields, and so their key.
                Ok(StepKind::Filter(sql)) => {
                    if sql.trim().is_empty() {
                        errors.push(format!("spec.pipeline.steps[{i}].filter: required, got an empty condition"));
                    }
                }
                Ok(StepKind::TopN(t)) => {
                    let at = format!("spec.pipeline.steps[{i}].topN");
                    errors.extend(t.problems(&at, keyed, window));
                    errors.extend(t.window_problems(&at, self.event_time.is_some(), aggregated));
                    keyed = false;
                    aggregated = true;
                    // Its ranks keep a window's rows; updates do not.
                    if !t.per_window {
                        window = None;
                    }
                }
                Ok(StepKind::Select(_)) => keyed = false,
                Ok(
                    kind @ (StepKind::IntervalJoin(_)
                    | StepKind::TemporalJoin(_)
                    | StepKind::Join(_)
                    | StepKind::WindowJoin(_)),
                ) => {
                    let Some((name, j)) = kind.as_join() else { continue };
                    let at = format!("spec.pipeline.steps[{i}].{name}");
                    match kind {
                        StepKind::TemporalJoin(t) if t.time == TimeDomain::ProcessingTime => {
                            // Needs no event time: the shared check is told there is one.
                            errors.extend(j.problems(&at, true, keyed, &mut source_ids));
                            errors.extend(t.time_problems(&at, self.event_time.is_some()));
                        }
                        StepKind::Join(r) => {
                            errors.extend(j.problems(&at, true, keyed, &mut source_ids));
                            errors.extend(r.own_problems(&at));
                        }
                        StepKind::WindowJoin(w) => {
                            errors.extend(j.problems(&at, self.event_time.is_some(), keyed, &mut source_ids));
                            errors.extend(w.own_problems(&at));
                        }
                        _ => errors.extend(j.problems(&at, self.event_time.is_some(), keyed, &mut source_ids)),
                    }
                    if aggregated {
                        errors.push(format!(
                            "{at}: must come before any aggregate or window step (event time is a field of the source's records)"
                        ));
                    }
                    keyed = false;
                }
                Ok(StepKind::Lookup(l)) => {
                    let at = format!("spec.pipeline.steps[{i}].lookup");
                    errors.extend(l.problems(&at));
                    if keyed {
                        errors.push(format!("{at}: must come before the keyBy of the step it feeds"));
                    }
                    keyed = false;
                }
                // A key is chosen after the records are made.
                Ok(StepKind::Flatten(f)) => {
                    if f.field.is_empty() {
                        errors.push(format!("spec.pipeline.steps[{i}].flatten.field: required, got an empty name"));
                    }
                    if keyed {
                        errors.push(format!(
                            "spec.pipeline.steps[{i}].flatten: must come before the keyBy of the aggregate it feeds"
                        ));
                    }
                    keyed = false;
                }
            }
        }
        errors.extend(crate::pipeline::schema::type_steps(self, steps).errors);
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

#[cfg(test)]
mod tests;
