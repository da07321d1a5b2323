//! Record-at-a-time transformations chained into their task.

use async_trait::async_trait;

use crate::task::{Barrier, Collector, TaskError, TaskSnapshot, Watermark};

/// Applies `f` to each batch and pushes the result on; map, filter and
/// flat_map are all this with a different `f`.
pub struct BatchFn<I, O, F> {
    pub f: F,
    pub next: Box<dyn Collector<O>>,
    pub _types: std::marker::PhantomData<fn(I) -> O>,
}

impl<I, O, F> BatchFn<I, O, F> {
    pub fn new(f: F, next: Box<dyn Collector<O>>) -> Self {
        BatchFn { f, next, _types: std::marker::PhantomData }
    }
}

#[async_trait]
impl<I, O, F> Collector<I> for BatchFn<I, O, F>
where
    I: Send + 'static,
    O: Send + 'static,
    F: FnMut(Vec<I>) -> Result<Vec<O>, TaskError> + Send,
{
    async fn open(&mut self) -> Result<(), TaskError> {
        self.next.open().await
    }
    async fn collect(&mut self, batch: Vec<I>) -> Result<(), TaskError> {
        let out = (self.f)(batch)?;
        if out.is_empty() {
            return Ok(());
        }
        self.next.collect(out).await
    }
    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
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
