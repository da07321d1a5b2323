//! The upsert sink: each batch written at once by key.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::Serialize;
use tokio_postgres::{Client, Statement};
use tracing::warn;

use super::{describe_error, json_array, refused_rows, PgTarget, STATEMENT_TIMEOUT};
use crate::connectors::upsert::last_per_key;
use crate::metrics::JobMetrics;
use crate::record::Rejects;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

/// The upsert sink of one subtask: each batch is written at once, later
/// rows of a key replacing earlier ones; nothing is kept in checkpoints.
pub struct PostgresUpsertSink<T> {
    target: PgTarget,
    ctx: TaskContext,
    conn: Option<(Client, Statement)>,
    /// Where refused rows go; without it a refused batch fails the subtask.
    rejects: Option<Rejects>,
    _records: PhantomData<fn(T)>,
}

impl<T> PostgresUpsertSink<T> {
    pub fn new(target: PgTarget, ctx: TaskContext) -> PostgresUpsertSink<T> {
        PostgresUpsertSink { target, ctx, conn: None, rejects: None, _records: PhantomData }
    }

    /// Refused rows go to `rejects` instead of failing the subtask.
    pub fn rejecting(mut self, rejects: Option<Rejects>) -> Self {
        self.rejects = rejects;
        self
    }

    async fn ensure_conn(&mut self) -> Result<(), TaskError> {
        if self.conn.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
            return Ok(());
        }
        let client = self.target.connect(&self.ctx.metrics).await?;
        let columns = self.target.resolve_columns(&client).await?;
        let upsert =
            self.target.timed("cannot prepare the upsert", client.prepare(&self.target.upsert_sql(&columns))).await?;
        self.conn = Some((client, upsert));
        Ok(())
    }
}

#[async_trait]
impl<T: Serialize + Send + 'static> Collector<T> for PostgresUpsertSink<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        // Configuration errors (no table, wrong password) show at start.
        self.ensure_conn().await
    }

    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        JobMetrics::add(&self.ctx.metrics.records_out, batch.len());
        JobMetrics::add(&self.ctx.stage.records_out, batch.len());
        let target = self.target.clone();
        let rows = batch
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| target.err(format!("cannot encode a record as JSON: {e}")))?;
        let latest = last_per_key(rows, &target.key);
        let rows = json_array(&target, &latest)?;
        // An upsert can be repeated, so a lost connection is retried once.
        for attempt in 1..=2 {
            self.ensure_conn().await?;
            let (client, upsert) = self.conn.as_ref().ok_or_else(|| target.err("no connection"))?;
            match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(upsert, &[&rows])).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if refused_rows(&e) => match &self.rejects {
                    // Each row on its own: the batch's statement wrote nothing.
                    Some(rejects) => return target.write_one_by_one(client, upsert, latest, false, rejects).await,
                    None => return Err(target.err(format!("cannot upsert rows: {}", describe_error(&e)))),
                },
                Ok(Err(e)) if attempt == 1 && client.is_closed() => {
                    warn!("{}; retrying on a new connection", describe_error(&e));
                    JobMetrics::add(&self.ctx.metrics.sink_retries, 1);
                    self.conn = None;
                }
                Ok(Err(e)) => return Err(target.err(format!("cannot upsert rows: {}", describe_error(&e)))),
                Err(_) => {
                    return Err(
                        target.err(format!("cannot upsert rows: no answer within {}s", STATEMENT_TIMEOUT.as_secs()))
                    )
                }
            }
        }
        Err(target.err("cannot upsert rows"))
    }

    async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        // Every batch was written (and autocommitted) when it arrived.
        Ok(())
    }

    async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
        Ok(())
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}
