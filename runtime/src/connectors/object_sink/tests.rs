use serde_json::{json, Value};

use super::*;
use crate::manifest::{AvroCompression, AvroSpec, ColumnSpec, ColumnType, FileFormat, ParquetCompression, ParquetSpec};

const RUN_1: Fence = Fence { incarnation: 0x1111, epoch: 0xa };
const RUN_1_LATER: Fence = Fence { incarnation: 0x1111, epoch: 0xb };
const OTHER_JOB: Fence = Fence { incarnation: 0x2222, epoch: 0xa };

fn spec(dir: &std::path::Path, format: FileFormat) -> FileSinkSpec {
    let columns = vec![
        ColumnSpec { name: "key".into(), data_type: ColumnType::String, nullable: false },
        ColumnSpec { name: "n".into(), data_type: ColumnType::Int64, nullable: false },
    ];
    let parquet = (format == FileFormat::Parquet)
        .then(|| ParquetSpec { columns: columns.clone(), compression: ParquetCompression::Snappy });
    let avro = (format == FileFormat::Avro).then_some(AvroSpec { columns, compression: AvroCompression::Zstd });
    FileSinkSpec {
        path: format!("file://{}", dir.display()),
        format,
        roll_size: None,
        roll_interval: None,
        parquet,
        avro,
        csv: None,
        partition_by: Vec::new(),
    }
}

fn open_sink(spec: &FileSinkSpec, fence: Fence) -> ObjectSink<Value> {
    ObjectSink::new(ObjectSinkConfig::from_spec(spec, "sink").unwrap(), 0, fence)
}

fn rows(range: std::ops::Range<i64>) -> Vec<Value> {
    range.map(|n| json!({"key": format!("k{n}"), "n": n})).collect()
}

async fn committed(spec: &FileSinkSpec) -> Vec<i64> {
    let op = ObjectSinkConfig::from_spec(spec, "sink").unwrap().op;
    let mut n: Vec<i64> = read_committed(&op).await.unwrap().iter().map(|r| r["n"].as_i64().unwrap()).collect();
    n.sort();
    n
}

async fn committed_txn(sink: &mut ObjectSink<Value>, id: u64, records: Vec<Value>) -> ObjectTxn {
    let mut txn = sink.begin(id).await.unwrap();
    sink.write(&mut txn, records).await.unwrap();
    let txn = sink.pre_commit(txn).await.unwrap();
    sink.commit(&txn).await.unwrap();
    txn
}

/// Names in `dir` that do not start with `.`, sorted.
fn visible_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn parquet_parts_are_visible_only_after_commit_and_commit_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::Parquet);
    let mut sink = open_sink(&spec, RUN_1);
    let mut txn = sink.begin(1).await.unwrap();
    sink.write(&mut txn, rows(0..3)).await.unwrap();
    sink.write(&mut txn, rows(3..5)).await.unwrap();
    let txn = sink.pre_commit(txn).await.unwrap();
    assert_eq!(txn.parts.len(), 1);
    assert!(committed(&spec).await.is_empty(), "nothing is visible before commit");
    sink.commit(&txn).await.unwrap();
    sink.commit(&txn).await.unwrap();
    assert_eq!(committed(&spec).await, vec![0, 1, 2, 3, 4]);
    assert_eq!(visible_names(dir.path()), vec![format!("part-00000-0000000001-0000-{}.parquet", RUN_1.tag())]);
    assert!(visible_names(&dir.path().join(".weir-staging")).is_empty(), "staging is cleared");
}

#[tokio::test]
async fn parts_roll_by_size_and_every_one_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        FileSinkSpec { roll_size: Some(crate::manifest::ByteSize(1 << 20)), ..spec(dir.path(), FileFormat::JsonLines) };
    let mut sink = open_sink(&spec, RUN_1);
    let mut txn = sink.begin(7).await.unwrap();
    // About 40 bytes a record: 100k records are near 4 MiB.
    for chunk in 0..100 {
        sink.write(&mut txn, rows(chunk * 1000..(chunk + 1) * 1000)).await.unwrap();
    }
    let txn = sink.pre_commit(txn).await.unwrap();
    assert!((3..=5).contains(&txn.parts.len()), "{:?}", txn.parts);
    sink.commit(&txn).await.unwrap();
    assert_eq!(committed(&spec).await, (0..100_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn avro_parts_roll_by_size_and_read_back_as_the_records_written_with_their_schema() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        FileSinkSpec { roll_size: Some(crate::manifest::ByteSize(64 << 10)), ..spec(dir.path(), FileFormat::Avro) };
    let mut sink = open_sink(&spec, RUN_1);
    let mut txn = sink.begin(3).await.unwrap();
    // Compressed, a block of 1,000 records is a few KiB.
    for chunk in 0..100 {
        sink.write(&mut txn, rows(chunk * 1000..(chunk + 1) * 1000)).await.unwrap();
    }
    let txn = sink.pre_commit(txn).await.unwrap();
    assert!(txn.parts.len() > 1, "{:?}", txn.parts);
    assert!(txn.parts.iter().all(|p| p.ends_with(".avro")), "{:?}", txn.parts);
    sink.commit(&txn).await.unwrap();
    assert_eq!(committed(&spec).await, (0..100_000).collect::<Vec<_>>());
    // Each part is a whole object container file, the schema in its header.
    let first = dir.path().join(&txn.parts[0]);
    let bytes = std::fs::read(first).unwrap();
    assert_eq!(&bytes[..4], b"Obj\x01");
    let reader = arrow_avro::reader::ReaderBuilder::new().build(std::io::Cursor::new(bytes)).unwrap();
    let schema = reader.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["key", "n"]);
}

#[tokio::test(start_paused = true)]
async fn parts_roll_by_time_as_records_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FileSinkSpec {
        roll_interval: Some(crate::manifest::HumanDuration(Duration::from_secs(60))),
        ..spec(dir.path(), FileFormat::Parquet)
    };
    let mut sink = open_sink(&spec, RUN_1);
    let mut txn = sink.begin(1).await.unwrap();
    sink.write(&mut txn, rows(0..2)).await.unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    sink.write(&mut txn, rows(2..4)).await.unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    sink.write(&mut txn, rows(4..6)).await.unwrap();
    let txn = sink.pre_commit(txn).await.unwrap();
    assert_eq!(txn.parts.len(), 2, "{:?}", txn.parts);
    sink.commit(&txn).await.unwrap();
    assert_eq!(committed(&spec).await, vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_commit_cut_short_after_one_part_is_finished_by_committing_again() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        FileSinkSpec { roll_size: Some(crate::manifest::ByteSize(1 << 20)), ..spec(dir.path(), FileFormat::JsonLines) };
    let mut sink = open_sink(&spec, RUN_1);
    let mut txn = sink.begin(1).await.unwrap();
    sink.write(&mut txn, rows(0..60_000)).await.unwrap();
    sink.write(&mut txn, rows(60_000..61_000)).await.unwrap();
    let txn = sink.pre_commit(txn).await.unwrap();
    assert_eq!(txn.parts.len(), 2);
    sink.config.publish(&txn.parts[0]).await.unwrap();
    assert_eq!(committed(&spec).await, (0..60_000).collect::<Vec<_>>());
    // The next attempt commits the restored checkpoint's transaction again.
    let mut restarted = open_sink(&spec, RUN_1_LATER);
    restarted.commit(&txn).await.unwrap();
    restarted.recover(Some(1), std::slice::from_ref(&txn)).await.unwrap();
    assert_eq!(committed(&spec).await, (0..61_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_new_job_over_the_same_path_never_replaces_committed_output() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::Parquet);
    let mut old = open_sink(&spec, RUN_1);
    old.recover(None, &[]).await.unwrap();
    committed_txn(&mut old, 1, rows(0..2)).await;
    let mut new = open_sink(&spec, OTHER_JOB);
    new.recover(None, &[]).await.unwrap();
    committed_txn(&mut new, 1, rows(2..4)).await;
    assert_eq!(committed(&spec).await, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn recovery_removes_only_this_incarnations_uncovered_staged_parts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::JsonLines);
    let mut other = open_sink(&spec, OTHER_JOB);
    let mut foreign = other.begin(3).await.unwrap();
    other.write(&mut foreign, rows(9..10)).await.unwrap();
    let foreign = other.pre_commit(foreign).await.unwrap();

    let mut run = open_sink(&spec, RUN_1);
    committed_txn(&mut run, 1, rows(1..2)).await;
    let mut pending = run.begin(2).await.unwrap();
    run.write(&mut pending, rows(2..3)).await.unwrap();
    run.pre_commit(pending).await.unwrap();
    let mut open = run.begin(3).await.unwrap();
    run.write(&mut open, rows(3..4)).await.unwrap();

    let mut restarted = open_sink(&spec, RUN_1_LATER);
    restarted.recover(Some(1), &[]).await.unwrap();
    assert_eq!(committed(&spec).await, vec![1]);
    assert_eq!(
        visible_names(&dir.path().join(".weir-staging")),
        foreign.parts,
        "another incarnation's staged part is left alone"
    );
}

#[tokio::test]
async fn a_subtask_recovering_late_leaves_its_peers_parts_of_the_same_attempt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::JsonLines);
    let config = || ObjectSinkConfig::from_spec(&spec, "sink").unwrap();
    let mut peer: ObjectSink<Value> = ObjectSink::new(config(), 2, RUN_1_LATER);
    peer.recover(Some(14), &[]).await.unwrap();
    committed_txn(&mut peer, 15, rows(15..16)).await;
    let mut staged = peer.begin(16).await.unwrap();
    peer.write(&mut staged, rows(16..17)).await.unwrap();
    let staged = peer.pre_commit(staged).await.unwrap();

    let mut late: ObjectSink<Value> = ObjectSink::new(config(), 0, RUN_1_LATER);
    late.recover(Some(14), &[]).await.expect("a peer's committed part is not output ahead of the restore");
    peer.commit(&staged).await.expect("the peer's staged part is still there");
    assert_eq!(committed(&spec).await, vec![15, 16]);
}

#[tokio::test]
async fn falling_back_past_committed_parts_is_refused_naming_both_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::Parquet);
    let mut run = open_sink(&spec, RUN_1);
    committed_txn(&mut run, 4, rows(4..5)).await;
    committed_txn(&mut run, 5, rows(5..6)).await;
    let mut restarted = open_sink(&spec, RUN_1_LATER);
    let err = restarted.recover(Some(4), &[]).await.unwrap_err().to_string();
    assert!(err.contains("checkpoint 4") && err.contains("checkpoint 5"), "{err}");
    assert_eq!(committed(&spec).await, vec![4, 5], "nothing was retracted");

    restarted.retract_on_fallback = true;
    restarted.recover(Some(4), &[]).await.unwrap();
    assert_eq!(committed(&spec).await, vec![4], "retracted when the user opted in");
}

#[tokio::test]
async fn a_commit_whose_staged_part_vanished_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::Parquet);
    let mut run = open_sink(&spec, RUN_1);
    let ghost = ObjectTxn { id: 9, parts: vec![format!("part-00000-0000000009-0000-{}.parquet", RUN_1.tag())] };
    let err = run.commit(&ghost).await.unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

#[tokio::test]
async fn a_record_that_does_not_fit_fails_the_write_or_goes_to_the_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), FileFormat::Parquet);
    let mut run = open_sink(&spec, RUN_1);
    let mut txn = run.begin(1).await.unwrap();
    let bad = vec![json!({"key": "a", "n": 1}), json!({"key": "b", "n": "two"})];
    let err = run.write(&mut txn, bad.clone()).await.unwrap_err();
    assert!(matches!(err, TaskError::BadRecord { .. }), "{err}");
    assert!(err.to_string().contains(r#"{"key":"b","n":"two"}"#), "{err}");

    let rejects = Rejects::default();
    let mut run = open_sink(&spec, RUN_1_LATER).rejecting(Some(rejects.clone()));
    let mut txn = run.begin(1).await.unwrap();
    run.write(&mut txn, bad).await.unwrap();
    let txn = run.pre_commit(txn).await.unwrap();
    run.commit(&txn).await.unwrap();
    assert_eq!(committed(&spec).await, vec![1]);
    assert_eq!(rejects.lock().unwrap().len(), 1);
}

fn partitioned_sink(spec: &FileSinkSpec, fence: Fence) -> ObjectSink<Value> {
    open_sink(spec, fence).partitioned(Arc::new(ByFields::new(spec.partition_by.clone())))
}

fn shop_rows(range: std::ops::Range<i64>) -> Vec<Value> {
    range.map(|n| json!({"key": format!("k{n}"), "n": n, "shop": format!("s{}", n % 3)})).collect()
}

#[tokio::test]
async fn a_partitioned_sink_writes_each_record_once_under_its_directory_without_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FileSinkSpec { partition_by: vec!["shop".into()], ..spec(dir.path(), FileFormat::Parquet) };
    let mut sink = partitioned_sink(&spec, RUN_1);
    let mut txn = sink.begin(1).await.unwrap();
    sink.write(&mut txn, shop_rows(0..6)).await.unwrap();
    sink.write(&mut txn, shop_rows(6..9)).await.unwrap();
    let txn = sink.pre_commit(txn).await.unwrap();
    assert_eq!(txn.parts.len(), 3, "one part per directory: {:?}", txn.parts);
    assert!(committed(&spec).await.is_empty(), "nothing is visible before commit");
    sink.commit(&txn).await.unwrap();
    assert_eq!(visible_names(dir.path()), vec!["shop=s0", "shop=s1", "shop=s2"]);
    let op = ObjectSinkConfig::from_spec(&spec, "sink").unwrap().op;
    for row in read_committed(&op).await.unwrap() {
        let n = row["n"].as_i64().unwrap();
        assert_eq!(row["shop"], json!(format!("s{}", n % 3)), "{row}");
    }
    assert_eq!(committed(&spec).await, (0..9).collect::<Vec<_>>());
    let in_s1 = std::fs::read_dir(dir.path().join("shop=s1")).unwrap().count();
    assert_eq!(in_s1, 1);
}

#[tokio::test]
async fn recovery_finds_staged_and_committed_parts_inside_partition_directories() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FileSinkSpec { partition_by: vec!["shop".into()], ..spec(dir.path(), FileFormat::JsonLines) };
    let mut run = partitioned_sink(&spec, RUN_1);
    committed_txn(&mut run, 1, shop_rows(0..3)).await;
    committed_txn(&mut run, 2, shop_rows(3..6)).await;
    let mut pending = run.begin(3).await.unwrap();
    run.write(&mut pending, shop_rows(6..9)).await.unwrap();
    run.pre_commit(pending).await.unwrap();

    let mut restarted = partitioned_sink(&spec, RUN_1_LATER);
    let err = restarted.recover(Some(1), &[]).await.unwrap_err().to_string();
    assert!(err.contains("checkpoint 1") && err.contains("checkpoint 2"), "{err}");
    restarted.recover(Some(2), &[]).await.unwrap();
    let staged: usize = ["shop=s0", "shop=s1", "shop=s2"]
        .iter()
        .map(|d| std::fs::read_dir(dir.path().join(".weir-staging").join(d)).map_or(0, |e| e.count()))
        .sum();
    assert_eq!(staged, 0, "the uncovered staged parts are removed");
    assert_eq!(committed(&spec).await, (0..6).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_record_that_cannot_name_a_directory_fails_the_write_or_goes_to_the_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FileSinkSpec { partition_by: vec!["shop".into()], ..spec(dir.path(), FileFormat::JsonLines) };
    let bad = vec![json!({"n": 1, "shop": "a"}), json!({"n": 2, "shop": {"id": 7}})];
    let mut run = partitioned_sink(&spec, RUN_1);
    let mut txn = run.begin(1).await.unwrap();
    let err = run.write(&mut txn, bad.clone()).await.unwrap_err();
    assert!(matches!(err, TaskError::BadRecord { .. }), "{err}");
    assert!(err.to_string().contains("`shop` holds an object"), "{err}");

    let rejects = Rejects::default();
    let mut run = partitioned_sink(&spec, RUN_1_LATER).rejecting(Some(rejects.clone()));
    let mut txn = run.begin(1).await.unwrap();
    run.write(&mut txn, bad).await.unwrap();
    let txn = run.pre_commit(txn).await.unwrap();
    run.commit(&txn).await.unwrap();
    assert_eq!(committed(&spec).await, vec![1]);
    let rejects = rejects.lock().unwrap();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].raw, r#"{"n":2,"shop":{"id":7}}"#);
}

#[tokio::test]
async fn csv_parts_hold_the_named_columns_in_order_with_a_header_and_quoting() {
    let dir = tempfile::tempdir().unwrap();
    let csv = crate::manifest::CsvSinkSpec {
        columns: vec!["key".into(), "n".into(), "note".into()],
        header: true,
        delimiter: None,
    };
    let spec = FileSinkSpec { csv: Some(csv), ..spec(dir.path(), FileFormat::Csv) };
    let mut sink = open_sink(&spec, RUN_1);
    let records = vec![
        json!({"key": "a", "n": 1, "note": "plain", "extra": 9}),
        json!({"key": "b,c", "n": 2, "note": "say \"hi\"\nbye"}),
        json!({"key": "d", "n": 3, "note": null}),
        json!({"key": "e", "n": 4, "note": {"x": [1]}}),
    ];
    let txn = committed_txn(&mut sink, 1, records).await;
    assert_eq!(txn.parts.len(), 1);
    assert!(txn.parts[0].ends_with(".csv"), "{:?}", txn.parts);
    let text = std::fs::read_to_string(dir.path().join(&txn.parts[0])).unwrap();
    assert_eq!(text, "key,n,note\na,1,plain\n\"b,c\",2,\"say \"\"hi\"\"\nbye\"\nd,3,\ne,4,\"{\"\"x\"\":[1]}\"\n");
    assert_eq!(committed(&spec).await, vec![1, 2, 3, 4], "read back with numbers as numbers");
}
