//! The shuffles: channels from one or more stages (a union) to the next,
//! and the collector that partitions a task's output over them, by key
//! group or round robin.

use std::hash::Hash;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc::error::TrySendError;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinSet;

use super::collector::{Collector, TaskSnapshot};
use super::error::TaskError;
use super::inflight::{data_channel, DataReceiver, DataSender, MIN_RECORDS};
use super::message::{Barrier, Message, Watermark};
use crate::distributed::network::{spawn_inbound, spawn_outbound, DataPlane, OnBroken};
use crate::distributed::protocol::{ChannelKey, Placement, TaskKey};
use crate::keygroup::{key_group_of_hash, key_hash, subtask_for_key_group};
use crate::metrics::{JobMetrics, StageCounters};

type Senders<T> = Vec<DataSender<T>>;
type Receivers<T> = Vec<DataReceiver<T>>;

/// The bounded channels between every upstream and every downstream
/// subtask of one shuffle, made afresh for each run of the job.
///
/// Several stages may send into one shuffle (a union, or the two sides of
/// a join): their subtasks are numbered one stage after the other, so a
/// receiving subtask has one input per upstream subtask of every stage.
pub struct Edge<T> {
    inner: Mutex<EdgeInner<T>>,
}

struct EdgeInner<T> {
    /// The sending stages, by index, and their parallelism.
    upstreams: Vec<(usize, u32)>,
    /// The index of the receiving stage.
    down_stage: usize,
    downstream: u32,
    senders: Vec<Option<Senders<T>>>,
    receivers: Vec<Option<Receivers<T>>>,
}

impl<T> EdgeInner<T> {
    fn upstream(&self) -> u32 {
        self.upstreams.iter().map(|(_, p)| p).sum()
    }

    /// The stage and subtask of upstream input `u`.
    fn upstream_task(&self, mut u: u32) -> Option<(usize, u32)> {
        for (stage, p) in &self.upstreams {
            if u < *p {
                return Some((*stage, u));
            }
            u -= p;
        }
        None
    }

    /// The number of the first subtask of upstream stage `stage`.
    fn offset(&self, stage: usize) -> Option<u32> {
        let at = self.upstreams.iter().position(|(s, _)| *s == stage)?;
        Some(self.upstreams[..at].iter().map(|(_, p)| p).sum())
    }
}

/// How a worker wires the shuffles of one attempt over the network.
pub struct NetworkWiring<'a> {
    pub epoch: u64,
    pub placement: &'a Placement,
    /// This worker's index in the placement.
    pub me: usize,
    pub plane: &'a DataPlane,
    /// Where the channel pumps run; dropped with the attempt.
    pub pumps: &'a mut JoinSet<()>,
    pub on_broken: OnBroken,
}

/// How much a shuffle channel holds: at most `batches` messages, and at
/// first `records` records, an allowance its receiver then sizes to its
/// throughput when in-flight data is bounded by time.
#[derive(Debug, Clone, Copy)]
pub struct ChannelBounds {
    pub batches: usize,
    pub records: usize,
}

/// Wiring of an edge, independent of its record type.
pub trait Connect: Send + Sync {
    /// Records the receiving stage's index and parallelism (known once it is built).
    fn set_downstream(&self, stage: usize, parallelism: u32);
    /// Makes fresh channels for a run of the job in one process.
    fn connect(&self, bounds: ChannelBounds);
    /// Makes fresh channels for the subtasks of this worker: local pairs
    /// directly, the rest through the data plane.
    fn connect_distributed(&self, edge: usize, bounds: ChannelBounds, wiring: &mut NetworkWiring<'_>);
}

impl<T: Send + 'static> Edge<T> {
    /// A shuffle with no sending stage yet.
    pub fn new() -> Arc<Edge<T>> {
        Arc::new(Edge {
            inner: Mutex::new(EdgeInner {
                upstreams: Vec::new(),
                down_stage: 0,
                downstream: 0,
                senders: Vec::new(),
                receivers: Vec::new(),
            }),
        })
    }

    /// Stage `stage`, with `parallelism` subtasks, sends into this shuffle.
    pub fn add_upstream(&self, stage: usize, parallelism: u32) {
        if let Ok(mut g) = self.inner.lock() {
            g.upstreams.push((stage, parallelism));
        }
    }

    pub fn downstream(&self) -> u32 {
        self.inner.lock().map(|g| g.downstream).unwrap_or(0)
    }

    /// The senders of subtask `i` of upstream stage `stage`, one per
    /// downstream subtask.
    pub fn take_senders(&self, stage: usize, i: u32) -> Result<Senders<T>, TaskError> {
        self.inner
            .lock()
            .ok()
            .and_then(|mut g| {
                let at = g.offset(stage)? + i;
                g.senders.get_mut(at as usize).and_then(Option::take)
            })
            .ok_or(TaskError::Disconnected("shuffle senders"))
    }

    /// The receivers of downstream subtask `j`, one per upstream subtask.
    pub fn take_receivers(&self, j: u32) -> Result<Receivers<T>, TaskError> {
        self.inner
            .lock()
            .ok()
            .and_then(|mut g| g.receivers.get_mut(j as usize).and_then(Option::take))
            .ok_or(TaskError::Disconnected("shuffle receivers"))
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Connect for Edge<T> {
    fn set_downstream(&self, stage: usize, parallelism: u32) {
        if let Ok(mut g) = self.inner.lock() {
            g.down_stage = stage;
            g.downstream = parallelism;
        }
    }

    fn connect(&self, bounds: ChannelBounds) {
        let Ok(mut g) = self.inner.lock() else { return };
        let (up, down) = (g.upstream() as usize, g.downstream as usize);
        let mut senders: Vec<Senders<T>> = (0..up).map(|_| Vec::with_capacity(down)).collect();
        let mut receivers: Vec<Receivers<T>> = (0..down).map(|_| Vec::with_capacity(up)).collect();
        for s in senders.iter_mut() {
            for r in receivers.iter_mut() {
                let (tx, rx) = data_channel(bounds.batches, bounds.records);
                s.push(tx);
                r.push(rx);
            }
        }
        g.senders = senders.into_iter().map(Some).collect();
        g.receivers = receivers.into_iter().map(Some).collect();
    }

    fn connect_distributed(&self, edge: usize, bounds: ChannelBounds, w: &mut NetworkWiring<'_>) {
        let Ok(mut g) = self.inner.lock() else { return };
        let (down_stage, up, down) = (g.down_stage, g.upstream(), g.downstream);
        let here = |stage: usize, subtask: u32| w.placement.worker_of(TaskKey { stage, subtask });
        let mut senders: Vec<Option<Senders<T>>> = (0..up).map(|_| None).collect();
        let mut receivers: Vec<Option<Receivers<T>>> = (0..down).map(|_| None).collect();
        for u in 0..up {
            let up_worker = g.upstream_task(u).and_then(|(stage, subtask)| here(stage, subtask));
            for d in 0..down {
                let down_worker = here(down_stage, d);
                let key = ChannelKey { epoch: w.epoch, edge, upstream: u, downstream: d };
                let (tx, rx) = data_channel(bounds.batches, bounds.records);
                match (up_worker == Some(w.me), down_worker == Some(w.me)) {
                    (true, true) => {
                        senders[u as usize].get_or_insert_with(Vec::new).push(tx);
                        receivers[d as usize].get_or_insert_with(Vec::new).push(rx);
                    }
                    (true, false) => {
                        let to = down_worker.and_then(|i| w.placement.data_addrs.get(i).copied());
                        senders[u as usize].get_or_insert_with(Vec::new).push(tx);
                        if let Some(to) = to {
                            spawn_outbound(w.pumps, w.plane.token(), w.plane.tls(), key, to, rx, w.on_broken.clone());
                        }
                    }
                    (false, true) => {
                        receivers[d as usize].get_or_insert_with(Vec::new).push(rx);
                        spawn_inbound(w.pumps, w.plane, key, tx, w.on_broken.clone());
                    }
                    (false, false) => {}
                }
            }
        }
        g.senders = senders;
        g.receivers = receivers;
    }
}

/// Sends a control message (barrier, watermark, end), counting the time
/// spent waiting for a full channel as backpressure.
async fn send<T>(to: &DataSender<T>, msg: Message<T>, stage: &StageCounters) -> Result<(), TaskError> {
    let closed = |_| TaskError::Disconnected("downstream subtask");
    match to.tx.try_send(msg) {
        Ok(()) => Ok(()),
        Err(TrySendError::Closed(_)) => Err(TaskError::Disconnected("downstream subtask")),
        Err(TrySendError::Full(msg)) => {
            let started = std::time::Instant::now();
            let sent = to.tx.send(msg).await.map_err(closed);
            JobMetrics::add(&stage.backpressure_ns, started.elapsed().as_nanos() as usize);
            sent
        }
    }
}

/// Sends records within the channel's allowance: a batch larger than the
/// allowance goes in pieces, each once the receiver has room for it.
async fn send_batch<T>(to: &DataSender<T>, batch: Vec<T>, stage: &StageCounters) -> Result<(), TaskError> {
    let piece = to.inflight.limit().max(MIN_RECORDS);
    if batch.len() <= piece {
        return admit_and_send(to, batch, stage).await;
    }
    let mut rest = batch.into_iter();
    loop {
        let part: Vec<T> = rest.by_ref().take(piece).collect();
        if part.is_empty() {
            return Ok(());
        }
        admit_and_send(to, part, stage).await?;
    }
}

async fn admit_and_send<T>(to: &DataSender<T>, batch: Vec<T>, stage: &StageCounters) -> Result<(), TaskError> {
    let started = std::time::Instant::now();
    to.inflight.admit(batch.len()).await;
    let waited = started.elapsed();
    if !waited.is_zero() {
        JobMetrics::add(&stage.backpressure_ns, waited.as_nanos() as usize);
    }
    send(to, Message::Batch(batch), stage).await
}

/// How a shuffle spreads a batch over the downstream subtasks' buffers.
pub trait Partition<T>: Send {
    fn partition(&mut self, batch: Vec<T>, buffers: &mut [Vec<T>]);
}

/// Each record to the subtask owning its key's key group.
pub struct ByKey<F> {
    key: F,
    max_parallelism: u32,
}

impl<F> ByKey<F> {
    pub fn new(key: F, max_parallelism: u32) -> Self {
        ByKey { key, max_parallelism }
    }
}

impl<T, K: Hash, F: Fn(&T) -> K + Send> Partition<T> for ByKey<F> {
    fn partition(&mut self, batch: Vec<T>, buffers: &mut [Vec<T>]) {
        let n = buffers.len() as u32;
        for record in batch {
            let group = key_group_of_hash(key_hash(&(self.key)(&record)), self.max_parallelism);
            buffers[subtask_for_key_group(group, self.max_parallelism, n)].push(record);
        }
    }
}

/// Whole batches to the downstream subtasks in turn (Flink's `rebalance`),
/// starting at one that depends on the sender so that senders spread out.
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new(start: u32) -> Self {
        RoundRobin { next: start as usize }
    }
}

impl<T> Partition<T> for RoundRobin {
    fn partition(&mut self, batch: Vec<T>, buffers: &mut [Vec<T>]) {
        let target = self.next % buffers.len().max(1);
        self.next = target + 1;
        if let Some(buffer) = buffers.get_mut(target) {
            buffer.extend(batch);
        }
    }
}

/// The end of a chain that sends its records into a shuffle.
pub struct Router<T, P> {
    partition: P,
    outputs: Senders<T>,
    buffers: Vec<Vec<T>>,
    batch_size: usize,
    stage: Arc<StageCounters>,
}

impl<T: Send + 'static, P: Partition<T>> Router<T, P> {
    pub fn new(partition: P, outputs: Senders<T>, batch_size: usize, stage: Arc<StageCounters>) -> Self {
        let buffers = outputs.iter().map(|_| Vec::new()).collect();
        Router { partition, outputs, buffers, batch_size, stage }
    }

    async fn flush(&mut self) -> Result<(), TaskError> {
        for target in 0..self.buffers.len() {
            if !self.buffers[target].is_empty() {
                let batch = std::mem::replace(&mut self.buffers[target], Vec::with_capacity(self.batch_size));
                JobMetrics::add(&self.stage.records_out, batch.len());
                send_batch(&self.outputs[target], batch, &self.stage).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<T: Send + 'static, P: Partition<T>> Collector<T> for Router<T, P> {
    async fn open(&mut self) -> Result<(), TaskError> {
        Ok(())
    }

    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        if self.outputs.len() == 1 {
            // One downstream subtask takes everything: forward the batch as is.
            JobMetrics::add(&self.stage.records_out, batch.len());
            return send_batch(&self.outputs[0], batch, &self.stage).await;
        }
        self.partition.partition(batch, &mut self.buffers);
        // Flushing at the end of each input batch bounds latency; batches stay
        // large because input batches are.
        self.flush().await
    }

    async fn barrier(&mut self, barrier: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        self.flush().await?;
        for target in 0..self.outputs.len() {
            send(&self.outputs[target], Message::Barrier(barrier), &self.stage).await?;
        }
        Ok(())
    }

    async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
        Ok(())
    }

    async fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        self.flush().await?;
        for target in 0..self.outputs.len() {
            send(&self.outputs[target], Message::Watermark(watermark), &self.stage).await?;
        }
        Ok(())
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.flush().await?;
        for target in 0..self.outputs.len() {
            send(&self.outputs[target], Message::End, &self.stage).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_larger_than_the_allowance_arrives_in_pieces_in_order() {
        let (tx, mut rx) = data_channel::<u32>(64, 1000);
        tx.inflight.set_limit(100);
        let stage = JobMetrics::default().stage("keyBy");
        let sending = tokio::spawn(async move { send_batch(&tx, (0..1000).collect(), &stage).await });
        let mut seen = Vec::new();
        while seen.len() < 1000 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Message::Batch(b))) => {
                    assert!(b.len() <= 100, "a piece of {} records against an allowance of 100", b.len());
                    seen.extend(b);
                }
                other => panic!("expected a batch, got {:?}", other.map(|m| m.map(|_| ()))),
            }
        }
        sending.await.unwrap().unwrap();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }
}
