//! Records of declarative pipelines: JSON objects, and the bad records that
//! failed to become one.
//!
//! Declared pipelines carry `serde_json::Value` rows for now; the richer
//! pipeline language moves them to Arrow record batches.

use serde_json::Value;

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

/// What a row must have to be processed; checked before keying so a bad
/// record is handled by the error policy where it entered the job.
#[derive(Debug, Clone)]
pub enum FieldRule {
    /// A scalar to key by.
    Key(String),
    /// A number to aggregate.
    Number(String),
}

impl FieldRule {
    pub fn check(&self, row: &Row) -> Result<(), String> {
        match self {
            FieldRule::Key(f) => match row.get(f) {
                None => Err(format!("missing key field `{f}`")),
                Some(v) if key_of(row, f).is_none() => {
                    Err(format!("key field `{f}` must be a string, number or boolean, got {}", json_type(v)))
                }
                Some(_) => Ok(()),
            },
            FieldRule::Number(f) => match row.get(f) {
                None => Err(format!("missing numeric field `{f}`")),
                Some(Value::Number(_)) => Ok(()),
                Some(v) => Err(format!("field `{f}` must be a number, got {}", json_type(v))),
            },
        }
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
    }
}
