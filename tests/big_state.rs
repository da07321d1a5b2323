//! Big keyed state across a worker loss: a job on a coordinator and two
//! workers builds at least 1 GiB of keyed state (`keyed-ballast`), a worker
//! is killed (`kill -9`) and replaced, and every worker restores the newest
//! checkpoint while heartbeats go on: with a heartbeat timeout of 3 s no
//! worker is lost during the restore, and the next checkpoint is as big as
//! the one restored. Prints restore
//! time per GiB and the replacement's memory.
//!
//! Slow (about a minute and 3 GiB of disk): `scripts/test-big-state`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http};
use serde_json::Value;

const GIB: u64 = 1 << 30;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

fn worker(dir: &Path, port: u16, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("worker")
        .env("WEIR_COORDINATOR", format!("127.0.0.1:{port}"))
        .env("WEIR_DATA_BIND", "127.0.0.1:0")
        .env("WEIR_WORKER_NAME", name)
        .env("WEIR_HEARTBEAT_INTERVAL", "300ms")
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log(dir, name))
        .spawn()
        .unwrap()
}

fn get(port: u16, path: &str) -> Option<Value> {
    serde_json::from_str(&http(port, "GET", path, "")?.1).ok()
}

fn wait_for(what: &str, dir: &Path, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out waiting for {what}; logs in {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak and current resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
#[ignore = "slow: scripts/test-big-state runs it"]
fn a_worker_lost_with_a_gib_of_keyed_state_is_restored_while_heartbeats_go_on() {
    let dir = tempfile::Builder::new().prefix("weir-big-state-").tempdir().unwrap().keep();
    // Shorter than a restore of a GiB here: the test shows heartbeats go
    // on while state loads, or a worker would be lost.
    let heartbeat_timeout = Duration::from_secs(3);
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: ballast}}
spec:
  parallelism: 2
  maxParallelism: 128
  checkpoints: {{interval: 3s, timeout: 2m, storage: "file://{}/chk", retained: 1}}
  program: {{entry: keyed-ballast, args: {{keys: "1000000", stateBytes: "1200", rate: "400000"}}}}
"#,
            dir.display()
        ),
    )
    .unwrap();
    let (port, http_port) = (free_port(), free_port());
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("coordinator")
            .env("WEIR_JOB", &manifest)
            .env("WEIR_LISTEN", format!("127.0.0.1:{port}"))
            .env("WEIR_HTTP", format!("127.0.0.1:{http_port}"))
            .env("WEIR_WORKERS", "2")
            .env("WEIR_HEARTBEAT_TIMEOUT", format!("{}s", heartbeat_timeout.as_secs()))
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log(&dir, "coordinator"))
            .spawn()
            .unwrap(),
    );
    procs.0.push(worker(&dir, port, "w1"));
    procs.0.push(worker(&dir, port, "w2"));

    let mut big = (0u64, 0u64);
    wait_for("a checkpoint of at least 1 GiB", &dir, Duration::from_secs(300), || {
        let latest = get(http_port, "/v1/checkpoints").map(|c| c["latest"].clone()).unwrap_or_default();
        big = (latest["id"].as_u64().unwrap_or(0), latest["sizeBytes"].as_u64().unwrap_or(0));
        big.1 >= GIB
    });
    let (id, size) = big;
    println!("checkpoint {id}: {:.2} GiB of keyed state", size as f64 / GIB as f64);

    // kill -9 one worker; its replacement and the survivor restore `id` (or newer).
    let lost = procs.0.remove(2);
    let mut lost = lost;
    lost.kill().unwrap();
    lost.wait().unwrap();
    let killed_at = Instant::now();
    procs.0.push(worker(&dir, port, "w3"));
    let mut job = Value::Null;
    wait_for("the restored attempt to run", &dir, Duration::from_secs(120), || {
        job = get(http_port, "/v1/job").unwrap_or_default();
        job["attempt"].as_u64() >= Some(2) && job["state"] == "Running"
    });
    let restore = killed_at.elapsed();
    let restored = job["restoredFrom"].as_u64().expect("the attempt restored a checkpoint");
    assert!(restored >= id, "restored {restored}, the big one was {id}: {job}");
    let replacement = procs.0.last().unwrap().id();
    let (peak, now) = memory_mib(replacement);
    println!(
        "restore after kill -9: {:.2} s for {:.2} GiB = {:.2} s per GiB (kill to running, both workers loading); \
         replacement worker memory: peak {peak} MiB, now {now} MiB",
        restore.as_secs_f64(),
        size as f64 / GIB as f64,
        restore.as_secs_f64() / (size as f64 / GIB as f64),
    );

    // The state is whole: the next checkpoint is as big; no worker was lost meanwhile.
    wait_for("a checkpoint after the restore", &dir, Duration::from_secs(120), || {
        let latest = get(http_port, "/v1/checkpoints").map(|c| c["latest"].clone()).unwrap_or_default();
        latest["id"].as_u64().unwrap_or(0) > restored
    });
    let latest = get(http_port, "/v1/checkpoints").unwrap()["latest"].clone();
    assert!(latest["sizeBytes"].as_u64().unwrap_or(0) >= size, "state after the restore: {latest}");
    let job = get(http_port, "/v1/job").unwrap();
    assert_eq!(job["restarts"].as_u64(), Some(1), "only the killed worker was lost: {job}");
    println!("heartbeat timeout {heartbeat_timeout:?}: no worker was lost while state loaded");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
