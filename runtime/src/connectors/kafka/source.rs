//! Kafka topics as a replayable source: each partition is a split whose
//! position is the offset of the next record to read.
//!
//! The consumer is librdkafka's, with partitions *assigned* by the job (no
//! group membership, no rebalances): a partition belongs to subtask
//! `(crc32(topic) + partition) mod parallelism`, which every subtask works
//! out alone, for partitions known at start, restored from a checkpoint, or
//! discovered later. Positions in a checkpoint are always concrete offsets
//! (`Latest` and timestamps are resolved when a partition is first
//! assigned), so a restore never depends on what the broker holds then.
//!
//! Polls never block: `poll_batch` takes what librdkafka has already
//! fetched and reports `Idle` for a few milliseconds when nothing is there,
//! so barriers are never held up behind a fetch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{KafkaConfig, Watched};
use crate::manifest::{StartingOffsets, StoppingOffsets};
use crate::metrics::JobMetrics;
use crate::state::snapshot::{decode, encode};
use crate::task::source_task::{Source, SourcePoll};
use crate::task::{TaskContext, TaskError};

/// How long start-up waits for the brokers' metadata before giving up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a discovery round waits for metadata; a slow round is skipped.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the source reports idle when librdkafka has nothing fetched.
const IDLE: Duration = Duration::from_millis(5);

/// One partition's position, as kept in checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PartitionSplit {
    topic: String,
    partition: i32,
    /// The offset of the next record to read.
    next: i64,
    /// A bounded source's end: offsets from here on are not read.
    stop: Option<i64>,
}

/// One record as the source read it, for the decoder to turn into `T`.
pub struct KafkaRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header names and values, in the order the producer wrote them.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

pub type KafkaDecoder<T> = Arc<dyn Fn(&KafkaRecord<'_>) -> T + Send + Sync>;

/// The split id of a partition, for per-partition watermarks.
pub fn split_id(topic: &str, partition: i32) -> u64 {
    ((crc32fast::hash(topic.as_bytes()) as u64) << 32) | partition as u32 as u64
}

/// The subtask that reads a partition: stable as partitions are added, and
/// consecutive partitions of a topic on consecutive subtasks.
pub fn owner_of(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let start = crc32fast::hash(topic.as_bytes()) as u64;
    ((start + partition.max(0) as u64) % parallelism.max(1) as u64) as u32
}

pub struct KafkaSource<T> {
    consumer: BaseConsumer<Watched>,
    config: KafkaConfig,
    subtask: u32,
    parallelism: u32,
    parts: Partitions,
    decode: KafkaDecoder<T>,
    /// Positions taken at barriers, committed to the group on completion.
    pending_commits: VecDeque<(u64, TopicPartitionList)>,
    next_discovery: Option<Instant>,
    /// When transient consumer errors were last logged (they come in bursts).
    last_warning: Option<Instant>,
    metrics: Arc<JobMetrics>,
    /// Partitions held back by watermark alignment, by split id.
    paused: Vec<u64>,
}

fn source_error(reason: impl std::fmt::Display) -> TaskError {
    TaskError::source("kafka", reason)
}

impl<T> KafkaSource<T> {
    /// Connects, finds this subtask's partitions and where to read each:
    /// from the checkpoint under `uid` when there is one, else from
    /// `startingOffsets`. Unreachable brokers and missing topics are errors
    /// naming the field.
    pub fn new(ctx: &TaskContext, uid: &str, config: KafkaConfig, decoder: KafkaDecoder<T>) -> Result<Self, TaskError> {
        let consumer: BaseConsumer<Watched> = config
            .client
            .config(ctx.subtask())
            // librdkafka refuses to assign partitions without a group id,
            // though an assigning consumer never joins the group: without
            // `groupId`, a name nothing is committed under.
            .set("group.id", config.group_id.as_deref().unwrap_or("weir-no-commits"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Watched::default())
            .map_err(|e| source_error(format!("{}: cannot create a consumer: {e}", config.client.at)))?;
        let mut source = KafkaSource {
            consumer,
            subtask: ctx.subtask(),
            parallelism: ctx.parallelism(),
            parts: Partitions::default(),
            decode: decoder,
            pending_commits: VecDeque::new(),
            next_discovery: None,
            last_warning: None,
            metrics: ctx.metrics.clone(),
            paused: Vec::new(),
            config,
        };
        let restored: Option<Vec<PartitionSplit>> = match &ctx.restored {
            Some(r) if r.has_state(uid) => {
                Some(r.list_round_robin(uid, 0, 1).iter().map(|e| decode(e)).collect::<Result<_, _>>()?)
            }
            _ => None,
        };
        source.reachable(STARTUP_TIMEOUT)?;
        let live = source.partitions(STARTUP_TIMEOUT)?;
        let mut fresh = TopicPartitionList::new();
        match restored {
            Some(splits) => {
                for split in splits {
                    if source.owns(&split.topic, split.partition) {
                        source.parts.insert(split);
                    }
                }
                // Partitions created after the checkpoint: read from their
                // beginning, or records written to them would be lost.
                if source.config.stopping.is_none() {
                    for (topic, partition) in live {
                        if source.owns(&topic, partition) && !source.parts.contains(&topic, partition) {
                            source.parts.insert(PartitionSplit { topic, partition, next: 0, stop: None });
                        }
                    }
                }
            }
            None => {
                for (topic, partition) in live {
                    if source.owns(&topic, partition) {
                        fresh.add_partition(&topic, partition);
                    }
                }
                source.start_positions(&fresh)?;
            }
        }
        source.assign_all()?;
        source.schedule_discovery();
        info!(
            subtask = source.subtask,
            partitions = source.parts.len(),
            "kafka source reads {}",
            source
                .parts
                .values()
                .map(|p| format!("{}/{}@{}", p.topic, p.partition, p.next))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(source)
    }

    fn owns(&self, topic: &str, partition: i32) -> bool {
        owner_of(topic, partition, self.parallelism) == self.subtask
    }

    fn schedule_discovery(&mut self) {
        let every = self.config.discovery_interval;
        self.next_discovery = (!every.is_zero() && self.config.stopping.is_none()).then(|| Instant::now() + every);
    }

    /// Waits for the brokers' metadata. Between attempts it serves the
    /// client's queue, where librdkafka puts its log lines, so that a
    /// failure names librdkafka's cause (refused credentials, a TLS error);
    /// only before any partition is assigned, when the queue holds no
    /// records that serving it would drop.
    fn reachable(&self, timeout: Duration) -> Result<(), TaskError> {
        let deadline = Instant::now() + timeout;
        loop {
            let step = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            match self.consumer.fetch_metadata(None, step) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    while self.consumer.poll(Duration::ZERO).is_some() {}
                    if Instant::now() >= deadline {
                        return Err(source_error(format!(
                            "{}.bootstrapServers: no metadata from `{}` within {timeout:?}: {e}{}",
                            self.config.client.at,
                            self.config.client.bootstrap_servers,
                            self.consumer.context().last_error.suffix()
                        )));
                    }
                }
            }
        }
    }

    /// Every partition of the configured topics that the brokers know now.
    fn partitions(&self, timeout: Duration) -> Result<Vec<(String, i32)>, TaskError> {
        let at = &self.config.client.at;
        let fetch = |topic: Option<&str>| {
            self.consumer.fetch_metadata(topic, timeout).map_err(|e| {
                source_error(format!(
                    "{at}.bootstrapServers: no metadata from `{}` within {timeout:?}: {e}",
                    self.config.client.bootstrap_servers
                ))
            })
        };
        let mut found = Vec::new();
        match &self.config.pattern {
            Some(pattern) => {
                let metadata = fetch(None)?;
                for t in metadata.topics() {
                    if t.error().is_none() && pattern.is_match(t.name()) {
                        found.extend(t.partitions().iter().map(|p| (t.name().to_string(), p.id())));
                    }
                }
            }
            None => {
                for (i, topic) in self.config.topics.iter().enumerate() {
                    let metadata = fetch(Some(topic))?;
                    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else { continue };
                    if let Some(err) = t.error() {
                        return Err(source_error(format!(
                            "{at}.topics[{i}]: topic `{topic}` cannot be read: {}",
                            RDKafkaErrorCode::from(err)
                        )));
                    }
                    found.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Resolves `startingOffsets` (and a bounded source's end) for the
    /// partitions of a job without a checkpoint to concrete offsets.
    fn start_positions(&mut self, tpl: &TopicPartitionList) -> Result<(), TaskError> {
        let at = self.config.client.at.clone();
        let timeout = STARTUP_TIMEOUT;
        let watermarks = |topic: &str, partition: i32| {
            self.consumer.fetch_watermarks(topic, partition, timeout).map_err(|e| {
                source_error(format!("{at}: cannot read the offsets of partition {topic}/{partition}: {e}"))
            })
        };
        let mut resolved: BTreeMap<(String, i32), i64> = BTreeMap::new();
        match self.config.starting {
            StartingOffsets::Earliest => {}
            StartingOffsets::Latest => {
                for e in tpl.elements() {
                    resolved.insert((e.topic().to_string(), e.partition()), watermarks(e.topic(), e.partition())?.1);
                }
            }
            StartingOffsets::Timestamp => {
                let mut query = TopicPartitionList::new();
                for e in tpl.elements() {
                    query
                        .add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(self.config.starting_timestamp_ms),
                        )
                        .map_err(|e| source_error(format!("{at}.startingTimestampMs: {e}")))?;
                }
                let answer = self
                    .consumer
                    .offsets_for_times(query, timeout)
                    .map_err(|e| source_error(format!("{at}.startingTimestampMs: cannot look offsets up: {e}")))?;
                for e in answer.elements() {
                    let offset = match e.offset() {
                        Offset::Offset(n) => n,
                        // No record at or after the time yet: the end.
                        _ => watermarks(e.topic(), e.partition())?.1,
                    };
                    resolved.insert((e.topic().to_string(), e.partition()), offset);
                }
            }
            StartingOffsets::GroupOffsets => {
                let committed = self.consumer.committed_offsets(tpl.clone(), timeout).map_err(|e| {
                    source_error(format!("{at}.groupId: cannot read the group's committed offsets: {e}"))
                })?;
                for e in committed.elements() {
                    if let Offset::Offset(n) = e.offset() {
                        resolved.insert((e.topic().to_string(), e.partition()), n);
                    }
                }
            }
        }
        for e in tpl.elements() {
            let key = (e.topic().to_string(), e.partition());
            let stop = match self.config.stopping {
                Some(StoppingOffsets::Latest) => Some(watermarks(e.topic(), e.partition())?.1),
                None => None,
            };
            let next = resolved.get(&key).copied().unwrap_or(0);
            self.parts.insert(PartitionSplit { topic: e.topic().to_string(), partition: e.partition(), next, stop });
        }
        Ok(())
    }

    fn assign_all(&mut self) -> Result<(), TaskError> {
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.values().filter(|p| !p.done()) {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next))
                .map_err(|e| source_error(format!("cannot assign {}/{}: {e}", p.topic, p.partition)))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| source_error(format!("{}: cannot assign partitions: {e}", self.config.client.at)))
    }

    /// Adds partitions that appeared since the last look; a failed look is
    /// logged and tried again next round.
    fn discover(&mut self) -> Result<(), TaskError> {
        self.schedule_discovery();
        let live = match self.partitions(DISCOVERY_TIMEOUT) {
            Ok(live) => live,
            Err(e) => {
                debug!("kafka partition discovery skipped: {e}");
                return Ok(());
            }
        };
        let mut added = TopicPartitionList::new();
        for (topic, partition) in live {
            if self.owns(&topic, partition) && !self.parts.contains(&topic, partition) {
                added
                    .add_partition_offset(&topic, partition, Offset::Offset(0))
                    .map_err(|e| source_error(format!("cannot assign {topic}/{partition}: {e}")))?;
                self.parts.insert(PartitionSplit { topic, partition, next: 0, stop: None });
            }
        }
        if added.count() > 0 {
            info!(subtask = self.subtask, "kafka source found {} new partition(s)", added.count());
            self.consumer
                .incremental_assign(&added)
                .map_err(|e| source_error(format!("{}: cannot assign new partitions: {e}", self.config.client.at)))?;
        }
        Ok(())
    }

    /// Records one consumer error: transient ones (brokers down, a timed
    /// out request) are librdkafka's to retry; the rest end the source.
    fn consumer_error(&mut self, error: KafkaError) -> Result<(), TaskError> {
        let code = error.rdkafka_error_code();
        let fatal = matches!(
            code,
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownPartition
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::Fatal
            )
        );
        if fatal {
            return Err(source_error(format!("{}: {error}", self.config.client.at)));
        }
        JobMetrics::add(&self.metrics.source_errors, 1);
        if self.last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            warn!("kafka source: {error} (librdkafka retries)");
            self.last_warning = Some(Instant::now());
        }
        Ok(())
    }

    /// Partitions a bounded source has read to their end; librdkafka's
    /// position also counts transaction markers, which no record carries.
    fn catch_up_positions(&mut self) {
        if self.config.stopping.is_none() {
            return;
        }
        let Ok(positions) = self.consumer.position() else { return };
        for e in positions.elements() {
            if let (Offset::Offset(n), Some(p)) = (e.offset(), self.parts.get_mut(e.topic(), e.partition())) {
                if p.stop.is_some_and(|stop| n >= stop && p.next < stop) {
                    p.next = n;
                }
            }
        }
    }
}

/// The record `msg` as `T`, and the partition's position moved past it;
/// no record for one before the position (fetched before a seek) or at or
/// past a bounded partition's end. The flag: this record finished its
/// bounded partition.
fn take<T>(parts: &mut Partitions, decode: &KafkaDecoder<T>, msg: &BorrowedMessage<'_>) -> (Option<T>, bool) {
    let Some(part) = parts.get_mut(msg.topic(), msg.partition()) else { return (None, false) };
    if msg.offset() < part.next || part.stop.is_some_and(|s| msg.offset() >= s) {
        return (None, false);
    }
    part.next = msg.offset() + 1;
    let finished = part.done();
    let headers = msg.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>()).unwrap_or_default();
    let record = KafkaRecord {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        key: msg.key(),
        value: msg.payload(),
        headers,
    };
    (Some(decode(&record)), finished)
}

/// The partitions a subtask owns, by topic and then partition, so that a
/// record's partition is found from its borrowed topic name without
/// allocating a key per record.
#[derive(Default)]
struct Partitions(BTreeMap<String, BTreeMap<i32, PartitionSplit>>);

impl Partitions {
    fn insert(&mut self, split: PartitionSplit) {
        self.0.entry(split.topic.clone()).or_default().insert(split.partition, split);
    }

    fn contains(&self, topic: &str, partition: i32) -> bool {
        self.0.get(topic).is_some_and(|p| p.contains_key(&partition))
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionSplit> {
        self.0.get_mut(topic)?.get_mut(&partition)
    }

    fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    fn values(&self) -> impl Iterator<Item = &PartitionSplit> {
        self.0.values().flat_map(BTreeMap::values)
    }
}

impl PartitionSplit {
    fn done(&self) -> bool {
        self.stop.is_some_and(|s| self.next >= s)
    }
}

impl<T: Send> Source<T> for KafkaSource<T> {
    fn poll_batch(&mut self, max: usize) -> Result<SourcePoll<T>, TaskError> {
        if self.next_discovery.is_some_and(|at| Instant::now() >= at) {
            self.discover()?;
        }
        let mut batch = Vec::new();
        while batch.len() < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => self.consumer_error(e)?,
                Some(Ok(msg)) => {
                    let (record, finished_now) = take(&mut self.parts, &self.decode, &msg);
                    batch.extend(record);
                    if finished_now {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(msg.topic(), msg.partition());
                        let _ = self.consumer.pause(&tpl);
                    }
                }
            }
        }
        if !batch.is_empty() {
            return Ok(SourcePoll::Batch(batch));
        }
        if self.config.stopping.is_some() {
            self.catch_up_positions();
            if self.parts.values().all(PartitionSplit::done) {
                return Ok(SourcePoll::Exhausted);
            }
        }
        Ok(SourcePoll::Idle(Instant::now() + IDLE))
    }

    fn active_splits(&self) -> Vec<u64> {
        self.parts.values().filter(|p| !p.done()).map(|p| split_id(&p.topic, p.partition)).collect()
    }

    /// librdkafka drops what it fetched for a paused partition and fetches
    /// again from the next offset not yet handed out when it resumes, so
    /// nothing is skipped (and `take` drops anything before `next`).
    fn pause_splits(&mut self, splits: &[u64]) -> Result<bool, TaskError> {
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for p in self.parts.values().filter(|p| !p.done()) {
            let id = split_id(&p.topic, p.partition);
            match (splits.contains(&id), self.paused.contains(&id)) {
                (true, false) => pause.add_partition(&p.topic, p.partition),
                (false, true) => resume.add_partition(&p.topic, p.partition),
                _ => continue,
            };
        }
        if pause.count() > 0 {
            self.consumer.pause(&pause).map_err(|e| source_error(format!("cannot hold back partitions: {e}")))?;
        }
        if resume.count() > 0 {
            self.consumer.resume(&resume).map_err(|e| source_error(format!("cannot resume partitions: {e}")))?;
        }
        self.paused = splits.to_vec();
        Ok(true)
    }

    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<Vec<u8>>, TaskError> {
        if self.config.group_id.is_some() {
            let mut tpl = TopicPartitionList::new();
            for p in self.parts.values() {
                let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
            }
            self.pending_commits.push_back((checkpoint, tpl));
        }
        Ok(self.parts.values().map(encode).collect::<Result<_, _>>()?)
    }

    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), TaskError> {
        let mut latest = None;
        while self.pending_commits.front().is_some_and(|(id, _)| *id <= checkpoint) {
            latest = self.pending_commits.pop_front();
        }
        if let Some((_, tpl)) = latest {
            // For monitoring only (lag, `GroupOffsets` of a new job): the
            // checkpoint holds the position, so a lost commit costs nothing.
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                debug!("kafka source: committing offsets of checkpoint {checkpoint} to the group failed: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_spread_evenly_and_keep_their_owner_as_partitions_are_added() {
        let owners: Vec<u32> = (0..8).map(|p| owner_of("orders", p, 4)).collect();
        for s in 0..4 {
            assert_eq!(owners.iter().filter(|o| **o == s).count(), 2, "{owners:?}");
        }
        let more: Vec<u32> = (0..12).map(|p| owner_of("orders", p, 4)).collect();
        assert_eq!(&more[..8], &owners[..], "adding partitions moves none of the old ones");
    }
}
