//! The `_metadata` schema and the names of everything in a job's checkpoint
//! directory.

use serde::{Deserialize, Serialize};

use crate::keygroup::KeyGroupRange;

pub const METADATA_FILE: &str = "_metadata";
/// The only `_metadata` format this version writes and reads.
pub const METADATA_FORMAT: u32 = 1;

/// What `_metadata` records about a completed checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointMetadata {
    pub format: u32,
    pub id: u64,
    pub job: String,
    /// The job incarnation that wrote it (see `job::fence`); 0 in
    /// checkpoints written before incarnations existed.
    #[serde(default)]
    pub incarnation: u64,
    /// The epoch of the attempt that wrote it; 0 in checkpoints written
    /// before it was recorded. The ledger names the epoch that committed it.
    #[serde(default)]
    pub epoch: u64,
    /// Milliseconds since the Unix epoch.
    pub triggered_at_ms: u64,
    pub completed_at_ms: u64,
    pub duration_ms: u64,
    pub max_parallelism: u32,
    pub operators: Vec<OperatorMetadata>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperatorMetadata {
    pub uid: String,
    pub parallelism: u32,
    pub files: Vec<StateFileMetadata>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateFileMetadata {
    /// File name inside the checkpoint directory.
    pub name: String,
    pub subtask: u32,
    pub key_groups: KeyGroupRange,
    pub size: u64,
    pub crc32: u32,
    /// Whether the file holds operator (list or union) state, which any new
    /// subtask may need; absent in checkpoints written before it was
    /// recorded (such files are always read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_state: Option<bool>,
}

impl CheckpointMetadata {
    pub fn new(id: u64, job: String, max_parallelism: u32, triggered_at_ms: u64, completed_at_ms: u64) -> Self {
        CheckpointMetadata {
            format: METADATA_FORMAT,
            id,
            job,
            incarnation: 0,
            epoch: 0,
            triggered_at_ms,
            completed_at_ms,
            duration_ms: completed_at_ms.saturating_sub(triggered_at_ms),
            max_parallelism,
            operators: Vec::new(),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.operators.iter().flat_map(|o| &o.files).map(|f| f.size).sum()
    }

    /// Adds a state file to its operator's entry.
    pub fn add_file(&mut self, uid: &str, parallelism: u32, file: StateFileMetadata) {
        match self.operators.iter_mut().find(|o| o.uid == uid) {
            Some(op) => op.files.push(file),
            None => self.operators.push(OperatorMetadata { uid: uid.into(), parallelism, files: vec![file] }),
        }
    }
}

pub fn checkpoint_dir(id: u64) -> String {
    format!("chk-{id:010}")
}

pub(super) fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    name.trim_end_matches('/').strip_prefix("chk-")?.parse().ok()
}

/// A state file's name carries the writing attempt's epoch, so a stale
/// attempt's late write never replaces a file the live attempt wrote.
pub fn state_file_name(uid: &str, subtask: u32, range: KeyGroupRange, epoch: u64) -> String {
    format!("{uid}-{subtask}-{}-{}-{epoch:016x}.state", range.start, range.end)
}

/// `dir/name`, or `name` when `dir` is the store itself.
pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}
