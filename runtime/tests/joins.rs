//! Streams that meet: `union` of sources and `intervalJoin` of two streams
//! by key and event time, with exact output through crashes and restores.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;
use weir_runtime::faults::Faults;
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

/// Generated orders joined with generated shipments of the same key from
/// 5 ms before to 10 ms after each order. Each split's records come in
/// event-time order, so none is late however far one source runs ahead of
/// the other, and a small bound makes records leave the join's state while
/// the job runs.
fn join_job(dir: &Path, parallelism: u32) -> weir_runtime::manifest::StreamJob {
    let pipeline = format!(
        r#"    source: {{generator: {orders}}}
    eventTime: {{field: ts, maxOutOfOrderness: 50ms}}
    steps:
      - intervalJoin:
          source: {{id: ships, generator: {shipments}}}
          key: key
          before: 5ms
          after: 10ms"#,
        orders = generator(ORDERS, 4),
        shipments = generator(SHIPMENTS, 2),
    );
    pipeline_job(dir, "join", parallelism, &pipeline).expect("test manifest is valid")
}

/// Every (order seq, shipment seq) pair the join must emit.
fn join_expected() -> BTreeMap<(u64, u64), u32> {
    let mut by_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in 0..SHIPMENTS {
        by_key.entry(generated(s, KEYS).0).or_default().push(s);
    }
    let mut want = BTreeMap::new();
    for o in 0..ORDERS {
        let ships = by_key.get(&generated(o, KEYS).0).map(Vec::as_slice).unwrap_or_default();
        for &s in ships.iter().filter(|&&s| s + 5 >= o && s <= o + 10) {
            want.insert((o, s), 1);
        }
    }
    want
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
    run_once(&join_job(dir.path(), 2), Faults::none()).expect("the job finishes");
    let (got, want) = (join_got(dir.path()), join_expected());
    assert!(want.len() > 1_000, "too few pairs to tell: {}", want.len());
    assert_eq!(got.len(), want.len(), "pairs committed against pairs expected");
    assert_eq!(got, want);
}

#[test]
fn an_interval_join_is_exact_through_seeded_crashes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes(&join_job(dir.path(), 2), 0x0bad_cafe_f00d);
    let (got, want) = (join_got(dir.path()), join_expected());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "pairs committed more than once: {twice:?}");
    assert_eq!(got, want);
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

/// The committed rows of `examples/<name>.yaml`, run as it is but with its
/// checkpoints and output under `dir`.
fn run_example(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let yaml = std::fs::read_to_string(examples.join(format!("{name}.yaml"))).unwrap();
    let yaml = yaml
        .replace("./examples/", &format!("{}/", examples.display()))
        .replace("file://./weir-data", &format!("file://{}/data", dir.display()))
        .replace("./weir-out/", &format!("{}/out/", dir.display()));
    let job = weir_runtime::manifest::StreamJob::from_yaml(&yaml).expect("the example is valid");
    run_once(&job, Faults::none()).expect("the example runs");
    read_committed(&dir.join("out").join(name)).unwrap()
}

#[test]
fn the_union_and_join_examples_run_as_they_are() {
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
}
