//! Records into a Kafka topic: exactly once through a transaction per
//! subtask and checkpoint, or at least once.
//!
//! **Why the records sit in the checkpoint.** Flink's Kafka sink keeps a
//! transaction open across the checkpoint and, after a crash, resumes it in
//! a new process by its producer id and epoch. librdkafka cannot resume
//! another process's transaction: a new producer with the same
//! `transactional.id` aborts it. So this sink keeps a checkpoint
//! interval's records in the checkpoint itself (the pre-commit is the
//! checkpoint's own durable write) and writes them to Kafka in one
//! transaction only when the checkpoint completes. A crash mid-transaction
//! loses nothing: the transaction is aborted and the restored checkpoint
//! still holds its records.
//!
//! **Knowing what committed.** Each transaction also commits, through
//! `send_offsets_to_transaction`, the offset `<checkpoint>` for the output
//! topic's partition 0 in a *marker group* named like the producer
//! (`<prefix>-<incarnation>-<subtask>`); group offsets written in a
//! transaction become visible only if it commits. On restore, a
//! transaction of the restored checkpoint is written again only if its
//! subtask's marker is below it; a marker above the restored checkpoint
//! means output of a newer checkpoint is already committed (the restore
//! fell back past a damaged checkpoint), which Kafka cannot take back: the
//! job refuses to start.
//!
//! **Confirming what committed.** Once a transaction's commit returns,
//! the sink also commits `<checkpoint>` outside any transaction to a
//! second group, `<prefix>-<incarnation>-<subtask>.committed`, and a
//! restore takes the greater of the two offsets. Kafka makes the marker
//! visible with the commit, so the confirmation only repeats it; it is for
//! brokers that apply transactional offsets late or never. tansu 0.6 is one:
//! two subtasks ending transactions over the same partitions at once can
//! leave one of them `Committed` with its partitions still listed, and from
//! then on it applies no transactional offset on those partitions again, so
//! every restore took its committed transactions for uncommitted ones and
//! wrote them again. A crash between the commit and the confirmation
//! leaves only the marker, as before.
//!
//! **Fencing.** `transactional.id` is `<prefix>-<incarnation>-<subtask>`: a
//! new attempt's producer for a subtask fences any older one (a zombie of a
//! frozen worker), and its `init_transactions` settles the older one's
//! transaction in flight (committed if its commit had been sent, aborted
//! otherwise). A restore settles every subtask's id before it reads any
//! marker: a broker may hold back the offsets of a committed transaction
//! while another producer's transaction over the same partitions is still
//! open (tansu does, until that one ends too), and that open one may be
//! another subtask's, left by the failed attempt.
//!
//! The cost: a checkpoint stores its interval's output, and output becomes
//! visible when the checkpoint completes (as with every two-phase-commit
//! sink). Producer calls block the subtask's thread for at most
//! [`OP_TIMEOUT`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info};

use super::{KafkaClient, LastError};
use crate::connectors::two_phase::TwoPhaseCommitSink;
use crate::connectors::upsert::key_string;
use crate::faults::{stop_point_after, StopPoint};
use crate::manifest::KafkaDelivery;
use crate::task::{TaskContext, TaskError};

/// The longest a producer call (init, flush, commit) may block.
pub const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// A Kafka sink's settings, ready for a subtask to connect with.
#[derive(Clone, Debug)]
pub struct KafkaSinkConfig {
    pub client: KafkaClient,
    pub topic: String,
    pub key: Vec<String>,
    pub delivery: KafkaDelivery,
    pub transactional_id_prefix: String,
    pub transaction_timeout: Duration,
}

/// A checkpoint interval's output: what the checkpoint stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaTxn {
    /// The subtask that wrote it, whose transactional id and marker group commit it.
    subtask: u32,
    /// The checkpoint (transaction number) it belongs to.
    txn: u64,
    /// Keys and JSON values, in arrival order.
    records: Vec<(Option<String>, String)>,
}

/// Delivery reports: the first failure, for the flush or commit that follows.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
    last_error: LastError,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.last_error.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if let Ok(mut failed) = self.failed.lock() {
                failed.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

type Producer_ = BaseProducer<Deliveries>;

pub struct KafkaSink<T> {
    config: KafkaSinkConfig,
    subtask: u32,
    parallelism: u32,
    incarnation: u64,
    /// This subtask's producer, made at its first use: after every subtask
    /// opened, so it never fences the producers a restore commits with.
    producer: Option<Producer_>,
    /// After a restore, until `recover` ran: a producer per subtask's
    /// transactional id, each of which settled what that id left in flight.
    settled: Option<BTreeMap<u32, Producer_>>,
    _records: PhantomData<fn(T)>,
}

impl<T> KafkaSink<T> {
    pub fn new(config: KafkaSinkConfig, ctx: &TaskContext) -> KafkaSink<T> {
        KafkaSink {
            config,
            subtask: ctx.subtask(),
            parallelism: ctx.parallelism(),
            incarnation: ctx.fence.incarnation,
            producer: None,
            settled: None,
            _records: PhantomData,
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> TaskError {
        TaskError::sink("kafka", format!("{}: {reason}", self.config.client.at))
    }

    /// The transactional id of `subtask`, which also names its marker group.
    fn transactional_id(&self, subtask: u32) -> String {
        format!("{}-{:016x}-{subtask}", self.config.transactional_id_prefix, self.incarnation)
    }

    fn make_producer(&self, transactional_id: Option<String>) -> Result<Producer_, TaskError> {
        let mut config = self.config.client.config(self.subtask);
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        if let Some(id) = &transactional_id {
            config.set("transactional.id", id);
            config.set("transaction.timeout.ms", self.config.transaction_timeout.as_millis().to_string());
        }
        let producer: Producer_ = config
            .create_with_context(Deliveries::default())
            .map_err(|e| self.err(format!("cannot create a producer: {e}")))?;
        if let Some(id) = transactional_id {
            // Fences older producers of the same id and settles their
            // transaction in flight.
            producer.init_transactions(OP_TIMEOUT).map_err(|e| {
                // Serves the queue where librdkafka put its log lines: the cause.
                producer.poll(Duration::ZERO);
                self.err(format!(
                    "cannot initialize transactions as `{id}` at `{}` (is the broker reachable, and does it \
                     allow transactions?): {e}{}",
                    self.config.client.bootstrap_servers,
                    producer.context().last_error.suffix()
                ))
            })?;
        }
        Ok(producer)
    }

    /// A producer per transactional id a failed attempt may have used: every
    /// subtask of this parallelism and of the restored transactions'. Made
    /// before any marker is read (see the module docs).
    fn settle_all(&self, restored: &[KafkaTxn]) -> Result<BTreeMap<u32, Producer_>, TaskError> {
        let highest = restored.iter().map(|t| t.subtask + 1).max().unwrap_or(0).max(self.parallelism);
        (0..highest).map(|subtask| Ok((subtask, self.make_producer(Some(self.transactional_id(subtask)))?))).collect()
    }

    /// The group `subtask`'s confirmations go to (see the module docs).
    fn confirmation_group(&self, subtask: u32) -> String {
        format!("{}.committed", self.transactional_id(subtask))
    }

    /// A client of `group` that commits nothing by itself.
    fn group_client(&self, group: &str) -> Result<BaseConsumer, TaskError> {
        self.config
            .client
            .config(self.subtask)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| self.err(format!("cannot create a client of group `{group}`: {e}")))
    }

    /// The marker offset as `<checkpoint>`, for the output topic's partition 0.
    fn marker_offsets(&self, txn: u64) -> Result<TopicPartitionList, TaskError> {
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&self.config.topic, 0, Offset::Offset(txn as i64))
            .map_err(|e| self.err(format!("bad marker offset {txn}: {e}")))?;
        Ok(marker)
    }

    /// The newest checkpoint whose transaction `subtask` committed: the
    /// greater of its marker and its confirmation; `None` if it never
    /// committed one.
    fn committed_marker(&self, subtask: u32) -> Result<Option<u64>, TaskError> {
        let mut newest = None;
        for group in [self.transactional_id(subtask), self.confirmation_group(subtask)] {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.config.topic, 0);
            let committed = self.group_client(&group)?.committed_offsets(tpl, OP_TIMEOUT).map_err(|e| {
                self.err(format!("cannot read the commit marker of subtask {subtask} from group `{group}`: {e}"))
            })?;
            let offset = committed.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(n) if n >= 0 => Some(n as u64),
                _ => None,
            });
            newest = newest.max(offset);
        }
        Ok(newest)
    }

    /// Records outside any transaction that `txn` committed.
    fn confirm(&self, txn: &KafkaTxn) -> Result<(), TaskError> {
        let group = self.confirmation_group(txn.subtask);
        self.group_client(&group)?.commit(&self.marker_offsets(txn.txn)?, CommitMode::Sync).map_err(|e| {
            self.err(format!(
                "the transaction of checkpoint {} (subtask {}) committed, but confirming it in group `{group}` \
                 failed: {e}",
                txn.txn, txn.subtask
            ))
        })
    }

    /// Sends every record, waiting for room when librdkafka's queue is full.
    fn send_all(&self, producer: &Producer_, records: &[(Option<String>, String)]) -> Result<(), TaskError> {
        for (key, value) in records {
            let mut record = BaseRecord::to(&self.config.topic).payload(value.as_str());
            if let Some(k) = key {
                record = record.key(k.as_str());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(5));
                        record = r;
                    }
                    Err((e, _)) => return Err(self.err(format!("cannot send to `{}`: {e}", self.config.topic))),
                }
            }
        }
        Ok(())
    }

    fn delivery_failure(&self, producer: &Producer_) -> Result<(), TaskError> {
        match producer.context().failed.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(self.err(format!("a record was not delivered to `{}`: {e}", self.config.topic))),
            None => Ok(()),
        }
    }

    /// Writes `txn` in one transaction of `producer` with its marker.
    fn write_transaction(&self, producer: &Producer_, txn: &KafkaTxn) -> Result<(), TaskError> {
        let group = self.transactional_id(txn.subtask);
        let metadata = self
            .group_client(&group)?
            .group_metadata()
            .ok_or_else(|| self.err(format!("no group metadata for marker group `{group}`")))?;
        let marker = self.marker_offsets(txn.txn)?;
        producer.begin_transaction().map_err(|e| self.err(format!("cannot begin a transaction: {e}")))?;
        let written = self.send_all(producer, &txn.records).and_then(|()| {
            if self.subtask > 0 && txn.subtask == self.subtask {
                stop_point_after(StopPoint::KafkaTxnOpen, Duration::from_secs(1));
            }
            producer
                .send_offsets_to_transaction(&marker, &metadata, OP_TIMEOUT)
                .map_err(|e| self.err(format!("cannot add the commit marker to the transaction: {e}")))?;
            producer.commit_transaction(OP_TIMEOUT).map_err(|e| {
                self.err(format!(
                    "cannot commit the transaction of checkpoint {} (subtask {}): {e}",
                    txn.txn, txn.subtask
                ))
            })
        });
        if written.is_err() {
            let _ = producer.abort_transaction(OP_TIMEOUT);
        }
        written?;
        self.delivery_failure(producer)?;
        self.confirm(txn)
    }
}

#[async_trait]
impl<T: Serialize + Send + 'static> TwoPhaseCommitSink<T> for KafkaSink<T> {
    type Txn = KafkaTxn;

    async fn begin(&mut self, txn_id: u64) -> Result<KafkaTxn, TaskError> {
        if self.config.delivery == KafkaDelivery::AtLeastOnce && self.producer.is_none() {
            self.producer = Some(self.make_producer(None)?);
        }
        Ok(KafkaTxn { subtask: self.subtask, txn: txn_id, records: Vec::new() })
    }

    async fn write(&mut self, txn: &mut KafkaTxn, batch: Vec<T>) -> Result<(), TaskError> {
        let mut records = Vec::with_capacity(batch.len());
        for record in batch {
            let value = serde_json::to_value(&record).map_err(|e| self.err(format!("cannot encode a record: {e}")))?;
            let key = (!self.config.key.is_empty()).then(|| key_string(&value, &self.config.key));
            records.push((key, value_text(&value)));
        }
        match (&self.config.delivery, &self.producer) {
            (KafkaDelivery::AtLeastOnce, Some(producer)) => self.send_all(producer, &records),
            _ => {
                txn.records.extend(records);
                Ok(())
            }
        }
    }

    async fn pre_commit(&mut self, txn: KafkaTxn) -> Result<KafkaTxn, TaskError> {
        if let (KafkaDelivery::AtLeastOnce, Some(producer)) = (&self.config.delivery, &self.producer) {
            // Everything before the barrier is acknowledged before the
            // checkpoint is.
            producer.flush(OP_TIMEOUT).map_err(|e| self.err(format!("cannot flush: {e}")))?;
            self.delivery_failure(producer)?;
        }
        Ok(txn)
    }

    async fn commit(&mut self, txn: &KafkaTxn) -> Result<(), TaskError> {
        if self.config.delivery == KafkaDelivery::AtLeastOnce {
            return Ok(());
        }
        if txn.records.is_empty() {
            return Ok(());
        }
        if self.producer.is_none() {
            self.producer = Some(self.make_producer(Some(self.transactional_id(self.subtask)))?);
        }
        match &self.producer {
            Some(producer) => self.write_transaction(producer, txn),
            None => Ok(()),
        }
    }

    async fn abort(&mut self, _txn: KafkaTxn) -> Result<(), TaskError> {
        // Nothing reached Kafka: the records were only in memory.
        Ok(())
    }

    async fn commit_restored(&mut self, txns: &[KafkaTxn]) -> Result<(), TaskError> {
        if self.config.delivery == KafkaDelivery::AtLeastOnce {
            return Ok(());
        }
        let settled = self.settle_all(txns)?;
        for txn in txns {
            if self.committed_marker(txn.subtask)?.is_some_and(|m| m >= txn.txn) {
                debug!(subtask = txn.subtask, txn = txn.txn, "kafka transaction already committed");
                continue;
            }
            info!(
                subtask = txn.subtask,
                txn = txn.txn,
                records = txn.records.len(),
                "writing a restored kafka transaction"
            );
            let producer = settled
                .get(&txn.subtask)
                .ok_or_else(|| self.err(format!("no producer settled subtask {}", txn.subtask)))?;
            self.write_transaction(producer, txn)?;
        }
        self.settled = Some(settled);
        Ok(())
    }

    async fn recover(&mut self, restored: Option<u64>, committed: &[KafkaTxn]) -> Result<(), TaskError> {
        let settled = self.settled.take();
        let Some(restored) = restored else { return Ok(()) };
        if self.config.delivery == KafkaDelivery::AtLeastOnce {
            return Ok(());
        }
        // Settles (aborts) transactions a crash left open, which would hold
        // back read_committed readers until they timed out.
        let settled = match settled {
            Some(settled) => settled,
            None => self.settle_all(committed)?,
        };
        for &subtask in settled.keys() {
            if let Some(marker) = self.committed_marker(subtask)?.filter(|m| *m > restored) {
                return Err(TaskError::CommittedOutputAhead {
                    sink: "kafka".into(),
                    restored,
                    newest: marker,
                    example: format!("the transaction of subtask {subtask} in topic `{}`", self.config.topic),
                });
            }
        }
        Ok(())
    }
}

/// A record as the message value: JSON text.
fn value_text(value: &Value) -> String {
    value.to_string()
}
