//! Running aggregates per key, emitted as an update for every record.
//!
//! An aggregate of numbers only keeps an [`AggState`] per key; one that
//! also keeps values (`countDistinct`, `first`, `last`) keeps a
//! [`WithValues`]. They are two state types, not one with optional parts,
//! because checkpoints hold state in postcard, which has no optional
//! trailing fields: a checkpoint written before values existed must read
//! back as the [`AggState`] it was.

use std::collections::BTreeSet;
use std::fmt::{Debug, Write};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
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

/// Values of one key (or key and window) that are not summed: the
/// distinct values of each `countDistinct` field, and each `first` and
/// `last` field's value with its order (event time, or arrival), all as
/// JSON text (postcard cannot read a `serde_json::Value` back).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueState {
    distinct: Vec<BTreeSet<String>>,
    first: Vec<Option<(i64, String)>>,
    last: Vec<Option<(i64, String)>>,
}

/// The state of an aggregate that keeps values as well as numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WithValues {
    numbers: AggState,
    values: ValueState,
}

/// What an aggregate keeps per key (or key and window).
pub trait Accumulator: Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    fn numbers(&self) -> &AggState;
    fn numbers_mut(&mut self) -> &mut AggState;
    fn values(&self) -> Option<&ValueState>;
    fn values_mut(&mut self) -> Option<&mut ValueState>;
}

impl Accumulator for AggState {
    fn numbers(&self) -> &AggState {
        self
    }
    fn numbers_mut(&mut self) -> &mut AggState {
        self
    }
    fn values(&self) -> Option<&ValueState> {
        None
    }
    fn values_mut(&mut self) -> Option<&mut ValueState> {
        None
    }
}

impl Accumulator for WithValues {
    fn numbers(&self) -> &AggState {
        &self.numbers
    }
    fn numbers_mut(&mut self) -> &mut AggState {
        &mut self.numbers
    }
    fn values(&self) -> Option<&ValueState> {
        Some(&self.values)
    }
    fn values_mut(&mut self) -> Option<&mut ValueState> {
        Some(&mut self.values)
    }
}

/// An aggregate's fields and output names; `A` is the state it keeps per
/// key ([`AggState`] when the spec has no value aggregates).
#[derive(Debug, Clone)]
pub struct Aggregate<A = AggState> {
    key_field: String,
    count: bool,
    /// The `sum` fields, then the `avg` fields.
    sum: Vec<String>,
    avg: usize,
    min: Vec<String>,
    max: Vec<String>,
    distinct: Vec<String>,
    first: Vec<String>,
    last: Vec<String>,
    /// The output fields, named once rather than per record.
    out: OutputNames,
    state: PhantomData<fn() -> A>,
}

#[derive(Debug, Clone)]
struct OutputNames {
    sum: Vec<String>,
    min: Vec<String>,
    max: Vec<String>,
    distinct: Vec<String>,
    first: Vec<String>,
    last: Vec<String>,
}

impl<A: Accumulator> Aggregate<A> {
    pub fn new(key_field: &str, spec: &AggregateSpec) -> Aggregate<A> {
        let named = |prefix: &str, fields: &[String]| -> Vec<String> {
            fields.iter().map(|f| format!("{prefix}_{f}")).collect()
        };
        let mut sum = named("sum", &spec.sum);
        sum.extend(named("avg", &spec.avg));
        let out = OutputNames {
            sum,
            min: named("min", &spec.min),
            max: named("max", &spec.max),
            distinct: named("count_distinct", &spec.count_distinct),
            first: named("first", &spec.first),
            last: named("last", &spec.last),
        };
        Aggregate {
            key_field: key_field.into(),
            count: spec.count,
            sum: spec.sum.iter().chain(&spec.avg).cloned().collect(),
            avg: spec.avg.len(),
            min: spec.min.clone(),
            max: spec.max.clone(),
            distinct: spec.count_distinct.clone(),
            first: spec.first.clone(),
            last: spec.last.clone(),
            out,
            state: PhantomData,
        }
    }

    /// Adds `row` to `s`; `order` places it among the key's records for
    /// `first` and `last` (its event time in a window).
    pub fn fold(&self, key: &str, row: &Row, order: i64, acc: &mut A) -> Result<(), TaskError> {
        let s = acc.numbers_mut();
        // Each on its own: an aggregate with min or max but no sum has an
        // empty `sum` from the start.
        s.sum.resize(self.sum.len(), Num::Int(0));
        s.min.resize(self.min.len(), None);
        s.max.resize(self.max.len(), None);
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
        if let Some(v) = acc.values_mut() {
            self.fold_values(row, order, v);
        }
        Ok(())
    }

    fn fold_values(&self, row: &Row, order: i64, v: &mut ValueState) {
        if v.distinct.len() != self.distinct.len() {
            v.distinct = vec![BTreeSet::new(); self.distinct.len()];
            v.first = vec![None; self.first.len()];
            v.last = vec![None; self.last.len()];
        }
        let value = |f: &String| row.get(f).filter(|v| !v.is_null());
        let mut text = String::new();
        for (seen, f) in v.distinct.iter_mut().zip(&self.distinct) {
            if let Some(x) = value(f) {
                // Most values were seen before: only a new one is allocated.
                text.clear();
                let _ = write!(text, "{x}");
                if !seen.contains(&text) {
                    seen.insert(text.clone());
                }
            }
        }
        // Ties go to the earlier record for `first`, the later for `last`.
        for (kept, f) in v.first.iter_mut().zip(&self.first) {
            if let Some(x) = value(f).filter(|_| kept.as_ref().is_none_or(|(o, _)| order < *o)) {
                keep(kept, order, x);
            }
        }
        for (kept, f) in v.last.iter_mut().zip(&self.last) {
            if let Some(x) = value(f).filter(|_| kept.as_ref().is_none_or(|(o, _)| order >= *o)) {
                keep(kept, order, x);
            }
        }
    }

    /// Adds what `from` holds to `into` (session windows merging).
    pub fn merge(&self, into: &mut A, from: &A) {
        if into.numbers().count == 0 {
            *into = from.clone();
            return;
        }
        let (into_n, from_n) = (into.numbers_mut(), from.numbers());
        into_n.count += from_n.count;
        for (acc, v) in into_n.sum.iter_mut().zip(&from_n.sum) {
            *acc = acc.add(*v);
        }
        let pick = |acc: &mut Option<Num>, v: &Option<Num>, better: fn(f64, f64) -> bool| {
            if let Some(v) = v {
                if acc.is_none_or(|a| better(v.as_f64(), a.as_f64())) {
                    *acc = Some(*v);
                }
            }
        };
        for (acc, v) in into_n.min.iter_mut().zip(&from_n.min) {
            pick(acc, v, |v, a| v < a);
        }
        for (acc, v) in into_n.max.iter_mut().zip(&from_n.max) {
            pick(acc, v, |v, a| v > a);
        }
        let (Some(into_v), Some(from_v)) = (into.values_mut(), from.values()) else { return };
        for (seen, other) in into_v.distinct.iter_mut().zip(&from_v.distinct) {
            seen.extend(other.iter().cloned());
        }
        let take = |kept: &mut Option<(i64, String)>, other: &Option<(i64, String)>, better: fn(i64, i64) -> bool| {
            if let Some((o, x)) = other {
                if kept.as_ref().is_none_or(|(k, _)| better(*o, *k)) {
                    *kept = Some((*o, x.clone()));
                }
            }
        };
        for (kept, other) in into_v.first.iter_mut().zip(&from_v.first) {
            take(kept, other, |o, k| o < k);
        }
        for (kept, other) in into_v.last.iter_mut().zip(&from_v.last) {
            take(kept, other, |o, k| o > k);
        }
    }

    /// A row with the key and the aggregates in `acc`, after `extra` fields.
    pub fn row(&self, key: &str, extra: impl IntoIterator<Item = (&'static str, Value)>, acc: &A) -> Row {
        let s = acc.numbers();
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
        if let Some(v) = acc.values() {
            for (i, name) in self.out.distinct.iter().enumerate() {
                o.insert(name.clone(), Value::from(v.distinct.get(i).map_or(0, BTreeSet::len)));
            }
            let kept = |all: &[Option<(i64, String)>], i: usize| -> Value {
                // The text was written from a Value: it reads back as one.
                all.get(i)
                    .and_then(Option::as_ref)
                    .and_then(|(_, x)| serde_json::from_str(x).ok())
                    .unwrap_or(Value::Null)
            };
            for (i, name) in self.out.first.iter().enumerate() {
                o.insert(name.clone(), kept(&v.first, i));
            }
            for (i, name) in self.out.last.iter().enumerate() {
                o.insert(name.clone(), kept(&v.last, i));
            }
        }
        Value::Object(o)
    }
}

/// Makes `kept` hold `x` at `order`, in the text it already allocated.
fn keep(kept: &mut Option<(i64, String)>, order: i64, x: &Value) {
    let (o, text) = kept.get_or_insert_with(|| (order, String::new()));
    *o = order;
    text.clear();
    let _ = write!(text, "{x}");
}

fn field(row: &Row, name: &str, key: &str) -> Result<Num, TaskError> {
    row.get(name).and_then(Num::from_json).ok_or_else(|| not_a_number(name, key))
}

impl<A: Accumulator> KeyedProcessFunction<String, Row, Row> for Aggregate<A> {
    type State = A;

    fn process(&mut self, key: &String, row: Row, s: &mut A, out: &mut Vec<Row>) -> Result<(), TaskError> {
        // A running aggregate orders a key's records as they arrive.
        let order = s.numbers().count as i64;
        self.fold(key, &row, order, s)?;
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
        let spec = AggregateSpec { count: true, sum: v(), min: v(), max: v(), avg: v(), ..Default::default() };
        let mut agg = Aggregate::<AggState>::new("key", &spec);
        let mut state = AggState::default();
        let mut out = Vec::new();
        for v in [5, -2, 9] {
            agg.process(&"a".to_string(), json!({"key": "a", "v": v}), &mut state, &mut out).unwrap();
        }
        assert_eq!(out[2], json!({"key": "a", "count": 3, "sum_v": 12, "min_v": -2, "max_v": 9, "avg_v": 4.0}));
    }

    #[test]
    fn min_and_max_are_computed_without_any_sum() {
        let v = || vec!["v".to_string()];
        let spec = AggregateSpec { min: v(), max: v(), ..Default::default() };
        let mut agg = Aggregate::<AggState>::new("key", &spec);
        let (mut state, mut out) = (AggState::default(), Vec::new());
        for v in [5.5, -2.0, 9.25] {
            agg.process(&"a".to_string(), json!({"key": "a", "v": v}), &mut state, &mut out).unwrap();
        }
        assert_eq!(out[2], json!({"key": "a", "min_v": -2.0, "max_v": 9.25}));
    }

    fn by_value() -> AggregateSpec {
        let u = || vec!["u".to_string()];
        AggregateSpec { count: true, count_distinct: u(), first: u(), last: u(), ..Default::default() }
    }

    #[test]
    fn counts_distinct_values_and_keeps_first_and_last_in_arrival_order_skipping_nulls() {
        let mut agg = Aggregate::<WithValues>::new("key", &by_value());
        let mut state = WithValues::default();
        let mut out = Vec::new();
        for u in [json!(null), json!("x"), json!(7), json!("x"), json!({"a": 1}), json!(null)] {
            agg.process(&"a".to_string(), json!({"key": "a", "u": u}), &mut state, &mut out).unwrap();
        }
        assert_eq!(out[0], json!({"key": "a", "count": 1, "count_distinct_u": 0, "first_u": null, "last_u": null}));
        assert_eq!(out[3], json!({"key": "a", "count": 4, "count_distinct_u": 2, "first_u": "x", "last_u": "x"}));
        let last = json!({"key": "a", "count": 6, "count_distinct_u": 3, "first_u": "x", "last_u": {"a": 1}});
        assert_eq!(out[5], last, "a string and a number are distinct values, and a null is none");
    }

    #[test]
    fn merging_keeps_the_earlier_first_the_later_last_and_the_union_of_values() {
        let agg = Aggregate::<WithValues>::new("key", &by_value());
        let (mut early, mut late) = (WithValues::default(), WithValues::default());
        agg.fold("a", &json!({"u": "p"}), 10, &mut early).unwrap();
        agg.fold("a", &json!({"u": "q"}), 12, &mut early).unwrap();
        agg.fold("a", &json!({"u": "q"}), 20, &mut late).unwrap();
        agg.fold("a", &json!({"u": "r"}), 25, &mut late).unwrap();
        for (mut into, from) in [(late.clone(), &early), (early.clone(), &late)] {
            agg.merge(&mut into, from);
            let row = agg.row("a", [], &into);
            assert_eq!(row, json!({"key": "a", "count": 4, "count_distinct_u": 3, "first_u": "p", "last_u": "r"}));
        }
    }

    #[test]
    fn a_non_numeric_field_fails_naming_the_field_and_key() {
        let spec = AggregateSpec { sum: vec!["v".into()], ..Default::default() };
        let mut agg = Aggregate::<AggState>::new("key", &spec);
        let err = agg
            .process(&"a".to_string(), json!({"v": "x"}), &mut AggState::default(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `v`") && err.contains("key `a`"), "{err}");
    }
}
