//! One job's checkpoint directory and the I/O on it: opening it from a
//! storage URI, writing state files and `_metadata`, listing checkpoints.
//!
//! Layout under `<storage>/<namespace>/<job>/`:
//! `chk-0000000042/<operator>-<subtask>-<first key group>-<last key group>-<epoch>.state`
//! and `chk-0000000042/_metadata`, which is written last; `_ledger/` holds
//! the ledger (see [`super::ledger`]). A checkpoint without `_metadata`
//! never completed; one the ledger does not list was never committed; one
//! whose files do not match the sizes and checksums in `_metadata` is
//! damaged and is skipped.

use opendal::{ErrorKind, Operator};

use super::error::CheckpointError;
use super::metadata::{checkpoint_dir, join, parse_checkpoint_dir, CheckpointMetadata, METADATA_FILE, METADATA_FORMAT};
use crate::faults::{stop_point, StopPoint};
use crate::storage::StorageUri;

/// One job's checkpoint directory.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    pub(super) op: Operator,
    pub(super) location: String,
    /// The job directory on the local file system, for `file://` storage:
    /// directories are synced there after renames, which OpenDAL does not do.
    local: Option<std::path::PathBuf>,
    /// Checkpoints retention must keep (a savepoint is being copied from
    /// them), one entry per holder; shared by every clone of the store.
    pub(super) pins: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    /// Storage that takes this long before each `_metadata` write (tests
    /// of the loop's behaviour around slow storage).
    #[cfg(test)]
    pub(crate) metadata_delay: Option<std::time::Duration>,
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
        Ok(CheckpointStore {
            op,
            location: location.to_string(),
            local,
            pins: Default::default(),
            #[cfg(test)]
            metadata_delay: None,
        })
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
    /// exists whole or not at all and never replaces one that is there (a
    /// stale attempt may have used the same id): see [`Self::create_new`].
    /// Storage that cannot create only if absent gets a plain put.
    pub async fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), CheckpointError> {
        let path = format!("{}/{METADATA_FILE}", checkpoint_dir(meta.id));
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| CheckpointError::BadMetadata {
            id: meta.id,
            path: self.full(&path),
            reason: e.to_string(),
        })?;
        #[cfg(test)]
        if let Some(delay) = self.metadata_delay {
            tokio::time::sleep(delay).await;
        }
        let stops = Some((StopPoint::MetadataWritten, StopPoint::MetadataRenamed));
        match self.create_new(&path, bytes.clone(), stops).await? {
            Created::Created => Ok(()),
            Created::Exists => Err(CheckpointError::MetadataExists { id: meta.id, path: self.full(&path) }),
            Created::Unsupported => self.op.write(&path, bytes).await.map(|_| ()).map_err(|source| {
                CheckpointError::Io { action: "write", path: self.full(&path), source: Box::new(source) }
            }),
        }
    }

    /// Creates `path` (relative to the job directory) holding `bytes` only
    /// if nothing is there, as one step no other writer can slip between:
    /// on a local file system the bytes go to a temporary file, synced,
    /// that is hard-linked to `path` (a link never replaces a file; a
    /// rename would), then the directory is synced; on object storage one
    /// conditional put (`If-None-Match: *`). `stops` are the crash tests'
    /// stop points once the temporary file is written and once the name is
    /// in place.
    pub(super) async fn create_new(
        &self,
        path: &str,
        bytes: Vec<u8>,
        stops: Option<(StopPoint, StopPoint)>,
    ) -> Result<Created, CheckpointError> {
        if let Some(local) = &self.local {
            let target = local.join(path);
            let token = crate::job::fence::random_token().map_err(|e| CheckpointError::LocalIo {
                action: "name a temporary file for",
                path: self.full(path),
                reason: e.to_string(),
            })?;
            let created = tokio::task::spawn_blocking(move || create_new_local(&target, &bytes, token, stops))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            return created.map(|created| if created { Created::Created } else { Created::Exists }).map_err(|e| {
                CheckpointError::LocalIo { action: "create", path: self.full(path), reason: e.to_string() }
            });
        }
        if !self.op.info().capability().write_with_if_not_exists {
            return Ok(Created::Unsupported);
        }
        if let Some((written, _)) = stops {
            stop_point(written);
        }
        match self.op.write_with(path, bytes).if_not_exists(true).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConditionNotMatch => return Ok(Created::Exists),
            Err(source) => {
                return Err(CheckpointError::Io { action: "write", path: self.full(path), source: Box::new(source) })
            }
        }
        if let Some((_, in_place)) = stops {
            stop_point(in_place);
        }
        Ok(Created::Created)
    }

    pub(super) fn full(&self, path: &str) -> String {
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
    pub(super) async fn read_metadata_in(
        &self,
        dir: &str,
        expected: Option<u64>,
    ) -> Result<CheckpointMetadata, CheckpointError> {
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

    /// Raw access for tools and tests (for example to damage a file on purpose).
    pub fn operator(&self) -> &Operator {
        &self.op
    }
}

/// What [`CheckpointStore::create_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Something was already at the path; nothing was written.
    Exists,
    /// The storage cannot create a file only if absent; nothing was written.
    Unsupported,
}

/// `create_new` on a local file system: `Ok(false)` if `target` exists.
fn create_new_local(
    target: &std::path::Path,
    bytes: &[u8],
    token: u64,
    stops: Option<(StopPoint, StopPoint)>,
) -> std::io::Result<bool> {
    use std::io::Write;
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(std::io::Error::other("the path names no file"));
    };
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!("{}.inprogress-{token:016x}", name.to_string_lossy()));
    let mut file = std::fs::File::create_new(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    if let Some((written, _)) = stops {
        stop_point(written);
    }
    let linked = std::fs::hard_link(&temp, target);
    let removed = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    removed?;
    crate::storage::sync_dir(dir)?;
    if let Some((_, in_place)) = stops {
        stop_point(in_place);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testing::{store, write_checkpoint};

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
    async fn metadata_already_in_place_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 1, b"x").await;
        let mut other = store.read_metadata(1).await.unwrap();
        other.completed_at_ms = 99;
        let err = store.write_metadata(&other).await.unwrap_err();
        assert!(matches!(err, CheckpointError::MetadataExists { id: 1, .. }), "{err}");
        assert_eq!(store.read_metadata(1).await.unwrap().completed_at_ms, 1, "the first _metadata stays");
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
}
