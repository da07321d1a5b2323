//! Hive-style partition directories (`region=EU/day=2026-12-03/`) named
//! by record fields, the layout Hive, Spark, Trino and Flink's filesystem
//! connector read back as columns.

use serde_json::Value;

/// The directory of a missing, null or empty value, as Hive names it.
pub const DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Where a record goes under the sink's path.
pub trait Partitioner<T>: Send + Sync {
    /// The record's directory (`a=x/b=y/`), with the fields that name it
    /// taken out of the record; a record that cannot name one is left as
    /// it was and the reason returned.
    fn split(&self, record: &mut T) -> Result<String, String>;
}

/// Directories named by the values of record fields, in order.
pub struct ByFields {
    fields: Vec<String>,
}

impl ByFields {
    pub fn new(fields: Vec<String>) -> ByFields {
        ByFields { fields }
    }
}

impl Partitioner<Value> for ByFields {
    fn split(&self, record: &mut Value) -> Result<String, String> {
        let Value::Object(fields) = record else {
            return Err("expected a JSON object to take partition fields from".into());
        };
        let mut dir = String::new();
        for name in &self.fields {
            let value = match fields.get(name) {
                None | Some(Value::Null) => DEFAULT_PARTITION.to_string(),
                Some(Value::String(s)) if s.is_empty() => DEFAULT_PARTITION.to_string(),
                Some(Value::String(s)) => escape(s),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(other) => {
                    let kind = if other.is_array() { "an array" } else { "an object" };
                    return Err(format!(
                        "partition field `{name}` holds {kind}; expected a string, number or boolean to name a directory"
                    ));
                }
            };
            dir.push_str(&escape(name));
            dir.push('=');
            dir.push_str(&value);
            dir.push('/');
        }
        for name in &self.fields {
            fields.remove(name);
        }
        Ok(dir)
    }
}

/// Hive's escaping of a path segment: what a file system or a Hive reader
/// would take for structure (`/`, `=`, `%`, `:` ...) becomes `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_control() || "\"#%'*/:=?\\{[]^".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The partition fields a part's directory names (`a=x/b=y/part-…`), as
/// a reader of the layout sees them: values as strings, the default
/// partition as null.
pub fn fields_of_path(path: &str) -> Vec<(String, Value)> {
    let Some((dirs, _file)) = path.rsplit_once('/') else { return Vec::new() };
    dirs.split('/')
        .filter_map(|segment| segment.split_once('='))
        .map(|(name, value)| {
            let value = if value == DEFAULT_PARTITION { Value::Null } else { Value::String(unescape(value)) };
            (unescape(name), value)
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn by(fields: &[&str]) -> ByFields {
        ByFields::new(fields.iter().map(|f| f.to_string()).collect())
    }

    #[test]
    fn a_record_names_its_directory_by_field_values_and_loses_those_fields() {
        let mut record = json!({"region": "EU", "day": 20261203, "open": true, "n": 1});
        let dir = by(&["region", "day", "open"]).split(&mut record).unwrap();
        assert_eq!(dir, "region=EU/day=20261203/open=true/");
        assert_eq!(record, json!({"n": 1}));
    }

    #[test]
    fn missing_null_and_empty_values_go_to_the_default_partition() {
        for mut record in [json!({"n": 1}), json!({"region": null, "n": 1}), json!({"region": "", "n": 1})] {
            assert_eq!(by(&["region"]).split(&mut record).unwrap(), "region=__HIVE_DEFAULT_PARTITION__/");
        }
    }

    #[test]
    fn values_that_would_read_as_path_structure_are_escaped_and_read_back_whole() {
        let mut record = json!({"path": "a/b=c%d:../e", "n": 1});
        let dir = by(&["path"]).split(&mut record).unwrap();
        assert_eq!(dir, "path=a%2Fb%3Dc%25d%3A..%2Fe/");
        let read = fields_of_path(&format!("{dir}part-0.jsonl"));
        assert_eq!(read, vec![("path".to_string(), json!("a/b=c%d:../e"))]);
    }

    #[test]
    fn an_array_or_object_value_is_refused_naming_the_field_and_the_record_is_kept_whole() {
        let mut record = json!({"region": "EU", "tags": ["x"], "n": 1});
        let err = by(&["region", "tags"]).split(&mut record).unwrap_err();
        assert!(err.contains("`tags` holds an array"), "{err}");
        assert_eq!(record, json!({"region": "EU", "tags": ["x"], "n": 1}));
    }

    #[test]
    fn a_reader_sees_the_default_partition_as_null() {
        let read = fields_of_path("region=__HIVE_DEFAULT_PARTITION__/day=1/part-0.parquet");
        assert_eq!(read, vec![("region".to_string(), json!(null)), ("day".to_string(), json!("1"))]);
        assert!(fields_of_path("part-0.jsonl").is_empty());
    }
}
