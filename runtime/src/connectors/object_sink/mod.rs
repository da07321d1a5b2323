//! Exactly-once part files in object storage (or any OpenDAL service):
//! JSON lines or Parquet, rolled by size and time, visible only on commit.
//!
//! # Layout
//! - this module: the two-phase-commit protocol over staged objects.
//! - [`format`]: the bytes of a part (JSON lines, Parquet through arrow-rs).
//!
//! A part streams into a staged object `.weir-staging/NAME` under the
//! sink's path (a multipart upload on S3, so it never sits whole in
//! memory). Pre-commit finishes it: the staged object is durable. Commit
//! makes it visible as `NAME` with one server-side copy (a rename where the
//! service has one) and deletes the staged object. Readers that skip
//! `.`-prefixed paths, as Spark, Hive and Trino do, see only committed
//! parts. Object stores cannot resume another process's multipart upload,
//! so the copy is what a restore can redo: a commit that a crash cut short
//! is finished by the next attempt from the checkpoint's list of names.
//!
//! `NAME` is `part-<subtask>-<txn>-<seq>-<incarnation>-<epoch>.<ext>`:
//! unique to the job incarnation and the attempt (see `job::fence`), so a
//! new job over the same path or a stale worker never meets committed output.

pub mod format;

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use opendal::{ErrorKind, Operator};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};

use self::format::{PartError, PartFormat, PartWriter};
use super::two_phase::{output_ahead_of_restore, TwoPhaseCommitSink};
use crate::faults::{stop_point, StopPoint};
use crate::job::fence::Fence;
use crate::manifest::FileSinkSpec;
use crate::record::{BadRecord, Rejects};
use crate::storage::StorageUri;
use crate::task::{TaskContext, TaskError};

/// Where parts wait for their checkpoint, under the sink's path.
pub const STAGING: &str = ".weir-staging/";
/// A storage call that takes longer fails the subtask (the job restarts).
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// S3 needs multipart chunks of at least 5 MiB; larger ones mean fewer calls.
const UPLOAD_CHUNK: usize = 8 << 20;
const PREFIX: &str = "part";

/// Where and how a sink writes, decided once from the manifest.
#[derive(Clone)]
pub struct ObjectSinkConfig {
    /// The URI, for messages.
    pub uri: String,
    pub op: Operator,
    pub format: PartFormat,
    pub roll_size: u64,
    pub roll_interval: Option<Duration>,
}

impl ObjectSinkConfig {
    pub fn from_spec(spec: &FileSinkSpec, at: &str) -> Result<ObjectSinkConfig, TaskError> {
        let uri = StorageUri::parse(&spec.path).map_err(|e| TaskError::sink(at, e))?;
        let op = uri.operator(&spec.path, "").map_err(|e| TaskError::sink(at, e))?;
        Ok(ObjectSinkConfig {
            uri: spec.path.clone(),
            op,
            format: PartFormat::from_spec(spec),
            roll_size: spec.roll_size(),
            roll_interval: spec.roll_interval(),
        })
    }
}

/// Storage calls, on the configuration alone: the sink's open Parquet
/// writer is not `Sync`, so nothing awaited may borrow the whole sink.
impl ObjectSinkConfig {
    fn err(&self, reason: impl std::fmt::Display) -> TaskError {
        TaskError::sink(&self.uri, reason)
    }

    /// A storage call, bounded by [`IO_TIMEOUT`].
    async fn timed<R>(&self, what: &str, call: impl IntoFuture<Output = R>) -> Result<R, TaskError> {
        tokio::time::timeout(IO_TIMEOUT, call.into_future())
            .await
            .map_err(|_| self.err(format!("cannot {what}: no answer within {}s", IO_TIMEOUT.as_secs())))
    }

    /// Makes a staged part visible under its name; done again, it finds
    /// the part visible and only clears what is left staged.
    async fn publish(&self, name: &str) -> Result<(), TaskError> {
        let op = &self.op;
        let from = staged(name);
        let visible = self.timed("look up a part", op.exists(name)).await?.map_err(|e| self.err(e))?;
        if !visible {
            let capability = op.info().capability();
            let made = if capability.rename {
                self.timed("rename a part", op.rename(&from, name)).await?
            } else {
                let copy = op.copy_with(&from, name).if_not_exists(capability.copy_with_if_not_exists);
                self.timed("copy a part", copy).await?.map(|_| ())
            };
            match made {
                Ok(()) => {}
                // Made visible meanwhile: by this job only (the name is its own).
                Err(e) if e.kind() == ErrorKind::ConditionNotMatch => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(self.err(format!(
                        "cannot commit {name}: output of a completed checkpoint is missing (no staged {from})"
                    )))
                }
                Err(e) => return Err(self.err(format!("cannot commit {name}: {e}"))),
            }
        }
        self.delete(&from).await
    }

    /// Deletes an object; one that is gone already is fine.
    async fn delete(&self, path: &str) -> Result<(), TaskError> {
        match self.timed("delete", self.op.delete(path)).await? {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("cannot delete {path}: {e}"))),
        }
    }

    /// Names of the objects directly under `dir` (none if it is absent).
    async fn list(&self, dir: &str) -> Result<Vec<String>, TaskError> {
        match self.timed("list", self.op.list(dir)).await? {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter(|e| !e.metadata().is_dir())
                .map(|e| e.name().trim_end_matches('/').to_string())
                .collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(format!("cannot list {dir}: {e}"))),
        }
    }
}

/// A transaction: the parts written between two barriers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectTxn {
    pub id: u64,
    /// Names of the parts, finished and staged once pre-committed.
    pub parts: Vec<String>,
}

struct OpenPart {
    writer: PartWriter,
    opened: Instant,
}

pub struct ObjectSink<T> {
    config: ObjectSinkConfig,
    subtask: u32,
    fence: Fence,
    retract_on_fallback: bool,
    rejects: Option<Rejects>,
    open: Option<OpenPart>,
    _records: PhantomData<fn(T)>,
}

/// What a committed part's name says.
struct PartName<'a> {
    txn: u64,
    incarnation: &'a str,
    epoch: &'a str,
}

impl PartName<'_> {
    /// Written by an earlier attempt of this job incarnation: not by a
    /// subtask of this attempt, which may be staging or committing it now.
    fn earlier_attempt_of(&self, fence: &Fence) -> bool {
        self.incarnation == fence.incarnation_tag() && self.epoch != fence.epoch_tag()
    }
}

fn parse(file: &str) -> Option<PartName<'_>> {
    let rest = file.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(".jsonl").or_else(|| rest.strip_suffix(".parquet"))?;
    let parts: Vec<&str> = rest.split('-').collect();
    let [_subtask, txn, _seq, incarnation, epoch] = parts.as_slice() else { return None };
    Some(PartName { txn: txn.parse().ok()?, incarnation, epoch })
}

fn staged(name: &str) -> String {
    format!("{STAGING}{name}")
}

impl<T> ObjectSink<T> {
    pub fn new(config: ObjectSinkConfig, subtask: u32, fence: Fence) -> ObjectSink<T> {
        ObjectSink {
            config,
            subtask,
            fence,
            retract_on_fallback: false,
            rejects: None,
            open: None,
            _records: PhantomData,
        }
    }

    /// The sink of a subtask, under the job's fence and fallback policy.
    pub fn for_task(config: ObjectSinkConfig, ctx: &TaskContext) -> ObjectSink<T> {
        ObjectSink { retract_on_fallback: ctx.retract_on_fallback, ..ObjectSink::new(config, ctx.subtask(), ctx.fence) }
    }

    /// Records that do not fit the Parquet columns go to `rejects` instead
    /// of failing the subtask.
    pub fn rejecting(mut self, rejects: Option<Rejects>) -> Self {
        self.rejects = rejects;
        self
    }

    fn part_err(&self, e: PartError) -> TaskError {
        match e {
            PartError::Misfit { record, reason } => TaskError::BadRecord { record, reason },
            other => self.config.err(other),
        }
    }

    async fn open_part(&mut self, txn: &ObjectTxn) -> Result<(), TaskError> {
        let name = format!(
            "{PREFIX}-{:05}-{:010}-{:04}-{}.{}",
            self.subtask,
            txn.id,
            txn.parts.len(),
            self.fence.tag(),
            self.config.format.extension()
        );
        let path = staged(&name);
        let writer = self.config.op.writer_with(&path).chunk(UPLOAD_CHUNK);
        let writer = self.config.timed("begin a part", writer).await?;
        let writer = writer.map_err(|e| self.config.err(format!("cannot begin {name}: {e}")))?;
        let writer = PartWriter::new(&self.config.format, name, writer).map_err(|e| self.part_err(e))?;
        self.open = Some(OpenPart { writer, opened: Instant::now() });
        Ok(())
    }

    /// Finishes the open part into its staged object and adds it to `txn`.
    async fn close_part(&mut self, txn: &mut ObjectTxn) -> Result<(), TaskError> {
        let Some(open) = self.open.take() else { return Ok(()) };
        let name = self.config.timed("finish a part", open.writer.close()).await?.map_err(|e| self.part_err(e))?;
        txn.parts.push(name);
        Ok(())
    }

    fn due_to_roll(&self) -> bool {
        self.open.as_ref().is_some_and(|open| {
            open.writer.size() >= self.config.roll_size
                || self.config.roll_interval.is_some_and(|every| open.opened.elapsed() >= every)
        })
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> TwoPhaseCommitSink<T> for ObjectSink<T> {
    type Txn = ObjectTxn;

    async fn begin(&mut self, txn_id: u64) -> Result<ObjectTxn, TaskError> {
        Ok(ObjectTxn { id: txn_id, parts: Vec::new() })
    }

    async fn write(&mut self, txn: &mut ObjectTxn, batch: Vec<T>) -> Result<(), TaskError> {
        if self.due_to_roll() {
            self.close_part(txn).await?;
        }
        if self.open.is_none() {
            self.open_part(txn).await?;
        }
        let mut refused: Vec<BadRecord> = Vec::new();
        let gather = self.rejects.is_some().then_some(&mut refused);
        let Some(open) = self.open.as_mut() else { return Err(self.config.err("no open part")) };
        let written = self.config.timed("write", open.writer.write(&batch, gather)).await?;
        written.map_err(|e| self.part_err(e))?;
        if let (Some(rejects), false) = (&self.rejects, refused.is_empty()) {
            rejects.lock().map_err(|_| self.config.err("the rejected-records list is poisoned"))?.extend(refused);
        }
        if self.due_to_roll() {
            self.close_part(txn).await?;
        }
        Ok(())
    }

    async fn pre_commit(&mut self, mut txn: ObjectTxn) -> Result<ObjectTxn, TaskError> {
        self.close_part(&mut txn).await?;
        Ok(txn)
    }

    async fn commit(&mut self, txn: &ObjectTxn) -> Result<(), TaskError> {
        for (i, name) in txn.parts.iter().enumerate() {
            self.config.publish(name).await?;
            if i + 1 < txn.parts.len() {
                stop_point(StopPoint::PartCommitted);
            }
        }
        Ok(())
    }

    async fn abort(&mut self, txn: ObjectTxn) -> Result<(), TaskError> {
        if let Some(open) = self.open.take() {
            if let Err(e) = self.config.timed("abort a part", open.writer.abort()).await? {
                // What is left staged is cleared by the next recovery.
                warn!(sink = %self.config.uri, "cannot abort an open part: {e}");
            }
        }
        for name in &txn.parts {
            self.config.delete(&staged(name)).await?;
        }
        Ok(())
    }

    async fn recover(&mut self, restored: Option<u64>, committed: &[ObjectTxn]) -> Result<(), TaskError> {
        // Only earlier attempts' parts: a subtask of this attempt that
        // recovers late must not take a peer's parts, staged or committed
        // in this attempt, for leftovers.
        let is_committed = |name: &str| committed.iter().any(|t| t.parts.iter().any(|p| p == name));
        for name in self.config.list(STAGING).await? {
            match parse(&name) {
                // Ours, and not covered by the restored checkpoint: its records will be replayed.
                Some(part) if part.earlier_attempt_of(&self.fence) && !is_committed(&name) => {
                    self.config.delete(&staged(&name)).await?;
                }
                _ => debug!(part = %name, "leaving a staged part of another job incarnation alone"),
            }
        }
        let Some(r) = restored else { return Ok(()) };
        let ahead = self
            .config
            .list("/")
            .await?
            .into_iter()
            .filter_map(|name| {
                let part = parse(&name)?;
                (part.earlier_attempt_of(&self.fence) && part.txn > r && !is_committed(&name))
                    .then_some((part.txn, name))
            })
            .collect();
        for name in output_ahead_of_restore(&self.config.uri, restored, ahead, self.retract_on_fallback)? {
            warn!(sink = %self.config.uri, part = %name, restored = r,
                "retracting output committed after the restored checkpoint (onFallbackPastCommittedOutput: Retract): \
                 restore fell back to an older checkpoint and will write these records again");
            self.config.delete(&name).await?;
        }
        Ok(())
    }
}

/// Every committed record under the sink's storage, parts in name order
/// (for tests and audits): JSON lines as they are, Parquet rows as JSON.
pub async fn read_committed(op: &Operator) -> Result<Vec<serde_json::Value>, String> {
    let mut names: Vec<String> = op
        .list("/")
        .await
        .map_err(|e| format!("cannot list: {e}"))?
        .into_iter()
        .map(|e| e.name().to_string())
        .filter(|n| !n.starts_with('.') && (n.ends_with(".jsonl") || n.ends_with(".parquet")))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let bytes = op.read(&name).await.map_err(|e| format!("cannot read {name}: {e}"))?.to_bytes();
        let text = if name.ends_with(".parquet") {
            parquet_as_json_lines(bytes).map_err(|e| format!("{name}: {e}"))?
        } else {
            String::from_utf8(bytes.to_vec()).map_err(|e| format!("{name}: {e}"))?
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            rows.push(serde_json::from_str(line).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    Ok(rows)
}

fn parquet_as_json_lines(bytes: bytes::Bytes) -> Result<String, Box<dyn std::error::Error>> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = arrow_json::LineDelimitedWriter::new(Vec::new());
    for batch in reader {
        out.write(&batch?)?;
    }
    out.finish()?;
    Ok(String::from_utf8(out.into_inner())?)
}

#[cfg(test)]
mod tests;
