//! Watermarks from the records' own timestamps, per split (Kafka
//! partition, file, generator split) as Flink's split-aware sources make
//! them: a subtask's watermark is the least over its active splits of the
//! greatest timestamp seen minus the allowed out-of-orderness. Splits move
//! between subtasks on restore and rescaling with positions far apart, so
//! one watermark over all of a subtask's records would make the records of
//! the split furthest behind late.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::record::{event_time_of, SourceRecord};
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
}

impl EventTimeSource {
    pub fn new(
        inner: Box<dyn Source<SourceRecord>>,
        field: &str,
        bound_ms: i64,
        idle_timeout: Option<Duration>,
    ) -> EventTimeSource {
        EventTimeSource { inner, field: field.into(), bound: bound_ms, idle_timeout, splits: HashMap::new() }
    }
}

impl Source<SourceRecord> for EventTimeSource {
    fn poll_batch(&mut self, max: usize) -> Result<SourcePoll<SourceRecord>, TaskError> {
        let polled = self.inner.poll_batch(max)?;
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
}
