//! Two-phase-commit sinks: output becomes visible only when the checkpoint
//! that covers it completes.
//!
//! Records between two barriers go to one transaction. At the barrier the
//! transaction is pre-committed and its handle stored in the checkpoint;
//! on completion it is committed. After a restore, subtask 0 commits every
//! pending transaction of the restored checkpoint (commits are idempotent)
//! and asks the sink to remove what no checkpoint covers.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::faults::{stop_point, FaultPoint, StopPoint};
use crate::metrics::JobMetrics;
use crate::state::snapshot::{decode, encode};
use crate::task::collector::OperatorSnapshot;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

#[async_trait]
pub trait TwoPhaseCommitSink<T: Send>: Send {
    /// A transaction handle; what is stored in checkpoints.
    type Txn: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static;

    /// Opens transaction `txn_id`; ids grow within a run and never repeat
    /// an id whose output a completed checkpoint covers.
    async fn begin(&mut self, txn_id: u64) -> Result<Self::Txn, TaskError>;
    async fn write(&mut self, txn: &mut Self::Txn, batch: Vec<T>) -> Result<(), TaskError>;
    /// Makes the transaction durable but not visible.
    async fn pre_commit(&mut self, txn: Self::Txn) -> Result<Self::Txn, TaskError>;
    /// Makes it visible. Must succeed when called again for the same handle.
    async fn commit(&mut self, txn: &Self::Txn) -> Result<(), TaskError>;
    async fn abort(&mut self, txn: Self::Txn) -> Result<(), TaskError>;
    /// Commits the pending transactions of a restored checkpoint, any
    /// subtask's, each subtask's oldest first. A sink whose commits must
    /// first settle what the failed attempt left in flight overrides it.
    async fn commit_restored(&mut self, txns: &[Self::Txn]) -> Result<(), TaskError> {
        for txn in txns {
            self.commit(txn).await?;
        }
        Ok(())
    }
    /// After a restore from `restored` (or a fresh start), with `committed`
    /// the transactions just committed: remove leftovers of transactions no
    /// completed checkpoint covers, and output committed after `restored`
    /// (possible only when restore fell back past a damaged checkpoint).
    async fn recover(&mut self, restored: Option<u64>, committed: &[Self::Txn]) -> Result<(), TaskError>;
}

/// Output of this job incarnation committed after the restored checkpoint
/// (`ahead`: transaction id and name), which only a restore that fell back
/// past a damaged checkpoint can find. Refused unless the job opted into
/// retraction; then the names to remove, which the caller logs and deletes.
pub(crate) fn output_ahead_of_restore(
    sink: &str,
    restored: Option<u64>,
    mut ahead: Vec<(u64, String)>,
    retract: bool,
) -> Result<Vec<String>, TaskError> {
    let Some(newest) = ahead.iter().map(|(txn, _)| *txn).max() else { return Ok(Vec::new()) };
    ahead.sort();
    if !retract {
        return Err(TaskError::CommittedOutputAhead {
            sink: sink.to_string(),
            restored: restored.unwrap_or_default(),
            newest,
            example: ahead.swap_remove(0).1,
        });
    }
    Ok(ahead.into_iter().map(|(_, name)| name).collect())
}

#[derive(Serialize, Deserialize)]
struct PendingEntry<X> {
    checkpoint: u64,
    txn: X,
}

/// Ties a sink's transactions to checkpoints.
pub struct TxnDriver<T: Send, S: TwoPhaseCommitSink<T>> {
    uid: String,
    ctx: TaskContext,
    sink: S,
    current: Option<S::Txn>,
    next_txn: u64,
    pending: Vec<(u64, S::Txn)>,
    _records: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static, S: TwoPhaseCommitSink<T>> TxnDriver<T, S> {
    pub fn new(uid: String, ctx: TaskContext, sink: S) -> Self {
        let next_txn = ctx.restored_id().map_or(1, |id| id + 1);
        TxnDriver { uid, ctx, sink, current: None, next_txn, pending: Vec::new(), _records: std::marker::PhantomData }
    }

    pub async fn open(&mut self) -> Result<(), TaskError> {
        if self.ctx.subtask() != 0 {
            return Ok(());
        }
        let restored = self.ctx.restored.clone();
        let mut committed = Vec::new();
        if let Some(r) = &restored {
            for entry in r.union(&self.uid) {
                let entry: PendingEntry<S::Txn> = decode(&entry)?;
                debug!(uid = %self.uid, txn = ?entry.txn, "committing transaction of restored checkpoint {}", r.id);
                committed.push(entry.txn);
            }
            self.sink.commit_restored(&committed).await?;
        }
        self.sink.recover(restored.as_ref().map(|r| r.id), &committed).await
    }

    pub async fn write(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = match &mut self.current {
            Some(t) => t,
            None => self.current.insert(self.sink.begin(self.next_txn).await?),
        };
        self.sink.write(txn, batch).await
    }

    /// Pre-commits the open transaction; returns the state to store.
    pub async fn barrier(&mut self, barrier: Barrier) -> Result<OperatorSnapshot, TaskError> {
        if let Some(txn) = self.current.take() {
            let handle = self.sink.pre_commit(txn).await?;
            stop_point(StopPoint::PreCommitted);
            self.pending.push((barrier.id, handle));
        }
        self.next_txn = barrier.id + 1;
        let union = self
            .pending
            .iter()
            .map(|(checkpoint, txn)| encode(&PendingEntry { checkpoint: *checkpoint, txn: txn.clone() }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OperatorSnapshot { uid: self.uid.clone(), keyed: None, list: Vec::new(), union })
    }

    /// Commits every transaction pre-committed at or before checkpoint `id`.
    pub async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        while let Some((checkpoint, txn)) = self.pending.first() {
            if *checkpoint > id {
                break;
            }
            self.ctx.faults.check(FaultPoint::DuringCommit)?;
            stop_point(StopPoint::BeforeCommit);
            self.sink.commit(txn).await?;
            stop_point(StopPoint::Committed);
            self.pending.remove(0);
        }
        Ok(())
    }

    pub async fn end_of_input(&mut self) -> Result<(), TaskError> {
        match self.current.take() {
            Some(txn) => self.sink.abort(txn).await,
            None => Ok(()),
        }
    }
}

/// A two-phase-commit sink at the end of a chain.
pub struct TwoPhaseCommitCollector<T: Send, S: TwoPhaseCommitSink<T>> {
    driver: TxnDriver<T, S>,
}

impl<T: Send + 'static, S: TwoPhaseCommitSink<T>> TwoPhaseCommitCollector<T, S> {
    pub fn new(uid: String, ctx: TaskContext, sink: S) -> Self {
        TwoPhaseCommitCollector { driver: TxnDriver::new(uid, ctx, sink) }
    }
}

#[async_trait]
impl<T: Send + 'static, S: TwoPhaseCommitSink<T> + 'static> Collector<T> for TwoPhaseCommitCollector<T, S> {
    async fn open(&mut self) -> Result<(), TaskError> {
        self.driver.open().await
    }
    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        JobMetrics::add(&self.driver.ctx.metrics.records_out, batch.len());
        JobMetrics::add(&self.driver.ctx.stage.records_out, batch.len());
        self.driver.write(batch).await
    }
    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        let op = self.driver.barrier(barrier).await?;
        snapshot.add(op);
        Ok(())
    }
    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        self.driver.checkpoint_complete(id).await
    }
    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.driver.end_of_input().await
    }
}
