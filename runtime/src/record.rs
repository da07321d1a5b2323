//! Records of declarative pipelines: JSON objects, and the bad records that
//! failed to become one.
//!
//! Declared pipelines carry `serde_json::Value` rows for now; the richer
//! pipeline language moves them to Arrow record batches.

use serde_json::Value;

use crate::manifest::FieldType;

pub type Row = Value;

/// A record that could not be read or processed, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// `file:line`, or the operator and key that rejected it.
    pub origin: String,
    pub raw: String,
    pub reason: String,
}

/// Rows a sink refused (a type mismatch, a violated constraint), handed to
/// the collector in front of it, which applies the error policy.
pub type Rejects = std::sync::Arc<std::sync::Mutex<Vec<BadRecord>>>;

/// A record as a source read it, and where from (`file:line`) when known.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    pub origin: Option<String>,
    /// The split (partition, file, generator split) it was read from, as
    /// the source's `active_splits` names it.
    pub split: u64,
    pub row: Result<Row, BadRecord>,
}

/// Parses one JSON-lines line into an object row.
pub fn parse_json_object(text: &str, origin: String) -> Result<Row, BadRecord> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(BadRecord {
            origin,
            raw: text.to_string(),
            reason: format!("expected a JSON object, got {}", json_type(&other)),
        }),
        Err(e) => Err(BadRecord { origin, raw: text.to_string(), reason: format!("invalid JSON: {e}") }),
    }
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The key of a row: a string field as is, any other scalar as its JSON text.
pub fn key_of(row: &Row, field: &str) -> Option<String> {
    match row.get(field)? {
        Value::String(s) => Some(s.clone()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// The event time of a row in milliseconds since the epoch: a number of
/// milliseconds, or an RFC 3339 string.
pub fn event_time_of(row: &Row, field: &str) -> Result<i64, String> {
    let expected = "milliseconds since the epoch or an RFC 3339 time such as `2026-12-04T10:00:00Z`";
    match row.get(field) {
        None | Some(Value::Null) => Err(format!("missing event-time field `{field}`")),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(ms), _) => Ok(ms),
            (None, Some(f)) if f.is_finite() && f.abs() < 9.0e15 => Ok(f.floor() as i64),
            _ => Err(format!("event-time field `{field}` must be {expected}, got {n}")),
        },
        Some(Value::String(s)) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(|| format!("event-time field `{field}` must be {expected}, got `{s}`")),
        Some(v) => Err(format!("event-time field `{field}` must be {expected}, got {}", json_type(v))),
    }
}

/// What a row must have to be processed; checked before keying so a bad
/// record is handled by the error policy where it entered the job.
#[derive(Debug, Clone)]
pub enum FieldRule {
    /// A scalar to key by.
    Key(String),
    /// A number to aggregate.
    Number(String),
    /// An event time.
    EventTime(String),
    /// A field of the declared schema: its type, and whether it may be
    /// missing or null.
    Typed(String, FieldType, bool),
}

impl FieldRule {
    pub fn check(&self, row: &Row) -> Result<(), String> {
        match self {
            FieldRule::Key(f) => match row.get(f) {
                None => Err(format!("missing key field `{f}`")),
                Some(Value::String(_) | Value::Number(_) | Value::Bool(_)) => Ok(()),
                Some(v) => Err(format!("key field `{f}` must be a string, number or boolean, got {}", json_type(v))),
            },
            FieldRule::Number(f) => match row.get(f) {
                None => Err(format!("missing numeric field `{f}`")),
                Some(Value::Number(_)) => Ok(()),
                Some(v) => Err(format!("field `{f}` must be a number, got {}", json_type(v))),
            },
            FieldRule::EventTime(f) => event_time_of(row, f).map(|_| ()),
            FieldRule::Typed(f, ty, nullable) => {
                let value = row.get(f).unwrap_or(&Value::Null);
                let fits = match (ty, value) {
                    (_, Value::Null) => *nullable,
                    (FieldType::String, Value::String(_)) | (FieldType::Boolean, Value::Bool(_)) => true,
                    (FieldType::Float64, Value::Number(_)) => true,
                    (FieldType::Int64, Value::Number(n)) => n.is_i64(),
                    (FieldType::Timestamp, _) => event_time_of(row, f).is_ok(),
                    _ => false,
                };
                match (fits, value) {
                    (true, _) => Ok(()),
                    (false, Value::Null) if row.get(f).is_none() => Err(format!("missing field `{f}` ({})", ty.name())),
                    (false, Value::Null) => Err(format!("field `{f}` is null, expected {} (not nullable)", ty.name())),
                    (false, v) => Err(format!("field `{f}` must be {}, got {}", expected(*ty), value_text(v))),
                }
            }
        }
    }
}

/// What a declared type accepts, in JSON's words.
fn expected(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Int64 => "an integer (int64)",
        FieldType::Float64 => "a number (float64)",
        FieldType::Boolean => "true or false (boolean)",
        FieldType::Timestamp => "a timestamp: milliseconds since the epoch or an RFC 3339 string",
    }
}

/// A value's type, and the value itself if it is short.
fn value_text(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= 40 {
        format!("{} {text}", json_type(v))
    } else {
        json_type(v).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_is_not_an_object_is_a_bad_record_naming_its_origin() {
        let bad = parse_json_object("[1,2]", "in.jsonl:3".into()).unwrap_err();
        assert_eq!(bad.origin, "in.jsonl:3");
        assert!(bad.reason.contains("expected a JSON object, got an array"));
        assert!(parse_json_object("{\"a\":", "x:1".into()).unwrap_err().reason.contains("invalid JSON"));
    }

    #[test]
    fn rules_name_the_field_and_what_was_expected() {
        let row: Row = serde_json::json!({"k": [1], "v": "x"});
        assert!(FieldRule::Key("k".into()).check(&row).unwrap_err().contains("key field `k`"));
        assert!(FieldRule::Number("v".into()).check(&row).unwrap_err().contains("must be a number, got a string"));
        assert!(FieldRule::Number("w".into()).check(&row).unwrap_err().contains("missing numeric field `w`"));
        assert!(FieldRule::EventTime("v".into()).check(&row).unwrap_err().contains("event-time field `v` must be"));
    }

    #[test]
    fn declared_types_are_checked_naming_the_field_and_the_type_expected() {
        let row: Row = serde_json::json!({"n": 2.5, "i": 3, "s": "x", "t": "2026-12-04T10:00:00Z", "z": null});
        let rule = |f: &str, ty, nullable| FieldRule::Typed(f.into(), ty, nullable).check(&row);
        assert_eq!(rule("n", FieldType::Float64, false), Ok(()));
        assert_eq!(rule("i", FieldType::Float64, false), Ok(()));
        assert_eq!(rule("t", FieldType::Timestamp, false), Ok(()));
        assert_eq!(rule("z", FieldType::String, true), Ok(()));
        assert_eq!(rule("gone", FieldType::String, true), Ok(()));
        assert_eq!(
            rule("n", FieldType::Int64, false),
            Err("field `n` must be an integer (int64), got a number 2.5".into())
        );
        assert_eq!(
            rule("s", FieldType::Boolean, false),
            Err("field `s` must be true or false (boolean), got a string \"x\"".into())
        );
        assert_eq!(
            rule("z", FieldType::String, false),
            Err("field `z` is null, expected string (not nullable)".into())
        );
        assert_eq!(rule("gone", FieldType::Int64, false), Err("missing field `gone` (int64)".into()));
    }

    #[test]
    fn event_times_are_epoch_milliseconds_or_rfc3339_strings() {
        let row: Row = serde_json::json!({"a": 1500, "b": "1970-01-01T00:00:01.5Z", "c": 2.7, "d": true});
        assert_eq!(event_time_of(&row, "a"), Ok(1500));
        assert_eq!(event_time_of(&row, "b"), Ok(1500));
        assert_eq!(event_time_of(&row, "c"), Ok(2));
        assert!(event_time_of(&row, "d").unwrap_err().contains("got a boolean"));
        assert!(event_time_of(&row, "e").unwrap_err().contains("missing event-time field `e`"));
    }
}
