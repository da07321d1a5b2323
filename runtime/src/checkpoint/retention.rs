//! What leaves the checkpoint directory and what must stay: retention,
//! pins that keep a checkpoint while a savepoint is copied from it, the
//! savepoint copy itself, and purge.

use super::error::CheckpointError;
use super::ledger::Committed;
use super::metadata::{checkpoint_dir, METADATA_FILE};
use super::store::CheckpointStore;

/// What retention did.
#[derive(Debug, Clone, PartialEq)]
pub struct Retained {
    pub deleted: Vec<u64>,
    /// The oldest complete checkpoint it kept (pinned ones aside).
    pub oldest_kept: Option<u64>,
}

/// Keeps a checkpoint from retention while it lives.
#[derive(Debug)]
pub struct Pin {
    id: u64,
    pins: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Pin {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Ok(mut pins) = self.pins.lock() {
            if let Some(at) = pins.iter().position(|p| *p == self.id) {
                pins.swap_remove(at);
            }
        }
    }
}

impl CheckpointStore {
    /// Keeps checkpoint `id` from retention until the pin is dropped.
    pub fn pin(&self, id: u64) -> Pin {
        if let Ok(mut pins) = self.pins.lock() {
            pins.push(id);
        }
        Pin { id, pins: self.pins.clone() }
    }

    fn is_pinned(&self, id: u64) -> bool {
        self.pins.lock().map(|p| p.contains(&id)).unwrap_or(true)
    }

    /// Waits until no checkpoint is pinned (savepoint copies ended), at
    /// most `limit`; `false` if some still were.
    pub async fn wait_unpinned(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pins.lock().map(|p| !p.is_empty()).unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Deletes completed checkpoints beyond the newest `retained` intact
    /// ones and any incomplete or uncommitted checkpoint older than
    /// `latest`. `damaged` (found so by a restore) do not count as
    /// retained, so the older checkpoint a restore fell back to is kept
    /// until enough intact newer ones exist.
    pub async fn apply_retention(
        &self,
        latest: u64,
        retained: usize,
        damaged: &[u64],
        committed: &Committed,
    ) -> Result<Retained, CheckpointError> {
        let mut kept = 0;
        let mut deleted = Vec::new();
        let mut oldest_kept = None;
        for id in self.checkpoint_ids().await? {
            if id > latest || self.is_pinned(id) {
                continue;
            }
            if damaged.contains(&id) {
                self.delete(id).await?;
                deleted.push(id);
                continue;
            }
            let complete = committed.admits(id)
                && self.op.exists(&format!("{}/{METADATA_FILE}", checkpoint_dir(id))).await.map_err(|source| {
                    CheckpointError::Io { action: "stat", path: self.path_of(id), source: Box::new(source) }
                })?;
            if complete && kept < retained {
                kept += 1;
                oldest_kept = Some(id);
                continue;
            }
            self.delete(id).await?;
            deleted.push(id);
        }
        Ok(Retained { deleted, oldest_kept })
    }

    /// Copies completed checkpoint `id` to `savepoints/sp-<ms>/`, which
    /// retention never touches; returns the savepoint's location.
    pub async fn copy_to_savepoint(&self, id: u64, at_ms: u64) -> Result<String, CheckpointError> {
        let meta = self.read_metadata(id).await?;
        let dir = format!("savepoints/sp-{at_ms}");
        let mut names: Vec<String> = meta.operators.iter().flat_map(|o| &o.files).map(|f| f.name.clone()).collect();
        names.push(METADATA_FILE.to_string());
        for name in names {
            let from = format!("{}/{name}", checkpoint_dir(id));
            let bytes = self.op.read(&from).await.map_err(|source| CheckpointError::Io {
                action: "read",
                path: self.full(&from),
                source: Box::new(source),
            })?;
            let to = format!("{dir}/{name}");
            self.op.write(&to, bytes).await.map_err(|source| CheckpointError::Io {
                action: "write",
                path: self.full(&to),
                source: Box::new(source),
            })?;
        }
        Ok(self.full(&dir))
    }

    pub async fn delete(&self, id: u64) -> Result<(), CheckpointError> {
        let dir = format!("{}/", checkpoint_dir(id));
        self.op.delete_with(&dir).recursive(true).await.map_err(|source| CheckpointError::Io {
            action: "delete",
            path: self.path_of(id),
            source: Box::new(source),
        })
    }

    /// Deletes everything under the job's directory: checkpoints, savepoints
    /// and sink bookkeeping. Returns how many checkpoints and savepoints were there.
    /// Deletes savepoint `name` (`sp-<ms>`, as [`Self::copy_to_savepoint`]
    /// names them) of this job. Nothing but a savepoint's own directory can
    /// be named, so a wrong name deletes nothing else. `Ok(false)`: it was
    /// already gone.
    pub async fn delete_savepoint(&self, name: &str) -> Result<bool, CheckpointError> {
        let valid = name.strip_prefix("sp-").is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            return Err(CheckpointError::NotASavepointName(format!(
                "`{name}` is not a savepoint's name: expected sp-<digits>"
            )));
        }
        let dir = format!("savepoints/{name}/");
        let existed = match self.op.list(&dir).await {
            Ok(entries) => !entries.is_empty(),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(CheckpointError::Io { action: "list", path: self.full(&dir), source: Box::new(source) })
            }
        };
        self.op.delete_with(&dir).recursive(true).await.map_err(|source| CheckpointError::Io {
            action: "delete",
            path: self.full(&dir),
            source: Box::new(source),
        })?;
        Ok(existed)
    }

    pub async fn purge(&self) -> Result<(usize, usize), CheckpointError> {
        let checkpoints = self.checkpoint_ids().await?.len();
        let savepoints = match self.op.list("savepoints/").await {
            Ok(entries) => entries.iter().filter(|e| e.path().trim_end_matches('/') != "savepoints").count(),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(CheckpointError::Io {
                    action: "list",
                    path: self.full("savepoints/"),
                    source: Box::new(source),
                })
            }
        };
        self.op.delete_with("/").recursive(true).await.map_err(|source| CheckpointError::Io {
            action: "delete",
            path: self.location.clone(),
            source: Box::new(source),
        })?;
        Ok((checkpoints, savepoints))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testing::{store, write_checkpoint};

    #[tokio::test]
    async fn purge_deletes_checkpoints_and_savepoints_of_one_job_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let other = CheckpointStore::open(&format!("file://{}", dir.path().display()), "default", "other").unwrap();
        write_checkpoint(&store, 1, b"one").await;
        write_checkpoint(&store, 2, b"two").await;
        write_checkpoint(&other, 1, b"kept").await;
        store.copy_to_savepoint(2, 1234).await.unwrap();
        assert_eq!(store.purge().await.unwrap(), (2, 1));
        assert!(store.checkpoint_ids().await.unwrap().is_empty());
        let job_dir = dir.path().join("default/job");
        let left = std::fs::read_dir(&job_dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "nothing is left under {}", job_dir.display());
        assert_eq!(other.checkpoint_ids().await.unwrap(), [1]);
    }

    #[tokio::test]
    async fn deleting_a_savepoint_removes_that_one_only_and_refuses_other_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"one").await;
        let first = store.copy_to_savepoint(1, 1000).await.unwrap();
        let second = store.copy_to_savepoint(1, 2000).await.unwrap();
        assert!(store.delete_savepoint("sp-1000").await.unwrap());
        assert!(!store.delete_savepoint("sp-1000").await.unwrap(), "already gone");
        let local = |p: &str| std::path::PathBuf::from(p.trim_start_matches("file://")).join("_metadata");
        assert!(!local(&first).exists());
        assert!(local(&second).exists());
        for bad in ["../chk-0000000001", "sp-", "sp-1/../..", "chk-0000000001"] {
            assert!(store.delete_savepoint(bad).await.is_err(), "{bad} refused");
        }
        assert_eq!(store.checkpoint_ids().await.unwrap(), [1]);
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_completed_and_drops_older_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for id in 1..=4 {
            write_checkpoint(&store, id, b"x").await;
        }
        store.write_state(5, "sum-0-0-127.state", vec![1]).await.unwrap();
        write_checkpoint(&store, 6, b"x").await;
        let deleted = store.apply_retention(6, 2, &[], &Committed::everything()).await.unwrap().deleted;
        assert_eq!(deleted, vec![5, 3, 2, 1]);
        assert_eq!(store.checkpoint_ids().await.unwrap(), vec![6, 4]);
    }

    #[tokio::test]
    async fn retention_keeps_a_pinned_checkpoint_until_its_pin_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"x").await;
        let pin = store.clone().pin(1);
        for id in 2..=3 {
            write_checkpoint(&store, id, b"x").await;
        }
        assert_eq!(store.apply_retention(3, 1, &[], &Committed::everything()).await.unwrap().deleted, vec![2]);
        assert!(!store.wait_unpinned(std::time::Duration::from_millis(50)).await);
        drop(pin);
        assert!(store.wait_unpinned(std::time::Duration::from_millis(50)).await);
        assert_eq!(store.apply_retention(3, 1, &[], &Committed::everything()).await.unwrap().deleted, vec![1]);
    }

    #[tokio::test]
    async fn retention_never_counts_a_damaged_checkpoint_so_the_one_restored_from_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for id in 1..=3 {
            write_checkpoint(&store, id, b"x").await;
        }
        // 3 was found damaged; the job restored 2 and completed 4.
        write_checkpoint(&store, 4, b"x").await;
        let deleted = store.apply_retention(4, 2, &[3], &Committed::everything()).await.unwrap().deleted;
        assert_eq!(deleted, vec![3, 1]);
        assert_eq!(store.checkpoint_ids().await.unwrap(), vec![4, 2], "2, restored from, is still retained");
    }
}
