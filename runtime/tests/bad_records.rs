//! Records that fail to parse or process follow the job's error policy:
//! fail names the record, skip counts it, deadLetter writes it exactly once.

mod common;

use std::path::Path;
use std::sync::Arc;

use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::faults::{FaultPoint, Faults};
use weir_runtime::job::{run_job, JobConfig, JobError};
use weir_runtime::manifest::StreamJob;
use weir_runtime::metrics::JobMetrics;

/// 3 files of 400 lines; every 50th line is broken in one of three ways.
fn write_input(dir: &Path) -> (u64, u64) {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let (mut good, mut bad) = (0, 0);
    for f in 0..3 {
        let mut text = String::new();
        for i in 0..400 {
            let n = f * 400 + i;
            let line = match n % 150 {
                49 => "{\"key\": \"k1\", \"value\": ".to_string(),
                99 => "[1, 2, 3]".to_string(),
                149 => format!("{{\"key\": \"k{}\", \"value\": \"many-{n}\"}}", n % 7),
                _ => format!("{{\"key\": \"k{}\", \"value\": {}}}", n % 7, n % 10),
            };
            if n % 50 == 49 {
                bad += 1;
            } else {
                good += 1;
            }
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(input.join(format!("part-{f}.jsonl")), text).unwrap();
    }
    (good, bad)
}

fn job(dir: &Path, policy: &str) -> StreamJob {
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: files}}
spec:
  parallelism: 2
  checkpoints: {{interval: 10ms, storage: "file://{d}/checkpoints"}}
  errorPolicy: {policy}
  pipeline:
    source: {{file: {{path: "{d}/in"}}}}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.display()
    );
    StreamJob::from_yaml(&yaml).unwrap()
}

fn run(job: &StreamJob, faults: Faults) -> (Result<(), JobError>, Arc<JobMetrics>) {
    let graph = weir_runtime::pipeline::build(&job.spec).unwrap();
    let mut config = JobConfig::new(&job.metadata.name, "default", job.spec.checkpoints.clone());
    config.faults = faults;
    config.batch_size = 16;
    let metrics = Arc::new(JobMetrics::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let r = rt.block_on(run_job(graph, &config, metrics.clone())).map(|_| ());
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    (r, metrics)
}

#[test]
fn fail_policy_stops_the_job_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path());
    let (result, _) = run(&job(dir.path(), "{onBadRecord: fail}"), Faults::none());
    let err = result.unwrap_err().to_string();
    // Two subtasks read two files; whichever meets its first bad line first
    // stops the job, and the error names that file and line.
    let first_bad = [("part-0.jsonl:50", "invalid JSON"), ("part-1.jsonl:50", "field `value` must be a number")];
    assert!(first_bad.iter().any(|(at, why)| err.contains(at) && err.contains(why)), "{err}");
}

#[test]
fn skip_policy_drops_and_counts_bad_records_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = write_input(dir.path());
    let (result, metrics) = run(&job(dir.path(), "{onBadRecord: skip}"), Faults::none());
    result.unwrap();
    assert_eq!(JobMetrics::get(&metrics.bad_records_skipped), bad);
    assert_eq!(read_committed(&dir.path().join("out")).unwrap().len() as u64, good);
}

#[test]
fn dead_letter_policy_writes_each_bad_record_once_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = write_input(dir.path());
    let policy = format!("{{onBadRecord: deadLetter, deadLetterPath: \"{}/dead\"}}", dir.path().display());
    let job = job(dir.path(), &policy);
    let mut crashes = 0;
    for (point, nth) in [
        (FaultPoint::SourceBatch, 10),
        (FaultPoint::MidBatch, 6),
        (FaultPoint::SourceBatch, 12),
        (FaultPoint::DuringCommit, 1),
    ] {
        if run(&job, Faults::crash_at(point, nth)).0.is_err() {
            crashes += 1;
        }
    }
    assert!(crashes >= 3, "only {crashes} crashes");
    run(&job, Faults::none()).0.unwrap();

    let dead = read_committed(&dir.path().join("dead")).unwrap();
    let mut seen: Vec<String> = dead.iter().map(|d| format!("{} {}", d["origin"], d["record"])).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), dead.len(), "a dead letter was written twice");
    assert_eq!(dead.len() as u64, bad, "every bad record is in the dead-letter output once");
    assert!(dead.iter().any(|d| d["reason"].as_str().unwrap().contains("must be a number")));
    assert_eq!(read_committed(&dir.path().join("out")).unwrap().len() as u64, good);
}
