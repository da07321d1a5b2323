//! The loop of a source subtask: produce batches, inject barriers when the
//! coordinator triggers a checkpoint, pass completion on to the chain.

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::collector::{Collector, OperatorSnapshot, TaskContext, TaskSnapshot};
use super::error::TaskError;
use super::message::{Control, Event};
use super::runnable::{spawn_snapshot_write, RunnableTask, TaskIo};
use crate::faults::FaultPoint;
use crate::metrics::JobMetrics;

pub enum SourcePoll<T> {
    Batch(Vec<T>),
    /// Nothing to emit before this instant (rate limit, no new data yet).
    Idle(Instant),
    /// A bounded source has emitted everything.
    Exhausted,
}

/// A replayable source: its position is its operator state.
pub trait Source<T>: Send {
    fn poll_batch(&mut self, max: usize) -> Result<SourcePoll<T>, TaskError>;
    /// The position at checkpoint `checkpoint`'s barrier, as operator list
    /// state entries (one per split).
    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<Vec<u8>>, TaskError>;
    /// Checkpoint `checkpoint` completed: a source may tell its system how
    /// far the job got (never needed for correctness: the checkpoint holds
    /// the position).
    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), TaskError> {
        Ok(())
    }
}

pub struct SourceTask<T: Send + 'static> {
    pub ctx: TaskContext,
    pub uid: String,
    pub source: Box<dyn Source<T>>,
    pub chain: Box<dyn Collector<T>>,
}

#[async_trait]
impl<T: Send + 'static> RunnableTask for SourceTask<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        self.chain.open().await
    }

    async fn run(mut self: Box<Self>, mut io: TaskIo) -> Result<(), TaskError> {
        let mut writers = JoinSet::new();
        let mut producing = true;
        let mut idle_until: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                ctl = io.control.recv() => match ctl {
                    Some(Control::Trigger(barrier)) => {
                        let mut snapshot = TaskSnapshot::default();
                        let list = self.source.snapshot(barrier.id)?;
                        snapshot.add(OperatorSnapshot { uid: self.uid.clone(), keyed: None, list, union: Vec::new() });
                        self.chain.barrier(barrier, &mut snapshot).await?;
                        spawn_snapshot_write(&mut writers, &self.ctx, &io, barrier, snapshot);
                    }
                    Some(Control::Complete(id)) => {
                        self.chain.checkpoint_complete(id).await?;
                        self.source.checkpoint_complete(id)?;
                    }
                    Some(Control::Abort(_)) => {}
                    Some(Control::Stop) | None => {
                        self.chain.end_of_input().await?;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(idle_until.unwrap_or_else(Instant::now)), if idle_until.is_some() => {
                    idle_until = None;
                }
                _ = std::future::ready(()), if producing && idle_until.is_none() => {
                    match self.source.poll_batch(self.ctx.batch_size)? {
                        SourcePoll::Batch(batch) => {
                            JobMetrics::add(&self.ctx.metrics.records_in, batch.len());
                            JobMetrics::add(&self.ctx.stage.records_in, batch.len());
                            self.ctx.metrics.mark_first_record();
                            self.chain.collect(batch).await?;
                            self.ctx.faults.check(FaultPoint::SourceBatch)?;
                        }
                        SourcePoll::Idle(until) => idle_until = Some(until),
                        SourcePoll::Exhausted => {
                            producing = false;
                            io.events
                                .send(Event::SourceExhausted(self.ctx.id.clone()))
                                .await
                                .map_err(|_| TaskError::Disconnected("coordinator"))?;
                        }
                    }
                }
            }
        }
        // Let snapshot writers of the last checkpoint finish.
        while writers.join_next().await.is_some() {}
        Ok(())
    }
}
