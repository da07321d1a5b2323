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
use crate::manifest::IntervalJoinSpec;
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

/// The records of one key waiting for a match, by event time, as JSON text
/// (keyed state is encoded without a self-describing format).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Waiting {
    this: Vec<(i64, String)>,
    other: Vec<(i64, String)>,
}

#[derive(Debug, Clone)]
pub struct IntervalJoin {
    this_time: String,
    other_time: String,
    before: i64,
    after: i64,
    prefix: String,
    late: LateTo,
}

impl IntervalJoin {
    /// `time`: the pipeline's event-time field.
    pub fn new(spec: &IntervalJoinSpec, time: &str, late: LateTo) -> IntervalJoin {
        IntervalJoin {
            this_time: time.into(),
            other_time: spec.event_time_field(time).into(),
            before: spec.before.millis(),
            after: spec.after.millis(),
            prefix: spec.prefix(),
            late,
        }
    }

    /// This side's record `this` (at `t`) with the other side's `other` (at `o`).
    fn pair(&self, this: &Row, t: i64, other: &Row, o: i64) -> Row {
        let mut out = this.clone();
        if let (Some(fields), Some(theirs)) = (out.as_object_mut(), other.as_object()) {
            for (name, value) in theirs {
                fields.insert(format!("{}{name}", self.prefix), value.clone());
            }
            if o > t {
                let later = theirs.get(&self.other_time).cloned().unwrap_or(Value::from(o));
                fields.insert(self.this_time.clone(), later);
            }
        }
        out
    }
}

fn parse(text: &str) -> Result<Row, TaskError> {
    serde_json::from_str(text).map_err(|e| TaskError::User {
        function: "intervalJoin".into(),
        reason: format!("a waiting record in the checkpoint is not JSON: {e}"),
    })
}

/// The event time of a record; one without it was refused before the join.
fn time_of(row: &Row, field: &str, key: &str) -> Result<i64, TaskError> {
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
        let (row, this_side) = match record {
            Sided::This(row) => (row, true),
            Sided::Other(row) => (row, false),
        };
        let ts = time_of(&row, if this_side { &self.this_time } else { &self.other_time }, key)?;
        if timers.watermark().is_some_and(|w| ts < w) {
            let why = "so the records it would join with may be gone (intervalJoin)";
            self.late.late(row, ts, why, timers, out);
            return Ok(());
        }
        // Matches: other.ts in [this.ts - before, this.ts + after].
        if this_side {
            let (lo, hi) = (ts.saturating_sub(self.before), ts.saturating_add(self.after));
            for (o, text) in waiting.other.iter().filter(|(o, _)| (lo..=hi).contains(o)) {
                out.push(Ok(self.pair(&row, ts, &parse(text)?, *o)));
            }
            let until = ts.saturating_add(self.after).saturating_add(1);
            waiting.this.push((ts, row.to_string()));
            timers.register(until);
        } else {
            let (lo, hi) = (ts.saturating_sub(self.after), ts.saturating_add(self.before));
            for (t, text) in waiting.this.iter().filter(|(t, _)| (lo..=hi).contains(t)) {
                out.push(Ok(self.pair(&parse(text)?, *t, &row, ts)));
            }
            let until = ts.saturating_add(self.before).saturating_add(1);
            waiting.other.push((ts, row.to_string()));
            timers.register(until);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _key: &String,
        time: i64,
        waiting: &mut Waiting,
        _timers: &mut Timers,
        _out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        // The watermark is at `time`: no record before it may still come.
        waiting.this.retain(|(t, _)| t.saturating_add(self.after).saturating_add(1) > time);
        waiting.other.retain(|(o, _)| o.saturating_add(self.before).saturating_add(1) > time);
        Ok(())
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
        let spec: IntervalJoinSpec = serde_json::from_value(json!({
            "source": {"id": "ships", "generator": {"keys": 1}},
            "key": "id",
            "before": before,
            "after": after,
        }))
        .unwrap();
        IntervalJoin::new(&spec, "ts", LateTo(None))
    }

    fn run(join: &mut IntervalJoin, steps: Vec<(Option<i64>, Sided)>) -> (Vec<Row>, u64, bool) {
        let (out, late, empty) = drive(join, steps, None);
        (out.into_iter().map(|r| r.unwrap()).collect(), late, empty)
    }

    #[test]
    fn each_pair_within_the_interval_is_emitted_once_whichever_side_comes_first() {
        let mut j = join("1s", "2s");
        let (rows, late, _) = run(
            &mut j,
            vec![
                (None, Sided::This(json!({"id": "a", "ts": 10_000, "n": 1}))),
                (None, Sided::Other(json!({"id": "a", "ts": 11_500, "s": "x"}))),
                (None, Sided::Other(json!({"id": "a", "ts": 8_999, "s": "too early"}))),
                (None, Sided::Other(json!({"id": "a", "ts": 9_000, "s": "y"}))),
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
                (Some(2_000), Sided::Other(json!({"id": "a", "ts": 2_000}))),
                // At 2001 this side's record is gone, and a record at 1500 is late.
                (Some(2_001), Sided::Other(json!({"id": "a", "ts": 1_500}))),
            ],
        );
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(late, 1);
        assert!(empty, "at 2001 no record of either side can match the ones that waited");
    }
}
