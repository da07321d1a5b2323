//! Reading checkpoints back: verifying every file against `_metadata`,
//! choosing the newest intact checkpoint, and handing state to subtasks.
//!
//! A process loads only what its subtasks need ([`Keep`]): files holding
//! keyed state of other key groups are not read, key groups of other
//! subtasks are dropped as each file is decoded, and each subtask takes
//! (moves out) its key groups, so restored bytes do not outlive the open.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use opendal::ErrorKind;
use tracing::{info, warn};

use super::error::CheckpointError;
use super::ledger::Committed;
use super::metadata::{checkpoint_dir, join, CheckpointMetadata, StateFileMetadata};
use super::store::CheckpointStore;
use crate::keygroup::KeyGroupRange;
use crate::state::snapshot::OperatorSubtaskState;

/// A checkpoint read back and verified, ready to hand state to subtasks.
#[derive(Debug)]
pub struct RestoredCheckpoint {
    pub id: u64,
    pub path: String,
    pub metadata: CheckpointMetadata,
    /// Per operator uid: every old subtask's state (what was kept of it),
    /// in subtask order. Keyed state is moved out as subtasks take it.
    states: Mutex<HashMap<String, Vec<OperatorSubtaskState>>>,
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

    fn states(&self) -> MutexGuard<'_, HashMap<String, Vec<OperatorSubtaskState>>> {
        // A panic elsewhere while holding the lock leaves the map whole.
        self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the keyed state blobs of the key groups in `range`, from
    /// whichever old subtasks held them: each key group belongs to one
    /// subtask, so it is moved, not copied.
    pub fn take_keyed(&self, uid: &str, range: KeyGroupRange) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        for st in self.states().get_mut(uid).into_iter().flatten() {
            let (mine, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut st.keyed).into_iter().partition(|(group, _)| range.contains(*group));
            st.keyed = rest;
            out.extend(mine);
        }
        out
    }

    /// Whether any state of operator `uid` was restored.
    pub fn has_state(&self, uid: &str) -> bool {
        self.states().contains_key(uid)
    }

    /// Operator list state entries, dealt round-robin over the new subtasks.
    pub fn list_round_robin(&self, uid: &str, subtask: usize, parallelism: usize) -> Vec<Vec<u8>> {
        self.states()
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
        self.states().get(uid).into_iter().flatten().flat_map(|st| st.union.iter().cloned()).collect()
    }

    /// Drops whatever restored state is left, once every subtask opened.
    pub fn release_state(&self) {
        let left = std::mem::take(&mut *self.states());
        drop(left);
    }

    /// The same checkpoint as one read from outside the job's directory.
    pub fn into_external(self) -> RestoredCheckpoint {
        RestoredCheckpoint { external: true, ..self }
    }

    /// A checkpoint whose `_metadata` alone was read: enough to choose it,
    /// fence the attempt and check the operators; the workers load the state.
    pub fn metadata_only(id: u64, path: String, metadata: CheckpointMetadata) -> RestoredCheckpoint {
        RestoredCheckpoint { id, path, metadata, states: Mutex::default(), skipped: Vec::new(), external: false }
    }
}

/// What a process loads of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Keep {
    /// Every file (one process runs every subtask).
    Everything,
    /// Keyed state of these key groups only, and all operator state.
    KeyGroups(Vec<KeyGroupRange>),
}

impl Keep {
    fn reads(&self, file: &StateFileMetadata) -> bool {
        match self {
            Keep::Everything => true,
            // A file may hold list or union state, which any subtask may need.
            Keep::KeyGroups(ranges) => {
                file.operator_state != Some(false) || ranges.iter().any(|r| r.overlaps(&file.key_groups))
            }
        }
    }

    fn holds(&self, group: u16) -> bool {
        match self {
            Keep::Everything => true,
            Keep::KeyGroups(ranges) => ranges.iter().any(|r| r.contains(group)),
        }
    }
}

/// How [`CheckpointStore::latest_restorable`] checks a candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// Read `keep` of every file and check it against `_metadata`.
    Verified(Keep),
    /// Read `_metadata` and check only that every file is there with its
    /// size: a coordinator's choice; each worker checksums what it reads.
    MetadataOnly,
}

impl CheckpointStore {
    /// Loads checkpoint `id`, checking every file it reads against `_metadata`.
    pub async fn load_verified(&self, id: u64, keep: &Keep) -> Result<RestoredCheckpoint, CheckpointError> {
        let metadata = self.read_metadata(id).await?;
        self.load_files(&checkpoint_dir(id), metadata, self.path_of(id), keep).await
    }

    /// Loads the savepoint or checkpoint whose directory this store was
    /// opened at (`open_dir`), checking every file it reads against its `_metadata`.
    pub async fn load_snapshot_here(&self, load: &Load) -> Result<RestoredCheckpoint, CheckpointError> {
        let metadata = match self.read_metadata_in("", None).await {
            Err(CheckpointError::MissingMetadata { .. }) => {
                return Err(CheckpointError::NotASnapshot { path: self.location.clone() })
            }
            read => read?,
        };
        match load {
            Load::Verified(keep) => self.load_files("", metadata, self.location.clone(), keep).await,
            Load::MetadataOnly => self.check_sizes("", metadata, self.location.clone()).await,
        }
    }

    async fn load_files(
        &self,
        dir: &str,
        metadata: CheckpointMetadata,
        location: String,
        keep: &Keep,
    ) -> Result<RestoredCheckpoint, CheckpointError> {
        let id = metadata.id;
        let mut states: HashMap<String, Vec<OperatorSubtaskState>> = HashMap::new();
        for op in &metadata.operators {
            let mut files = op.files.clone();
            files.sort_by_key(|f| f.subtask);
            for f in files.iter().filter(|f| keep.reads(f)) {
                let path = join(dir, &f.name);
                let bytes = self.op.read(&path).await.map_err(|e| self.state_file_error("read", &path, e))?.to_vec();
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
                let mut state = OperatorSubtaskState::decode(&bytes)
                    .map_err(|e| CheckpointError::Decode { path: self.full(&path), reason: e.to_string() })?;
                drop(bytes);
                state.keyed.retain(|(group, _)| keep.holds(*group));
                states.entry(op.uid.clone()).or_default().push(state);
            }
        }
        let restored = RestoredCheckpoint::metadata_only(id, location, metadata);
        *restored.states() = states;
        Ok(restored)
    }

    /// A state file that cannot be read: missing, or storage that failed.
    fn state_file_error(&self, action: &'static str, path: &str, e: opendal::Error) -> CheckpointError {
        if e.kind() == ErrorKind::NotFound {
            CheckpointError::MissingFile { path: self.full(path) }
        } else {
            CheckpointError::Io { action, path: self.full(path), source: Box::new(e) }
        }
    }

    /// Checks that every file `_metadata` lists is there with its size.
    async fn check_sizes(
        &self,
        dir: &str,
        metadata: CheckpointMetadata,
        location: String,
    ) -> Result<RestoredCheckpoint, CheckpointError> {
        for f in metadata.operators.iter().flat_map(|op| &op.files) {
            let path = join(dir, &f.name);
            let actual =
                self.op.stat(&path).await.map_err(|e| self.state_file_error("stat", &path, e))?.content_length();
            if actual != f.size {
                return Err(CheckpointError::SizeMismatch { path: self.full(&path), expected: f.size, actual });
            }
        }
        Ok(RestoredCheckpoint::metadata_only(metadata.id, location, metadata))
    }

    /// The newest completed, intact checkpoint that the ledger committed;
    /// damaged newer ones (and `known_damaged`, found so by a worker that
    /// read them) are skipped with a warning, uncommitted ones (written by
    /// a superseded attempt, or cut short before their commit) with a note.
    /// `Ok(None)` when no checkpoint ever completed.
    pub async fn latest_restorable(
        &self,
        max_parallelism: u32,
        load: &Load,
        known_damaged: &[(u64, String)],
        committed: &Committed,
    ) -> Result<Option<RestoredCheckpoint>, CheckpointError> {
        let mut skipped = Vec::new();
        let mut damaged = 0;
        for id in self.checkpoint_ids().await? {
            if !committed.admits(id) {
                info!(checkpoint = id, "skipping checkpoint {id}: the ledger does not list it as committed");
                continue;
            }
            let candidate = match known_damaged.iter().find(|(d, _)| *d == id) {
                Some((_, reason)) => Err(CheckpointError::FoundDamaged { id, reason: reason.clone() }),
                None => match load {
                    Load::Verified(keep) => self.load_verified(id, keep).await,
                    Load::MetadataOnly => match self.read_metadata(id).await {
                        Ok(metadata) => self.check_sizes(&checkpoint_dir(id), metadata, self.path_of(id)).await,
                        Err(e) => Err(e),
                    },
                },
            };
            let candidate = candidate.and_then(|restored| match committed.mismatch(&restored.metadata) {
                Some(reason) => Err(CheckpointError::FoundDamaged { id, reason }),
                None => Ok(restored),
            });
            match candidate {
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
    use crate::checkpoint::StateFileMetadata;

    #[tokio::test]
    async fn a_complete_checkpoint_the_ledger_never_committed_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let ledger = crate::checkpoint::Ledger::join(&store, 1, 2, &Default::default()).await.unwrap();
        write_checkpoint(&store, 1, b"committed").await;
        ledger.commit(1).await.unwrap();
        // A superseded attempt wrote _metadata of 2 and could not commit it.
        write_checkpoint(&store, 2, b"stale").await;
        let committed = ledger.committed().await;
        let chosen = store.latest_restorable(128, &Load::MetadataOnly, &[], &committed).await.unwrap().unwrap();
        assert_eq!(chosen.id, 1);
        assert!(chosen.skipped.is_empty(), "an uncommitted checkpoint is not damage");
    }

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

        let restored = store
            .latest_restorable(128, &Load::Verified(Keep::Everything), &[], &Committed::everything())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(restored.id, 1);
        assert_eq!(restored.skipped.len(), 1);
        assert!(restored.skipped[0].1.contains("checksum"), "{:?}", restored.skipped);
        assert_eq!(restored.take_keyed("sum", KeyGroupRange { start: 0, end: 127 }), vec![(3, b"one".to_vec())]);
    }

    #[tokio::test]
    async fn skips_a_checkpoint_without_metadata_as_never_completed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"one").await;
        store.write_state(2, "sum-0-0-127.state", vec![1, 2, 3]).await.unwrap();
        let restored = store
            .latest_restorable(128, &Load::Verified(Keep::Everything), &[], &Committed::everything())
            .await
            .unwrap()
            .unwrap();
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
        let err = store
            .latest_restorable(128, &Load::Verified(Keep::Everything), &[], &Committed::everything())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no intact checkpoint"), "{err}");
        assert!(err.contains("unreadable _metadata"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_store_has_nothing_to_restore() {
        let dir = tempfile::tempdir().unwrap();
        let nothing =
            store(&dir).latest_restorable(128, &Load::MetadataOnly, &[], &Committed::everything()).await.unwrap();
        assert!(nothing.is_none());
    }

    /// Checkpoint 1 of operator `sum` with two subtasks' files: key groups
    /// 3 and 40 in the first (range 0..=63), 100 in the second.
    async fn two_files(store: &CheckpointStore) -> Vec<StateFileMetadata> {
        let mut meta = CheckpointMetadata::new(1, "job".into(), 128, 0, 1);
        let mut files = Vec::new();
        for (subtask, range, groups) in [
            (0, KeyGroupRange { start: 0, end: 63 }, vec![3u16, 40]),
            (1, KeyGroupRange { start: 64, end: 127 }, vec![100]),
        ] {
            let keyed = groups.iter().map(|g| (*g, vec![*g as u8; 4])).collect();
            let state = OperatorSubtaskState { keyed, list: vec![], union: vec![] };
            let name = state_file_name("sum", subtask, range, 7);
            let (size, crc32) = store.write_state(1, &name, state.encode()).await.unwrap();
            let file = StateFileMetadata { name, subtask, key_groups: range, size, crc32, operator_state: Some(false) };
            meta.add_file("sum", 2, file.clone());
            files.push(file);
        }
        store.write_metadata(&meta).await.unwrap();
        files
    }

    fn flip_last_byte(dir: &tempfile::TempDir, name: &str) {
        let path = dir.path().join("default/job").join(checkpoint_dir(1)).join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }

    #[tokio::test]
    async fn a_worker_reads_only_files_of_its_key_groups_and_keeps_only_those_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let files = two_files(&store).await;
        // The file this worker does not need is damaged: it is never read.
        flip_last_byte(&dir, &files[1].name);
        let keep = Keep::KeyGroups(vec![KeyGroupRange { start: 0, end: 31 }]);
        let restored = store.load_verified(1, &keep).await.unwrap();
        let all = KeyGroupRange { start: 0, end: 127 };
        assert_eq!(restored.take_keyed("sum", all), vec![(3, vec![3; 4])], "group 40 belongs to another worker");
        assert!(restored.take_keyed("sum", all).is_empty(), "taken state is moved, not copied");
        let err = store.load_verified(1, &Keep::Everything).await.unwrap_err();
        assert!(err.is_damage(), "{err}");
    }

    #[tokio::test]
    async fn a_coordinator_checks_sizes_and_passes_over_checkpoints_workers_found_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"one").await;
        write_checkpoint(&store, 2, b"two").await;
        let chosen =
            store.latest_restorable(128, &Load::MetadataOnly, &[], &Committed::everything()).await.unwrap().unwrap();
        assert_eq!(chosen.id, 2);
        assert!(!chosen.has_state("sum"), "the coordinator read no state file");
        let damaged = [(2, "checksum mismatch in sum-0".to_string())];
        let chosen = store
            .latest_restorable(128, &Load::MetadataOnly, &damaged, &Committed::everything())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(chosen.id, 1);
        assert_eq!(chosen.skipped.len(), 1);
        assert!(chosen.skipped[0].1.contains("found damaged by a worker"), "{:?}", chosen.skipped);
        // A truncated file shows in its size, without reading it.
        let name = state_file_name("sum", 0, KeyGroupRange { start: 0, end: 127 }, 7);
        std::fs::write(dir.path().join("default/job").join(checkpoint_dir(1)).join(name), b"x").unwrap();
        let err =
            store.latest_restorable(128, &Load::MetadataOnly, &damaged, &Committed::everything()).await.unwrap_err();
        assert!(err.to_string().contains("no intact checkpoint"), "{err}");
    }
}
