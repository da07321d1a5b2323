//! What idempotent (upsert) sinks share: one write per key per batch.

use serde_json::Value;

/// The key of a record: its `key` fields' values, strings as they are and
/// other values as JSON, joined by `:`.
pub fn key_string(row: &Value, key: &[String]) -> String {
    let mut out = String::new();
    for (i, field) in key.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        match row.get(field) {
            Some(Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => out.push_str("null"),
        }
    }
    out
}

/// The last record of each key, in the order of those last records: one
/// statement cannot update a row twice.
pub fn last_per_key(batch: Vec<Value>, key: &[String]) -> Vec<Value> {
    let mut last: rustc_hash::FxHashMap<String, usize> = rustc_hash::FxHashMap::default();
    for (i, row) in batch.iter().enumerate() {
        // The values as JSON: unlike `key_string`, two different tuples
        // never give the same text.
        let values: Vec<Option<&Value>> = key.iter().map(|f| row.get(f)).collect();
        last.insert(serde_json::to_string(&values).unwrap_or_default(), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let mut batch: Vec<Option<Value>> = batch.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| batch[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_upsert_batch_keeps_the_last_record_of_each_key_in_order() {
        let batch = vec![
            json!({"key": "a", "n": 1}),
            json!({"key": "b", "n": 1}),
            json!({"key": "a", "n": 2}),
            json!({"key": "c", "n": 1}),
        ];
        let kept = last_per_key(batch, &["key".to_string()]);
        assert_eq!(kept, vec![json!({"key": "b", "n": 1}), json!({"key": "a", "n": 2}), json!({"key": "c", "n": 1})]);
    }

    #[test]
    fn keys_join_field_values_with_colons() {
        let row = json!({"key": "k1", "n": 7});
        assert_eq!(key_string(&row, &["key".to_string(), "n".to_string()]), "k1:7");
        assert_eq!(key_string(&row, &["missing".to_string()]), "null");
    }
}
