//! Streams that meet: `union` of sources, `intervalJoin` of two streams
//! by key and event time, `windowJoin` by key and window, `temporalJoin`
//! and `join` by key alone, with
//! exact output through crashes and restores.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;
use weir_runtime::faults::Faults;
use weir_runtime::metrics::JobMetrics;
use weir_runtime::verify::{check_updates_against, expected_per_key, updates_of};

const KEYS: u64 = 20;

fn committed(dir: &Path) -> Vec<serde_json::Value> {
    read_committed(&dir.join("out")).expect("committed output is readable")
}

/// Generated records (`count` of them over `splits`), one per millisecond
/// of event time, as a source's YAML.
fn generator(count: u64, splits: u32) -> String {
    format!("{{keys: {KEYS}, count: {count}, rate: 20000, splits: {splits}, timestampStep: 1ms}}")
}

/// Three generators counted and summed per key; with `filter`, the union
/// meets in a rebalance before the filter, else in the keyBy's shuffle.
fn union_job(dir: &Path, parallelism: u32, filter: bool) -> weir_runtime::manifest::StreamJob {
    let filter = if filter { "      - filter: \"value >= 0\"\n" } else { "" };
    let pipeline = format!(
        r#"    source: {{generator: {main}}}
    union:
      - {{id: second, generator: {second}}}
      - {{id: third, generator: {third}}}
    steps:
{filter}      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}"#,
        main = generator(20_000, 4),
        second = generator(12_000, 3),
        third = generator(6_000, 1),
    );
    pipeline_job(dir, "union", parallelism, &pipeline).expect("test manifest is valid")
}

/// The count and sum per key of the three generators' records together.
fn union_expected() -> BTreeMap<String, (u64, i64)> {
    let mut want = expected_per_key(20_000, KEYS);
    for count in [12_000, 6_000] {
        for (key, (n, sum)) in expected_per_key(count, KEYS) {
            let e = want.entry(key).or_default();
            e.0 += n;
            e.1 += sum;
        }
    }
    want
}

#[test]
fn a_union_of_three_sources_counts_every_record_of_each_once() {
    for filter in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        run_once(&union_job(dir.path(), 2, filter), Faults::none()).expect("the job finishes");
        let got = updates_of(committed(dir.path())).unwrap();
        check_updates_against(&got, &union_expected()).unwrap();
    }
}

#[test]
fn a_union_is_exact_through_seeded_crashes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes(&union_job(dir.path(), 2, false), 0x5eed_0fa1_15ee_d000);
    let got = updates_of(committed(dir.path())).unwrap();
    check_updates_against(&got, &union_expected()).unwrap();
}

const ORDERS: u64 = 8_000;
const SHIPMENTS: u64 = 6_000;

/// Shipments of an outer join are keyed over fewer keys: the same seq's
/// order and shipment have the same key over as many, so every shipment
/// would find its order.
const SHIP_KEYS: u64 = KEYS - 3;

/// Generated orders joined with generated shipments of the same key from
/// 5 ms before to 10 ms after each order, as a `join_type` join with the
/// shipments keyed over `ship_keys` keys and the steps `after` after it.
/// Each split's records come in event-time order, so none is late however
/// far one source runs ahead of the other, and a small bound makes records
/// leave the join's state while the job runs.
fn join_job(dir: &Path, join_type: &str, ship_keys: u64, after: &str) -> weir_runtime::manifest::StreamJob {
    let pipeline = format!(
        r#"    source: {{generator: {orders}}}
    eventTime: {{field: ts, maxOutOfOrderness: 50ms}}
    steps:
      - intervalJoin:
          source: {{id: ships, generator: {shipments}}}
          key: key
          before: 5ms
          after: 10ms
          type: {join_type}
{after}"#,
        orders = generator(ORDERS, 4),
        shipments = generator(SHIPMENTS, 2).replace(&format!("keys: {KEYS},"), &format!("keys: {ship_keys},")),
    );
    pipeline_job(dir, "join", 2, pipeline.trim_end()).expect("test manifest is valid")
}

/// Every (order seq, shipment seq) pair the join must emit.
fn join_expected() -> BTreeMap<(u64, u64), u32> {
    pairs_expected(KEYS)
}

/// Every (order seq, shipment seq) pair, the shipments keyed over
/// `ship_keys` keys.
fn pairs_expected(ship_keys: u64) -> BTreeMap<(u64, u64), u32> {
    generated_pairs((ORDERS, KEYS), (SHIPMENTS, ship_keys), 5, 10)
}

/// The pairs in the committed output, with how often each was committed.
fn join_got(dir: &Path) -> BTreeMap<(u64, u64), u32> {
    let mut got = BTreeMap::new();
    for row in committed(dir) {
        let pair = (row["seq"].as_u64(), row["ships_seq"].as_u64());
        let (Some(o), Some(s)) = pair else { panic!("not a joined record: {row}") };
        assert_eq!(row["key"], row["ships_key"], "joined across keys: {row}");
        let later = row["ts"].as_u64().unwrap();
        assert_eq!(later, o.max(s), "the joined record's event time is the later one: {row}");
        *got.entry((o, s)).or_insert(0) += 1;
    }
    got
}

#[test]
fn an_interval_join_emits_each_pair_within_the_bounds_once() {
    let dir = tempfile::tempdir().unwrap();
    run_once(&join_job(dir.path(), "inner", KEYS, ""), Faults::none()).expect("the job finishes");
    let (got, want) = (join_got(dir.path()), join_expected());
    assert!(want.len() > 1_000, "too few pairs to tell: {}", want.len());
    assert_eq!(got.len(), want.len(), "pairs committed against pairs expected");
    assert_eq!(got, want);
}

#[test]
fn an_interval_join_is_exact_through_seeded_crashes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes(&join_job(dir.path(), "inner", KEYS, ""), 0x0bad_cafe_f00d);
    let (got, want) = (join_got(dir.path()), join_expected());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "pairs committed more than once: {twice:?}");
    assert_eq!(got, want);
}

/// Orders joined by key alone with every 50th shipment (the step's
/// `filter`), records kept for an hour of the wall clock: no pair is
/// missed in a run this short.
fn regular_join_job(dir: &Path) -> weir_runtime::manifest::StreamJob {
    let pipeline = format!(
        r#"    source: {{generator: {orders}}}
    eventTime: {{field: ts, maxOutOfOrderness: 50ms}}
    steps:
      - join:
          source: {{id: ships, generator: {shipments}}}
          key: key
          filter: "seq % 50 = 0"
          stateTtl: 1h"#,
        orders = generator(ORDERS, 4),
        shipments = generator(SHIPMENTS, 2),
    );
    pipeline_job(dir, "regular", 2, &pipeline).expect("test manifest is valid")
}

#[test]
fn a_join_by_key_alone_emits_every_pair_of_equal_keys_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes(&regular_join_job(dir.path()), 0x5eed_4e61_0000_0001);
    let mut want = BTreeMap::new();
    for o in 0..ORDERS {
        for s in (0..SHIPMENTS).step_by(50).filter(|&s| generated(s, KEYS).0 == generated(o, KEYS).0) {
            want.insert((o, s), 1);
        }
    }
    assert!(want.len() > 40_000, "{} pairs", want.len());
    // Each pair once, carrying the later of its two event times.
    assert_eq!(join_got(dir.path()), want);
}

#[test]
fn a_join_by_key_alone_refuses_outer_types_a_zero_ttl_and_a_filter_on_a_missing_field() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline =
        "    source: {generator: {keys: 2}}\n    steps:\n      - join: {source: {id: s, generator: {keys: 2}}, \
                    key: key, type: left, stateTtl: 0s, filter: \"sequence > 3\"}";
    let err = pipeline_job(dir.path(), "r", 1, pipeline).unwrap_err();
    assert!(
        err.contains("spec.pipeline.steps[0].join.type: `left` is not built for a join without a time bound"),
        "{err}"
    );
    assert!(err.contains("spec.pipeline.steps[0].join.stateTtl: expected at least 1s"), "{err}");
    assert!(err.contains("spec.pipeline.steps[0].join.filter: "), "{err}");
    assert!(err.contains("sequence"), "{err}");
    assert!(!err.contains("needs spec.pipeline.eventTime"), "a join by key alone needs no event time: {err}");
}

#[test]
fn sources_of_union_and_join_need_their_own_ids_and_a_join_needs_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let union = "    source: {generator: {keys: 2}}\n    union: [{generator: {keys: 2}}, {id: source, generator: {keys: 2}}]\n    \
                 steps: [{keyBy: {field: key}}, {aggregate: {count: true}}]";
    let err = pipeline_job(dir.path(), "u", 1, union).unwrap_err();
    assert!(err.contains("spec.pipeline.union[0].id: required"), "{err}");
    assert!(err.contains("spec.pipeline.union[1].id: `source` is the id of the pipeline's own source"), "{err}");

    let join = "    source: {generator: {keys: 2}}\n    steps:\n      - keyBy: {field: key}\n      - intervalJoin: \
                {source: {id: s, generator: {keys: 2}}, key: key, otherKey: nope}";
    let err = pipeline_job(dir.path(), "j", 1, join).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[1].intervalJoin: needs spec.pipeline.eventTime"), "{err}");
    assert!(err.contains("spec.pipeline.steps[1].intervalJoin: repartitions both streams"), "{err}");
    assert!(err.contains("spec.pipeline.steps[1].intervalJoin.otherKey: no field `nope`"), "{err}");

    let clash =
        "    source: {generator: {keys: 2, timestampStep: 1ms}}\n    eventTime: {field: ts}\n    steps:\n      - \
                 intervalJoin: {source: {id: s, generator: {keys: 2, timestampStep: 1ms}}, key: key, prefix: \"\"}";
    let err = pipeline_job(dir.path(), "c", 1, clash).unwrap_err();
    assert!(err.contains("intervalJoin.prefix: the other stream's field `seq` becomes `seq`"), "{err}");
}

#[test]
fn the_union_and_join_examples_run_as_they_are_and_the_left_join_finds_late_shipments() {
    let dir = tempfile::tempdir().unwrap();
    let mut last: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for row in run_example(dir.path(), "union") {
        let item = row["item"].as_str().unwrap().to_string();
        let e = last.entry(item).or_default();
        let (count, qty) = (row["count"].as_u64().unwrap(), row["sum_qty"].as_i64().unwrap());
        if count > e.0 {
            *e = (count, qty);
        }
    }
    let want = [("coffee", (2, 3)), ("jam", (1, 2)), ("scones", (3, 22)), ("tea", (5, 15))];
    assert_eq!(last, want.map(|(k, v)| (k.to_string(), v)).into_iter().collect(), "shop and online sales");

    let mut shipped: Vec<(String, String)> = run_example(dir.path(), "join")
        .iter()
        .map(|r| (r["order"].as_str().unwrap().into(), r["ship_carrier"].as_str().unwrap().into()))
        .collect();
    shipped.sort();
    let want = [("o1", "dhl"), ("o4", "dhl"), ("o4", "ups")].map(|(o, c)| (o.to_string(), c.to_string()));
    assert_eq!(shipped, want.to_vec(), "orders shipped within two days, a row per parcel");

    let mut late: Vec<String> =
        run_example(dir.path(), "late-shipments").iter().map(|r| r["order"].as_str().unwrap().into()).collect();
    late.sort();
    assert_eq!(late, ["o2", "o3"], "orders not shipped within two days, once each");
}

/// What a full join must emit besides the pairs: the orders and the
/// shipments that have none.
fn unmatched_expected() -> (BTreeMap<u64, u32>, BTreeMap<u64, u32>) {
    let pairs = pairs_expected(SHIP_KEYS);
    let alone = |all: u64, paired: Vec<u64>| (0..all).filter(|x| !paired.contains(x)).map(|x| (x, 1)).collect();
    let orders = alone(ORDERS, pairs.keys().map(|(o, _)| *o).collect());
    let ships = alone(SHIPMENTS, pairs.keys().map(|(_, s)| *s).collect());
    (orders, ships)
}

#[test]
fn a_full_interval_join_emits_every_pair_and_every_unmatched_record_once_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes(&join_job(dir.path(), "full", SHIP_KEYS, ""), 0x0f11_0f11_f00d);
    let (mut pairs, mut orders, mut ships) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for row in committed(dir.path()) {
        match (row["seq"].as_u64(), row["ships_seq"].as_u64()) {
            (Some(o), Some(s)) => *pairs.entry((o, s)).or_insert(0) += 1,
            (Some(o), None) => *orders.entry(o).or_insert(0) += 1,
            (None, Some(s)) => {
                assert_eq!(row["key"], row["ships_key"], "a shipment alone carries its key: {row}");
                assert_eq!(row["ts"].as_u64(), Some(s), "and its event time: {row}");
                *ships.entry(s).or_insert(0) += 1;
            }
            (None, None) => panic!("neither side: {row}"),
        }
    }
    let (want_orders, want_ships) = unmatched_expected();
    assert!(
        want_orders.len() > 100 && want_ships.len() > 100,
        "too few unmatched to tell: {} {}",
        want_orders.len(),
        want_ships.len()
    );
    assert_eq!(pairs, pairs_expected(SHIP_KEYS));
    assert_eq!(orders, want_orders, "orders without a shipment, once each");
    assert_eq!(ships, want_ships, "shipments without an order, once each");
}

#[test]
fn records_a_full_join_emits_alone_are_not_late_for_a_window_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let window = "      - keyBy: {field: key}\n      - window: {size: 100ms, aggregate: {count: true}}";
    let job = join_job(dir.path(), "full", SHIP_KEYS, window);
    let (result, metrics) = run_with_metrics(&job, Faults::none());
    result.expect("the job finishes");
    // Every joined record's event time: a pair's is the later of its two.
    let mut want: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let key = |seq: u64, keys: u64| format!("k{}", generated(seq, keys).0);
    let (orders, ships) = unmatched_expected();
    let times = pairs_expected(SHIP_KEYS)
        .keys()
        .map(|&(o, s)| (key(o, KEYS), o.max(s)))
        .chain(orders.keys().map(|&o| (key(o, KEYS), o)))
        .chain(ships.keys().map(|&s| (key(s, SHIP_KEYS), s)))
        .collect::<Vec<_>>();
    for (k, ts) in times {
        *want.entry((k, ts / 100 * 100)).or_insert(0) += 1;
    }
    let got: BTreeMap<(String, u64), u64> = committed(dir.path())
        .iter()
        .map(|r| {
            (
                (r["key"].as_str().unwrap().to_string(), r["window_start"].as_u64().unwrap()),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(JobMetrics::get(&metrics.late_records_dropped), 0, "no joined record came behind the watermark");
    assert_eq!(got, want);
}

const RATES: u64 = 1_000;

/// Orders (one per millisecond) joined with the versions of their key's
/// rate: a second generator's records, one every 7 ms of event time. As a
/// step (the rate's fields under `rates_`), or with `sql` as a query (under
/// its alias's prefix).
fn temporal_job(dir: &Path, join_type: &str, sql: bool) -> weir_runtime::manifest::StreamJob {
    temporal_job_by(dir, join_type, sql, false)
}

/// The same, `by_processing_time`: the pipeline without event time, each
/// order with its key's latest rate as it arrives.
fn temporal_job_by(
    dir: &Path,
    join_type: &str,
    sql: bool,
    by_processing_time: bool,
) -> weir_runtime::manifest::StreamJob {
    let orders = generator(ORDERS, 4);
    let rates = generator(RATES, 2).replace("timestampStep: 1ms", "timestampStep: 7ms");
    let (as_of, time, event_time) = if by_processing_time {
        ("PROCTIME()", "\n          time: ProcessingTime", "")
    } else {
        ("o.ts", "", "    eventTime: {field: ts, maxOutOfOrderness: 50ms}\n")
    };
    let join = if sql {
        let join = if join_type == "left" { "LEFT JOIN" } else { "JOIN" };
        format!(
            "    streams:\n      - source: {{id: rates, generator: {rates}}}\n    sql: SELECT * FROM source o {join} \
             rates FOR SYSTEM_TIME AS OF {as_of} AS r ON o.key = r.key"
        )
    } else {
        format!(
            "    steps:\n      - temporalJoin:\n          source: {{id: rates, generator: {rates}}}\n          \
             key: key\n          type: {join_type}{time}"
        )
    };
    let pipeline = format!("    source: {{generator: {orders}}}\n{event_time}{join}");
    pipeline_job(dir, "temporal", 2, &pipeline).expect("test manifest is valid")
}

/// Each order's seq and the seq of the rate in effect at its time: the
/// latest of its key at or before it.
fn temporal_expected() -> BTreeMap<u64, Option<u64>> {
    let mut want = BTreeMap::new();
    for o in 0..ORDERS {
        let key = generated(o, KEYS).0;
        let version = (0..RATES).filter(|&s| s * 7 <= o && generated(s, KEYS).0 == key).max();
        want.insert(o, version);
    }
    want
}

/// Each committed order's rate (its fields under `prefix`), failing on an
/// order committed twice.
fn temporal_got(dir: &Path, prefix: &str) -> BTreeMap<u64, Option<u64>> {
    let mut got = BTreeMap::new();
    for row in committed(dir) {
        let order = row["seq"].as_u64().unwrap_or_else(|| panic!("not an order: {row}"));
        let rate = row[format!("{prefix}seq")].as_u64();
        if rate.is_some() {
            assert_eq!(row["key"], row[format!("{prefix}key")], "joined across keys: {row}");
        }
        assert_eq!(row["ts"].as_u64(), Some(order), "the order's own event time: {row}");
        assert!(got.insert(order, rate).is_none(), "order {order} committed twice");
    }
    got
}

#[test]
fn a_left_temporal_join_gives_each_order_the_rate_in_effect_at_its_time_once_through_seeded_crashes() {
    let want = temporal_expected();
    assert!(want.values().any(Option::is_none), "some orders come before their key's first rate");
    assert!(want.values().filter_map(|v| *v).collect::<std::collections::BTreeSet<_>>().len() > 500);
    // As the step, and as Flink SQL's FOR SYSTEM_TIME AS OF.
    for (sql, prefix, seed) in [(false, "rates_", 0x5eed_7e39_0000_0001), (true, "r_", 0x5eed_7e39_0000_0002)] {
        let dir = tempfile::tempdir().unwrap();
        run_through_crashes(&temporal_job(dir.path(), "left", sql), seed);
        assert_eq!(temporal_got(dir.path(), prefix), want, "sql: {sql}: every order once, with the rate of its time");
    }
}

#[test]
fn a_left_temporal_join_by_processing_time_gives_every_order_once_with_a_rate_of_its_key_or_none_through_crashes() {
    for (sql, prefix, seed) in [(false, "rates_", 0x5eed_7e39_0000_0003), (true, "r_", 0x5eed_7e39_0000_0004)] {
        let dir = tempfile::tempdir().unwrap();
        run_through_crashes(&temporal_job_by(dir.path(), "left", sql, true), seed);
        // Which rate an order finds depends on how the streams interleave;
        // its key is checked, and that it is committed once.
        let got = temporal_got(dir.path(), prefix);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), (0..ORDERS).collect::<Vec<_>>(), "sql: {sql}");
        for (order, rate) in &got {
            assert!(rate.is_none_or(|r| r < RATES), "sql: {sql}: order {order} has no rate {rate:?}");
        }
        assert!(got.values().any(Option::is_some), "sql: {sql}: no order found a rate");
    }
}

#[test]
fn a_processing_time_temporal_join_is_refused_with_event_time_or_an_event_time_field() {
    let dir = tempfile::tempdir().unwrap();
    let rates = generator(RATES, 2);
    let job = |event_time: &str, extra: &str| {
        let pipeline = format!(
            "    source: {{generator: {}}}\n{event_time}    steps:\n      - temporalJoin:\n          source: {{id: \
             rates, generator: {rates}}}\n          key: key\n          time: ProcessingTime{extra}",
            generator(ORDERS, 4)
        );
        pipeline_job(dir.path(), "temporal", 2, &pipeline).unwrap_err()
    };
    let err = job("    eventTime: {field: ts}\n", "");
    assert!(err.contains("spec.pipeline.steps[0].temporalJoin.time: ProcessingTime in a pipeline with"), "{err}");
    let err = job("", "\n          eventTimeField: ts");
    assert!(err.contains("spec.pipeline.steps[0].temporalJoin.eventTimeField: only with time: EventTime"), "{err}");
}

#[test]
fn an_inner_temporal_join_drops_the_orders_before_their_keys_first_rate() {
    let want: BTreeMap<u64, Option<u64>> = temporal_expected().into_iter().filter(|(_, v)| v.is_some()).collect();
    for (sql, prefix) in [(false, "rates_"), (true, "r_")] {
        let dir = tempfile::tempdir().unwrap();
        run_once(&temporal_job(dir.path(), "inner", sql), Faults::none()).unwrap();
        assert_eq!(temporal_got(dir.path(), prefix), want, "sql: {sql}");
    }
}

#[test]
fn the_temporal_join_example_converts_each_payment_at_the_rate_in_effect_when_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<(i64, Option<f64>, Option<f64>)> = run_example(dir.path(), "temporal-join")
        .iter()
        .map(|r| (r["payment"].as_i64().unwrap(), r["rates_rate"].as_f64(), r["usd"].as_f64()))
        .collect();
    rows.sort_by_key(|r| r.0);
    let want = [
        (1, None, None),
        (2, Some(1.10), Some(110.0)),
        (3, Some(1.30), Some(65.0)),
        (4, Some(1.12), Some(22.4)),
        (5, Some(1.27), Some(12.7)),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (got, want) in rows.iter().zip(want) {
        assert_eq!((got.0, got.1), (want.0, want.1), "{rows:?}");
        let close = match (got.2, want.2) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            (a, b) => a == b,
        };
        assert!(close, "payment {}: usd {:?}, expected {:?}", got.0, got.2, want.2);
    }
}

/// What a full window join of orders with shipments (both one per
/// millisecond, shipments over `SHIP_KEYS` keys) in 20 ms windows sliding
/// by 10 ms emits: per window and key, each pair, or each record of the
/// side that has no record there; as (window start, order seq, shipment
/// seq) with how often.
fn window_join_expected() -> BTreeMap<(i64, Option<u64>, Option<u64>), u32> {
    let mut panes: BTreeMap<(i64, u64), (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    let windows = |seq: u64| [seq as i64 - (seq as i64).rem_euclid(10), seq as i64 - (seq as i64).rem_euclid(10) - 10];
    for o in 0..ORDERS {
        for start in windows(o) {
            panes.entry((start, generated(o, KEYS).0)).or_default().0.push(o);
        }
    }
    for s in 0..SHIPMENTS {
        for start in windows(s) {
            panes.entry((start, generated(s, SHIP_KEYS).0)).or_default().1.push(s);
        }
    }
    let mut want = BTreeMap::new();
    for ((start, _), (orders, ships)) in panes {
        let rows: Vec<(Option<u64>, Option<u64>)> = match (orders.is_empty(), ships.is_empty()) {
            (false, false) => orders.iter().flat_map(|&o| ships.iter().map(move |&s| (Some(o), Some(s)))).collect(),
            (false, true) => orders.iter().map(|&o| (Some(o), None)).collect(),
            _ => ships.iter().map(|&s| (None, Some(s))).collect(),
        };
        for (o, s) in rows {
            *want.entry((start, o, s)).or_insert(0) += 1;
        }
    }
    want
}

/// The same full window join as a SQL query: Flink's join of two
/// windowing table functions.
const WINDOW_JOIN_SQL: &str = "SELECT * FROM (SELECT * FROM TABLE(HOP(TABLE source, DESCRIPTOR(ts), \
    INTERVAL '10' MILLISECOND, INTERVAL '20' MILLISECOND))) o FULL JOIN (SELECT * FROM TABLE(HOP(DATA => TABLE \
    ships, TIMECOL => DESCRIPTOR(ts), SLIDE => INTERVAL '10' MILLISECONDS, SIZE => INTERVAL '20' MILLISECONDS))) \
    ships ON o.key = ships.key AND o.window_start = ships.window_start AND o.window_end = ships.window_end";

#[test]
fn a_full_sliding_window_join_emits_each_windows_pairs_and_unmatched_records_once_through_seeded_crashes() {
    let orders = generator(ORDERS, 4);
    let shipments = generator(SHIPMENTS, 2).replace(&format!("keys: {KEYS},"), &format!("keys: {SHIP_KEYS},"));
    let steps = format!(
        r#"    steps:
      - windowJoin:
          source: {{id: ships, generator: {shipments}}}
          key: key
          size: 20ms
          slide: 10ms
          type: full"#
    );
    let sql =
        format!("    streams:\n      - source: {{id: ships, generator: {shipments}}}\n    sql: {WINDOW_JOIN_SQL:?}");
    for (join, seed) in [(steps, 0x5eed_4e61_0000_0002), (sql, 0x5eed_4e61_0000_0012)] {
        let pipeline = format!(
            "    source: {{generator: {orders}}}\n    eventTime: {{field: ts, maxOutOfOrderness: 50ms}}\n{join}"
        );
        window_join_is_exact(&pipeline, seed);
    }
}

fn window_join_is_exact(pipeline: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let job = pipeline_job(dir.path(), "window-join", 2, pipeline).expect("test manifest is valid");
    run_through_crashes(&job, seed);
    let mut got = BTreeMap::new();
    for row in committed(dir.path()) {
        let (start, end) = (row["window_start"].as_i64().unwrap(), row["window_end"].as_i64().unwrap());
        assert_eq!((end - start, row["ts"].as_i64()), (20, Some(end - 1)), "stamped with the window's end: {row}");
        if !row["ships_key"].is_null() {
            assert_eq!(row["key"], row["ships_key"], "joined across keys: {row}");
        }
        *got.entry((start, row["seq"].as_u64(), row["ships_seq"].as_u64())).or_insert(0) += 1;
    }
    let want = window_join_expected();
    let kinds = |m: &BTreeMap<(i64, Option<u64>, Option<u64>), u32>| {
        let alone = m.keys().filter(|(_, o, s)| o.is_none() || s.is_none()).count();
        (m.len() - alone, alone)
    };
    let (pairs, alone) = kinds(&want);
    assert!(pairs > 1_000 && alone > 1_000, "both pairs and unmatched records occur: {pairs}, {alone}");
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "rows committed more than once: {twice:?}");
    assert_eq!(kinds(&got), kinds(&want));
    assert_eq!(got, want);
}

#[test]
fn a_window_join_refuses_a_slide_longer_than_its_size_and_a_missing_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "    source: {generator: {keys: 2}}\n    steps:\n      - windowJoin: {source: {id: s, generator: \
                    {keys: 2}}, key: key, size: 10s, slide: 20s}";
    let err = pipeline_job(dir.path(), "w", 1, pipeline).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].windowJoin: needs spec.pipeline.eventTime"), "{err}");
    assert!(
        err.contains("spec.pipeline.steps[0].windowJoin.slide: expected from 1ms up to size (10s), got 20s"),
        "{err}"
    );
}

#[test]
fn the_window_join_example_finds_the_orders_not_shipped_the_day_they_were_placed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<(String, i64, i64)> = run_example(dir.path(), "window-join")
        .iter()
        .map(|r| {
            (
                r["order"].as_str().unwrap().into(),
                r["window_start"].as_i64().unwrap(),
                r["window_end"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    // 2026-12-01T00:00:00Z and a day later, in epoch milliseconds.
    let (day, next) = (1_796_083_200_000, 1_796_169_600_000);
    let want = ["o1", "o2", "o3"].map(|o| (o.to_string(), day, next));
    assert_eq!(rows, want.to_vec(), "o4 was shipped the day it was placed; the others not, once each");
}
