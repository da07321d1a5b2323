//! The typed Rust API: value, list and map state survive crashes and
//! restores; bounded channels hold back a fast source behind a slow sink.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;
use weir_runtime::connectors::{FileSink, GeneratorSource};
use weir_runtime::dataflow::{JobGraph, StreamEnv};
use weir_runtime::faults::{FaultPoint, Faults};
use weir_runtime::job::{run_job, JobConfig};
use weir_runtime::manifest::{CheckpointOptions, HumanDuration};
use weir_runtime::metrics::JobMetrics;
use weir_runtime::operators::KeyedProcessFunction;
use weir_runtime::state::{ListState, MapState, ValueState};
use weir_runtime::task::source_task::Source;
use weir_runtime::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

#[derive(Clone)]
struct Profile;

#[derive(Clone, Default, Serialize, Deserialize)]
struct ProfileState {
    n: ValueState<u64>,
    total: ValueState<i64>,
    last_three: ListState<i64>,
    seen: MapState<i64, u32>,
}

#[derive(Serialize)]
struct Update {
    key: u64,
    n: u64,
    total: i64,
    distinct: usize,
    last_three: Vec<i64>,
    times_of_this_value: u32,
}

impl KeyedProcessFunction<u64, (u64, i64), Update> for Profile {
    type State = ProfileState;
    fn process(
        &mut self,
        key: &u64,
        r: (u64, i64),
        s: &mut ProfileState,
        out: &mut Vec<Update>,
    ) -> Result<(), TaskError> {
        let n = s.n.value().copied().unwrap_or(0) + 1;
        s.n.update(n);
        let total = s.total.value().copied().unwrap_or(0) + r.1;
        s.total.update(total);
        let mut last: Vec<i64> = s.last_three.get().to_vec();
        last.push(r.1);
        if last.len() > 3 {
            last.remove(0);
        }
        s.last_three.update(last.clone());
        let times = s.seen.get(&r.1).copied().unwrap_or(0) + 1;
        s.seen.put(r.1, times);
        out.push(Update {
            key: *key,
            n,
            total,
            distinct: s.seen.iter().count(),
            last_three: last,
            times_of_this_value: times,
        });
        Ok(())
    }
}

const KEYS: u64 = 20;
const COUNT: u64 = 30_000;

fn job(dir: &std::path::Path, parallelism: u32) -> JobGraph {
    let env = StreamEnv::new(parallelism, 32);
    let out = dir.join("out");
    env.source("numbers", |ctx, restored| {
        let make = Arc::new(|seq: u64| generated(seq, KEYS));
        Ok(Box::new(GeneratorSource::new(ctx, restored, 4, Some(COUNT), 150_000, make)?) as Box<dyn Source<(u64, i64)>>)
    })
    .filter(|r: &(u64, i64)| r.1 % 10 != 3)
    .map(|(k, v): (u64, i64)| (k, v % 7))
    .key_by(|r: &(u64, i64)| r.0)
    .process("profile", Profile)
    .sink_two_phase("out", move |ctx| Ok(FileSink::<Update>::for_task(out.clone(), "part", ctx)));
    env.build().unwrap()
}

fn config(dir: &std::path::Path, faults: Faults) -> JobConfig {
    let opts = CheckpointOptions {
        interval: HumanDuration(Duration::from_millis(10)),
        storage: format!("file://{}/chk", dir.display()),
        ..CheckpointOptions::default()
    };
    let mut c = JobConfig::new("typed", "default", opts);
    c.faults = faults;
    c.batch_size = 128;
    c
}

fn run(graph: JobGraph, config: &JobConfig, metrics: Arc<JobMetrics>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let r = rt.block_on(run_job(graph, config, metrics)).map(|_| ()).map_err(|e| e.to_string());
    rt.shutdown_timeout(Duration::from_secs(5));
    r
}

/// Per key: total, values in arrival order, times each value was seen, records.
type Expected = (i64, Vec<i64>, std::collections::BTreeMap<i64, u32>, u64);

#[test]
fn value_list_and_map_state_survive_crashes_and_a_rescale() {
    let dir = tempfile::tempdir().unwrap();
    let plans = [(2, Some((FaultPoint::MidBatch, 30))), (3, Some((FaultPoint::BeforeAck, 4))), (1, None)];
    for (parallelism, fault) in plans {
        let faults = fault.map_or(Faults::none(), |(p, n)| Faults::crash_at(p, n));
        let result = run(job(dir.path(), parallelism), &config(dir.path(), faults), Arc::default());
        assert_eq!(result.is_ok(), fault.is_none(), "{result:?}");
    }

    // Replay the same logic over the generated input with plain collections.
    let mut expected: std::collections::HashMap<u64, Expected> = Default::default();
    for seq in 0..COUNT {
        let (k, v) = generated(seq, KEYS);
        if v % 10 == 3 {
            continue;
        }
        let e = expected.entry(k).or_default();
        e.0 += v % 7;
        e.1.push(v % 7);
        *e.2.entry(v % 7).or_default() += 1;
        e.3 += 1;
    }
    let rows = read_committed(&dir.path().join("out")).unwrap();
    for (key, (total, values, seen, n)) in expected {
        let mine: Vec<&serde_json::Value> = rows.iter().filter(|r| r["key"] == key).collect();
        let mut ns: Vec<u64> = mine.iter().map(|r| r["n"].as_u64().unwrap()).collect();
        ns.sort_unstable();
        assert_eq!(ns, (1..=n).collect::<Vec<_>>(), "key {key}: every record exactly once");
        let last = mine.iter().find(|r| r["n"] == n).unwrap();
        assert_eq!(last["total"], total, "key {key}: value state");
        assert_eq!(last["distinct"], seen.len(), "key {key}: map state");
        let tail = last["last_three"].as_array().unwrap();
        assert_eq!(tail.len(), values.len().min(3), "key {key}: list state");
        assert!(tail.iter().all(|v| seen.contains_key(&v.as_i64().unwrap())), "key {key}: list state");
        let firsts = mine.iter().filter(|r| r["times_of_this_value"] == 1).count();
        assert_eq!(firsts, seen.len(), "key {key}: each value counted from one");
    }
}

/// A sink that takes 2 ms per batch.
struct SlowSink(TaskContext);

#[async_trait]
impl Collector<(u64, i64)> for SlowSink {
    async fn open(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    async fn collect(&mut self, batch: Vec<(u64, i64)>) -> Result<(), TaskError> {
        std::thread::sleep(Duration::from_millis(2));
        JobMetrics::add(&self.0.metrics.records_out, batch.len());
        Ok(())
    }
    async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        Ok(())
    }
    async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
        Ok(())
    }
    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}

#[test]
fn a_slow_sink_holds_back_the_source_through_bounded_channels() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::new(1, 8);
    env.source("numbers", |ctx, restored| {
        let make = Arc::new(|seq: u64| generated(seq, KEYS));
        Ok(Box::new(GeneratorSource::new(ctx, restored, 1, Some(40_000), 0, make)?) as Box<dyn Source<(u64, i64)>>)
    })
    .key_by(|r: &(u64, i64)| r.0)
    .process("profile", Profile)
    .map(|u: Update| (u.key, u.total))
    .sink(|ctx| Ok(Box::new(SlowSink(ctx.clone())) as Box<dyn Collector<(u64, i64)>>));
    let mut cfg = config(dir.path(), Faults::none());
    cfg.batch_size = 100;
    cfg.channel_capacity = 4;
    let metrics = Arc::new(JobMetrics::default());
    let sampler_metrics = metrics.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler_done = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut worst = 0;
        while !sampler_done.load(Ordering::Relaxed) {
            let inflight = JobMetrics::get(&sampler_metrics.records_in) - JobMetrics::get(&sampler_metrics.records_out);
            worst = worst.max(inflight);
            std::thread::sleep(Duration::from_millis(1));
        }
        worst
    });
    run(env.build().unwrap(), &cfg, metrics.clone()).unwrap();
    done.store(true, Ordering::Relaxed);
    let worst = sampler.join().unwrap();
    assert_eq!(JobMetrics::get(&metrics.records_out), 40_000);
    // 4 batches queued + one in the sink + one being sent + one being made.
    assert!(worst <= 8 * 100, "{worst} records were in flight at once");
    assert!(worst >= 100, "the sampler saw nothing in flight ({worst})");
}
