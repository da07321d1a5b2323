//! The checks of a pipeline's sources, more sources merged into the main
//! one (`spec.pipeline.union`), and the join steps (`intervalJoin`,
//! `windowJoin`, `temporalJoin`, `join`), whose other side is a source of
//! its own.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::steps::check_operator_id;
use super::*;

impl SourceSpec {
    /// The state uid of a union or join source: `source-<id>`.
    pub fn uid(&self) -> String {
        format!("source-{}", self.id.as_deref().unwrap_or_default())
    }

    /// What is wrong with this source at `at`; `schema`: where its
    /// records' schema is declared, and whether it is (CSV needs one).
    pub(super) fn problems(&self, at: &str, schema: (&str, bool)) -> Vec<String> {
        let mut errors = Vec::new();
        match self.kind() {
            Err(e) => errors.push(format!("{at}: {e}")),
            Ok(SourceKind::Generator(g)) => {
                if g.keys == 0 {
                    errors.push(format!("{at}.generator.keys: expected at least 1, got 0"));
                }
                if g.splits == 0 {
                    errors.push(format!("{at}.generator.splits: expected at least 1, got 0"));
                }
            }
            Ok(SourceKind::File(f)) => {
                if f.path.is_empty() {
                    errors.push(format!("{at}.file.path: required, got an empty path"));
                }
                if f.format == SourceFormat::Csv && !schema.1 {
                    errors.push(format!("{at}.file.format: Csv needs {} (the columns' names and types)", schema.0));
                }
                errors.extend(super::steps::format_problems(&format!("{at}.file"), f.format, f.csv.as_ref()));
            }
            Ok(SourceKind::Kafka(k)) => errors.extend(k.problems(&format!("{at}.kafka"))),
            Ok(SourceKind::Nexmark(n)) => {
                if n.events_per_second == 0 {
                    errors.push(format!("{at}.nexmark.eventsPerSecond: expected at least 1, got 0"));
                }
                if n.splits == 0 {
                    errors.push(format!("{at}.nexmark.splits: expected at least 1, got 0"));
                }
            }
        }
        errors
    }

    /// The problems of a source that needs an id (a union or join source),
    /// its id not among `taken`.
    pub(super) fn named_problems(&self, at: &str, schema: (&str, bool), taken: &mut Vec<String>) -> Vec<String> {
        let mut errors = self.problems(at, schema);
        match self.id.as_deref() {
            None => errors.push(format!("{at}.id: required: it names the source's state (source-<id>)")),
            Some(id) => {
                if let Err(e) = check_operator_id(id) {
                    errors.push(format!("{at}.id: {e}"));
                } else if taken.iter().any(|t| t == id) {
                    errors.push(format!("{at}.id: `{id}` is already the id of another source"));
                }
                taken.push(id.to_string());
            }
        }
        errors
    }
}

impl PipelineSpec {
    /// The problems of the main source and of the union's.
    pub(super) fn sources_problems(&self, taken: &mut Vec<String>) -> Vec<String> {
        let schema = ("spec.pipeline.schema", self.schema.is_some());
        let mut errors = self.source.problems("spec.pipeline.source", schema);
        if self.source.id.is_some() {
            errors.push(
                "spec.pipeline.source.id: the main source's state is always `source`; only union and intervalJoin \
                 sources take an id"
                    .into(),
            );
        }
        for (i, source) in self.union.iter().enumerate() {
            errors.extend(source.named_problems(&format!("spec.pipeline.union[{i}]"), schema, taken));
        }
        errors
    }
}

/// A stream `spec.pipeline.sql` joins with the source (`FROM source o JOIN
/// <id> s ON o.k = s.k AND s.ts BETWEEN o.ts - INTERVAL … AND o.ts +
/// INTERVAL …`), as a table of Flink SQL's interval join is declared.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamSpec {
    /// The stream's records; its `id` is the table's name in the query and
    /// names its state (`source-<id>`).
    pub source: SourceSpec,
    /// The stream's fields and types: the query names them (`s.carrier`)
    /// and they are checked where the records enter. Required unless the
    /// source's records have a fixed schema (generator, nexmark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// The stream's event-time field; absent: the field named by
    /// `spec.pipeline.eventTime`, whose other settings apply to both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_field: Option<String>,
}

/// Joins each record with the records of another stream whose key is equal
/// and whose event time lies within `before` / `after` of its own (Flink's
/// interval join: `other.ts BETWEEN ts - before AND ts + after`). Each
/// matching pair is emitted once, as this record's fields plus the other's
/// under `prefix`, when the second of the two arrives; a record waits in
/// keyed state until the watermark passes the last time a match could
/// come. The joined record's event time is the later of the two, as in
/// Flink. Needs `spec.pipeline.eventTime`; records behind the watermark
/// are late, as for windows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntervalJoinSpec {
    /// The other stream: a source with an `id` (its state is
    /// `source-<id>`).
    pub source: SourceSpec,
    /// The other source's fields and types, as `spec.pipeline.schema` is
    /// the main one's (CSV needs it; steps after the join see these fields
    /// under `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// The other records' event-time field; absent: the field named by
    /// `spec.pipeline.eventTime`, whose other settings apply to both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_field: Option<String>,
    /// This stream's field whose value the other's `otherKey` must equal.
    pub key: String,
    /// The other stream's key field; absent: the field named like `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_key: Option<String>,
    /// A condition in SQL on the other source's own fields
    /// (`event_type = 0 AND state = 'OR'`): only its records that meet it
    /// are joined, and the rest are dropped before the join, keeping no
    /// state. Checked against the other source's schema before the job
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// How far before a record's event time another may lie and match.
    #[serde(default)]
    pub before: HumanDuration,
    /// How far after a record's event time another may lie and match.
    #[serde(default)]
    pub after: HumanDuration,
    /// Put before the other record's field names in the joined record;
    /// absent: the other source's id and `_` (`shipments_ts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Which records without a match are emitted too, once the watermark
    /// passes the last time a match could come (Flink SQL's outer interval
    /// joins): `inner` (none, the default), `left` (this stream's), `right`
    /// (the other's) or `full` (both). The missing side's fields are null;
    /// a record of the other stream alone carries its key and event time in
    /// `key` and this stream's event-time field. An outer join holds its
    /// output watermark back by the longer of `before` and `after`, so that
    /// these records are not late for the steps after it.
    #[serde(default, rename = "type", skip_serializing_if = "JoinType::is_inner")]
    pub join_type: JoinType,
}

/// Joins each record with every record of another stream whose key is
/// equal, whenever either came (Flink SQL's regular join, `JOIN s ON o.k =
/// s.k` without a time bound). Both streams' records are kept in keyed
/// state, for `stateTtl` or for ever, and each pair is emitted once, when
/// the second of its two records arrives, as this record's fields plus
/// the other's under `prefix`. Nothing waits for a watermark and no record
/// is late here. With `spec.pipeline.eventTime` the other stream needs an
/// event time too (`eventTimeField`), and the pair carries the later of
/// the two, as an interval join's does.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegularJoinSpec {
    /// The other stream: a source with an `id` (its state is
    /// `source-<id>`).
    pub source: SourceSpec,
    /// The other source's fields and types, as `spec.pipeline.schema` is
    /// the main one's (CSV needs it; steps after the join see these fields
    /// under `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// The other records' event-time field, with `spec.pipeline.eventTime`;
    /// absent: the field named there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_field: Option<String>,
    /// This stream's field whose value the other's `otherKey` must equal.
    pub key: String,
    /// The other stream's key field; absent: the field named like `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_key: Option<String>,
    /// A condition in SQL on the other source's own fields
    /// (`event_type = 0 AND state = 'OR'`): only its records that meet it
    /// are joined, and the rest are dropped before the join, keeping no
    /// state. Checked against the other source's schema before the job
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Put before the other record's field names in the joined record;
    /// absent: the other source's id and `_` (`persons_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only `inner` (the default) is built: an outer join without a time
    /// bound emits a record alone and must retract that row when its first
    /// match comes, and Weir's sinks take no retractions.
    #[serde(default, rename = "type", skip_serializing_if = "JoinType::is_inner")]
    pub join_type: JoinType,
    /// How long a record stays in state to meet matches, from its arrival
    /// by the wall clock (rounded up to a whole second), as Flink's
    /// `table.exec.state.ttl`; absent: for ever, and the state grows with
    /// every distinct record. Which pairs are then found depends on when
    /// records arrive, so a replay after a restore may find others for the
    /// records after the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ttl: Option<HumanDuration>,
}

impl RegularJoinSpec {
    /// What the regular join adds to the shared checks.
    pub fn own_problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.join_type != JoinType::Inner {
            errors.push(format!(
                "{at}.type: `{}` is not built for a join without a time bound: a record emitted alone would have to \
                 be retracted when its first match came, and sinks take no retractions; use inner, or an \
                 intervalJoin with a time bound",
                serde_json::to_value(self.join_type)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ));
        }
        if self.state_ttl.is_some_and(|t| t.get().is_zero()) {
            errors.push(format!("{at}.stateTtl: expected at least 1s, got 0s (leave it out to keep records for ever)"));
        }
        errors
    }
}

/// Joins the records of two streams that share a key and fall into the
/// same event-time window (Flink's window join: `join … where … equalTo …
/// window(TumblingEventTimeWindows.of(size))`, and Flink SQL's window join
/// of two windowing TVFs on `window_start`, `window_end` and the key).
/// Both streams' records wait in keyed state until the watermark passes
/// the window's end; then the window's pairs are emitted, each once, as
/// this record's fields plus the other's under `prefix`, with
/// `window_start` and `window_end` (epoch milliseconds, the end
/// exclusive). The event-time field of every emitted record is the
/// window's last instant (`window_end - 1`), as Flink stamps a window
/// join's output, so steps after it see no late records. Needs
/// `spec.pipeline.eventTime`; records whose every window fired are late.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowJoinSpec {
    /// The other stream: a source with an `id` (its state is
    /// `source-<id>`).
    pub source: SourceSpec,
    /// The other source's fields and types, as `spec.pipeline.schema` is
    /// the main one's (CSV needs it; steps after the join see these fields
    /// under `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// The other records' event-time field; absent: the field named by
    /// `spec.pipeline.eventTime`, whose other settings apply to both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_field: Option<String>,
    /// This stream's field whose value the other's `otherKey` must equal.
    pub key: String,
    /// The other stream's key field; absent: the field named like `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_key: Option<String>,
    /// A condition in SQL on the other source's own fields
    /// (`event_type = 1`): only its records that meet it are joined, and
    /// the rest are dropped before the join, keeping no state. Checked
    /// against the other source's schema before the job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The windows' length; aligned to the epoch, as Flink's.
    pub size: HumanDuration,
    /// With `slide`, sliding (hopping) windows that start every `slide`
    /// (at most `size`); a record joins in each window holding it.
    /// Absent: tumbling windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<HumanDuration>,
    /// Put before the other record's field names in the joined record;
    /// absent: the other source's id and `_` (`auctions_seller`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// What a window emits per key (Flink SQL's window join types):
    /// `inner` (each pair, the default), `left`, `right` or `full` (pairs,
    /// and the records of that side without a match in the window, the
    /// missing side's fields null), `semi` (each of this stream's records
    /// with at least one match, once, with only its own fields) or `anti`
    /// (each of this stream's records without a match).
    #[serde(default, rename = "type", skip_serializing_if = "WindowJoinType::is_inner")]
    pub join_type: WindowJoinType,
}

impl WindowJoinSpec {
    /// The windows' length and slide in milliseconds (the slide is the
    /// length for tumbling windows).
    pub fn size_and_slide(&self) -> (i64, i64) {
        let size = self.size.millis();
        (size, self.slide.map_or(size, HumanDuration::millis))
    }

    /// What the window join adds to the shared checks.
    pub fn own_problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        let (size, slide) = self.size_and_slide();
        if size <= 0 {
            errors.push(format!("{at}.size: expected at least 1ms, got {}", self.size));
        }
        if let Some(s) = self.slide {
            if size > 0 && (slide <= 0 || slide > size) {
                errors.push(format!("{at}.slide: expected from 1ms up to size ({}), got {s}", self.size));
            }
        }
        errors
    }
}

/// The records a window of a window join emits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WindowJoinType {
    /// Each pair.
    #[default]
    Inner,
    /// Pairs, and this stream's records without a match.
    Left,
    /// Pairs, and the other stream's records without a match.
    Right,
    /// Pairs, and the records of either stream without a match.
    Full,
    /// This stream's records with a match, once each.
    Semi,
    /// This stream's records without a match.
    Anti,
}

impl WindowJoinType {
    fn is_inner(&self) -> bool {
        *self == WindowJoinType::Inner
    }

    /// Whether the joined records carry the other stream's fields.
    pub fn pairs(self) -> bool {
        !matches!(self, WindowJoinType::Semi | WindowJoinType::Anti)
    }

    /// Whether this stream's records without a match are emitted.
    pub fn keeps_this(self) -> bool {
        matches!(self, WindowJoinType::Left | WindowJoinType::Full | WindowJoinType::Anti)
    }

    /// Whether the other stream's records without a match are emitted.
    pub fn keeps_other(self) -> bool {
        matches!(self, WindowJoinType::Right | WindowJoinType::Full)
    }
}

/// Which unmatched records an interval join emits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum JoinType {
    /// Only pairs.
    #[default]
    Inner,
    /// Pairs, and this stream's records that matched nothing.
    Left,
    /// Pairs, and the other stream's records that matched nothing.
    Right,
    /// Pairs, and the records of either stream that matched nothing.
    Full,
}

impl JoinType {
    fn is_inner(&self) -> bool {
        *self == JoinType::Inner
    }

    /// Whether this stream's unmatched records are emitted.
    pub fn keeps_this(self) -> bool {
        matches!(self, JoinType::Left | JoinType::Full)
    }

    /// Whether the other stream's unmatched records are emitted.
    pub fn keeps_other(self) -> bool {
        matches!(self, JoinType::Right | JoinType::Full)
    }
}

/// Joins each record with the version of its key's row in a versioned
/// table, whose changes another source streams: the latest record of that
/// source with an equal key and an event time at or before the record's
/// own (Flink SQL's event-time temporal join, `JOIN rates FOR SYSTEM_TIME
/// AS OF o.ts`). A record waits in keyed state until the watermark reaches
/// its event time, when every version up to it has come, and is emitted
/// once, with the version's fields under `prefix`. A key's versions older
/// than the one in effect at the watermark are dropped. Needs
/// `spec.pipeline.eventTime`; records and versions behind the watermark
/// are late, as for windows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemporalJoinSpec {
    /// The table's changes: a source with an `id` (its state is
    /// `source-<id>`), each record the new version of its key's row.
    pub source: SourceSpec,
    /// The table source's fields and types (CSV needs it; steps after the
    /// join see these fields under `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// The field of the table's records that holds when each version
    /// takes effect; absent: the field named by `spec.pipeline.eventTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_field: Option<String>,
    /// This stream's field whose value the table's `otherKey` must equal.
    pub key: String,
    /// The table's key field; absent: the field named like `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_key: Option<String>,
    /// A condition in SQL on the other source's own fields
    /// (`currency <> 'XTS'`): only the rows that meet it are versions of
    /// the table; the rest are dropped before the join. Checked against the other source's schema before the job
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Put before the table's field names in the joined record; absent:
    /// the table source's id and `_` (`rates_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `inner` (the default): a record without a version at its time is
    /// dropped, as Flink's inner temporal join does; `left`: it is emitted
    /// with the table's fields null.
    #[serde(default, rename = "type", skip_serializing_if = "TemporalJoinType::is_inner")]
    pub join_type: TemporalJoinType,
    /// Which time picks a record's version: `EventTime` (the default: the
    /// version in effect at the record's event time; needs
    /// `spec.pipeline.eventTime`) or `ProcessingTime` (the key's latest row
    /// when the record arrives, as Flink's processing-time temporal join:
    /// records do not wait, and the table needs no event time; the
    /// pipeline must then have no `eventTime`).
    #[serde(default, skip_serializing_if = "TimeDomain::is_event_time")]
    pub time: TimeDomain,
}

impl TemporalJoinSpec {
    /// What a processing-time join adds to the shared checks: `event_time`
    /// is whether the pipeline has `eventTime`.
    pub(super) fn time_problems(&self, at: &str, event_time: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if self.time != TimeDomain::ProcessingTime {
            return errors;
        }
        if event_time {
            errors.push(format!(
                "{at}.time: ProcessingTime in a pipeline with spec.pipeline.eventTime is not built: the table's \
                 stream carries no watermarks; remove eventTime, or join by EventTime"
            ));
        }
        if self.event_time_field.is_some() {
            errors.push(format!("{at}.eventTimeField: only with time: EventTime; remove it"));
        }
        errors
    }
}

/// What a temporal join does with a record whose key has no version yet.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TemporalJoinType {
    /// Drops it.
    #[default]
    Inner,
    /// Emits it with the table's fields null.
    Left,
}

impl TemporalJoinType {
    fn is_inner(&self) -> bool {
        *self == TemporalJoinType::Inner
    }
}

/// What the interval and temporal joins share: a second source, keyed and
/// stamped with event time, whose fields join this stream's under a prefix.
pub trait JoinedSource {
    fn source(&self) -> &SourceSpec;
    fn schema(&self) -> Option<&Vec<FieldSpec>>;
    fn key(&self) -> &str;
    fn other_key(&self) -> &str;
    fn prefix(&self) -> String;
    /// The other records' event-time field, with `main` the pipeline's.
    fn event_time_field<'a>(&'a self, main: &'a str) -> &'a str;
    fn event_time_field_set(&self) -> Option<&str>;
    /// The condition the other source's records must meet to be joined.
    fn filter(&self) -> Option<&str>;

    fn problems(&self, at: &str, event_time: bool, keyed: bool, taken: &mut Vec<String>) -> Vec<String> {
        let schema = (format!("{at}.schema"), self.schema().is_some());
        let mut errors = self.source().named_problems(&format!("{at}.source"), (&schema.0, schema.1), taken);
        if let Some(schema) = self.schema() {
            errors.extend(names_problems(&format!("{at}.schema"), schema));
        }
        if !event_time {
            errors.push(format!("{at}: needs spec.pipeline.eventTime (which field holds the event time)"));
        }
        if keyed {
            errors.push(format!("{at}: repartitions both streams by its key itself; remove the keyBy before it"));
        }
        if self.key().is_empty() {
            errors.push(format!("{at}.key: required, got an empty name"));
        }
        if self.other_key().is_empty() {
            errors.push(format!("{at}.otherKey: expected a field name, got an empty one"));
        }
        if self.filter().is_some_and(|f| f.trim().is_empty()) {
            errors.push(format!(
                "{at}.filter: expected a condition, got an empty one (leave it out to join every record)"
            ));
        }
        if self.event_time_field_set().is_some_and(str::is_empty) {
            errors.push(format!("{at}.eventTimeField: expected a field name, got an empty one"));
        }
        errors
    }
}

macro_rules! joined_source {
    ($spec:ty) => {
        impl JoinedSource for $spec {
            fn source(&self) -> &SourceSpec {
                &self.source
            }
            fn schema(&self) -> Option<&Vec<FieldSpec>> {
                self.schema.as_ref()
            }
            fn key(&self) -> &str {
                &self.key
            }
            fn other_key(&self) -> &str {
                self.other_key.as_deref().unwrap_or(&self.key)
            }
            fn prefix(&self) -> String {
                self.prefix.clone().unwrap_or_else(|| format!("{}_", self.source.id.as_deref().unwrap_or("other")))
            }
            fn event_time_field<'a>(&'a self, main: &'a str) -> &'a str {
                self.event_time_field.as_deref().unwrap_or(main)
            }
            fn event_time_field_set(&self) -> Option<&str> {
                self.event_time_field.as_deref()
            }
            fn filter(&self) -> Option<&str> {
                self.filter.as_deref()
            }
        }
    };
}

joined_source!(IntervalJoinSpec);
joined_source!(TemporalJoinSpec);
joined_source!(RegularJoinSpec);
joined_source!(WindowJoinSpec);
