//! `spec.pipeline.schema`: the typed fields of the source's records.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A typed field of the source's records.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether the field may be missing or null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nullable: bool,
}

/// The types a schema field may have, as JSON carries them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// A JSON string (SQL `VARCHAR`).
    String,
    /// A JSON number without a fraction (SQL `BIGINT`).
    Int64,
    /// Any JSON number (SQL `DOUBLE`).
    Float64,
    /// `true` or `false`.
    Boolean,
    /// Milliseconds since the epoch, or an RFC 3339 string (SQL `TIMESTAMP`).
    Timestamp,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
        }
    }
}

/// The checks of a list of declared fields at `at`: each named, once.
pub fn names_problems(at: &str, fields: &[FieldSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if f.name.is_empty() {
            errors.push(format!("{at}[{i}].name: required, got an empty name"));
        } else if fields[..i].iter().any(|g| g.name == f.name) {
            errors.push(format!("{at}[{i}].name: `{}` is listed twice", f.name));
        }
    }
    errors
}
