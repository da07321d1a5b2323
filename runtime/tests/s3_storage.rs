//! Checkpoints in a real S3-compatible object store (moto, started by
//! `scripts/test-s3`): crashes and restores through S3 keep output exact.
//! Needs the `s3` feature and `WEIR_TEST_S3_ENDPOINT`.

#![cfg(feature = "s3")]

mod common;

use common::*;
use weir_runtime::checkpoint::CheckpointStore;
use weir_runtime::faults::{FaultPoint, Faults};

fn endpoint() -> String {
    std::env::var("WEIR_TEST_S3_ENDPOINT")
        .expect("WEIR_TEST_S3_ENDPOINT must point at an S3 server; scripts/test-s3 starts one")
}

#[test]
fn checkpoints_in_s3_restore_after_crashes_with_exact_output() {
    // The store reads endpoint and credentials from the environment, as a pod would.
    std::env::set_var("AWS_ENDPOINT_URL", endpoint());
    let dir = tempfile::tempdir().unwrap();
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let prefix = format!("run-{}", std::process::id());
    let spec = JobSpec { storage: Some(format!("s3://{bucket}/{prefix}")), ..JobSpec::default() };
    let job = manifest(dir.path(), &spec);
    let mut crashes = 0;
    for (point, nth) in [(FaultPoint::AfterMetadata, 3), (FaultPoint::MidBatch, 40), (FaultPoint::DuringCommit, 2)] {
        match run_once(&job, Faults::crash_at(point, nth)) {
            Err(_) => crashes += 1,
            Ok(_) => break,
        }
    }
    assert!(crashes >= 2, "{crashes} crashes");
    let outcome = run_once(&job, Faults::none()).unwrap();
    assert!(outcome.restored_from.is_some(), "the last run restored from S3");
    assert_exactly_once(dir.path(), spec.count, spec.keys);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = CheckpointStore::open(&format!("s3://{bucket}/{prefix}"), "default", "counts").unwrap();
    let ids = rt.block_on(store.checkpoint_ids()).unwrap();
    assert!(!ids.is_empty() && ids.len() <= 3, "retention keeps 2 completed (and maybe one in progress): {ids:?}");
    let latest = rt.block_on(store.latest_restorable(16)).unwrap().unwrap();
    assert_eq!(Some(latest.id), outcome.last_checkpoint.map(|c| c.id));
}
