//! `intervalJoin`: records of two streams with equal keys and event times
//! within an interval of each other, joined in keyed state.
//!
//! A pair is emitted when the second of its two records arrives, and a
//! record waits only while a match may still come: the other side's
//! records behind the watermark are late and dropped (or handed to the
//! error policy), so once the watermark passes `ts + after` no record of the
//! other side can match a record of this side at `ts`, and past
//! `ts + before` none of this side can match one of the other's. That is
//! why every pair of records that are not late is found, and found once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::window::{LateTo, Routed};
use crate::manifest::{IntervalJoinSpec, JoinType, JoinedSource};
use crate::operators::{EventTimeFunction, Timers};
use crate::record::{event_time_of, key_of, Row};
use crate::task::TaskError;

/// A record of either stream on its way into the join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Sided {
    /// From the pipeline's own stream.
    This(Row),
    /// From the join's source.
    Other(Row),
}

impl Sided {
    /// The record, and whether it is this stream's.
    pub fn split(self) -> (Row, bool) {
        match self {
            Sided::This(row) => (row, true),
            Sided::Other(row) => (row, false),
        }
    }
}

/// The join's key fields, for the shuffle and the keyed state.
#[derive(Debug, Clone)]
pub struct JoinKeys {
    pub this: String,
    pub other: String,
}

impl JoinKeys {
    /// A record's key; a record without one was refused before the join.
    pub fn of(&self, record: &Sided) -> String {
        match record {
            Sided::This(row) => key_of(row, &self.this),
            Sided::Other(row) => key_of(row, &self.other),
        }
        .unwrap_or_default()
    }
}

/// The records of one key waiting for a match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Waiting {
    this: Vec<Held>,
    other: Vec<Held>,
}

/// A waiting record: its event time, the record as JSON text (keyed state
/// is encoded without a self-describing format) and whether it has met a
/// match (an outer join emits those that have not when they leave).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    ts: i64,
    text: String,
    matched: bool,
}

#[derive(Debug, Clone)]
pub struct IntervalJoin {
    this_time: String,
    other_time: String,
    this_key: String,
    other_key: String,
    before: i64,
    after: i64,
    prefix: String,
    join_type: JoinType,
    /// The other stream's fields, null in this stream's unmatched records.
    other_fields: Vec<String>,
    /// This stream's fields, null in the other's unmatched records.
    this_fields: Vec<String>,
    late: LateTo,
}

impl IntervalJoin {
    /// `time`: the pipeline's event-time field; `this_fields`: the names of
    /// this stream's fields where known.
    pub fn new(spec: &IntervalJoinSpec, time: &str, this_fields: Vec<String>, late: LateTo) -> IntervalJoin {
        let other_fields = spec.schema.iter().flatten().map(|f| f.name.clone()).collect();
        IntervalJoin {
            this_time: time.into(),
            other_time: spec.event_time_field(time).into(),
            this_key: spec.key.clone(),
            other_key: spec.other_key().into(),
            before: spec.before.millis(),
            after: spec.after.millis(),
            prefix: spec.prefix(),
            join_type: spec.join_type,
            other_fields,
            this_fields,
            late,
        }
    }

    /// This side's record `this` (at `t`) with the other side's `other` (at `o`).
    fn pair(&self, this: &Row, t: i64, other: &Row, o: i64) -> Row {
        paired(this.clone(), other, &self.prefix, (t, o), (&self.this_time, &self.other_time))
    }

    /// This side's record that matched nothing, the other's fields null.
    fn this_alone(&self, this: Row) -> Row {
        let mut out = this;
        if let Some(fields) = out.as_object_mut() {
            for name in &self.other_fields {
                fields.insert(format!("{}{name}", self.prefix), Value::Null);
            }
        }
        out
    }

    /// The other side's record that matched nothing: its fields under the
    /// prefix, its key and event time also in this side's key and
    /// event-time fields, this side's other fields null.
    fn other_alone(&self, other: &Row) -> Row {
        let mut out = serde_json::Map::new();
        for name in &self.this_fields {
            out.insert(name.clone(), Value::Null);
        }
        if let Some(theirs) = other.as_object() {
            for (name, value) in theirs {
                out.insert(format!("{}{name}", self.prefix), value.clone());
            }
            out.insert(self.this_key.clone(), theirs.get(&self.other_key).cloned().unwrap_or(Value::Null));
            out.insert(self.this_time.clone(), theirs.get(&self.other_time).cloned().unwrap_or(Value::Null));
        }
        Value::Object(out)
    }

    /// The side's records whose last possible match is before `time` leave,
    /// those that never met one emitted when `keep`.
    fn evict(
        held: &mut Vec<Held>,
        reach: i64,
        time: i64,
        keep: bool,
        alone: impl Fn(Row) -> Row,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let mut result = Ok(());
        held.retain(|h| {
            if h.ts.saturating_add(reach).saturating_add(1) > time {
                return true;
            }
            if keep && !h.matched && result.is_ok() {
                match parse(&h.text) {
                    Ok(row) => out.push(Ok(alone(row))),
                    Err(e) => result = Err(e),
                }
            }
            false
        });
        result
    }
}

/// `this` with the fields of `other` added under `prefix`, and the later of
/// their event times (`times`, held in the fields `fields`) as its own.
pub(super) fn paired(mut this: Row, other: &Row, prefix: &str, (t, o): (i64, i64), fields: (&str, &str)) -> Row {
    if let (Some(mine), Some(theirs)) = (this.as_object_mut(), other.as_object()) {
        for (name, value) in theirs {
            mine.insert(format!("{prefix}{name}"), value.clone());
        }
        if o > t {
            let later = theirs.get(fields.1).cloned().unwrap_or(Value::from(o));
            mine.insert(fields.0.to_string(), later);
        }
    }
    this
}

fn parse(text: &str) -> Result<Row, TaskError> {
    super::read_back(text, "intervalJoin", "a waiting record")
}

/// The event time of a record; one without it was refused before the join.
pub(super) fn time_of(row: &Row, field: &str, key: &str) -> Result<i64, TaskError> {
    event_time_of(row, field).map_err(|reason| TaskError::BadRecord { record: format!("with key `{key}`"), reason })
}

impl EventTimeFunction<String, Sided, Routed> for IntervalJoin {
    type State = Waiting;

    fn process(
        &mut self,
        key: &String,
        record: Sided,
        waiting: &mut Waiting,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let (row, this_side) = record.split();
        let ts = time_of(&row, if this_side { &self.this_time } else { &self.other_time }, key)?;
        if timers.watermark().is_some_and(|w| ts < w) {
            let why = "so the records it would join with may be gone (intervalJoin)";
            self.late.late(row, ts, why, timers, out);
            return Ok(());
        }
        // Matches: other.ts in [this.ts - before, this.ts + after]; seen
        // from the other side, this.ts in [other.ts - after, other.ts + before].
        let (mine, theirs, (back, ahead)) = if this_side {
            (&mut waiting.this, &mut waiting.other, (self.before, self.after))
        } else {
            (&mut waiting.other, &mut waiting.this, (self.after, self.before))
        };
        let (lo, hi) = (ts.saturating_sub(back), ts.saturating_add(ahead));
        let mut matched = false;
        for h in theirs.iter_mut().filter(|h| (lo..=hi).contains(&h.ts)) {
            let held = parse(&h.text)?;
            let pair = if this_side { self.pair(&row, ts, &held, h.ts) } else { self.pair(&held, h.ts, &row, ts) };
            out.push(Ok(pair));
            (h.matched, matched) = (true, true);
        }
        // The last time a record of the other side may still match this one.
        mine.push(Held { ts, text: row.to_string(), matched });
        timers.register(ts.saturating_add(ahead).saturating_add(1));
        Ok(())
    }

    fn on_timer(
        &mut self,
        _key: &String,
        time: i64,
        waiting: &mut Waiting,
        _timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        // The watermark is at `time`: no record before it may still come.
        let (keep_this, keep_other) = (self.join_type.keeps_this(), self.join_type.keeps_other());
        Self::evict(&mut waiting.this, self.after, time, keep_this, |r| self.this_alone(r), out)?;
        Self::evict(&mut waiting.other, self.before, time, keep_other, |r| self.other_alone(&r), out)
    }

    fn watermark_delay(&self) -> i64 {
        // An unmatched record at `ts` leaves when the watermark passes
        // `ts + after` (this side) or `ts + before` (the other).
        match self.join_type {
            JoinType::Inner => 0,
            _ => self.before.max(self.after).saturating_add(1),
        }
    }

    fn is_empty(&self, waiting: &Waiting) -> bool {
        waiting.this.is_empty() && waiting.other.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::event_time::drive;
    use serde_json::json;

    fn join(before: &str, after: &str) -> IntervalJoin {
        outer(before, after, "inner")
    }

    fn outer(before: &str, after: &str, join_type: &str) -> IntervalJoin {
        let spec: IntervalJoinSpec = serde_json::from_value(json!({
            "source": {"id": "ships", "generator": {"keys": 1}},
            "schema": [{"name": "order", "type": "string"}, {"name": "ts", "type": "timestamp"}, {"name": "s", "type": "string"}],
            "key": "id",
            "otherKey": "order",
            "before": before,
            "after": after,
            "type": join_type,
        }))
        .unwrap();
        IntervalJoin::new(&spec, "ts", vec!["id".into(), "ts".into(), "n".into()], LateTo(None))
    }

    fn run(join: &mut IntervalJoin, steps: Vec<(Option<i64>, Sided)>) -> (Vec<Row>, u64, bool) {
        run_to(join, steps, None)
    }

    fn run_to(join: &mut IntervalJoin, steps: Vec<(Option<i64>, Sided)>, end: Option<i64>) -> (Vec<Row>, u64, bool) {
        let (out, late, empty) = drive(join, steps, end);
        (out.into_iter().map(|r| r.unwrap()).collect(), late, empty)
    }

    #[test]
    fn each_pair_within_the_interval_is_emitted_once_whichever_side_comes_first() {
        let mut j = join("1s", "2s");
        let (rows, late, _) = run(
            &mut j,
            vec![
                (None, Sided::This(json!({"id": "a", "ts": 10_000, "n": 1}))),
                (None, Sided::Other(json!({"order": "a", "ts": 11_500, "s": "x"}))),
                (None, Sided::Other(json!({"order": "a", "ts": 8_999, "s": "too early"}))),
                (None, Sided::Other(json!({"order": "a", "ts": 9_000, "s": "y"}))),
                (None, Sided::This(json!({"id": "a", "ts": 12_000, "n": 2}))),
            ],
        );
        let pairs: Vec<(i64, &str)> =
            rows.iter().map(|r| (r["n"].as_i64().unwrap(), r["ships_s"].as_str().unwrap())).collect();
        assert_eq!(pairs, vec![(1, "x"), (1, "y"), (2, "x")]);
        assert_eq!(late, 0);
        // The later of the two event times is the joined record's.
        assert_eq!(rows[0]["ts"], json!(11_500));
        assert_eq!(rows[1]["ts"], json!(10_000));
        assert_eq!(rows[0]["ships_ts"], json!(11_500));
    }

    #[test]
    fn records_wait_until_the_watermark_passes_their_last_possible_match_and_late_ones_are_dropped() {
        let mut j = join("0s", "1s");
        let (rows, late, empty) = run(
            &mut j,
            vec![
                (None, Sided::This(json!({"id": "a", "ts": 1_000}))),
                // The watermark at 2000 still lets an other record at 2000 match.
                (Some(2_000), Sided::Other(json!({"order": "a", "ts": 2_000}))),
                // At 2001 this side's record is gone, and a record at 1500 is late.
                (Some(2_001), Sided::Other(json!({"order": "a", "ts": 1_500}))),
            ],
        );
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(late, 1);
        assert!(empty, "at 2001 no record of either side can match the ones that waited");
    }

    /// This side at 1000 (matched by the other's 1500) and 5000 (alone);
    /// the other's at 1500 and 9000 (alone); `before` 0, `after` 1s.
    fn outer_run(join_type: &str) -> (Vec<Row>, bool, i64) {
        let mut j = outer("0s", "1s", join_type);
        let (rows, late, empty) = run_to(
            &mut j,
            vec![
                (None, Sided::This(json!({"id": "a", "ts": 1_000, "n": 1}))),
                (None, Sided::Other(json!({"order": "a", "ts": 1_500, "s": "x"}))),
                (Some(1_500), Sided::This(json!({"id": "a", "ts": 5_000, "n": 2}))),
                (Some(4_000), Sided::Other(json!({"order": "a", "ts": 9_000, "s": "z"}))),
            ],
            Some(20_000),
        );
        assert_eq!(late, 0);
        (rows, empty, j.watermark_delay())
    }

    fn alone(rows: &[Row]) -> Vec<Row> {
        rows[1..].to_vec()
    }

    #[test]
    fn an_inner_join_emits_only_pairs_and_keeps_its_watermark() {
        let (rows, empty, delay) = outer_run("inner");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(empty);
        assert_eq!(delay, 0);
    }

    #[test]
    fn a_left_join_emits_this_sides_unmatched_record_with_the_others_fields_null_when_it_leaves() {
        let (rows, empty, delay) = outer_run("left");
        assert_eq!(rows[0]["ships_s"], json!("x"), "the pair comes first: {rows:?}");
        let want = json!({"id": "a", "ts": 5_000, "n": 2, "ships_order": null, "ships_ts": null, "ships_s": null});
        assert_eq!(alone(&rows), vec![want]);
        assert!(empty);
        assert_eq!(delay, 1_001, "held back by the longer bound, so the record at 5000 is not late after it");
    }

    #[test]
    fn a_right_join_emits_the_others_unmatched_record_with_its_key_and_time_in_this_sides_fields() {
        let (rows, _, _) = outer_run("right");
        let want = json!({"id": "a", "ts": 9_000, "n": null, "ships_order": "a", "ships_ts": 9_000, "ships_s": "z"});
        assert_eq!(alone(&rows), vec![want]);
    }

    #[test]
    fn a_full_join_emits_unmatched_records_of_both_sides_once_each() {
        let (rows, _, _) = outer_run("full");
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[1]["n"], json!(2));
        assert_eq!(rows[2]["ships_s"], json!("z"));
    }
}
