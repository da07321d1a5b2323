//! The error policy: where a declared pipeline's bad records go.

use async_trait::async_trait;
use serde_json::json;
use tracing::warn;

use crate::connectors::{FileSink, TxnDriver};
use crate::manifest::BadRecordAction;
use crate::metrics::JobMetrics;
use crate::record::{BadRecord, FieldRule, Row, SourceRecord};
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

/// Passes good rows on and applies the policy to bad ones. Dead letters are
/// written transactionally, so each bad record lands there exactly once.
pub struct BadRecordHandler {
    ctx: TaskContext,
    action: BadRecordAction,
    rules: Vec<FieldRule>,
    dead_letters: Option<TxnDriver<Row, FileSink<Row>>>,
    next: Box<dyn Collector<Row>>,
    warned: u64,
}

impl BadRecordHandler {
    pub fn new(
        uid: &str,
        ctx: TaskContext,
        action: BadRecordAction,
        dead_letter_dir: Option<&str>,
        rules: Vec<FieldRule>,
        next: Box<dyn Collector<Row>>,
    ) -> Self {
        let dead_letters = match (action, dead_letter_dir) {
            (BadRecordAction::DeadLetter, Some(dir)) => {
                let sink = FileSink::for_task(dir, "dead-letter", &ctx);
                Some(TxnDriver::new(uid.to_string(), ctx.clone(), sink))
            }
            _ => None,
        };
        BadRecordHandler { ctx, action, rules, dead_letters, next, warned: 0 }
    }

    fn validate(&self, item: SourceRecord) -> Result<Row, BadRecord> {
        let row = item.row?;
        for rule in &self.rules {
            if let Err(reason) = rule.check(&row) {
                return Err(BadRecord { origin: item.origin.unwrap_or_default(), raw: row.to_string(), reason });
            }
        }
        Ok(row)
    }
}

#[async_trait]
impl Collector<SourceRecord> for BadRecordHandler {
    async fn open(&mut self) -> Result<(), TaskError> {
        if let Some(dl) = &mut self.dead_letters {
            dl.open().await?;
        }
        self.next.open().await
    }

    async fn collect(&mut self, batch: Vec<SourceRecord>) -> Result<(), TaskError> {
        let mut good = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        for item in batch {
            match self.validate(item) {
                Ok(row) => good.push(row),
                Err(b) => bad.push(b),
            }
        }
        if !bad.is_empty() {
            match self.action {
                BadRecordAction::Fail => {
                    let b = &bad[0];
                    let record = if b.origin.is_empty() { b.raw.clone() } else { format!("at {}", b.origin) };
                    return Err(TaskError::BadRecord { record, reason: b.reason.clone() });
                }
                BadRecordAction::Skip => {
                    JobMetrics::add(&self.ctx.metrics.bad_records_skipped, bad.len());
                    if self.warned < 10 {
                        self.warned += 1;
                        warn!(origin = %bad[0].origin, reason = %bad[0].reason, "skipping bad record (errorPolicy onBadRecord: skip)");
                    }
                }
                BadRecordAction::DeadLetter => {
                    JobMetrics::add(&self.ctx.metrics.bad_records_dead_lettered, bad.len());
                    let rows = bad
                        .into_iter()
                        .map(|b| json!({"origin": b.origin, "reason": b.reason, "record": b.raw}))
                        .collect();
                    if let Some(dl) = &mut self.dead_letters {
                        dl.write(rows).await?;
                    }
                }
            }
        }
        if good.is_empty() {
            return Ok(());
        }
        self.next.collect(good).await
    }

    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        if let Some(dl) = &mut self.dead_letters {
            snapshot.add(dl.barrier(barrier).await?);
        }
        self.next.barrier(barrier, snapshot).await
    }

    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        if let Some(dl) = &mut self.dead_letters {
            dl.checkpoint_complete(id).await?;
        }
        self.next.checkpoint_complete(id).await
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        if let Some(dl) = &mut self.dead_letters {
            dl.end_of_input().await?;
        }
        self.next.end_of_input().await
    }
}
