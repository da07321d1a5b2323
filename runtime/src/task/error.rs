use crate::checkpoint::store::CheckpointError;
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
}

impl TaskError {
    pub fn sink(sink: &str, reason: impl std::fmt::Display) -> TaskError {
        TaskError::Sink { sink: sink.to_string(), reason: reason.to_string() }
    }
    pub fn source(source: &str, reason: impl std::fmt::Display) -> TaskError {
        TaskError::Source { source_name: source.to_string(), reason: reason.to_string() }
    }
}
