//! A keyed process function: user logic with state scoped to the current key.

use std::hash::Hash;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::faults::FaultPoint;
use crate::state::KeyedStateBackend;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot, Watermark};

/// User logic of a keyed operator, in the spirit of Flink's
/// `KeyedProcessFunction`. Per-key state is one value of `State`, usually a
/// struct of [`ValueState`](crate::state::ValueState),
/// [`ListState`](crate::state::ListState) and
/// [`MapState`](crate::state::MapState) fields.
pub trait KeyedProcessFunction<K, I, O>: Clone + Send + 'static {
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    fn process(&mut self, key: &K, record: I, state: &mut Self::State, out: &mut Vec<O>) -> Result<(), TaskError>;
}

pub struct KeyedProcess<K, I, O, F: KeyedProcessFunction<K, I, O>, KF> {
    uid: String,
    ctx: TaskContext,
    key_of: KF,
    function: F,
    state: KeyedStateBackend<K, F::State>,
    next: Box<dyn Collector<O>>,
    _types: std::marker::PhantomData<fn(I)>,
}

impl<K, I, O, F, KF> KeyedProcess<K, I, O, F, KF>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
    F: KeyedProcessFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    pub fn new(
        uid: String,
        ctx: TaskContext,
        key_of: KF,
        function: F,
        next: Box<dyn Collector<O>>,
    ) -> Result<Self, TaskError> {
        let state = super::restore_keyed(&uid, &ctx)?;
        Ok(KeyedProcess { uid, ctx, key_of, function, state, next, _types: std::marker::PhantomData })
    }

    fn process_all(&mut self, batch: impl Iterator<Item = I>, out: &mut Vec<O>) -> Result<(), TaskError> {
        for record in batch {
            let key = (self.key_of)(&record);
            let state = self.state.get_mut(&key).ok_or(TaskError::Misrouted { subtask: self.ctx.subtask() })?;
            self.function.process(&key, record, state, out)?;
        }
        Ok(())
    }
}

#[async_trait]
impl<K, I, O, F, KF> Collector<I> for KeyedProcess<K, I, O, F, KF>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
    F: KeyedProcessFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    async fn open(&mut self) -> Result<(), TaskError> {
        self.next.open().await
    }

    async fn collect(&mut self, batch: Vec<I>) -> Result<(), TaskError> {
        let mut out = Vec::with_capacity(batch.len());
        let half = batch.len() / 2;
        let mut records = batch.into_iter();
        self.process_all(records.by_ref().take(half), &mut out)?;
        self.ctx.faults.check(FaultPoint::MidBatch)?;
        self.process_all(records, &mut out)?;
        if out.is_empty() {
            return Ok(());
        }
        self.next.collect(out).await
    }

    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        snapshot.add(super::snapshot_keyed(&self.uid, &mut self.state));
        self.next.barrier(barrier, snapshot).await
    }

    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        self.next.checkpoint_complete(id).await
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.next.end_of_input().await
    }

    async fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        self.next.watermark(watermark).await
    }

    async fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        self.next.processing_time(now).await
    }
}
