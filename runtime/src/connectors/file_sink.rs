//! Exactly-once JSON-lines files.
//!
//! A transaction is a hidden file `.NAME.inprogress`; pre-commit syncs it
//! and renames it to `.NAME.pending`; commit renames it to `NAME` without
//! replacing anything. `NAME` is `<prefix>-<subtask>-<txn>-<incarnation>-<epoch>.jsonl`
//! (see `job::fence`): unique to the job incarnation and the attempt, so a
//! new job writing to the same directory, or a stale worker, never collides
//! with output that is already committed. Renames within one directory are
//! atomic, so readers that skip hidden files see only committed output.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::two_phase::{output_ahead_of_restore, TwoPhaseCommitSink};
use crate::job::fence::Fence;
use crate::task::{TaskContext, TaskError};

const INPROGRESS: &str = ".inprogress";
const PENDING: &str = ".pending";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileTxn {
    pub id: u64,
    /// The committed file's name.
    pub name: String,
}

pub struct FileSink<T> {
    dir: PathBuf,
    prefix: String,
    subtask: u32,
    fence: Fence,
    /// Whether a restore that falls back past committed output may delete it.
    retract_on_fallback: bool,
    writer: Option<BufWriter<File>>,
    line: Vec<u8>,
    _records: PhantomData<fn(T)>,
}

/// What a committed part file's name says.
#[derive(Debug, PartialEq)]
struct PartName<'a> {
    txn: u64,
    incarnation: &'a str,
    epoch: &'a str,
}

impl PartName<'_> {
    /// Written by an earlier attempt of this job incarnation: not by a
    /// subtask of this attempt, which may be writing or committing it now.
    fn earlier_attempt_of(&self, fence: &Fence) -> bool {
        self.incarnation == fence.incarnation_tag() && self.epoch != fence.epoch_tag()
    }
}

impl<T> FileSink<T> {
    /// Part files named `<prefix>-<subtask>-<txn>-<incarnation>-<epoch>.jsonl` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str, subtask: u32, fence: Fence) -> FileSink<T> {
        FileSink {
            dir: dir.into(),
            prefix: prefix.into(),
            subtask,
            fence,
            retract_on_fallback: false,
            writer: None,
            line: Vec::new(),
            _records: PhantomData,
        }
    }

    /// The sink of a subtask, under the job's fence and fallback policy.
    pub fn for_task(dir: impl Into<PathBuf>, prefix: &str, ctx: &TaskContext) -> FileSink<T> {
        FileSink {
            retract_on_fallback: ctx.retract_on_fallback,
            ..FileSink::new(dir, prefix, ctx.subtask(), ctx.fence)
        }
    }

    fn err(&self, what: &str, path: &Path, e: impl std::fmt::Display) -> TaskError {
        TaskError::sink(&self.dir.display().to_string(), format!("cannot {what} {}: {e}", path.display()))
    }

    fn hidden(&self, name: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!(".{name}{suffix}"))
    }

    /// Parses a part file name of this sink's prefix (any subtask);
    /// names of other formats (older versions, other tools) are `None`.
    fn parse<'a>(&self, file: &'a str) -> Option<PartName<'a>> {
        let rest = file.strip_prefix(self.prefix.as_str())?.strip_prefix('-')?.strip_suffix(".jsonl")?;
        let mut parts = rest.split('-');
        let (_subtask, txn, incarnation, epoch) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(PartName { txn: txn.parse().ok()?, incarnation, epoch })
    }

    /// Syncs the directory, so that a rename in it survives a crash.
    fn sync_dir(&self) -> Result<(), TaskError> {
        crate::storage::sync_dir(&self.dir).map_err(|e| self.err("sync directory", &self.dir, e))
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // File systems without RENAME_NOREPLACE: fall back to link + unlink.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)) {
            return Err(e);
        }
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

#[async_trait]
impl<T: Serialize + Send + 'static> TwoPhaseCommitSink<T> for FileSink<T> {
    type Txn = FileTxn;

    async fn begin(&mut self, txn_id: u64) -> Result<FileTxn, TaskError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.err("create", &self.dir, e))?;
        let name = format!("{}-{:05}-{txn_id:010}-{}.jsonl", self.prefix, self.subtask, self.fence.tag());
        let path = self.hidden(&name, INPROGRESS);
        let file = File::create_new(&path).map_err(|e| self.err("create", &path, e))?;
        self.writer = Some(BufWriter::with_capacity(1 << 16, file));
        Ok(FileTxn { id: txn_id, name })
    }

    async fn write(&mut self, txn: &mut FileTxn, batch: Vec<T>) -> Result<(), TaskError> {
        let Some(w) = self.writer.as_mut() else {
            return Err(TaskError::sink(&txn.name, "write outside a transaction"));
        };
        for record in &batch {
            self.line.clear();
            serde_json::to_writer(&mut self.line, record).map_err(|e| TaskError::sink(&txn.name, e))?;
            self.line.push(b'\n');
            w.write_all(&self.line).map_err(|e| TaskError::sink(&txn.name, e))?;
        }
        Ok(())
    }

    async fn pre_commit(&mut self, txn: FileTxn) -> Result<FileTxn, TaskError> {
        let from = self.hidden(&txn.name, INPROGRESS);
        if let Some(w) = self.writer.take() {
            let file = w.into_inner().map_err(|e| self.err("flush", &from, e.error()))?;
            file.sync_data().map_err(|e| self.err("sync", &from, e))?;
        }
        let to = self.hidden(&txn.name, PENDING);
        fs::rename(&from, &to).map_err(|e| self.err("pre-commit", &from, e))?;
        // The checkpoint will hold this handle: the rename must outlive a crash.
        self.sync_dir()?;
        Ok(txn)
    }

    async fn commit(&mut self, txn: &FileTxn) -> Result<(), TaskError> {
        let from = self.hidden(&txn.name, PENDING);
        let to = self.dir.join(&txn.name);
        match rename_no_replace(&from, &to) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && from.exists() => Err(self.err(
                "commit (refusing to replace committed output of the same name)",
                &to,
                "it exists already",
            )),
            // Committed before (a restore commits the restored checkpoint's
            // transactions again): the name is unique to this transaction.
            Err(_) if to.exists() => Ok(()),
            Err(e) => Err(self.err("commit (output of a completed checkpoint is missing)", &from, e)),
        }
    }

    async fn abort(&mut self, txn: FileTxn) -> Result<(), TaskError> {
        self.writer = None;
        for suffix in [INPROGRESS, PENDING] {
            let path = self.hidden(&txn.name, suffix);
            if path.exists() {
                fs::remove_file(&path).map_err(|e| self.err("abort", &path, e))?;
            }
        }
        Ok(())
    }

    async fn recover(&mut self, restored: Option<u64>, committed: &[FileTxn]) -> Result<(), TaskError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err("list", &self.dir, e)),
        };
        // Only earlier attempts' files: a subtask of this attempt that
        // recovers late must not take a peer's transaction, open or
        // committed in this attempt, for a leftover.
        let mut ahead = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.err("list", &self.dir, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(hidden) = file.strip_prefix('.') {
                let Some(name) = hidden.strip_suffix(INPROGRESS).or_else(|| hidden.strip_suffix(PENDING)) else {
                    continue;
                };
                match self.parse(name) {
                    // Ours, and not covered by the restored checkpoint: its records will be replayed.
                    Some(part) if part.earlier_attempt_of(&self.fence) => {
                        fs::remove_file(&path).map_err(|e| self.err("remove aborted transaction", &path, e))?;
                    }
                    _ => {
                        debug!(file = %path.display(), "leaving a transaction of another job incarnation or of this attempt alone")
                    }
                }
                continue;
            }
            let (Some(part), Some(r)) = (self.parse(&file), restored) else { continue };
            if part.earlier_attempt_of(&self.fence) && part.txn > r && !committed.iter().any(|c| c.name == file) {
                ahead.push((part.txn, path));
            }
        }
        let sink = self.dir.display().to_string();
        let ahead = ahead.into_iter().map(|(txn, path)| (txn, path.display().to_string())).collect();
        for path in output_ahead_of_restore(&sink, restored, ahead, self.retract_on_fallback)? {
            warn!(file = %path, restored = restored.unwrap_or_default(),
                "retracting output committed after the restored checkpoint (onFallbackPastCommittedOutput: Retract): \
                 restore fell back to an older checkpoint and will write these records again");
            fs::remove_file(&path).map_err(|e| self.err("remove", Path::new(&path), e))?;
        }
        Ok(())
    }
}

/// Reads every committed record under `dir` (hidden files are not
/// committed), in the order written: parts by checkpoint
/// (`part-<subtask>-<checkpoint>-…`), then by subtask.
pub fn read_committed(dir: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let mut names: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.') && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let order = |p: &PathBuf| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let mut fields = name.strip_prefix("part-").unwrap_or_default().split('-');
        let subtask = fields.next().and_then(|f| f.parse::<u64>().ok());
        let checkpoint = fields.next().and_then(|f| f.parse::<u64>().ok());
        (checkpoint, subtask, name.to_string())
    };
    names.sort_by_cached_key(order);
    let mut out = Vec::new();
    for path in names {
        let text = fs::read_to_string(&path)?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let value = serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?;
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN_1: Fence = Fence { incarnation: 0x1111, epoch: 0xa };
    const RUN_1_LATER: Fence = Fence { incarnation: 0x1111, epoch: 0xb };
    const OTHER_JOB: Fence = Fence { incarnation: 0x2222, epoch: 0xa };

    async fn committed_txn(sink: &mut FileSink<u32>, id: u64, records: Vec<u32>) -> FileTxn {
        let mut txn = sink.begin(id).await.unwrap();
        sink.write(&mut txn, records).await.unwrap();
        let txn = sink.pre_commit(txn).await.unwrap();
        sink.commit(&txn).await.unwrap();
        txn
    }

    #[tokio::test]
    async fn output_is_visible_only_after_commit_and_commit_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1);
        let mut txn = sink.begin(1).await.unwrap();
        sink.write(&mut txn, vec![1, 2, 3]).await.unwrap();
        let txn = sink.pre_commit(txn).await.unwrap();
        assert!(read_committed(dir.path()).unwrap().is_empty());
        sink.commit(&txn).await.unwrap();
        sink.commit(&txn).await.unwrap();
        assert_eq!(read_committed(dir.path()).unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_new_job_in_the_same_directory_never_replaces_committed_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut old: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1);
        old.recover(None, &[]).await.unwrap();
        committed_txn(&mut old, 1, vec![1, 2]).await;
        // Its checkpoints deleted, the job starts again as a new incarnation
        // with the same transaction ids.
        let mut new: FileSink<u32> = FileSink::new(dir.path(), "part", 0, OTHER_JOB);
        new.recover(None, &[]).await.unwrap();
        committed_txn(&mut new, 1, vec![3, 4]).await;
        let mut all: Vec<u64> = read_committed(dir.path()).unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        all.sort();
        assert_eq!(all, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn commit_refuses_to_replace_a_file_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1);
        let mut txn = sink.begin(1).await.unwrap();
        sink.write(&mut txn, vec![1]).await.unwrap();
        let txn = sink.pre_commit(txn).await.unwrap();
        fs::write(dir.path().join(&txn.name), "7\n").unwrap();
        let err = sink.commit(&txn).await.unwrap_err().to_string();
        assert!(err.contains("refusing to replace committed output"), "{err}");
        assert_eq!(read_committed(dir.path()).unwrap(), vec![7], "the committed file is untouched");
    }

    /// A subtask of an attempt can start after its peers have begun,
    /// pre-committed and committed transactions of that attempt (in the
    /// fault harness, a worker that registered last).
    #[tokio::test]
    async fn a_subtask_recovering_late_leaves_its_peers_transactions_of_the_same_attempt_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut peer: FileSink<u32> = FileSink::new(dir.path(), "part", 2, RUN_1_LATER);
        peer.recover(Some(14), &[]).await.unwrap();
        committed_txn(&mut peer, 15, vec![15]).await;
        let mut pending = peer.begin(16).await.unwrap();
        peer.write(&mut pending, vec![16]).await.unwrap();
        let pending = peer.pre_commit(pending).await.unwrap();

        let mut late: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1_LATER);
        late.recover(Some(14), &[]).await.expect("a peer's committed part is not output ahead of the restore");
        peer.commit(&pending).await.expect("the peer's pre-committed transaction is still there");
        assert_eq!(read_committed(dir.path()).unwrap(), vec![15, 16]);
    }

    #[tokio::test]
    async fn recover_removes_only_this_incarnations_uncovered_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut other: FileSink<u32> = FileSink::new(dir.path(), "part", 0, OTHER_JOB);
        let mut foreign = other.begin(3).await.unwrap();
        other.write(&mut foreign, vec![9]).await.unwrap();
        let foreign = other.pre_commit(foreign).await.unwrap();

        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1);
        committed_txn(&mut sink, 1, vec![1]).await;
        let mut pending = sink.begin(2).await.unwrap();
        sink.write(&mut pending, vec![2]).await.unwrap();
        sink.pre_commit(pending).await.unwrap();
        let mut open = sink.begin(3).await.unwrap();
        sink.write(&mut open, vec![3]).await.unwrap();

        let mut restarted: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1_LATER);
        restarted.recover(Some(1), &[]).await.unwrap();
        assert_eq!(read_committed(dir.path()).unwrap(), vec![1]);
        let mut left: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left[0], format!(".{}.pending", foreign.name), "another incarnation's transaction is left alone");
    }

    #[tokio::test]
    async fn falling_back_past_committed_output_is_refused_naming_both_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1);
        committed_txn(&mut sink, 4, vec![4]).await;
        committed_txn(&mut sink, 5, vec![5]).await;
        let mut restarted: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1_LATER);
        let err = restarted.recover(Some(4), &[]).await.unwrap_err().to_string();
        assert!(err.contains("checkpoint 4") && err.contains("checkpoint 5"), "{err}");
        assert!(err.contains("onFallbackPastCommittedOutput"), "{err}");
        assert_eq!(read_committed(dir.path()).unwrap(), vec![4, 5], "nothing was retracted");

        restarted.retract_on_fallback = true;
        restarted.recover(Some(4), &[]).await.unwrap();
        assert_eq!(read_committed(dir.path()).unwrap(), vec![4], "retracted when the user opted in");
    }

    #[tokio::test]
    async fn commit_fails_loudly_when_a_pending_file_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0, RUN_1);
        let ghost = FileTxn { id: 9, name: "part-00000-0000000009-1-1.jsonl".into() };
        let err = sink.commit(&ghost).await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
