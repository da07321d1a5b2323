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
    let pipeline = format!(
        r#"    source:
      generator: {{keys: {KEYS}, count: {count}, rate: 50000, splits: 6, timestampStep: 1ms}}
    eventTime: {{field: ts, maxOutOfOrderness: 10s}}
    sql: "{sql}""#
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
fn tumble_and_hop_queries_give_each_window_once_with_its_exact_count_and_sum_through_crashes() {
    for (group, size, slide, seed) in [
        ("TUMBLE(ts, INTERVAL '2' SECOND)", 2_000, 2_000, 0x5eed_5a1e_0000_0002),
        ("HOP(ts, INTERVAL '1' SECOND, INTERVAL '3 seconds')", 3_000, 1_000, 0x5eed_5a1e_0000_0003),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sql = format!(
            "SELECT key, window_start, window_end, COUNT(*) AS count, SUM(value) AS sum_value \
             FROM source GROUP BY key, {group}"
        );
        let job = sql_job(dir.path(), 40_000, &sql).unwrap();
        run_through_crashes(&job, seed);
        let rows = read_committed(&dir.path().join("out")).unwrap();
        let want = expected_windows(40_000, KEYS, 1, size, slide);
        check_windows_exactly_once(rows, &want).unwrap_or_else(|e| panic!("{group}: {e}"));
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
        ("SELECT key FROM source JOIN other ON true", "spec.pipeline.sql: joins are not supported yet"),
    ];
    for (sql, expected) in refused {
        let err = sql_job(dir.path(), 10, sql).unwrap_err();
        assert!(err.contains(expected), "{sql}: {err}");
        assert!(!err.contains("spec.pipeline.steps"), "{sql}: names a step nobody wrote: {err}");
    }
}
