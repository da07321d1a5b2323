//! `spec.pipeline.steps`: the steps a pipeline can list (keyBy, aggregate,
//! window, deduplicate, topN (its spec in `top_n`), filter, select, flatten, lookup, intervalJoin,
//! temporalJoin, join, windowJoin) and their
//! checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// One step; exactly one field is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.keyBy) ? 1 : 0) + (has(self.aggregate) ? 1 : 0) + (has(self.window) ? 1 : 0) + (has(self.deduplicate) ? 1 : 0) + (has(self.topN) ? 1 : 0) + (has(self.filter) ? 1 : 0) + (has(self.select) ? 1 : 0) + (has(self.flatten) ? 1 : 0) + (has(self.lookup) ? 1 : 0) + (has(self.intervalJoin) ? 1 : 0) + (has(self.temporalJoin) ? 1 : 0) + (has(self.join) ? 1 : 0) + (has(self.windowJoin) ? 1 : 0) == 1",
    "message": "exactly one of keyBy, aggregate, window, deduplicate, topN, filter, select, flatten, lookup, intervalJoin, temporalJoin, join, windowJoin must be set in each spec.pipeline.steps item"
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
    /// Aggregates per key and event-time window (needs a preceding `keyBy`
    /// and `eventTime`); emits one row per key and window once the
    /// watermark passes the window's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Passes on the first record of each key and drops the key's records
    /// within `within` of it in event time (needs a preceding `keyBy` and
    /// `eventTime`). Records pass unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplicate: Option<DeduplicateSpec>,
    /// The `limit` records of each key ranked first by a numeric field so far
    /// (needs a preceding `keyBy`). Each record that enters the ranking is
    /// emitted with its `rank` (1 is first), and so is every record it
    /// moved down a rank: an update stream by key and rank, as Flink's
    /// Top-N emits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<TopNSpec>,
    /// Keeps the records for which this SQL condition is true
    /// (`price * qty > 100 AND region <> 'eu'`); null counts as false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Replaces each record by these SQL expressions, each named by its
    /// `AS` alias or, for a plain field, by the field
    /// (`[key, "price * qty AS total", "upper(name) AS name"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
    /// Turns a record whose field holds an array into one record per
    /// element, the field holding the element (Flink SQL's `CROSS JOIN
    /// UNNEST`); an empty array, a missing field or null makes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten: Option<FlattenSpec>,
    /// Adds to each record the fields of the rows of a table file whose
    /// `key` equals the record's `field` (Flink SQL's lookup join on a
    /// filesystem table): one record out per matching row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupSpec>,
    /// Joins each record with those of another source that share its key
    /// and lie within an interval of its event time (Flink's interval
    /// join); repartitions both by the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_join: Option<IntervalJoinSpec>,
    /// Joins each record with the version of its key's row, at its event
    /// time, in a table whose changes another source streams (Flink's
    /// event-time temporal join); repartitions both by the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_join: Option<TemporalJoinSpec>,
    /// Joins each record with every record of another source that shares
    /// its key, whenever either came (Flink SQL's regular join, without a
    /// time bound); repartitions both by the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<RegularJoinSpec>,
    /// Joins the records of another source that share each record's key
    /// and event-time window, when the watermark passes the window's end
    /// (Flink's window join); repartitions both by the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_join: Option<WindowJoinSpec>,
}

/// A table in a file (JSON lines or CSV) that records are enriched from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LookupSpec {
    /// The table's file, read by every subtask (in Kubernetes, mount it,
    /// say from a ConfigMap).
    pub path: String,
    /// How its rows are written.
    #[serde(default, skip_serializing_if = "SourceFormat::is_json_lines")]
    pub format: SourceFormat,
    /// CSV options (for `format: Csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSpec>,
    /// The table's fields and types; each row is checked against them when
    /// the table is read, and the fields other than `key` are added to the
    /// records (null where `onMissing: Keep` finds no row).
    pub schema: Vec<FieldSpec>,
    /// The table's field that rows are looked up by.
    pub key: String,
    /// The record's field matched against `key`; absent: the field named
    /// like `key`. (Not `on`: YAML 1.1, which kubectl reads, takes a bare
    /// `on` for `true`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A record no row matches: `Keep` it with the table's fields null (a
    /// left join, the default), `Drop` it (an inner join), or send it to
    /// `errorPolicy`.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// How often to look whether the file changed and read it again (rows
    /// then apply to the records that come after). Absent: read once when
    /// the job starts or restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum OnMissing {
    #[default]
    Keep,
    Drop,
    ErrorPolicy,
}

impl LookupSpec {
    /// The record's field matched against the table's key.
    pub fn field(&self) -> &str {
        self.field.as_deref().unwrap_or(&self.key)
    }

    pub(super) fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.path.is_empty() {
            errors.push(format!("{at}.path: required, got an empty path"));
        }
        errors.extend(format_problems(at, self.format, self.csv.as_ref()));
        if self.schema.is_empty() {
            errors.push(format!("{at}.schema: expected the table's fields, got none"));
        }
        errors.extend(names_problems(&format!("{at}.schema"), &self.schema));
        if !self.schema.iter().any(|f| f.name == self.key) {
            let names: Vec<&str> = self.schema.iter().map(|f| f.name.as_str()).collect();
            errors.push(format!("{at}.key: `{}` is not one of the table's fields {names:?}", self.key));
        }
        if self.field().is_empty() {
            errors.push(format!("{at}.field: required, got an empty name"));
        }
        if self.refresh_interval.is_some_and(|d| d.get().is_zero()) {
            errors.push(format!("{at}.refreshInterval: expected at least 1ms, got 0s"));
        }
        errors
    }
}

/// The checks of a `format` and its `csv` options at `at`.
pub(super) fn format_problems(at: &str, format: SourceFormat, csv: Option<&CsvSpec>) -> Vec<String> {
    let mut errors = Vec::new();
    if format != SourceFormat::Csv && csv.is_some() {
        errors.push(format!("{at}.csv: only for format Csv; set format: Csv or remove it"));
    }
    errors.extend(super::pipeline::delimiter_problem(at, csv.and_then(|c| c.delimiter.as_deref())));
    errors
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlattenSpec {
    /// The array field; not listed in `spec.pipeline.schema` (arrays are
    /// not declared there: they pass through unchecked).
    pub field: String,
    /// The elements' type: each is checked (a record with an element of
    /// another type goes to `errorPolicy` whole), and later steps'
    /// expressions can read the field. Absent: the elements pass unchecked
    /// and unseen by expressions.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<FieldType>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeduplicateSpec {
    /// A record is a duplicate when its event time is less than this from
    /// the key's record that was passed on.
    pub within: HumanDuration,
}

/// Ids the pipeline gives its own stateful parts.
const RESERVED_IDS: [&str; 3] = ["source", "sink", "bad-records"];

/// Checks a step id: it names state files, so it is kept to a safe alphabet.
pub(super) fn check_operator_id(id: &str) -> Result<(), String> {
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
    Window(&'a WindowSpec),
    Deduplicate(&'a DeduplicateSpec),
    TopN(&'a TopNSpec),
    Filter(&'a str),
    Select(&'a [String]),
    Flatten(&'a FlattenSpec),
    Lookup(&'a LookupSpec),
    IntervalJoin(&'a IntervalJoinSpec),
    TemporalJoin(&'a TemporalJoinSpec),
    Join(&'a RegularJoinSpec),
    WindowJoin(&'a WindowJoinSpec),
}

impl<'a> StepKind<'a> {
    /// The manifest keys of the steps that join a second source.
    pub const JOINS: [&'static str; 4] = ["intervalJoin", "temporalJoin", "join", "windowJoin"];

    /// A step joining a second source: its manifest key and that source.
    pub fn as_join(&self) -> Option<(&'static str, &'a dyn JoinedSource)> {
        let [interval, temporal, join, window] = Self::JOINS;
        match *self {
            StepKind::IntervalJoin(j) => Some((interval, j)),
            StepKind::TemporalJoin(j) => Some((temporal, j)),
            StepKind::Join(j) => Some((join, j)),
            StepKind::WindowJoin(j) => Some((window, j)),
            _ => None,
        }
    }
}

impl StepSpec {
    pub fn kind(&self) -> Result<StepKind<'_>, String> {
        let set: Vec<StepKind<'_>> = [
            self.key_by.as_ref().map(StepKind::KeyBy),
            self.aggregate.as_ref().map(StepKind::Aggregate),
            self.window.as_ref().map(StepKind::Window),
            self.deduplicate.as_ref().map(StepKind::Deduplicate),
            self.top_n.as_ref().map(StepKind::TopN),
            self.filter.as_deref().map(StepKind::Filter),
            self.select.as_deref().map(StepKind::Select),
            self.flatten.as_ref().map(StepKind::Flatten),
            self.lookup.as_ref().map(StepKind::Lookup),
            self.interval_join.as_ref().map(StepKind::IntervalJoin),
            self.temporal_join.as_ref().map(StepKind::TemporalJoin),
            self.join.as_ref().map(StepKind::Join),
            self.window_join.as_ref().map(StepKind::WindowJoin),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Ok(*one),
            _ => Err("expected exactly one of keyBy, aggregate, window, deduplicate, topN, filter, select, flatten, \
                     lookup, intervalJoin, temporalJoin, join, windowJoin"
                .into()),
        }
    }
}

/// Tumbling windows (`size` alone), sliding ones (`size` and `slide`),
/// both aligned to the epoch as in Flink, or session windows (`gap`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowSpec {
    /// The length of tumbling and sliding windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<HumanDuration>,
    /// How far apart sliding windows start; at most `size`. Absent: `size`
    /// (tumbling windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<HumanDuration>,
    /// Session windows: a key's session closes once no record of it came
    /// for this long; it spans its first record to its last plus the gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<HumanDuration>,
    /// What to compute per key and window; rows carry the key field,
    /// `window_start` and `window_end` (milliseconds since the epoch, the
    /// end exclusive) and the aggregates.
    pub aggregate: AggregateSpec,
    /// Early results of tumbling and sliding windows: each time the
    /// watermark passes another `earlyEvery` since a window's start, its
    /// results so far are emitted too (Flink's `ContinuousEventTimeTrigger`).
    /// With `earlyTime: ProcessingTime`, of any window: a key's open
    /// windows are emitted at the next multiple of `earlyEvery` of the wall
    /// clock after a record reached them, so at most once per `earlyEvery`
    /// and only when they changed (Flink SQL's early fire delay).
    /// Rows then carry `final`: false for those, true for the one when the
    /// window closes; an upsert sink keyed by key and `window_start` ends
    /// with the final one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_every: Option<HumanDuration>,
    /// Which clock `earlyEvery` counts: `EventTime` (the default) or
    /// `ProcessingTime`.
    #[serde(default, skip_serializing_if = "TimeDomain::is_event_time")]
    pub early_time: TimeDomain,
    /// How long past its end a window still takes records (Flink's
    /// `allowedLateness`): its state is kept until the watermark passes
    /// its end plus this, and each record that comes in that time updates
    /// it and emits its row again, with every record so far. Later ones
    /// are late (`eventTime.lateRecords`). Absent: none, so a window's
    /// state goes as it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<HumanDuration>,
}

/// A clock: the records' event time, or the wall clock of the process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum TimeDomain {
    #[default]
    EventTime,
    ProcessingTime,
}

impl TimeDomain {
    pub(crate) fn is_event_time(&self) -> bool {
        *self == TimeDomain::EventTime
    }
}

/// The windows a [`WindowSpec`] asks for, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

impl WindowSpec {
    pub fn kind(&self) -> Result<WindowKind, String> {
        match (self.size, self.slide, self.gap) {
            (Some(size), slide, None) => {
                let size = size.millis();
                Ok(WindowKind::Sliding { size, slide: slide.map_or(size, HumanDuration::millis) })
            }
            (None, None, Some(gap)) => Ok(WindowKind::Session { gap: gap.millis() }),
            (None, Some(_), None) => Err("slide needs size".into()),
            _ => Err("expected either size (and slide) or gap".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyBySpec {
    /// The field to key by; with `expr`, the field the key is written to.
    pub field: String,
    /// Key by this SQL expression (`lower(region)`) instead of a field; its
    /// value is added to each record as `field`, which the aggregates of
    /// the key then carry. Needs `spec.pipeline.schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
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
    /// Fields to average; emitted as `avg_<field>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avg: Vec<String>,
    /// Fields whose distinct values to count (of any type, nulls not
    /// counted); emitted as `count_distinct_<field>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub count_distinct: Vec<String>,
    /// Fields whose first value to keep (nulls skipped); emitted as
    /// `first_<field>`. First in event time in a window, in arrival order
    /// in a running aggregate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first: Vec<String>,
    /// Fields whose last value to keep (nulls skipped); emitted as
    /// `last_<field>`. Last in event time in a window, in arrival order in
    /// a running aggregate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last: Vec<String>,
}

impl AggregateSpec {
    pub(super) const EMPTY: &str = "expected at least one of count, sum, min, max, avg, countDistinct, first, last";

    pub(super) fn is_empty(&self) -> bool {
        !self.count && self.numeric_fields().next().is_none() && !self.by_value()
    }

    /// Whether it keeps values, not only numbers: `countDistinct`, `first`
    /// or `last`. Such aggregates have state of their own type, so that
    /// checkpoints of the others read back as they were written.
    pub fn by_value(&self) -> bool {
        !(self.count_distinct.is_empty() && self.first.is_empty() && self.last.is_empty())
    }

    /// Every field read as a value of any type.
    pub fn value_fields(&self) -> impl Iterator<Item = &String> {
        self.count_distinct.iter().chain(&self.first).chain(&self.last)
    }

    /// Every field read as a number.
    pub fn numeric_fields(&self) -> impl Iterator<Item = &String> {
        self.sum.iter().chain(&self.min).chain(&self.max).chain(&self.avg)
    }
}

impl WindowSpec {
    pub(super) fn problems(&self, at: &str, keyed: bool, aggregated: bool, event_time: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if !keyed {
            errors.push(format!("{at}: needs a keyBy step before it"));
        }
        if !event_time {
            errors.push(format!("{at}: needs spec.pipeline.eventTime (which field holds the event time)"));
        }
        if aggregated {
            errors.push(format!(
                "{at}: must come before any aggregate or window step (event time is a field of the source's records)"
            ));
        }
        match self.kind() {
            Err(e) => errors.push(format!("{at}: {e}")),
            Ok(WindowKind::Sliding { size, slide }) => {
                if size <= 0 {
                    errors.push(format!("{at}.size: expected at least 1ms, got 0s"));
                }
                if let (Some(s), Some(size_text)) = (self.slide, self.size) {
                    if slide <= 0 || slide > size {
                        errors.push(format!("{at}.slide: expected from 1ms up to size ({size_text}), got {s}"));
                    }
                }
            }
            Ok(WindowKind::Session { gap }) => {
                if gap <= 0 {
                    errors.push(format!("{at}.gap: expected at least 1ms, got 0s"));
                }
                if self.early_every.is_some() && self.early_time == TimeDomain::EventTime {
                    errors.push(format!(
                        "{at}.earlyEvery: early results by event time are built for tumbling and sliding windows, \
                         not sessions; set earlyTime: ProcessingTime"
                    ));
                }
            }
        }
        match (self.early_every, self.early_time) {
            (None, TimeDomain::ProcessingTime) => {
                errors.push(format!("{at}.earlyTime: needs earlyEvery, how often early results come"))
            }
            (Some(early), TimeDomain::ProcessingTime) if early.get().is_zero() => {
                errors.push(format!("{at}.earlyEvery: expected at least 1ms, got {early}"))
            }
            (Some(early), TimeDomain::EventTime) => {
                if let Some(size) = self.size.filter(|size| early.get().is_zero() || early >= *size) {
                    errors.push(format!("{at}.earlyEvery: expected from 1ms up to below size ({size}), got {early}"));
                }
            }
            _ => {}
        }
        if self.aggregate.is_empty() {
            errors.push(format!("{at}.aggregate: {}", AggregateSpec::EMPTY));
        }
        errors
    }
}
