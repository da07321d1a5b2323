//! Parquet and Avro files as a source: read by record, resumed at the
//! record a checkpoint names, typed by the files' own schemas and checked
//! against the manifest's, with every record counted exactly once through
//! seeded crashes and each bad one dead-lettered once, named by its record.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use common::*;
use weir_runtime::connectors::file_sink::read_committed;

const FILES: u64 = 3;
const PER_FILE: u64 = 12_000;
/// Records written per batch: an Avro block, a Parquet page at most.
const CHUNK: u64 = 1_000;

/// Order `i`: item `i % 13`, quantity `i % 7 + 1`, but null for every 97th.
fn order(i: u64) -> (String, Option<i64>) {
    (format!("item{}", i % 13), (i % 97 != 50).then_some((i % 7 + 1) as i64))
}

fn chunk(from: u64) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("item", DataType::Utf8, false),
        Field::new("qty", DataType::Int64, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())), false),
    ]);
    let orders: Vec<(String, Option<i64>)> = (from..from + CHUNK).map(order).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(orders.iter().map(|o| o.0.clone()))),
        Arc::new(Int64Array::from(orders.iter().map(|o| o.1).collect::<Vec<_>>())),
        Arc::new(
            TimestampMillisecondArray::from_iter_values((from..from + CHUNK).map(|i| 1_704_067_200_000 + i as i64))
                .with_timezone("+00:00"),
        ),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

/// Writes `FILES` files of `PER_FILE` orders in `format` ("parquet" or
/// "avro"); Parquet row groups hold 4,096 rows, so a restore skips some.
fn write_orders(dir: &std::path::Path, format: &str) {
    for f in 0..FILES {
        let file = File::create(dir.join(format!("orders-{f}.{format}"))).unwrap();
        let chunks = (0..PER_FILE / CHUNK).map(|c| chunk(f * PER_FILE + c * CHUNK));
        if format == "parquet" {
            let props =
                parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(4096)).build();
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, chunk(0).schema(), Some(props)).unwrap();
            chunks.for_each(|b| writer.write(&b).unwrap());
            writer.close().unwrap();
        } else {
            let mut writer: arrow_avro::writer::AvroWriter<File> =
                arrow_avro::writer::WriterBuilder::new(Schema::clone(&chunk(0).schema())).build(file).unwrap();
            chunks.for_each(|b| writer.write(&b).unwrap());
            writer.finish().unwrap();
        }
    }
}

#[test]
fn parquet_and_avro_records_are_counted_once_and_null_quantities_dead_lettered_once_through_seeded_crashes() {
    for (n, format) in ["Parquet", "Avro"].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir(&input).unwrap();
        write_orders(&input, &format.to_lowercase());
        // A file of another format in the directory is not read.
        std::fs::write(input.join("notes.jsonl"), "{\"item\": \"item1\", \"qty\": 1}\n").unwrap();
        let pipeline = format!(
            r#"    source: {{file: {{path: "{d}", format: {format}}}}}
    schema:
      - {{name: item, type: string}}
      - {{name: qty, type: int64}}
      - {{name: at, type: timestamp}}
    eventTime: {{field: at, maxOutOfOrderness: 1s}}
    steps:
      - keyBy: {{field: item}}
      - aggregate: {{count: true, sum: [qty]}}"#,
            d = input.display()
        );
        let job = dead_lettering_job(dir.path(), &format.to_lowercase(), 2, &pipeline).unwrap();
        run_through_crashes(&job, 0xc01_0000_0000_0001 + n as u64);

        let mut want: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        let mut bad = Vec::new();
        for i in 0..FILES * PER_FILE {
            match order(i) {
                (item, Some(qty)) => {
                    let w = want.entry(item).or_default();
                    (w.0, w.1) = (w.0 + 1, w.1 + qty);
                }
                (_, None) => bad.push((i / PER_FILE, i % PER_FILE + 1)),
            }
        }
        let mut seen: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
        for row in read_committed(&dir.path().join("out")).unwrap() {
            let item = row["item"].as_str().expect("rows carry the item").to_string();
            let count = row["count"].as_u64().expect("rows carry count");
            let previous = seen.entry(item.clone()).or_default().insert(count, row["sum_qty"].as_i64().unwrap());
            assert!(previous.is_none(), "{format}: {item}: the update for count {count} was committed twice");
        }
        assert_eq!(seen.len(), want.len(), "{format}: the items there are");
        for (item, &(count, sum)) in &want {
            let counts: Vec<u64> = seen[item].keys().copied().collect();
            assert_eq!(counts, (1..=count).collect::<Vec<_>>(), "{format}: {item}: every count once");
            assert_eq!(seen[item][&count], sum, "{format}: {item}: the last update's sum");
        }
        let mut dead: Vec<(u64, u64)> = read_committed(&dir.path().join("dead"))
            .unwrap()
            .iter()
            .map(|d| {
                assert!(d["reason"].as_str().unwrap().contains("qty"), "{d}");
                let origin = d["origin"].as_str().unwrap();
                let (file, record) = origin.split_once(", record ").unwrap_or_else(|| panic!("{d}"));
                let file = file.rsplit("orders-").next().unwrap().split('.').next().unwrap().parse().unwrap();
                (file, record.parse().unwrap())
            })
            .collect();
        dead.sort_unstable();
        assert_eq!(dead, bad, "{format}: each null quantity dead-lettered once, named by its file and record");
    }
}

#[test]
fn a_parquet_source_with_csv_options_or_a_file_that_is_not_parquet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |source: &str| {
        format!("    source: {{file: {{path: \"{}/in.parquet\", {source}}}}}\n    steps:\n      - keyBy: {{field: a}}\n      - aggregate: {{count: true}}", dir.path().display())
    };
    let err = pipeline_job(dir.path(), "parquet", 1, &pipeline("format: Parquet, csv: {header: true}")).unwrap_err();
    assert!(err.contains("spec.pipeline.source.file.csv: only for format Csv"), "{err}");

    std::fs::write(dir.path().join("in.parquet"), "{\"a\": 1}\n").unwrap();
    let job = pipeline_job(dir.path(), "parquet", 1, &pipeline("format: Parquet")).unwrap();
    let err = run_once(&job, weir_runtime::faults::Faults::none()).unwrap_err().to_string();
    assert!(err.contains("in.parquet") && err.contains("not readable as a Parquet file"), "{err}");
}

#[test]
fn the_parquet_example_runs_as_it_is_and_sums_each_items_units_and_revenue() {
    let dir = tempfile::tempdir().unwrap();
    let mut last: BTreeMap<String, (u64, i64, f64)> = BTreeMap::new();
    for row in run_example(dir.path(), "parquet") {
        let item = row["item"].as_str().expect("rows carry the item").to_string();
        let got =
            (row["count"].as_u64().unwrap(), row["sum_qty"].as_i64().unwrap(), row["sum_revenue"].as_f64().unwrap());
        let previous = last.insert(item.clone(), got);
        assert!(
            previous.is_none_or(|p| p.0 + 1 == got.0),
            "{item}: updates in order, each once: {previous:?} then {got:?}"
        );
    }
    // examples/data/sales.csv, summed by hand.
    let want = [
        ("coffee", 2, 3, 2.0 * 3.10 + 3.10),
        ("scones", 2, 18, 6.0 * 2.25 + 24.0),
        ("tea", 4, 10, 13.5 + 4.5 + 18.0 + 9.5),
    ];
    assert_eq!(last.len(), want.len(), "{last:?}");
    for (item, count, qty, revenue) in want {
        let (c, q, r) = last[item];
        assert_eq!((c, q), (count, qty), "{item}");
        assert!((r - revenue).abs() < 1e-9, "{item}: revenue {r}, expected {revenue}");
    }
}
