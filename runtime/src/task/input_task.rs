//! The loop of a subtask fed by a shuffle: read unblocked inputs, align
//! barriers, pass records and barriers down the chain, and tell it the
//! wall clock for its processing-time timers.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Instant;

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::aligner::{Aligner, Alignment};
use super::collector::{Collector, TaskContext, TaskSnapshot, PROCESSING_TICK};
use super::error::TaskError;
use super::inflight::{DataReceiver, Debloater};
use super::message::{Control, Message};
use super::runnable::{spawn_snapshot_write, RunnableTask, Slices, TaskIo};
use super::watermarks::WatermarkTracker;
use crate::job::coordinate::wall_ms;
use crate::metrics::JobMetrics;

pub struct InputTask<T: Send + 'static> {
    pub ctx: TaskContext,
    pub inputs: Vec<DataReceiver<T>>,
    pub chain: Box<dyn Collector<T>>,
}

/// Polls the inputs the aligner does not block, starting after the last
/// one served so no input starves. `None`: the input broke without `End`.
fn poll_inputs<T>(
    inputs: &mut [DataReceiver<T>],
    aligner: &Aligner,
    ended: &[bool],
    start: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<(usize, Option<Message<T>>)> {
    let n = inputs.len();
    for k in 0..n {
        let i = (*start + k) % n;
        if ended[i] || aligner.is_blocked(i) {
            continue;
        }
        match inputs[i].poll_recv(cx) {
            Poll::Ready(Some(m)) => {
                *start = (i + 1) % n;
                return Poll::Ready((i, Some(m)));
            }
            Poll::Ready(None) => return Poll::Ready((i, None)),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

#[async_trait]
impl<T: Send + 'static> RunnableTask for InputTask<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        self.chain.open().await
    }

    async fn run(mut self: Box<Self>, mut io: TaskIo) -> Result<(), TaskError> {
        let mut writers = JoinSet::new();
        let mut aligner = Aligner::new(self.inputs.len(), self.ctx.mode);
        let mut event_time = WatermarkTracker::new(self.inputs.len());
        let mut ended = vec![false; self.inputs.len()];
        let mut start = 0;
        let mut stop_requested = false;
        let mut input_done = false;
        let mut slices = Slices::default();
        let mut debloater = self.ctx.in_flight_target.map(|target| {
            // The allowance the channels were made with is the most it grows back to.
            let max = self.inputs.iter().map(|i| i.inflight.limit()).max().unwrap_or(0);
            Debloater::new(target, self.inputs.len(), max, Instant::now())
        });
        let mut clock = tokio::time::interval(PROCESSING_TICK);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if stop_requested && input_done {
                break;
            }
            let inputs = &mut self.inputs;
            tokio::select! {
                biased;
                ctl = io.control.recv() => match ctl {
                    Some(Control::Complete(id)) => self.chain.checkpoint_complete(id).await?,
                    Some(Control::Abort(id)) => aligner.abort(id),
                    Some(Control::Trigger(_) | Control::Align(_)) => {}
                    Some(Control::Stop) | None => stop_requested = true,
                },
                // Before the inputs, which a busy job always has ready; once
                // they ended no timer fires: what it emitted would come after
                // the final checkpoint.
                _ = clock.tick(), if !input_done => self.chain.processing_time(wall_ms() as i64).await?,
                (i, msg) = poll_fn(|cx| poll_inputs(inputs, &aligner, &ended, &mut start, cx)), if !input_done => {
                    // An upstream that vanished without `End` did not finish:
                    // taking it for the end of input would let a checkpoint
                    // align (and a sink commit) without its records. Fail;
                    // the upstream's own failure names the cause.
                    let Some(msg) = msg else { return Err(TaskError::Disconnected("an upstream subtask")) };
                    let aligned = match msg {
                        Message::Batch(batch) => {
                            let records = batch.len();
                            JobMetrics::add(&self.ctx.stage.records_in, records);
                            let started = debloater.is_some().then(Instant::now);
                            self.chain.collect(batch).await?;
                            if let (Some(d), Some(started)) = (debloater.as_mut(), started) {
                                let now = Instant::now();
                                if let Some(limit) = d.on_batch(records, now - started, now) {
                                    self.inputs.iter().for_each(|input| input.inflight.set_limit(limit));
                                }
                            }
                            slices.after_work().await;
                            Alignment::Pending
                        }
                        Message::Barrier(b) => aligner.on_barrier(i, b),
                        Message::Watermark(w) => {
                            if let Some(w) = event_time.on_watermark(i, w) {
                                self.chain.watermark(w).await?;
                            }
                            Alignment::Pending
                        }
                        Message::End => {
                            ended[i] = true;
                            if let Some(w) = event_time.on_end(i) {
                                self.chain.watermark(w).await?;
                            }
                            aligner.on_end(i)
                        }
                    };
                    if let Alignment::Aligned(barrier) = aligned {
                        let mut snapshot = TaskSnapshot::default();
                        self.chain.barrier(barrier, &mut snapshot).await?;
                        spawn_snapshot_write(&mut writers, &self.ctx, &io, barrier, snapshot);
                    }
                    if ended.iter().all(|e| *e) {
                        input_done = true;
                        self.chain.end_of_input().await?;
                    }
                }
            }
        }
        while writers.join_next().await.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;
    use crate::checkpoint::CheckpointStore;
    use crate::task::inflight::data_channel;
    use crate::task::Barrier;

    /// Counts what reaches the end of the chain.
    struct Recording {
        ended: Arc<AtomicBool>,
    }

    #[async_trait]
    impl Collector<u32> for Recording {
        async fn open(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
        async fn collect(&mut self, _: Vec<u32>) -> Result<(), TaskError> {
            Ok(())
        }
        async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
            Ok(())
        }
        async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
            Ok(())
        }
        async fn end_of_input(&mut self) -> Result<(), TaskError> {
            self.ended.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_input_that_breaks_without_end_fails_the_task_instead_of_ending_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let (finished, finished_rx) = data_channel(4, 100);
        let (broken, broken_rx) = data_channel(4, 100);
        finished.tx.send(Message::Batch(vec![1])).await.unwrap();
        finished.tx.send(Message::End).await.unwrap();
        broken.tx.send(Message::Batch(vec![2])).await.unwrap();
        drop(broken); // the upstream vanished: no End
        let ended = Arc::new(AtomicBool::new(false));
        let task = Box::new(InputTask {
            ctx: TaskContext::for_test("agg"),
            inputs: vec![finished_rx, broken_rx],
            chain: Box::new(Recording { ended: ended.clone() }),
        });
        let (_control, control) = mpsc::channel(1);
        let (events, _events) = mpsc::channel(8);
        let store = CheckpointStore::open(&format!("file://{}", dir.path().display()), "default", "job").unwrap();
        let err = task.run(TaskIo { control, events, store }).await.unwrap_err();
        assert!(matches!(err, TaskError::Disconnected(_)), "{err}");
        assert!(!ended.load(Ordering::SeqCst), "the chain never saw an end of input");
        drop(finished);
    }
}
