//! A job across real processes on loopback: a coordinator and workers
//! started from the `weir` binary, killed, frozen and asked over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::free_port;

/// Keys of the generated records of a cluster's job.
pub const KEYS: u64 = 200;

pub struct Cluster {
    pub dir: PathBuf,
    pub manifest: PathBuf,
    pub worker_port: u16,
    pub http_port: u16,
    pub count: u64,
    pub children: Vec<Child>,
    /// The job token the coordinator and workers get, if any.
    pub token: Option<String>,
    /// Environment every process started from now on gets (TLS files).
    pub env: Vec<(String, String)>,
    /// Prefix of log file names (a second set of processes of the same job).
    pub site: String,
    /// The job CA the API is reached with over TLS, once the job has one.
    pub api_ca: Option<Vec<u8>>,
    /// A share of the machine: at most a few clusters run at once.
    pub _slot: Option<Slot>,
}

/// How many clusters (four processes each) run at once: each test's timing
/// assumptions hold on two cores with three, not with every test at once.
const CONCURRENT_CLUSTERS: usize = 3;

static SLOTS: (std::sync::Mutex<usize>, std::sync::Condvar) = (std::sync::Mutex::new(0), std::sync::Condvar::new());

pub struct Slot;

impl Slot {
    pub fn take() -> Slot {
        let (lock, freed) = &SLOTS;
        let mut taken = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *taken >= CONCURRENT_CLUSTERS {
            taken = freed.wait(taken).unwrap_or_else(|e| e.into_inner());
        }
        *taken += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, freed) = &SLOTS;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    pub fn new(dir: &Path, count: u64, rate: u64) -> Cluster {
        let manifest = dir.join("job.yaml");
        let yaml = format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: spread}}
spec:
  parallelism: 3
  maxParallelism: 32
  checkpoints: {{interval: 300ms, storage: "file://{d}/chk", retained: 3}}
  pipeline:
    source: {{generator: {{keys: {KEYS}, count: {count}, rate: {rate}, splits: 6}}}}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}
    sink: {{file: {{path: "{d}/out"}}}}
"#,
            d = dir.display()
        );
        std::fs::write(&manifest, yaml).unwrap();
        Cluster {
            dir: dir.into(),
            manifest,
            worker_port: free_port(),
            http_port: free_port(),
            count,
            children: Vec::new(),
            token: None,
            env: Vec::new(),
            site: String::new(),
            api_ca: None,
            _slot: Some(Slot::take()),
        }
    }

    /// Processes of the same job, on the same storage and output, that
    /// listen on ports of their own and log to `<site>-<name>.log`.
    pub fn another_site(&self, site: &str) -> Cluster {
        Cluster {
            dir: self.dir.clone(),
            manifest: self.manifest.clone(),
            worker_port: free_port(),
            http_port: free_port(),
            count: self.count,
            children: Vec::new(),
            token: self.token.clone(),
            env: self.env.clone(),
            site: format!("{site}-"),
            api_ca: self.api_ca.clone(),
            // Part of a test that holds a slot already.
            _slot: None,
        }
    }

    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}{name}.log", self.site)))
            .unwrap()
    }

    pub fn coordinator(&mut self) -> usize {
        self.coordinator_with(&[])
    }

    pub fn coordinator_with(&mut self, env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.envs(self.env.iter().cloned());
        cmd.envs(env.iter().copied());
        if let Some(t) = &self.token {
            cmd.env("WEIR_JOB_TOKEN", t);
        }
        let child = cmd
            .arg("coordinator")
            .env("WEIR_JOB", &self.manifest)
            .env("WEIR_LISTEN", format!("127.0.0.1:{}", self.worker_port))
            .env("WEIR_HTTP", format!("127.0.0.1:{}", self.http_port))
            .env("WEIR_WORKERS", "3")
            .env("WEIR_HEARTBEAT_TIMEOUT", "1s")
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log("coordinator"))
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn worker(&mut self, name: &str) -> usize {
        let token = self.token.clone();
        self.worker_with_token(name, token.as_deref())
    }

    pub fn worker_with_token(&mut self, name: &str, token: Option<&str>) -> usize {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.envs(self.env.iter().cloned());
        if let Some(t) = token {
            cmd.env("WEIR_JOB_TOKEN", t);
        }
        let child = cmd
            .arg("worker")
            .env("WEIR_COORDINATOR", format!("127.0.0.1:{}", self.worker_port))
            .env("WEIR_DATA_BIND", "127.0.0.1:0")
            .env("WEIR_WORKER_NAME", name)
            .env("WEIR_HEARTBEAT_INTERVAL", "200ms")
            // Slow snapshot writes keep a checkpoint in flight most of the time.
            .env("WEIR_INJECT_SNAPSHOT_DELAY_MS", "150")
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log(name))
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn kill(&mut self, i: usize) {
        self.children[i].kill().unwrap();
        self.children[i].wait().unwrap();
    }

    pub fn signal(&self, i: usize, sig: &str) {
        super::signal(self.children[i].id(), sig);
    }

    pub fn request(&self, method: &str, path: &str) -> Option<String> {
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        Some(self.raw_request(method, path, &auth)?.1)
    }

    /// Status code and body.
    pub fn raw_request(&self, method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
        match &self.api_ca {
            Some(ca) => super::https(self.http_port, ca, method, path, headers),
            None => super::http(self.http_port, method, path, headers),
        }
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.request("GET", path)?).ok()
    }

    pub fn post(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.request("POST", path)?).ok()
    }

    /// Polls `/v1/job` and `/v1/checkpoints` until `done` holds; records
    /// every latest checkpoint id seen.
    pub fn wait_for(&self, what: &str, ids: &mut Vec<u64>, timeout: Duration, done: impl Fn(&Value, &Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let (Some(job), Some(chk)) = (self.get("/v1/job"), self.get("/v1/checkpoints")) {
                if let Some(id) = chk["latest"]["id"].as_u64() {
                    ids.push(id);
                }
                if done(&job, &chk) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; see logs in {}", self.dir.display());
    }

    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.children[i].try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process {i} did not exit; see logs in {}", self.dir.display());
    }

    pub fn assert_exact(&self) {
        if let Err(e) = weir_runtime::verify::check_exactly_once(&self.dir.join("out"), self.count, KEYS) {
            panic!("{e}; see logs in {}", self.dir.display());
        }
    }
}
