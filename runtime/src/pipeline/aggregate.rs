//! Running aggregates per key, emitted as an update for every record.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::not_a_number;
use crate::manifest::AggregateSpec;
use crate::operators::KeyedProcessFunction;
use crate::record::Row;
use crate::task::TaskError;

/// A number that stays an exact integer while every input is one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn from_json(v: &Value) -> Option<Num> {
        match v {
            Value::Number(n) => n.as_i64().map(Num::Int).or_else(|| n.as_f64().map(Num::Float)),
            _ => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.checked_add(b).map_or(Num::Float(a as f64 + b as f64), Num::Int),
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Float(f) => Value::from(f),
        }
    }
}

/// Aggregates of one key (or one key and window). `sum` holds the sums of
/// the `sum` fields, then those of the `avg` fields, so that state written
/// before `avg` existed reads back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AggState {
    count: u64,
    sum: Vec<Num>,
    min: Vec<Option<Num>>,
    max: Vec<Option<Num>>,
}

#[derive(Debug, Clone)]
pub struct Aggregate {
    key_field: String,
    count: bool,
    /// The `sum` fields, then the `avg` fields.
    sum: Vec<String>,
    avg: usize,
    min: Vec<String>,
    max: Vec<String>,
    /// The output fields of `sum` (`sum_x`, then `avg_x`), `min` and `max`,
    /// named once rather than per record.
    out: OutputNames,
}

#[derive(Debug, Clone)]
struct OutputNames {
    sum: Vec<String>,
    min: Vec<String>,
    max: Vec<String>,
}

impl Aggregate {
    pub fn new(key_field: &str, spec: &AggregateSpec) -> Aggregate {
        let named = |prefix: &str, fields: &[String]| -> Vec<String> {
            fields.iter().map(|f| format!("{prefix}_{f}")).collect()
        };
        let mut sum = named("sum", &spec.sum);
        sum.extend(named("avg", &spec.avg));
        let out = OutputNames { sum, min: named("min", &spec.min), max: named("max", &spec.max) };
        Aggregate {
            key_field: key_field.into(),
            count: spec.count,
            sum: spec.sum.iter().chain(&spec.avg).cloned().collect(),
            avg: spec.avg.len(),
            min: spec.min.clone(),
            max: spec.max.clone(),
            out,
        }
    }

    /// Adds `row` to `s`.
    pub fn fold(&self, key: &str, row: &Row, s: &mut AggState) -> Result<(), TaskError> {
        if s.sum.len() != self.sum.len() {
            s.sum = vec![Num::Int(0); self.sum.len()];
            s.min = vec![None; self.min.len()];
            s.max = vec![None; self.max.len()];
        }
        s.count += 1;
        for (acc, f) in s.sum.iter_mut().zip(&self.sum) {
            *acc = acc.add(field(row, f, key)?);
        }
        for (acc, f) in s.min.iter_mut().zip(&self.min) {
            let v = field(row, f, key)?;
            if acc.is_none_or(|m| v.as_f64() < m.as_f64()) {
                *acc = Some(v);
            }
        }
        for (acc, f) in s.max.iter_mut().zip(&self.max) {
            let v = field(row, f, key)?;
            if acc.is_none_or(|m| v.as_f64() > m.as_f64()) {
                *acc = Some(v);
            }
        }
        Ok(())
    }

    /// Adds what `from` holds to `into` (session windows merging).
    pub fn merge(&self, into: &mut AggState, from: &AggState) {
        if into.count == 0 {
            *into = from.clone();
            return;
        }
        into.count += from.count;
        for (acc, v) in into.sum.iter_mut().zip(&from.sum) {
            *acc = acc.add(*v);
        }
        let pick = |acc: &mut Option<Num>, v: &Option<Num>, better: fn(f64, f64) -> bool| {
            if let Some(v) = v {
                if acc.is_none_or(|a| better(v.as_f64(), a.as_f64())) {
                    *acc = Some(*v);
                }
            }
        };
        for (acc, v) in into.min.iter_mut().zip(&from.min) {
            pick(acc, v, |v, a| v < a);
        }
        for (acc, v) in into.max.iter_mut().zip(&from.max) {
            pick(acc, v, |v, a| v > a);
        }
    }

    /// A row with the key and the aggregates in `s`, after `extra` fields.
    pub fn row(&self, key: &str, extra: impl IntoIterator<Item = (&'static str, Value)>, s: &AggState) -> Row {
        let mut o = Map::new();
        o.insert(self.key_field.clone(), Value::from(key));
        for (name, value) in extra {
            o.insert(name.into(), value);
        }
        if self.count {
            o.insert("count".into(), Value::from(s.count));
        }
        let sums = self.sum.len() - self.avg;
        for (i, (name, acc)) in self.out.sum.iter().zip(&s.sum).enumerate() {
            if i < sums {
                o.insert(name.clone(), acc.to_json());
            } else {
                let avg = if s.count == 0 { Value::Null } else { Value::from(acc.as_f64() / s.count as f64) };
                o.insert(name.clone(), avg);
            }
        }
        for (name, acc) in self.out.min.iter().zip(&s.min) {
            o.insert(name.clone(), acc.map_or(Value::Null, Num::to_json));
        }
        for (name, acc) in self.out.max.iter().zip(&s.max) {
            o.insert(name.clone(), acc.map_or(Value::Null, Num::to_json));
        }
        Value::Object(o)
    }
}

fn field(row: &Row, name: &str, key: &str) -> Result<Num, TaskError> {
    row.get(name).and_then(Num::from_json).ok_or_else(|| not_a_number(name, key))
}

impl KeyedProcessFunction<String, Row, Row> for Aggregate {
    type State = AggState;

    fn process(&mut self, key: &String, row: Row, s: &mut AggState, out: &mut Vec<Row>) -> Result<(), TaskError> {
        self.fold(key, &row, s)?;
        out.push(self.row(key, [], s));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emits_running_count_sum_min_max_for_each_record() {
        let v = || vec!["v".to_string()];
        let spec = AggregateSpec { count: true, sum: v(), min: v(), max: v(), avg: v() };
        let mut agg = Aggregate::new("key", &spec);
        let mut state = AggState::default();
        let mut out = Vec::new();
        for v in [5, -2, 9] {
            agg.process(&"a".to_string(), json!({"key": "a", "v": v}), &mut state, &mut out).unwrap();
        }
        assert_eq!(out[2], json!({"key": "a", "count": 3, "sum_v": 12, "min_v": -2, "max_v": 9, "avg_v": 4.0}));
    }

    #[test]
    fn a_non_numeric_field_fails_naming_the_field_and_key() {
        let spec = AggregateSpec { sum: vec!["v".into()], ..Default::default() };
        let mut agg = Aggregate::new("key", &spec);
        let err = agg
            .process(&"a".to_string(), json!({"v": "x"}), &mut AggState::default(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `v`") && err.contains("key `a`"), "{err}");
    }
}
