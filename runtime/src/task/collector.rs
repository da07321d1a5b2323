//! The interface of chained operators, and what a task needs to know.
//!
//! Operators in one task are chained push-style: each gets a batch and
//! pushes its output to the next. Barriers travel the same path after the
//! batches before them, so each operator snapshots at the right point.

use std::sync::Arc;

use async_trait::async_trait;

use super::error::TaskError;
use super::message::{Barrier, TaskId, Watermark};
use crate::checkpoint::RestoredCheckpoint;
use crate::faults::Faults;
use crate::job::fence::Fence;
use crate::keygroup::KeyGroupRange;
use crate::manifest::CheckpointMode;
use crate::metrics::{JobMetrics, StageCounters};
use crate::state::snapshot::CodecError;

/// Everything a subtask and its operators are built with.
#[derive(Clone)]
pub struct TaskContext {
    pub id: TaskId,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    pub mode: CheckpointMode,
    /// The checkpoint this run restores from, if any.
    pub restored: Option<Arc<RestoredCheckpoint>>,
    pub metrics: Arc<JobMetrics>,
    /// This subtask's stage's counters.
    pub stage: Arc<StageCounters>,
    pub faults: Faults,
    /// Records per batch that sources and shuffles aim for.
    pub batch_size: usize,
    /// Batches buffered per channel before the sender waits.
    pub channel_capacity: usize,
    /// Records queued in front of this subtask are bounded to about this
    /// much of its processing time (`None`: only by `channel_capacity`).
    pub in_flight_target: Option<std::time::Duration>,
    /// The job incarnation and this attempt's epoch, carried in the names
    /// of everything the subtask writes.
    pub fence: Fence,
    /// Whether sinks may retract output committed after the restored
    /// checkpoint (`onFallbackPastCommittedOutput: Retract`).
    pub retract_on_fallback: bool,
}

impl TaskContext {
    pub fn subtask(&self) -> u32 {
        self.id.subtask
    }
    pub fn parallelism(&self) -> u32 {
        self.id.parallelism
    }
    pub fn restored_id(&self) -> Option<u64> {
        self.restored.as_ref().map(|r| r.id)
    }

    /// Subtask 0 of 1 of a stage named `name`, exactly-once, nothing restored.
    #[cfg(test)]
    pub fn for_test(name: &str) -> TaskContext {
        let metrics = Arc::new(JobMetrics::default());
        TaskContext {
            id: super::TaskId { stage: 0, name: Arc::from(name), subtask: 0, parallelism: 1 },
            max_parallelism: 128,
            key_groups: KeyGroupRange::for_subtask(128, 1, 0),
            mode: CheckpointMode::ExactlyOnce,
            restored: None,
            stage: metrics.stage(name),
            metrics,
            faults: Faults::none(),
            batch_size: 64,
            channel_capacity: 4,
            in_flight_target: None,
            fence: Fence { incarnation: 1, epoch: 1 },
            retract_on_fallback: false,
        }
    }
}

/// Encodes keyed state off the task thread.
pub type KeyedEncoder = Box<dyn FnOnce() -> Result<Vec<(u16, Vec<u8>)>, CodecError> + Send>;

/// One operator's part of a task snapshot.
pub struct OperatorSnapshot {
    pub uid: String,
    pub keyed: Option<KeyedEncoder>,
    pub list: Vec<Vec<u8>>,
    pub union: Vec<Vec<u8>>,
}

/// The operators' snapshots taken at one barrier, written after the task moved on.
#[derive(Default)]
pub struct TaskSnapshot {
    pub operators: Vec<OperatorSnapshot>,
}

impl TaskSnapshot {
    pub fn add(&mut self, op: OperatorSnapshot) {
        self.operators.push(op);
    }
}

/// A chained operator, or the end of a chain (a shuffle or a sink).
#[async_trait]
pub trait Collector<T: Send + 'static>: Send {
    /// Called once before any task runs: restore-time side effects (a sink
    /// committing restored transactions) happen here.
    async fn open(&mut self) -> Result<(), TaskError>;
    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError>;
    /// Snapshot own state into `snapshot`, then pass the barrier on.
    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError>;
    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError>;
    async fn end_of_input(&mut self) -> Result<(), TaskError>;
    /// Event time advanced, after the batches before it. Operators pass it
    /// on after acting on it (firing timers); sinks have no use for it.
    async fn watermark(&mut self, _watermark: Watermark) -> Result<(), TaskError> {
        Ok(())
    }
    /// The wall clock reads `now` (milliseconds since the epoch): keyed
    /// operators fire their processing-time timers up to it. A shuffled
    /// task calls this every [`PROCESSING_TICK`] between its inputs;
    /// operators pass it on, sinks have no use for it.
    async fn processing_time(&mut self, _now: i64) -> Result<(), TaskError> {
        Ok(())
    }
}

/// How often a task fed by a shuffle reads the wall clock for the
/// processing-time timers of its keyed operators: their resolution.
pub const PROCESSING_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Boxed collectors forward, so chains can be assembled from trait objects.
#[async_trait]
impl<T: Send + 'static> Collector<T> for Box<dyn Collector<T>> {
    async fn open(&mut self) -> Result<(), TaskError> {
        (**self).open().await
    }
    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        (**self).collect(batch).await
    }
    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        (**self).barrier(barrier, snapshot).await
    }
    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        (**self).checkpoint_complete(id).await
    }
    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        (**self).end_of_input().await
    }
    async fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        (**self).watermark(watermark).await
    }
    async fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        (**self).processing_time(now).await
    }
}
