//! Checkpoints in storage: state files, `_metadata`, discovery, restore
//! selection and retention.
//!
//! Layout under `<storage>/<namespace>/<job>/`:
//! `chk-0000000042/<operator>-<subtask>-<first key group>-<last key group>.state`
//! and `chk-0000000042/_metadata`, which is written last. A checkpoint
//! without `_metadata` never completed; one whose files do not match the
//! sizes and checksums in `_metadata` is damaged and is skipped.

use std::collections::HashMap;

use opendal::{ErrorKind, Operator};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::keygroup::KeyGroupRange;
use crate::state::snapshot::OperatorSubtaskState;
use crate::storage::{StorageError, StorageUri};

pub const METADATA_FILE: &str = "_metadata";
const METADATA_FORMAT: u32 = 1;

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
    #[error("cannot sync directory {path}: {reason}")]
    Sync { path: String, reason: String },
    #[error("no _metadata at {path}: not a completed checkpoint or savepoint directory")]
    NotASnapshot { path: String },
    #[error("state file {path} is missing")]
    MissingFile { path: String },
    #[error("state file {path} is {actual} bytes, _metadata says {expected}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
    #[error("state file {path} has checksum {actual:08x}, _metadata says {expected:08x}")]
    ChecksumMismatch { path: String, expected: u32, actual: u32 },
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
    /// Storage that did not answer may answer later; anything else about a
    /// checkpoint will not change by trying again.
    pub fn failure_kind(&self) -> crate::task::error::FailureKind {
        use crate::task::error::FailureKind;
        match self {
            CheckpointError::Io { .. } | CheckpointError::Storage(_) | CheckpointError::Sync { .. } => {
                FailureKind::Storage
            }
            _ => FailureKind::Restore,
        }
    }
}

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
}

impl CheckpointMetadata {
    pub fn new(id: u64, job: String, max_parallelism: u32, triggered_at_ms: u64, completed_at_ms: u64) -> Self {
        CheckpointMetadata {
            format: METADATA_FORMAT,
            id,
            job,
            incarnation: 0,
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

/// One job's checkpoint directory.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    op: Operator,
    location: String,
    /// The job directory on the local file system, for `file://` storage:
    /// directories are synced there after renames, which OpenDAL does not do.
    local: Option<std::path::PathBuf>,
    /// Checkpoints retention must keep (a savepoint is being copied from
    /// them), one entry per holder; shared by every clone of the store.
    pins: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
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

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

pub fn checkpoint_dir(id: u64) -> String {
    format!("chk-{id:010}")
}

fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    name.trim_end_matches('/').strip_prefix("chk-")?.parse().ok()
}

/// A state file's name carries the writing attempt's epoch, so a stale
/// attempt's late write never replaces a file the live attempt wrote.
pub fn state_file_name(uid: &str, subtask: u32, range: KeyGroupRange, epoch: u64) -> String {
    format!("{uid}-{subtask}-{}-{}-{epoch:016x}.state", range.start, range.end)
}

impl CheckpointStore {
    /// The store of job `name` in `namespace` under the storage `uri`.
    pub fn open(uri: &str, namespace: &str, name: &str) -> Result<CheckpointStore, CheckpointError> {
        let parsed = StorageUri::parse(uri)?;
        let sub = format!("{namespace}/{name}");
        Self::open_job_dir(&parsed, uri, &sub, &format!("{}/{sub}", uri.trim_end_matches('/')))
    }

    /// A store at a job directory URI itself (as `weir checkpoints` takes it).
    pub fn open_dir(uri: &str) -> Result<CheckpointStore, CheckpointError> {
        let parsed = StorageUri::parse(uri)?;
        Self::open_job_dir(&parsed, uri, "", uri)
    }

    fn open_job_dir(
        parsed: &StorageUri,
        uri: &str,
        sub: &str,
        location: &str,
    ) -> Result<CheckpointStore, CheckpointError> {
        let op = parsed.operator(uri, sub)?;
        let local = parsed.local_dir(uri, sub)?;
        Ok(CheckpointStore { op, location: location.to_string(), local, pins: Default::default() })
    }

    /// Jobs (`namespace/name`) with checkpoints under a storage root URI,
    /// as a manifest's `spec.checkpoints.storage` names it.
    pub async fn jobs_under(uri: &str) -> Result<Vec<String>, CheckpointError> {
        let root = Self::open_dir(uri)?;
        let dirs = |store: &CheckpointStore, at: String| {
            let op = store.op.clone();
            let location = store.full(&at);
            async move {
                match op.list(&at).await {
                    Ok(entries) => Ok(entries
                        .into_iter()
                        .filter(|e| e.metadata().is_dir() && e.path() != at)
                        .map(|e| e.name().trim_end_matches('/').to_string())
                        .collect::<Vec<_>>()),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                    Err(source) => {
                        Err(CheckpointError::Io { action: "list", path: location, source: Box::new(source) })
                    }
                }
            }
        };
        let mut jobs = Vec::new();
        for namespace in dirs(&root, "/".to_string()).await? {
            for name in dirs(&root, format!("{namespace}/")).await? {
                let children = dirs(&root, format!("{namespace}/{name}/")).await?;
                if children.iter().any(|c| parse_checkpoint_dir(c).is_some() || c == "savepoints") {
                    jobs.push(format!("{namespace}/{name}"));
                }
            }
        }
        jobs.sort();
        Ok(jobs)
    }

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

    /// Human-readable location of checkpoint `id`.
    pub fn path_of(&self, id: u64) -> String {
        format!("{}/{}", self.location, checkpoint_dir(id))
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes one state file and returns its size and checksum.
    pub async fn write_state(&self, id: u64, name: &str, bytes: Vec<u8>) -> Result<(u64, u32), CheckpointError> {
        let path = format!("{}/{name}", checkpoint_dir(id));
        let size = bytes.len() as u64;
        let crc = crc32fast::hash(&bytes);
        self.op.write(&path, bytes).await.map_err(|source| CheckpointError::Io {
            action: "write",
            path: self.full(&path),
            source: Box::new(source),
        })?;
        Ok((size, crc))
    }

    /// Writes `_metadata`, which makes the checkpoint complete, so that it
    /// exists whole or not at all: where the store can rename (a file
    /// system), it is written to a temporary name (OpenDAL syncs it on
    /// close), renamed, and the directory synced; on object storage one put
    /// is atomic, and a conditional one where supported, so an existing
    /// `_metadata` is never replaced.
    pub async fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), CheckpointError> {
        let dir = checkpoint_dir(meta.id);
        let path = format!("{dir}/{METADATA_FILE}");
        let io = |action: &'static str, at: &str| {
            let path = self.full(at);
            move |source| CheckpointError::Io { action, path, source: Box::new(source) }
        };
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| CheckpointError::BadMetadata {
            id: meta.id,
            path: self.full(&path),
            reason: e.to_string(),
        })?;
        let capability = self.op.info().capability();
        if capability.rename {
            let token = crate::job::fence::random_token().map_err(|e| CheckpointError::BadMetadata {
                id: meta.id,
                path: self.full(&path),
                reason: e.to_string(),
            })?;
            let temp = format!("{dir}/{METADATA_FILE}.inprogress-{token:016x}");
            self.op.write(&temp, bytes).await.map_err(io("write", &temp))?;
            self.op.rename(&temp, &path).await.map_err(io("rename into place", &path))?;
            self.sync_local_dir(&dir).await
        } else if capability.write_with_if_not_exists {
            self.op.write_with(&path, bytes).if_not_exists(true).await.map_err(io("write", &path))?;
            Ok(())
        } else {
            self.op.write(&path, bytes).await.map_err(io("write", &path))?;
            Ok(())
        }
    }

    /// Syncs `dir` (relative to the job directory) on a local file system,
    /// so a rename in it outlives a crash of the machine.
    async fn sync_local_dir(&self, dir: &str) -> Result<(), CheckpointError> {
        let Some(local) = &self.local else { return Ok(()) };
        let path = local.join(dir);
        let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&path).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        synced.map_err(|reason| CheckpointError::Sync { path: self.full(dir), reason })
    }

    fn full(&self, path: &str) -> String {
        format!("{}/{path}", self.location)
    }

    /// Ids of every checkpoint directory, complete or not, newest first.
    pub async fn checkpoint_ids(&self) -> Result<Vec<u64>, CheckpointError> {
        let entries = match self.op.list("/").await {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CheckpointError::Io {
                    action: "list",
                    path: self.location.clone(),
                    source: Box::new(source),
                })
            }
        };
        let mut ids: Vec<u64> = entries.iter().filter_map(|e| parse_checkpoint_dir(e.name())).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        Ok(ids)
    }

    /// Reads and parses `_metadata` of checkpoint `id`.
    pub async fn read_metadata(&self, id: u64) -> Result<CheckpointMetadata, CheckpointError> {
        self.read_metadata_in(&checkpoint_dir(id), Some(id)).await
    }

    /// `_metadata` in `dir` (relative to the store; empty: the store itself),
    /// which must name checkpoint `expected` when given.
    async fn read_metadata_in(&self, dir: &str, expected: Option<u64>) -> Result<CheckpointMetadata, CheckpointError> {
        let id = expected.unwrap_or(0);
        let path = join(dir, METADATA_FILE);
        let bytes = match self.op.read(&path).await {
            Ok(b) => b.to_vec(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CheckpointError::MissingMetadata { id, path: self.full(&path) })
            }
            Err(source) => {
                return Err(CheckpointError::Io { action: "read", path: self.full(&path), source: Box::new(source) })
            }
        };
        let meta: CheckpointMetadata = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::BadMetadata {
            id,
            path: self.full(&path),
            reason: e.to_string(),
        })?;
        if meta.format != METADATA_FORMAT {
            return Err(CheckpointError::BadMetadata {
                id,
                path: self.full(&path),
                reason: format!("format {} is not {METADATA_FORMAT}, the only one this version reads", meta.format),
            });
        }
        if expected.is_some_and(|id| meta.id != id) {
            return Err(CheckpointError::BadMetadata {
                id,
                path: self.full(&path),
                reason: format!("it names checkpoint {}", meta.id),
            });
        }
        Ok(meta)
    }

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

    /// Deletes completed checkpoints beyond the newest `retained` intact
    /// ones and any incomplete checkpoint older than `latest`. `damaged`
    /// (found so by a restore) do not count as retained, so the older
    /// checkpoint a restore fell back to is kept until enough intact newer
    /// ones exist.
    pub async fn apply_retention(
        &self,
        latest: u64,
        retained: usize,
        damaged: &[u64],
    ) -> Result<Vec<u64>, CheckpointError> {
        let mut kept = 0;
        let mut deleted = Vec::new();
        for id in self.checkpoint_ids().await? {
            if id > latest || self.is_pinned(id) {
                continue;
            }
            if damaged.contains(&id) {
                self.delete(id).await?;
                deleted.push(id);
                continue;
            }
            let complete =
                self.op.exists(&format!("{}/{METADATA_FILE}", checkpoint_dir(id))).await.map_err(|source| {
                    CheckpointError::Io { action: "stat", path: self.path_of(id), source: Box::new(source) }
                })?;
            if complete && kept < retained {
                kept += 1;
                continue;
            }
            self.delete(id).await?;
            deleted.push(id);
        }
        Ok(deleted)
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

    /// Raw access for tools and tests (for example to damage a file on purpose).
    pub fn operator(&self) -> &Operator {
        &self.op
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write_checkpoint(store: &CheckpointStore, id: u64, payload: &[u8]) {
        let range = KeyGroupRange { start: 0, end: 127 };
        let state = OperatorSubtaskState { keyed: vec![(3, payload.to_vec())], list: vec![], union: vec![] };
        let name = state_file_name("sum", 0, range, 7);
        let (size, crc32) = store.write_state(id, &name, state.encode()).await.unwrap();
        let mut meta = CheckpointMetadata::new(id, "job".into(), 128, 0, 1);
        meta.add_file("sum", 1, StateFileMetadata { name, subtask: 0, key_groups: range, size, crc32 });
        store.write_metadata(&meta).await.unwrap();
    }

    fn store(dir: &tempfile::TempDir) -> CheckpointStore {
        CheckpointStore::open(&format!("file://{}", dir.path().display()), "default", "job").unwrap()
    }

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
    async fn retention_keeps_the_newest_completed_and_drops_older_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for id in 1..=4 {
            write_checkpoint(&store, id, b"x").await;
        }
        store.write_state(5, "sum-0-0-127.state", vec![1]).await.unwrap();
        write_checkpoint(&store, 6, b"x").await;
        let deleted = store.apply_retention(6, 2, &[]).await.unwrap();
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
        assert_eq!(store.apply_retention(3, 1, &[]).await.unwrap(), vec![2]);
        assert!(!store.wait_unpinned(std::time::Duration::from_millis(50)).await);
        drop(pin);
        assert!(store.wait_unpinned(std::time::Duration::from_millis(50)).await);
        assert_eq!(store.apply_retention(3, 1, &[]).await.unwrap(), vec![1]);
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
        let deleted = store.apply_retention(4, 2, &[3]).await.unwrap();
        assert_eq!(deleted, vec![3, 1]);
        assert_eq!(store.checkpoint_ids().await.unwrap(), vec![4, 2], "2, restored from, is still retained");
    }

    #[tokio::test]
    async fn metadata_is_renamed_into_place_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"x").await;
        let names: Vec<String> = std::fs::read_dir(dir.path().join("default/job").join(checkpoint_dir(1)))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&METADATA_FILE.to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("inprogress")), "{names:?}");
        assert_eq!(store.read_metadata(1).await.unwrap().id, 1);
    }

    #[tokio::test]
    async fn metadata_of_an_unknown_format_is_refused_naming_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"x").await;
        let path = dir.path().join("default/job").join(checkpoint_dir(1)).join(METADATA_FILE);
        let text = std::fs::read_to_string(&path).unwrap().replace("\"format\": 1", "\"format\": 99");
        std::fs::write(&path, text).unwrap();
        let err = store.read_metadata(1).await.unwrap_err().to_string();
        assert!(err.contains("format 99"), "{err}");
    }

    #[tokio::test]
    async fn jobs_under_a_storage_root_are_found_by_their_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(&store(&dir), 1, b"x").await;
        let other = CheckpointStore::open(&format!("file://{}", dir.path().display()), "team-a", "sums").unwrap();
        write_checkpoint(&other, 3, b"x").await;
        std::fs::create_dir_all(dir.path().join("default/not-a-job/data")).unwrap();
        let jobs = CheckpointStore::jobs_under(&format!("file://{}", dir.path().display())).await.unwrap();
        assert_eq!(jobs, vec!["default/job", "team-a/sums"]);
    }

    #[tokio::test]
    async fn an_empty_store_has_nothing_to_restore() {
        let dir = tempfile::tempdir().unwrap();
        assert!(store(&dir).latest_restorable(128).await.unwrap().is_none());
    }
}
