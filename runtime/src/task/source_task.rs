//! The loop of a source subtask: produce batches, inject barriers when the
//! coordinator triggers a checkpoint, pass completion on to the chain.

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::collector::{Collector, OperatorSnapshot, TaskContext, TaskSnapshot};
use super::error::TaskError;
use super::message::{Control, Event, Watermark};
use super::runnable::{spawn_snapshot_write, RunnableTask, Slices, TaskIo};
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
    /// The splits records may still come from, by the ids records carry
    /// (a partition, a file, a generator split), for per-split watermarks.
    fn active_splits(&self) -> Vec<u64> {
        Vec::new()
    }
    /// With event time: the watermark the records read so far allow, if
    /// any. The task passes it on when it moves forward.
    fn watermark(&mut self) -> Option<i64> {
        None
    }
    /// Watermark alignment: stop reading `splits` (by the ids records
    /// carry) until told otherwise; every other split reads. False when
    /// the source cannot hold single splits back: then its whole subtask
    /// is held back instead, while it is ahead.
    fn pause_splits(&mut self, _splits: &[u64]) -> Result<bool, TaskError> {
        Ok(false)
    }
    /// Watermark alignment: the least watermark of every source subtask in
    /// the job, as the coordinator last announced it.
    fn align(&mut self, _least: i64) -> Result<(), TaskError> {
        Ok(())
    }
    /// Watermark alignment holds the whole subtask back: it reads nothing
    /// for now, and is not idle for it.
    fn held_back(&self) -> bool {
        false
    }
}

pub struct SourceTask<T: Send + 'static> {
    pub ctx: TaskContext,
    pub uid: String,
    pub source: Box<dyn Source<T>>,
    pub chain: Box<dyn Collector<T>>,
    /// With event time: how long the source may have nothing to read before
    /// the subtask is idle and stops holding back the job's watermark.
    pub idle_timeout: Option<std::time::Duration>,
    /// With watermark alignment: how often the subtask tells the
    /// coordinator its watermark, when it changed.
    pub align_every: Option<std::time::Duration>,
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
        let mut last_batch = Instant::now();
        let mut idle = false;
        let mut emitted: Option<i64> = None;
        let mut slices = Slices::default();
        let mut report = Report::new(self.align_every);
        loop {
            tokio::select! {
                biased;
                ctl = io.control.recv() => match ctl {
                    Some(Control::Align(least)) => {
                        self.source.align(least)?;
                        // It may read again now.
                        idle_until = None;
                    }
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
                _ = report.due(), if report.on() && producing => {
                    let watermark = (producing && !idle).then(|| self.source.watermark().unwrap_or(i64::MIN));
                    report.send(&io, &self.ctx, watermark).await?;
                }
                _ = std::future::ready(()), if producing && idle_until.is_none() => {
                    match self.source.poll_batch(self.ctx.batch_size)? {
                        SourcePoll::Batch(batch) => {
                            last_batch = Instant::now();
                            JobMetrics::add(&self.ctx.metrics.records_in, batch.len());
                            JobMetrics::add(&self.ctx.stage.records_in, batch.len());
                            self.ctx.metrics.mark_first_record();
                            self.chain.collect(batch).await?;
                            let was_idle = std::mem::take(&mut idle);
                            if let Some(w) = self.source.watermark() {
                                if was_idle || emitted.is_none_or(|e| w > e) {
                                    let w = emitted.map_or(w, |e| e.max(w));
                                    emitted = Some(w);
                                    self.chain.watermark(Watermark::At(w)).await?;
                                }
                            }
                            if report.awaits_first() {
                                // The others wait for this one's first watermark.
                                if let Some(w) = self.source.watermark() {
                                    report.send(&io, &self.ctx, Some(w)).await?;
                                }
                            }
                            self.ctx.faults.check(FaultPoint::SourceBatch)?;
                            if let Some(pause) = self.ctx.faults.source_pause() {
                                tokio::time::sleep(pause).await;
                            }
                            slices.after_work().await;
                        }
                        SourcePoll::Idle(until) => {
                            idle_until = Some(until);
                            // A split gone idle may let the watermark move.
                            if let Some(w) = self.source.watermark().filter(|w| !idle && emitted.is_none_or(|e| *w > e)) {
                                emitted = Some(w);
                                self.chain.watermark(Watermark::At(w)).await?;
                            }
                            if self.source.held_back() {
                                // Held back by alignment, not out of records.
                                last_batch = Instant::now();
                            } else if let (Some(timeout), false) = (self.idle_timeout, idle) {
                                let idle_at = last_batch + timeout;
                                if Instant::now() >= idle_at {
                                    idle = true;
                                    self.chain.watermark(Watermark::Idle).await?;
                                } else {
                                    idle_until = Some(until.min(idle_at));
                                }
                            }
                        }
                        SourcePoll::Exhausted => {
                            producing = false;
                            // Everything is read: every window may close
                            // before the final checkpoint's barrier.
                            self.chain.watermark(Watermark::END).await?;
                            report.send(&io, &self.ctx, None).await?;
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

/// With watermark alignment, when the subtask next tells the coordinator
/// its watermark: at once the first time, then once per interval, and
/// only a change.
struct Report {
    every: Option<std::time::Duration>,
    next: Instant,
    sent: Option<Option<i64>>,
}

impl Report {
    fn new(every: Option<std::time::Duration>) -> Report {
        Report { every, next: Instant::now(), sent: None }
    }

    fn on(&self) -> bool {
        self.every.is_some()
    }

    /// Reported, but no watermark yet.
    fn awaits_first(&self) -> bool {
        self.every.is_some() && self.sent == Some(Some(i64::MIN))
    }

    async fn due(&self) {
        tokio::time::sleep_until(self.next).await
    }

    async fn send(&mut self, io: &TaskIo, ctx: &TaskContext, watermark: Option<i64>) -> Result<(), TaskError> {
        let Some(every) = self.every else { return Ok(()) };
        self.next = Instant::now() + every;
        if self.sent == Some(watermark) {
            return Ok(());
        }
        self.sent = Some(watermark);
        let event = Event::SourceWatermark { task: ctx.id.clone(), watermark };
        io.events.send(event).await.map_err(|_| TaskError::Disconnected("coordinator"))
    }
}
