//! The Nexmark queries in `examples/nexmark` give, through seeded crashes,
//! exactly the rows the query computes by hand over the same generated
//! events, each once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{json, Value};
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::nexmark::NexmarkConfig;
use weir_runtime::manifest::StreamJob;

const EVENTS: u64 = 30_000;

/// The example's query or steps (and event time) over `EVENTS` Nexmark events with
/// `events_per_second` of event time into a file sink, with 10 ms
/// checkpoints.
fn example_job(dir: &Path, query: &str, events_per_second: u64) -> StreamJob {
    example_job_of(dir, query, events_per_second, EVENTS)
}

fn example_job_of(dir: &Path, query: &str, events_per_second: u64, events: u64) -> StreamJob {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/nexmark/{query}.yaml"));
    let example = StreamJob::from_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pipeline = example.spec.pipeline.expect("the example is a pipeline");
    // JSON is YAML: the example's own settings, written as flow mappings.
    let event_time = match &pipeline.event_time {
        Some(t) => format!("\n    eventTime: {}", serde_json::to_string(t).unwrap()),
        None => String::new(),
    };
    let nexmark = format!("{{count: {events}, rate: 20000, splits: 5, eventsPerSecond: {events_per_second}}}");
    // The streams it joins: Nexmark sources of the same settings.
    let streams: String = pipeline
        .streams
        .iter()
        .map(|s| {
            format!("\n      - source: {{id: {}, nexmark: {nexmark}}}", s.source.id.as_deref().unwrap_or_default())
        })
        .collect();
    let streams = if streams.is_empty() { streams } else { format!("\n    streams:{streams}") };
    // A query, or steps whose joins read Nexmark sources of the same settings.
    let body = match &pipeline.sql {
        Some(sql) => format!("sql: {}", serde_json::to_string(sql.trim()).unwrap()),
        None => {
            let mut steps = serde_json::to_value(&pipeline.steps).unwrap();
            let settings = json!({"count": events, "rate": 20_000, "splits": 5, "eventsPerSecond": events_per_second});
            for step in steps.as_array_mut().unwrap().iter_mut().filter_map(Value::as_object_mut) {
                for joined in step.values_mut().filter_map(|s| s.get_mut("source")) {
                    if joined.get("nexmark").is_some() {
                        joined["nexmark"] = settings.clone();
                    }
                }
            }
            format!("steps: {steps}")
        }
    };
    let pipeline = format!(
        r#"    source:
      nexmark: {nexmark}{event_time}{streams}
    {body}"#
    );
    pipeline_job(dir, query, 2, &pipeline).unwrap()
}

/// Committed rows, counted.
fn committed(dir: &Path) -> BTreeMap<String, usize> {
    let mut rows = BTreeMap::new();
    for row in read_committed(&dir.join("out")).unwrap() {
        *rows.entry(row.to_string()).or_default() += 1;
    }
    rows
}

fn expected(row: impl Fn(&Value) -> Option<Value>) -> BTreeMap<String, usize> {
    expected_of(EVENTS, row)
}

fn expected_of(events: u64, row: impl Fn(&Value) -> Option<Value>) -> BTreeMap<String, usize> {
    let config = NexmarkConfig::default();
    let mut rows = BTreeMap::new();
    for n in 0..events {
        if let Some(r) = row(&config.event(n)) {
            *rows.entry(r.to_string()).or_default() += 1;
        }
    }
    rows
}

fn assert_same(query: &str, got: BTreeMap<String, usize>, want: BTreeMap<String, usize>) {
    let missing: Vec<_> = want.iter().filter(|(r, n)| got.get(*r) != Some(n)).take(3).collect();
    let extra: Vec<_> = got.iter().filter(|(r, n)| want.get(*r) != Some(n)).take(3).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{query}: missing or miscounted {missing:?}, unexpected {extra:?}");
    assert!(!want.is_empty());
}

#[test]
fn q1_converts_every_bid_exactly_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes_at(&example_job(dir.path(), "q1", 10_000), 0x5eed_4e78_0000_0001, &STATELESS_POINTS);
    let want = expected(|e| {
        (e["event_type"] == 2).then(|| {
            // Through JSON text, as the committed rows are read back (whose
            // float parsing may differ from the product in the last bit).
            let product = 0.908 * e["price"].as_i64().unwrap() as f64;
            let price: Value = serde_json::from_str(&serde_json::to_string(&product).unwrap()).unwrap();
            json!({"auction": e["auction"], "bidder": e["bidder"], "price": price, "dateTime": e["dateTime"], "extra": e["extra"]})
        })
    });
    assert_eq!(want.values().sum::<usize>(), (EVENTS * 46 / 50) as usize);
    assert_same("q1", committed(dir.path()), want);
}

#[test]
fn q2_selects_the_bids_on_every_123rd_auction_exactly_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    // Few bids pass, so more events than the others: enough sink batches
    // for every crash point to be met.
    let events = 4 * EVENTS;
    let job = example_job_of(dir.path(), "q2", 10_000, events);
    run_through_crashes_at(&job, 0x5eed_4e78_0000_0002, &STATELESS_POINTS);
    let want = expected_of(events, |e| {
        let auction = e["auction"].as_i64()?;
        (e["event_type"] == 2 && auction % 123 == 0).then(|| json!({"auction": auction, "price": e["price"]}))
    });
    assert_same("q2", committed(dir.path()), want);
}

/// A join by key alone of two Nexmark sources: each auction of category
/// 10 whose seller lives in Oregon, Idaho or California is emitted once
/// with that person, whichever of the two came first; the conditions on
/// one table run before the join, so a bid (no `seller`, no `id`) is never
/// a bad record there.
#[test]
fn q3_joins_each_auction_of_category_10_with_its_seller_in_or_id_ca_exactly_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let events = 4 * EVENTS;
    run_through_crashes(&example_job_of(dir.path(), "q3", 10_000, events), 0x5eed_4e78_0000_0003);
    let config = NexmarkConfig::default();
    let all: Vec<Value> = (0..events).map(|n| config.event(n)).collect();
    // Each person of those states by id, with where it came.
    let people: BTreeMap<i64, (usize, &Value)> = all
        .iter()
        .enumerate()
        .filter(|(_, e)| e["event_type"] == 0 && ["OR", "ID", "CA"].iter().any(|s| e["state"] == *s))
        .map(|(n, e)| (e["id"].as_i64().unwrap(), (n, e)))
        .collect();
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    let mut before_their_seller = 0;
    for (n, a) in all.iter().enumerate().filter(|(_, e)| e["event_type"] == 1 && e["category"] == 10) {
        let Some((at, p)) = people.get(&a["seller"].as_i64().unwrap()) else { continue };
        let row = json!({"name": p["name"], "city": p["city"], "state": p["state"], "id": a["id"]});
        *want.entry(row.to_string()).or_default() += 1;
        before_their_seller += usize::from(n < *at);
    }
    assert!(want.len() > 300, "{} rows", want.len());
    eprintln!("q3: {} rows, {before_their_seller} of them with the auction before its seller", want.len());
    assert_same("q3", committed(dir.path()), want);
}

#[test]
fn q0_passes_every_bid_through_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let job = example_job(dir.path(), "q0", 10_000);
    run_once(&job, weir_runtime::faults::Faults::none()).unwrap();
    let want = expected(|e| {
        (e["event_type"] == 2).then(|| {
            json!({"auction": e["auction"], "bidder": e["bidder"], "price": e["price"], "dateTime": e["dateTime"], "extra": e["extra"]})
        })
    });
    assert_same("q0", committed(dir.path()), want);
}

/// Also shows that a filter comes before the key: people and auctions have
/// no `bidder`, and under the default error policy (fail) a record lacking
/// its key is bad, but only the bids the filter passes are keyed.
#[test]
fn q11_counts_each_bidders_sessions_exactly_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    // 100 events per second of event time: 300 s, so that bidders have
    // several sessions 10 s apart.
    let config = NexmarkConfig { events_per_second: 100 };
    run_through_crashes(&example_job(dir.path(), "q11", 100), 0x5eed_4e78_0000_0011);
    let gap = 10_000;
    // Per bidder, sessions as (start, last bid, count) in event-time order.
    let mut sessions: BTreeMap<String, Vec<(i64, i64, u64)>> = BTreeMap::new();
    for n in 0..EVENTS {
        let e = config.event(n);
        if e["event_type"] != 2 {
            continue;
        }
        let (bidder, ts) = (e["bidder"].to_string(), e["dateTime"].as_i64().unwrap());
        let list = sessions.entry(bidder).or_default();
        match list.last_mut() {
            Some((_, last, count)) if ts < *last + gap => {
                *last = ts;
                *count += 1;
            }
            _ => list.push((ts, ts, 1)),
        }
    }
    let mut want = BTreeMap::new();
    for (bidder, list) in &sessions {
        for (start, last, count) in list {
            let row = json!({"bidder": bidder, "bid_count": count, "starttime": start, "endtime": last + gap});
            *want.entry(row.to_string()).or_default() += 1;
        }
    }
    assert!(sessions.values().any(|l| l.len() > 1), "some bidder has more than one session");
    // The key comes out as a string, whatever its type in the records.
    let mut got = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let mut row = row;
        if let Some(b) = row.get("bidder").cloned() {
            row["bidder"] = Value::String(b.as_str().map(str::to_string).unwrap_or_else(|| b.to_string()));
        }
        *got.entry(row.to_string()).or_default() += 1;
    }
    assert_same("q11", got, want);
}

#[test]
fn q15_reports_each_days_bids_bidders_and_auctions_per_price_range_exactly_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    run_through_crashes(&example_job(dir.path(), "q15", 10_000), 0x5eed_4e78_0000_0015);
    // The generator's event time starts at 2026-01-01T00:00:00Z; these
    // events span 3 s of it.
    assert_eq!(weir_runtime::connectors::nexmark::BASE_TIME_MS, 1_767_225_600_000);
    let config = NexmarkConfig::default();
    let (mut bids, mut ranks) = (0u64, [0u64; 3]);
    let mut bidders: [std::collections::BTreeSet<i64>; 4] = Default::default();
    let mut auctions: [std::collections::BTreeSet<i64>; 4] = Default::default();
    for n in 0..EVENTS {
        let e = config.event(n);
        if e["event_type"] != 2 {
            continue;
        }
        let price = e["price"].as_i64().unwrap();
        let rank = if price < 10_000 {
            1
        } else if price < 1_000_000 {
            2
        } else {
            3
        };
        bids += 1;
        ranks[rank - 1] += 1;
        for r in [0, rank] {
            bidders[r].insert(e["bidder"].as_i64().unwrap());
            auctions[r].insert(e["auction"].as_i64().unwrap());
        }
    }
    let want = json!({
        "day": "2026-01-01", "total_bids": bids,
        "rank1_bids": ranks[0], "rank2_bids": ranks[1], "rank3_bids": ranks[2],
        "total_bidders": bidders[0].len(), "rank1_bidders": bidders[1].len(),
        "rank2_bidders": bidders[2].len(), "rank3_bidders": bidders[3].len(),
        "total_auctions": auctions[0].len(), "rank1_auctions": auctions[1].len(),
        "rank2_auctions": auctions[2].len(), "rank3_auctions": auctions[3].len(),
    });
    assert!(ranks.iter().all(|&r| r > 0), "every price range has bids: {ranks:?}");
    // An update per bid, each once; the splits interleave differently from
    // run to run, so the distinct counts between vary, but never go down.
    let mut updates: BTreeMap<u64, Value> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let n = row["total_bids"].as_u64().unwrap();
        assert!(updates.insert(n, row.clone()).is_none(), "the update for bid {n} was committed twice");
    }
    assert_eq!(updates.keys().copied().collect::<Vec<_>>(), (1..=bids).collect::<Vec<_>>());
    for field in ["total_bidders", "rank1_bidders", "total_auctions", "rank3_auctions"] {
        let seen: Vec<u64> = updates.values().map(|r| r[field].as_u64().unwrap()).collect();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{field} never goes down");
    }
    assert_eq!(updates[&bids], want, "the last update holds the day's totals");
}

#[test]
fn q5_emits_each_windows_auctions_with_the_most_bids_once_through_seeded_crashes() {
    let dir = tempfile::tempdir().unwrap();
    // 200 events per second of event time: 150 s, 75 windows 10 s long
    // starting every 2 s.
    let config = NexmarkConfig { events_per_second: 200 };
    run_through_crashes(&example_job(dir.path(), "q5", 200), 0x5eed_4e78_0000_0005);
    let (size, slide) = (10_000i64, 2_000i64);
    let mut counts: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for n in 0..EVENTS {
        let e = config.event(n);
        if e["event_type"] != 2 {
            continue;
        }
        let ts = e["dateTime"].as_i64().unwrap();
        let auction = e["auction"].to_string();
        let mut start = ts - ts.rem_euclid(slide);
        while start + size > ts {
            *counts.entry(start).or_default().entry(auction.clone()).or_default() += 1;
            start -= slide;
        }
    }
    let mut want = BTreeMap::new();
    let mut tied = 0;
    for (start, auctions) in &counts {
        // Every auction tied for the most bids (RANK() = 1), as q5 lists them.
        let most = auctions.values().copied().max().unwrap();
        let first: Vec<&String> = auctions.iter().filter(|(_, n)| **n == most).map(|(a, _)| a).collect();
        tied += usize::from(first.len() > 1);
        for auction in first {
            let row = json!({"auction": auction, "num": most, "window_start": start, "window_end": start + size});
            *want.entry(row.to_string()).or_default() += 1;
        }
    }
    assert!(counts.len() > 70, "{} windows", counts.len());
    assert!(tied > 0, "some window has auctions tied for the most bids, so ties are checked");
    assert_same("q5", committed(dir.path()), want);
}

/// A window semi join of two Nexmark sources: each person who opened an
/// auction in the 10-second window they registered in is emitted once,
/// with the window's start, through seeded crashes.
#[test]
fn q8_emits_each_person_with_an_auction_in_their_registration_window_exactly_once_through_seeded_crashes() {
    for (query, seed) in [("q8", 0x5eed_4e78_0000_0008), ("q8-sql", 0x5eed_4e78_0000_0018)] {
        q8_as(query, seed);
    }
}

/// q8 written as `query` (steps, or the SQL window semi join).
fn q8_as(query: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (events, per_second) = (4 * EVENTS, 500);
    run_through_crashes(&example_job_of(dir.path(), query, per_second, events), seed);
    let config = NexmarkConfig { events_per_second: per_second };
    let all: Vec<Value> = (0..events).map(|n| config.event(n)).collect();
    let window = |e: &Value| e["dateTime"].as_i64().unwrap().div_euclid(10_000) * 10_000;
    let sold: std::collections::BTreeSet<(i64, i64)> =
        all.iter().filter(|e| e["event_type"] == 1).map(|a| (a["seller"].as_i64().unwrap(), window(a))).collect();
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    let mut without = 0;
    for p in all.iter().filter(|e| e["event_type"] == 0) {
        if sold.contains(&(p["id"].as_i64().unwrap(), window(p))) {
            let row = json!({"id": p["id"], "name": p["name"], "starttime": window(p)});
            *want.entry(row.to_string()).or_default() += 1;
        } else {
            without += 1;
        }
    }
    eprintln!("{query}: {} people with an auction in their window, {without} without", want.len());
    assert!(want.len() > 100 && without > 100, "both kinds of people occur: {} and {without}", want.len());
    assert_same(query, committed(dir.path()), want);
}

/// A Window Top-N over the bids themselves: each 10-second window's bids at
/// its highest price, ties all, once each, through seeded crashes; as
/// steps and as a SQL query over a windowing table function.
#[test]
fn q7_emits_the_highest_bids_of_each_window_exactly_once_through_seeded_crashes() {
    for (query, seed) in [("q7", 0x5eed_4e78_0000_0007), ("q7-sql", 0x5eed_4e78_0000_0017)] {
        q7_as(query, seed);
    }
}

fn q7_as(query: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (events, per_second) = (4 * EVENTS, 100);
    run_through_crashes(&example_job_of(dir.path(), query, per_second, events), seed);
    let config = NexmarkConfig { events_per_second: per_second };
    let bids: Vec<Value> = (0..events).map(|n| config.event(n)).filter(|e| e["event_type"] == 2).collect();
    let window = |e: &Value| e["dateTime"].as_i64().unwrap().div_euclid(10_000);
    let mut highest: BTreeMap<i64, i64> = BTreeMap::new();
    for b in &bids {
        let top = highest.entry(window(b)).or_insert(i64::MIN);
        *top = (*top).max(b["price"].as_i64().unwrap());
    }
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for b in bids.iter().filter(|b| Some(&b["price"].as_i64().unwrap()) == highest.get(&window(b))) {
        let row = json!({"auction": b["auction"], "price": b["price"], "bidder": b["bidder"],
                         "dateTime": b["dateTime"], "extra": b["extra"]});
        *want.entry(row.to_string()).or_default() += 1;
    }
    assert!(highest.len() > 100, "{} windows", highest.len());
    assert_same(query, committed(dir.path()), want);
}
