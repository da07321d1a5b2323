//! `join`: records of two streams with equal keys, whenever each came
//! (Flink SQL's regular join, without a time bound).
//!
//! Every record of both streams stays in keyed state, so a pair is found
//! when the second of its two records arrives, whichever stream that is,
//! and is emitted then, once. Nothing waits for a watermark, so nothing is
//! late. Without `stateTtl` the state grows with every record; with it, a
//! record leaves once the wall clock passes its arrival plus the TTL,
//! rounded up to a whole second so that a busy key sets one timer a second
//! rather than one per record. A record past its TTL meets no new match
//! even before its timer has fired.

use serde::{Deserialize, Serialize};

use super::join::{paired, time_of, Sided};
use crate::manifest::{JoinedSource, RegularJoinSpec};
use crate::operators::{EventTimeFunction, Timers};
use crate::record::Row;
use crate::task::TaskError;

/// The records of one key, of both streams.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Kept {
    this: Vec<KeptRecord>,
    other: Vec<KeptRecord>,
}

/// A kept record as JSON text (keyed state is encoded without a
/// self-describing format), and the wall-clock time it leaves at
/// (`i64::MAX`: never).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptRecord {
    text: String,
    until: i64,
}

#[derive(Debug, Clone)]
pub struct RegularJoin {
    prefix: String,
    /// With event time: the pipeline's event-time field and the other
    /// stream's.
    times: Option<(String, String)>,
    /// Milliseconds a record stays, with `stateTtl`.
    ttl: Option<i64>,
}

impl RegularJoin {
    /// `time`: the pipeline's event-time field, if it has one.
    pub fn new(spec: &RegularJoinSpec, time: Option<&str>) -> RegularJoin {
        RegularJoin {
            prefix: spec.prefix(),
            times: time.map(|t| (t.to_string(), spec.event_time_field(t).to_string())),
            ttl: spec.state_ttl.map(|t| i64::try_from(t.get().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// A record's event time when the pipeline has one; `this_side` says
    /// which stream's field holds it.
    fn time(&self, row: &Row, this_side: bool, key: &str) -> Result<Option<i64>, TaskError> {
        let Some((this_time, other_time)) = &self.times else { return Ok(None) };
        time_of(row, if this_side { this_time } else { other_time }, key).map(Some)
    }

    /// `this` with `other`'s fields, and with event time the later of their
    /// times (`t`, `o`).
    fn pair(&self, this: Row, other: &Row, (t, o): (Option<i64>, Option<i64>)) -> Row {
        match (&self.times, t.zip(o)) {
            (Some((this_time, other_time)), Some(times)) => {
                paired(this, other, &self.prefix, times, (this_time, other_time))
            }
            _ => paired(this, other, &self.prefix, (0, 0), ("", "")),
        }
    }
}

fn parse(text: &str) -> Result<Row, TaskError> {
    super::read_back(text, "join", "a kept record")
}

/// The end of the whole second `time` falls in (a time on a second's
/// boundary is its own end).
fn second_up(time: i64) -> i64 {
    time.saturating_add(999).div_euclid(1_000).saturating_mul(1_000)
}

impl EventTimeFunction<String, Sided, Row> for RegularJoin {
    type State = Kept;

    fn process(
        &mut self,
        key: &String,
        record: Sided,
        kept: &mut Kept,
        timers: &mut Timers,
        out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        let (row, this_side) = record.split();
        let now = timers.now();
        let theirs = if this_side { &kept.other } else { &kept.this };
        // The arriving record's time is read once, each kept one's per pair.
        let arriving = self.time(&row, this_side, key)?;
        for held in theirs.iter().filter(|h| h.until > now) {
            let held_row = parse(&held.text)?;
            let held_time = self.time(&held_row, !this_side, key)?;
            out.push(match this_side {
                true => self.pair(row.clone(), &held_row, (arriving, held_time)),
                false => self.pair(held_row, &row, (held_time, arriving)),
            });
        }
        let until = match self.ttl {
            Some(ttl) => {
                let until = second_up(now.saturating_add(ttl));
                timers.register_processing_time(until);
                until
            }
            None => i64::MAX,
        };
        let mine = if this_side { &mut kept.this } else { &mut kept.other };
        mine.push(KeptRecord { text: row.to_string(), until });
        Ok(())
    }

    fn on_processing_timer(
        &mut self,
        _key: &String,
        time: i64,
        kept: &mut Kept,
        _timers: &mut Timers,
        _out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        kept.this.retain(|h| h.until > time);
        kept.other.retain(|h| h.until > time);
        Ok(())
    }

    fn is_empty(&self, kept: &Kept) -> bool {
        kept.this.is_empty() && kept.other.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::event_time::{drive, drive_clock};
    use serde_json::json;

    fn join(extra: serde_json::Value) -> RegularJoinSpec {
        let mut spec = json!({
            "source": {"id": "persons", "generator": {"keys": 1}},
            "key": "seller",
            "otherKey": "id",
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn each_pair_is_emitted_once_when_its_second_record_arrives_from_either_stream() {
        let mut j = RegularJoin::new(&join(json!({"prefix": "p_"})), None);
        let (rows, late, empty) = drive(
            &mut j,
            vec![
                (None, Sided::This(json!({"seller": 7, "a": 1}))),
                (None, Sided::This(json!({"seller": 7, "a": 2}))),
                (None, Sided::Other(json!({"id": 7, "name": "x"}))),
                (None, Sided::This(json!({"seller": 7, "a": 3}))),
                (None, Sided::Other(json!({"id": 7, "name": "y"}))),
            ],
            Some(i64::MAX),
        );
        let pairs: Vec<(i64, &str)> =
            rows.iter().map(|r| (r["a"].as_i64().unwrap(), r["p_name"].as_str().unwrap())).collect();
        assert_eq!(pairs, vec![(1, "x"), (2, "x"), (3, "x"), (1, "y"), (2, "y"), (3, "y")]);
        assert_eq!(rows[0], json!({"seller": 7, "a": 1, "p_id": 7, "p_name": "x"}));
        assert_eq!(late, 0);
        assert!(!empty, "without a TTL every record stays, whatever the watermark");
    }

    #[test]
    fn a_pair_carries_the_later_event_time_of_its_two_records() {
        let spec = join(json!({"eventTimeField": "at"}));
        let mut j = RegularJoin::new(&spec, Some("ts"));
        let (rows, _, _) = drive(
            &mut j,
            vec![
                (None, Sided::Other(json!({"id": 1, "at": 9_000}))),
                (Some(20_000), Sided::This(json!({"seller": 1, "ts": 5_000}))),
                (None, Sided::This(json!({"seller": 1, "ts": 12_000}))),
            ],
            None,
        );
        let times: Vec<i64> = rows.iter().map(|r| r["ts"].as_i64().unwrap()).collect();
        assert_eq!(times, vec![9_000, 12_000], "a record behind the watermark still joins: nothing is late here");
    }

    #[test]
    fn records_leave_after_their_ttl_rounded_up_to_a_second_and_meet_no_match_after_it() {
        let mut j = RegularJoin::new(&join(json!({"stateTtl": "2s"})), None);
        // Clock readings (ms) and records: the person at 10,500 stays until
        // 13,000; the auction at 12,999 meets it, the one at 13,000 not.
        let (rows, empty) = drive_clock(
            &mut j,
            vec![
                (10_500, Some(Sided::Other(json!({"id": 1, "name": "x"})))),
                (12_999, Some(Sided::This(json!({"seller": 1, "a": 1})))),
                (13_000, Some(Sided::This(json!({"seller": 1, "a": 2})))),
                (16_000, None),
            ],
        );
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["a"], json!(1));
        assert!(empty, "at 16,000 every record's TTL has passed and the key holds nothing");
    }

    #[test]
    fn only_inner_joins_are_built_and_a_zero_ttl_is_refused() {
        let errors = join(json!({"type": "left", "stateTtl": "0s"})).own_problems("at");
        assert!(errors[0].starts_with("at.type: `left` is not built for a join without a time bound"), "{errors:?}");
        assert!(errors[1].starts_with("at.stateTtl: expected at least 1s"), "{errors:?}");
        assert!(join(json!({})).own_problems("at").is_empty());
    }
}
