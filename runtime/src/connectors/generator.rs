//! A deterministic generator: record `seq` is a pure function of `seq`, so
//! a split's position (the next `seq`) is all a checkpoint needs to replay it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

use crate::keygroup::mix64;
use crate::state::snapshot::{decode, encode};
use crate::task::source_task::{Source, SourcePoll};
use crate::task::{TaskContext, TaskError};

/// The key and value of generated record `seq`.
pub fn generated(seq: u64, keys: u64) -> (u64, i64) {
    let h = mix64(seq ^ 0x5157_4549_5200_0001);
    (h % keys, (h >> 32) as i64 % 100)
}

/// How long a subtask whose every split is held back by watermark
/// alignment waits before it looks again.
const PAUSED_RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct Split {
    id: u32,
    /// Index of the next record within the split.
    next: u64,
}

pub struct GeneratorSource<T> {
    splits: Vec<Split>,
    total_splits: u32,
    count: Option<u64>,
    /// Records per second for this subtask; 0 = unlimited.
    rate: f64,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    started: Instant,
    emitted: u64,
    turn: usize,
    /// Split ids held back by watermark alignment.
    paused: Vec<u64>,
}

impl<T> GeneratorSource<T> {
    /// Splits come from `restored` list state entries, or are dealt
    /// round-robin on a fresh start.
    pub fn new(
        ctx: &TaskContext,
        restored: Option<Vec<Vec<u8>>>,
        total_splits: u32,
        count: Option<u64>,
        rate: u64,
        make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    ) -> Result<Self, TaskError> {
        let splits: Vec<Split> = match restored {
            Some(entries) => entries.iter().map(|e| decode(e)).collect::<Result<_, _>>()?,
            None => (0..total_splits)
                .filter(|j| j % ctx.parallelism() == ctx.subtask())
                .map(|id| Split { id, next: 0 })
                .collect(),
        };
        let share = splits.len() as f64 / total_splits.max(1) as f64;
        Ok(GeneratorSource {
            splits,
            total_splits,
            count,
            rate: rate as f64 * share,
            make,
            started: Instant::now(),
            emitted: 0,
            turn: 0,
            paused: Vec::new(),
        })
    }

    fn seq(&self, split: &Split) -> u64 {
        split.next * self.total_splits as u64 + split.id as u64
    }

    fn split_done(&self, split: &Split) -> bool {
        self.count.is_some_and(|c| self.seq(split) >= c)
    }
}

impl<T: Send> Source<T> for GeneratorSource<T> {
    fn poll_batch(&mut self, max: usize) -> Result<SourcePoll<T>, TaskError> {
        let mut n = max;
        if self.rate > 0.0 {
            let allowed = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
            if allowed <= self.emitted {
                let wait = Duration::from_secs_f64((self.emitted + 1) as f64 / self.rate);
                return Ok(SourcePoll::Idle(self.started + wait));
            }
            n = n.min((allowed - self.emitted) as usize);
        }
        let live = self.splits.len();
        for _ in 0..live {
            self.turn = (self.turn + 1) % live;
            let mut split = self.splits[self.turn];
            if self.split_done(&split) || self.paused.contains(&u64::from(split.id)) {
                continue;
            }
            let mut batch = Vec::with_capacity(n);
            while batch.len() < n && !self.split_done(&split) {
                batch.push((self.make)(self.seq(&split)));
                split.next += 1;
            }
            self.splits[self.turn] = split;
            self.emitted += batch.len() as u64;
            return Ok(SourcePoll::Batch(batch));
        }
        if self.splits.iter().any(|s| !self.split_done(s)) {
            // Only splits held back are left: alignment says when they read.
            return Ok(SourcePoll::Idle(Instant::now() + PAUSED_RECHECK));
        }
        Ok(SourcePoll::Exhausted)
    }

    fn pause_splits(&mut self, splits: &[u64]) -> Result<bool, TaskError> {
        self.paused = splits.to_vec();
        Ok(true)
    }

    /// Split ids are `seq % splits`.
    fn active_splits(&self) -> Vec<u64> {
        self.splits.iter().filter(|s| !self.split_done(s)).map(|s| s.id as u64).collect()
    }

    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<Vec<u8>>, TaskError> {
        Ok(self.splits.iter().map(encode).collect::<Result<_, _>>()?)
    }
}
