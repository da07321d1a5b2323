//! `spec.pipeline.sql`: a query turned into steps runs to the exact result
//! a hand-computed one gives, through seeded crashes; errors name the
//! query's clause.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;
use weir_runtime::manifest::StreamJob;
use weir_runtime::verify::{check_windows_exactly_once, expected_windows};

const KEYS: u64 = 20;

fn sql_job(dir: &Path, count: u64, sql: &str) -> Result<StreamJob, String> {
    let source = format!("{{keys: {KEYS}, count: {count}, rate: 50000, splits: 6, timestampStep: 1ms}}");
    query_job(dir, &source, "10s", "", sql)
}

/// `sql` over a generator source (`generator`'s settings) with event time
/// `ts` out of order by up to `bound`, and `streams` (YAML lines).
fn query_job(dir: &Path, generator: &str, bound: &str, streams: &str, sql: &str) -> Result<StreamJob, String> {
    let pipeline = format!(
        r#"    source:
      generator: {generator}
    eventTime: {{field: ts, maxOutOfOrderness: {bound}}}
{streams}    sql: "{sql}""#
    );
    pipeline_job(dir, "sql", 2, &pipeline)
}

#[test]
fn a_grouped_query_with_where_an_expression_aggregate_and_having_is_exact_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT upper(key) AS k, COUNT(*) AS n, SUM(value * 2) AS doubled FROM source \
               WHERE value % 3 <> 0 GROUP BY upper(key) HAVING COUNT(*) % 2 = 0";
    let job = sql_job(dir.path(), 20_000, sql).unwrap();
    run_through_crashes(&job, 0x5eed_5a1e_0000_0001);

    // Per key, the records the WHERE passes and their doubled sum. The
    // order of a key's records across splits varies from run to run, so
    // the running sums between do too; the counts HAVING keeps (the even
    // ones) and the final sum do not.
    let mut want: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for seq in 0..20_000 {
        let (k, v) = generated(seq, KEYS);
        if v % 3 != 0 {
            let w = want.entry(format!("K{k}")).or_default();
            w.0 += 1;
            w.1 += 2 * v;
        }
    }
    let mut got: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let mut fields: Vec<&String> = row.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        fields.sort();
        assert_eq!(fields, ["doubled", "k", "n"], "the select list's names, nothing else: {row}");
        let (key, n) = (row["k"].as_str().unwrap().to_string(), row["n"].as_u64().unwrap());
        let previous = got.entry(key.clone()).or_default().insert(n, row["doubled"].as_i64().unwrap());
        assert!(previous.is_none(), "{key}: the row for count {n} was committed twice");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (key, (n, sum)) in &want {
        let counts: Vec<u64> = got[key].keys().copied().collect();
        let even: Vec<u64> = (1..=*n).filter(|c| c % 2 == 0).collect();
        assert_eq!(counts, even, "{key}: HAVING keeps every even count once");
        if n % 2 == 0 {
            assert_eq!(got[key][n], *sum, "{key}: the final sum");
        }
    }
}

#[test]
fn tumble_and_hop_queries_as_group_windows_or_table_functions_give_each_window_once_exactly_through_crashes() {
    for (from, size, slide, seed) in [
        ("source GROUP BY key, TUMBLE(ts, INTERVAL '2' SECOND)", 2_000, 2_000, 0x5eed_5a1e_0000_0002),
        (
            "source GROUP BY key, HOP(ts, INTERVAL '1' SECOND, INTERVAL '3 seconds')",
            3_000,
            1_000,
            0x5eed_5a1e_0000_0003,
        ),
        (
            "TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '2' SECONDS)) GROUP BY window_start, window_end, key",
            2_000,
            2_000,
            0x5eed_5a1e_0000_0012,
        ),
        (
            "TABLE(HOP(DATA => TABLE source, TIMECOL => DESCRIPTOR(ts), SLIDE => INTERVAL '1' SECOND, \
             SIZE => INTERVAL '3' SECONDS)) GROUP BY window_start, window_end, key",
            3_000,
            1_000,
            0x5eed_5a1e_0000_0013,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sql =
            format!("SELECT key, window_start, window_end, COUNT(*) AS count, SUM(value) AS sum_value FROM {from}");
        let job = sql_job(dir.path(), 40_000, &sql).unwrap();
        run_through_crashes(&job, seed);
        let rows = read_committed(&dir.path().join("out")).unwrap();
        let want = expected_windows(40_000, KEYS, 1, size, slide);
        check_windows_exactly_once(rows, &want).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
}

#[test]
fn a_wrong_query_is_refused_naming_its_clause() {
    let dir = tempfile::tempdir().unwrap();
    let refused = [
        ("SELECT key, SUM(nope) AS s FROM source GROUP BY key", "spec.pipeline.sql (the aggregates): no field `nope`"),
        ("SELECT key FROM source WHERE value + 'x'", "spec.pipeline.sql (WHERE): "),
        ("SELECT key, COUNT(*) AS n FROM source GROUP BY key HAVING n > 1", "spec.pipeline.sql (HAVING): "),
        ("SELECT key, value, COUNT(*) AS n FROM source GROUP BY key", "spec.pipeline.sql (SELECT): "),
        ("SELECT key FROM source JOIN other ON true", "spec.pipeline.sql: JOIN other: no stream of that id"),
    ];
    for (sql, expected) in refused {
        let err = sql_job(dir.path(), 10, sql).unwrap_err();
        assert!(err.contains(expected), "{sql}: {err}");
        assert!(!err.contains("spec.pipeline.steps"), "{sql}: names a step nobody wrote: {err}");
    }
}

const ORDERS: u64 = 8_000;
const SHIPMENTS: u64 = 6_000;

/// Generated orders (`source`) and shipments (`ships`, over `ship_keys`
/// keys), one per millisecond each, and `sql` over them.
fn join_job(dir: &Path, ship_keys: u64, sql: &str) -> Result<StreamJob, String> {
    let orders = format!("{{keys: {KEYS}, count: {ORDERS}, rate: 20000, splits: 4, timestampStep: 1ms}}");
    let ships = format!("{{keys: {ship_keys}, count: {SHIPMENTS}, rate: 20000, splits: 2, timestampStep: 1ms}}");
    let streams = format!("    streams:\n      - source: {{id: ships, generator: {ships}}}\n");
    query_job(dir, &orders, "50ms", &streams, sql)
}

const ON: &str =
    "ON o.key = s.key AND s.ts BETWEEN o.ts - INTERVAL '5' MILLISECOND AND o.ts + INTERVAL '10' MILLISECOND";

#[test]
fn an_interval_join_in_sql_commits_each_pair_its_where_keeps_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "SELECT o.seq, s.seq AS ship_seq, o.key, s.key AS ship_key, o.ts FROM source o JOIN ships s {ON} \
         WHERE s.value % 2 = 0"
    );
    run_through_crashes(&join_job(dir.path(), KEYS, &sql).unwrap(), 0x5eed_5a1e_0000_0004);
    let mut want = generated_pairs((ORDERS, KEYS), (SHIPMENTS, KEYS), 5, 10);
    want.retain(|(_, s), _| generated(*s, KEYS).1 % 2 == 0);
    assert!(want.len() > 500, "too few pairs to tell: {}", want.len());
    let mut got = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let mut fields: Vec<&String> = row.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        fields.sort();
        assert_eq!(fields, ["key", "seq", "ship_key", "ship_seq", "ts"], "the select list's names: {row}");
        let (o, s) = (row["seq"].as_u64().unwrap(), row["ship_seq"].as_u64().unwrap());
        assert_eq!(row["key"], row["ship_key"], "joined across keys: {row}");
        assert_eq!(row["ts"].as_u64(), Some(o.max(s)), "a pair's event time is the later one: {row}");
        *got.entry((o, s)).or_insert(0) += 1;
    }
    assert_eq!(got, want);
}

#[test]
fn a_left_join_in_sql_grouped_in_windows_counts_every_pair_and_every_unmatched_order() {
    let dir = tempfile::tempdir().unwrap();
    let ship_keys = KEYS - 3;
    let sql = format!(
        "SELECT o.key, window_start, COUNT(*) AS n, COUNT(s.seq) AS paired, COUNT(DISTINCT s.seq) AS ships \
         FROM source o LEFT JOIN ships s {ON} GROUP BY o.key, TUMBLE(o.ts, INTERVAL '100' MILLISECOND)"
    );
    let job = join_job(dir.path(), ship_keys, &sql).unwrap();
    let (result, metrics) = run_with_metrics(&job, weir_runtime::faults::Faults::none());
    result.expect("the job finishes");
    // Per key and window (by the joined record's event time, a pair's the
    // later of its two): the pairs and unmatched orders, the pairs alone
    // (COUNT of the shipment's field, null when unmatched), and the
    // distinct shipments among them.
    let pairs = generated_pairs((ORDERS, KEYS), (SHIPMENTS, ship_keys), 5, 10);
    let mut want: BTreeMap<(String, u64), (u64, u64, std::collections::BTreeSet<u64>)> = BTreeMap::new();
    let window = |o: u64, ts: u64| (format!("k{}", generated(o, KEYS).0), ts / 100 * 100);
    for &(o, s) in pairs.keys() {
        let w = want.entry(window(o, o.max(s))).or_default();
        w.0 += 1;
        w.1 += 1;
        w.2.insert(s);
    }
    let unmatched = (0..ORDERS).filter(|o| !pairs.keys().any(|(p, _)| p == o)).collect::<Vec<_>>();
    assert!(unmatched.len() > 100, "too few unmatched orders to tell: {}", unmatched.len());
    for o in unmatched {
        want.entry(window(o, o)).or_default().0 += 1;
    }
    let want: BTreeMap<(String, u64), (u64, u64, u64)> =
        want.into_iter().map(|(k, (n, paired, ships))| (k, (n, paired, ships.len() as u64))).collect();
    let got: BTreeMap<(String, u64), (u64, u64, u64)> = read_committed(&dir.path().join("out"))
        .unwrap()
        .iter()
        .map(|r| {
            let key = (r["key"].as_str().unwrap().to_string(), r["window_start"].as_u64().unwrap());
            let count = |name: &str| r[name].as_u64().unwrap_or_else(|| panic!("no count `{name}`: {r}"));
            (key, (count("n"), count("paired"), count("ships")))
        })
        .collect();
    assert_eq!(weir_runtime::metrics::JobMetrics::get(&metrics.late_records_dropped), 0);
    assert_eq!(got, want);
}

#[test]
fn a_joined_streams_mistakes_are_refused_naming_the_stream_or_the_clause() {
    let dir = tempfile::tempdir().unwrap();
    let err = join_job(dir.path(), KEYS, "SELECT o.key FROM source o JOIN ships s ON o.seq = s.key AND s.ts >= o.ts")
        .unwrap_err();
    assert!(err.contains("spec.pipeline.sql: ON needs a time bound with a lower and an upper end"), "{err}");
    let sql =
        "SELECT o.key FROM source o JOIN ships s ON o.seq = s.key AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' SECOND";
    let err = join_job(dir.path(), KEYS, sql).unwrap_err();
    assert!(err.contains("spec.pipeline.sql (JOIN): field `key` is"), "the keys' types differ: {err}");

    let file_stream = |extra: &str| {
        format!(
            "    source: {{file: {{path: a.jsonl}}}}\n    schema: [{{name: k, type: string}}, {{name: ts, type: \
             timestamp}}]\n    eventTime: {{field: ts}}\n    streams:\n      - source: {{id: b, file: {{path: \
             \"\"}}}}\n{extra}"
        )
    };
    let sql = "    sql: \"SELECT a.k FROM source a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' SECOND\"";
    let err = pipeline_job(dir.path(), "s", 1, &file_stream(sql)).unwrap_err();
    assert!(err.contains("spec.pipeline.streams[0].source.file.path: required"), "{err}");
    assert!(err.contains("spec.pipeline.streams[0].schema: required"), "{err}");
    assert!(!err.contains("spec.pipeline.steps"), "names a step nobody wrote: {err}");

    let unused = file_stream("    sql: SELECT k FROM source");
    let err = pipeline_job(dir.path(), "s", 1, &unused).unwrap_err();
    assert!(err.contains("spec.pipeline.streams[0]: `b` is not joined by spec.pipeline.sql"), "{err}");
    let with_steps = file_stream("    steps: [{filter: \"k <> 'x'\"}]");
    let err = pipeline_job(dir.path(), "s", 1, &with_steps).unwrap_err();
    assert!(err.contains("spec.pipeline.streams: only spec.pipeline.sql joins these"), "{err}");
}

#[test]
fn the_sql_join_example_runs_as_it_is_and_finds_each_orders_parcels_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<(String, Option<String>)> = run_example(dir.path(), "sql-join")
        .iter()
        .map(|r| (r["order"].as_str().unwrap().into(), r["carrier"].as_str().map(String::from)))
        .collect();
    rows.sort();
    let some = |o: &str, c: Option<&str>| (o.to_string(), c.map(String::from));
    let want =
        [some("o1", Some("dhl")), some("o2", None), some("o3", None), some("o4", Some("dhl")), some("o4", Some("ups"))];
    assert_eq!(rows, want.to_vec(), "a row per parcel shipped within two days, and one without a carrier for the rest");
}
