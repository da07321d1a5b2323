//! `kill -9` of a real `weir run` process, then a rerun: the committed
//! output holds every record exactly once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const COUNT: u64 = 200_000;
const KEYS: u64 = 100;

fn write_manifest(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("job.yaml");
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata:
  name: killed
spec:
  parallelism: 2
  checkpoints:
    interval: 100ms
    storage: file://{dir}/checkpoints
  pipeline:
    source:
      generator: {{keys: {KEYS}, count: {COUNT}, rate: 100000}}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}
    sink:
      file: {{path: {dir}/out}}
"#,
        dir = dir.display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn weir(manifest: &Path, dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--no-progress-line"])
        .arg(manifest)
        .current_dir(dir)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_nine_of_weir_run_then_rerun_yields_exact_output() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path());
    let mut kills = 0;
    for delay_ms in [700u64, 450, 900, 300, 650] {
        let mut child = weir(&manifest, dir.path());
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        // SIGKILL: no destructor, no flush, no goodbye.
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 3, "the job finished before it could be killed enough");
    let status = weir(&manifest, dir.path()).wait().unwrap();
    assert!(status.success(), "final run failed: {status}");

    if let Err(e) = weir_runtime::verify::check_exactly_once(&dir.path().join("out"), COUNT, KEYS) {
        panic!("output after kill -9 and rerun: {e}");
    }
}
