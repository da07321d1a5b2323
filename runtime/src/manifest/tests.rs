//! The manifest's parsing and validation, as a user meets them.

use super::*;

const GOOD: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata:
  name: counts
spec:
  parallelism: 2
  checkpoints:
    interval: 1s
  pipeline:
    source:
      generator: {keys: 10, count: 100}
    steps:
      - keyBy: {field: key}
      - aggregate: {count: true, sum: [value]}
    sink:
      file: {path: ./out}
"#;

#[test]
fn every_example_for_weir_run_is_a_valid_manifest() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = StreamJob::from_file(&path) {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} examples");
}

#[test]
fn parses_a_manifest_with_flink_defaults_filled_in() {
    let job = StreamJob::from_yaml(GOOD).unwrap();
    assert_eq!(job.spec.parallelism, 2);
    assert_eq!(job.spec.max_parallelism, 128);
    assert_eq!(job.spec.checkpoints.interval.get(), Duration::from_secs(1));
    assert_eq!(job.spec.checkpoints.mode, CheckpointMode::ExactlyOnce);
    assert_eq!(job.spec.checkpoints.timeout.get(), Duration::from_secs(600));
    assert_eq!(job.spec.checkpoints.max_concurrent, 1);
    assert_eq!(job.metadata.namespace_or_default(), "default");
}

#[test]
fn rejects_zero_parallelism_naming_the_field() {
    let text = GOOD.replace("parallelism: 2", "parallelism: 0");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.parallelism"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn rejects_negative_parallelism_naming_the_field() {
    let text = GOOD.replace("parallelism: 2", "parallelism: -3");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.parallelism"), "{err}");
}

#[test]
fn rejects_unknown_checkpoint_mode_listing_the_choices() {
    let text = GOOD.replace("interval: 1s", "interval: 1s\n    mode: Exactly");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.checkpoints.mode"), "{err}");
    assert!(err.contains("ExactlyOnce"), "{err}");
}

#[test]
fn rejects_a_misspelled_field() {
    let text = GOOD.replace("interval: 1s", "intervall: 1s");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("intervall"), "{err}");
}

#[test]
fn rejects_a_malformed_duration_saying_what_is_expected() {
    let text = GOOD.replace("interval: 1s", "interval: soon");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.checkpoints.interval"), "{err}");
    assert!(err.contains("expected a duration"), "{err}");
}

#[test]
fn refuses_a_manifest_of_another_kind_by_its_kind_first() {
    let err = StreamJob::from_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("kind `ConfigMap`") && err.contains("not a Weir job"), "{err}");
    assert!(!err.contains("spec"), "{err}");
}

#[test]
fn refuses_checkpoint_interval_and_timeout_below_ten_milliseconds() {
    let text = GOOD.replace("interval: 1s", "interval: 0s\n    timeout: 1ms");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.checkpoints.interval: expected at least 10ms, got 0s"), "{err}");
    assert!(err.contains("spec.checkpoints.timeout: expected at least 10ms, got 1ms"), "{err}");
}

#[test]
fn refuses_a_step_id_that_is_unsafe_reserved_or_repeated() {
    let text = GOOD.replace(
        "      - keyBy: {field: key}\n      - aggregate: {count: true, sum: [value]}",
        "      - {id: Per/Key, keyBy: {field: key}}\n      - {id: sink, aggregate: {count: true}}\n      \
         - {id: a, keyBy: {field: key}}\n      - {id: a, aggregate: {count: true}}",
    );
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.pipeline.steps[0].id: expected 1 to 63 lowercase"), "{err}");
    assert!(err.contains("spec.pipeline.steps[1].id: `sink` is the id of the pipeline's own sink"), "{err}");
    assert!(err.contains("spec.pipeline.steps[3].id: `a` is already the id of another step"), "{err}");
}

#[test]
fn rejects_aggregate_without_key_by() {
    let text = GOOD.replace("      - keyBy: {field: key}\n", "");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.pipeline.steps[0].aggregate"), "{err}");
}

#[test]
fn rejects_a_source_with_two_kinds_set() {
    let text = GOOD.replace("generator: {keys: 10, count: 100}", "generator: {keys: 10}\n      file: {path: x}");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.pipeline.source: expected exactly one of generator, file"), "{err}");
}

#[test]
fn rejects_a_spec_with_both_pipeline_and_program() {
    let text = GOOD.replace("  pipeline:", "  program: {entry: keyed-sum}\n  pipeline:");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec: expected exactly one of pipeline, program"), "{err}");
}

#[test]
fn rejects_dead_letter_policy_without_a_path() {
    let text = GOOD.replace("  pipeline:", "  errorPolicy: {onBadRecord: deadLetter}\n  pipeline:");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.errorPolicy.deadLetterPath"), "{err}");
}

#[test]
fn late_records_for_the_error_policy_are_refused_when_it_fails_the_job_and_taken_when_it_dead_letters() {
    let timed = GOOD.replace("    steps:", "    eventTime: {field: seq, lateRecords: ErrorPolicy}\n    steps:");
    let err = StreamJob::from_yaml(&timed).unwrap_err().to_string();
    assert!(
        err.contains("spec.pipeline.eventTime.lateRecords: ErrorPolicy") && err.contains("skip or deadLetter"),
        "{err}"
    );
    let dead =
        timed.replace("  pipeline:", "  errorPolicy: {onBadRecord: deadLetter, deadLetterPath: ./dead}\n  pipeline:");
    StreamJob::from_yaml(&dead).unwrap();
}

#[test]
fn rejects_parallelism_above_max_parallelism() {
    let text = GOOD.replace("parallelism: 2", "parallelism: 200");
    let err = StreamJob::from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("exceeds spec.maxParallelism 128"), "{err}");
}

#[test]
fn durations_round_trip_through_yaml() {
    for s in ["500ms", "1s", "10m", "1h 30m", "0s"] {
        let d: HumanDuration = s.parse().unwrap();
        let back: HumanDuration = serde_yaml::from_str(&serde_yaml::to_string(&d).unwrap()).unwrap();
        assert_eq!(d, back, "{s}");
    }
}

#[test]
fn early_results_are_refused_for_sessions_and_at_or_above_the_window_size() {
    let windowed = |window: &str| {
        let steps = format!(
            "    eventTime: {{field: seq}}\n    steps:\n      - keyBy: {{field: key}}\n      - window: {window}\n"
        );
        let text = GOOD.replace(
            "    steps:\n      - keyBy: {field: key}\n      - aggregate: {count: true, sum: [value]}\n",
            &steps,
        );
        StreamJob::from_yaml(&text).map_err(|e| e.to_string())
    };
    windowed("{size: 1m, earlyEvery: 10s, aggregate: {count: true}}").unwrap();
    let err = windowed("{gap: 1m, earlyEvery: 10s, aggregate: {count: true}}").unwrap_err();
    let want = "spec.pipeline.steps[1].window.earlyEvery: early results by event time are built for tumbling";
    assert!(err.contains(want), "{err}");
    windowed("{gap: 1m, earlyEvery: 10s, earlyTime: ProcessingTime, aggregate: {count: true}}").unwrap();
    windowed("{size: 1m, earlyEvery: 5m, earlyTime: ProcessingTime, aggregate: {count: true}}").unwrap();
    let err = windowed("{size: 1m, earlyTime: ProcessingTime, aggregate: {count: true}}").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[1].window.earlyTime: needs earlyEvery"), "{err}");
    let err = windowed("{size: 1m, earlyEvery: 1m, aggregate: {count: true}}").unwrap_err();
    assert!(err.contains("window.earlyEvery: expected from 1ms up to below size (1m), got 1m"), "{err}");
}
