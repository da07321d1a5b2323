//! Every decoder that reads bytes from outside the process (network
//! frames, state files, `_metadata`, manifests) answers damaged input with
//! an error, never a panic. A seeded mutation fuzzer: valid encodings are
//! bit-flipped, truncated, spliced and stuffed with large length prefixes.
//! (cargo-fuzz needs a nightly toolchain, which these machines do not have.)

mod common;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::Rng;
use weir_runtime::checkpoint::CheckpointMetadata;
use weir_runtime::checkpoint::StateFileMetadata;
use weir_runtime::distributed::protocol::{self, ChannelKey, DataHello, Placement, TaskKey, ToCoordinator, ToWorker};
use weir_runtime::keygroup::KeyGroupRange;
use weir_runtime::manifest::StreamJob;
use weir_runtime::state::snapshot::OperatorSubtaskState;
use weir_runtime::task::message::{Barrier, Message};

const ROUNDS: usize = 20_000;

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = if b.is_empty() { 0 } else { rng.below(b.len() as u64) as usize };
        match rng.below(6) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 => b.truncate(at),
            2 => b.insert(at, rng.below(256) as u8),
            // A huge varint or length: decoders must not trust it.
            3 => b.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).for_each(drop),
            4 if !b.is_empty() => b[at] = rng.below(256) as u8,
            _ => {
                let from = rng.below(seed.len().max(1) as u64) as usize;
                b.extend_from_slice(&seed[from.min(seed.len())..]);
            }
        }
    }
    b
}

/// Runs `decode` on many mutations of each seed; any panic fails the test.
fn never_panics(name: &str, seeds: &[Vec<u8>], decode: impl Fn(&[u8])) {
    let mut rng = Rng(0x5eed_0000 ^ name.len() as u64);
    for seed in seeds {
        for round in 0..ROUNDS {
            let input = mutate(&mut rng, seed);
            if catch_unwind(AssertUnwindSafe(|| decode(&input))).is_err() {
                panic!("{name}: the decoder panicked in round {round} on {input:02x?}");
            }
        }
    }
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6123))
}

#[test]
fn network_frames_never_panic_the_decoder() {
    let register = ToCoordinator::Register { name: "w1".into(), data_addr: addr(), token: Some("t".into()) };
    let deploy = ToWorker::Deploy {
        fence: weir_runtime::job::fence::Fence { incarnation: 5, epoch: 3 },
        manifest: "apiVersion: weir.dev/v1alpha1".into(),
        restore: Some(7),
        restore_from: Some("file:///sp".into()),
        placement: Placement {
            assignments: vec![(TaskKey { stage: 0, subtask: 1 }, 0)],
            data_addrs: vec![addr(), addr()],
        },
        worker_index: 1,
        heartbeat_timeout_ms: 1000,
    };
    let hello =
        DataHello { token: Some("t".into()), channel: ChannelKey { epoch: 1, edge: 0, upstream: 2, downstream: 3 } };
    let batch: Message<serde_json::Value> =
        Message::Batch(vec![serde_json::json!({"key": "k1", "value": 5, "nested": [1.5, null, "x"]})]);
    let barrier: Message<serde_json::Value> = Message::Barrier(Barrier { id: 9, timestamp_ms: 1 });
    let seeds = |v: Vec<bytes::Bytes>| v.into_iter().map(|b| b.to_vec()).collect::<Vec<_>>();
    never_panics("ToCoordinator", &seeds(vec![protocol::encode(&register).unwrap()]), |b| {
        let _ = protocol::decode::<ToCoordinator>(b);
    });
    never_panics("ToWorker", &seeds(vec![protocol::encode(&deploy).unwrap()]), |b| {
        let _ = protocol::decode::<ToWorker>(b);
    });
    never_panics("DataHello", &seeds(vec![protocol::encode(&hello).unwrap()]), |b| {
        let _ = protocol::decode::<DataHello>(b);
    });
    never_panics(
        "Message",
        &seeds(vec![protocol::encode(&batch).unwrap(), protocol::encode(&barrier).unwrap()]),
        |b| {
            let _ = protocol::decode::<Message<serde_json::Value>>(b);
        },
    );
}

#[test]
fn state_files_and_metadata_never_panic_the_decoder() {
    let state = OperatorSubtaskState {
        keyed: vec![(3, b"per-key-group blob".to_vec()), (4, vec![0; 40])],
        list: vec![b"offset".to_vec()],
        union: vec![],
    };
    never_panics("OperatorSubtaskState", &[state.encode()], |b| {
        let _ = OperatorSubtaskState::decode(b);
    });

    let mut meta = CheckpointMetadata::new(42, "counts".into(), 128, 1, 2);
    meta.add_file(
        "steps-1-aggregate",
        2,
        StateFileMetadata {
            name: "steps-1-aggregate-0-0-63.state".into(),
            subtask: 0,
            key_groups: KeyGroupRange { start: 0, end: 63 },
            size: 100,
            crc32: 7,
            operator_state: None,
        },
    );
    let json = serde_json::to_vec(&meta).unwrap();
    never_panics("_metadata", &[json], |b| {
        let _ = serde_json::from_slice::<CheckpointMetadata>(b);
    });
}

#[test]
fn manifests_never_panic_the_parser_or_the_validation() {
    let seeds: Vec<Vec<u8>> = ["../examples/counts.yaml", "../examples/kubernetes/counts.yaml"]
        .iter()
        .map(|p| std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap())
        .collect();
    never_panics("manifest", &seeds, |b| {
        if let Ok(job) = StreamJob::from_yaml(&String::from_utf8_lossy(b)) {
            let _ = job.spec.problems();
            let _ = weir_runtime::pipeline::build(&job.spec);
        }
    });
}

#[test]
fn csv_files_never_panic_the_reader() {
    use weir_runtime::connectors::csv_records::CsvFormat;
    use weir_runtime::manifest::{CsvSpec, FieldSpec, FieldType};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    let path_text = path.display().to_string();
    let field = |name: &str, ty, nullable| FieldSpec { name: name.into(), ty, nullable };
    let fields = [
        field("a", FieldType::String, false),
        field("b", FieldType::Int64, true),
        field("c", FieldType::Float64, false),
        field("d", FieldType::Timestamp, true),
        field("e", FieldType::Boolean, true),
    ];
    let seed = b"e,d,c,b,a\ntrue,2026-12-06T00:00:00Z,2.5,7,\"x, \"\"y\"\"\nz\"\nfalse,17,1e3,,plain\n".to_vec();
    let formats = [true, false].map(|header| CsvFormat::new(&fields, Some(&CsvSpec { header, delimiter: None })));
    never_panics("csv", &[seed], |b| {
        std::fs::write(&path, b).unwrap();
        // With a header and without, from the start and from mid-record.
        let format = &formats[b.len() % 2];
        for offset in [0, b.len() as u64 / 2] {
            if let Ok((mut reader, _, _)) = format.open(&path_text, offset, 1) {
                while let Ok(Some(_)) = reader.next(format) {}
            }
        }
    });
}
