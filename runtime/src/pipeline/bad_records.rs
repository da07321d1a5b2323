//! The error policy: where a declared pipeline's bad records go, both
//! those its source or steps reject and the rows its sink's table refuses.

use async_trait::async_trait;
use serde_json::json;
use tracing::warn;

use crate::connectors::{FileSink, TxnDriver};
use crate::manifest::{BadRecordAction, ErrorPolicy};
use crate::metrics::JobMetrics;
use crate::record::{BadRecord, FieldRule, Rejects, Row, SourceRecord};
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot, Watermark};

/// The policy applied to bad records. Dead letters are written
/// transactionally, so each bad record lands there exactly once.
pub struct BadRecordPolicy {
    ctx: TaskContext,
    action: BadRecordAction,
    dead_letters: Option<TxnDriver<Row, FileSink<Row>>>,
    warned: u64,
}

impl BadRecordPolicy {
    /// `uid` is the state of the dead letters' transactions; `prefix`
    /// names their part files, apart from every other writer's.
    pub fn new(uid: &str, prefix: &str, ctx: TaskContext, policy: &ErrorPolicy) -> Self {
        let action = policy.on_bad_record;
        let dead_letters = match (action, policy.dead_letter_path.as_deref()) {
            (BadRecordAction::DeadLetter, Some(dir)) => {
                let sink = FileSink::for_task(dir, prefix, &ctx);
                Some(TxnDriver::new(uid.to_string(), ctx.clone(), sink))
            }
            _ => None,
        };
        BadRecordPolicy { ctx, action, dead_letters, warned: 0 }
    }

    pub async fn open(&mut self) -> Result<(), TaskError> {
        match &mut self.dead_letters {
            Some(dl) => dl.open().await,
            None => Ok(()),
        }
    }

    /// Fails on the first record, counts and skips them, or dead-letters them.
    pub async fn apply(&mut self, bad: Vec<BadRecord>) -> Result<(), TaskError> {
        let Some(first) = bad.first() else { return Ok(()) };
        match self.action {
            BadRecordAction::Fail => {
                let record = if first.origin.is_empty() { first.raw.clone() } else { format!("at {}", first.origin) };
                Err(TaskError::BadRecord { record, reason: first.reason.clone() })
            }
            BadRecordAction::Skip => {
                JobMetrics::add(&self.ctx.metrics.bad_records_skipped, bad.len());
                if self.warned < 10 {
                    self.warned += 1;
                    warn!(origin = %first.origin, reason = %first.reason, "skipping bad record (errorPolicy onBadRecord: skip)");
                }
                Ok(())
            }
            BadRecordAction::DeadLetter => {
                JobMetrics::add(&self.ctx.metrics.bad_records_dead_lettered, bad.len());
                let rows =
                    bad.into_iter().map(|b| json!({"origin": b.origin, "reason": b.reason, "record": b.raw})).collect();
                match &mut self.dead_letters {
                    Some(dl) => dl.write(rows).await,
                    None => Ok(()),
                }
            }
        }
    }

    pub async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        if let Some(dl) = &mut self.dead_letters {
            snapshot.add(dl.barrier(barrier).await?);
        }
        Ok(())
    }

    pub async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        match &mut self.dead_letters {
            Some(dl) => dl.checkpoint_complete(id).await,
            None => Ok(()),
        }
    }

    pub async fn end_of_input(&mut self) -> Result<(), TaskError> {
        match &mut self.dead_letters {
            Some(dl) => dl.end_of_input().await,
            None => Ok(()),
        }
    }
}

/// What a checked step does to a batch: the rows that go on, and the
/// records that go to the error policy.
pub trait Check<T>: Send {
    /// Before each batch: brings what the check reads up to date (a lookup
    /// table), failing the task if it cannot.
    fn prepare(&mut self) -> Result<(), TaskError> {
        Ok(())
    }

    fn check(&mut self, batch: Vec<T>) -> (Vec<Row>, Vec<BadRecord>);
}

/// A check of one record at a time: `step` pushes what `row` becomes onto
/// the good records or gives it back with why it is bad (`at` is the
/// step's place in the manifest, the bad records' origin).
pub fn row_by_row(
    batch: Vec<Row>,
    at: &str,
    mut step: impl FnMut(Row, &mut Vec<Row>) -> Result<(), (Row, String)>,
) -> (Vec<Row>, Vec<BadRecord>) {
    let mut good = Vec::with_capacity(batch.len());
    let mut bad = Vec::new();
    for row in batch {
        if let Err((row, reason)) = step(row, &mut good) {
            bad.push(BadRecord { origin: at.to_string(), raw: row.to_string(), reason });
        }
    }
    (good, bad)
}

/// Source records checked against the rules their steps need.
pub struct FieldRules(pub Vec<FieldRule>);

impl FieldRules {
    fn validate(&self, item: SourceRecord) -> Result<Row, BadRecord> {
        let row = item.row?;
        match self.violation(&row) {
            Some(reason) => Err(BadRecord { origin: item.origin.unwrap_or_default(), raw: row.to_string(), reason }),
            None => Ok(row),
        }
    }

    /// Why `row` breaks the first rule it breaks.
    fn violation(&self, row: &Row) -> Option<String> {
        self.0.iter().find_map(|rule| rule.check(row).err())
    }
}

impl Check<SourceRecord> for FieldRules {
    fn check(&mut self, batch: Vec<SourceRecord>) -> (Vec<Row>, Vec<BadRecord>) {
        let mut good = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        for item in batch {
            match self.validate(item) {
                Ok(row) => good.push(row),
                Err(b) => bad.push(b),
            }
        }
        (good, bad)
    }
}

/// The same rules on rows past a filter, which no longer know their origin.
impl Check<Row> for FieldRules {
    fn check(&mut self, batch: Vec<Row>) -> (Vec<Row>, Vec<BadRecord>) {
        let mut good = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        for row in batch {
            match self.violation(&row) {
                None => good.push(row),
                Some(reason) => bad.push(BadRecord { origin: String::new(), raw: row.to_string(), reason }),
            }
        }
        (good, bad)
    }
}

/// A step whose good rows go on and whose bad records go to the policy.
pub struct Checked<C> {
    check: C,
    policy: BadRecordPolicy,
    next: Box<dyn Collector<Row>>,
}

impl<C> Checked<C> {
    pub fn new(check: C, policy: BadRecordPolicy, next: Box<dyn Collector<Row>>) -> Self {
        Checked { check, policy, next }
    }
}

#[async_trait]
impl<T: Send + 'static, C: Check<T> + 'static> Collector<T> for Checked<C> {
    async fn open(&mut self) -> Result<(), TaskError> {
        self.policy.open().await?;
        self.next.open().await
    }

    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        self.check.prepare()?;
        let (good, bad) = self.check.check(batch);
        self.policy.apply(bad).await?;
        if good.is_empty() {
            return Ok(());
        }
        self.next.collect(good).await
    }

    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        self.policy.barrier(barrier, snapshot).await?;
        self.next.barrier(barrier, snapshot).await
    }

    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        self.policy.checkpoint_complete(id).await?;
        self.next.checkpoint_complete(id).await
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.policy.end_of_input().await?;
        self.next.end_of_input().await
    }

    async fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        self.next.watermark(watermark).await
    }

    async fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        self.next.processing_time(now).await
    }
}

/// A sink that may refuse rows, with the policy applied to what it refused
/// in each batch. Refused rows and the sink's own output of a checkpoint
/// interval are committed with the same checkpoint, so a replay refuses
/// them again and neither is written twice.
pub struct RejectingSink {
    policy: BadRecordPolicy,
    rejects: Rejects,
    sink: Box<dyn Collector<Row>>,
}

impl RejectingSink {
    pub fn new(policy: BadRecordPolicy, rejects: Rejects, sink: Box<dyn Collector<Row>>) -> Self {
        RejectingSink { policy, rejects, sink }
    }

    async fn drain(&mut self) -> Result<(), TaskError> {
        let refused = self.rejects.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        self.policy.apply(refused).await
    }
}

#[async_trait]
impl Collector<Row> for RejectingSink {
    async fn open(&mut self) -> Result<(), TaskError> {
        self.policy.open().await?;
        self.sink.open().await
    }

    async fn collect(&mut self, batch: Vec<Row>) -> Result<(), TaskError> {
        self.sink.collect(batch).await?;
        self.drain().await
    }

    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        // The sink first: it may send rows it gathered only now, and what
        // the table refuses of them belongs to this checkpoint too.
        self.sink.barrier(barrier, snapshot).await?;
        self.drain().await?;
        self.policy.barrier(barrier, snapshot).await
    }

    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        self.policy.checkpoint_complete(id).await?;
        self.sink.checkpoint_complete(id).await
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.sink.end_of_input().await?;
        self.drain().await?;
        self.policy.end_of_input().await
    }
}
