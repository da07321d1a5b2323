//! Reading checkpoints back: verifying every file against `_metadata`,
//! choosing the newest intact checkpoint, and handing state to subtasks.

use std::collections::HashMap;

use opendal::ErrorKind;
use tracing::{info, warn};

use super::error::CheckpointError;
use super::metadata::{checkpoint_dir, join, CheckpointMetadata};
use super::store::CheckpointStore;
use crate::keygroup::KeyGroupRange;
use crate::state::snapshot::OperatorSubtaskState;

/// A checkpoint read back and verified, ready to hand state to subtasks.
#[derive(Debug)]
pub struct RestoredCheckpoint {
    pub id: u64,
    pub path: String,
    pub metadata: CheckpointMetadata,
    /// Per operator uid: every old subtask's state, in subtask order.
    pub states: HashMap<String, Vec<OperatorSubtaskState>>,
    /// Newer checkpoints that were passed over, with why.
    pub skipped: Vec<(u64, String)>,
    /// Read from outside the job's own directory (an initial savepoint).
    pub external: bool,
}

impl RestoredCheckpoint {
    /// Refuses state whose key groups cannot be mapped onto `expected`.
    pub fn require_max_parallelism(&self, expected: u32) -> Result<(), CheckpointError> {
        let found = self.metadata.max_parallelism;
        if found == expected {
            Ok(())
        } else {
            Err(CheckpointError::MaxParallelismChanged { id: self.id, found, expected })
        }
    }

    /// Keyed state blobs of the key groups in `range`, from whichever old
    /// subtasks held them.
    pub fn keyed(&self, uid: &str, range: KeyGroupRange) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        for st in self.states.get(uid).into_iter().flatten() {
            for (group, bytes) in &st.keyed {
                if range.contains(*group) {
                    out.push((*group, bytes.as_slice()));
                }
            }
        }
        out
    }

    /// Operator list state entries, dealt round-robin over the new subtasks.
    pub fn list_round_robin(&self, uid: &str, subtask: usize, parallelism: usize) -> Vec<Vec<u8>> {
        self.states
            .get(uid)
            .into_iter()
            .flatten()
            .flat_map(|st| st.list.iter())
            .enumerate()
            .filter(|(i, _)| i % parallelism == subtask)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Union list state: every subtask gets every entry.
    pub fn union(&self, uid: &str) -> Vec<Vec<u8>> {
        self.states.get(uid).into_iter().flatten().flat_map(|st| st.union.iter().cloned()).collect()
    }
}

impl CheckpointStore {
    /// Loads checkpoint `id`, checking every file against `_metadata`.
    pub async fn load_verified(&self, id: u64) -> Result<RestoredCheckpoint, CheckpointError> {
        let metadata = self.read_metadata(id).await?;
        self.load_files(&checkpoint_dir(id), metadata, self.path_of(id)).await
    }

    /// Loads the savepoint or checkpoint whose directory this store was
    /// opened at (`open_dir`), checking every file against its `_metadata`.
    pub async fn load_snapshot_here(&self) -> Result<RestoredCheckpoint, CheckpointError> {
        let metadata = match self.read_metadata_in("", None).await {
            Err(CheckpointError::MissingMetadata { .. }) => {
                return Err(CheckpointError::NotASnapshot { path: self.location.clone() })
            }
            read => read?,
        };
        self.load_files("", metadata, self.location.clone()).await
    }

    async fn load_files(
        &self,
        dir: &str,
        metadata: CheckpointMetadata,
        location: String,
    ) -> Result<RestoredCheckpoint, CheckpointError> {
        let id = metadata.id;
        let mut states: HashMap<String, Vec<OperatorSubtaskState>> = HashMap::new();
        for op in &metadata.operators {
            let mut files = op.files.clone();
            files.sort_by_key(|f| f.subtask);
            for f in &files {
                let path = join(dir, &f.name);
                let bytes = match self.op.read(&path).await {
                    Ok(b) => b.to_vec(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(CheckpointError::MissingFile { path: self.full(&path) })
                    }
                    Err(source) => {
                        return Err(CheckpointError::Io {
                            action: "read",
                            path: self.full(&path),
                            source: Box::new(source),
                        })
                    }
                };
                if bytes.len() as u64 != f.size {
                    return Err(CheckpointError::SizeMismatch {
                        path: self.full(&path),
                        expected: f.size,
                        actual: bytes.len() as u64,
                    });
                }
                let crc = crc32fast::hash(&bytes);
                if crc != f.crc32 {
                    return Err(CheckpointError::ChecksumMismatch {
                        path: self.full(&path),
                        expected: f.crc32,
                        actual: crc,
                    });
                }
                let state = OperatorSubtaskState::decode(&bytes)
                    .map_err(|e| CheckpointError::Decode { path: self.full(&path), reason: e.to_string() })?;
                states.entry(op.uid.clone()).or_default().push(state);
            }
        }
        Ok(RestoredCheckpoint { id, path: location, metadata, states, skipped: Vec::new(), external: false })
    }

    /// The newest completed, intact checkpoint; damaged newer ones are
    /// skipped with a warning. `Ok(None)` when no checkpoint ever completed.
    pub async fn latest_restorable(&self, max_parallelism: u32) -> Result<Option<RestoredCheckpoint>, CheckpointError> {
        let mut skipped = Vec::new();
        let mut damaged = 0;
        for id in self.checkpoint_ids().await? {
            match self.load_verified(id).await {
                Ok(mut restored) => {
                    restored.require_max_parallelism(max_parallelism)?;
                    if !skipped.is_empty() {
                        warn!(checkpoint = id, skipped = ?skipped.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                            "restoring from checkpoint {id}, an older one, because newer checkpoints are damaged");
                    }
                    restored.skipped = skipped;
                    return Ok(Some(restored));
                }
                Err(e @ CheckpointError::MissingMetadata { .. }) => {
                    info!(checkpoint = id, "skipping checkpoint {id}: {e}");
                }
                Err(e @ CheckpointError::Io { .. }) => return Err(e),
                Err(e) => {
                    warn!(checkpoint = id, "skipping damaged checkpoint {id}: {e}");
                    damaged += 1;
                    skipped.push((id, e.to_string()));
                }
            }
        }
        if damaged > 0 {
            return Err(CheckpointError::NoIntactCheckpoint {
                location: self.location.clone(),
                damaged,
                newest_reason: skipped.first().map(|(_, r)| r.clone()).unwrap_or_default(),
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::{state_file_name, METADATA_FILE};
    use crate::checkpoint::testing::{store, write_checkpoint};

    #[tokio::test]
    async fn restores_from_newest_complete_checkpoint_when_latest_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"one").await;
        write_checkpoint(&store, 2, b"two").await;
        let name = state_file_name("sum", 0, KeyGroupRange { start: 0, end: 127 }, 7);
        let path = dir.path().join("default/job").join(checkpoint_dir(2)).join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();

        let restored = store.latest_restorable(128).await.unwrap().unwrap();
        assert_eq!(restored.id, 1);
        assert_eq!(restored.skipped.len(), 1);
        assert!(restored.skipped[0].1.contains("checksum"), "{:?}", restored.skipped);
        assert_eq!(restored.keyed("sum", KeyGroupRange { start: 0, end: 127 }), vec![(3, &b"one"[..])]);
    }

    #[tokio::test]
    async fn skips_a_checkpoint_without_metadata_as_never_completed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"one").await;
        store.write_state(2, "sum-0-0-127.state", vec![1, 2, 3]).await.unwrap();
        let restored = store.latest_restorable(128).await.unwrap().unwrap();
        assert_eq!(restored.id, 1);
        assert!(restored.skipped.is_empty());
    }

    #[tokio::test]
    async fn refuses_to_start_empty_when_every_completed_checkpoint_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"one").await;
        let path = dir.path().join("default/job").join(checkpoint_dir(1)).join(METADATA_FILE);
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = store.latest_restorable(128).await.unwrap_err().to_string();
        assert!(err.contains("no intact checkpoint"), "{err}");
        assert!(err.contains("unreadable _metadata"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_store_has_nothing_to_restore() {
        let dir = tempfile::tempdir().unwrap();
        assert!(store(&dir).latest_restorable(128).await.unwrap().is_none());
    }
}
