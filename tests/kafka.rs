//! The Kafka source against a real Kafka-protocol broker (tansu, started by
//! `scripts/test-kafka`): `kill -9` of `weir run` at each step of a
//! checkpoint, a restore at another parallelism, a frozen broker, topics
//! that appear while the job runs; the output counts every record once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use weir_runtime::connectors::generator::generated;
use weir_runtime::verify::{check_exactly_once, committed_updates};

mod common;
#[path = "common/tls_front.rs"]
mod tls_front;

use common::run::{finish, kill_nine_at, weir, write_manifest, write_manifest_reading, Job, KEYS};

fn broker() -> String {
    std::env::var("WEIR_TEST_KAFKA").expect("WEIR_TEST_KAFKA: scripts/test-kafka starts a broker")
}

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker());
    c
}

fn create_topic(name: &str, partitions: i32) {
    create_topic_with(&client(), name, partitions)
}

fn create_topic_with(client: &ClientConfig, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client.create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&topic], &AdminOptions::new())).unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Generated records `from..to` (`{"seq", "key", "value"}`, as the
/// generator source makes them, and `ts`: `seq` as an event time in
/// milliseconds) spread over the topic's partitions; `bad`
/// values are written after record `bad_after` when given.
fn produce(topic: &str, partitions: i32, from: u64, to: u64, bad: Option<(u64, &str)>) {
    produce_with(&client(), topic, partitions, from, to, bad)
}

fn produce_with(client: &ClientConfig, topic: &str, partitions: i32, from: u64, to: u64, bad: Option<(u64, &str)>) {
    let before = records_in(client, topic, partitions);
    let producer: BaseProducer<Deliveries> =
        client.clone().set("linger.ms", "5").set("acks", "all").create_with_context(Deliveries::default()).unwrap();
    let send = |partition: i32, key: &str, payload: &str| {
        let mut record = BaseRecord::to(topic).partition(partition).key(key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
    };
    // tansu reports a partition's end as its last batch's first offset + 1:
    // each partition's last record goes in a batch of its own, so that
    // bounded sources (which stop at the end) read every record.
    let last_batched = to.saturating_sub(partitions as u64).max(from);
    for seq in from..to {
        let (key, value) = generated(seq, KEYS);
        let row = json!({"seq": seq, "key": format!("k{key}"), "value": value, "ts": seq}).to_string();
        send((seq % partitions as u64) as i32, &format!("k{key}"), &row);
        if bad.is_some_and(|(after, _)| after == seq) {
            send(1, "bad", bad.map(|b| b.1).unwrap_or_default());
        }
        if seq + 1 >= last_batched {
            producer.flush(Duration::from_secs(60)).unwrap();
        }
    }
    let failed = producer.context().failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} test records were not delivered, e.g. {:?}", failed.len(), failed.first());
    let written = records_in(client, topic, partitions) - before;
    assert_eq!(written, to - from + bad.map_or(0, |_| 1), "the broker did not take every test record");
}

/// Delivery reports of the test producer.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.lock().unwrap().push(e.to_string());
        }
    }
}

/// Records in the topic: the sum of its partitions' high watermarks.
fn records_in(client: &ClientConfig, topic: &str, partitions: i32) -> u64 {
    let consumer: BaseConsumer = client.clone().set("isolation.level", "read_uncommitted").create().unwrap();
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1 as u64).sum()
}

fn source(topics: &str, extra: &str) -> String {
    format!("kafka: {{bootstrapServers: '{}', {topics}{extra}}}", broker())
}

fn file_sink(dir: &Path) -> String {
    format!("file: {{path: '{}/out'}}", dir.display())
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn every_record_is_counted_once_across_kill_9_at_each_checkpoint_step_and_a_restore_at_new_parallelism() {
    const COUNT: u64 = 1_000_000;
    let topic = unique("counts");
    create_topic(&topic, 4);
    produce(&topic, 4, 0, COUNT, None);
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "kafka-kill", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let src = source(&format!("topics: [{topic}]"), ", stoppingOffsets: Latest, groupId: weir-kill");
    let manifest = write_manifest_reading(dir.path(), &job, &src, 2);

    let mut kills = 0;
    for stop_at in ["StateWritten:2", "BeforeCommit:2", "Committed:3", "PreCommitted:2"] {
        if kill_nine_at(&manifest, dir.path(), stop_at).is_err() {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 3, "the job ended after {kills} kills");
    let partial = committed_updates(&dir.path().join("out")).unwrap();
    let seen: u64 = partial.values().map(|u| u.len() as u64).sum();
    assert!(seen > 0 && seen < COUNT, "the kills came before any or after all output ({seen} updates)");

    // The same job restored at parallelism 3: partitions move to new owners.
    let manifest = write_manifest_reading(dir.path(), &job, &src, 3);
    let status = finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
    assert!(status.success(), "final run: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());
    if let Err(e) = check_exactly_once(&dir.path().join("out"), COUNT, KEYS) {
        panic!("output after {kills} kill -9 and a restore at parallelism 3: {e}");
    }
}

/// Waits until the committed windows are exactly those of the first
/// `records` records; panics with the job's log otherwise.
fn wait_for_windows(child: &mut std::process::Child, dir: &Path, records: u64, log: &str) {
    let want = weir_runtime::verify::expected_windows(records, KEYS, 1, 1_000, 1_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = weir_runtime::connectors::file_sink::read_committed(&dir.join("out")).unwrap_or_default();
        let check = weir_runtime::verify::check_windows_exactly_once(rows, &want);
        if check.is_ok() {
            return;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("windows of {records} records: {check:?}: {}", std::fs::read_to_string(dir.join(log)).unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn windows_close_per_partition_despite_an_empty_partition_and_stay_exact_across_kill_9_and_rescaling() {
    let topic = unique("windows");
    // Three partitions, records in the first two only: without idleness
    // the empty one would hold every window back forever.
    create_topic(&topic, 3);
    produce(&topic, 2, 0, 20_000, None);
    let dir = tempfile::tempdir().unwrap();
    let manifest = |parallelism: u32| {
        let yaml = format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: kafka-windows}}
spec:
  parallelism: {parallelism}
  restartStrategy: {{none: {{}}}}
  checkpoints: {{interval: 100ms, storage: "file://{dir}/checkpoints"}}
  pipeline:
    source: {{{source}}}
    eventTime: {{field: ts, idleTimeout: 1s}}
    steps:
      - keyBy: {{field: key}}
      - window: {{size: 1s, aggregate: {{count: true, sum: [value]}}}}
    sink: {{{sink}}}
"#,
            dir = dir.path().display(),
            source = source(&format!("topics: [{topic}]"), ""),
            sink = file_sink(dir.path()),
        );
        let path = dir.path().join(format!("windows-{parallelism}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    };
    // Each partition is in event-time order; the watermark is the least of
    // the two busy partitions' (19,998), so windows up to [18 s, 19 s) close.
    let mut child = weir(&manifest(2), dir.path(), "first.log");
    wait_for_windows(&mut child, dir.path(), 19_000, "first.log");
    child.kill().unwrap();
    child.wait().unwrap();

    // More records, then the job restored at parallelism 3: partitions and
    // open windows move to new owners.
    produce(&topic, 2, 20_000, 40_000, None);
    let mut child = weir(&manifest(3), dir.path(), "second.log");
    wait_for_windows(&mut child, dir.path(), 39_000, "second.log");
    child.kill().unwrap();
    child.wait().unwrap();
}

fn signal(pid: &str, sig: &str) {
    assert!(Command::new("kill").args([sig, pid]).status().unwrap().success(), "kill {sig} {pid}");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn a_broker_frozen_mid_job_delays_but_loses_and_repeats_nothing() {
    const COUNT: u64 = 200_000;
    let topic = unique("frozen");
    create_topic(&topic, 3);
    produce(&topic, 3, 0, COUNT, None);
    let dir = tempfile::tempdir().unwrap();
    let restart = "{fixedDelay: {attempts: 20, delay: 500ms}}";
    let job = Job { name: "kafka-frozen", count: 0, rate: 0, sink: file_sink(dir.path()), restart };
    let src = source(&format!("topics: [{topic}]"), ", stoppingOffsets: Latest");
    let manifest = write_manifest_reading(dir.path(), &job, &src, 2);

    let pid = std::env::var("WEIR_TEST_KAFKA_PID").expect("WEIR_TEST_KAFKA_PID");
    let mut child = weir(&manifest, dir.path(), "run.log");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the job ended before the broker froze");
    signal(&pid, "-STOP");
    std::thread::sleep(Duration::from_secs(4));
    signal(&pid, "-CONT");
    let status = finish(child, Duration::from_secs(120), dir.path(), "run.log");
    assert!(
        status.success(),
        "the job did not survive: {}",
        std::fs::read_to_string(dir.path().join("run.log")).unwrap()
    );
    if let Err(e) = check_exactly_once(&dir.path().join("out"), COUNT, KEYS) {
        panic!("output after a 4 s broker freeze: {e}");
    }
}

/// The committed offsets of `group` for the partitions of `topic`.
fn group_offsets(group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
    let consumer: BaseConsumer = client().set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements().iter().map(|e| e.offset()).collect()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn topics_created_while_the_job_runs_are_read_from_their_start_and_offsets_reach_the_group() {
    const COUNT: u64 = 60_000;
    let prefix = unique("discover");
    let first = format!("{prefix}-a");
    create_topic(&first, 2);
    produce(&first, 2, 0, COUNT / 2, None);
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "kafka-discover", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let group = format!("{prefix}-group");
    let src = source(
        &format!("topicPattern: '{prefix}-.*'"),
        &format!(", groupId: {group}, partitionDiscoveryInterval: 300ms"),
    );
    let manifest = write_manifest_reading(dir.path(), &job, &src, 2);
    let mut child = weir(&manifest, dir.path(), "run.log");

    let second = format!("{prefix}-b");
    std::thread::sleep(Duration::from_millis(1000));
    create_topic(&second, 3);
    produce(&second, 3, COUNT / 2, COUNT, None);

    let deadline = Instant::now() + Duration::from_secs(60);
    let out = dir.path().join("out");
    while check_exactly_once(&out, COUNT, KEYS).is_err() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "the records of both topics never all reached the output ({:?}): {}",
                check_exactly_once(&out, COUNT, KEYS),
                std::fs::read_to_string(dir.path().join("run.log")).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The group follows completed checkpoints: for monitoring, never for restore.
    let ends = |partitions: i32, records: u64| -> Vec<Offset> {
        (0..partitions as u64)
            .map(|p| Offset::Offset(((records + partitions as u64 - 1 - p) / partitions as u64) as i64))
            .collect()
    };
    let want = [ends(2, COUNT / 2), ends(3, COUNT / 2)].concat();
    while [group_offsets(&group, &first, 2), group_offsets(&group, &second, 3)].concat() != want {
        assert!(Instant::now() < deadline, "the group's offsets never reached the ends {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn a_value_that_is_not_json_fails_the_job_naming_its_partition_and_offset() {
    let topic = unique("bad");
    create_topic(&topic, 2);
    produce(&topic, 2, 0, 100, Some((40, "{not json")));
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "kafka-bad", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let src = source(&format!("topics: [{topic}]"), ", stoppingOffsets: Latest");
    let manifest = write_manifest_reading(dir.path(), &job, &src, 2);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(60), dir.path(), "run.log");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(!status.success(), "a bad record passed: {log}");
    // Partition 1 holds records 1, 3, ..., 39 (20 of them), then the bad one.
    assert!(log.contains(&format!("{topic}/1@20")) && log.contains("invalid JSON"), "{log}");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn a_missing_topic_or_an_unreachable_broker_stops_the_job_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "kafka-missing", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let src = source("topics: [surely-no-such-topic]", "");
    let manifest = write_manifest_reading(dir.path(), &job, &src, 1);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(60), dir.path(), "run.log");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("spec.pipeline.source.kafka.topics[0]: topic `surely-no-such-topic` cannot be read"), "{log}");

    let port = common::free_port();
    let src = format!("kafka: {{bootstrapServers: '127.0.0.1:{port}', topics: [t]}}");
    let manifest = write_manifest_reading(dir.path(), &job, &src, 1);
    let status = finish(weir(&manifest, dir.path(), "down.log"), Duration::from_secs(60), dir.path(), "down.log");
    let log = std::fs::read_to_string(dir.path().join("down.log")).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("spec.pipeline.source.kafka.bootstrapServers: no metadata from `127.0.0.1:{port}`")),
        "{log}"
    );
}

/// Every record value in `topic` (all partitions), aborted ones included:
/// tansu's fetch does not filter them (see `committed_values` for what a
/// read_committed reader sees).
fn all_values(client: &ClientConfig, topic: &str, partitions: i32) -> Vec<serde_json::Value> {
    use rdkafka::Message;
    let consumer: BaseConsumer = client.clone().set("group.id", "weir-test-reader").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0)).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                values.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    values
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn the_kafka_sink_writes_every_update_once_without_failures() {
    const COUNT: u64 = 50_000;
    let topic = unique("sink-plain");
    create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("kafka: {{bootstrapServers: '{}', topic: {topic}, key: [key]}}", broker());
    let job = Job { name: "kafka-sink-plain", count: COUNT, rate: 0, sink, restart: "{none: {}}" };
    let manifest = common::run::write_manifest(dir.path(), &job);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(120), dir.path(), "run.log");
    assert!(status.success(), "{}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
    let updates = weir_runtime::verify::updates_of(all_values(&client(), &topic, 3)).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("topic after a run without failures: {e}");
    }
}

/// What the broker stored in a topic, read batch by batch with its
/// transaction markers (the `kafka-protocol` crate over a plain socket):
/// tansu's fetch does not filter aborted transactions, so this is how a
/// read_committed reader's view is worked out.
mod stored {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
    use kafka_protocol::records::RecordBatchDecoder;

    const VERSION: i16 = 4;

    /// Values of a partition's committed transactional and plain records,
    /// and how many transactional records were aborted or left open.
    #[derive(Debug, Default)]
    pub struct Partition {
        /// Each committed value with where it was stored: producer id and
        /// epoch, offset, and the epoch of the marker that committed it.
        pub committed: Vec<(Bytes, String)>,
        pub aborted: usize,
        pub open: usize,
    }

    fn fetch(stream: &mut TcpStream, topic: &str, partition: i32, offset: i64, id: i32) -> Option<Bytes> {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("weir-test")));
        let request = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_isolation_level(0)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(8 << 20)])]);
        let mut body = BytesMut::new();
        header.encode(&mut body, FetchRequest::header_version(VERSION)).unwrap();
        request.encode(&mut body, VERSION).unwrap();
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        stream.write_all(&frame).unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).unwrap();
        let mut buf = Bytes::from(buf);
        let response_header = ResponseHeader::decode(&mut buf, FetchResponse::header_version(VERSION)).unwrap();
        assert_eq!(response_header.correlation_id, id);
        let response = FetchResponse::decode(&mut buf, VERSION).unwrap();
        let data = response.responses.into_iter().next()?.partitions.into_iter().next()?;
        assert_eq!(data.error_code, 0, "fetch of {topic}/{partition} at {offset}");
        data.records.filter(|r| r.has_remaining())
    }

    pub fn read(broker: &str, topic: &str, partition: i32) -> Partition {
        let mut stream = TcpStream::connect(broker).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let (mut offset, mut id) = (0i64, 0);
        let mut pending: BTreeMap<i64, Vec<(Bytes, String)>> = BTreeMap::new();
        let mut out = Partition::default();
        loop {
            id += 1;
            let Some(mut records) = fetch(&mut stream, topic, partition, offset, id) else { break };
            let mut progressed = false;
            for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
                for r in set.records {
                    if r.offset < offset {
                        continue;
                    }
                    offset = r.offset + 1;
                    progressed = true;
                    let origin = format!(
                        "partition {partition} offset {} producer {} epoch {}",
                        r.offset, r.producer_id, r.producer_epoch
                    );
                    match (r.transactional, r.control) {
                        (false, _) => out.committed.extend(r.value.map(|v| (v, origin))),
                        (true, false) => pending.entry(r.producer_id).or_default().extend(r.value.map(|v| (v, origin))),
                        (true, true) => {
                            // The control record's key: version (i16), then type: 0 abort, 1 commit.
                            let kind =
                                r.key.as_ref().filter(|k| k.len() >= 4).map(|k| i16::from_be_bytes([k[2], k[3]]));
                            let values = pending.remove(&r.producer_id).unwrap_or_default();
                            match kind {
                                Some(1) => out.committed.extend(values.into_iter().map(|(v, origin)| {
                                    (
                                        v,
                                        format!(
                                            "{origin}, committed at offset {} epoch {}",
                                            r.offset, r.producer_epoch
                                        ),
                                    )
                                })),
                                _ => out.aborted += values.len(),
                            }
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        out.open = pending.values().map(Vec::len).sum();
        out
    }
}

/// Every value a read_committed reader of `topic` gets, worked out from the
/// stored batches and markers, with where each was stored; and how many
/// were aborted and left open.
fn committed_values(topic: &str, partitions: i32) -> (Vec<(serde_json::Value, String)>, usize, usize) {
    let (mut values, mut aborted, mut open) = (Vec::new(), 0, 0);
    for p in 0..partitions {
        let stored = stored::read(&broker(), topic, p);
        values.extend(stored.committed.into_iter().map(|(v, origin)| (serde_json::from_slice(&v).unwrap(), origin)));
        aborted += stored.aborted;
        open += stored.open;
    }
    (values, aborted, open)
}

/// Where each copy of an update committed more than once was stored (at
/// most a few updates), for the failure message.
fn duplicates_stored(values: &[(serde_json::Value, String)]) -> String {
    let mut seen: std::collections::BTreeMap<(String, u64), Vec<&str>> = Default::default();
    for (v, origin) in values {
        if let (Some(key), Some(count)) = (v["key"].as_str(), v["count"].as_u64()) {
            seen.entry((key.to_string(), count)).or_default().push(origin);
        }
    }
    seen.iter()
        .filter(|(_, origins)| origins.len() > 1)
        .take(4)
        .map(|((key, count), origins)| format!("\n  {key} update {count}: {}", origins.join("; ")))
        .collect()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn the_kafka_sink_commits_every_update_exactly_once_across_kill_9_at_each_commit_step() {
    const COUNT: u64 = 200_000;
    let topic = unique("sink-kill");
    create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("kafka: {{bootstrapServers: '{}', topic: {topic}, key: [key]}}", broker());
    let job = Job { name: "kafka-sink-kill", count: COUNT, rate: 20_000, sink, restart: "{none: {}}" };
    let manifest = common::run::write_manifest(dir.path(), &job);
    // PreCommitted:1: a transaction open before the job's first checkpoint
    // completed, which the next run (with no checkpoint) must still abort.
    // KafkaTxnOpen:2: subtask 1's transaction open while subtask 0's commit
    // of the same checkpoint lands, whose marker the broker (tansu) then
    // holds back until subtask 1's transaction ends; the restore must not
    // read it before.
    for stop_at in [
        "PreCommitted:1",
        "PreCommitted:3",
        "BeforeCommit:2",
        "KafkaTxnOpen:2",
        "Committed:3",
        "BeforeCommit:4",
        "StateWritten:2",
    ] {
        if let Err(log) = kill_nine_at(&manifest, dir.path(), stop_at) {
            panic!("the job ended before {stop_at}: {log}");
        }
    }
    let kills = common::run::kill_nine_repeatedly(&manifest, dir.path(), &[700, 900]);
    let status = finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
    assert!(status.success(), "final run: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());

    let (values, aborted, open) = committed_values(&topic, 3);
    let stored = duplicates_stored(&values);
    let updates = weir_runtime::verify::updates_of(values.into_iter().map(|(v, _)| v).collect()).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        let kept = dir.keep();
        panic!(
            "committed records after {} kill -9 ({aborted} aborted, {open} open): {e}; logs in {}; stored as:{stored}",
            7 + kills,
            kept.display()
        );
    }
    assert_eq!(open, 0, "transactions left open");
}

/// The TLS broker `scripts/test-kafka` starts: the address it advertises
/// (where the test serves TLS) and the plaintext one behind it,
/// and the test certificates.
fn tls_broker() -> (String, String, tls_front::Pki) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}: scripts/test-kafka sets it"));
    let pki = tls_front::Pki::read(Path::new(&var("WEIR_TEST_KAFKA_CERTS")));
    (var("WEIR_TEST_KAFKA_TLS"), var("WEIR_TEST_KAFKA_TLS_BACKEND"), pki)
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn over_tls_with_client_certificates_the_source_and_sink_carry_every_update_once_and_a_wrong_ca_is_refused() {
    const COUNT: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let (front, backend, pki) = tls_broker();
    pki.serve(front.clone(), backend);
    let mut tls_client = ClientConfig::new();
    tls_client
        .set("bootstrap.servers", &front)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", pki.ca.to_str().unwrap())
        .set("ssl.certificate.location", pki.client_cert.to_str().unwrap())
        .set("ssl.key.location", pki.client_key.to_str().unwrap());
    let (input, output) = (unique("tls-in"), unique("tls-out"));
    create_topic_with(&tls_client, &input, 3);
    create_topic_with(&tls_client, &output, 3);
    produce_with(&tls_client, &input, 3, 0, COUNT, None);

    let tls = |ca: &Path| {
        format!(
            "tls: {{caFile: '{}', certFile: '{}', keyFile: '{}'}}",
            ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        )
    };
    let sink = format!("kafka: {{bootstrapServers: '{front}', topic: {output}, key: [key], {}}}", tls(&pki.ca));
    let job = Job { name: "kafka-tls", count: 0, rate: 0, sink, restart: "{none: {}}" };
    let src =
        format!("kafka: {{bootstrapServers: '{front}', topics: [{input}], stoppingOffsets: Latest, {}}}", tls(&pki.ca));
    let manifest = write_manifest_reading(dir.path(), &job, &src, 2);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(180), dir.path(), "run.log");
    assert!(status.success(), "{}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
    let updates = weir_runtime::verify::updates_of(all_values(&tls_client, &output, 3)).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("topic written over TLS: {e}");
    }

    // Trusting a CA that did not sign the broker's certificate: the job
    // stops at start instead of talking to a broker it cannot verify.
    let job = Job { name: "kafka-tls-wrong-ca", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let src = format!("kafka: {{bootstrapServers: '{front}', topics: [{input}], {}}}", tls(&pki.other_ca));
    let manifest = write_manifest_reading(dir.path(), &job, &src, 1);
    let status = finish(weir(&manifest, dir.path(), "wrong.log"), Duration::from_secs(90), dir.path(), "wrong.log");
    let log = std::fs::read_to_string(dir.path().join("wrong.log")).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("spec.pipeline.source.kafka.bootstrapServers: no metadata from"), "{log}");
}

/// The broker `scripts/test-kafka` starts requiring SASL authentication.
fn sasl_broker() -> String {
    std::env::var("WEIR_TEST_KAFKA_SASL").expect("WEIR_TEST_KAFKA_SASL: scripts/test-kafka sets it")
}

/// tansu 0.6 cannot hold a SCRAM user while it requires authentication
/// (users are created through the Kafka API, which it then refuses before
/// authentication, and its memory store forgets them on restart; without
/// `--authentication` it answers every SASL handshake "unsupported
/// mechanism"), so the way in cannot be tested here, only the refusal: the
/// job offers SCRAM-SHA-512 with the password from its file, and the
/// broker's answer reaches the job's error, naming the field.
#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn scram_credentials_the_broker_refuses_stop_the_source_and_the_sink_at_start_with_the_brokers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let address = sasl_broker();
    let password = dir.path().join("password");
    std::fs::write(&password, "not-a-user-s-password\n").unwrap();
    let auth = format!(
        "properties: {{security.protocol: SASL_PLAINTEXT, sasl.mechanism: SCRAM-SHA-512, sasl.username: weir}}, \
         passwordFile: '{}'",
        password.display()
    );
    let job = Job { name: "kafka-scram-source", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let src = format!("kafka: {{bootstrapServers: '{address}', topics: [orders], {auth}}}");
    let manifest = write_manifest_reading(dir.path(), &job, &src, 1);
    let status = finish(weir(&manifest, dir.path(), "source.log"), Duration::from_secs(90), dir.path(), "source.log");
    let log = std::fs::read_to_string(dir.path().join("source.log")).unwrap();
    assert!(!status.success(), "{log}");
    let last = log.lines().rev().find(|l| l.contains("giving up")).unwrap_or_else(|| panic!("{log}"));
    assert!(last.contains("spec.pipeline.source.kafka.bootstrapServers: no metadata from"), "{last}");
    assert!(last.contains("SASL SCRAM authentication failed"), "the broker's reason is in the error: {last}");
    assert!(!log.contains("not-a-user-s-password"), "the password is never logged: {log}");

    let sink = format!("kafka: {{bootstrapServers: '{address}', topic: counts, {auth}}}");
    let job = Job { name: "kafka-scram-sink", count: 1_000, rate: 0, sink, restart: "{none: {}}" };
    let manifest = write_manifest(dir.path(), &job);
    let status = finish(weir(&manifest, dir.path(), "sink.log"), Duration::from_secs(120), dir.path(), "sink.log");
    let log = std::fs::read_to_string(dir.path().join("sink.log")).unwrap();
    assert!(!status.success(), "{log}");
    let last = log.lines().rev().find(|l| l.contains("giving up")).unwrap_or_else(|| panic!("{log}"));
    assert!(last.contains("cannot initialize transactions"), "{last}");
    assert!(last.contains("SASL SCRAM authentication failed"), "the broker's reason is in the error: {last}");
}
