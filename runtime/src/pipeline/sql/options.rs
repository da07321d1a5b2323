//! `spec.pipeline.sqlOptions`: Flink's table options for how a window
//! query emits, by their Flink names, set on the query's window step.
//!
//! - `table.exec.emit.early-fire.enabled: "true"` with
//!   `table.exec.emit.early-fire.delay: "1 min"`: early results by
//!   processing time (`earlyEvery` with `earlyTime: ProcessingTime`).
//! - `table.exec.emit.late-fire.enabled: "true"` with
//!   `table.exec.emit.allow-lateness: "5 min"`: windows kept for late
//!   records (`allowedLateness`); `late-fire.delay` only as `0`, since an
//!   update is emitted at once.

use std::collections::BTreeMap;

use crate::manifest::{HumanDuration, StepSpec, TimeDomain};

const EARLY: &str = "table.exec.emit.early-fire.enabled";
const EARLY_DELAY: &str = "table.exec.emit.early-fire.delay";
const LATE: &str = "table.exec.emit.late-fire.enabled";
const LATE_DELAY: &str = "table.exec.emit.late-fire.delay";
const LATENESS: &str = "table.exec.emit.allow-lateness";
const KNOWN: [&str; 5] = [EARLY, EARLY_DELAY, LATE, LATE_DELAY, LATENESS];

/// Sets `options` on the window step among `steps`; the errors name each
/// option under `at` (`spec.pipeline.sqlOptions`).
pub fn apply(at: &str, options: &BTreeMap<String, String>, steps: &mut [StepSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    for key in options.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        errors.push(format!("{at}.{key}: not an option Weir reads; it reads {}", KNOWN.join(", ")));
    }
    let flag = |key: &str, errors: &mut Vec<String>| match options.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            errors.push(format!("{at}.{key}: expected true or false, got `{v}`"));
            false
        }
    };
    let duration = |key: &str, errors: &mut Vec<String>| {
        let text = options.get(key)?;
        match flink_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(format!("{at}.{key}: {e}"));
                None
            }
        }
    };
    let (early, late) = (flag(EARLY, &mut errors), flag(LATE, &mut errors));
    let early_delay = duration(EARLY_DELAY, &mut errors);
    let lateness = duration(LATENESS, &mut errors);
    match (early, early_delay) {
        (true, None) if !options.contains_key(EARLY_DELAY) => {
            errors.push(format!("{at}.{EARLY_DELAY}: required with {EARLY}: how often early results come"))
        }
        (true, Some(d)) if d.get().is_zero() => {
            errors.push(format!("{at}.{EARLY_DELAY}: expected at least 1ms, got 0"))
        }
        (false, Some(_)) => errors.push(format!("{at}.{EARLY_DELAY}: only with {EARLY}: \"true\"")),
        _ => {}
    }
    match (late, lateness) {
        (true, None) if !options.contains_key(LATENESS) => {
            errors.push(format!("{at}.{LATENESS}: required with {LATE}: how long a window waits for late records"))
        }
        (false, Some(_)) => errors.push(format!("{at}.{LATENESS}: only with {LATE}: \"true\", as in Flink")),
        _ => {}
    }
    if let Some(d) = duration(LATE_DELAY, &mut errors).filter(|d| !d.get().is_zero()) {
        errors.push(format!("{at}.{LATE_DELAY}: only 0 is built (got {d}): a late record's update is emitted at once"));
    }
    if !errors.is_empty() || options.is_empty() {
        return errors;
    }
    let Some(window) = steps.iter_mut().find_map(|s| s.window.as_mut()) else {
        return vec![format!("{at}: these options are for window queries (GROUP BY … TUMBLE, HOP or SESSION), and the query has no window")];
    };
    if early {
        window.early_every = early_delay;
        window.early_time = TimeDomain::ProcessingTime;
    }
    if late {
        window.allowed_lateness = lateness;
    }
    errors
}

/// A duration as Flink's options write them (`1 min`, `60 s`, `5000 ms`,
/// or a number of milliseconds).
fn flink_duration(text: &str) -> Result<HumanDuration, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(HumanDuration(std::time::Duration::from_millis(ms)));
    }
    let compact: String = text.split_whitespace().collect::<Vec<_>>().join("");
    compact.parse().map_err(|_| format!("expected a duration such as `1 min`, `30 s` or `500 ms`, got `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::WindowSpec;

    fn window_steps() -> Vec<StepSpec> {
        let window: WindowSpec =
            serde_json::from_value(serde_json::json!({"size": "1m", "aggregate": {"count": true}})).unwrap();
        vec![StepSpec { window: Some(window), ..StepSpec::default() }]
    }

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn early_and_late_firing_options_set_the_window_as_flink_reads_them() {
        let mut steps = window_steps();
        let set = options(&[(EARLY, "true"), (EARLY_DELAY, "10 s"), (LATE, "true"), (LATENESS, "5 min")]);
        assert_eq!(apply("o", &set, &mut steps), Vec::<String>::new());
        let w = steps[0].window.as_ref().unwrap();
        assert_eq!(w.early_every.map(HumanDuration::millis), Some(10_000));
        assert_eq!(w.early_time, TimeDomain::ProcessingTime);
        assert_eq!(w.allowed_lateness.map(HumanDuration::millis), Some(300_000));
    }

    #[test]
    fn options_weir_does_not_read_or_cannot_follow_are_refused_by_name() {
        let mut steps = window_steps();
        let set = options(&[
            ("table.exec.mini-batch.enabled", "true"),
            (EARLY, "yes"),
            (LATENESS, "5 min"),
            (LATE_DELAY, "1 min"),
        ]);
        let errors = apply("o", &set, &mut steps);
        assert!(errors[0].starts_with("o.table.exec.mini-batch.enabled: not an option Weir reads"), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with(&format!("o.{EARLY}: expected true or false"))), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with(&format!("o.{LATENESS}: only with {LATE}"))), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with(&format!("o.{LATE_DELAY}: only 0 is built"))), "{errors:?}");
        let errors = apply("o", &options(&[(EARLY, "true")]), &mut steps);
        assert_eq!(errors, [format!("o.{EARLY_DELAY}: required with {EARLY}: how often early results come")]);
        let errors = apply("o", &options(&[(LATE, "true"), (LATENESS, "1 min")]), &mut Vec::new());
        assert!(errors[0].contains("the query has no window"), "{errors:?}");
    }
}
