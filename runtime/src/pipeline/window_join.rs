//! `windowJoin`: the records of two streams with equal keys in the same
//! event-time window, joined when the watermark passes the window's end
//! (Flink's window join).
//!
//! A key keeps the records of both streams, each once however many
//! sliding windows hold it, until the last window holding it has fired.
//! Each window's timer fires once per key, when no record of it may still
//! come: records whose every window fired are late (dropped, or handed to
//! the error policy). So a window's output is complete and emitted once,
//! and, being output of a timer, is emitted again from the restored state
//! if a crash comes before the checkpoint after it (the sink commits it
//! once).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::join::{time_of, Sided};
use super::window::{Hop, LateTo, Routed};
use crate::manifest::{JoinedSource, WindowJoinSpec, WindowJoinType};
use crate::operators::{EventTimeFunction, Timers};
use crate::record::Row;
use crate::task::TaskError;

/// The records of one key waiting for their windows to fire, each as its
/// event time and JSON text (keyed state is encoded without a
/// self-describing format), in arrival order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Panes {
    this: Vec<(i64, String)>,
    other: Vec<(i64, String)>,
}

#[derive(Debug, Clone)]
pub struct WindowJoin {
    this_time: String,
    other_time: String,
    this_key: String,
    other_key: String,
    hop: Hop,
    prefix: String,
    join_type: WindowJoinType,
    /// The other stream's fields, null in this stream's unmatched records.
    other_fields: Vec<String>,
    /// This stream's fields, null in the other's unmatched records.
    this_fields: Vec<String>,
    late: LateTo,
}

/// The window `[start, end)` a timer fires, and the event time of its
/// output: its last instant.
#[derive(Clone, Copy)]
struct Bounds {
    start: i64,
    end: i64,
}

impl WindowJoin {
    /// `time`: the pipeline's event-time field; `this_fields`: the names of
    /// this stream's fields where known.
    pub fn new(spec: &WindowJoinSpec, time: &str, this_fields: Vec<String>, late: LateTo) -> WindowJoin {
        let (size, slide) = spec.size_and_slide();
        WindowJoin {
            this_time: time.into(),
            other_time: spec.event_time_field(time).into(),
            this_key: spec.key.clone(),
            other_key: spec.other_key().into(),
            hop: Hop::new(size, slide),
            prefix: spec.prefix(),
            join_type: spec.join_type,
            other_fields: spec.schema.iter().flatten().map(|f| f.name.clone()).collect(),
            this_fields,
            late,
        }
    }

    /// `row` with the window's bounds, and its event time the window's
    /// last instant.
    fn stamped(&self, mut row: Map<String, Value>, w: Bounds) -> Row {
        row.insert("window_start".into(), Value::from(w.start));
        row.insert("window_end".into(), Value::from(w.end));
        row.insert(self.this_time.clone(), Value::from(w.end - 1));
        Value::Object(row)
    }

    fn pair(&self, this: &Row, other: &Row, w: Bounds) -> Row {
        let mut out = this.as_object().cloned().unwrap_or_default();
        for (name, value) in other.as_object().into_iter().flatten() {
            out.insert(format!("{}{name}", self.prefix), value.clone());
        }
        self.stamped(out, w)
    }

    /// This side's record without a match; in an outer join with the
    /// other's fields null.
    fn this_alone(&self, this: &Row, w: Bounds) -> Row {
        let mut out = this.as_object().cloned().unwrap_or_default();
        if self.join_type.pairs() {
            for name in &self.other_fields {
                out.insert(format!("{}{name}", self.prefix), Value::Null);
            }
        }
        self.stamped(out, w)
    }

    /// The other side's record without a match: its fields under the
    /// prefix, its key also in this side's key field, this side's other
    /// fields null.
    fn other_alone(&self, other: &Row, w: Bounds) -> Row {
        let mut out: Map<String, Value> = self.this_fields.iter().map(|name| (name.clone(), Value::Null)).collect();
        if let Some(theirs) = other.as_object() {
            for (name, value) in theirs {
                out.insert(format!("{}{name}", self.prefix), value.clone());
            }
            out.insert(self.this_key.clone(), theirs.get(&self.other_key).cloned().unwrap_or(Value::Null));
        }
        self.stamped(out, w)
    }
}

/// The records of `held` in the window, parsed.
fn in_window(held: &[(i64, String)], w: Bounds) -> Result<Vec<Row>, TaskError> {
    held.iter()
        .filter(|(ts, _)| (w.start..w.end).contains(ts))
        .map(|(_, text)| super::read_back(text, "windowJoin", "a waiting record"))
        .collect()
}

impl EventTimeFunction<String, Sided, Routed> for WindowJoin {
    type State = Panes;

    fn process(
        &mut self,
        key: &String,
        record: Sided,
        panes: &mut Panes,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let (row, this_side) = record.split();
        let ts = time_of(&row, if this_side { &self.this_time } else { &self.other_time }, key)?;
        let watermark = timers.watermark();
        let open = |end: &i64| watermark.is_none_or(|w| w < end - 1);
        let mut any = false;
        for (_, end) in self.hop.windows(ts).filter(|(_, end)| open(end)) {
            timers.register(end - 1);
            any = true;
        }
        if !any {
            self.late.late(row, ts, "so every window it belongs to had fired (windowJoin)", timers, out);
            return Ok(());
        }
        let side = if this_side { &mut panes.this } else { &mut panes.other };
        side.push((ts, row.to_string()));
        Ok(())
    }

    fn on_timer(
        &mut self,
        _key: &String,
        time: i64,
        panes: &mut Panes,
        _timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        // The window whose last instant this is: every record of it came.
        let w = Bounds { start: time.saturating_add(1).saturating_sub(self.hop.size), end: time.saturating_add(1) };
        let (this, other) = (in_window(&panes.this, w)?, in_window(&panes.other, w)?);
        match self.join_type {
            WindowJoinType::Semi if !other.is_empty() => out.extend(this.iter().map(|t| Ok(self.this_alone(t, w)))),
            WindowJoinType::Anti if other.is_empty() => out.extend(this.iter().map(|t| Ok(self.this_alone(t, w)))),
            WindowJoinType::Semi | WindowJoinType::Anti => {}
            _ => {
                for t in &this {
                    out.extend(other.iter().map(|o| Ok(self.pair(t, o, w))));
                }
                if other.is_empty() && self.join_type.keeps_this() {
                    out.extend(this.iter().map(|t| Ok(self.this_alone(t, w))));
                }
                if this.is_empty() && self.join_type.keeps_other() {
                    out.extend(other.iter().map(|o| Ok(self.other_alone(o, w))));
                }
            }
        }
        // Records whose last window this was leave.
        let done = |(ts, _): &(i64, String)| self.hop.last_end(*ts) <= w.end;
        panes.this.retain(|r| !done(r));
        panes.other.retain(|r| !done(r));
        Ok(())
    }

    fn is_empty(&self, panes: &Panes) -> bool {
        panes.this.is_empty() && panes.other.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::event_time::drive;
    use serde_json::json;

    fn join(size: &str, slide: Option<&str>, join_type: &str) -> WindowJoin {
        let mut spec = json!({
            "source": {"id": "auctions", "generator": {"keys": 1}},
            "schema": [{"name": "seller", "type": "int64"}, {"name": "ts", "type": "timestamp"}, {"name": "a", "type": "string"}],
            "key": "id",
            "otherKey": "seller",
            "size": size,
            "type": join_type,
        });
        if let Some(slide) = slide {
            spec["slide"] = json!(slide);
        }
        let spec: WindowJoinSpec = serde_json::from_value(spec).unwrap();
        WindowJoin::new(&spec, "ts", vec!["id".into(), "ts".into(), "p".into()], LateTo(None))
    }

    fn person(ts: i64, p: &str) -> Sided {
        Sided::This(json!({"id": 7, "ts": ts, "p": p}))
    }

    fn auction(ts: i64, a: &str) -> Sided {
        Sided::Other(json!({"seller": 7, "ts": ts, "a": a}))
    }

    fn run(j: &mut WindowJoin, steps: Vec<(Option<i64>, Sided)>) -> (Vec<Row>, u64, bool) {
        let (out, late, empty) = drive(j, steps, Some(1_000_000));
        (out.into_iter().map(|r| r.unwrap()).collect(), late, empty)
    }

    /// Persons at 1000 (x) and 12000 (y); auctions at 9999 (a), 10000 (b)
    /// and 3000 (c); 10 s tumbling windows.
    fn tumbling(join_type: &str) -> Vec<Row> {
        let mut j = join("10s", None, join_type);
        let (rows, late, empty) = run(
            &mut j,
            vec![
                (None, person(1_000, "x")),
                (None, auction(9_999, "a")),
                (None, auction(10_000, "b")),
                (None, person(12_000, "y")),
                (None, auction(3_000, "c")),
            ],
        );
        assert_eq!(late, 0);
        assert!(empty, "every window fired, so nothing waits");
        rows
    }

    fn short(rows: &[Row]) -> Vec<(Value, Value, i64, i64)> {
        rows.iter()
            .map(|r| {
                (
                    r["p"].clone(),
                    r["auctions_a"].clone(),
                    r["window_start"].as_i64().unwrap(),
                    r["ts"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn an_inner_window_join_emits_each_pair_of_a_window_once_stamped_with_the_windows_last_instant() {
        let rows = tumbling("inner");
        assert_eq!(
            short(&rows),
            vec![
                (json!("x"), json!("a"), 0, 9_999),
                (json!("x"), json!("c"), 0, 9_999),
                (json!("y"), json!("b"), 10_000, 19_999)
            ]
        );
        assert_eq!(rows[0]["window_end"], json!(10_000));
        assert_eq!(rows[0]["auctions_ts"], json!(9_999), "the other record's own time stays under the prefix");
    }

    #[test]
    fn a_semi_join_emits_each_record_with_a_match_once_and_an_anti_join_those_without() {
        let mut j = join("10s", None, "semi");
        let (rows, _, _) = run(
            &mut j,
            vec![
                (None, person(1_000, "x")),
                (None, auction(2_000, "a")),
                (None, auction(3_000, "b")),
                (None, person(15_000, "y")),
            ],
        );
        assert_eq!(rows, vec![json!({"id": 7, "ts": 9_999, "p": "x", "window_start": 0, "window_end": 10_000})]);
        let mut j = join("10s", None, "anti");
        let (rows, _, _) =
            run(&mut j, vec![(None, person(1_000, "x")), (None, auction(2_000, "a")), (None, person(15_000, "y"))]);
        assert_eq!(rows, vec![json!({"id": 7, "ts": 19_999, "p": "y", "window_start": 10_000, "window_end": 20_000})]);
    }

    #[test]
    fn outer_window_joins_emit_the_unmatched_side_of_a_window_with_the_missing_fields_null() {
        let mut j = join("10s", None, "full");
        let (rows, _, _) = run(&mut j, vec![(None, person(1_000, "x")), (None, auction(12_000, "a"))]);
        assert_eq!(
            rows,
            vec![
                json!({"id": 7, "ts": 9_999, "p": "x", "window_start": 0, "window_end": 10_000,
                       "auctions_seller": null, "auctions_ts": null, "auctions_a": null}),
                json!({"id": 7, "ts": 19_999, "p": null, "window_start": 10_000, "window_end": 20_000,
                       "auctions_seller": 7, "auctions_ts": 12_000, "auctions_a": "a"}),
            ]
        );
        let mut j = join("10s", None, "left");
        let (rows, _, _) = run(&mut j, vec![(None, person(1_000, "x")), (None, auction(12_000, "a"))]);
        assert_eq!(rows.len(), 1, "only this side's unmatched record: {rows:?}");
        let mut j = join("10s", None, "right");
        let (rows, _, _) = run(&mut j, vec![(None, person(1_000, "x")), (None, auction(12_000, "a"))]);
        assert_eq!(short(&rows), vec![(Value::Null, json!("a"), 10_000, 19_999)]);
    }

    #[test]
    fn sliding_windows_join_a_pair_in_every_window_holding_both_and_keep_each_record_once() {
        // 10 s windows every 5 s: 6000 and 9000 share [0, 10000) and [5000, 15000).
        let mut j = join("10s", Some("5s"), "inner");
        let (rows, _, empty) =
            run(&mut j, vec![(None, person(6_000, "x")), (None, auction(9_000, "a")), (None, auction(11_000, "b"))]);
        let got: Vec<(i64, Value)> =
            rows.iter().map(|r| (r["window_start"].as_i64().unwrap(), r["auctions_a"].clone())).collect();
        assert_eq!(got, vec![(0, json!("a")), (5_000, json!("a")), (5_000, json!("b"))]);
        assert!(empty);
    }

    #[test]
    fn a_record_whose_every_window_fired_is_late_and_one_with_an_open_window_still_joins_there() {
        let mut j = join("10s", Some("5s"), "inner");
        let (rows, late, _) = run(
            &mut j,
            vec![
                (None, auction(12_000, "a")),
                // [0, 10000) fired at 9999; 9500 is still in [5000, 15000).
                (Some(9_999), person(9_500, "x")),
                // 4000's windows end at 5000 and 10000: both fired.
                (None, person(4_000, "late")),
            ],
        );
        assert_eq!(short(&rows), vec![(json!("x"), json!("a"), 5_000, 14_999)]);
        assert_eq!(late, 1);
    }
}
