//! `lookup`: orders enriched from a CSV table of shops, then counted per
//! region exactly once through seeded crashes; orders of a shop the table
//! lacks dead-lettered once each. Manifests that do not fit are refused
//! naming the step and field.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;
use weir_runtime::connectors::file_sink::read_committed;

const ORDERS: u64 = 50_000;
/// Shops s0..s6 place orders; the table lists s0..s5 (s6 is missing).
const SHOPS: u64 = 7;

fn region(shop: u64) -> &'static str {
    ["eu", "us", "apac"][(shop % 3) as usize]
}

#[test]
fn orders_enriched_from_a_table_are_counted_per_region_exactly_once_and_misses_dead_lettered_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = String::from("region,shop,opened\n");
    for shop in 0..SHOPS - 1 {
        table.push_str(&format!("{},s{shop},{}\n", region(shop), 2000 + shop));
    }
    std::fs::write(dir.path().join("shops.csv"), table).unwrap();
    let mut want: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    let mut missing = Vec::new();
    let lines: Vec<String> = (0..ORDERS)
        .map(|i| {
            let (shop, total) = (i % SHOPS, (i * 31 % 1000) as i64);
            if shop == SHOPS - 1 {
                missing.push(i);
            } else {
                let w = want.entry(region(shop)).or_default();
                w.0 += 1;
                w.1 += total;
            }
            json!({"order": i, "shop": format!("s{shop}"), "total": total}).to_string()
        })
        .collect();
    std::fs::write(dir.path().join("orders.jsonl"), lines.join("\n") + "\n").unwrap();
    let pipeline = format!(
        r#"    source: {{file: {{path: "{d}/orders.jsonl"}}}}
    schema:
      - {{name: order, type: int64}}
      - {{name: shop, type: string}}
      - {{name: total, type: int64}}
    steps:
      - lookup:
          path: "{d}/shops.csv"
          format: Csv
          csv: {{header: true}}
          schema: [{{name: shop, type: string}}, {{name: region, type: string}}, {{name: opened, type: int64}}]
          key: shop
          onMissing: ErrorPolicy
      - filter: "opened >= 2000"
      - keyBy: {{field: region}}
      - aggregate: {{count: true, sum: [total]}}"#,
        d = dir.path().display()
    );
    let job = dead_lettering_job(dir.path(), "lookup", 2, &pipeline).unwrap();
    run_through_crashes(&job, 0x100c_0000_0000_0001);

    let mut seen: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let region = row["region"].as_str().expect("rows carry the region from the table").to_string();
        let count = row["count"].as_u64().expect("rows carry count");
        let previous = seen.entry(region.clone()).or_default().insert(count, row["sum_total"].as_i64().unwrap());
        assert!(previous.is_none(), "{region}: the update for count {count} was committed twice");
    }
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), want.keys().copied().collect::<Vec<_>>());
    for (region, &(n, sum)) in &want {
        assert_eq!(seen[*region].keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "{region}");
        assert_eq!(seen[*region][&n], sum, "{region}: the last update's sum");
    }
    let mut dead: Vec<u64> = read_committed(&dir.path().join("dead"))
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["reason"].as_str().unwrap().contains("has shop = \"s6\""), "{d}");
            assert_eq!(d["origin"], "spec.pipeline.steps[0]", "{d}");
            let raw: serde_json::Value = serde_json::from_str(d["record"].as_str().unwrap()).unwrap();
            raw["order"].as_u64().unwrap()
        })
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, missing, "each order of a shop the table lacks dead-lettered once");
}

#[test]
fn a_lookup_that_does_not_fit_the_records_is_refused_naming_the_step_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = |lookup: &str| {
        let pipeline = format!(
            "    source: {{file: {{path: in.jsonl}}}}\n    schema: [{{name: shop, type: string}}, {{name: total, type: int64}}]\n    steps:\n      - lookup: {lookup}\n      - keyBy: {{field: shop}}\n      - aggregate: {{count: true}}"
        );
        pipeline_job(dir.path(), "lookup", 1, &pipeline).unwrap_err()
    };
    let err = job("{path: t.jsonl, schema: [{name: id, type: string}], key: shop}");
    assert!(err.contains("spec.pipeline.steps[0].lookup.key: `shop` is not one of the table's fields"), "{err}");
    let err = job("{path: t.jsonl, schema: [{name: shop, type: int64}, {name: r, type: string}], key: shop}");
    assert!(err.contains("spec.pipeline.steps[0].lookup.field: field `shop` is Utf8, but the table's key"), "{err}");
    let err =
        job("{path: t.jsonl, schema: [{name: id, type: string}, {name: total, type: int64}], key: id, field: shop}");
    assert!(err.contains("lookup.schema: the table's field `total` is also a field of the records"), "{err}");
    let err = job("{path: t.jsonl, schema: [{name: id, type: string}], key: id, field: store}");
    assert!(err.contains("spec.pipeline.steps[0].lookup.field: "), "{err}");
    let err = job("{path: t.jsonl, csv: {header: true}, schema: [{name: shop, type: string}], key: shop}");
    assert!(err.contains("spec.pipeline.steps[0].lookup.csv: only for format Csv"), "{err}");
}
