//! SQL expressions in declared pipelines (`filter`, `select`, `keyBy.expr`),
//! evaluated by DataFusion over Arrow batches: exact results through
//! crashes, and records an expression fails on sent to the error policy.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;
use weir_runtime::faults::Faults;
use weir_runtime::manifest::StreamJob;

const KEYS: u64 = 20;

fn expression_job(dir: &Path, count: u64) -> StreamJob {
    let pipeline = format!(
        r#"    source:
      generator: {{keys: {KEYS}, count: {count}, rate: 50000}}
    steps:
      - filter: "value % 3 <> 0 AND key <> 'k7'"
      - select: [key, "value * 2 AS doubled", "CASE WHEN value >= 50 THEN 'high' ELSE 'low' END AS band"]
      - keyBy: {{field: group, expr: "band || '-' || key"}}
      - aggregate: {{count: true, sum: [doubled]}}"#
    );
    pipeline_job(dir, "expressions", 2, &pipeline).expect("test manifest is valid")
}

/// Per group: how many records the filter passes and the sum of `doubled`.
fn expected_groups(count: u64) -> BTreeMap<String, (u64, i64)> {
    let mut want: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for seq in 0..count {
        let (k, v) = generated(seq, KEYS);
        if v % 3 == 0 || k == 7 {
            continue;
        }
        let band = if v >= 50 { "high" } else { "low" };
        let entry = want.entry(format!("{band}-k{k}")).or_default();
        entry.0 += 1;
        entry.1 += 2 * v;
    }
    want
}

/// Every group's running count went 1, 2, .. n exactly once each, and its
/// last row holds the exact sum.
fn check_groups(rows: &[serde_json::Value], want: &BTreeMap<String, (u64, i64)>) {
    let mut seen: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
    for row in rows {
        let group = row["group"].as_str().expect("rows carry the key field").to_string();
        let count = row["count"].as_u64().expect("rows carry count");
        let sum = row["sum_doubled"].as_i64().expect("the sum of an int64 field is an integer");
        let previous = seen.entry(group.clone()).or_default().insert(count, sum);
        assert!(previous.is_none(), "group {group}: the update for count {count} was committed twice");
    }
    let groups: Vec<&String> = seen.keys().collect();
    assert_eq!(groups, want.keys().collect::<Vec<_>>(), "the groups the expressions make");
    for (group, &(n, sum)) in want {
        let updates = &seen[group];
        assert_eq!(updates.len() as u64, n, "group {group}: every passed record counted once");
        assert_eq!(updates.keys().next_back(), Some(&n), "group {group}: counts are 1..{n}");
        assert_eq!(updates[&n], sum, "group {group}: the final sum");
    }
}

#[test]
fn filter_select_and_key_by_expression_results_are_exact_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let job = expression_job(dir.path(), 20_000);
    run_through_crashes(&job, 0x5eed_0fe4_a711_cedd);
    let rows = read_committed(&dir.path().join("out")).unwrap();
    check_groups(&rows, &expected_groups(20_000));
}

#[test]
fn records_an_expression_fails_on_or_of_the_wrong_type_are_dead_lettered_and_the_rest_pass_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"id": 1, "name": "apple", "price": 2.5, "qty": 4}"#,
        r#"{"id": 2, "name": "pear", "price": 10, "qty": 0}"#,
        r#"{"id": 3, "name": "fig", "price": "cheap", "qty": 1}"#,
        r#"{"id": 4, "name": "kiwi", "price": 1.25, "qty": 8, "note": "not in the schema"}"#,
        r#"{"id": 5, "name": "plum", "price": 0.5, "qty": 2}"#,
    ];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: orders}}
spec:
  parallelism: 1
  checkpoints: {{interval: 1s, storage: "file://{d}/checkpoints"}}
  errorPolicy: {{onBadRecord: deadLetter, deadLetterPath: "{d}/dead"}}
  pipeline:
    source: {{file: {{path: "{d}/in.jsonl"}}}}
    schema:
      - {{name: id, type: int64}}
      - {{name: name, type: string}}
      - {{name: price, type: float64}}
      - {{name: qty, type: int64}}
    steps:
      - filter: "name <> 'plum'"
      - select: [id, "upper(name) AS name", "price * qty AS total", "100 / qty AS per"]
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.path().display()
    );
    let job = StreamJob::from_yaml(&yaml).unwrap();
    run_once(&job, Faults::none()).expect("the job finishes");
    let mut out = read_committed(&dir.path().join("out")).unwrap();
    out.sort_by_key(|r| r["id"].as_i64());
    let want = vec![
        serde_json::json!({"id": 1, "name": "APPLE", "total": 10.0, "per": 25}),
        serde_json::json!({"id": 4, "name": "KIWI", "total": 10.0, "per": 12}),
    ];
    assert_eq!(out, want);
    let mut dead = read_committed(&dir.path().join("dead")).unwrap();
    dead.sort_by_key(|d| d["record"].as_str().map(String::from));
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reasons: Vec<(&str, &str)> =
        dead.iter().map(|d| (d["origin"].as_str().unwrap(), d["reason"].as_str().unwrap())).collect();
    assert!(reasons[0].0 == "spec.pipeline.steps[1]" && reasons[0].1.contains("Divide by zero"), "{reasons:?}");
    assert!(reasons[1].0.ends_with("in.jsonl:3"), "{reasons:?}");
    assert_eq!(reasons[1].1, "field `price` must be a number (float64), got a string \"cheap\"");
}

/// Orders with 0 to 4 items each; every 97th order's `items` is not an
/// array. Returns the lines, and per item the number of its occurrences
/// that the filter (`items <> 's3'`) passes.
fn orders(n: u64) -> (Vec<String>, BTreeMap<String, u64>, u64) {
    let mut lines = Vec::new();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let mut broken = 0;
    for i in 0..n {
        if i % 97 == 50 {
            lines.push(format!(r#"{{"order": {i}, "customer": "c{}", "items": "s{}"}}"#, i % 7, i % 11));
            broken += 1;
            continue;
        }
        let items: Vec<String> = (0..i % 5).map(|j| format!("s{}", (i * (j + 1)) % 11)).collect();
        for item in items.iter().filter(|s| s.as_str() != "s3") {
            *want.entry(item.clone()).or_default() += 1;
        }
        lines.push(format!(r#"{{"order": {i}, "customer": "c{}", "items": {}}}"#, i % 7, serde_json::json!(items)));
    }
    (lines, want, broken)
}

#[test]
fn flattened_array_elements_are_counted_exactly_once_through_seeded_crashes_and_non_arrays_dead_lettered_once() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, want, broken) = orders(20_000);
    std::fs::write(dir.path().join("orders.jsonl"), lines.join("\n") + "\n").unwrap();
    let pipeline = format!(
        r#"    source: {{file: {{path: "{d}/orders.jsonl"}}}}
    schema:
      - {{name: order, type: int64}}
      - {{name: customer, type: string}}
    steps:
      - flatten: {{field: items, type: string}}
      - filter: "items <> 's3'"
      - keyBy: {{field: items}}
      - aggregate: {{count: true}}"#,
        d = dir.path().display()
    );
    let job = dead_lettering_job(dir.path(), "items", 2, &pipeline).unwrap();
    run_through_crashes(&job, 0xf1a7_7e00_0bad_5eed);

    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let item = row["items"].as_str().expect("rows carry the item").to_string();
        seen.entry(item).or_default().push(row["count"].as_u64().expect("rows carry count"));
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the items there are");
    for (item, &n) in &want {
        let mut counts = seen[item].clone();
        counts.sort_unstable();
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "item {item}: each occurrence counted exactly once");
    }
    let dead = read_committed(&dir.path().join("dead")).unwrap();
    assert_eq!(dead.len() as u64, broken, "each order whose items are not an array dead-lettered once");
    assert!(
        dead.iter().all(|d| d["origin"] == "spec.pipeline.steps[0]"
            && d["reason"] == "field `items` must be an array to flatten, got a string"),
        "{dead:?}"
    );
}
