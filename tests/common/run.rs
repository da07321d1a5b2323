//! `weir run` of a generated keyed count/sum job into any sink, killed
//! and stopped at will: what the sink suites share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Keys of the generated records.
pub const KEYS: u64 = 50;

pub struct Job<'a> {
    pub name: &'a str,
    pub count: u64,
    pub rate: u64,
    /// The sink's YAML after `sink:`.
    pub sink: String,
    pub restart: &'a str,
}

pub fn write_manifest(dir: &Path, job: &Job) -> PathBuf {
    let source = format!("generator: {{keys: {KEYS}, count: {}, rate: {}}}", job.count, job.rate);
    write_manifest_reading(dir, job, &source, 2)
}

/// The job's manifest with another source (YAML after `source:`) at
/// `parallelism`; `count` and `rate` are the generator's and unused here.
pub fn write_manifest_reading(dir: &Path, job: &Job, source: &str, parallelism: u32) -> PathBuf {
    let path = dir.join(format!("{}.yaml", job.name));
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
spec:
  parallelism: {parallelism}
  restartStrategy: {restart}
  checkpoints:
    interval: 100ms
    storage: file://{dir}/checkpoints
  pipeline:
    source:
      {source}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}
    sink:
      {sink}
"#,
        name = job.name,
        restart = job.restart,
        sink = job.sink,
        dir = dir.display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

pub fn weir(manifest: &Path, dir: &Path, log: &str) -> Child {
    weir_stopping_at(manifest, dir, log, "")
}

/// `weir run`, which stops itself (SIGSTOP) at `stop_at` (`Point:n`, see
/// `faults::StopPoint`) when it is not empty.
pub fn weir_stopping_at(manifest: &Path, dir: &Path, log: &str, stop_at: &str) -> Child {
    let stderr = std::fs::File::create(dir.join(log)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--no-progress-line"])
        .arg(manifest)
        .current_dir(dir)
        .env("WEIR_LOG", std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .env("WEIR_STOP_AT", stop_at)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits for `child` at most `limit`; kills it and fails past that.
pub fn finish(mut child: Child, limit: Duration, dir: &Path, log: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("weir run did not end within {limit:?}: {}", std::fs::read_to_string(dir.join(log)).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn kill_nine_repeatedly(manifest: &Path, dir: &Path, delays_ms: &[u64]) -> usize {
    let mut kills = 0;
    for (i, delay_ms) in delays_ms.iter().enumerate() {
        let mut child = weir(manifest, dir, &format!("killed-{i}.log"));
        std::thread::sleep(Duration::from_millis(*delay_ms));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    kills
}

/// Runs the job until it stops itself at `stop_at`, then `kill -9`s it
/// there; the log if it ended first.
pub fn kill_nine_at(manifest: &Path, dir: &Path, stop_at: &str) -> Result<(), String> {
    let log = format!("stopped-{}.log", stop_at.replace(':', "-"));
    let mut child = weir_stopping_at(manifest, dir, &log, stop_at);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("{status}: {}", std::fs::read_to_string(dir.join(&log)).unwrap()));
        }
        if super::process_state(child.id()) == Some('T') {
            break;
        }
        assert!(Instant::now() < deadline, "weir run never reached {stop_at}");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    Ok(())
}

/// Runs the job once, which must fail; its log.
pub fn run_to_failure(job: &Job) -> String {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), job);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(60), dir.path(), "run.log");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(!status.success(), "expected the job to fail: {log}");
    log
}

/// Waits until `progress` says the running job has reached its target
/// (rows committed, keys written): a fault is injected on evidence, not
/// after a fixed time that a slow start on a loaded machine outlasts.
pub fn wait_for_progress(child: &mut Child, what: &str, mut progress: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !progress() {
        assert!(Instant::now() < deadline, "{what}: not within a minute");
        assert!(child.try_wait().unwrap().is_none(), "{what}: the job ended first");
        std::thread::sleep(Duration::from_millis(50));
    }
}
