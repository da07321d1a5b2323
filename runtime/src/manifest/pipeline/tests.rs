use super::super::StreamJob;
use super::WindowKind;

fn windowed(event_time: &str, steps: &str) -> Result<StreamJob, String> {
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: w}}
spec:
  pipeline:
    source: {{generator: {{keys: 10, timestampStep: 1ms}}}}
{event_time}
    steps:
{steps}
    sink: {{file: {{path: ./out}}}}
"#
    );
    StreamJob::from_yaml(&yaml).map_err(|e| e.to_string())
}

fn nexmark(source: &str, sql: &str) -> Result<StreamJob, String> {
    let yaml = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: n}}\nspec:\n  pipeline:\n    \
             source: {{nexmark: {source}}}\n    sql: \"{sql}\"\n    sink: {{discard: {{}}}}\n"
    );
    StreamJob::from_yaml(&yaml).map_err(|e| e.to_string())
}

#[test]
fn nexmark_records_are_typed_for_queries_and_a_wrong_field_or_setting_is_named() {
    nexmark("{count: 10}", "SELECT auction, 0.908 * price AS euros FROM source WHERE event_type = 2").unwrap();
    let err = nexmark("{}", "SELECT aution FROM source").unwrap_err();
    assert!(err.contains("aution"), "{err}");
    let err = nexmark("{eventsPerSecond: 0, splits: 0}", "SELECT auction FROM source").unwrap_err();
    assert!(err.contains("spec.pipeline.source.nexmark.eventsPerSecond: expected at least 1, got 0"), "{err}");
    assert!(err.contains("spec.pipeline.source.nexmark.splits: expected at least 1, got 0"), "{err}");
}

const EVENT_TIME: &str = "    eventTime: {field: ts, maxOutOfOrderness: 5s}";
const KEY_BY: &str = "      - keyBy: {field: key}\n";

#[test]
fn a_tumbling_and_a_sliding_window_after_key_by_with_event_time_are_accepted() {
    let tumbling = format!("{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true, avg: [value]}}}}");
    windowed(EVENT_TIME, &tumbling).unwrap();
    let sliding = format!("{KEY_BY}      - window: {{size: 1m, slide: 10s, aggregate: {{max: [value]}}}}");
    let job = windowed(EVENT_TIME, &sliding).unwrap();
    let step = &job.spec.pipeline.unwrap().steps[1];
    let kind = step.window.as_ref().map(|w| w.kind());
    assert_eq!(kind, Some(Ok(WindowKind::Sliding { size: 60_000, slide: 10_000 })));
    let session = format!("{KEY_BY}      - window: {{gap: 30s, aggregate: {{count: true}}}}");
    let job = windowed(EVENT_TIME, &session).unwrap();
    let kind = job.spec.pipeline.unwrap().steps[1].window.as_ref().map(|w| w.kind());
    assert_eq!(kind, Some(Ok(WindowKind::Session { gap: 30_000 })));
}

#[test]
fn a_window_without_event_time_or_key_by_is_refused_naming_what_it_needs() {
    let window = "      - window: {size: 1m, aggregate: {count: true}}";
    let err = windowed("", &format!("{KEY_BY}{window}")).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[1].window: needs spec.pipeline.eventTime"), "{err}");
    let err = windowed(EVENT_TIME, window).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].window: needs a keyBy step before it"), "{err}");
}

#[test]
fn a_slide_longer_than_the_window_and_an_empty_aggregate_are_refused() {
    let steps = format!("{KEY_BY}      - window: {{size: 10s, slide: 1m, aggregate: {{}}}}");
    let err = windowed(EVENT_TIME, &steps).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[1].window.slide: expected from 1ms up to size (10s), got 1m"), "{err}");
    assert!(err.contains("spec.pipeline.steps[1].window.aggregate: expected at least one of"), "{err}");
}

#[test]
fn a_window_after_an_aggregate_is_refused_because_its_rows_have_no_event_time() {
    let steps = format!(
        "{KEY_BY}      - aggregate: {{count: true}}\n{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true}}}}"
    );
    let err = windowed(EVENT_TIME, &steps).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[3].window: must come before any aggregate or window step"), "{err}");
}

#[test]
fn a_window_with_both_size_and_gap_or_with_neither_is_refused() {
    for window in ["{size: 1m, gap: 10s, ", "{slide: 10s, ", "{"] {
        let steps = format!("{KEY_BY}      - window: {window}aggregate: {{count: true}}}}");
        let err = windowed(EVENT_TIME, &steps).unwrap_err();
        assert!(err.contains("spec.pipeline.steps[1].window: "), "{window}: {err}");
    }
}

#[test]
fn deduplicate_needs_key_by_event_time_and_a_positive_bound() {
    windowed(EVENT_TIME, &format!("{KEY_BY}      - deduplicate: {{within: 10m}}")).unwrap();
    let err = windowed("", "      - deduplicate: {within: 0s}").unwrap_err();
    for part in ["needs a keyBy step", "needs spec.pipeline.eventTime", "deduplicate.within: expected at least 1ms"] {
        assert!(err.contains(&format!("spec.pipeline.steps[0].{}", "deduplicate")) && err.contains(part), "{err}");
    }
}

#[test]
fn an_empty_event_time_field_is_refused() {
    let steps = format!("{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true}}}}");
    let err = windowed("    eventTime: {field: ''}", &steps).unwrap_err();
    assert!(err.contains("spec.pipeline.eventTime.field: required"), "{err}");
}

#[test]
fn alignment_without_an_idle_timeout_or_with_a_zero_update_interval_is_refused() {
    let steps = format!("{KEY_BY}      - window: {{size: 1m, aggregate: {{count: true}}}}");
    let time = "    eventTime: {field: ts, idleTimeout: 10s, alignment: {maxDrift: 30s}}";
    let job = windowed(time, &steps).unwrap();
    let alignment = job.spec.pipeline.and_then(|p| p.event_time).and_then(|t| t.alignment);
    assert_eq!(alignment.map(|a| a.update_every()), Some(std::time::Duration::from_secs(1)));
    let time = "    eventTime: {field: ts, alignment: {maxDrift: 30s, updateInterval: 0s}}";
    let err = windowed(time, &steps).unwrap_err();
    assert!(err.contains("spec.pipeline.eventTime.alignment: needs eventTime.idleTimeout"), "{err}");
    assert!(err.contains("spec.pipeline.eventTime.alignment.updateInterval: expected a positive"), "{err}");
}

#[test]
fn steps_and_sql_together_are_refused() {
    let steps = format!("{KEY_BY}    sql: SELECT key FROM source");
    let err = windowed("", &steps).unwrap_err();
    assert!(err.contains("spec.pipeline: expected either steps or sql, not both"), "{err}");
}
