//! The stateless expression steps (`filter`, `select`, `keyBy.expr`), run
//! as a [`Check`] in front of the error policy: each input batch becomes one Arrow record batch, the planned
//! expressions run over it, and the rows that pass (or the computed rows)
//! go on. A record an expression fails on (a division by zero, a cast that
//! cannot be made) goes to the error policy naming the step; the rest of
//! its batch goes on.

use serde_json::Value;

use super::bad_records::Check;
use super::expr::{json_values, rows_of, Batcher};
use super::schema::Planned;
use crate::record::{BadRecord, Row};

pub struct ExprStep {
    /// Where the step is in the manifest, for bad records' origin.
    at: String,
    planned: Planned,
    batcher: Batcher,
}

impl ExprStep {
    pub fn new(at: String, planned: Planned, batcher: Batcher) -> Self {
        ExprStep { at, planned, batcher }
    }

    /// The rows that go on from `rows`, or why the batch failed.
    pub(super) fn run(&mut self, rows: Vec<Row>) -> Result<Vec<Row>, (Vec<Row>, String)> {
        let batch = match self.batcher.batch(&rows) {
            Ok(b) => b,
            Err(e) => return Err((rows, e)),
        };
        match &self.planned {
            Planned::Filter(c) => match c.mask(&batch) {
                Ok(mask) => Ok(rows.into_iter().zip(mask).filter_map(|(r, keep)| keep.then_some(r)).collect()),
                Err(e) => Err((rows, e)),
            },
            Planned::Select(exprs, names) => {
                let columns: Result<Vec<Vec<Value>>, String> =
                    exprs.iter().map(|c| c.evaluate(&batch).and_then(|a| json_values(&a))).collect();
                match columns {
                    Ok(columns) => Ok(rows_of(names, &columns, rows.len())),
                    Err(e) => Err((rows, e)),
                }
            }
            Planned::KeyByExpr(c, field) => match c.evaluate(&batch).and_then(|a| json_values(&a)) {
                Ok(keys) => Ok(rows
                    .into_iter()
                    .zip(keys)
                    .map(|(mut row, key)| {
                        if let Some(o) = row.as_object_mut() {
                            o.insert(field.clone(), key);
                        }
                        row
                    })
                    .collect()),
                Err(e) => Err((rows, e)),
            },
        }
    }

    /// Runs a failed batch row by row: the rows that fail alone are bad
    /// records, the others go on in order.
    fn one_by_one(&mut self, rows: Vec<Row>) -> (Vec<Row>, Vec<BadRecord>) {
        let mut good = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for row in rows {
            match self.run(vec![row]) {
                Ok(out) => good.extend(out),
                Err((mut failed, reason)) => {
                    let raw = failed.pop().map(|r| r.to_string()).unwrap_or_default();
                    bad.push(BadRecord { origin: self.at.clone(), raw, reason });
                }
            }
        }
        (good, bad)
    }
}

impl Check<Row> for ExprStep {
    fn check(&mut self, batch: Vec<Row>) -> (Vec<Row>, Vec<BadRecord>) {
        match self.run(batch) {
            Ok(good) => (good, Vec::new()),
            Err((rows, _)) => self.one_by_one(rows),
        }
    }
}
