//! Exactly-once across crashes: the committed output of a keyed job holds
//! every record exactly once however often and wherever the job crashes.

mod common;

use std::collections::HashMap;

use common::*;
use weir_runtime::checkpoint::metadata::checkpoint_dir;
use weir_runtime::faults::{FaultPoint, Faults};
use weir_runtime::job::JobError;
use weir_runtime::task::error::FailureKind;

fn crash_plan(rng: &mut Rng) -> (FaultPoint, u64) {
    let point = FaultPoint::ALL[rng.below(FaultPoint::ALL.len() as u64) as usize];
    let nth = match point {
        FaultPoint::SourceBatch | FaultPoint::MidBatch => 1 + rng.below(40),
        FaultPoint::BeforeAck => 1 + rng.below(8),
        FaultPoint::AfterMetadata | FaultPoint::DuringCommit => 1 + rng.below(4),
    };
    (point, nth)
}

fn is_injected(e: &JobError) -> bool {
    weir_runtime::job::failure::kind(e) == FailureKind::Injected
}

/// Runs one job to completion through seeded crashes; returns crashes per point.
fn run_through_crashes(dir: &std::path::Path, spec: &JobSpec, seed: u64, max_crashes: usize) -> HashMap<String, usize> {
    let job = manifest(dir, spec);
    let mut rng = Rng(seed);
    let mut crashes: HashMap<String, usize> = HashMap::new();
    for _ in 0..max_crashes + 50 {
        let total: usize = crashes.values().sum();
        let faults = if total < max_crashes {
            let (point, nth) = crash_plan(&mut rng);
            Faults::crash_at(point, nth)
        } else {
            Faults::none()
        };
        match run_once(&job, faults.clone()) {
            Ok(_) => return crashes,
            Err(e) if is_injected(&e) => {
                *crashes.entry(format!("{e}").split(" at ").last().unwrap_or("?").to_string()).or_default() += 1;
            }
            Err(e) => panic!("job failed for a reason other than the injected crash: {e}"),
        }
    }
    panic!("job did not finish");
}

#[test]
fn committed_output_is_exact_through_fifty_seeded_crashes_at_every_kind_of_point() {
    let mut total: HashMap<String, usize> = HashMap::new();
    for seed in [0x9e37_79b9_7f4a_7c15u64, 0xdead_beef_1234_5678, 0x0123_4567_89ab_cdef, 0x5151_7e7e_0f0f_a5a5] {
        let dir = tempfile::tempdir().unwrap();
        let spec = JobSpec { count: 40_000, ..JobSpec::default() };
        let crashes = run_through_crashes(dir.path(), &spec, seed, 18);
        assert_exactly_once(dir.path(), spec.count, spec.keys);
        for (k, v) in crashes {
            *total.entry(k).or_default() += v;
        }
    }
    let sum: usize = total.values().sum();
    eprintln!("crashes by point: {total:?}");
    assert!(sum >= 50, "only {sum} crashes happened: {total:?}");
    assert_eq!(total.len(), FaultPoint::ALL.len(), "not every crash point was hit: {total:?}");
}

#[test]
fn at_least_once_loses_nothing_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec { mode: "AtLeastOnce", ..JobSpec::default() };
    let crashes = run_through_crashes(dir.path(), &spec, 42, 15);
    assert!(crashes.values().sum::<usize>() >= 10, "{crashes:?}");
    assert_at_least_once(dir.path(), spec.count, spec.keys);
}

#[test]
fn restores_from_the_checkpoint_before_a_corrupt_newest_one_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let job = manifest(dir.path(), &spec);
    let err = run_once(&job, Faults::crash_at(FaultPoint::AfterMetadata, 6)).unwrap_err();
    assert!(is_injected(&err), "{err}");

    let newest_id = damage_newest_checkpoint(dir.path());
    let base = dir.path().join("checkpoints/default/counts");

    let outcome = run_once(&job, Faults::none()).unwrap();
    assert_eq!(outcome.skipped.len(), 1, "{:?}", outcome.skipped);
    assert_eq!(outcome.skipped[0].0, newest_id);
    assert!(outcome.skipped[0].1.contains("_metadata says"), "{}", outcome.skipped[0].1);
    let restored = outcome.restored_from.unwrap();
    assert!(restored < newest_id, "restored {restored}, newest was {newest_id}");
    assert!(!base.join(checkpoint_dir(restored)).join("nonexistent").exists());
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}

/// Ids of the completed checkpoints, oldest first.
fn completed_checkpoints(dir: &std::path::Path) -> Vec<u64> {
    let base = dir.join("checkpoints/default/counts");
    let mut ids: Vec<u64> = std::fs::read_dir(&base)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("_metadata").exists())
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// Overwrites every state file of completed checkpoint `id`.
fn damage_checkpoint(dir: &std::path::Path, id: u64) {
    let at = dir.join("checkpoints/default/counts").join(checkpoint_dir(id));
    for f in std::fs::read_dir(at).unwrap().filter_map(|e| e.ok()) {
        if f.file_name() != "_metadata" {
            std::fs::write(f.path(), b"garbage").unwrap();
        }
    }
}

/// Overwrites every state file of the newest completed checkpoint; returns its id.
fn damage_newest_checkpoint(dir: &std::path::Path) -> u64 {
    let newest = *completed_checkpoints(dir).last().unwrap();
    damage_checkpoint(dir, newest);
    newest
}

/// The newest checkpoint whose sink transaction was committed, from the
/// part file names (`part-<subtask>-<checkpoint>-<incarnation>-<epoch>.jsonl`).
fn newest_committed_transaction(out: &std::path::Path) -> u64 {
    std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("part-")?.split('-').nth(1)?.parse().ok()
        })
        .max()
        .unwrap()
}

#[test]
fn falling_back_past_committed_output_is_refused_unless_the_manifest_allows_retraction() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let mut job = manifest(dir.path(), &spec);
    // Keep every checkpoint, so one older than the damaged ones is left.
    job.spec.checkpoints.retained = 1000;
    run_once(&job, Faults::none()).unwrap();
    let committed = weir_runtime::connectors::file_sink::read_committed(&dir.path().join("out")).unwrap().len();
    // The checkpoint of the newest committed output is damaged, and any
    // newer one (the last checkpoints may carry no records), so a restore
    // falls back past committed output.
    let newest = newest_committed_transaction(&dir.path().join("out"));
    for id in completed_checkpoints(dir.path()).into_iter().filter(|id| *id >= newest) {
        damage_checkpoint(dir.path(), id);
    }

    let err = run_once(&job, Faults::none()).unwrap_err();
    assert_eq!(weir_runtime::job::failure::kind(&err), FailureKind::CommittedOutputAhead, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("output of checkpoint {newest}")), "{text}");
    assert!(text.contains("onFallbackPastCommittedOutput"), "{text}");
    let after = weir_runtime::connectors::file_sink::read_committed(&dir.path().join("out")).unwrap().len();
    assert_eq!(after, committed, "nothing committed was retracted");

    job.spec.checkpoints.on_fallback_past_committed_output = weir_runtime::manifest::FallbackPolicy::Retract;
    let outcome = run_once(&job, Faults::none()).unwrap();
    assert!(outcome.restored_from.unwrap() < newest);
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}

#[test]
fn a_rerun_after_the_checkpoints_were_deleted_keeps_the_first_runs_output() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let job = manifest(dir.path(), &spec);
    run_once(&job, Faults::none()).unwrap();
    let first = weir_runtime::connectors::file_sink::read_committed(&dir.path().join("out")).unwrap().len();
    assert!(first > 0);
    // A stateless upgrade, a Purge or a new job with the same sink path.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    run_once(&job, Faults::none()).unwrap();
    let both = weir_runtime::connectors::file_sink::read_committed(&dir.path().join("out")).unwrap().len();
    assert_eq!(both, 2 * first, "the second run's output is added, the first run's is never replaced");
}

#[test]
fn rescaling_two_three_one_across_restores_keeps_per_key_results_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = JobSpec { count: 30_000, ..JobSpec::default() };
    let mut restored = Vec::new();
    for (parallelism, crash) in [(2, Some(4)), (3, Some(4)), (1, None)] {
        spec.parallelism = parallelism;
        let job = manifest(dir.path(), &spec);
        let faults = crash.map_or(Faults::none(), |n| Faults::crash_at(FaultPoint::AfterMetadata, n));
        match run_once(&job, faults) {
            Ok(outcome) => restored.push(outcome.restored_from),
            Err(e) if is_injected(&e) => restored.push(None),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(restored[2].is_some(), "the last run restored state: {restored:?}");
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}

/// Runs `job` until it crashes right after its third checkpoint completed.
fn crash_after_third_checkpoint(job: &weir_runtime::manifest::StreamJob) {
    assert!(is_injected(&run_once(job, Faults::crash_at(FaultPoint::AfterMetadata, 3)).unwrap_err()));
}

/// The default job, crashed right after its third checkpoint completed.
fn crashed_after_third_checkpoint() -> (tempfile::TempDir, JobSpec, weir_runtime::manifest::StreamJob) {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let job = manifest(dir.path(), &spec);
    crash_after_third_checkpoint(&job);
    (dir, spec, job)
}

#[test]
fn a_stateless_reset_time_hides_older_checkpoints_from_restore() {
    let (_dir, _spec, job) = crashed_after_third_checkpoint();
    let store =
        weir_runtime::checkpoint::CheckpointStore::open(&job.spec.checkpoints.storage, "default", "counts").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let graph = weir_runtime::pipeline::build(&job.spec).unwrap();
    let config = weir_runtime::job::JobConfig::for_job(&job);
    let restore_point = |not_before_ms, last_issued| {
        let opts = weir_runtime::job::RestoreOptions {
            not_before_ms,
            last_issued,
            load: weir_runtime::checkpoint::Load::MetadataOnly,
            known_damaged: &[],
        };
        rt.block_on(weir_runtime::job::restore_point(&store, &graph, &config, opts)).unwrap()
    };
    let kept = restore_point(0, 0);
    assert!(kept.restored.is_some());
    let hidden = restore_point(u64::MAX, 0);
    assert!(hidden.restored.is_none(), "checkpoints before the reset are not restored");
    assert_eq!(kept.next_id, hidden.next_id, "ids still continue above every checkpoint");
    assert_ne!(kept.fence.incarnation, hidden.fence.incarnation, "starting empty starts a new incarnation");
    let issued = restore_point(0, kept.next_id + 5);
    assert_eq!(issued.next_id, kept.next_id + 6, "ids issued but never written are not used again");
    assert_eq!(issued.fence.incarnation, kept.fence.incarnation, "a restore keeps the incarnation");
    assert_ne!(issued.fence.epoch, kept.fence.epoch, "every attempt draws a new epoch");
}

#[test]
fn inserting_a_step_before_the_aggregate_keeps_its_state() {
    let (dir, spec, job) = crashed_after_third_checkpoint();
    // The upgrade adds a step in front: the aggregate moves from position 1 to 2.
    let mut upgraded = job.clone();
    let steps = &mut upgraded.spec.pipeline.as_mut().unwrap().steps;
    steps.insert(0, steps[0].clone());
    let outcome = run_once(&upgraded, Faults::none()).unwrap();
    assert!(outcome.restored_from.is_some());
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}

#[test]
fn state_that_matches_no_operator_is_refused_unless_allow_non_restored_state() {
    let (_dir, _spec, job) = crashed_after_third_checkpoint();
    // The aggregate now computes something else: its derived id changes.
    let mut changed = job.clone();
    let pipeline = changed.spec.pipeline.as_mut().unwrap();
    pipeline.steps[1].aggregate.as_mut().unwrap().max = vec!["value".into()];
    let err = run_once(&changed, Faults::none()).unwrap_err();
    assert_eq!(weir_runtime::job::failure::kind(&err), FailureKind::Restore, "{err}");
    let text = err.to_string();
    assert!(text.contains("`aggregate-") && text.contains("allowNonRestoredState"), "{text}");

    changed.spec.allow_non_restored_state = true;
    let outcome = run_once(&changed, Faults::none()).unwrap();
    assert!(outcome.restored_from.is_some(), "the sources' positions are still restored");
}

#[test]
fn a_step_with_an_id_keeps_its_state_when_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::default();
    let mut job = manifest(dir.path(), &spec);
    job.spec.pipeline.as_mut().unwrap().steps[1].id = Some("per-key".into());
    crash_after_third_checkpoint(&job);
    let mut moved = job.clone();
    let steps = &mut moved.spec.pipeline.as_mut().unwrap().steps;
    steps.insert(0, steps[0].clone());
    let outcome = run_once(&moved, Faults::none()).unwrap();
    assert!(outcome.restored_from.is_some());
    assert_exactly_once(dir.path(), spec.count, spec.keys);
}
