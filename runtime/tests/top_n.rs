//! `topN`: the update stream of each key's ranking is committed exactly
//! once through seeded crashes, each update as the ranking made it.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};
use weir_runtime::connectors::file_sink::read_committed;

const N: u64 = 60_000;

fn record(i: u64) -> Value {
    json!({"shop": format!("s{}", i % 4), "order": i, "total": (i * 7919) % 100_003})
}

/// The rows a ranking of the `n` greatest totals per shop emits, records
/// coming in file order: the record entering, then each it moved down,
/// with its rank in `rank_field`.
fn expected(n: usize, rank_field: &str) -> BTreeMap<String, usize> {
    let mut ranking: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut rows = BTreeMap::new();
    for i in 0..N {
        let r = record(i);
        let total = r["total"].as_u64().unwrap();
        let top = ranking.entry(r["shop"].as_str().unwrap().to_string()).or_default();
        let at = top.iter().take_while(|(t, _)| *t >= total).count();
        if at >= n {
            continue;
        }
        top.insert(at, (total, i));
        top.truncate(n);
        for (rank, (_, order)) in top.iter().enumerate().skip(at) {
            let mut row = record(*order);
            row[rank_field] = json!(rank + 1);
            *rows.entry(row.to_string()).or_default() += 1;
        }
    }
    rows
}

#[test]
fn each_shops_top_orders_are_emitted_as_ranked_updates_exactly_once_through_seeded_crashes() {
    // As steps, and as Flink SQL's Top-N query, whose row number's name
    // is the rank's field.
    let steps = "    steps:\n      - keyBy: {field: shop}\n      - topN: {limit: 5, orderBy: total}";
    let sql = "    sql: SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY shop ORDER BY total DESC) AS pos \
               FROM source) WHERE pos <= 5";
    for (written, rank_field, seed) in [(steps, "rank", 0x5eed_70b0_0000_0005), (sql, "pos", 0x5eed_70b0_0000_0006)] {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..N).map(|i| record(i).to_string()).collect();
        std::fs::write(dir.path().join("orders.jsonl"), lines.join("\n") + "\n").unwrap();
        let pipeline =
            format!("    source: {{file: {{path: \"{d}/orders.jsonl\"}}}}\n{written}", d = dir.path().display());
        let job = pipeline_job(dir.path(), "top-n", 2, &pipeline).unwrap();
        run_through_crashes(&job, seed);

        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for row in read_committed(&dir.path().join("out")).unwrap() {
            *got.entry(row.to_string()).or_default() += 1;
        }
        let want = expected(5, rank_field);
        assert!(want.len() > 20, "the rankings change often enough: {} updates", want.len());
        let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(3).collect();
        assert!(twice.is_empty(), "{rank_field}: updates committed more than once: {twice:?}");
        assert_eq!(got, want, "{rank_field}: every update of every ranking, once");
    }
}

#[test]
fn a_top_n_without_a_key_or_with_a_text_order_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = |steps: &str| {
        let pipeline = format!(
            "    source: {{file: {{path: in.jsonl}}}}\n    schema: [{{name: shop, type: string}}, {{name: total, type: int64}}]\n    steps:\n{steps}"
        );
        pipeline_job(dir.path(), "top-n", 1, &pipeline).unwrap_err()
    };
    let err = job("      - topN: {limit: 3, orderBy: total}");
    assert!(err.contains("spec.pipeline.steps[0].topN: needs a keyBy step before it"), "{err}");
    let err = job("      - keyBy: {field: shop}\n      - topN: {limit: 3, orderBy: shop}");
    assert!(err.contains("spec.pipeline.steps[1].topN.orderBy: field `shop` is Utf8, expected a number"), "{err}");
    let err = job("      - keyBy: {field: shop}\n      - topN: {limit: 0, orderBy: total}");
    assert!(err.contains("spec.pipeline.steps[1].topN.limit: expected 1 to 1000, got 0"), "{err}");
}

#[test]
fn the_sql_top_n_example_runs_as_it_is_and_emits_each_change_of_each_stores_top_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<(String, u64, String, i64)> = run_example(dir.path(), "sql-top-n")
        .iter()
        .map(|r| {
            let text = |f: &str| r[f].as_str().unwrap_or_else(|| panic!("no `{f}`: {r}")).to_string();
            (text("store"), r["place"].as_u64().unwrap(), text("item"), r["qty"].as_i64().unwrap())
        })
        .collect();
    rows.sort();
    let want = [
        ("north", 1, "scones", 6),
        ("north", 1, "tea", 3),
        ("north", 2, "tea", 3),
        ("north", 2, "tea", 4),
        ("south", 1, "coffee", 2),
        ("south", 1, "scones", 12),
        ("south", 1, "tea", 1),
        ("south", 2, "coffee", 2),
        ("south", 2, "tea", 1),
    ]
    .map(|(s, p, i, q)| (s.to_string(), p, i.to_string(), q));
    assert_eq!(rows, want.to_vec(), "each sale entering a top two, and each it moved down, once");
}

/// Bids of Nexmark q5's kind: in window `w` (1 s long), item `k` of ten
/// gets `(k + w) % 10 + 1` bids, so each window's counts are distinct and
/// its hot items differ from the next window's. Within a window bids come
/// out of event-time order.
fn bids(windows: i64) -> Vec<Value> {
    let mut out = Vec::new();
    for w in 0..windows {
        for k in 0..10 {
            for c in 0..((k + w) % 10 + 1) {
                out.push(json!({"item": format!("i{k}"), "ts": w * 1000 + (c * 37 + k * 101) % 1000}));
            }
        }
    }
    out
}

#[test]
fn each_windows_three_hot_items_are_emitted_once_when_it_closes_exactly_once_through_seeded_crashes() {
    const WINDOWS: i64 = 1_000;
    // As steps, and as Flink SQL's Window Top-N over a grouped window query.
    let steps =
        "    steps:\n      - keyBy: {field: item}\n      - window: {size: 1s, aggregate: {count: true}}\n      \
                 - keyBy: {field: window_start}\n      - topN: {limit: 3, orderBy: count, perWindow: true}";
    let sql =
        "    sql: SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY bids \
               DESC) AS rownum FROM (SELECT item, window_start, window_end, COUNT(*) AS bids FROM source GROUP BY \
               item, TUMBLE(ts, INTERVAL '1' SECOND))) WHERE rownum <= 3";
    let written = [(steps, "count", "rank", 0x5eed_70b0_0000_0007), (sql, "bids", "rownum", 0x5eed_70b0_0000_0008)];
    for (written, count_field, rank_field, seed) in written {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = bids(WINDOWS).iter().map(Value::to_string).collect();
        std::fs::write(dir.path().join("bids.jsonl"), lines.join("\n") + "\n").unwrap();
        let pipeline = format!(
            "    source: {{file: {{path: \"{d}/bids.jsonl\"}}}}\n    eventTime: {{field: ts, maxOutOfOrderness: 1s}}\n{written}",
            d = dir.path().display()
        );
        let job = pipeline_job(dir.path(), "hot-items", 2, &pipeline).unwrap();
        run_through_crashes(&job, seed);

        let mut got: BTreeMap<(i64, u64), Vec<(String, i64)>> = BTreeMap::new();
        for row in read_committed(&dir.path().join("out")).unwrap() {
            let (start, end) = (row["window_start"].as_i64().unwrap(), row["window_end"].as_i64().unwrap());
            assert_eq!(end, start + 1000, "{row}");
            let entry = got.entry((start, row[rank_field].as_u64().unwrap())).or_default();
            entry.push((row["item"].as_str().unwrap().to_string(), row[count_field].as_i64().unwrap()));
        }
        let mut want = BTreeMap::new();
        for w in 0..WINDOWS {
            for rank in 1..=3 {
                // The item whose count is 11 - rank in this window.
                let k = (10 - rank as i64 - w).rem_euclid(10);
                want.insert((w * 1000, rank), vec![(format!("i{k}"), 11 - rank as i64)]);
            }
        }
        let twice: Vec<_> = got.iter().filter(|(_, rows)| rows.len() > 1).take(3).collect();
        assert!(twice.is_empty(), "{rank_field}: a window's rank committed more than once: {twice:?}");
        assert_eq!(got, want, "{rank_field}: each window's top three, each once, and nothing else");
    }
}

#[test]
fn dense_rank_per_window_keeps_every_item_of_the_two_best_counts_exactly_once_through_seeded_crashes() {
    const WINDOWS: i64 = 1_000;
    // In window `w` item `k` of ten gets `(k + w) % 5 + 1` bids: items
    // `k` and `k + 5` always tie.
    let mut lines = Vec::new();
    for w in 0..WINDOWS {
        for k in 0..10 {
            for c in 0..((k + w) % 5 + 1) {
                let ts = w * 1000 + (c * 37 + k * 101) % 1000;
                lines.push(json!({"item": format!("i{k}"), "ts": ts}).to_string());
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bids.jsonl"), lines.join("\n") + "\n").unwrap();
    let pipeline = format!(
        "    source: {{file: {{path: \"{d}/bids.jsonl\"}}}}\n    eventTime: {{field: ts, maxOutOfOrderness: 1s}}\n    \
         sql: SELECT * FROM (SELECT *, DENSE_RANK() OVER (PARTITION BY window_start, window_end ORDER BY bids DESC) \
         AS rownum FROM (SELECT item, window_start, window_end, COUNT(*) AS bids FROM source GROUP BY item, \
         TUMBLE(ts, INTERVAL '1' SECOND))) WHERE rownum <= 2",
        d = dir.path().display()
    );
    let job = pipeline_job(dir.path(), "dense-hot-items", 2, &pipeline).unwrap();
    run_through_crashes(&job, 0x5eed_70b0_0000_0009);

    let mut got: Vec<(i64, u64, String, i64)> = read_committed(&dir.path().join("out"))
        .unwrap()
        .iter()
        .map(|r| {
            let item = r["item"].as_str().unwrap().to_string();
            (r["window_start"].as_i64().unwrap(), r["rownum"].as_u64().unwrap(), item, r["bids"].as_i64().unwrap())
        })
        .collect();
    got.sort();
    let mut want = Vec::new();
    for w in 0..WINDOWS {
        for rank in 1..=2u64 {
            let count = 6 - rank as i64;
            let mut items: Vec<i64> = (0..10).filter(|k| (k + w) % 5 + 1 == count).collect();
            items.sort_by_key(|k| format!("i{k}"));
            want.extend(items.into_iter().map(|k| (w * 1000, rank, format!("i{k}"), count)));
        }
    }
    assert_eq!(got.len(), want.len(), "four rows per window: two tied items of each of the two best counts");
    assert_eq!(got, want);
}

#[test]
fn a_top_n_per_window_without_a_window_before_it_or_after_early_or_late_results_or_with_its_own_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = |steps: &str| {
        let pipeline = format!(
            "    source: {{file: {{path: in.jsonl}}}}\n    eventTime: {{field: ts}}\n    steps:\n      - keyBy: {{field: item}}\n{steps}"
        );
        pipeline_job(dir.path(), "top-n", 1, &pipeline).unwrap_err()
    };
    let err = job("      - topN: {limit: 3, orderBy: total, perWindow: true}");
    assert!(err.contains("spec.pipeline.steps[1].topN.perWindow: needs a window step before it"), "{err}");
    let err = job(
        "      - window: {size: 1m, earlyEvery: 10s, aggregate: {count: true}}\n      - keyBy: {field: window_start}\n      \
         - topN: {limit: 3, orderBy: count, perWindow: true}",
    );
    assert!(err.contains("spec.pipeline.steps[3].topN.perWindow: the window step before it has earlyEvery"), "{err}");
    let err = job(
        "      - window: {size: 1m, allowedLateness: 10s, aggregate: {count: true}}\n      - keyBy: {field: window_start}\n      \
         - topN: {limit: 3, orderBy: count, perWindow: true}",
    );
    let want = "spec.pipeline.steps[3].topN.perWindow: the window step before it has allowedLateness";
    assert!(err.contains(want), "{err}");
    // Ranking the records of a window: not with perWindow, nor after an aggregate.
    let err = job("      - topN: {limit: 3, orderBy: total, perWindow: true, window: {size: 0s}}");
    assert!(err.contains("spec.pipeline.steps[1].topN.window: not with perWindow"), "{err}");
    assert!(err.contains("spec.pipeline.steps[1].topN.window.size: expected at least 1ms"), "{err}");
    let err = job(
        "      - aggregate: {count: true}\n      - keyBy: {field: item}\n      - topN: {limit: 3, orderBy: count, window: {size: 1m}}",
    );
    assert!(err.contains("spec.pipeline.steps[3].topN.window: must come before any aggregate or window step"), "{err}");
}
