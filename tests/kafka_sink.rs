//! The Kafka sink against a real Kafka-protocol broker (tansu, started by
//! `scripts/test-kafka`): every update once without failures, and exactly
//! once in what a read_committed reader sees across `kill -9` of `weir
//! run` at each step of a commit.

#[path = "common/kafka.rs"]
mod brokers;
mod common;

use std::time::Duration;

use brokers::*;
use common::run::{finish, kill_nine_at, weir, Job, KEYS};

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
