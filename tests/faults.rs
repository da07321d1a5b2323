//! The fault harness: real faults on real `weir` processes, many of them,
//! then the independent audit of `weir_runtime::verify` on what was
//! committed. Faults are `kill -9` and freeze/resume (`SIGSTOP`/`SIGCONT`)
//! at random instants and at chosen points (a process started with
//! `WEIR_STOP_AT=Point:n` stops itself there: between writing `_metadata`
//! and renaming it, between a sink's pre-commit and its commit, between two
//! commits), and, for a job on a coordinator and three workers, cut and
//! silently dropped control connections (a proxy sits between the workers
//! and the coordinator). Jobs alternate `maxConcurrent` 1 and 2.
//!
//! `scripts/test-faults N` runs both suites with N faults in all; they are
//! ignored by a plain `cargo test`. `WEIR_FAULT_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, http, process_state, signal};
use weir_runtime::faults::StopPoint;

const KEYS: u64 = 100;

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("WEIR_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        println!("fault seed {seed} (WEIR_FAULT_SEED={seed} replays the choices)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// Faults applied, by kind.
#[derive(Default)]
struct Tally(BTreeMap<String, u32>);

impl Tally {
    fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_default() += 1;
    }

    fn total(&self) -> u32 {
        self.0.values().sum()
    }

    fn print(&self, title: &str) {
        println!("{title}: {} faults", self.total());
        for (kind, n) in &self.0 {
            println!("  {n:5}  {kind}");
        }
    }
}

fn quota() -> u32 {
    std::env::var("WEIR_FAULTS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

fn manifest(dir: &Path, name: &str, parallelism: u32, max_concurrent: u32, interval_ms: u64, count: u64, rate: u64) {
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  parallelism: {parallelism}
  maxParallelism: 32
  checkpoints: {{interval: {interval_ms}ms, maxConcurrent: {max_concurrent}, storage: "file://{d}/chk", retained: 3}}
  pipeline:
    source: {{generator: {{keys: {KEYS}, count: {count}, rate: {rate}, splits: {splits}}}}}
    steps:
      - keyBy: {{field: key}}
      - aggregate: {{count: true, sum: [value]}}
    sink: {{file: {{path: "{d}/out"}}}}
"#,
        d = dir.display(),
        splits = parallelism * 2,
    );
    std::fs::write(dir.join("job.yaml"), yaml).unwrap();
}

fn audit(dir: &Path, count: u64) {
    if let Err(e) = weir_runtime::verify::check_exactly_once(&dir.join("out"), count, KEYS) {
        panic!("LOSS OR DUPLICATE: {e}; logs and output in {}", dir.display());
    }
}

/// A job directory that outlives a failed test, for its logs; removed once
/// the job passed its audit.
fn job_dir() -> PathBuf {
    tempfile::Builder::new().prefix("weir-faults-").tempdir().unwrap().keep()
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap()
}

fn plan_text(plan: Option<(StopPoint, u64)>) -> Option<String> {
    plan.map(|(p, n)| format!("{p:?}:{n}"))
}

/// What happened to a process armed with a stop point.
enum Armed {
    Stopped,
    Exited(ExitStatus),
    NotReached,
}

fn wait_armed(child: &mut Child, within: Duration) -> Armed {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return Armed::Exited(status);
        }
        if process_state(child.id()) == Some('T') {
            return Armed::Stopped;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Armed::NotReached
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------- weir run

const LOCAL_POINTS: [StopPoint; 7] = StopPoint::COMMON;

fn weir_run(dir: &Path, plan: Option<(StopPoint, u64)>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    if let Some(p) = plan_text(plan) {
        cmd.env("WEIR_STOP_AT", p);
    }
    cmd.args(["run", "--no-progress-line"])
        .arg(dir.join("job.yaml"))
        .current_dir(dir)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(dir, "run"))
        .spawn()
        .unwrap()
}

/// One job under `weir run`, faulted until `quota` faults were applied or
/// it finished; then run to the end and audited.
fn faulted_local_job(dir: &Path, rng: &mut Rng, quota: u32, max_concurrent: u32, tally: &mut Tally) {
    const COUNT: u64 = 600_000;
    manifest(dir, "local", 2, max_concurrent, 100, COUNT, 150_000);
    let mut applied = 0;
    let mut current: Option<(Child, Option<(StopPoint, u64)>)> = None;
    let mut finished = false;
    while applied < quota && !finished {
        let (child, plan) = current.get_or_insert_with(|| {
            let plan = rng.chance(45).then(|| (rng.pick(&LOCAL_POINTS), 1 + rng.below(3)));
            (weir_run(dir, plan), plan)
        });
        if let Some((point, _)) = *plan {
            match wait_armed(child, Duration::from_secs(15)) {
                Armed::Stopped if rng.chance(75) => {
                    kill9(child);
                    tally.add(format!("weir run: kill -9 at {point:?}"));
                    current = None;
                }
                Armed::Stopped => {
                    std::thread::sleep(rng.ms(20, 400));
                    signal(child.id(), "CONT");
                    tally.add(format!("weir run: freeze at {point:?}, resume"));
                    *plan = None;
                }
                Armed::Exited(status) => {
                    assert!(status.success(), "weir run failed: {status}; see {}", dir.display());
                    finished = true;
                    continue;
                }
                Armed::NotReached => {
                    *plan = None;
                    continue;
                }
            }
            applied += 1;
            continue;
        }
        std::thread::sleep(rng.ms(30, 700));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "weir run failed: {status}; see {}", dir.display());
            finished = true;
            continue;
        }
        if rng.chance(70) {
            kill9(child);
            tally.add("weir run: kill -9 at a random instant");
            current = None;
        } else {
            signal(child.id(), "STOP");
            std::thread::sleep(rng.ms(20, 600));
            signal(child.id(), "CONT");
            tally.add("weir run: freeze at a random instant, resume");
        }
        applied += 1;
    }
    if !finished {
        let mut child = match current {
            Some((child, None)) => child,
            Some((mut armed, Some(_))) => {
                // Its stop point may still come: start clean instead.
                kill9(&mut armed);
                weir_run(dir, None)
            }
            None => weir_run(dir, None),
        };
        let status = wait_exit(&mut child, Duration::from_secs(120), dir);
        assert!(status.success(), "the last weir run failed: {status}; see {}", dir.display());
    }
    audit(dir, COUNT);
}

fn wait_exit(child: &mut Child, within: Duration, dir: &Path) -> ExitStatus {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(child);
    panic!("no exit within {within:?}; see {}", dir.display());
}

/// One faulted job: its directory, the rng, its fault quota, `maxConcurrent`, the tally.
type FaultedJob = fn(&Path, &mut Rng, u32, u32, &mut Tally);

/// Runs faulted jobs, `maxConcurrent` alternating 1 and 2, until the
/// quota of faults is applied; each job is audited as it ends.
fn run_faulted_jobs(what: &str, per_job: u32, job: FaultedJob) {
    let mut rng = Rng::from_env();
    let quota = quota();
    let mut tally = Tally::default();
    let mut jobs = 0;
    while tally.total() < quota {
        let dir = job_dir();
        job(&dir, &mut rng, (quota - tally.total()).min(per_job), 1 + jobs % 2, &mut tally);
        let _ = std::fs::remove_dir_all(&dir);
        jobs += 1;
    }
    tally.print(&format!("{what}, {jobs} jobs audited exactly once"));
}

#[test]
#[ignore = "slow: scripts/test-faults runs it"]
fn weir_run_loses_and_duplicates_nothing_through_random_and_chosen_faults() {
    run_faulted_jobs("weir run", 12, faulted_local_job);
}

// ------------------------------------------------- coordinator + 3 workers

/// A TCP proxy between the workers and the coordinator that can cut a
/// connection (both sides see it close) or drop everything on it silently
/// (a partition: nothing closes, nothing arrives).
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<Link>>>,
}

#[derive(Clone)]
struct Link {
    down: Arc<TcpStream>,
    up: Arc<TcpStream>,
    dropping: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn cut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.down.shutdown(Shutdown::Both);
        let _ = self.up.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Link>>> = Arc::default();
        let list = conns.clone();
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let link =
                    Link { down: Arc::new(down), up: Arc::new(up), dropping: Arc::default(), closed: Arc::default() };
                for (from, to) in [(link.down.clone(), link.up.clone()), (link.up.clone(), link.down.clone())] {
                    let link = link.clone();
                    std::thread::spawn(move || pump(&from, &to, &link));
                }
                let mut l = list.lock().unwrap();
                l.retain(|c| !c.closed.load(Ordering::SeqCst));
                l.push(link);
            }
        });
        Proxy { port, conns }
    }

    fn live(&self) -> Vec<Link> {
        let l = self.conns.lock().unwrap();
        l.iter().filter(|c| !c.closed.load(Ordering::SeqCst) && !c.dropping.load(Ordering::SeqCst)).cloned().collect()
    }
}

fn pump(from: &TcpStream, to: &TcpStream, link: &Link) {
    let mut buf = [0u8; 16 * 1024];
    let (mut from, mut to) = (from, to);
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if !link.dropping.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    link.cut();
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Coordinator,
    Worker,
}

struct Proc {
    child: Child,
    role: Role,
    name: String,
    plan: Option<StopPoint>,
    /// Frozen by the harness until then.
    frozen_until: Option<Instant>,
    /// Stopped at its stop point; what to do and when.
    resume_at: Option<Instant>,
}

struct Cluster<'a> {
    dir: &'a Path,
    worker_port: u16,
    http_port: u16,
    proxy: Proxy,
    procs: Vec<Proc>,
    spawned: u32,
}

const COORDINATOR_POINTS: [StopPoint; 3] =
    [StopPoint::MetadataWritten, StopPoint::MetadataRenamed, StopPoint::LedgerCommitted];
const WORKER_POINTS: [StopPoint; 4] =
    [StopPoint::StateWritten, StopPoint::PreCommitted, StopPoint::BeforeCommit, StopPoint::Committed];

impl Cluster<'_> {
    fn spawn(&mut self, role: Role, plan: Option<(StopPoint, u64)>) {
        self.spawned += 1;
        let name = match role {
            Role::Coordinator => format!("coordinator-{}", self.spawned),
            Role::Worker => format!("w{}", self.spawned),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        if let Some(p) = plan_text(plan) {
            cmd.env("WEIR_STOP_AT", p);
        }
        match role {
            Role::Coordinator => cmd
                .arg("coordinator")
                .env("WEIR_JOB", self.dir.join("job.yaml"))
                .env("WEIR_LISTEN", format!("127.0.0.1:{}", self.worker_port))
                .env("WEIR_HTTP", format!("127.0.0.1:{}", self.http_port))
                .env("WEIR_WORKERS", "3")
                .env("WEIR_HEARTBEAT_TIMEOUT", "1s"),
            Role::Worker => cmd
                .arg("worker")
                .env("WEIR_COORDINATOR", format!("127.0.0.1:{}", self.proxy.port))
                .env("WEIR_DATA_BIND", "127.0.0.1:0")
                .env("WEIR_WORKER_NAME", &name)
                .env("WEIR_HEARTBEAT_INTERVAL", "200ms"),
        };
        let child =
            cmd.env("WEIR_LOG", "info").stdout(Stdio::null()).stderr(log_file(self.dir, &name)).spawn().unwrap();
        self.procs.push(Proc { child, role, name, plan: plan.map(|p| p.0), frozen_until: None, resume_at: None });
    }

    /// Workers not frozen: a frozen one may be replaced already.
    fn live_workers(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| p.role == Role::Worker && p.frozen_until.is_none() && p.resume_at.is_none())
            .count()
    }

    fn has_coordinator(&self) -> bool {
        self.procs.iter().any(|p| p.role == Role::Coordinator)
    }

    fn pick(&self, rng: &mut Rng, role: Role) -> Option<usize> {
        let idx: Vec<usize> = (0..self.procs.len())
            .filter(|&i| {
                let p = &self.procs[i];
                p.role == role && p.frozen_until.is_none() && p.resume_at.is_none()
            })
            .collect();
        (!idx.is_empty()).then(|| rng.pick(&idx))
    }

    /// Before giving up on a job: what the coordinator says and where every
    /// thread of every process waits, written beside the logs.
    fn diagnose(&self) {
        let job = http(self.http_port, "GET", "/v1/job", "").map(|(_, body)| body);
        let mut text = format!("GET /v1/job: {job:?}\n");
        for p in &self.procs {
            let stacks = Command::new("gdb")
                .args(["-p", &p.child.id().to_string(), "-batch", "-ex", "thread apply all bt"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("gdb: {e}"));
            let state = process_state(p.child.id());
            text.push_str(&format!(
                "\n===== {} (state {state:?}, frozen {:?}, resume {:?})\n{stacks}",
                p.name, p.frozen_until, p.resume_at
            ));
        }
        let _ = std::fs::write(self.dir.join("diagnosis.txt"), text);
    }

    fn kill_all(&mut self) {
        for p in &mut self.procs {
            if p.frozen_until.is_some() || p.resume_at.is_some() {
                signal(p.child.id(), "CONT");
            }
            kill9(&mut p.child);
        }
        self.procs.clear();
    }
}

/// One job on a coordinator and three workers, faulted until `quota`
/// faults were applied (or it finished), then run to the end and audited.
fn faulted_cluster_job(dir: &Path, rng: &mut Rng, quota: u32, max_concurrent: u32, tally: &mut Tally) {
    const COUNT: u64 = 900_000;
    manifest(dir, "spread", 3, max_concurrent, 200, COUNT, 90_000);
    let worker_port = free_port();
    let mut c = Cluster {
        dir,
        worker_port,
        http_port: free_port(),
        proxy: Proxy::start(worker_port),
        procs: Vec::new(),
        spawned: 0,
    };
    let mut applied = 0u32;
    let armed_plan = |rng: &mut Rng, points: &[StopPoint], applied: u32| {
        (applied < quota && rng.chance(30)).then(|| (rng.pick(points), 1 + rng.below(4)))
    };
    let plan = armed_plan(rng, &COORDINATOR_POINTS, applied);
    c.spawn(Role::Coordinator, plan);
    for _ in 0..3 {
        let plan = armed_plan(rng, &WORKER_POINTS, applied);
        c.spawn(Role::Worker, plan);
    }
    let started = Instant::now();
    let mut finished = false;
    let mut next_fault = Instant::now() + rng.ms(800, 1500);
    loop {
        if started.elapsed() > Duration::from_secs(300) {
            c.diagnose();
            panic!("the job did not finish within 300 s; see {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
        let now = Instant::now();

        // Processes that exited, stopped at their point, or are due to resume.
        let mut i = 0;
        while i < c.procs.len() {
            let p = &mut c.procs[i];
            if let Some(status) = p.child.try_wait().unwrap() {
                if status.success() {
                    // A worker exits 0 only when told the job is finished.
                    finished = true;
                } else {
                    panic!("{} exited on its own: {status}; see {}", p.name, dir.display());
                }
                c.procs.remove(i);
                continue;
            }
            // Stopped while the harness holds it frozen (or as it resumes
            // it) is the harness's doing; only a process it left running
            // stopped at its point.
            let held = p.frozen_until.is_some() || p.resume_at.is_some();
            if p.frozen_until.is_some_and(|t| now >= t) || p.resume_at.is_some_and(|t| now >= t) {
                signal(p.child.id(), "CONT");
                p.frozen_until = None;
                p.resume_at = None;
            }
            if let Some(point) = p.plan.filter(|_| !held) {
                if process_state(p.child.id()) == Some('T') {
                    p.plan = None;
                    let who = if p.role == Role::Coordinator { "coordinator" } else { "worker" };
                    if rng.chance(70) {
                        kill9(&mut p.child);
                        tally.add(format!("cluster: kill -9 {who} at {point:?}"));
                        c.procs.remove(i);
                        applied += 1;
                        continue;
                    }
                    p.resume_at = Some(now + rng.ms(100, 1800));
                    tally.add(format!("cluster: freeze {who} at {point:?}, resume"));
                    applied += 1;
                }
            }
            i += 1;
        }
        if finished {
            if !c.has_coordinator() {
                break;
            }
            continue;
        }
        if !c.has_coordinator() {
            let plan = armed_plan(rng, &COORDINATOR_POINTS, applied);
            c.spawn(Role::Coordinator, plan);
        }
        while c.live_workers() < 3 {
            let plan = armed_plan(rng, &WORKER_POINTS, applied);
            c.spawn(Role::Worker, plan);
        }
        if applied >= quota || now < next_fault {
            continue;
        }
        next_fault = now + rng.ms(300, 1200);
        match rng.below(8) {
            0 | 1 => {
                let Some(w) = c.pick(rng, Role::Worker) else { continue };
                kill9(&mut c.procs[w].child);
                c.procs.remove(w);
                tally.add("cluster: kill -9 worker at a random instant");
            }
            2 => {
                let Some(k) = c.pick(rng, Role::Coordinator) else { continue };
                kill9(&mut c.procs[k].child);
                c.procs.remove(k);
                tally.add("cluster: kill -9 coordinator at a random instant");
            }
            3 => {
                // Past the heartbeat timeout: replaced, then back as a zombie.
                let Some(w) = c.pick(rng, Role::Worker) else { continue };
                signal(c.procs[w].child.id(), "STOP");
                c.procs[w].frozen_until = Some(now + rng.ms(1500, 3500));
                tally.add("cluster: freeze worker past the heartbeat timeout, resume after its replacement");
            }
            4 => {
                let Some(w) = c.pick(rng, Role::Worker) else { continue };
                signal(c.procs[w].child.id(), "STOP");
                std::thread::sleep(rng.ms(50, 600));
                signal(c.procs[w].child.id(), "CONT");
                tally.add("cluster: freeze worker within the heartbeat timeout, resume");
            }
            5 => {
                let Some(k) = c.pick(rng, Role::Coordinator) else { continue };
                signal(c.procs[k].child.id(), "STOP");
                c.procs[k].resume_at = Some(now + rng.ms(200, 2500));
                tally.add("cluster: freeze coordinator, resume");
            }
            6 => {
                let live = c.proxy.live();
                if live.is_empty() {
                    continue;
                }
                live[rng.below(live.len() as u64) as usize].cut();
                tally.add("cluster: cut a worker's control connection");
            }
            _ => {
                let live = c.proxy.live();
                if live.is_empty() {
                    continue;
                }
                let link = live[rng.below(live.len() as u64) as usize].clone();
                link.dropping.store(true, Ordering::SeqCst);
                let hold = rng.ms(300, 2500);
                std::thread::spawn(move || {
                    std::thread::sleep(hold);
                    link.cut();
                });
                tally.add("cluster: drop a worker's control traffic silently, then cut it");
            }
        }
        applied += 1;
    }
    c.kill_all();
    audit(dir, COUNT);
}

#[test]
#[ignore = "slow: scripts/test-faults runs it"]
fn a_three_worker_job_loses_and_duplicates_nothing_through_random_and_chosen_faults() {
    run_faulted_jobs("coordinator + 3 workers", 15, faulted_cluster_job);
}
