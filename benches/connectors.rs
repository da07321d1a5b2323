//! Connector throughput beside the plain client doing the same work, in one
//! run on one machine (`scripts/bench-connectors` starts the broker and the
//! database and runs this):
//!
//! - Kafka source: `weir run` (Kafka -> discard, JSON decoded, exactly-once
//!   checkpoints every second) beside a librdkafka consumer loop that reads
//!   and decodes the same records;
//! - Kafka sink: `weir run` (generator -> Kafka, at-least-once and
//!   exactly-once) beside a librdkafka producer loop sending the same JSON;
//! - Kafka -> Kafka: `weir run` exactly-once beside a consume-and-produce loop;
//! - PostgreSQL sink: `weir run` (generator -> table, two-phase commit)
//!   beside `COPY` of the same rows through psql.
//!
//! Weir's times are whole `weir run` processes (start included, about
//! 50 ms); the loops' are their own. Parallelism 1 everywhere, so both
//! sides use one pipeline. Records: `WEIR_BENCH_RECORDS` (default 1,000,000).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: run scripts/bench-connectors"))
}

/// Record `seq` as the generator makes it.
fn record(seq: u64) -> (String, String) {
    let (key, value) = weir_runtime::connectors::generator::generated(seq, 1000);
    let key = format!("k{key}");
    let json = serde_json::json!({"seq": seq, "key": key, "value": value}).to_string();
    (key, json)
}

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .create()
        .expect("producer")
}

/// Sends every record, waiting for room when the queue is full.
fn send(p: &BaseProducer, topic: &str, key: &str, value: &str) {
    let mut r = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((_, back)) => {
                p.poll(Duration::from_millis(1));
                r = back;
            }
        }
    }
}

/// The plain producer: `records` generated records into `topic`.
fn plain_produce(brokers: &str, topic: &str, records: u64) -> Duration {
    let p = producer(brokers);
    let started = Instant::now();
    for seq in 0..records {
        let (key, json) = record(seq);
        send(&p, topic, &key, &json);
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let took = started.elapsed();
    // One more record in a batch of its own: the broker used here (tansu)
    // reports a partition's end as its last batch's first offset + 1, so
    // a reader bounded by it would stop short of a bigger last batch.
    send(&p, topic, "end", "{\"seq\": -1, \"key\": \"end\", \"value\": 0}");
    p.flush(Duration::from_secs(10)).expect("flush");
    took
}

fn consumer(brokers: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-bench-plain")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// The plain consumer: reads `records` from `topic` and decodes each as
/// JSON; with `to`, sends each on (at least once).
fn plain_consume(brokers: &str, topic: &str, partitions: i32, records: u64, to: Option<&str>) -> Duration {
    let c = consumer(brokers, topic, partitions);
    let p = to.map(|_| producer(brokers));
    let started = Instant::now();
    let mut seen = 0;
    while seen < records {
        let Some(m) = c.poll(Duration::from_millis(100)) else { continue };
        let m = m.expect("message");
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
        if let (Some(p), Some(to)) = (&p, to) {
            send(p, to, value["key"].as_str().unwrap_or(""), &value.to_string());
        }
        seen += 1;
    }
    if let Some(p) = p {
        p.flush(Duration::from_secs(120)).expect("flush");
    }
    started.elapsed()
}

fn create_topic(tansu: &str, brokers: &str, name: &str, partitions: i32) {
    let status = Command::new(tansu)
        .args([
            "topic",
            "create",
            "--broker",
            &format!("tcp://{brokers}"),
            "--partitions",
            &partitions.to_string(),
            name,
        ])
        .output()
        .expect("tansu topic create");
    assert!(status.status.success(), "cannot create topic {name}: {}", String::from_utf8_lossy(&status.stderr));
}

/// Runs `weir run` on a manifest with `source` and `sink` (YAML after
/// `source:` and `sink:`) and no steps; its wall time.
fn weir_run(dir: &Path, name: &str, source: &str, sink: &str) -> Duration {
    weir_run_steps(dir, name, source, "[]", sink)
}

fn weir_run_steps(dir: &Path, name: &str, source: &str, steps: &str, sink: &str) -> Duration {
    let manifest = dir.join(format!("{name}.yaml"));
    let yaml = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: {name}}}\nspec:\n  parallelism: 1\n  \
         checkpoints: {{interval: 1s, storage: 'file://{}/chk'}}\n  pipeline:\n    source: {source}\n    \
         steps: {steps}\n    sink: {sink}\n",
        dir.display()
    );
    std::fs::write(&manifest, yaml).expect("manifest");
    let weir = std::env::var("WEIR_BIN")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/weir").into());
    let started = Instant::now();
    let out = Command::new(weir).arg("run").arg(&manifest).current_dir(dir).output().expect("weir run");
    let took = started.elapsed();
    assert!(out.status.success(), "weir run {name}: {}", String::from_utf8_lossy(&out.stderr));
    took
}

fn psql(sql: &str) -> String {
    let out =
        Command::new("psql").args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rate(records: u64, took: Duration) -> f64 {
    records as f64 / took.as_secs_f64()
}

fn row(what: &str, records: u64, weir: Duration, plain: Duration, baseline: &str) {
    let (w, p) = (rate(records, weir), rate(records, plain));
    println!("| {what} | {:.0}k/s | {:.0}k/s ({baseline}) | {:.2} |", w / 1000.0, p / 1000.0, w / p);
}

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let brokers = env("WEIR_BENCH_KAFKA");
    let tansu = env("WEIR_BENCH_TANSU");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    for (topic, partitions) in [("in", 1), ("sink-alo", 1), ("sink-eo", 1), ("k2k-plain", 1), ("k2k-eo", 1)] {
        create_topic(&tansu, &brokers, topic, partitions);
    }
    let kafka_sink = |topic: &str, delivery: &str| {
        format!("{{kafka: {{bootstrapServers: '{brokers}', topic: {topic}, key: [key], delivery: {delivery}}}}}")
    };
    let generator = format!("{{generator: {{keys: 1000, count: {records}}}}}");
    let kafka_source = format!(
        "{{kafka: {{bootstrapServers: '{brokers}', topics: [in], startingOffsets: Earliest, stoppingOffsets: Latest}}}}"
    );

    println!("{records} records of about 50 bytes of JSON, parallelism 1, checkpoints every 1 s\n");
    println!("| workload | Weir | plain client | Weir / plain |");
    println!("|---|---|---|---|");
    let produced = plain_produce(&brokers, "in", records);
    let alo = weir_run(d, "sink-alo", &generator, &kafka_sink("sink-alo", "AtLeastOnce"));
    row("Kafka sink, at least once", records, alo, produced, "librdkafka producer loop");
    let eo = weir_run(d, "sink-eo", &generator, &kafka_sink("sink-eo", "ExactlyOnce"));
    row("Kafka sink, exactly once", records, eo, produced, "librdkafka producer loop");

    let consumed = plain_consume(&brokers, "in", 1, records, None);
    let source = weir_run(d, "source", &kafka_source, "{discard: {}}");
    row("Kafka source -> discard", records, source, consumed, "librdkafka consumer loop + JSON decode");

    let copied = plain_consume(&brokers, "in", 1, records, Some("k2k-plain"));
    let k2k = weir_run(d, "k2k", &kafka_source, &kafka_sink("k2k-eo", "ExactlyOnce"));
    row("Kafka -> Kafka, exactly once", records, k2k, copied, "consume + produce loop, at least once");

    psql("DROP TABLE IF EXISTS bench_rows; CREATE TABLE bench_rows (seq bigint, key text, value bigint)");
    let connection =
        format!("host={} port={} user={} dbname={}", env("PGHOST"), env("PGPORT"), env("PGUSER"), env("PGDATABASE"));
    let pg_sink = format!("{{postgres: {{connection: '{connection}', table: bench_rows}}}}");
    let copy = copy_rows(d, records, 1);
    let pg = weir_run(d, "pg", &generator, &pg_sink);
    assert_eq!(psql("SELECT count(*) FROM bench_rows"), records.to_string(), "every row once");
    row("PostgreSQL sink, two-phase commit", records, pg, copy, "psql \\copy of the same rows");

    // A selective filter leaves input batches of about 64 rows: the sink
    // gathers them rather than sending a statement per batch.
    psql("TRUNCATE bench_rows");
    let kept = records.div_ceil(16);
    let copy = copy_rows(d, records, 16);
    let filter = "[{filter: 'seq % 16 = 0'}]";
    let pg = weir_run_steps(d, "pg-filtered", &generator, filter, &pg_sink);
    assert_eq!(psql("SELECT count(*) FROM bench_rows"), kept.to_string(), "every kept row once");
    row("PostgreSQL sink after a filter keeping 1 in 16", kept, pg, copy, "psql \\copy of the kept rows");
}

/// How long `psql \\copy` of every `every`th generated row takes; leaves
/// `bench_rows` empty.
fn copy_rows(d: &Path, records: u64, every: u64) -> Duration {
    let csv = d.join("rows.csv");
    let text: String = (0..records)
        .step_by(every as usize)
        .map(|seq| {
            let (key, value) = weir_runtime::connectors::generator::generated(seq, 1000);
            format!("{seq},k{key},{value}\n")
        })
        .collect();
    std::fs::write(&csv, text).expect("csv");
    let started = Instant::now();
    psql(&format!("\\copy bench_rows FROM '{}' WITH (FORMAT csv)", csv.display()));
    let copy = started.elapsed();
    psql("TRUNCATE bench_rows");
    copy
}
