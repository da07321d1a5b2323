//! Checkpoints in a real S3-compatible object store (moto, started by
//! `scripts/test-s3`): crashes and restores through S3 keep output exact.
//! Needs the `s3` feature and `WEIR_TEST_S3_ENDPOINT`.

#![cfg(feature = "s3")]

mod common;

use common::*;
use weir_runtime::checkpoint::{CheckpointError, CheckpointStore, Ledger, LedgerSlot};
use weir_runtime::faults::{FaultPoint, Faults};

fn endpoint() -> String {
    std::env::var("WEIR_TEST_S3_ENDPOINT")
        .expect("WEIR_TEST_S3_ENDPOINT must point at an S3 server; scripts/test-s3 starts one")
}

#[test]
#[ignore = "needs an S3 server: scripts/test-s3 starts one and runs these"]
fn checkpoints_in_s3_restore_after_crashes_with_exact_output() {
    // The store reads endpoint and credentials from the environment, as a pod would.
    std::env::set_var("AWS_ENDPOINT_URL", endpoint());
    let dir = tempfile::tempdir().unwrap();
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let prefix = format!("run-{}", std::process::id());
    // A slower source than the default: S3 checkpoints take tens of
    // milliseconds, and at full speed the job could end before each planned
    // crash point is reached.
    let spec = JobSpec { storage: Some(format!("s3://{bucket}/{prefix}")), rate: 20_000, ..JobSpec::default() };
    let job = manifest(dir.path(), &spec);
    let mut crashes = 0;
    for (point, nth) in [(FaultPoint::AfterMetadata, 3), (FaultPoint::MidBatch, 10), (FaultPoint::DuringCommit, 2)] {
        match run_once(&job, Faults::crash_at(point, nth)) {
            Err(_) => crashes += 1,
            Ok(_) => break,
        }
    }
    assert_eq!(crashes, 3, "every planned crash point is reached before the job ends");
    let outcome = run_once(&job, Faults::none()).unwrap();
    assert!(outcome.restored_from.is_some(), "the last run restored from S3");
    assert_exactly_once(dir.path(), spec.count, spec.keys);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = CheckpointStore::open(&format!("s3://{bucket}/{prefix}"), "default", "counts").unwrap();
    let ids = rt.block_on(store.checkpoint_ids()).unwrap();
    assert!(!ids.is_empty() && ids.len() <= 3, "retention keeps 2 completed (and maybe one in progress): {ids:?}");
    let committed = rt.block_on(Ledger::read(&store)).unwrap();
    let latest = rt
        .block_on(store.latest_restorable(16, &weir_runtime::checkpoint::Load::MetadataOnly, &[], &committed))
        .unwrap()
        .unwrap();
    assert_eq!(Some(latest.id), outcome.last_checkpoint.map(|c| c.id));
}

#[test]
#[ignore = "needs an S3 server: scripts/test-s3 starts one and runs these"]
fn on_s3_an_attempt_that_another_joined_after_commits_nothing() {
    std::env::set_var("AWS_ENDPOINT_URL", endpoint());
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let store =
        CheckpointStore::open(&format!("s3://{bucket}/ledger-{}", std::process::id()), "default", "job").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let old = Ledger::join(&store, 1, 0x100 + 1, &LedgerSlot::default()).await.unwrap();
        old.commit(1).await.unwrap();
        let new = Ledger::join(&store, 2, 0x100 + 2, &LedgerSlot::default()).await.unwrap();
        // A conditional put (If-None-Match: *) refuses the old attempt's
        // entry: the server must not let it replace the new one's.
        let err = old.commit(2).await.unwrap_err();
        assert!(matches!(err, CheckpointError::Superseded { .. }), "{err}");
        new.commit(2).await.unwrap();
        let committed = Ledger::join(&store, 3, 0x100 + 3, &LedgerSlot::default()).await.unwrap().committed().await;
        assert!(committed.admits(1) && committed.admits(2) && !committed.admits(3));
    });
}

fn signal(pid: &str, sig: &str) {
    assert!(std::process::Command::new("kill").args(["-s", sig, pid]).status().unwrap().success());
}

#[test]
#[ignore = "needs an S3 server: scripts/test-s3 starts one and runs these"]
fn storage_that_stops_answering_fails_checkpoints_not_the_output() {
    std::env::set_var("AWS_ENDPOINT_URL", endpoint());
    let Ok(pid) = std::env::var("WEIR_TEST_S3_PID") else {
        panic!("WEIR_TEST_S3_PID must name the S3 server's process; scripts/test-s3 sets it")
    };
    let dir = tempfile::tempdir().unwrap();
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let spec = JobSpec {
        count: 60_000,
        rate: 20_000,
        interval: "100ms",
        storage: Some(format!("s3://{bucket}/frozen-{}", std::process::id())),
        ..JobSpec::default()
    };
    let mut job = manifest(dir.path(), &spec);
    job.spec.checkpoints.timeout = "400ms".parse().unwrap();
    job.spec.checkpoints.tolerable_failures = 1000;
    let running = std::thread::spawn(move || run_with_metrics(&job, Faults::none()));
    std::thread::sleep(std::time::Duration::from_millis(700));
    // The server freezes mid-job: every request to it hangs.
    signal(&pid, "STOP");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    signal(&pid, "CONT");
    let (result, metrics) = running.join().unwrap();
    let outcome = result.unwrap_or_else(|e| panic!("the job survives storage that stops answering: {e}"));
    let failed = metrics.checkpoints_failed.load(std::sync::atomic::Ordering::Relaxed);
    let completed = metrics.checkpoints_completed.load(std::sync::atomic::Ordering::Relaxed);
    // A checkpoint caught before its `_metadata` write times out and fails;
    // one caught writing `_metadata` waits for the store (it may have
    // landed, so it is never declared failed). Either way progress stalls.
    let times: Vec<u64> = metrics.history().iter().map(|c| c.completed_at_ms).collect();
    let longest_gap = times.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(0);
    assert!(
        failed >= 1 || longest_gap >= 1000,
        "the freeze hit the job: {failed} failed, longest gap {longest_gap} ms ({completed} completed)"
    );
    assert!(completed >= 2 && outcome.last_checkpoint.is_some(), "checkpoints completed before and after");
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}
