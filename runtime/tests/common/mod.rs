//! Helpers shared by the runtime's integration tests: a keyed counting job,
//! running it with a fault plan, and checking its committed output.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;
use weir_runtime::faults::Faults;
use weir_runtime::job::{run_job, JobConfig, JobError, JobOutcome};
use weir_runtime::manifest::StreamJob;
use weir_runtime::metrics::JobMetrics;

pub struct JobSpec {
    pub parallelism: u32,
    pub count: u64,
    pub keys: u64,
    pub rate: u64,
    pub interval: &'static str,
    pub mode: &'static str,
    /// Checkpoint storage; `file://<dir>/checkpoints` when `None`.
    pub storage: Option<String>,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            parallelism: 2,
            count: 20_000,
            keys: 50,
            rate: 100_000,
            interval: "10ms",
            mode: "ExactlyOnce",
            storage: None,
        }
    }
}

pub fn manifest(dir: &Path, s: &JobSpec) -> StreamJob {
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: counts}}
spec:
  parallelism: {p}
  maxParallelism: 16
  checkpoints: {{interval: {interval}, mode: {mode}, storage: "{storage}", retained: 2}}
  pipeline:
    source:
      generator: {{keys: {keys}, count: {count}, rate: {rate}, splits: 6}}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}
    sink:
      file: {{path: "{dir}/out"}}
"#,
        p = s.parallelism,
        interval = s.interval,
        mode = s.mode,
        dir = dir.display(),
        keys = s.keys,
        count = s.count,
        rate = s.rate,
        storage = s.storage.clone().unwrap_or_else(|| format!("file://{}/checkpoints", dir.display())),
    );
    StreamJob::from_yaml(&yaml).expect("test manifest is valid")
}

/// Runs the job once in a fresh runtime, as a fresh process would.
pub fn run_once(job: &StreamJob, faults: Faults) -> Result<JobOutcome, JobError> {
    let graph = weir_runtime::pipeline::build(&job.spec).expect("pipeline builds");
    let mut config = JobConfig::new(&job.metadata.name, "default", job.spec.checkpoints.clone());
    config.faults = faults;
    config.batch_size = 256;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let result = rt.block_on(run_job(graph, &config, Arc::new(JobMetrics::default())));
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// Per key: how many records and their value sum the generator produces.
pub fn expected(count: u64, keys: u64) -> HashMap<String, (u64, i64)> {
    let mut m: HashMap<String, (u64, i64)> = HashMap::new();
    for seq in 0..count {
        let (k, v) = generated(seq, keys);
        let e = m.entry(format!("k{k}")).or_default();
        e.0 += 1;
        e.1 += v;
    }
    m
}

/// Committed updates per key: count -> (how many times seen, sum).
pub fn committed(dir: &Path) -> BTreeMap<String, BTreeMap<u64, (u32, i64)>> {
    let mut out: BTreeMap<String, BTreeMap<u64, (u32, i64)>> = BTreeMap::new();
    for row in read_committed(&dir.join("out")).unwrap() {
        let key = row["key"].as_str().unwrap().to_string();
        let count = row["count"].as_u64().unwrap();
        let sum = row["sum_value"].as_i64().unwrap();
        let e = out.entry(key).or_default().entry(count).or_insert((0, sum));
        e.0 += 1;
    }
    out
}

/// Every record counted exactly once: each key's updates are exactly
/// 1..=n once each, and the last one carries the whole sum.
pub fn assert_exactly_once(dir: &Path, count: u64, keys: u64) {
    let want = expected(count, keys);
    let got = committed(dir);
    assert_eq!(got.len(), want.len(), "keys in output");
    for (key, (n, sum)) in &want {
        let updates = got.get(key).unwrap_or_else(|| panic!("key {key} missing from output"));
        let dupes: Vec<_> = updates.iter().filter(|(_, (seen, _))| *seen != 1).collect();
        assert!(dupes.is_empty(), "key {key}: updates seen more than once: {dupes:?}");
        let counts: Vec<u64> = updates.keys().copied().collect();
        assert_eq!(counts, (1..=*n).collect::<Vec<_>>(), "key {key}: updates are not exactly 1..={n}");
        assert_eq!(updates[n].1, *sum, "key {key}: final sum");
    }
}

/// Nothing lost: every key reached at least its record count and sum.
pub fn assert_at_least_once(dir: &Path, count: u64, keys: u64) {
    let want = expected(count, keys);
    let got = committed(dir);
    for (key, (n, sum)) in &want {
        let updates = got.get(key).unwrap_or_else(|| panic!("key {key} missing from output"));
        let (max_count, (_, max_sum)) = updates.iter().next_back().unwrap();
        assert!(*max_count >= *n, "key {key}: saw {max_count} of {n} records");
        assert!(*max_sum >= *sum, "key {key}: sum {max_sum} below {sum}");
        for c in 1..=*n {
            assert!(updates.contains_key(&c), "key {key}: update {c} lost");
        }
    }
}

/// A small deterministic generator for test seeds.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
