//! `temporalJoin`: each record joined with the version of its key's row in
//! a versioned table, the latest record of the table's stream with that key
//! at or before the record's event time (Flink's event-time temporal join).
//!
//! A record waits until the watermark reaches its event time: by then every
//! version up to that time has arrived, so the version chosen does not
//! depend on how the two streams interleave, and a replay after a restore
//! chooses the same. Versions older than the one in effect at the watermark
//! can no longer be chosen and are dropped; the one in effect stays, as the
//! table's row for the records still to come.
//!
//! By processing time ([`LatestJoin`]) a record takes its key's latest row
//! as it arrives, and nothing waits: which row that is depends on how the
//! two streams interleave, as in Flink, and a replay after a restore may
//! choose another for the records after the checkpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::join::{time_of, Sided};
use super::window::{LateTo, Routed};
use crate::manifest::{JoinedSource, TemporalJoinSpec, TemporalJoinType};
use crate::operators::{EventTimeFunction, Timers};
use crate::record::Row;
use crate::task::TaskError;

/// A key's table versions and the records waiting for the watermark, each
/// as JSON text (keyed state is encoded without a self-describing format).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Versioned {
    /// The table's rows by the time they take effect.
    versions: BTreeMap<i64, String>,
    /// This stream's records by event time.
    waiting: BTreeMap<i64, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct TemporalJoin {
    this_time: String,
    other_time: String,
    prefix: String,
    keep_unmatched: bool,
    /// The table's fields, null in a record without a version.
    other_fields: Vec<String>,
    late: LateTo,
}

impl TemporalJoin {
    /// `time`: the pipeline's event-time field.
    pub fn new(spec: &TemporalJoinSpec, time: &str, late: LateTo) -> TemporalJoin {
        TemporalJoin {
            this_time: time.into(),
            other_time: spec.event_time_field(time).into(),
            prefix: spec.prefix(),
            keep_unmatched: spec.join_type == TemporalJoinType::Left,
            other_fields: spec.schema.iter().flatten().map(|f| f.name.clone()).collect(),
            late,
        }
    }

    /// `this` with the version's fields under the prefix, or nulls.
    fn joined(&self, this: Row, version: Option<Row>) -> Row {
        let mut out = this;
        if let Some(fields) = out.as_object_mut() {
            match version.as_ref().and_then(Value::as_object) {
                Some(theirs) => {
                    for (name, value) in theirs {
                        fields.insert(format!("{}{name}", self.prefix), value.clone());
                    }
                }
                None => {
                    for name in &self.other_fields {
                        fields.insert(format!("{}{name}", self.prefix), Value::Null);
                    }
                }
            }
        }
        out
    }
}

fn parse(text: &str) -> Result<Row, TaskError> {
    super::read_back(text, "temporalJoin", "a record")
}

impl EventTimeFunction<String, Sided, Routed> for TemporalJoin {
    type State = Versioned;

    fn process(
        &mut self,
        key: &String,
        record: Sided,
        state: &mut Versioned,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let (row, this_side) = record.split();
        let ts = time_of(&row, if this_side { &self.this_time } else { &self.other_time }, key)?;
        // Records at the watermark were joined when it came, so a version
        // there is too late to take part; a record there still finds the
        // version in effect, which is kept.
        let behind = timers.watermark().is_some_and(|w| if this_side { ts < w } else { ts <= w });
        if behind {
            let why = if this_side {
                "so the version of the table in effect then may be gone (temporalJoin)"
            } else {
                "so records at or after that time were joined without this version (temporalJoin)"
            };
            self.late.late(row, ts, why, timers, out);
            return Ok(());
        }
        let text = row.to_string();
        if this_side {
            state.waiting.entry(ts).or_default().push(text);
        } else {
            // Two versions at one time: the later to arrive wins.
            state.versions.insert(ts, text);
        }
        // A version's timer drops the versions it replaces.
        timers.register(ts);
        Ok(())
    }

    fn on_timer(
        &mut self,
        _key: &String,
        time: i64,
        state: &mut Versioned,
        _timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        // Timers fire in time order: records before `time` have left.
        if let Some(records) = state.waiting.remove(&time) {
            let version = state.versions.range(..=time).next_back().map(|(_, v)| parse(v)).transpose()?;
            for text in records {
                if version.is_some() || self.keep_unmatched {
                    out.push(Ok(self.joined(parse(&text)?, version.clone())));
                }
            }
        }
        if let Some(&current) = state.versions.range(..=time).next_back().map(|(t, _)| t) {
            state.versions = state.versions.split_off(&current);
        }
        Ok(())
    }

    fn is_empty(&self, state: &Versioned) -> bool {
        state.versions.is_empty() && state.waiting.is_empty()
    }
}

/// The temporal join by processing time: each record with the latest row
/// of its key's table.
#[derive(Debug, Clone)]
pub struct LatestJoin(TemporalJoin);

impl LatestJoin {
    pub fn new(spec: &TemporalJoinSpec) -> LatestJoin {
        // Nothing is late: nothing waits for a watermark.
        LatestJoin(TemporalJoin::new(spec, "", LateTo(None)))
    }
}

/// A keyed function with timers, though it sets none: so that the keys of
/// records that found no row keep no state.
impl EventTimeFunction<String, Sided, Row> for LatestJoin {
    /// The key's latest row, as JSON text.
    type State = Option<String>;

    fn process(
        &mut self,
        _key: &String,
        record: Sided,
        latest: &mut Option<String>,
        _timers: &mut Timers,
        out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        match record {
            Sided::Other(row) => *latest = Some(row.to_string()),
            Sided::This(row) => {
                let version = latest.as_deref().map(parse).transpose()?;
                if version.is_some() || self.0.keep_unmatched {
                    out.push(self.0.joined(row, version));
                }
            }
        }
        Ok(())
    }

    fn is_empty(&self, latest: &Option<String>) -> bool {
        latest.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::event_time::drive;
    use serde_json::json;

    fn join(join_type: &str) -> TemporalJoin {
        let spec: TemporalJoinSpec = serde_json::from_value(json!({
            "source": {"id": "rates", "generator": {"keys": 1}},
            "schema": [{"name": "currency", "type": "string"}, {"name": "rate", "type": "int64"}, {"name": "at", "type": "timestamp"}],
            "eventTimeField": "at",
            "key": "currency",
            "type": join_type,
        }))
        .unwrap();
        TemporalJoin::new(&spec, "ts", LateTo(Some("spec.pipeline.steps[0].temporalJoin".into())))
    }

    fn order(id: u64, ts: i64) -> Sided {
        Sided::This(json!({"id": id, "currency": "eur", "ts": ts}))
    }

    fn rate(rate: i64, at: i64) -> Sided {
        Sided::Other(json!({"currency": "eur", "rate": rate, "at": at}))
    }

    fn described(out: &[Routed]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Ok(row) => format!("{}:{}", row["id"], row["rates_rate"]),
                Err(bad) => format!("late {}", bad.raw),
            })
            .collect()
    }

    #[test]
    fn each_record_takes_the_version_in_effect_at_its_time_whatever_order_they_arrive_in() {
        let mut j = join("inner");
        let steps = vec![
            // Arrives before the version that is in effect at its time.
            (None, order(1, 150)),
            (None, rate(10, 100)),
            (None, rate(20, 200)),
            (None, order(2, 250)),
            (None, order(3, 200)),
            (None, order(4, 199)),
            // Before any version: dropped by an inner join.
            (None, order(5, 50)),
        ];
        let (out, late, _) = drive(&mut j, steps, Some(1_000));
        let mut got = described(&out);
        got.sort();
        assert_eq!(got, ["1:10", "2:20", "3:20", "4:10"]);
        assert_eq!(late, 0);
    }

    #[test]
    fn a_left_join_keeps_records_without_a_version_and_late_ones_are_routed_not_joined() {
        let mut j = join("left");
        let steps = vec![
            (None, order(1, 50)),
            (None, rate(10, 100)),
            (Some(120), order(2, 130)),
            // The watermark passed 110: an order there may have lost its version.
            (None, order(3, 110)),
            // A version at or behind the watermark came after the records it would have joined.
            (None, rate(99, 120)),
            (Some(300), rate(30, 310)),
        ];
        let (out, _, empty) = drive(&mut j, steps, Some(400));
        let got = described(&out);
        assert_eq!(got[0], "1:null");
        assert!(got.contains(&"2:10".to_string()), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("late") && g.contains("\"id\":3")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("late") && g.contains("99")), "{got:?}");
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(!empty, "the version in effect stays for the records to come");
    }

    #[test]
    fn by_processing_time_a_record_takes_its_keys_latest_row_on_arrival_and_a_left_join_keeps_one_without() {
        for (join_type, want) in [("inner", vec!["2:10", "3:20"]), ("left", vec!["1:null", "2:10", "3:20"])] {
            let spec: TemporalJoinSpec = serde_json::from_value(json!({
                "source": {"id": "rates", "generator": {"keys": 1}},
                "schema": [{"name": "currency", "type": "string"}, {"name": "rate", "type": "int64"}],
                "key": "currency",
                "type": join_type,
                "time": "ProcessingTime",
            }))
            .unwrap();
            let mut j = LatestJoin::new(&spec);
            // Event times play no part: order 3 is stamped first.
            let steps = [order(1, 300), rate(10, 0), order(2, 200), rate(20, 0), order(3, 100)];
            let (out, _, _) = drive(&mut j, steps.into_iter().map(|r| (None, r)).collect(), None);
            let got: Vec<String> = out.iter().map(|r| format!("{}:{}", r["id"], r["rates_rate"])).collect();
            assert_eq!(got, want, "{join_type}");
        }
    }

    #[test]
    fn versions_replaced_before_the_watermark_are_dropped_and_the_one_in_effect_kept() {
        let mut j = join("inner");
        let mut state = Versioned::default();
        let mut out = Vec::new();
        for (i, at) in [100, 200, 300].into_iter().enumerate() {
            let mut set = std::collections::BTreeSet::new();
            let mut added = Vec::new();
            let (mut late, mut processing) = (0, Vec::new());
            let mut timers = Timers::for_test((None, 0), &mut set, &mut added, &mut late, &mut processing);
            j.process(&"eur".into(), rate(i as i64, at), &mut state, &mut timers, &mut out).unwrap();
        }
        let mut set = std::collections::BTreeSet::new();
        let mut added = Vec::new();
        let (mut late, mut processing) = (0, Vec::new());
        let mut timers = Timers::for_test((Some(250), 0), &mut set, &mut added, &mut late, &mut processing);
        j.on_timer(&"eur".into(), 250, &mut state, &mut timers, &mut out).unwrap();
        assert_eq!(state.versions.keys().copied().collect::<Vec<_>>(), [200, 300]);
    }
}
