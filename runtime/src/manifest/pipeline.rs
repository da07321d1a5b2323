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
                    let (at, j): (_, &dyn JoinedSource) = match kind {
                        StepKind::TemporalJoin(j) => (format!("spec.pipeline.steps[{i}].temporalJoin"), j),
                        StepKind::IntervalJoin(j) => (format!("spec.pipeline.steps[{i}].intervalJoin"), j),
                        StepKind::Join(j) => (format!("spec.pipeline.steps[{i}].join"), j),
                        StepKind::WindowJoin(j) => (format!("spec.pipeline.steps[{i}].windowJoin"), j),
                        _ => continue,
                    };
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
mod tests {
    use super::super::StreamJob;
    use super::WindowKind;

    fn windowed(event_time: &str, steps: &str) -> Result<StreamJob, String> {
        let yaml = format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: w}}
spec:
  pipeline:
    source: {{generator: {{keys: 10, timestampStep: 1ms}}}}
{event_time}
    steps:
{steps}
    sink: {{file: {{path: ./out}}}}
"#
        );
        StreamJob::from_yaml(&yaml).map_err(|e| e.to_string())
    }

    fn nexmark(source: &str, sql: &str) -> Result<StreamJob, String> {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: n}}\nspec:\n  pipeline:\n    \
             source: {{nexmark: {source}}}\n    sql: \"{sql}\"\n    sink: {{discard: {{}}}}\n"
        );
        StreamJob::from_yaml(&yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn nexmark_records_are_typed_for_queries_and_a_wrong_field_or_setting_is_named() {
        nexmark("{count: 10}", "SELECT auction, 0.908 * price AS euros FROM source WHERE event_type = 2").unwrap();
        let err = nexmark("{}", "SELECT aution FROM source").unwrap_err();
        assert!(err.contains("aution"), "{err}");
        let err = nexmark("{eventsPerSecond: 0, splits: 0}", "SELECT auction FROM source").unwrap_err();
        assert!(err.contains("spec.pipeline.source.nexmark.eventsPerSecond: expected at least 1, got 0"), "{err}");
        assert!(err.contains("spec.pipeline.source.nexmark.splits: expected at least 1, got 0"), "{err}");
    }

    const EVENT_TIME: &str = "    eventTime: {field: ts, maxOutOfOrderness: 5s}";
    const KEY_BY: &str = "      - keyBy: {field: key}\n";

    #[test]
    fn a_tumbling_and_a_sliding_window_after_key_by_with_event_time_are_accepted() {
        let tumbling = format!("{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true, avg: [value]}}}}");
        windowed(EVENT_TIME, &tumbling).unwrap();
        let sliding = format!("{KEY_BY}      - window: {{size: 1m, slide: 10s, aggregate: {{max: [value]}}}}");
        let job = windowed(EVENT_TIME, &sliding).unwrap();
        let step = &job.spec.pipeline.unwrap().steps[1];
        let kind = step.window.as_ref().map(|w| w.kind());
        assert_eq!(kind, Some(Ok(WindowKind::Sliding { size: 60_000, slide: 10_000 })));
        let session = format!("{KEY_BY}      - window: {{gap: 30s, aggregate: {{count: true}}}}");
        let job = windowed(EVENT_TIME, &session).unwrap();
        let kind = job.spec.pipeline.unwrap().steps[1].window.as_ref().map(|w| w.kind());
        assert_eq!(kind, Some(Ok(WindowKind::Session { gap: 30_000 })));
    }

    #[test]
    fn a_window_without_event_time_or_key_by_is_refused_naming_what_it_needs() {
        let window = "      - window: {size: 1m, aggregate: {count: true}}";
        let err = windowed("", &format!("{KEY_BY}{window}")).unwrap_err();
        assert!(err.contains("spec.pipeline.steps[1].window: needs spec.pipeline.eventTime"), "{err}");
        let err = windowed(EVENT_TIME, window).unwrap_err();
        assert!(err.contains("spec.pipeline.steps[0].window: needs a keyBy step before it"), "{err}");
    }

    #[test]
    fn a_slide_longer_than_the_window_and_an_empty_aggregate_are_refused() {
        let steps = format!("{KEY_BY}      - window: {{size: 10s, slide: 1m, aggregate: {{}}}}");
        let err = windowed(EVENT_TIME, &steps).unwrap_err();
        assert!(
            err.contains("spec.pipeline.steps[1].window.slide: expected from 1ms up to size (10s), got 1m"),
            "{err}"
        );
        assert!(err.contains("spec.pipeline.steps[1].window.aggregate: expected at least one of"), "{err}");
    }

    #[test]
    fn a_window_after_an_aggregate_is_refused_because_its_rows_have_no_event_time() {
        let steps = format!(
            "{KEY_BY}      - aggregate: {{count: true}}\n{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true}}}}"
        );
        let err = windowed(EVENT_TIME, &steps).unwrap_err();
        assert!(err.contains("spec.pipeline.steps[3].window: must come before any aggregate or window step"), "{err}");
    }

    #[test]
    fn a_window_with_both_size_and_gap_or_with_neither_is_refused() {
        for window in ["{size: 1m, gap: 10s, ", "{slide: 10s, ", "{"] {
            let steps = format!("{KEY_BY}      - window: {window}aggregate: {{count: true}}}}");
            let err = windowed(EVENT_TIME, &steps).unwrap_err();
            assert!(err.contains("spec.pipeline.steps[1].window: "), "{window}: {err}");
        }
    }

    #[test]
    fn deduplicate_needs_key_by_event_time_and_a_positive_bound() {
        windowed(EVENT_TIME, &format!("{KEY_BY}      - deduplicate: {{within: 10m}}")).unwrap();
        let err = windowed("", "      - deduplicate: {within: 0s}").unwrap_err();
        for part in ["needs a keyBy step", "needs spec.pipeline.eventTime", "deduplicate.within: expected at least 1ms"]
        {
            assert!(err.contains(&format!("spec.pipeline.steps[0].{}", "deduplicate")) && err.contains(part), "{err}");
        }
    }

    #[test]
    fn an_empty_event_time_field_is_refused() {
        let steps = format!("{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true}}}}");
        let err = windowed("    eventTime: {field: ''}", &steps).unwrap_err();
        assert!(err.contains("spec.pipeline.eventTime.field: required"), "{err}");
    }

    #[test]
    fn steps_and_sql_together_are_refused() {
        let steps = format!("{KEY_BY}    sql: SELECT key FROM source");
        let err = windowed("", &steps).unwrap_err();
        assert!(err.contains("spec.pipeline: expected either steps or sql, not both"), "{err}");
    }
}
