//! The loop of a subtask fed by a shuffle: read unblocked inputs, align
//! barriers, pass records and barriers down the chain.

use std::future::poll_fn;
use std::task::Poll;

use async_trait::async_trait;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinSet;

use super::aligner::{Aligner, Alignment};
use super::collector::{Collector, TaskContext, TaskSnapshot};
use super::error::TaskError;
use super::message::{Control, Message};
use super::runnable::{spawn_snapshot_write, RunnableTask, TaskIo};
use crate::metrics::JobMetrics;

pub struct InputTask<T: Send + 'static> {
    pub ctx: TaskContext,
    pub inputs: Vec<Receiver<Message<T>>>,
    pub chain: Box<dyn Collector<T>>,
}

/// Polls the inputs the aligner does not block, starting after the last
/// one served so no input starves.
fn poll_inputs<T>(
    inputs: &mut [Receiver<Message<T>>],
    aligner: &Aligner,
    ended: &[bool],
    start: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<(usize, Message<T>)> {
    let n = inputs.len();
    for k in 0..n {
        let i = (*start + k) % n;
        if ended[i] || aligner.is_blocked(i) {
            continue;
        }
        match inputs[i].poll_recv(cx) {
            Poll::Ready(Some(m)) => {
                *start = (i + 1) % n;
                return Poll::Ready((i, m));
            }
            // A vanished upstream ends its input; its failure reaches the
            // coordinator on its own.
            Poll::Ready(None) => return Poll::Ready((i, Message::End)),
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
        let mut ended = vec![false; self.inputs.len()];
        let mut start = 0;
        let mut stop_requested = false;
        let mut input_done = false;
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
                    Some(Control::Trigger(_)) => {}
                    Some(Control::Stop) | None => stop_requested = true,
                },
                (i, msg) = poll_fn(|cx| poll_inputs(inputs, &aligner, &ended, &mut start, cx)), if !input_done => {
                    let aligned = match msg {
                        Message::Batch(batch) => {
                            JobMetrics::add(&self.ctx.stage.records_in, batch.len());
                            self.chain.collect(batch).await?;
                            Alignment::Pending
                        }
                        Message::Barrier(b) => aligner.on_barrier(i, b),
                        Message::End => {
                            ended[i] = true;
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
