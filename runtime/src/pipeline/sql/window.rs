//! Flink's group windows in a query: `TUMBLE`, `HOP` and `SESSION` calls,
//! their `_START` / `_END` bounds, and `INTERVAL` literals.

use std::time::Duration;

use datafusion_sql::sqlparser::ast::{Expr, FunctionArgExpr, Value};

use super::{arguments, function_name};
use crate::manifest::{EventTimeSpec, HumanDuration, WindowSpec};

/// A `TUMBLE`, `HOP` or `SESSION` group window.
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub spec: WindowSpec,
    pub prefix: &'static str,
}

/// `TUMBLE`, `HOP` or `SESSION` if `e` calls one.
pub(super) fn window_function(e: &Expr) -> Option<&'static str> {
    match function_name(e)?.as_str() {
        "tumble" => Some("TUMBLE"),
        "hop" => Some("HOP"),
        "session" => Some("SESSION"),
        _ => None,
    }
}

/// `window_start` or `window_end` for `TUMBLE_START(…)` and its kin.
pub(super) fn window_bound(e: &Expr, prefix: Option<&str>) -> Option<String> {
    let name = function_name(e)?;
    let (kind, bound) = name.rsplit_once('_')?;
    let bound = match bound {
        "start" => "window_start",
        "end" => "window_end",
        _ => return None,
    };
    prefix.filter(|p| p.eq_ignore_ascii_case(kind)).map(|_| bound.to_string())
}

/// The window a `TUMBLE(ts, size)`, `HOP(ts, slide, size)` or
/// `SESSION(ts, gap)` call asks for, and its time field.
pub(super) fn group_window(prefix: &'static str, e: &Expr) -> Result<(Window, String), String> {
    let args = arguments(e);
    let (field, durations) = match args.split_first() {
        Some((FunctionArgExpr::Expr(Expr::Identifier(id)), rest)) => (id.value.clone(), rest),
        _ => return Err(format!("`{e}`: expected the event-time field first, as {prefix}(ts, INTERVAL '1' MINUTE)")),
    };
    let durations: Vec<HumanDuration> = durations
        .iter()
        .map(|a| match a {
            FunctionArgExpr::Expr(x) => interval(x).map_err(|why| format!("`{e}`: {why}")),
            other => Err(format!("`{e}`: expected an interval, got `{other}`")),
        })
        .collect::<Result<_, _>>()?;
    let empty = WindowSpec::default();
    let spec = match (prefix, durations.as_slice()) {
        ("TUMBLE", [size]) => WindowSpec { size: Some(*size), ..empty },
        ("HOP", [slide, size]) => WindowSpec { size: Some(*size), slide: Some(*slide), ..empty },
        ("SESSION", [gap]) => WindowSpec { gap: Some(*gap), ..empty },
        ("TUMBLE", _) => return Err(format!("`{e}`: expected TUMBLE(ts, size)")),
        ("HOP", _) => return Err(format!("`{e}`: expected HOP(ts, slide, size)")),
        _ => return Err(format!("`{e}`: expected SESSION(ts, gap)")),
    };
    Ok((Window { spec, prefix }, field))
}

/// Refuses a window over `field` unless it is the pipeline's event time.
pub(super) fn over_event_time(prefix: &str, field: &str, event_time: Option<&EventTimeSpec>) -> Result<(), String> {
    match event_time {
        Some(t) if t.field == field => Ok(()),
        Some(t) => Err(format!(
            "{prefix}({field}, …): windows are over the event time, spec.pipeline.eventTime.field `{}`",
            t.field
        )),
        None => Err(format!(
            "{prefix}({field}, …) needs spec.pipeline.eventTime with field `{field}` (and its watermark's maxOutOfOrderness)"
        )),
    }
}

/// An `INTERVAL '5' MINUTE` or `INTERVAL '5 minutes'` as a duration.
pub(super) fn interval(e: &Expr) -> Result<HumanDuration, String> {
    let Expr::Interval(i) = e else {
        return Err(format!("expected an interval such as INTERVAL '1' MINUTE, got `{e}`"));
    };
    let text = match i.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let (number, unit) = match &i.leading_field {
        Some(field) => (text.trim().to_string(), field.to_string()),
        None => {
            let mut words = text.split_whitespace();
            (words.next().unwrap_or_default().to_string(), words.next().unwrap_or("second").to_string())
        }
    };
    let unit = unit.to_ascii_lowercase();
    let millis: u64 = match unit.trim_end_matches('s') {
        "millisecond" => 1,
        "second" => 1_000,
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        _ => return Err(format!("expected an interval in milliseconds, seconds, minutes, hours or days, got {unit}")),
    };
    let n: u64 = number.parse().map_err(|_| format!("expected a whole number of {unit}, got `{number}`"))?;
    Ok(HumanDuration(Duration::from_millis(n.saturating_mul(millis))))
}
