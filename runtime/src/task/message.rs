use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::TaskFailure;
use crate::checkpoint::StateFileMetadata;

/// A checkpoint barrier: everything before it belongs to checkpoint `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    pub id: u64,
    pub timestamp_ms: u64,
}

/// Event-time progress of a stream (milliseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Watermark {
    /// No record with a timestamp at or before this one follows.
    At(i64),
    /// The stream has no records for now: downstream does not wait for it
    /// until it sends `At` again.
    Idle,
}

impl Watermark {
    /// The watermark of a stream that has ended: every event time is done.
    pub const END: Watermark = Watermark::At(i64::MAX);
}

/// What flows on a data channel between two subtasks.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message<T> {
    Batch(Vec<T>),
    Barrier(Barrier),
    /// The upstream subtask has no more records.
    End,
    Watermark(Watermark),
}

/// What the coordinator tells a subtask.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Control {
    /// Sources only: take a snapshot and emit this barrier.
    Trigger(Barrier),
    /// Checkpoint `id` is complete: commit what it covers.
    Complete(u64),
    /// Checkpoint `id` was aborted: stop aligning for it.
    Abort(u64),
    /// Finish: sources emit end-of-input, the rest exit once it arrived.
    Stop,
    /// Sources only, with watermark alignment: the least watermark of the
    /// job's source subtasks (`i64::MAX` when none holds the others back).
    Align(i64),
}

/// Identity of a subtask.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub stage: usize,
    pub name: Arc<str>,
    pub subtask: u32,
    pub parallelism: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.name, self.subtask + 1, self.parallelism)
    }
}

/// A state file a subtask wrote for a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrittenState {
    pub uid: String,
    pub parallelism: u32,
    pub file: StateFileMetadata,
}

/// What a subtask tells the coordinator.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    Ack {
        checkpoint: u64,
        task: TaskId,
        files: Vec<WrittenState>,
    },
    Decline {
        checkpoint: u64,
        task: TaskId,
        reason: String,
    },
    SourceExhausted(TaskId),
    /// With watermark alignment, a source subtask's watermark as it changes
    /// (`i64::MIN` before its first); `None` when it holds nothing back
    /// (idle, or read to the end).
    SourceWatermark {
        task: TaskId,
        watermark: Option<i64>,
    },
    /// A background part of a task (a snapshot writer), a worker or a
    /// channel failed fatally.
    Failed {
        task: TaskId,
        failure: TaskFailure,
    },
    /// A subtask ended, with its failure if it failed.
    TaskFinished {
        task: TaskId,
        error: Option<TaskFailure>,
    },
}
