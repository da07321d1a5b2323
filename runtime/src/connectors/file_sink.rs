//! Exactly-once JSON-lines files.
//!
//! A transaction is a hidden file `.part-S-T.jsonl.inprogress`; pre-commit
//! syncs it and renames it to `.pending`; commit renames it to
//! `part-S-T.jsonl` (S = subtask, T = transaction id). Renames within one
//! directory are atomic, so readers that skip hidden files see only
//! committed output.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::two_phase::TwoPhaseCommitSink;
use crate::task::TaskError;

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
    writer: Option<BufWriter<File>>,
    line: Vec<u8>,
    _records: PhantomData<fn(T)>,
}

impl<T> FileSink<T> {
    /// Part files named `<prefix>-<subtask>-<txn>.jsonl` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str, subtask: u32) -> FileSink<T> {
        FileSink {
            dir: dir.into(),
            prefix: prefix.into(),
            subtask,
            writer: None,
            line: Vec::new(),
            _records: PhantomData,
        }
    }

    fn err(&self, what: &str, path: &Path, e: impl std::fmt::Display) -> TaskError {
        TaskError::sink(&self.dir.display().to_string(), format!("cannot {what} {}: {e}", path.display()))
    }

    fn hidden(&self, name: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!(".{name}{suffix}"))
    }

    /// The transaction id of a committed part file of this sink.
    fn committed_txn(&self, file: &str) -> Option<u64> {
        let rest = file.strip_prefix(&self.prefix)?.strip_prefix('-')?.strip_suffix(".jsonl")?;
        let (_, txn) = rest.split_once('-')?;
        txn.parse().ok()
    }
}

#[async_trait]
impl<T: Serialize + Send + 'static> TwoPhaseCommitSink<T> for FileSink<T> {
    type Txn = FileTxn;

    async fn begin(&mut self, txn_id: u64) -> Result<FileTxn, TaskError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.err("create", &self.dir, e))?;
        let name = format!("{}-{:05}-{txn_id:010}.jsonl", self.prefix, self.subtask);
        let path = self.hidden(&name, INPROGRESS);
        let file = File::create(&path).map_err(|e| self.err("create", &path, e))?;
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
        Ok(txn)
    }

    async fn commit(&mut self, txn: &FileTxn) -> Result<(), TaskError> {
        let from = self.hidden(&txn.name, PENDING);
        let to = self.dir.join(&txn.name);
        match fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(_) if to.exists() => Ok(()), // committed before
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
        let hidden_prefix = format!(".{}-", self.prefix);
        for entry in entries {
            let entry = entry.map_err(|e| self.err("list", &self.dir, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let leftover = file.starts_with(&hidden_prefix) && (file.ends_with(INPROGRESS) || file.ends_with(PENDING));
            if leftover {
                // Not covered by the restored checkpoint: its records will be replayed.
                fs::remove_file(&path).map_err(|e| self.err("remove aborted transaction", &path, e))?;
                continue;
            }
            if let (Some(txn), Some(r)) = (self.committed_txn(&file), restored) {
                if txn > r && !committed.iter().any(|c| c.name == file) {
                    warn!(file = %path.display(), restored = r,
                        "removing output committed after checkpoint {r}: restore fell back to an older checkpoint and will write these records again");
                    fs::remove_file(&path).map_err(|e| self.err("remove", &path, e))?;
                }
            }
        }
        Ok(())
    }
}

/// Reads every committed record under `dir` (hidden files are not committed).
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
    names.sort();
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

    #[tokio::test]
    async fn output_is_visible_only_after_commit_and_commit_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0);
        let mut txn = sink.begin(1).await.unwrap();
        sink.write(&mut txn, vec![1, 2, 3]).await.unwrap();
        let txn = sink.pre_commit(txn).await.unwrap();
        assert!(read_committed(dir.path()).unwrap().is_empty());
        sink.commit(&txn).await.unwrap();
        sink.commit(&txn).await.unwrap();
        assert_eq!(read_committed(dir.path()).unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn recover_removes_uncovered_transactions_and_output_committed_after_the_restored_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0);
        for id in [1, 2, 3] {
            let mut txn = sink.begin(id).await.unwrap();
            sink.write(&mut txn, vec![id as u32]).await.unwrap();
            let txn = sink.pre_commit(txn).await.unwrap();
            if id < 3 {
                sink.commit(&txn).await.unwrap();
            }
        }
        let mut open = sink.begin(4).await.unwrap();
        sink.write(&mut open, vec![4]).await.unwrap();
        // Restoring checkpoint 1: transaction 2 was committed after it and
        // will be replayed, 3 is pending and 4 in progress.
        sink.recover(Some(1), &[]).await.unwrap();
        assert_eq!(read_committed(dir.path()).unwrap(), vec![1]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn commit_fails_loudly_when_a_pending_file_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink: FileSink<u32> = FileSink::new(dir.path(), "part", 0);
        let ghost = FileTxn { id: 9, name: "part-00000-0000000009.jsonl".into() };
        let err = sink.commit(&ghost).await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
