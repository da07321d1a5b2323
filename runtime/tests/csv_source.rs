//! CSV files as a source: typed by the schema, quoted fields across lines,
//! a header read again after every restore, and bad rows dead-lettered
//! once, with every good row counted exactly once through seeded crashes.

mod common;

use std::collections::BTreeMap;

use common::*;
use weir_runtime::connectors::file_sink::read_committed;

/// Rows of orders under a header whose columns are not in schema order;
/// every 97th has a quantity that is not a number, every 10th a note with
/// a delimiter, quotes and a line break. Returns the text, the count and
/// quantity sum per item of the good rows, and the bad rows' first lines.
fn orders(n: u64) -> (String, BTreeMap<String, (u64, i64)>, Vec<u64>) {
    let mut text = String::from("note,qty,item,price\n");
    let mut want: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut line = 2;
    for i in 0..n {
        let item = format!("item{}", i % 13);
        let note = if i % 10 == 3 { format!("\"rush, \"\"fragile\"\"\nleave at door {i}\"") } else { String::new() };
        let qty = if i % 97 == 50 { "many".to_string() } else { (i % 7 + 1).to_string() };
        if i % 97 == 50 {
            bad.push(line);
        } else {
            let w = want.entry(item.clone()).or_default();
            w.0 += 1;
            w.1 += (i % 7 + 1) as i64;
        }
        text.push_str(&format!("{note},{qty},{item},{}.25\n", i % 100));
        line += if note.is_empty() { 1 } else { 2 };
    }
    (text, want, bad)
}

#[test]
fn csv_rows_are_counted_exactly_once_and_bad_rows_dead_lettered_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let (text, want, bad) = orders(50_000);
    std::fs::write(dir.path().join("orders.csv"), text).unwrap();
    // A file of another format in the directory is not read.
    std::fs::write(dir.path().join("notes.jsonl"), "{\"item\": \"item1\", \"qty\": 1}\n").unwrap();
    let pipeline = format!(
        r#"    source: {{file: {{path: "{d}", format: Csv, csv: {{header: true}}}}}}
    schema:
      - {{name: item, type: string}}
      - {{name: qty, type: int64}}
      - {{name: price, type: float64}}
      - {{name: note, type: string}}
    steps:
      - keyBy: {{field: item}}
      - aggregate: {{count: true, sum: [qty], max: [price]}}"#,
        d = dir.path().display()
    );
    let job = dead_lettering_job(dir.path(), "csv-orders", 2, &pipeline).unwrap();
    run_through_crashes(&job, 0xc5f0_0000_0000_0001);

    let mut seen: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let item = row["item"].as_str().expect("rows carry the item").to_string();
        let count = row["count"].as_u64().expect("rows carry count");
        let previous = seen.entry(item.clone()).or_default().insert(count, row["sum_qty"].as_i64().unwrap());
        assert!(previous.is_none(), "{item}: the update for count {count} was committed twice");
        assert!(row["max_price"].as_f64().is_some_and(|p| p.fract() == 0.25), "prices are typed numbers: {row}");
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the items there are");
    for (item, &(n, sum)) in &want {
        assert_eq!(seen[item].keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "{item}: counts");
        assert_eq!(seen[item][&n], sum, "{item}: the last update's sum");
    }
    let dead = read_committed(&dir.path().join("dead")).unwrap();
    let mut lines: Vec<u64> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["reason"], "column `qty`: expected int64, got `many`", "{d}");
            let origin = d["origin"].as_str().unwrap();
            assert!(origin.contains("orders.csv:"), "{d}");
            origin.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    lines.sort_unstable();
    assert_eq!(lines, bad, "each bad row dead-lettered once, named by its line");
}

#[test]
fn a_csv_source_without_a_schema_or_with_a_bad_delimiter_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = |source: &str, schema: &str| {
        let pipeline = format!(
            "    source: {{file: {{path: in.csv, {source}}}}}\n{schema}    steps:\n      - keyBy: {{field: a}}\n      - aggregate: {{count: true}}"
        );
        pipeline_job(dir.path(), "csv", 1, &pipeline).unwrap_err()
    };
    let err = job("format: Csv", "");
    assert!(err.contains("spec.pipeline.source.file.format: Csv needs spec.pipeline.schema"), "{err}");
    let schema = "    schema: [{name: a, type: string}]\n";
    let err = job("format: Csv, csv: {delimiter: ';;'}", schema);
    assert!(err.contains("spec.pipeline.source.file.csv.delimiter: expected one ASCII character"), "{err}");
    let err = job("csv: {header: true}", schema);
    assert!(err.contains("spec.pipeline.source.file.csv: only for format Csv"), "{err}");
}
