//! Helpers shared by the runtime's integration tests: a keyed counting job,
//! running it with a fault plan, and checking its committed output.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use weir_runtime::faults::{FaultPoint, Faults};
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

/// A job at `parallelism` (max 16) with 10 ms checkpoints under `dir`
/// whose pipeline is `pipeline` (YAML lines indented by four spaces:
/// source, steps or sql, eventTime), writing to the file sink `dir/out`.
pub fn pipeline_job(dir: &Path, name: &str, parallelism: u32, pipeline: &str) -> Result<StreamJob, String> {
    job_with_policy(dir, name, parallelism, "", pipeline)
}

/// [`pipeline_job`] whose bad records are dead-lettered to `DIR/dead`.
pub fn dead_lettering_job(dir: &Path, name: &str, parallelism: u32, pipeline: &str) -> Result<StreamJob, String> {
    let policy = format!("  errorPolicy: {{onBadRecord: deadLetter, deadLetterPath: \"{}/dead\"}}\n", dir.display());
    job_with_policy(dir, name, parallelism, &policy, pipeline)
}

fn job_with_policy(
    dir: &Path,
    name: &str,
    parallelism: u32,
    policy: &str,
    pipeline: &str,
) -> Result<StreamJob, String> {
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  parallelism: {parallelism}
  maxParallelism: 16
  checkpoints: {{interval: 10ms, storage: "file://{dir}/checkpoints", retained: 2}}
{policy}  pipeline:
{pipeline}
    sink:
      file: {{path: "{dir}/out"}}
"#,
        dir = dir.display(),
    );
    StreamJob::from_yaml(&yaml).map_err(|e| e.to_string())
}

/// Runs the job once in a fresh runtime, as a fresh process would.
pub fn run_once(job: &StreamJob, faults: Faults) -> Result<JobOutcome, JobError> {
    run_with_metrics(job, faults).0
}

/// [`run_once`], also returning the metrics the run kept.
pub fn run_with_metrics(job: &StreamJob, faults: Faults) -> (Result<JobOutcome, JobError>, Arc<JobMetrics>) {
    let graph = weir_runtime::pipeline::build(&job.spec).expect("pipeline builds");
    let mut config = JobConfig::for_job(job);
    config.faults = faults;
    config.batch_size = 256;
    let metrics = Arc::new(JobMetrics::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let result = rt.block_on(run_job(graph, &config, metrics.clone()));
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    (result, metrics)
}

/// Every record counted exactly once (see [`weir_runtime::verify`]).
pub fn assert_exactly_once(dir: &Path, count: u64, keys: u64) {
    if let Err(e) = weir_runtime::verify::check_exactly_once(&dir.join("out"), count, keys) {
        panic!("{e}");
    }
}

/// Nothing lost.
pub fn assert_at_least_once(dir: &Path, count: u64, keys: u64) {
    if let Err(e) = weir_runtime::verify::check_at_least_once(&dir.join("out"), count, keys) {
        panic!("{e}");
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

/// Runs `job` to the end through ten seeded crashes at any fault point.
pub fn run_through_crashes(job: &StreamJob, seed: u64) {
    run_through_crashes_at(job, seed, &FaultPoint::ALL)
}

/// Crash points a job without keyed steps meets (it has no `MidBatch`).
pub const STATELESS_POINTS: [FaultPoint; 4] =
    [FaultPoint::SourceBatch, FaultPoint::BeforeAck, FaultPoint::AfterMetadata, FaultPoint::DuringCommit];

/// [`run_through_crashes`] drawing crash points from `points` only.
pub fn run_through_crashes_at(job: &StreamJob, seed: u64, points: &[FaultPoint]) {
    let mut rng = Rng(seed);
    let mut crashes = 0;
    let mut runs = Vec::new();
    loop {
        let faults = if crashes < 10 {
            let point = points[rng.below(points.len() as u64) as usize];
            Faults::crash_at(point, 1 + rng.below(3)).pacing_sources(std::time::Duration::from_millis(1))
        } else {
            Faults::none()
        };
        runs.push(format!("{faults:?}"));
        let (result, metrics) = run_with_metrics(job, faults);
        assert_eq!(JobMetrics::get(&metrics.late_records_dropped), 0, "splits far apart after a restore are not late");
        match result {
            Ok(_) => break,
            Err(e) if weir_runtime::job::failure::kind(&e) == weir_runtime::task::error::FailureKind::Injected => {
                crashes += 1
            }
            Err(e) => panic!("job failed for a reason other than the injected crash: {e}"),
        }
        assert!(crashes <= 60, "the job did not finish");
    }
    // Too few: the job ended before the crash drawn was met (too little
    // input for the crash points drawn).
    assert!(crashes >= 4, "only {crashes} crashes happened; the runs' faults: {runs:?}");
}

/// The committed rows of `examples/<name>.yaml`, run as it is but with its
/// checkpoints and output under `dir`.
pub fn run_example(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let yaml = std::fs::read_to_string(examples.join(format!("{name}.yaml"))).unwrap();
    let yaml = yaml
        .replace("./examples/", &format!("{}/", examples.display()))
        .replace("file://./weir-data", &format!("file://{}/data", dir.display()))
        .replace("./weir-out/", &format!("{}/out/", dir.display()));
    let job = weir_runtime::manifest::StreamJob::from_yaml(&yaml).expect("the example is valid");
    run_once(&job, Faults::none()).expect("the example runs");
    weir_runtime::connectors::file_sink::read_committed(&dir.join("out").join(name)).unwrap()
}

/// Every (order seq, shipment seq) pair an interval join of two generators
/// must emit: `orders` records over `order_keys` keys and `shipments` over
/// `ship_keys`, one per millisecond each, a shipment matching an order of
/// its key from `before` ms before to `after` ms after it.
pub fn generated_pairs(
    (orders, order_keys): (u64, u64),
    (shipments, ship_keys): (u64, u64),
    before: u64,
    after: u64,
) -> BTreeMap<(u64, u64), u32> {
    use weir_runtime::connectors::generator::generated;
    let mut by_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in 0..shipments {
        by_key.entry(generated(s, ship_keys).0).or_default().push(s);
    }
    let mut want = BTreeMap::new();
    for o in 0..orders {
        let ships = by_key.get(&generated(o, order_keys).0).map(Vec::as_slice).unwrap_or_default();
        for &s in ships.iter().filter(|&&s| s + before >= o && s <= o + after) {
            want.insert((o, s), 1);
        }
    }
    want
}
