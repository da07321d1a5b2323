//! Sinks without transactions.

use std::io::Write;
use std::marker::PhantomData;

use async_trait::async_trait;
use serde::Serialize;

use crate::metrics::JobMetrics;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

/// Prints records as JSON lines when they arrive (at-least-once).
pub struct StdoutSink<T> {
    ctx: TaskContext,
    _records: PhantomData<fn(T)>,
}

impl<T> StdoutSink<T> {
    pub fn new(ctx: TaskContext) -> Self {
        StdoutSink { ctx, _records: PhantomData }
    }
}

#[async_trait]
impl<T: Serialize + Send + 'static> Collector<T> for StdoutSink<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        JobMetrics::add(&self.ctx.metrics.records_out, batch.len());
        JobMetrics::add(&self.ctx.stage.records_out, batch.len());
        let mut out = std::io::stdout().lock();
        for r in &batch {
            serde_json::to_writer(&mut out, r).map_err(|e| TaskError::sink("stdout", e))?;
            out.write_all(b"\n").map_err(|e| TaskError::sink("stdout", e))?;
        }
        Ok(())
    }
    async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        std::io::stdout().flush().map_err(|e| TaskError::sink("stdout", e))
    }
    async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
        Ok(())
    }
    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Counts records and drops them; for benchmarks.
pub struct DiscardSink<T> {
    ctx: TaskContext,
    _records: PhantomData<fn(T)>,
}

impl<T> DiscardSink<T> {
    pub fn new(ctx: TaskContext) -> Self {
        DiscardSink { ctx, _records: PhantomData }
    }
}

#[async_trait]
impl<T: Send + 'static> Collector<T> for DiscardSink<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        JobMetrics::add(&self.ctx.metrics.records_out, batch.len());
        JobMetrics::add(&self.ctx.stage.records_out, batch.len());
        Ok(())
    }
    async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        Ok(())
    }
    async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
        Ok(())
    }
    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}
