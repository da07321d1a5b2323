//! Exactly-once part files in object storage (or any OpenDAL service):
//! JSON lines, CSV or Parquet, rolled by size and time, visible only on commit.
//!
//! # Layout
//! - this module: the two-phase-commit protocol over staged objects.
//! - [`format`]: the bytes of a part (JSON lines, CSV, Parquet through arrow-rs).
//! - [`partition`]: Hive-style directories named by record fields.
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
//! `NAME` is `[DIR]part-<subtask>-<txn>-<seq>-<incarnation>-<epoch>.<ext>`:
//! unique to the job incarnation and the attempt (see `job::fence`), so a
//! new job over the same path or a stale worker never meets committed
//! output. `DIR` is the record's partition directory (`region=EU/`) when
//! the sink is partitioned; each directory has its own open part.

pub mod format;
pub mod partition;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opendal::{ErrorKind, Operator};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};

use self::format::{PartError, PartFormat, PartWriter};
use self::partition::{fields_of_path, ByFields, Partitioner};
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
    /// The fields naming partition directories (none: every part at the top).
    pub partition_by: Vec<String>,
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
            partition_by: spec.partition_by.clone(),
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

    /// Paths of the objects under `dir`, partition directories included,
    /// relative to it (none if it is absent).
    async fn list(&self, dir: &str) -> Result<Vec<String>, TaskError> {
        let root = dir.trim_start_matches('/');
        match self.timed("list", self.op.list_with(dir).recursive(true)).await? {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter(|e| !e.metadata().is_dir())
                .filter_map(|e| e.path().trim_start_matches('/').strip_prefix(root).map(str::to_string))
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
    partitioner: Option<Arc<dyn Partitioner<T>>>,
    /// The open part of each partition directory ("" when unpartitioned).
    open: BTreeMap<String, OpenPart>,
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

/// What a part's path says (its partition directory aside).
fn parse(path: &str) -> Option<PartName<'_>> {
    let file = path.rsplit('/').next()?;
    let rest = file.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let rest = [".jsonl", ".csv", ".parquet", ".avro"].iter().find_map(|ext| rest.strip_suffix(ext))?;
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
            partitioner: None,
            open: BTreeMap::new(),
            _records: PhantomData,
        }
    }

    /// Records go to the part of their partition directory.
    pub fn partitioned(mut self, partitioner: Arc<dyn Partitioner<T>>) -> Self {
        self.partitioner = Some(partitioner);
        self
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

    async fn open_part(&mut self, txn: &ObjectTxn, dir: &str) -> Result<(), TaskError> {
        // Parts move from open to `txn.parts` as they close, so the sum of
        // both only grows: a sequence number no other part of `txn` has.
        let seq = txn.parts.len() + self.open.len();
        let name = format!(
            "{dir}{PREFIX}-{:05}-{:010}-{seq:04}-{}.{}",
            self.subtask,
            txn.id,
            self.fence.tag(),
            self.config.format.extension()
        );
        let path = staged(&name);
        let writer = self.config.op.writer_with(&path).chunk(UPLOAD_CHUNK);
        let writer = self.config.timed("begin a part", writer).await?;
        let writer = writer.map_err(|e| self.config.err(format!("cannot begin {name}: {e}")))?;
        let writer = PartWriter::new(&self.config.format, name, writer).map_err(|e| self.part_err(e))?;
        self.open.insert(dir.to_string(), OpenPart { writer, opened: Instant::now() });
        Ok(())
    }

    /// Finishes the open part of `dir` into its staged object and adds it to `txn`.
    async fn close_part(&mut self, txn: &mut ObjectTxn, dir: &str) -> Result<(), TaskError> {
        let Some(open) = self.open.remove(dir) else { return Ok(()) };
        let name = self.config.timed("finish a part", open.writer.close()).await?.map_err(|e| self.part_err(e))?;
        txn.parts.push(name);
        Ok(())
    }

    fn due_to_roll(&self, dir: &str) -> bool {
        self.open.get(dir).is_some_and(|open| {
            open.writer.size() >= self.config.roll_size
                || self.config.roll_interval.is_some_and(|every| open.opened.elapsed() >= every)
        })
    }

    /// Gives each record to its partition directory, in order within each;
    /// a record that names none is refused (to `rejects` when given).
    fn by_directory(&self, batch: Vec<T>, refused: &mut Vec<BadRecord>) -> Result<Vec<(String, Vec<T>)>, TaskError>
    where
        T: Serialize,
    {
        let Some(partitioner) = &self.partitioner else { return Ok(vec![(String::new(), batch)]) };
        let mut groups: Vec<(String, Vec<T>)> = Vec::new();
        for mut record in batch {
            match partitioner.split(&mut record) {
                Ok(dir) => match groups.iter_mut().find(|(d, _)| *d == dir) {
                    Some((_, records)) => records.push(record),
                    None => groups.push((dir, vec![record])),
                },
                Err(reason) => {
                    let raw = serde_json::to_string(&record).map_err(|e| self.config.err(e))?;
                    if self.rejects.is_none() {
                        return Err(TaskError::BadRecord { record: raw, reason });
                    }
                    refused.push(BadRecord { origin: "sink".into(), raw, reason });
                }
            }
        }
        Ok(groups)
    }

    /// Appends records to the open part of `dir`, rolling it before and after.
    async fn write_to(
        &mut self,
        txn: &mut ObjectTxn,
        dir: &str,
        records: Vec<T>,
        refused: &mut Vec<BadRecord>,
    ) -> Result<(), TaskError>
    where
        T: Serialize,
    {
        if self.due_to_roll(dir) {
            self.close_part(txn, dir).await?;
        }
        if !self.open.contains_key(dir) {
            self.open_part(txn, dir).await?;
        }
        let gather = self.rejects.is_some().then_some(refused);
        let Some(open) = self.open.get_mut(dir) else { return Err(self.config.err("no open part")) };
        let written = self.config.timed("write", open.writer.write(&records, gather)).await?;
        written.map_err(|e| self.part_err(e))?;
        if self.due_to_roll(dir) {
            self.close_part(txn, dir).await?;
        }
        Ok(())
    }
}

impl ObjectSink<serde_json::Value> {
    /// The sink of a manifest, partitioned as `partitionBy` says.
    pub fn for_manifest(config: ObjectSinkConfig, ctx: &TaskContext) -> ObjectSink<serde_json::Value> {
        let fields = config.partition_by.clone();
        let sink = ObjectSink::for_task(config, ctx);
        if fields.is_empty() {
            sink
        } else {
            sink.partitioned(Arc::new(ByFields::new(fields)))
        }
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> TwoPhaseCommitSink<T> for ObjectSink<T> {
    type Txn = ObjectTxn;

    async fn begin(&mut self, txn_id: u64) -> Result<ObjectTxn, TaskError> {
        Ok(ObjectTxn { id: txn_id, parts: Vec::new() })
    }

    async fn write(&mut self, txn: &mut ObjectTxn, batch: Vec<T>) -> Result<(), TaskError> {
        let mut refused: Vec<BadRecord> = Vec::new();
        for (dir, records) in self.by_directory(batch, &mut refused)? {
            self.write_to(txn, &dir, records, &mut refused).await?;
        }
        if let (Some(rejects), false) = (&self.rejects, refused.is_empty()) {
            rejects.lock().map_err(|_| self.config.err("the rejected-records list is poisoned"))?.extend(refused);
        }
        Ok(())
    }

    async fn pre_commit(&mut self, mut txn: ObjectTxn) -> Result<ObjectTxn, TaskError> {
        let dirs: Vec<String> = self.open.keys().cloned().collect();
        for dir in dirs {
            self.close_part(&mut txn, &dir).await?;
        }
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
        for open in std::mem::take(&mut self.open).into_values() {
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
            .filter(|name| !name.starts_with(STAGING))
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

/// Every committed record under the sink's storage, parts in path order
/// (for tests and audits): JSON lines as they are, Parquet rows as JSON,
/// CSV rows (with their header) as objects whose numeric cells are numbers,
/// each with the fields its partition directory names (as strings).
pub async fn read_committed(op: &Operator) -> Result<Vec<serde_json::Value>, String> {
    let mut names: Vec<String> = op
        .list_with("/")
        .recursive(true)
        .await
        .map_err(|e| format!("cannot list: {e}"))?
        .into_iter()
        .map(|e| e.path().trim_start_matches('/').to_string())
        .filter(|n| !n.starts_with('.') && parse(n).is_some())
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let bytes = op.read(&name).await.map_err(|e| format!("cannot read {name}: {e}"))?.to_bytes();
        let text = if name.ends_with(".parquet") {
            parquet_as_json_lines(bytes).map_err(|e| format!("{name}: {e}"))?
        } else if name.ends_with(".avro") {
            avro_as_json_lines(bytes).map_err(|e| format!("{name}: {e}"))?
        } else if name.ends_with(".csv") {
            csv_as_json_lines(&bytes).map_err(|e| format!("{name}: {e}"))?
        } else {
            String::from_utf8(bytes.to_vec()).map_err(|e| format!("{name}: {e}"))?
        };
        let partition = fields_of_path(&name);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut row: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{name}: {e}"))?;
            if let Some(fields) = row.as_object_mut() {
                fields.extend(partition.iter().cloned());
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn csv_as_json_lines(bytes: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader.headers()?.clone();
    let mut out = String::new();
    for row in reader.records() {
        let row = row?;
        let fields: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(row.iter())
            .map(|(name, cell)| {
                let value = match cell {
                    "" => serde_json::Value::Null,
                    _ => match serde_json::from_str::<serde_json::Number>(cell) {
                        Ok(n) => serde_json::Value::Number(n),
                        Err(_) => serde_json::Value::String(cell.to_string()),
                    },
                };
                (name.to_string(), value)
            })
            .collect();
        out.push_str(&serde_json::to_string(&fields)?);
        out.push('\n');
    }
    Ok(out)
}

fn parquet_as_json_lines(bytes: bytes::Bytes) -> Result<String, Box<dyn std::error::Error>> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    batches_as_json_lines(reader)
}

fn avro_as_json_lines(bytes: bytes::Bytes) -> Result<String, Box<dyn std::error::Error>> {
    let reader = arrow_avro::reader::ReaderBuilder::new().build(std::io::Cursor::new(bytes))?;
    batches_as_json_lines(reader)
}

fn batches_as_json_lines<E: std::error::Error + 'static>(
    batches: impl Iterator<Item = Result<arrow_array::RecordBatch, E>>,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut out = arrow_json::LineDelimitedWriter::new(Vec::new());
    for batch in batches {
        out.write(&batch?)?;
    }
    out.finish()?;
    Ok(String::from_utf8(out.into_inner())?)
}

#[cfg(test)]
mod tests;
