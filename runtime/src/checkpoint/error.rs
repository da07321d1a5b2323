//! What can go wrong with a checkpoint in storage, and which failure kind
//! each is for the restart policy.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: Box<opendal::Error> },
    #[error("checkpoint {id} has no _metadata at {path}: it never completed")]
    MissingMetadata { id: u64, path: String },
    #[error("checkpoint {id} has unreadable _metadata at {path}: {reason}")]
    BadMetadata { id: u64, path: String, reason: String },
    #[error("cannot {action} {path}: {reason}")]
    LocalIo { action: &'static str, path: String, reason: String },
    #[error(
        "this attempt (epoch {epoch}) was superseded by {by} ({path}): a newer attempt of the job \
         took over, so this one commits nothing more and stops"
    )]
    Superseded { epoch: String, by: String, path: String },
    #[error("cannot join the checkpoint ledger at {path}: other attempts took its next entry {tries} times in a row")]
    LedgerBusy { path: String, tries: u32 },
    #[error("ledger entry {path} cannot be read: {reason}")]
    BadLedgerEntry { path: String, reason: String },
    #[error("checkpoint {id} already has a _metadata at {path} (another attempt used the id); it is left as it is")]
    MetadataExists { id: u64, path: String },
    #[error("{0}")]
    NotASavepointName(String),
    #[error("no _metadata at {path}: not a completed checkpoint or savepoint directory")]
    NotASnapshot { path: String },
    #[error("state file {path} is missing")]
    MissingFile { path: String },
    #[error("state file {path} is {actual} bytes, _metadata says {expected}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
    #[error("state file {path} has checksum {actual:08x}, _metadata says {expected:08x}")]
    ChecksumMismatch { path: String, expected: u32, actual: u32 },
    #[error("checkpoint {id} was found damaged by a worker that read it: {reason}")]
    FoundDamaged { id: u64, reason: String },
    #[error("state file {path} cannot be decoded: {reason}")]
    Decode { path: String, reason: String },
    #[error(
        "checkpoint {id} was taken with maxParallelism {found}, the job has {expected}: key groups cannot be mapped"
    )]
    MaxParallelismChanged { id: u64, found: u32, expected: u32 },
    #[error(
        "no intact checkpoint in {location}: {damaged} checkpoint(s) with _metadata are all damaged \
         (newest: {newest_reason}); refusing to start from empty state, which would emit committed output again"
    )]
    NoIntactCheckpoint { location: String, damaged: usize, newest_reason: String },
}

impl CheckpointError {
    /// Whether this says the checkpoint itself is damaged (as opposed to
    /// storage that did not answer, which may answer later).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            CheckpointError::MissingFile { .. }
                | CheckpointError::SizeMismatch { .. }
                | CheckpointError::ChecksumMismatch { .. }
                | CheckpointError::Decode { .. }
                | CheckpointError::BadMetadata { .. }
                | CheckpointError::MissingMetadata { .. }
        )
    }

    /// Storage that did not answer may answer later; anything else about a
    /// checkpoint will not change by trying again.
    pub fn failure_kind(&self) -> crate::task::error::FailureKind {
        use crate::task::error::FailureKind;
        match self {
            CheckpointError::Io { .. } | CheckpointError::Storage(_) | CheckpointError::LocalIo { .. } => {
                FailureKind::Storage
            }
            CheckpointError::LedgerBusy { .. } | CheckpointError::BadLedgerEntry { .. } => FailureKind::Storage,
            CheckpointError::Superseded { .. } => FailureKind::Superseded,
            _ => FailureKind::Restore,
        }
    }
}
