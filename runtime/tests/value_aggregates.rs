//! Aggregates that keep values, not only numbers: `countDistinct`, `first`
//! and `last`, in windows (ordered by event time) and running per key
//! (ordered as records arrive), exact through seeded crashes whose restores
//! read these values back from checkpoints.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use serde_json::{json, Value};
use weir_runtime::connectors::file_sink::read_committed;

const N: i64 = 60_000;

/// Record `i`: its key changes every 10 records; every 13th has no user.
fn record(i: i64) -> Value {
    let user = if i % 13 == 5 { Value::Null } else { json!(format!("u{}", (i * 7) % 17)) };
    json!({"key": format!("k{}", (i / 10) % 3), "ts": i, "v": i, "user": user})
}

/// The input in file order: event time `i`, except that each window's first
/// two and last two records come swapped, so the first and last to arrive
/// are not the first and last in event time.
fn input(dir: &Path) -> Vec<i64> {
    let mut order: Vec<i64> = (0..N).collect();
    for start in (0..N).step_by(100) {
        order.swap(start as usize, start as usize + 1);
        order.swap(start as usize + 98, start as usize + 99);
    }
    let lines: Vec<String> = order.iter().map(|&i| record(i).to_string()).collect();
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    order
}

fn job(dir: &Path, steps: &str) -> weir_runtime::manifest::StreamJob {
    let pipeline = format!(
        r#"    source: {{file: {{path: "{d}/in.jsonl"}}}}
    eventTime: {{field: ts, maxOutOfOrderness: 50ms}}
    steps:
      - keyBy: {{field: key}}
{steps}"#,
        d = dir.display()
    );
    pipeline_job(dir, "values", 2, &pipeline).expect("test manifest is valid")
}

#[derive(Debug, Default, PartialEq)]
struct Want {
    count: u64,
    users: BTreeSet<String>,
    first: Option<(i64, Value)>,
    last: Option<(i64, Value)>,
}

impl Want {
    fn add(&mut self, order: i64, r: &Value) {
        self.count += 1;
        if let Some(u) = r["user"].as_str() {
            self.users.insert(u.to_string());
        }
        if self.first.as_ref().is_none_or(|(o, _)| order < *o) {
            self.first = Some((order, r["v"].clone()));
        }
        if self.last.as_ref().is_none_or(|(o, _)| order >= *o) {
            self.last = Some((order, r["v"].clone()));
        }
    }

    fn row(&self) -> Value {
        let v = |kept: &Option<(i64, Value)>| kept.as_ref().map_or(Value::Null, |(_, v)| v.clone());
        json!({"count": self.count, "count_distinct_user": self.users.len(), "first_v": v(&self.first), "last_v": v(&self.last)})
    }
}

/// `row` without the fields named in `drop`.
fn without(row: &Value, drop: &[&str]) -> Value {
    let mut row = row.clone();
    if let Some(o) = row.as_object_mut() {
        for d in drop {
            o.remove(*d);
        }
    }
    row
}

#[test]
fn count_distinct_first_and_last_per_tumbling_window_follow_event_time_exactly_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    input(dir.path());
    let step = "      - window: {size: 100ms, aggregate: {count: true, countDistinct: [user], first: [v], last: [v]}}";
    run_through_crashes(&job(dir.path(), step), 0x5eed_d157_1c70_0001);

    let mut want: BTreeMap<(String, i64), Want> = BTreeMap::new();
    for i in 0..N {
        let r = record(i);
        let key = r["key"].as_str().unwrap().to_string();
        want.entry((key, i - i % 100)).or_default().add(i, &r);
    }
    let mut got: BTreeMap<(String, i64), Value> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let at = (row["key"].as_str().unwrap().to_string(), row["window_start"].as_i64().unwrap());
        assert_eq!(row["window_end"].as_i64(), Some(at.1 + 100), "{row}");
        let previous = got.insert(at.clone(), without(&row, &["key", "window_start", "window_end"]));
        assert!(previous.is_none(), "window {at:?} was emitted twice");
    }
    assert_eq!(got.len(), want.len(), "one row per key and window");
    for (at, w) in &want {
        assert_eq!(got.get(at), Some(&w.row()), "window {at:?}");
    }
    // The swaps put ts 1 before ts 0 and ts 99 before ts 98 in the file.
    assert_eq!(got[&("k0".to_string(), 0)]["first_v"], 0, "first in event time, not in arrival");
    assert_eq!(got[&("k0".to_string(), 0)]["last_v"], 99, "last in event time, not in arrival");
}

#[test]
fn running_count_distinct_first_and_last_follow_arrival_and_every_update_is_committed_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let order = input(dir.path());
    let step = "      - aggregate: {count: true, countDistinct: [user], first: [v], last: [v]}";
    run_through_crashes(&job(dir.path(), step), 0x5eed_d157_1c70_0002);

    // One file is one split: a key's records arrive in file order.
    let mut want: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut running: BTreeMap<String, Want> = BTreeMap::new();
    for (arrival, &i) in order.iter().enumerate() {
        let r = record(i);
        let key = r["key"].as_str().unwrap().to_string();
        let w = running.entry(key.clone()).or_default();
        w.add(arrival as i64, &r);
        want.entry(key).or_default().push(w.row());
    }
    let mut got: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let key = row["key"].as_str().unwrap().to_string();
        let count = row["count"].as_u64().unwrap();
        let previous = got.entry(key.clone()).or_default().insert(count, without(&row, &["key"]));
        assert!(previous.is_none(), "{key}: the update for count {count} was committed twice");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (key, updates) in &want {
        let committed: Vec<Value> = got[key].values().cloned().collect();
        assert_eq!(committed.len(), updates.len(), "{key}: every record counted once");
        assert_eq!(&committed, updates, "{key}: each update as the records in arrival order make it");
    }
}
