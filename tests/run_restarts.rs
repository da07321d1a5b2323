//! `weir run` applies `spec.restartStrategy` as a Flink mini cluster does:
//! a failed attempt restarts from the newest completed checkpoint, and a
//! spent budget ends the run with an error that says why.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const COUNT: u64 = 100_000;
const KEYS: u64 = 50;

fn weir_run(dir: &Path, yaml: &str, fault: Option<&str>) -> Output {
    let manifest = dir.join("job.yaml");
    std::fs::write(&manifest, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run", "--no-progress-line"]).arg(&manifest).current_dir(dir).env("WEIR_LOG", "warn");
    if let Some(f) = fault {
        cmd.env("WEIR_INJECT_FAULT", f);
    }
    cmd.output().unwrap()
}

#[test]
fn a_failed_attempt_restarts_from_its_checkpoint_and_the_output_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: restarts}}
spec:
  parallelism: 2
  checkpoints: {{interval: 50ms, storage: "file://{d}/chk"}}
  restartStrategy: {{fixedDelay: {{attempts: 2, delay: 100ms}}}}
  pipeline:
    source: {{generator: {{keys: {KEYS}, count: {COUNT}, rate: 200000}}}}
    steps: [{{keyBy: {{field: key}}}}, {{aggregate: {{count: true, sum: [value]}}}}]
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.path().display()
    );
    // Crash once, right after a checkpoint's _metadata is written.
    let out = weir_run(dir.path(), &yaml, Some("AfterMetadata:4"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("restart 1 in"), "the restart is announced: {stderr}");
    assert!(stderr.contains("resumed from checkpoint"), "{stderr}");
    if let Err(e) = weir_runtime::verify::check_exactly_once(&dir.path().join("out"), COUNT, KEYS) {
        panic!("{e}");
    }
}

#[test]
fn a_spent_restart_budget_ends_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"key\": \"a\", \"value\": 1}\nnot json\n").unwrap();
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: broken}}
spec:
  parallelism: 1
  checkpoints: {{interval: 50ms, storage: "file://{d}/chk"}}
  errorPolicy: {{onBadRecord: fail}}
  restartStrategy: {{fixedDelay: {{attempts: 2, delay: 10ms}}}}
  pipeline:
    source: {{file: {{path: "{d}/in.jsonl"}}}}
    steps: [{{keyBy: {{field: key}}}}, {{aggregate: {{count: true}}}}]
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.path().display()
    );
    let out = weir_run(dir.path(), &yaml, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("restart ").count(), 2, "two restarts, then no more: {stderr}");
    assert!(stderr.contains("giving up after 3 failure(s)"), "{stderr}");
    assert!(stderr.contains("in.jsonl:2"), "the bad record is named: {stderr}");
}

#[test]
fn a_frozen_run_that_wakes_after_another_run_took_over_stops_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let count = 300_000;
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: twice}}
spec:
  parallelism: 2
  checkpoints: {{interval: 100ms, storage: "file://{d}/chk", retained: 2}}
  restartStrategy: {{fixedDelay: {{attempts: 5, delay: 100ms}}}}
  pipeline:
    source: {{generator: {{keys: {KEYS}, count: {count}, rate: 100000}}}}
    steps: [{{keyBy: {{field: key}}}}, {{aggregate: {{count: true, sum: [value]}}}}]
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.path().display()
    );
    let manifest = dir.path().join("job.yaml");
    std::fs::write(&manifest, &yaml).unwrap();
    let log = std::fs::File::create(dir.path().join("first.log")).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--no-progress-line"])
        .arg(&manifest)
        .current_dir(dir.path())
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let ledger = dir.path().join("chk/default/twice/_ledger");
    let start = Instant::now();
    // Two entries: the run joined and committed a checkpoint.
    while std::fs::read_dir(&ledger).map_or(0, |d| d.count()) < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "the first run committed no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Frozen (a laptop suspended, a process stopped); a second run of the
    // same manifest takes over the checkpoints and finishes the job.
    common::signal(first.id(), "STOP");
    let second = weir_run(dir.path(), &yaml, None);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("resumed from checkpoint"), "{stderr}");
    common::signal(first.id(), "CONT");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the woken run did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("another run of this job took over"), "{said}");
    if let Err(e) = weir_runtime::verify::check_exactly_once(&dir.path().join("out"), count, KEYS) {
        panic!("{e}");
    }
}
