//! `spec.initialSavepointPath`: a new job starts from another job's
//! savepoint, continues it exactly once, and never starts from empty state
//! when the savepoint cannot be used.

mod common;

use std::path::Path;

use common::*;
use weir_runtime::checkpoint::CheckpointStore;
use weir_runtime::faults::{FaultPoint, Faults};
use weir_runtime::job::JobError;
use weir_runtime::manifest::StreamJob;

/// Runs job `counts` until it crashes right after completing checkpoint 5,
/// then copies that checkpoint to a savepoint; returns the savepoint's URI.
fn old_job_with_a_savepoint(dir: &Path, spec: &JobSpec) -> String {
    let job = manifest(dir, spec);
    let err = run_once(&job, Faults::crash_at(FaultPoint::AfterMetadata, 5)).unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    let store = CheckpointStore::open(&job.spec.checkpoints.storage, "default", "counts").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let committed = rt.block_on(weir_runtime::checkpoint::Ledger::read(&store)).unwrap();
    let newest = rt
        .block_on(store.latest_restorable(16, &weir_runtime::checkpoint::Load::MetadataOnly, &[], &committed))
        .unwrap()
        .expect("a completed checkpoint");
    rt.block_on(store.copy_to_savepoint(newest.id, 1_764_000_000_000)).unwrap()
}

/// The same pipeline under another name (so another checkpoint directory),
/// writing to the same output, started from `savepoint`.
fn new_job(dir: &Path, spec: &JobSpec, savepoint: &str) -> StreamJob {
    let mut job = manifest(dir, spec);
    job.metadata.name = "counts-v2".into();
    job.spec.initial_savepoint_path = Some(savepoint.into());
    job
}

#[test]
fn a_new_job_started_from_another_jobs_savepoint_continues_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec { count: 30_000, ..JobSpec::default() };
    let savepoint = old_job_with_a_savepoint(dir.path(), &spec);
    let job = new_job(dir.path(), &spec, &savepoint);

    // The new job crashes once after checkpoints of its own...
    let err = run_once(&job, Faults::crash_at(FaultPoint::AfterMetadata, 3)).unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    // ...and then resumes from its own newest checkpoint, not the savepoint again.
    let outcome = run_once(&job, Faults::none()).unwrap();
    let restored = outcome.restored_from.expect("restored");
    assert!(restored > 5, "resumed from its own checkpoint {restored}, numbered after the savepoint's 5");
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}

#[test]
fn the_first_run_from_a_savepoint_reports_it_as_the_restore_point() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let savepoint = old_job_with_a_savepoint(dir.path(), &spec);
    let outcome = run_once(&new_job(dir.path(), &spec, &savepoint), Faults::none()).unwrap();
    assert_eq!(outcome.restored_from, Some(5));
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}

#[test]
fn a_damaged_initial_savepoint_stops_the_job_instead_of_starting_empty() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let savepoint = old_job_with_a_savepoint(dir.path(), &spec);
    let local = Path::new(savepoint.trim_start_matches("file://"));
    let state = std::fs::read_dir(local)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name() != "_metadata")
        .expect("a state file")
        .path();
    std::fs::write(&state, b"garbage").unwrap();
    let before = weir_runtime::connectors::file_sink::read_committed(&dir.path().join("out")).unwrap().len();

    let err = run_once(&new_job(dir.path(), &spec, &savepoint), Faults::none()).unwrap_err();
    assert!(matches!(err, JobError::InitialSavepoint { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("spec.initialSavepointPath") && text.contains(&savepoint), "{text}");
    assert!(text.contains("_metadata says"), "names what is wrong: {text}");
    let after = weir_runtime::connectors::file_sink::read_committed(&dir.path().join("out")).unwrap().len();
    assert_eq!(before, after, "nothing was written from empty state");

    let missing = format!("file://{}/nowhere", dir.path().display());
    let err = run_once(&new_job(dir.path(), &spec, &missing), Faults::none()).unwrap_err();
    assert!(err.to_string().contains("not a completed checkpoint or savepoint"), "{err}");
}

#[test]
fn a_savepoint_with_other_key_groups_is_refused_naming_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let savepoint = old_job_with_a_savepoint(dir.path(), &spec);
    let mut job = new_job(dir.path(), &spec, &savepoint);
    job.spec.max_parallelism = 32;
    let err = run_once(&job, Faults::none()).unwrap_err().to_string();
    assert!(err.contains("maxParallelism 16") && err.contains("32"), "{err}");
}
