//! The keyed running sum (100,000 keys) at parallelism 2 with exactly-once
//! checkpoints every second: in one process, and as a coordinator plus two
//! worker processes on loopback, side by side.
//!
//! `cargo bench --bench keyed_sum_cluster` (`WEIR_BENCH_RECORDS`, default 50M).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_runtime::job::{run_job, JobConfig};
use weir_runtime::manifest::StreamJob;
use weir_runtime::metrics::JobMetrics;

fn manifest(dir: &std::path::Path, records: u64) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: bench}}
spec:
  parallelism: 2
  checkpoints: {{interval: 1s, storage: "file://{}/chk"}}
  program: {{entry: keyed-sum, args: {{keys: "100000", count: "{records}"}}}}
"#,
        dir.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn in_process(records: u64) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = StreamJob::from_yaml(&manifest(dir.path(), records)).expect("manifest");
    let graph = weir_runtime::pipeline::build(&job.spec).expect("job builds");
    let config = JobConfig::new("bench", "default", job.spec.checkpoints.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    rt.block_on(run_job(graph, &config, Arc::new(JobMetrics::default()))).expect("job runs");
    started.elapsed().as_secs_f64()
}

fn cluster(records: u64) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, manifest(dir.path(), records)).expect("write manifest");
    let (workers_port, http_port) = (free_port(), free_port());
    let weir = env!("CARGO_BIN_EXE_weir");
    let started = Instant::now();
    let mut coordinator = Command::new(weir)
        .arg("coordinator")
        .env("WEIR_JOB", &path)
        .env("WEIR_LISTEN", format!("127.0.0.1:{workers_port}"))
        .env("WEIR_HTTP", format!("127.0.0.1:{http_port}"))
        .env("WEIR_WORKERS", "2")
        .env("WEIR_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start coordinator");
    let mut workers: Vec<_> = (0..2)
        .map(|i| {
            Command::new(weir)
                .arg("worker")
                .env("WEIR_COORDINATOR", format!("127.0.0.1:{workers_port}"))
                .env("WEIR_DATA_BIND", "127.0.0.1:0")
                .env("WEIR_WORKER_NAME", format!("w{i}"))
                .env("WEIR_LOG", "warn")
                .stderr(Stdio::null())
                .spawn()
                .expect("start worker")
        })
        .collect();
    let status = coordinator.wait().expect("coordinator runs");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "coordinator failed");
    for w in &mut workers {
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = w.kill();
    }
    secs
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000_000);
    let rounds = 3;
    let mut single = Vec::new();
    let mut multi = Vec::new();
    let mut start = Vec::new();
    for _ in 0..rounds {
        single.push(in_process(records));
        multi.push(cluster(records));
        // A job of one record: what starting the processes and registering costs.
        start.push(cluster(1));
    }
    let (s, m, start) = (median(single), median(multi), median(start));
    let steady = (m - start).max(f64::EPSILON);
    println!("keyed running sum, 100000 keys, {records} records, parallelism 2, exactly-once checkpoints every 1s (median of {rounds})");
    println!("{:<58} {:>8.2}M records/s ({s:.2}s)", "one process", records as f64 / s / 1e6);
    println!(
        "{:<58} {:>8.2}M records/s ({m:.2}s, including process start and registration)",
        "coordinator + 2 worker processes on loopback",
        records as f64 / m / 1e6
    );
    println!(
        "{:<58} {:>8.2}M records/s ({:.0}% of one process; a one-record job takes {start:.2}s)",
        "  the same without its start",
        records as f64 / steady / 1e6,
        100.0 * s / steady
    );
    println!(
        "Flink 2.3 at parallelism 2 on this machine class (TEST-INFRA.md): 2.6-2.8M records/s with 1s checkpoints"
    );
}
