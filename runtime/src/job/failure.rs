//! What a failed attempt means for the job, decided by its cause (typed
//! data), never by the wording of a message or by which report came first.
//!
//! Only the loss of a worker (and the broken channels and vanished
//! neighbours it leaves behind) is cured by restoring every worker in place:
//! a replacement takes its subtasks. So is a checkpoint a worker found
//! damaged while loading it: the next attempt passes it over. Everything else (a bad record under
//! `fail`, a user function's error or panic, a sink that cannot commit,
//! storage that cannot be read, a checkpoint that cannot be restored) would
//! fail again the same way, so the coordinator exits non-zero and the
//! operator's restart strategy paces and bounds the retries.

use super::JobError;
use crate::task::error::{FailureKind, TaskFailure};

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Reset every worker to the newest completed checkpoint, in this process.
    InPlace,
    /// End the process non-zero: the restart strategy decides what follows.
    ExitToOperator,
}

/// The kind of failure `e` is.
pub fn kind(e: &JobError) -> FailureKind {
    match e {
        JobError::TaskFailed { failure, .. } => failure.kind,
        JobError::Task { source, .. } => source.kind(),
        JobError::WorkersLost(_) => FailureKind::WorkerLost,
        JobError::WorkersUnavailable { .. } => FailureKind::WorkersUnavailable,
        JobError::Checkpoint(c) => c.failure_kind(),
        JobError::TooManyCheckpointFailures { .. } => FailureKind::Storage,
        JobError::InitialSavepoint { .. } | JobError::NonRestoredState { .. } => FailureKind::Restore,
        JobError::Internal { .. } | JobError::Fence(_) => FailureKind::Deployment,
        JobError::DamagedCheckpoint { .. } => FailureKind::DamagedCheckpoint,
    }
}

impl FailureKind {
    pub fn recovery(self) -> Recovery {
        match self {
            FailureKind::WorkerLost
            | FailureKind::ChannelBroken
            | FailureKind::Disconnected
            | FailureKind::DamagedCheckpoint => Recovery::InPlace,
            FailureKind::BadRecord
            | FailureKind::Source
            | FailureKind::Sink
            | FailureKind::UserCode
            | FailureKind::State
            | FailureKind::Storage
            | FailureKind::Restore
            | FailureKind::CommittedOutputAhead
            | FailureKind::Injected
            | FailureKind::WorkersUnavailable
            | FailureKind::Deployment
            | FailureKind::Superseded => Recovery::ExitToOperator,
        }
    }
}

impl From<&JobError> for TaskFailure {
    fn from(e: &JobError) -> TaskFailure {
        TaskFailure::new(kind(e), e.to_string())
    }
}

/// What to do after `e`.
pub fn recovery(e: &JobError) -> Recovery {
    kind(e).recovery()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointError;
    use crate::task::TaskError;

    fn failed(kind: FailureKind, message: &str) -> JobError {
        JobError::TaskFailed { task: "agg (1/3)".into(), failure: TaskFailure::new(kind, message) }
    }

    #[test]
    fn a_lost_worker_is_recovered_in_place() {
        assert_eq!(
            recovery(&failed(FailureKind::WorkerLost, "worker w2 lost: no heartbeat for 1s")),
            Recovery::InPlace
        );
        assert_eq!(recovery(&JobError::WorkersLost("a worker left before deployment".into())), Recovery::InPlace);
        assert_eq!(recovery(&failed(FailureKind::ChannelBroken, "shuffle channel broke")), Recovery::InPlace);
    }

    #[test]
    fn a_bad_record_exits_to_the_restart_strategy_whatever_its_message_says() {
        // The message mentions a lost worker; the cause decides, not the words.
        let e = failed(FailureKind::BadRecord, "bad record at in.jsonl:2: worker went away");
        assert_eq!(recovery(&e), Recovery::ExitToOperator);
    }

    #[test]
    fn a_panicking_user_function_exits_to_the_restart_strategy() {
        assert_eq!(recovery(&failed(FailureKind::UserCode, "panicked: boom")), Recovery::ExitToOperator);
    }

    #[test]
    fn permanent_storage_problems_exit_and_are_not_retried_in_place() {
        let none_intact = JobError::Checkpoint(CheckpointError::NoIntactCheckpoint {
            location: "file:///x".into(),
            damaged: 2,
            newest_reason: "checksum".into(),
        });
        assert_eq!(kind(&none_intact), FailureKind::Restore);
        assert_eq!(recovery(&none_intact), Recovery::ExitToOperator);
        let mismatch = JobError::Checkpoint(CheckpointError::MaxParallelismChanged { id: 3, found: 64, expected: 128 });
        assert_eq!(recovery(&mismatch), Recovery::ExitToOperator);
    }

    #[test]
    fn refusing_to_retract_committed_output_exits() {
        let e = JobError::Task {
            task: "sink (1/1)".into(),
            source: Box::new(TaskError::CommittedOutputAhead {
                sink: "/out".into(),
                restored: 4,
                newest: 5,
                example: "/out/part".into(),
            }),
        };
        assert_eq!(kind(&e), FailureKind::CommittedOutputAhead);
        assert_eq!(recovery(&e), Recovery::ExitToOperator);
    }

    #[test]
    fn a_neighbour_that_went_away_is_an_echo_of_a_loss() {
        let e = JobError::Task { task: "agg (2/3)".into(), source: Box::new(TaskError::Disconnected("upstream")) };
        assert_eq!(recovery(&e), Recovery::InPlace);
    }
}
