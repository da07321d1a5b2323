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
/// coming in file order: the record entering, then each it moved down.
fn expected(n: usize) -> BTreeMap<String, usize> {
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
            row["rank"] = json!(rank + 1);
            *rows.entry(row.to_string()).or_default() += 1;
        }
    }
    rows
}

#[test]
fn each_shops_top_orders_are_emitted_as_ranked_updates_exactly_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..N).map(|i| record(i).to_string()).collect();
    std::fs::write(dir.path().join("orders.jsonl"), lines.join("\n") + "\n").unwrap();
    let pipeline = format!(
        r#"    source: {{file: {{path: "{d}/orders.jsonl"}}}}
    steps:
      - keyBy: {{field: shop}}
      - topN: {{limit: 5, orderBy: total}}"#,
        d = dir.path().display()
    );
    let job = pipeline_job(dir.path(), "top-n", 2, &pipeline).unwrap();
    run_through_crashes(&job, 0x5eed_70b0_0000_0005);

    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        *got.entry(row.to_string()).or_default() += 1;
    }
    let want = expected(5);
    assert!(want.len() > 20, "the rankings change often enough: {} updates", want.len());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(twice.is_empty(), "updates committed more than once: {twice:?}");
    assert_eq!(got, want, "every update of every ranking, once");
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
