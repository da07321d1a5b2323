//! What the Kafka suites share: where the brokers are, clients, topics,
//! producing generated records and reading a topic back.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use weir_runtime::connectors::generator::generated;

use super::common::run::KEYS;

pub fn broker() -> String {
    std::env::var("WEIR_TEST_KAFKA").expect("WEIR_TEST_KAFKA: scripts/test-kafka starts a broker")
}

pub fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker());
    c
}

pub fn create_topic(name: &str, partitions: i32) {
    create_topic_with(&client(), name, partitions)
}

pub fn create_topic_with(client: &ClientConfig, name: &str, partitions: i32) {
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
pub fn produce(topic: &str, partitions: i32, from: u64, to: u64, bad: Option<(u64, &str)>) {
    produce_with(&client(), topic, partitions, from, to, bad)
}

pub fn produce_with(client: &ClientConfig, topic: &str, partitions: i32, from: u64, to: u64, bad: Option<(u64, &str)>) {
    let bad = bad.map(|(after, value)| (after, value.as_bytes()));
    produce_encoded(client, topic, partitions, from, to, bad, &|row| row.to_string().into_bytes())
}

/// [`produce_with`], each record's value encoded by `encode` from its JSON.
pub fn produce_encoded(
    client: &ClientConfig,
    topic: &str,
    partitions: i32,
    from: u64,
    to: u64,
    bad: Option<(u64, &[u8])>,
    encode: &dyn Fn(serde_json::Value) -> Vec<u8>,
) {
    let before = records_in(client, topic, partitions);
    let producer: BaseProducer<Deliveries> =
        client.clone().set("linger.ms", "5").set("acks", "all").create_with_context(Deliveries::default()).unwrap();
    let send = |partition: i32, key: &str, payload: &[u8]| {
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
        let row = encode(json!({"seq": seq, "key": format!("k{key}"), "value": value, "ts": seq}));
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
pub struct Deliveries {
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
pub fn records_in(client: &ClientConfig, topic: &str, partitions: i32) -> u64 {
    let consumer: BaseConsumer = client.clone().set("isolation.level", "read_uncommitted").create().unwrap();
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1 as u64).sum()
}

pub fn source(topics: &str, extra: &str) -> String {
    format!("kafka: {{bootstrapServers: '{}', {topics}{extra}}}", broker())
}

pub fn file_sink(dir: &Path) -> String {
    format!("file: {{path: '{}/out'}}", dir.display())
}

pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Every record value in `topic` (all partitions), aborted ones included:
/// tansu's fetch does not filter them (see `committed_values` for what a
/// read_committed reader sees).
pub fn all_values(client: &ClientConfig, topic: &str, partitions: i32) -> Vec<serde_json::Value> {
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
