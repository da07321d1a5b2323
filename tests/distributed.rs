//! A job across real processes on loopback: one coordinator, three
//! workers. Workers and the coordinator are killed (`kill -9`) or frozen
//! (`SIGSTOP`, a partition-like fault); the committed output still holds
//! every record exactly once and checkpoint ids never go backwards.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, KEYS};
use serde_json::Value;
use weir_runtime::connectors::file_sink::read_committed;
use weir_runtime::connectors::generator::generated;

fn never_backwards(ids: &[u64]) {
    for w in ids.windows(2) {
        assert!(w[1] >= w[0], "checkpoint id went back from {} to {}: {ids:?}", w[0], w[1]);
    }
}

#[test]
fn killing_a_worker_mid_checkpoint_then_the_coordinator_keeps_output_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 600_000, 100_000);
    let coordinator = c.coordinator();
    let workers: Vec<usize> = ["w1", "w2", "w3"].iter().map(|n| c.worker(n)).collect();
    let mut ids = Vec::new();

    c.wait_for("two checkpoints and one in flight", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) >= 2 && chk["inProgress"].as_u64().unwrap_or(0) > 0
    });
    c.kill(workers[1]);
    let killed_at = Instant::now();
    c.wait_for("the loss to be noticed", &mut ids, Duration::from_secs(15), |job, _| {
        job["restarts"].as_u64().unwrap_or(0) >= 1
    });
    c.worker("w4");
    c.wait_for("recovery with the replacement worker", &mut ids, Duration::from_secs(30), |job, _| {
        job["state"] == "Running" && job["lastRecovery"]["recoveryMs"].is_u64()
    });
    let job = c.get("/v1/job").unwrap();
    println!(
        "worker kill: restored from checkpoint {}, recovery (replacement registered -> first record) {} ms, {} ms after the kill",
        job["restoredFrom"],
        job["lastRecovery"]["recoveryMs"],
        killed_at.elapsed().as_millis()
    );
    assert!(job["restoredFrom"].is_u64(), "restored from a checkpoint: {job}");
    let before = ids.last().copied().unwrap_or(0);
    c.wait_for("a checkpoint after the restore", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) > before
    });

    c.kill(coordinator);
    let second = c.coordinator();
    c.wait_for("the new coordinator to take the workers back", &mut ids, Duration::from_secs(30), |job, _| {
        job["state"] == "Running"
    });
    let job = c.get("/v1/job").unwrap();
    println!("coordinator kill: new coordinator restored from checkpoint {}", job["restoredFrom"]);
    assert!(job["restoredFrom"].as_u64().unwrap_or(0) >= before, "{job}");
    c.wait_for("a checkpoint from the new coordinator", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().is_some()
    });
    assert!(c.wait_exit(second, Duration::from_secs(60)), "the job finished cleanly");
    never_backwards(&ids);
    c.assert_exact();
}

#[test]
fn aligned_window_results_over_the_network_stay_exact_when_a_worker_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 300_000, 100_000);
    let yaml = std::fs::read_to_string(&c.manifest).unwrap();
    let windowed = yaml
        .replace("splits: 6}", "splits: 6, timestampStep: 1ms}")
        // Watermark alignment too: every source subtask's watermark goes
        // to the coordinator and the least comes back over the network.
        .replace(
            "    steps:",
            "    eventTime: {field: ts, maxOutOfOrderness: 10s, idleTimeout: 5s, alignment: {maxDrift: 5s, \
             updateInterval: 100ms}}\n    steps:",
        )
        .replace(
            "- aggregate: {count: true, sum: [value]}",
            "- window: {size: 10s, aggregate: {count: true, sum: [value]}}",
        );
    std::fs::write(&c.manifest, windowed).unwrap();
    let coordinator = c.coordinator();
    let workers: Vec<usize> = ["w1", "w2", "w3"].iter().map(|n| c.worker(n)).collect();
    let mut ids = Vec::new();
    c.wait_for("two checkpoints", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) >= 2
    });
    c.kill(workers[0]);
    c.wait_for("the loss to be noticed", &mut ids, Duration::from_secs(15), |job, _| {
        job["restarts"].as_u64().unwrap_or(0) >= 1
    });
    c.worker("w4");
    assert!(c.wait_exit(coordinator, Duration::from_secs(90)), "the job finished cleanly");
    never_backwards(&ids);
    let rows = read_committed(&dir.path().join("out")).unwrap();
    let want = weir_runtime::verify::expected_windows(300_000, KEYS, 1, 10_000, 10_000);
    if let Err(e) = weir_runtime::verify::check_windows_exactly_once(rows, &want) {
        panic!("{e}; see {}", dir.keep().display());
    }
}

/// The epoch of the last attempt a worker deployed, from its log.
fn last_deployed_epoch(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    let at = text.rfind("deployed attempt ").expect("the worker deployed an attempt");
    text[at + "deployed attempt ".len()..][..16].to_string()
}

#[test]
fn a_frozen_worker_is_replaced_and_once_resumed_writes_nothing_the_job_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 500_000, 60_000);
    let coordinator = c.coordinator();
    let workers: Vec<usize> = ["w1", "w2", "w3"].iter().map(|n| c.worker(n)).collect();
    let mut ids = Vec::new();
    c.wait_for("two checkpoints", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) >= 2
    });
    // The process stays, its connections stay open, it just stops answering.
    c.signal(workers[2], "STOP");
    let frozen_at = Instant::now();
    let stale = last_deployed_epoch(&dir.path().join("w3.log"));
    c.wait_for("the heartbeat timeout", &mut ids, Duration::from_secs(15), |job, _| {
        job["restarts"].as_u64().unwrap_or(0) >= 1
    });
    println!("frozen worker noticed after {} ms", frozen_at.elapsed().as_millis());
    c.worker("w4");
    c.wait_for("recovery on the replacement", &mut ids, Duration::from_secs(30), |job, _| {
        job["state"] == "Running" && job["lastRecovery"]["recoveryMs"].is_u64()
    });
    let job = c.get("/v1/job").unwrap();
    let restored = job["restoredFrom"].as_u64().expect("the recovery restored a checkpoint");
    assert_ne!(job["epoch"].as_str().unwrap(), stale, "the new attempt has a new epoch");
    // The stale worker wakes up while the job runs on without it.
    c.signal(workers[2], "CONT");
    let start = Instant::now();
    let fenced = loop {
        let log = std::fs::read_to_string(dir.path().join("w3.log")).unwrap();
        if let Some(line) = log.lines().find(|l| l.contains("fencing myself off") || l.contains("lost the coordinator"))
        {
            println!("stale worker: {line}");
            break true;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(fenced, "the resumed worker dropped its subtasks; see {}", dir.path().display());
    assert!(c.wait_exit(coordinator, Duration::from_secs(90)), "the job finished cleanly");
    c.kill(workers[2]);
    never_backwards(&ids);
    c.assert_exact();

    // Nothing of the stale epoch reached a completed checkpoint...
    for entry in std::fs::read_dir(dir.path().join("chk/default/spread")).unwrap() {
        let meta = entry.unwrap().path().join("_metadata");
        if let Ok(text) = std::fs::read_to_string(&meta) {
            assert!(!text.contains(&stale), "{} lists a state file of the stale epoch {stale}", meta.display());
        }
    }
    // ...and it committed no output beyond the checkpoint the others restored.
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && name.ends_with(&format!("-{stale}.jsonl")) {
            let txn: u64 = name.split('-').nth(2).unwrap().parse().unwrap();
            assert!(txn <= restored, "{name}: committed by the stale worker after checkpoint {restored}");
        }
    }
}

#[test]
fn a_frozen_coordinator_and_its_workers_are_superseded_and_once_resumed_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Cluster::new(dir.path(), 600_000, 60_000);
    let coordinator = old.coordinator();
    let workers: Vec<usize> = ["w1", "w2", "w3"].iter().map(|n| old.worker(n)).collect();
    let mut ids = Vec::new();
    old.wait_for("two checkpoints", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) >= 2
    });
    // A node cut off from the cluster: its coordinator and workers stop
    // together, keep their connections and their state, and the job is
    // started again elsewhere on the same checkpoint storage.
    let cut_off: Vec<usize> = std::iter::once(coordinator).chain(workers.iter().copied()).collect();
    for &i in &cut_off {
        old.signal(i, "STOP");
    }
    let stale_latest = *ids.last().unwrap();
    let mut new = old.another_site("new");
    let replacement = new.coordinator();
    for name in ["w1", "w2", "w3"] {
        new.worker(name);
    }
    let mut new_ids = Vec::new();
    new.wait_for("the replacement to checkpoint on", &mut new_ids, Duration::from_secs(60), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) >= stale_latest + 6
    });
    let restored = new.get("/v1/job").unwrap()["restoredFrom"].as_u64();
    assert!(restored >= Some(stale_latest), "the replacement restored {restored:?}, the old one had {stale_latest}");
    // The node comes back while the replacement runs on.
    for &i in &cut_off {
        old.signal(i, "CONT");
    }
    let old_exit = old.wait_exit(coordinator, Duration::from_secs(60));
    assert!(new.wait_exit(replacement, Duration::from_secs(120)), "the replacement finished the job");
    never_backwards(&new_ids);
    new.assert_exact();
    assert!(!old_exit, "the superseded coordinator exits non-zero");
    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("superseded"))
        .unwrap_or_else(|| panic!("the old coordinator says it was superseded; see {}", dir.path().display()));
    println!("old coordinator: {line}");
}

/// Every key's updates are 1..=n without gaps or repeats, whatever n is.
fn assert_contiguous(dir: &Path) -> u64 {
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in read_committed(&dir.join("out")).unwrap() {
        got.entry(row["key"].as_str().unwrap().into()).or_default().push(row["count"].as_u64().unwrap());
    }
    let mut total = 0;
    for (key, mut counts) in got {
        counts.sort_unstable();
        let n = counts.len() as u64;
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "key {key}: updates exactly once");
        total += n;
    }
    total
}

#[test]
fn savepoint_metrics_and_stop_through_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 50_000_000, 50_000);
    let coordinator = c.coordinator();
    for n in ["w1", "w2", "w3"] {
        c.worker(n);
    }
    let mut ids = Vec::new();
    c.wait_for("a checkpoint", &mut ids, Duration::from_secs(30), |_, chk| chk["latest"]["id"].is_u64());

    let sp = c.post("/v1/savepoints").expect("savepoint answer");
    let path = sp["path"].as_str().unwrap_or_else(|| panic!("no path in {sp}"));
    let local = PathBuf::from(path.trim_start_matches("file://"));
    assert!(local.join("_metadata").exists(), "savepoint at {path} has _metadata");

    let metrics = c.request("GET", "/metrics").unwrap();
    assert!(metrics.contains("weir_checkpoints_completed_total"), "{metrics}");
    assert!(metrics.contains("weir_records_in_total"), "{metrics}");
    assert!(metrics.contains("weir_operator_records_in{operator=\"aggregate-"), "{metrics}");
    assert!(metrics.contains("weir_operator_backpressure_ms{operator=\"source\"}"), "{metrics}");
    // Summed from the workers' heartbeats; a file sink never retries.
    assert!(metrics.contains("weir_attempt_sink_retries 0"), "{metrics}");
    assert!(metrics.contains("weir_attempt_source_errors 0"), "{metrics}");
    assert!(metrics.contains("weir_attempt_bad_records 0"), "{metrics}");
    assert!(c.request("GET", "/healthz").unwrap().contains("ok"));

    let stopped = c.post("/v1/stop").expect("stop answer");
    assert!(stopped["path"].is_string(), "{stopped}");
    assert!(c.wait_exit(coordinator, Duration::from_secs(30)), "the job stopped cleanly");
    let written = assert_contiguous(dir.path());
    assert!(written > 0, "something was committed before the stop");
    // Retention never deletes savepoints.
    assert!(local.join("_metadata").exists());
}

/// Polls a savepoint trigger until it is no longer in progress.
fn trigger_outcome(c: &Cluster, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let state = c.get(&format!("/v1/savepoint-triggers/{id}")).unwrap_or(Value::Null);
        if state["status"] != "InProgress" {
            return state;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "savepoint {id} still in progress after a minute");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn savepoints_triggered_in_the_background_are_polled_by_id_and_a_stop_leaves_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 50_000_000, 50_000);
    c.token = Some("trigger-test-token".into());
    let coordinator = c.coordinator();
    for n in ["w1", "w2", "w3"] {
        c.worker(n);
    }
    let mut ids = Vec::new();
    c.wait_for("a checkpoint", &mut ids, Duration::from_secs(30), |_, chk| chk["latest"]["id"].is_u64());

    let (code, _) = c.raw_request("POST", "/v1/savepoint-triggers", "").unwrap();
    assert_eq!(code, 401, "a trigger without the token is refused");
    let trigger = c.post("/v1/savepoint-triggers").expect("trigger answer");
    let id = trigger["id"].as_str().unwrap_or_else(|| panic!("no id in {trigger}")).to_string();
    let done = trigger_outcome(&c, &id);
    assert_eq!(done["status"], "Completed", "{done}");
    let path = done["path"].as_str().unwrap().to_string();
    assert!(PathBuf::from(path.trim_start_matches("file://")).join("_metadata").exists(), "{path}");
    let (code, _) = c.raw_request("GET", "/v1/savepoint-triggers/1-999", "").unwrap();
    assert_eq!(code, 404, "an id this coordinator never handed out is unknown");

    let stop = c.post("/v1/savepoint-triggers?stop=true").expect("stop trigger answer");
    assert_eq!(stop["stop"], true, "{stop}");
    assert!(c.wait_exit(coordinator, Duration::from_secs(60)), "the job stopped cleanly after its savepoint");
    let savepoints = std::fs::read_dir(dir.path().join("chk/default/spread/savepoints")).unwrap().count();
    assert_eq!(savepoints, 2, "one savepoint per trigger");
    assert_contiguous(dir.path());
}

#[test]
fn only_processes_with_the_job_token_join_the_job_or_take_savepoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 400_000, 100_000);
    c.token = Some("0123456789abcdef-job-token".into());
    let coordinator = c.coordinator();
    let intruder = c.worker_with_token("intruder", Some("guessed-token"));
    assert!(!c.wait_exit(intruder, Duration::from_secs(30)), "a worker with a wrong token exits with an error");
    let log = std::fs::read_to_string(dir.path().join("intruder.log")).unwrap();
    assert!(log.contains("refused"), "the worker says why: {log}");
    let anonymous = c.worker_with_token("anonymous", None);
    assert!(!c.wait_exit(anonymous, Duration::from_secs(30)), "a worker without a token is refused too");

    for n in ["w1", "w2", "w3"] {
        c.worker(n);
    }
    let mut ids = Vec::new();
    c.wait_for("a checkpoint", &mut ids, Duration::from_secs(30), |_, chk| chk["latest"]["id"].is_u64());
    let (code, body) = c.raw_request("POST", "/v1/savepoints", "").unwrap();
    assert_eq!(code, 401, "a savepoint without the token is refused: {body}");
    let (code, _) = c.raw_request("POST", "/v1/stop", "Authorization: Bearer guessed-token\r\n").unwrap();
    assert_eq!(code, 401, "a stop with a wrong token is refused");
    assert!(c.get("/v1/job").is_some(), "reads stay open for probes and scrapers");
    let sp = c.post("/v1/savepoints").expect("savepoint with the token");
    assert!(sp["path"].is_string(), "{sp}");

    assert!(c.wait_exit(coordinator, Duration::from_secs(60)), "the job finished");
    c.assert_exact();
    let coordinator_log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(!coordinator_log.contains("0123456789abcdef-job-token"), "the token never reaches a log");
}

#[test]
fn a_job_started_from_a_stopped_jobs_savepoint_on_other_workers_continues_exactly_once() {
    // Twelve seconds of input, so that the stop comes part way even on a
    // machine busy with the other tests.
    const COUNT: u64 = 1_200_000;
    let dir = tempfile::tempdir().unwrap();
    let mut old = Cluster::new(dir.path(), COUNT, 100_000);
    let coordinator = old.coordinator();
    for n in ["w1", "w2", "w3"] {
        old.worker(n);
    }
    let mut ids = Vec::new();
    old.wait_for("a checkpoint", &mut ids, Duration::from_secs(30), |_, chk| chk["latest"]["id"].is_u64());
    let stopped = old.post("/v1/stop").expect("stop answer");
    let savepoint = stopped["path"].as_str().unwrap_or_else(|| panic!("no savepoint in {stopped}")).to_string();
    assert!(old.wait_exit(coordinator, Duration::from_secs(30)), "the old job stopped cleanly");
    let written_before = assert_contiguous(dir.path());
    assert!(written_before < COUNT, "stopped part way ({written_before} records)");
    drop(old);

    // The same pipeline as a new job (its own checkpoint directory), started
    // from the savepoint by fresh coordinator and worker processes.
    let mut new = Cluster::new(dir.path(), COUNT, 100_000);
    let yaml = std::fs::read_to_string(&new.manifest)
        .unwrap()
        .replace("name: spread", "name: spread-v2")
        .replace("spec:\n", &format!("spec:\n  initialSavepointPath: \"{savepoint}\"\n"));
    std::fs::write(&new.manifest, yaml).unwrap();
    let coordinator = new.coordinator();
    for n in ["v1", "v2", "v3"] {
        new.worker(n);
    }
    let mut ids = Vec::new();
    new.wait_for("the restore", &mut ids, Duration::from_secs(30), |job, _| job["restoredFrom"].is_u64());
    assert!(new.wait_exit(coordinator, Duration::from_secs(60)), "the new job finished");
    new.assert_exact();
}

#[test]
fn a_bad_record_on_one_of_three_workers_fails_the_job_instead_of_restarting_it_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 0, 0);
    // Six input files, one split per file, two per worker; one line of one file is broken.
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for f in 0..6 {
        let mut text = String::new();
        for i in 0..2_000 {
            if f == 4 && i == 1_500 {
                text.push_str("{\"key\": \"k1\", \"value\": \n");
            } else {
                text.push_str(&format!("{{\"key\": \"k{}\", \"value\": {}}}\n", i % 13, i % 10));
            }
        }
        std::fs::write(input.join(format!("part-{f}.jsonl")), text).unwrap();
    }
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: files}}
spec:
  parallelism: 3
  maxParallelism: 32
  checkpoints: {{interval: 100ms, storage: "file://{d}/chk"}}
  pipeline:
    source: {{file: {{path: "{d}/in"}}}}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true}}
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.path().display()
    );
    std::fs::write(&c.manifest, yaml).unwrap();
    let coordinator = c.coordinator();
    for n in ["w1", "w2", "w3"] {
        c.worker(n);
    }
    assert!(!c.wait_exit(coordinator, Duration::from_secs(60)), "the coordinator exits non-zero");
    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(log.contains("part-4.jsonl:1501"), "the failure names the record; see {}", dir.path().display());
    assert!(log.contains("BadRecord") && log.contains("the coordinator exits"), "{log}");
    assert!(!log.contains("restoring every worker"), "no restart in place: {log}");
}

#[test]
fn a_checkpoint_a_worker_finds_damaged_is_passed_over_and_the_job_restores_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 1_000_000, 100_000);
    // The coordinator stops itself once checkpoint 3 is committed in the
    // ledger, before anyone is told: its output is not committed yet.
    let first = c.coordinator_with(&[("WEIR_STOP_AT", "LedgerCommitted:3")]);
    for n in ["w1", "w2", "w3"] {
        c.worker(n);
    }
    let start = Instant::now();
    while common::process_state(c.children[first].id()) != Some('T') {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never reached the stop point; see {}",
            dir.path().display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    c.kill(first);
    // A bit flips in every state file of checkpoint 3: the sizes still
    // match, so only reading the files shows it.
    let chk = dir.path().join("chk/default/spread/chk-0000000003");
    for entry in std::fs::read_dir(&chk).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "_metadata" {
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let second = c.coordinator();
    let mut ids = Vec::new();
    c.wait_for("a restore of checkpoint 2", &mut ids, Duration::from_secs(60), |job, _| {
        job["state"] == "Running" && job["restoredFrom"] == 2
    });
    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(log.contains("DamagedCheckpoint") && log.contains("checkpoint 3 is damaged"), "{log}");
    assert!(c.wait_exit(second, Duration::from_secs(90)), "the job finished");
    c.assert_exact();
}

/// A fresh job CA's certificate, key and CA written under `dir/name`, as
/// the environment that points a process at them.
fn tls_env(dir: &Path, name: &str) -> Vec<(String, String)> {
    let id = weir_runtime::distributed::tls::JobIdentity::generate(name).unwrap();
    let at = dir.join(name);
    std::fs::create_dir_all(&at).unwrap();
    let mut env = Vec::new();
    for (var, file, pem) in [
        ("WEIR_TLS_CERT", "tls.crt", &id.cert),
        ("WEIR_TLS_KEY", "tls.key", &id.key),
        ("WEIR_TLS_CA", "ca.crt", &id.ca),
    ] {
        std::fs::write(at.join(file), pem).unwrap();
        env.push((var.to_string(), at.join(file).display().to_string()));
    }
    env
}

#[test]
fn over_mutual_tls_a_job_keeps_output_exact_and_a_process_of_another_job_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 400_000, 100_000);
    let (ours, theirs) = (tls_env(dir.path(), "ours"), tls_env(dir.path(), "theirs"));
    c.env = ours.clone();
    let coordinator = c.coordinator();
    c.api_ca = Some(std::fs::read(dir.path().join("ours/ca.crt")).unwrap());
    c.env = theirs;
    c.worker("intruder");
    c.env = ours;
    let first = c.worker("w1");
    c.worker("w2");
    c.worker("w3");
    let mut ids = Vec::new();
    c.wait_for("a checkpoint", &mut ids, Duration::from_secs(30), |_, chk| chk["latest"]["id"].is_u64());
    // The API is HTTPS with the job's certificate: plain HTTP reaches only
    // health and metrics, and a client trusting another job's CA is refused.
    let (code, body) = common::http(c.http_port, "GET", "/v1/job", "").expect("a plain answer");
    assert_eq!(code, 403, "plain HTTP read the job's status: {body}");
    assert!(body.contains("needs HTTPS"), "{body}");
    for open in ["/healthz", "/metrics"] {
        assert_eq!(common::http(c.http_port, "GET", open, "").map(|a| a.0), Some(200), "{open} over plain HTTP");
    }
    let theirs_ca = std::fs::read(dir.path().join("theirs/ca.crt")).unwrap();
    assert_eq!(common::https(c.http_port, &theirs_ca, "GET", "/v1/job", ""), None, "another job's CA trusted this API");
    // Shuffle channels are TLS too: a worker lost and replaced reconnects over them.
    c.kill(first);
    c.worker("w4");
    assert!(c.wait_exit(coordinator, Duration::from_secs(90)), "the job finished; see {}", dir.path().display());
    never_backwards(&ids);
    c.assert_exact();
    let coordinator_log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(coordinator_log.contains("refused a worker connection"), "{coordinator_log}");
    assert!(!coordinator_log.contains("worker intruder registered"), "the intruder joined: {coordinator_log}");
    let intruder_log = std::fs::read_to_string(dir.path().join("intruder.log")).unwrap();
    assert!(intruder_log.contains("no TLS session with the coordinator"), "{intruder_log}");
}

#[test]
fn an_interval_join_over_the_network_emits_each_pair_once_when_a_worker_is_killed() {
    const SHIPS: u64 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 300_000, 100_000);
    let yaml = std::fs::read_to_string(&c.manifest).unwrap();
    let join = format!(
        "    eventTime: {{field: ts, maxOutOfOrderness: 100ms}}\n    steps:\n      - intervalJoin:\n          source: \
         {{id: ships, generator: {{keys: {KEYS}, count: {SHIPS}, rate: 50000, splits: 3, timestampStep: 1ms}}}}\n          \
         key: key\n          before: 2ms\n          after: 3ms\n"
    );
    let joined = yaml
        .replace("splits: 6}", "splits: 6, timestampStep: 1ms}")
        .replace("    steps:\n      - keyBy: {field: key}\n      - aggregate: {count: true, sum: [value]}\n", &join);
    assert!(joined.contains("intervalJoin"), "{joined}");
    std::fs::write(&c.manifest, joined).unwrap();
    let coordinator = c.coordinator();
    let workers: Vec<usize> = ["w1", "w2", "w3"].iter().map(|n| c.worker(n)).collect();
    let mut ids = Vec::new();
    c.wait_for("two checkpoints", &mut ids, Duration::from_secs(30), |_, chk| {
        chk["latest"]["id"].as_u64().unwrap_or(0) >= 2
    });
    c.kill(workers[1]);
    c.wait_for("the loss to be noticed", &mut ids, Duration::from_secs(15), |job, _| {
        job["restarts"].as_u64().unwrap_or(0) >= 1
    });
    c.worker("w4");
    assert!(c.wait_exit(coordinator, Duration::from_secs(90)), "the job finished cleanly");
    never_backwards(&ids);

    // Shipments by key, in seq order (= event time order).
    let mut ships: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in 0..SHIPS {
        ships.entry(generated(s, KEYS).0).or_default().push(s);
    }
    let mut want: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for o in 0..300_000u64 {
        let of_key = ships.get(&generated(o, KEYS).0).map(Vec::as_slice).unwrap_or_default();
        let from = of_key.partition_point(|&s| s + 2 < o);
        for &s in of_key[from..].iter().take_while(|&&s| s <= o + 3) {
            want.insert((o, s), 1);
        }
    }
    let mut got: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for row in read_committed(&dir.path().join("out")).unwrap() {
        let (Some(o), Some(s)) = (row["seq"].as_u64(), row["ships_seq"].as_u64()) else { panic!("not a pair: {row}") };
        *got.entry((o, s)).or_insert(0) += 1;
    }
    assert!(want.len() > 1_000, "too few pairs to tell: {}", want.len());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "pairs committed more than once: {twice:?}; see {}", dir.keep().display());
    assert_eq!(got.len(), want.len(), "pairs committed against pairs expected");
    assert_eq!(got, want);
}
