//! Checkpoints written for the tests of this module's siblings.

use super::metadata::{state_file_name, CheckpointMetadata, StateFileMetadata};
use super::store::CheckpointStore;
use crate::keygroup::KeyGroupRange;
use crate::state::snapshot::OperatorSubtaskState;

/// The store of job `default/job` in `dir`.
pub fn store(dir: &tempfile::TempDir) -> CheckpointStore {
    CheckpointStore::open(&format!("file://{}", dir.path().display()), "default", "job").unwrap()
}

/// A complete checkpoint `id` with one keyed state file holding `payload`
/// in key group 3.
pub async fn write_checkpoint(store: &CheckpointStore, id: u64, payload: &[u8]) {
    let range = KeyGroupRange { start: 0, end: 127 };
    let state = OperatorSubtaskState { keyed: vec![(3, payload.to_vec())], list: vec![], union: vec![] };
    let name = state_file_name("sum", 0, range, 7);
    let (size, crc32) = store.write_state(id, &name, state.encode()).await.unwrap();
    let mut meta = CheckpointMetadata::new(id, "job".into(), 128, 0, 1);
    meta.add_file(
        "sum",
        1,
        StateFileMetadata { name, subtask: 0, key_groups: range, size, crc32, operator_state: Some(false) },
    );
    store.write_metadata(&meta).await.unwrap();
}
