//! Watermarks from the records' own timestamps, per split (Kafka
//! partition, file, generator split) as Flink's split-aware sources make
//! them: a subtask's watermark is the least over its active splits of the
//! greatest timestamp seen minus the allowed out-of-orderness. Splits move
//! between subtasks on restore and rescaling with positions far apart, so
//! one watermark over all of a subtask's records would make the records of
//! the split furthest behind late. With `eventTime.expr`, the source
//! computes each record's event-time field with that expression first.

use std::collections::HashMap;
use std::time::Duration;

use arrow_schema::SchemaRef;
use tokio::time::Instant;

use super::expr::Batcher;

use super::schema::Planned;
use super::steps::ExprStep;
use crate::record::{event_time_of, BadRecord, Row, SourceRecord};
use crate::task::source_task::{Source, SourcePoll};
use crate::task::TaskError;

#[derive(Debug, Clone, Copy)]
struct SplitTime {
    greatest: Option<i64>,
    /// When the split last had a record, or was first seen.
    active_at: Instant,
}

/// A source whose records carry event time in `field`.
pub struct EventTimeSource {
    inner: Box<dyn Source<SourceRecord>>,
    field: String,
    /// Milliseconds the watermark trails the greatest timestamp.
    bound: i64,
    /// A split without records for this long no longer holds the watermark back.
    idle_timeout: Option<Duration>,
    splits: HashMap<u64, SplitTime>,
    /// `eventTime.expr`, when the time is computed.
    expr: Option<ExprStep>,
}

impl EventTimeSource {
    pub fn new(
        inner: Box<dyn Source<SourceRecord>>,
        field: &str,
        bound_ms: i64,
        idle_timeout: Option<Duration>,
    ) -> EventTimeSource {
        EventTimeSource {
            inner,
            field: field.into(),
            bound: bound_ms,
            idle_timeout,
            splits: HashMap::new(),
            expr: None,
        }
    }

    /// The source with its records' event-time field computed by
    /// `spec.pipeline.eventTime.expr` first: `planned` as a step writing
    /// the field, `fields` the fields it reads.
    pub fn computing(mut self, planned: Planned, fields: SchemaRef) -> Result<Self, TaskError> {
        let at = "spec.pipeline.eventTime.expr".to_string();
        let batcher = Batcher::new(fields).map_err(|reason| TaskError::User { function: at.clone(), reason })?;
        self.expr = Some(ExprStep::new(at, planned, batcher));
        Ok(self)
    }
}

impl Source<SourceRecord> for EventTimeSource {
    fn poll_batch(&mut self, max: usize) -> Result<SourcePoll<SourceRecord>, TaskError> {
        let mut polled = self.inner.poll_batch(max)?;
        if let (SourcePoll::Batch(batch), Some(step)) = (&mut polled, &mut self.expr) {
            stamp(step, batch);
        }
        if let SourcePoll::Batch(batch) = &polled {
            let now = Instant::now();
            for record in batch {
                // A record without a readable time goes to the error policy next.
                let Some(ts) = record.row.as_ref().ok().and_then(|row| event_time_of(row, &self.field).ok()) else {
                    continue;
                };
                let split = self.splits.entry(record.split).or_insert(SplitTime { greatest: None, active_at: now });
                split.greatest = Some(split.greatest.map_or(ts, |g| g.max(ts)));
                split.active_at = now;
            }
        }
        Ok(polled)
    }

    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<Vec<u8>>, TaskError> {
        self.inner.snapshot(checkpoint)
    }

    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), TaskError> {
        self.inner.checkpoint_complete(checkpoint)
    }

    fn active_splits(&self) -> Vec<u64> {
        self.inner.active_splits()
    }

    fn watermark(&mut self) -> Option<i64> {
        let now = Instant::now();
        let mut least: Option<i64> = None;
        for id in self.inner.active_splits() {
            let split = *self.splits.entry(id).or_insert(SplitTime { greatest: None, active_at: now });
            if self.idle_timeout.is_some_and(|t| now.duration_since(split.active_at) >= t) {
                continue;
            }
            // An active split that has said nothing yet may still bring
            // anything: no watermark until it does.
            let greatest = split.greatest?;
            // One at exactly `greatest - bound` still counts.
            let mark = greatest.saturating_sub(self.bound).saturating_sub(1);
            least = Some(least.map_or(mark, |l| l.min(mark)));
        }
        least
    }
}

/// Writes the value of `spec.pipeline.eventTime.expr` (run by `step`) to
/// the event-time field of `batch`'s records. A record the expression
/// fails on becomes a bad record naming it.
fn stamp(step: &mut ExprStep, batch: &mut [SourceRecord]) {
    let taken: Vec<(usize, Row)> = batch
        .iter_mut()
        .enumerate()
        .filter(|(_, r)| r.row.is_ok())
        .filter_map(|(i, r)| std::mem::replace(&mut r.row, Ok(Row::Null)).ok().map(|row| (i, row)))
        .collect();
    let (at, rows): (Vec<usize>, Vec<Row>) = taken.into_iter().unzip();
    let rows = match step.run(rows) {
        Ok(stamped) => {
            for (i, row) in at.into_iter().zip(stamped) {
                batch[i].row = Ok(row);
            }
            return;
        }
        Err((rows, _)) => rows,
    };
    // Row by row: only the records it fails on are bad.
    for (i, row) in at.into_iter().zip(rows) {
        let origin = batch[i].origin.clone().unwrap_or_else(|| "spec.pipeline.eventTime.expr".into());
        batch[i].row = match step.run(vec![row]) {
            Ok(mut one) => one.pop().ok_or_else(|| BadRecord {
                origin,
                raw: String::new(),
                reason: "spec.pipeline.eventTime.expr gave no row".into(),
            }),
            Err((mut failed, reason)) => Err(BadRecord {
                origin,
                raw: failed.pop().map(|r| r.to_string()).unwrap_or_default(),
                reason: format!("spec.pipeline.eventTime.expr: {reason}"),
            }),
        };
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Hands out the batches it was given, from splits 0 and 1.
    struct Scripted(Vec<Vec<(u64, i64)>>);

    impl Source<SourceRecord> for Scripted {
        fn poll_batch(&mut self, _max: usize) -> Result<SourcePoll<SourceRecord>, TaskError> {
            if self.0.is_empty() {
                return Ok(SourcePoll::Idle(Instant::now()));
            }
            let batch = self.0.remove(0);
            let records =
                batch.into_iter().map(|(split, ts)| SourceRecord { origin: None, split, row: Ok(json!({"ts": ts})) });
            Ok(SourcePoll::Batch(records.collect()))
        }
        fn snapshot(&mut self, _: u64) -> Result<Vec<Vec<u8>>, TaskError> {
            Ok(Vec::new())
        }
        fn active_splits(&self) -> Vec<u64> {
            vec![0, 1]
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watermark_is_the_least_over_splits_and_an_idle_split_stops_holding_it_back() {
        let batches = vec![vec![(0, 1_000)], vec![(1, 400), (0, 1_200)], vec![(0, 5_000)]];
        let idle = Some(Duration::from_secs(30));
        let mut source = EventTimeSource::new(Box::new(Scripted(batches)), "ts", 100, idle);
        source.poll_batch(10).unwrap();
        assert_eq!(source.watermark(), None, "split 1 has said nothing yet");
        source.poll_batch(10).unwrap();
        assert_eq!(source.watermark(), Some(299), "split 1 is furthest behind");
        tokio::time::advance(Duration::from_secs(20)).await;
        source.poll_batch(10).unwrap();
        assert_eq!(source.watermark(), Some(299));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(source.watermark(), Some(4_899), "split 1 is idle now, split 0 is not");
    }

    /// Hands out one batch of rows, all from split 0.
    struct Rows(Option<Vec<Row>>);

    impl Source<SourceRecord> for Rows {
        fn poll_batch(&mut self, _max: usize) -> Result<SourcePoll<SourceRecord>, TaskError> {
            let Some(rows) = self.0.take() else { return Ok(SourcePoll::Idle(Instant::now())) };
            let origin = |i: usize| Some(format!("readings.jsonl:{}", i + 1));
            let records =
                rows.into_iter().enumerate().map(|(i, row)| SourceRecord { origin: origin(i), split: 0, row: Ok(row) });
            Ok(SourcePoll::Batch(records.collect()))
        }
        fn snapshot(&mut self, _: u64) -> Result<Vec<Vec<u8>>, TaskError> {
            Ok(Vec::new())
        }
        fn active_splits(&self) -> Vec<u64> {
            vec![0]
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_time_expression_stamps_each_record_before_the_watermark_and_one_it_fails_on_is_bad() {
        let pipeline: crate::manifest::PipelineSpec = serde_json::from_value(json!({
            "source": {"file": {"path": "readings.jsonl"}},
            "schema": [{"name": "epoch_s", "type": "int64"}],
            "eventTime": {"field": "ts", "expr": "to_timestamp_seconds(epoch_s)"},
            "steps": [],
            "sink": {"stdout": {}},
        }))
        .unwrap();
        let (planned, fields) = crate::pipeline::schema::event_time_expr(&pipeline).unwrap().unwrap();
        let rows = vec![json!({"epoch_s": 5}), json!({"epoch_s": "soon"}), json!({"epoch_s": 7})];
        let source = EventTimeSource::new(Box::new(Rows(Some(rows))), "ts", 0, None);
        let mut source = source.computing(planned, fields).unwrap();
        let SourcePoll::Batch(batch) = source.poll_batch(10).unwrap() else { panic!("expected a batch") };
        let ts: Vec<Option<i64>> = batch.iter().map(|r| r.row.as_ref().ok().and_then(|r| r["ts"].as_i64())).collect();
        assert_eq!(ts, [Some(5_000), None, Some(7_000)]);
        let bad = batch[1].row.as_ref().unwrap_err();
        assert_eq!(bad.origin, "readings.jsonl:2");
        assert!(bad.reason.starts_with("spec.pipeline.eventTime.expr: "), "{}", bad.reason);
        assert_eq!(source.watermark(), Some(6_999));
    }
}
