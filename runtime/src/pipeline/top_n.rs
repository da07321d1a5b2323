//! The first `limit` records of each key by a numeric field, as an update
//! stream: a record entering the ranking is emitted with its rank, and so
//! is every record it moved down one.

use serde_json::Value;

use super::not_a_number;
use crate::manifest::{SortOrder, TopNSpec};
use crate::operators::KeyedProcessFunction;
use crate::record::Row;
use crate::task::TaskError;

#[derive(Debug, Clone)]
pub struct TopN {
    limit: usize,
    order_by: String,
    descending: bool,
    rank_field: String,
}

impl TopN {
    pub fn new(spec: &TopNSpec) -> TopN {
        TopN {
            limit: spec.limit.max(1) as usize,
            order_by: spec.order_by.clone(),
            descending: spec.order == SortOrder::Descending,
            rank_field: spec.rank_field().to_string(),
        }
    }

    /// Whether `a` ranks before `b`; an equal value ranks after the records
    /// already there, so a tie keeps the earlier record first.
    fn before(&self, a: f64, b: f64) -> bool {
        if self.descending {
            a > b
        } else {
            a < b
        }
    }
}

/// A key's ranking, first first: each record's value and its JSON text
/// (postcard cannot read a `serde_json::Value` back).
pub type Ranking = Vec<(f64, String)>;

/// `row` with its rank (1-based) in `field`.
fn ranked(mut row: Row, field: &str, rank: usize) -> Row {
    if let Value::Object(o) = &mut row {
        o.insert(field.into(), Value::from(rank));
    }
    row
}

impl KeyedProcessFunction<String, Row, Row> for TopN {
    /// The key's ranking, first first: each record's value and its JSON
    /// text (postcard cannot read a `serde_json::Value` back).
    type State = Vec<(f64, String)>;

    fn process(
        &mut self,
        key: &String,
        row: Row,
        top: &mut Vec<(f64, String)>,
        out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        let value = row.get(&self.order_by).and_then(Value::as_f64).ok_or_else(|| not_a_number(&self.order_by, key))?;
        let at = top.iter().position(|(v, _)| self.before(value, *v)).unwrap_or(top.len());
        if at >= self.limit {
            return Ok(());
        }
        top.insert(at, (value, row.to_string()));
        top.truncate(self.limit);
        out.push(ranked(row, &self.rank_field, at + 1));
        for (i, (_, text)) in top.iter().enumerate().skip(at + 1) {
            let moved: Row = serde_json::from_str(text).map_err(|e| TaskError::User {
                function: "topN".into(),
                reason: format!("a ranked record of key `{key}` does not read back: {e}"),
            })?;
            out.push(ranked(moved, &self.rank_field, i + 1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(spec: TopNSpec, values: &[i64]) -> (Vec<(i64, u64)>, Ranking) {
        let mut top = TopN::new(&spec);
        let mut state = Vec::new();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            top.process(&"k".to_string(), json!({"id": i, "v": v}), &mut state, &mut out).unwrap();
        }
        let rank = spec.rank_field();
        let emitted = out.iter().map(|r| (r["id"].as_i64().unwrap(), r[rank].as_u64().unwrap())).collect();
        (emitted, state)
    }

    #[test]
    fn a_record_entering_the_ranking_is_emitted_with_every_record_it_moved_down() {
        let spec = TopNSpec { limit: 3, order_by: "v".into(), order: SortOrder::Descending, rank_field: None };
        let (emitted, state) = run(spec, &[5, 9, 1, 7, 2, 7]);
        assert_eq!(
            emitted,
            [
                (0, 1),
                (1, 1),
                (0, 2),
                (2, 3),
                (3, 2),
                (0, 3),
                // 2 ranks below the three there are: nothing changes.
                // The second 7 ties with the first and ranks after it.
                (5, 3),
            ]
        );
        assert_eq!(state.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [9.0, 7.0, 7.0]);
    }

    #[test]
    fn ascending_ranks_the_least_first_into_the_rank_field_and_a_non_number_names_the_field_and_key() {
        let spec =
            TopNSpec { limit: 2, order_by: "v".into(), order: SortOrder::Ascending, rank_field: Some("pos".into()) };
        let (emitted, _) = run(spec.clone(), &[5, 9, 1]);
        assert_eq!(emitted, [(0, 1), (1, 2), (2, 1), (0, 2)]);
        let err = TopN::new(&spec)
            .process(&"k".to_string(), json!({"v": "high"}), &mut Vec::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `v`") && err.contains("key `k`"), "{err}");
    }
}
