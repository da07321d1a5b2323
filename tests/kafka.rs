//! The Kafka source against a real Kafka-protocol broker (tansu, started by
//! `scripts/test-kafka`): `kill -9` of `weir run` at each step of a
//! checkpoint, a restore at another parallelism, a frozen broker, topics
//! that appear while the job runs; the output counts every record once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_runtime::verify::{check_exactly_once, committed_updates};

#[path = "common/kafka.rs"]
mod brokers;
mod common;
#[path = "common/tls_front.rs"]
mod tls_front;

use brokers::*;
use common::run::{finish, kill_nine_at, weir, write_manifest, write_manifest_reading, Job, KEYS};

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

/// How far (ms of event time) a record of one partition reached the sink
/// ahead of the newest of the other before it, at most, while the other
/// still had records to come (partition 1 is five times as fast in event
/// time); and each record's being there once.
fn partition_lead(rows: &[serde_json::Value], count: u64) -> i64 {
    let mut seen = vec![0u32; count as usize];
    let last = [count as i64 - 2, (count as i64 - 1) * 5];
    let (mut newest, mut lead) = ([0i64; 2], i64::MIN);
    for row in rows {
        let (seq, ts) = (row["seq"].as_u64().unwrap(), row["ts"].as_i64().unwrap());
        seen[seq as usize] += 1;
        let (this, other) = ((seq % 2) as usize, 1 - (seq % 2) as usize);
        newest[this] = newest[this].max(ts);
        if newest[other] < last[other] {
            lead = lead.max(ts - newest[other]);
        }
    }
    assert!(seen.iter().all(|n| *n == 1), "a record is missing or duplicated");
    lead
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn watermark_alignment_holds_a_partition_ahead_back_while_the_other_catches_up() {
    const COUNT: u64 = 40_000;
    let topic = unique("aligned");
    create_topic(&topic, 2);
    // Partition 0 is 40 s of event time, partition 1 (odd seqs) 200 s.
    let skewed = |mut row: serde_json::Value| {
        let seq = row["seq"].as_i64().unwrap_or_default();
        row["ts"] = serde_json::json!(if seq % 2 == 1 { seq * 5 } else { seq });
        row.to_string().into_bytes()
    };
    produce_encoded(&client(), &topic, 2, 0, COUNT, None, &skewed);
    let dir = tempfile::tempdir().unwrap();
    let run = |alignment: &str, name: &str| {
        let yaml = format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: kafka-aligned}}
spec:
  parallelism: 1
  restartStrategy: {{none: {{}}}}
  checkpoints: {{interval: 100ms, storage: "file://{dir}/{name}/checkpoints"}}
  pipeline:
    source: {{{source}}}
    eventTime: {{field: ts, idleTimeout: 1s{alignment}}}
    steps: []
    sink: {{file: {{path: "{dir}/{name}/out"}}}}
"#,
            dir = dir.path().display(),
            source = source(&format!("topics: [{topic}]"), ", stoppingOffsets: Latest"),
        );
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let log = format!("{name}.log");
        let status = finish(weir(&path, dir.path(), &log), Duration::from_secs(120), dir.path(), &log);
        assert!(status.success(), "{name}: {}", std::fs::read_to_string(dir.path().join(&log)).unwrap());
        let rows = weir_runtime::connectors::file_sink::read_committed(&dir.path().join(name).join("out")).unwrap();
        partition_lead(&rows, COUNT)
    };
    let free = run("", "free");
    assert!(free > 30_000, "without alignment one partition runs ahead: {free} ms");
    // 2 s of drift and a batch of partition 1 (1,024 records, 10 s) at most.
    let lead = run(", alignment: {maxDrift: 2s, updateInterval: 100ms}", "aligned");
    println!("one partition ahead of the other: {free} ms without alignment, {lead} ms with it");
    assert!(lead < 15_000, "a partition ran {lead} ms ahead of the other");
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

/// The generated records' Avro schema, as a producer would register it.
const ORDER_SCHEMA: &str = r#"{"type": "record", "name": "Generated", "namespace": "weir.test", "fields": [
  {"name": "seq", "type": "long"},
  {"name": "key", "type": "string"},
  {"name": "value", "type": "long"},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
]}"#;

/// A generated record as Confluent's serializer writes it, with schema `id`
/// (encoded by apache-avro, not by the arrow-avro that Weir reads with).
fn confluent_avro(id: u32) -> impl Fn(serde_json::Value) -> Vec<u8> {
    use apache_avro::types::Value;
    let schema = apache_avro::Schema::parse_str(ORDER_SCHEMA).unwrap();
    move |row| {
        let record = Value::Record(vec![
            ("seq".into(), Value::Long(row["seq"].as_i64().unwrap())),
            ("key".into(), Value::String(row["key"].as_str().unwrap().into())),
            ("value".into(), Value::Long(row["value"].as_i64().unwrap())),
            ("ts".into(), Value::TimestampMillis(row["ts"].as_i64().unwrap())),
        ]);
        let mut framed = vec![0];
        framed.extend(id.to_be_bytes());
        framed.extend(apache_avro::to_avro_datum(&schema, record).unwrap());
        framed
    }
}

fn avro_source(topic: &str, id: u32, extra: &str) -> String {
    let schema = ORDER_SCHEMA.replace('\n', " ").replace('\'', "''");
    source(&format!("topics: [{topic}], format: Avro, avro: {{schema: '{schema}', confluentSchemaId: {id}}}"), extra)
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn avro_values_in_confluent_framing_are_counted_once_across_kill_9_at_checkpoint_steps() {
    const COUNT: u64 = 200_000;
    let topic = unique("avro-counts");
    create_topic(&topic, 3);
    produce_encoded(&client(), &topic, 3, 0, COUNT, None, &confluent_avro(3));
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "kafka-avro", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let manifest = write_manifest_reading(dir.path(), &job, &avro_source(&topic, 3, ", stoppingOffsets: Latest"), 2);
    let mut kills = 0;
    for stop_at in ["StateWritten:2", "BeforeCommit:3"] {
        if kill_nine_at(&manifest, dir.path(), stop_at).is_err() {
            break;
        }
        kills += 1;
    }
    assert_eq!(kills, 2, "the job ended before both kills");
    let partial = committed_updates(&dir.path().join("out")).unwrap();
    let seen: u64 = partial.values().map(|u| u.len() as u64).sum();
    assert!(seen > 0 && seen < COUNT, "the kills came before any or after all output ({seen} updates)");
    let status = finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
    assert!(status.success(), "final run: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());
    if let Err(e) = check_exactly_once(&dir.path().join("out"), COUNT, KEYS) {
        panic!("Avro values after {kills} kill -9: {e}");
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test-kafka starts one and runs these"]
fn an_avro_value_with_another_schema_id_fails_the_job_naming_its_partition_offset_and_the_ids() {
    let topic = unique("avro-bad");
    create_topic(&topic, 2);
    let other = confluent_avro(4)(serde_json::json!({"seq": 0, "key": "k0", "value": 1, "ts": 0}));
    produce_encoded(&client(), &topic, 2, 0, 100, Some((40, &other)), &confluent_avro(3));
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "kafka-avro-bad", count: 0, rate: 0, sink: file_sink(dir.path()), restart: "{none: {}}" };
    let manifest = write_manifest_reading(dir.path(), &job, &avro_source(&topic, 3, ", stoppingOffsets: Latest"), 2);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(60), dir.path(), "run.log");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(!status.success(), "a value of another schema passed: {log}");
    assert!(log.contains(&format!("{topic}/1@20")), "{log}");
    assert!(log.contains("written with schema id 4, but the manifest's schema has id 3"), "{log}");
}
