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
    alignment: Option<Alignment>,
}

/// How often a subtask held back entirely looks again whether it may read,
/// besides when the coordinator announces a new least watermark.
const HELD_RECHECK: Duration = Duration::from_millis(100);

/// Watermark alignment (Flink's, with FLIP-217's per-split pausing): a
/// split whose watermark is more than `drift` past the least of the
/// subtask's splits and of the job's source subtasks stops reading.
#[derive(Debug)]
struct Alignment {
    drift: i64,
    /// The least watermark of the job's source subtasks as last announced:
    /// `i64::MIN` before the first announcement, so a subtask reads only
    /// until it has a watermark before it hears how far the others are.
    least: i64,
    /// The splits held back now, in order.
    paused: Vec<u64>,
    /// The source holds single splits back; else only the whole subtask is.
    per_split: bool,
    /// Every split is ahead: the subtask reads nothing for now.
    held: bool,
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
            alignment: None,
        }
    }

    /// With watermark alignment: splits more than `drift` milliseconds
    /// ahead of the least watermark stop reading.
    pub fn aligned(mut self, drift: Option<i64>) -> Self {
        self.alignment = drift.map(|drift| Alignment {
            drift: drift.max(0),
            least: i64::MIN,
            paused: Vec::new(),
            per_split: false,
            held: false,
        });
        self
    }

    fn is_idle(&self, split: &SplitTime, now: Instant) -> bool {
        self.idle_timeout.is_some_and(|t| now.duration_since(split.active_at) >= t)
    }

    /// Holds back the splits too far ahead and lets the others read.
    fn realign(&mut self, now: Instant) -> Result<(), TaskError> {
        let Some(a) = &self.alignment else { return Ok(()) };
        // A split held back until now was not out of records: it must not
        // go idle and stop holding the watermark back (then it would be
        // let go, read, and be held back again, over and over).
        for (id, split) in self.splits.iter_mut() {
            if a.held || (a.per_split && a.paused.contains(id)) {
                split.active_at = now;
            }
        }
        let mut marks = Vec::new();
        for id in self.inner.active_splits() {
            let split = *self.splits.entry(id).or_insert(SplitTime { greatest: None, active_at: now });
            if !self.is_idle(&split, now) {
                // A split without a record yet may bring anything: it holds the others.
                marks.push((id, split.greatest.map_or(i64::MIN, |g| self.mark(g))));
            }
        }
        let Some(a) = self.alignment.as_mut() else { return Ok(()) };
        let own = marks.iter().map(|(_, m)| *m).min();
        let limit = own.map_or(a.least, |o| o.min(a.least)).saturating_add(a.drift);
        let mut ahead: Vec<u64> = marks.iter().filter(|(_, m)| *m > limit).map(|(id, _)| *id).collect();
        ahead.sort_unstable();
        if ahead != a.paused {
            a.per_split = self.inner.pause_splits(&ahead)?;
            a.paused = ahead;
        }
        a.held = own.is_some_and(|o| o > limit);
        Ok(())
    }

    /// The watermark a split's greatest timestamp allows: one at exactly
    /// `greatest - bound` still counts.
    fn mark(&self, greatest: i64) -> i64 {
        greatest.saturating_sub(self.bound).saturating_sub(1)
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
        if self.alignment.as_ref().is_some_and(|a| a.held) {
            let now = Instant::now();
            self.realign(now)?;
            if self.held_back() {
                return Ok(SourcePoll::Idle(now + HELD_RECHECK));
            }
        }
        // Until it hears how far the others are, a subtask reads a record
        // at a time: each restart would otherwise let it run a batch ahead.
        let max = match &self.alignment {
            Some(a) if a.least == i64::MIN => 1,
            _ => max,
        };
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
        self.realign(Instant::now())?;
        Ok(polled)
    }

    fn align(&mut self, least: i64) -> Result<(), TaskError> {
        if let Some(a) = self.alignment.as_mut() {
            a.least = least;
        }
        self.realign(Instant::now())
    }

    fn held_back(&self) -> bool {
        self.alignment.as_ref().is_some_and(|a| a.held)
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
            if self.is_idle(&split, now) {
                continue;
            }
            // An active split that has said nothing yet may still bring
            // anything: no watermark until it does.
            let mark = self.mark(split.greatest?);
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

    /// Split 0 a second of event time per record, split 1 ten, one record
    /// of each split not held back per poll.
    struct Skewed {
        next: [i64; 2],
        paused: Vec<u64>,
        per_split: bool,
    }

    impl Source<SourceRecord> for Skewed {
        fn poll_batch(&mut self, _max: usize) -> Result<SourcePoll<SourceRecord>, TaskError> {
            let mut batch = Vec::new();
            for split in 0..2u64 {
                if self.per_split && self.paused.contains(&split) {
                    continue;
                }
                let ts = self.next[split as usize];
                self.next[split as usize] += if split == 0 { 1_000 } else { 10_000 };
                batch.push(SourceRecord { origin: None, split, row: Ok(json!({"ts": ts})) });
            }
            Ok(SourcePoll::Batch(batch))
        }
        fn snapshot(&mut self, _: u64) -> Result<Vec<Vec<u8>>, TaskError> {
            Ok(Vec::new())
        }
        fn active_splits(&self) -> Vec<u64> {
            vec![0, 1]
        }
        fn pause_splits(&mut self, splits: &[u64]) -> Result<bool, TaskError> {
            self.paused = splits.to_vec();
            Ok(self.per_split)
        }
    }

    /// Polls `source` as its subtask would, announcing its own watermark
    /// back as the job's least (it is the only source subtask); the
    /// greatest timestamp read of each split after `polls` polls.
    fn read_aligned(source: &mut EventTimeSource, polls: usize) -> [i64; 2] {
        let mut greatest = [i64::MIN; 2];
        for _ in 0..polls {
            if let SourcePoll::Batch(batch) = source.poll_batch(10).unwrap() {
                for r in batch {
                    let ts = r.row.as_ref().unwrap()["ts"].as_i64().unwrap();
                    greatest[r.split as usize] = greatest[r.split as usize].max(ts);
                }
            }
            if let Some(w) = source.watermark() {
                source.align(w).unwrap();
            }
        }
        greatest
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_more_than_the_drift_ahead_waits_for_the_one_behind_and_does_not_go_idle() {
        let skewed = Skewed { next: [0, 0], paused: Vec::new(), per_split: true };
        let idle = Some(Duration::from_secs(30));
        let mut source = EventTimeSource::new(Box::new(skewed), "ts", 0, idle).aligned(Some(5_000));
        let greatest = read_aligned(&mut source, 100);
        assert!(greatest[0] >= 90_000, "the split behind reads on: {greatest:?}");
        assert!(greatest[1] - greatest[0] <= 5_000 + 10_000, "the split ahead waits: {greatest:?}");
        assert!(!source.held_back(), "only the split ahead is held back");
        // Held back for longer than the idle timeout, it still holds the
        // watermark: it is not out of records.
        tokio::time::advance(Duration::from_secs(40)).await;
        source.poll_batch(10).unwrap();
        assert_eq!(source.alignment.as_ref().map(|a| a.paused.clone()), Some(vec![1]));
        assert!(source.splits.get(&1).is_some_and(|s| !source.is_idle(s, Instant::now())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_cannot_hold_one_split_back_is_held_back_whole_while_it_is_ahead_of_the_job() {
        let skewed = Skewed { next: [0, 0], paused: Vec::new(), per_split: false };
        let mut source = EventTimeSource::new(Box::new(skewed), "ts", 0, None).aligned(Some(5_000));
        source.poll_batch(10).unwrap();
        assert!(source.held_back(), "before the first announcement, it reads only up to a watermark");
        assert!(matches!(source.poll_batch(10).unwrap(), SourcePoll::Idle(_)));
        // Another subtask is at 0 s: this one, at 0 s too, may read up to 5 s.
        source.align(0).unwrap();
        assert!(!source.held_back());
        for _ in 0..6 {
            source.poll_batch(10).unwrap();
        }
        assert!(source.held_back(), "its least split passed 5 s: {:?}", source.watermark());
        source.align(20_000).unwrap();
        assert!(!source.held_back(), "the others caught up");
    }
}
