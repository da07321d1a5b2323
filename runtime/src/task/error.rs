use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointError;
use crate::faults::FaultPoint;
use crate::state::snapshot::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("bad record {record}: {reason}")]
    BadRecord { record: String, reason: String },
    #[error("source {source_name}: {reason}")]
    Source { source_name: String, reason: String },
    #[error("sink {sink}: {reason}")]
    Sink { sink: String, reason: String },
    #[error("user function {function}: {reason}")]
    User { function: String, reason: String },
    #[error("key of record routed to subtask {subtask}, which does not own its key group")]
    Misrouted { subtask: u32 },
    #[error(transparent)]
    State(#[from] CodecError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("injected fault at {0:?}")]
    Injected(FaultPoint),
    #[error("{0} went away")]
    Disconnected(&'static str),
    #[error(
        "sink {sink}: restore fell back to checkpoint {restored}, but output of checkpoint {newest} is already \
         committed (e.g. {example}); readers may have seen it, so it is not retracted. Repair or remove the \
         damaged newer checkpoint, or set spec.checkpoints.onFallbackPastCommittedOutput: Retract"
    )]
    CommittedOutputAhead { sink: String, restored: u64, newest: u64, example: String },
}

/// What kind of failure ended a subtask (or a part of the machinery), as
/// data: it decides what happens next (see `job::failure`), and travels
/// between processes with the failure's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// A record the error policy `fail` refused.
    BadRecord,
    /// A source could not read.
    Source,
    /// A sink could not write or commit.
    Sink,
    /// A user function returned an error or panicked.
    UserCode,
    /// State could not be encoded or decoded, or a record reached the wrong subtask.
    State,
    /// Checkpoint storage could not be read or written.
    Storage,
    /// A checkpoint to restore cannot be used (damaged, incompatible).
    Restore,
    /// A worker found the checkpoint it was to restore damaged (a checksum
    /// or a decode failed): the next attempt restores an older one.
    DamagedCheckpoint,
    /// Restore fell back past output a sink already committed.
    CommittedOutputAhead,
    /// A test's injected crash.
    Injected,
    /// A neighbour subtask or the coordinator went away first.
    Disconnected,
    /// A worker process was lost (killed, disconnected, silent).
    WorkerLost,
    /// Too few workers registered within the wait's deadline.
    WorkersUnavailable,
    /// A shuffle channel between workers broke.
    ChannelBroken,
    /// The job could not be built or deployed from its manifest.
    Deployment,
    /// A newer attempt of the job took over (the checkpoint ledger): this
    /// one must stop, and never restart on its own.
    Superseded,
}

/// A failure as it travels: its kind and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl TaskFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> TaskFailure {
        TaskFailure { kind, message: message.into() }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&TaskError> for TaskFailure {
    fn from(e: &TaskError) -> TaskFailure {
        TaskFailure::new(e.kind(), e.to_string())
    }
}

impl From<&CheckpointError> for TaskFailure {
    fn from(e: &CheckpointError) -> TaskFailure {
        TaskFailure::new(e.failure_kind(), e.to_string())
    }
}

impl TaskError {
    pub fn kind(&self) -> FailureKind {
        match self {
            TaskError::BadRecord { .. } => FailureKind::BadRecord,
            TaskError::Source { .. } => FailureKind::Source,
            TaskError::Sink { .. } => FailureKind::Sink,
            TaskError::User { .. } => FailureKind::UserCode,
            TaskError::Misrouted { .. } | TaskError::State(_) => FailureKind::State,
            TaskError::Checkpoint(e) => e.failure_kind(),
            TaskError::Injected(_) => FailureKind::Injected,
            TaskError::Disconnected(_) => FailureKind::Disconnected,
            TaskError::CommittedOutputAhead { .. } => FailureKind::CommittedOutputAhead,
        }
    }

    pub fn sink(sink: &str, reason: impl std::fmt::Display) -> TaskError {
        TaskError::Sink { sink: sink.to_string(), reason: reason.to_string() }
    }
    pub fn source(source: &str, reason: impl std::fmt::Display) -> TaskError {
        TaskError::Source { source_name: source.to_string(), reason: reason.to_string() }
    }
}
