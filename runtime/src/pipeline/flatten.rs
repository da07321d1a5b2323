//! The `flatten` step: a record whose field holds an array becomes one
//! record per element, the field holding that element (as Flink SQL's
//! `CROSS JOIN UNNEST`). An empty array, a missing field or null makes no
//! record. A record is passed on whole or not at all: if the field is not
//! an array, or an element is not of the step's `type`, the record goes to
//! the error policy naming the field, and none of its elements goes on.

use serde_json::Value;

use super::bad_records::{row_by_row, Check};
use crate::manifest::FieldType;
use crate::record::{json_type, BadRecord, FieldRule, Row};

pub struct Flatten {
    /// Where the step is in the manifest, for bad records' origin.
    at: String,
    field: String,
    /// The elements' declared type, checked on each of them.
    element: Option<FieldRule>,
}

impl Flatten {
    pub fn new(at: String, field: &str, element_type: Option<FieldType>) -> Self {
        let element = element_type.map(|ty| FieldRule::Typed(field.to_string(), ty, false));
        Flatten { at, field: field.to_string(), element }
    }

    /// The records `row` becomes, or why it cannot be flattened.
    fn flatten(&self, mut row: Row, out: &mut Vec<Row>) -> Result<(), (Row, String)> {
        let Some(fields) = row.as_object_mut() else {
            return Err((row, "not a JSON object".into()));
        };
        let elements = match fields.get_mut(&self.field) {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(elements)) => std::mem::take(elements),
            Some(other) => {
                let reason = format!("field `{}` must be an array to flatten, got {}", self.field, json_type(other));
                return Err((row, reason));
            }
        };
        let start = out.len();
        for (i, element) in elements.iter().enumerate() {
            let mut one = row.clone();
            if let Some(fields) = one.as_object_mut() {
                fields.insert(self.field.clone(), element.clone());
            }
            if let Some(Err(reason)) = self.element.as_ref().map(|rule| rule.check(&one)) {
                out.truncate(start);
                if let Some(fields) = row.as_object_mut() {
                    fields.insert(self.field.clone(), Value::Array(elements));
                }
                return Err((row, format!("element {i} of the array: {reason}")));
            }
            out.push(one);
        }
        Ok(())
    }
}

impl Check<Row> for Flatten {
    fn check(&mut self, batch: Vec<Row>) -> (Vec<Row>, Vec<BadRecord>) {
        let this = &*self;
        row_by_row(batch, &this.at, |row, good| this.flatten(row, good))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_element_becomes_a_record_in_order_and_empty_or_missing_arrays_make_none() {
        let mut step = Flatten::new("spec.pipeline.steps[0]".into(), "items", None);
        let (good, bad) = step.check(vec![
            json!({"order": 1, "items": ["a", "b"]}),
            json!({"order": 2, "items": []}),
            json!({"order": 3}),
            json!({"order": 4, "items": null}),
            json!({"order": 5, "items": [{"sku": "c"}, 7]}),
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            good,
            vec![
                json!({"order": 1, "items": "a"}),
                json!({"order": 1, "items": "b"}),
                json!({"order": 5, "items": {"sku": "c"}}),
                json!({"order": 5, "items": 7}),
            ]
        );
    }

    #[test]
    fn a_field_that_is_not_an_array_sends_the_record_to_the_error_policy_naming_the_field() {
        let mut step = Flatten::new("spec.pipeline.steps[1]".into(), "items", None);
        let (good, bad) = step.check(vec![json!({"order": 1, "items": "a"}), json!({"order": 2, "items": ["b"]})]);
        assert_eq!(good, vec![json!({"order": 2, "items": "b"})]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].origin, "spec.pipeline.steps[1]");
        assert_eq!(bad[0].reason, "field `items` must be an array to flatten, got a string");
        assert_eq!(serde_json::from_str::<Value>(&bad[0].raw).unwrap(), json!({"order": 1, "items": "a"}));
    }

    #[test]
    fn an_element_of_the_wrong_type_sends_the_whole_record_and_none_of_its_elements() {
        let mut step = Flatten::new("spec.pipeline.steps[0]".into(), "qty", Some(FieldType::Int64));
        let (good, bad) = step.check(vec![
            json!({"order": 1, "qty": [1, 2]}),
            json!({"order": 2, "qty": [3, "four", 5]}),
            json!({"order": 3, "qty": [6]}),
        ]);
        assert_eq!(
            good,
            vec![json!({"order": 1, "qty": 1}), json!({"order": 1, "qty": 2}), json!({"order": 3, "qty": 6})]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(
            bad[0].reason,
            "element 1 of the array: field `qty` must be an integer (int64), got a string \"four\""
        );
        let raw: Value = serde_json::from_str(&bad[0].raw).unwrap();
        assert_eq!(raw, json!({"order": 2, "qty": [3, "four", 5]}), "the record as it came");
    }
}
