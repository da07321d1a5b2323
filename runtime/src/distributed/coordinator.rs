//! The coordinator process: waits for workers, assigns subtasks, runs the
//! checkpoint loop over the network, and recovers from the loss of any
//! worker by resetting every worker to the newest completed checkpoint.
//! A coordinator that starts over (a new process) continues checkpoint ids
//! above everything in storage and takes back the workers that reconnect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::protocol::{self, JobToken, Placement, TaskKey, ToCoordinator, ToWorker, WorkerCounters};
use crate::checkpoint::CheckpointStore;
use crate::dataflow::JobGraph;
use crate::job::coordinate::{wall_ms, ControlPlane, Loop, Request};
use crate::job::deploy::all_tasks;
use crate::job::failure::{self, Recovery as Next};
use crate::job::{restore_point, JobConfig, JobError, RestorePoint};
use crate::manifest::StreamJob;
use crate::metrics::JobMetrics;
use crate::task::error::{FailureKind, TaskFailure};
use crate::task::{Control, Event, TaskId};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the job cannot be built: {0}")]
    Build(String),
    #[error(transparent)]
    Job(#[from] JobError),
}

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// The manifest text; workers get it as it is.
    pub manifest: String,
    pub job: StreamJob,
    /// Where workers connect.
    pub listen: SocketAddr,
    /// The HTTP API.
    pub http: SocketAddr,
    /// Workers the job runs on.
    pub workers: usize,
    /// A worker silent for longer is treated as lost.
    pub heartbeat_timeout: Duration,
    /// Pause between a failure and the next attempt.
    pub restart_delay: Duration,
    /// Checkpoints completed before this time (ms since the epoch) are not
    /// restored: set by a stateless upgrade.
    pub ignore_checkpoints_before_ms: u64,
    /// What workers and mutating API calls must present.
    pub token: JobToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobState {
    WaitingForWorkers,
    Deploying,
    Running,
    Restarting,
    Finished,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    pub name: String,
    pub data_addr: SocketAddr,
    pub registered_at_ms: u64,
    pub last_heartbeat_ms_ago: u64,
    pub records_in: u64,
    pub records_out: u64,
}

/// Time from a replacement worker registering to the first record after restore.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    pub attempt: u64,
    #[serde(skip)]
    epoch: u64,
    pub failed_at_ms: u64,
    pub workers_ready_at_ms: u64,
    pub first_record_at_ms: Option<u64>,
    pub recovery_ms: Option<u64>,
}

/// What the HTTP API shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub name: String,
    pub namespace: String,
    pub state: JobState,
    pub attempt: u64,
    /// The running attempt's fencing epoch (hex); messages, channels and
    /// files of any other epoch are refused.
    pub epoch: String,
    pub parallelism: u32,
    pub workers_wanted: usize,
    pub restored_from: Option<u64>,
    pub restarts: u64,
    pub last_failure: Option<String>,
    /// The kind of the last failure, which decided whether the job
    /// recovered in place or the coordinator exited.
    pub last_failure_kind: Option<FailureKind>,
    pub last_recovery: Option<Recovery>,
}

struct WorkerConn {
    name: String,
    data_addr: SocketAddr,
    tx: mpsc::Sender<ToWorker>,
    last_seen: Instant,
    registered_at_ms: u64,
    counters: WorkerCounters,
}

/// Attempt epoch, where its events go, and the workers (registry ids) it runs on.
type CurrentAttempt = (u64, mpsc::Sender<Event>, Vec<u64>);
/// A worker's reply to `Deploy`: worker id, epoch, outcome.
type Opened = (u64, u64, Result<(), TaskFailure>);

/// Everything the coordinator's tasks and the HTTP API share.
pub struct Shared {
    pub status: Mutex<JobStatus>,
    pub metrics: Arc<JobMetrics>,
    pub requests: mpsc::Sender<Request>,
    pub store: CheckpointStore,
    pub token: JobToken,
    workers: Mutex<BTreeMap<u64, WorkerConn>>,
    /// The running attempt's event channel and workers.
    attempt: Mutex<Option<CurrentAttempt>>,
    /// Replies to `Deploy`.
    opened: Mutex<Option<mpsc::Sender<Opened>>>,
    /// Records in and out counted by attempts that ended or workers that left.
    retired: Mutex<(u64, u64)>,
}

impl Shared {
    pub fn status(&self) -> Option<JobStatus> {
        self.status.lock().ok().map(|s| s.clone())
    }

    fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        let Ok(w) = self.workers.lock() else { return Vec::new() };
        w.values()
            .map(|c| WorkerInfo {
                name: c.name.clone(),
                data_addr: c.data_addr,
                registered_at_ms: c.registered_at_ms,
                last_heartbeat_ms_ago: c.last_seen.elapsed().as_millis() as u64,
                records_in: c.counters.records_in,
                records_out: c.counters.records_out,
            })
            .collect()
    }

    /// Records in and out over the job's life (current attempt plus earlier ones).
    pub fn records(&self) -> (u64, u64) {
        let (mut rin, mut rout) = self.retired.lock().map(|r| *r).unwrap_or((0, 0));
        if let Ok(w) = self.workers.lock() {
            for c in w.values() {
                rin += c.counters.records_in;
                rout += c.counters.records_out;
            }
        }
        (rin, rout)
    }

    /// Per stage, summed over workers, for the current attempt.
    pub fn stages(&self) -> Vec<crate::metrics::StageSample> {
        let mut sums: BTreeMap<String, crate::metrics::StageSample> = BTreeMap::new();
        let epoch = self.attempt.lock().ok().and_then(|a| a.as_ref().map(|a| a.0)).unwrap_or(0);
        if let Ok(w) = self.workers.lock() {
            for c in w.values().filter(|c| c.counters.epoch == epoch) {
                for s in &c.counters.stages {
                    let e = sums.entry(s.stage.clone()).or_insert_with(|| crate::metrics::StageSample {
                        stage: s.stage.clone(),
                        ..Default::default()
                    });
                    e.records_in += s.records_in;
                    e.records_out += s.records_out;
                    e.backpressure_ms += s.backpressure_ms;
                }
            }
        }
        sums.into_values().collect()
    }

    fn lose_worker(&self, id: u64, why: &str) {
        let removed = self.workers.lock().ok().and_then(|mut w| w.remove(&id));
        let Some(conn) = removed else { return };
        warn!(worker = %conn.name, "worker {} lost: {why}", conn.name);
        if let Ok(mut r) = self.retired.lock() {
            r.0 += conn.counters.records_in;
            r.1 += conn.counters.records_out;
        }
        let attempt = self.attempt.lock().ok().and_then(|a| a.clone());
        if let Some((epoch, events, members)) = attempt {
            if members.contains(&id) {
                let task =
                    TaskId { stage: usize::MAX, name: Arc::from(conn.name.as_str()), subtask: 0, parallelism: 0 };
                let failure = TaskFailure::new(FailureKind::WorkerLost, format!("worker {} lost: {why}", conn.name));
                let _ = events.try_send(Event::Failed { task, failure });
                info!(epoch = %format!("{epoch:016x}"), "the attempt lost worker {}", conn.name);
            }
        }
    }

    fn on_message(&self, id: u64, msg: ToCoordinator) {
        match msg {
            ToCoordinator::Register { .. } => {}
            ToCoordinator::Heartbeat { sent_at_us, counters } => {
                if let Ok(mut w) = self.workers.lock() {
                    if let Some(c) = w.get_mut(&id) {
                        c.last_seen = Instant::now();
                        let _ = c.tx.try_send(ToWorker::HeartbeatAck { sent_at_us });
                        if c.counters.epoch != counters.epoch {
                            // A new attempt starts counting from zero; keep the old counts.
                            if let Ok(mut r) = self.retired.lock() {
                                r.0 += c.counters.records_in;
                                r.1 += c.counters.records_out;
                            }
                        }
                        c.counters = counters.clone();
                    }
                }
                self.note_first_record(&counters);
            }
            ToCoordinator::Opened { epoch } => self.reply_opened(id, epoch, Ok(())),
            ToCoordinator::OpenFailed { epoch, failure } => self.reply_opened(id, epoch, Err(failure)),
            ToCoordinator::Event { epoch, event } => {
                let target = self.attempt.lock().ok().and_then(|a| a.clone());
                match target {
                    Some((current, events, _)) if current == epoch => {
                        let _ = events.try_send(event);
                    }
                    _ => debug!(epoch = %format!("{epoch:016x}"), "ignoring an event of a stale attempt"),
                }
            }
        }
    }

    fn reply_opened(&self, worker: u64, epoch: u64, result: Result<(), TaskFailure>) {
        if let Some(tx) = self.opened.lock().ok().and_then(|o| o.clone()) {
            let _ = tx.try_send((worker, epoch, result));
        }
    }

    fn note_first_record(&self, counters: &WorkerCounters) {
        let Some(at) = counters.first_record_at_ms else { return };
        self.update(|s| {
            if let Some(r) = s.last_recovery.as_mut().filter(|r| r.epoch == counters.epoch) {
                if r.first_record_at_ms.is_none_or(|t| at < t) {
                    r.first_record_at_ms = Some(at);
                    r.recovery_ms = Some(at.saturating_sub(r.workers_ready_at_ms));
                }
            }
        });
    }
}

struct RemotePlane {
    epoch: u64,
    tasks: Vec<(TaskId, bool)>,
    keys: Vec<TaskKey>,
    routes: Vec<mpsc::Sender<ToWorker>>,
}

impl ControlPlane for RemotePlane {
    fn tasks(&self) -> &[(TaskId, bool)] {
        &self.tasks
    }
    async fn send(&self, task: usize, control: Control) {
        let msg = ToWorker::Control { epoch: self.epoch, task: self.keys[task], control };
        // A lost worker's failure reaches the loop as an event.
        let _ = self.routes[task].send(msg).await;
    }
}

/// Binds the worker endpoint; returns the shared state and what runs the job.
pub async fn start(opts: CoordinatorOptions) -> Result<(Arc<Shared>, Coordinator), CoordinatorError> {
    let listener =
        TcpListener::bind(opts.listen).await.map_err(|source| CoordinatorError::Bind { addr: opts.listen, source })?;
    let spec = &opts.job.spec;
    let store = CheckpointStore::open(
        &spec.checkpoints.storage,
        opts.job.metadata.namespace_or_default(),
        &opts.job.metadata.name,
    )
    .map_err(JobError::from)?;
    let (requests_tx, requests) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        status: Mutex::new(JobStatus {
            name: opts.job.metadata.name.clone(),
            namespace: opts.job.metadata.namespace_or_default().to_string(),
            state: JobState::WaitingForWorkers,
            attempt: 0,
            epoch: String::new(),
            parallelism: spec.parallelism,
            workers_wanted: opts.workers,
            restored_from: None,
            restarts: 0,
            last_failure: None,
            last_failure_kind: None,
            last_recovery: None,
        }),
        metrics: Arc::new(JobMetrics::default()),
        requests: requests_tx,
        store,
        token: opts.token.clone(),
        workers: Mutex::default(),
        attempt: Mutex::default(),
        opened: Mutex::default(),
        retired: Mutex::default(),
    });
    let (registered_tx, registered) = mpsc::channel(64);
    tokio::spawn(accept_workers(listener, shared.clone(), registered_tx));
    tokio::spawn(watch_heartbeats(shared.clone(), opts.heartbeat_timeout));
    let last_issued = AtomicU64::new(0);
    Ok((shared.clone(), Coordinator { opts, shared, requests, registered, last_issued }))
}

pub struct Coordinator {
    opts: CoordinatorOptions,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    registered: mpsc::Receiver<u64>,
    /// The highest checkpoint id any attempt of this process issued.
    last_issued: AtomicU64,
}

async fn accept_workers(listener: TcpListener, shared: Arc<Shared>, registered: mpsc::Sender<u64>) {
    let mut next_id = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        next_id += 1;
        let id = next_id;
        let shared = shared.clone();
        let registered = registered.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_worker(id, stream, &shared, &registered).await {
                shared.lose_worker(id, &e);
            } else {
                shared.lose_worker(id, "connection closed");
            }
            let _ = peer;
        });
    }
}

async fn serve_worker(
    id: u64,
    stream: TcpStream,
    shared: &Shared,
    registered: &mpsc::Sender<u64>,
) -> Result<(), String> {
    let mut conn = protocol::framed(stream);
    let Some(ToCoordinator::Register { name, data_addr, token }) =
        protocol::recv::<ToCoordinator>(&mut conn).await.map_err(|e| e.to_string())?
    else {
        return Err("first message was not a registration".into());
    };
    if !shared.token.admits(token.as_deref()) {
        let reason = format!("worker {name} at {data_addr} presented a wrong or no job token");
        warn!("refused a registration: {reason}");
        let _ = protocol::send(&mut conn, &ToWorker::Refused { reason: reason.clone() }).await;
        return Err(reason);
    }
    info!(worker = %name, %data_addr, "worker {name} registered");
    let (mut sink, mut stream) = conn.split();
    let (tx, mut rx) = mpsc::channel::<ToWorker>(256);
    if let Ok(mut w) = shared.workers.lock() {
        w.insert(
            id,
            WorkerConn {
                name,
                data_addr,
                tx,
                last_seen: Instant::now(),
                registered_at_ms: wall_ms(),
                counters: WorkerCounters::default(),
            },
        );
    }
    let _ = registered.send(id).await;
    let writer = async {
        while let Some(msg) = rx.recv().await {
            let bytes = protocol::encode(&msg).map_err(|e| e.to_string())?;
            sink.send(bytes).await.map_err(|e| e.to_string())?;
        }
        // Dropped from the registry (heartbeat timeout): close the connection.
        Err::<(), String>("dropped by the coordinator".into())
    };
    let reader = async {
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let msg: ToCoordinator = protocol::decode(&frame).map_err(|e| e.to_string())?;
            shared.on_message(id, msg);
        }
        Ok::<(), String>(())
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

async fn watch_heartbeats(shared: Arc<Shared>, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
    loop {
        tick.tick().await;
        let silent: Vec<u64> = shared
            .workers
            .lock()
            .map(|w| w.iter().filter(|(_, c)| c.last_seen.elapsed() > timeout).map(|(id, _)| *id).collect())
            .unwrap_or_default();
        for id in silent {
            shared.lose_worker(id, &format!("no heartbeat for {timeout:?}"));
        }
    }
}

impl Coordinator {
    /// Runs the job until it finishes; recovers in place from the loss of
    /// workers and exits on any other failure (see `job::failure`).
    pub async fn run(mut self) -> Result<(), CoordinatorError> {
        let spec = self.opts.job.spec.clone();
        let graph = crate::pipeline::build(&spec).map_err(|e| CoordinatorError::Build(e.to_string()))?;
        let config = JobConfig::for_job(&self.opts.job);
        let mut attempt = 0u64;
        let mut failed_at: Option<u64> = None;
        loop {
            self.shared.update(|s| s.state = JobState::WaitingForWorkers);
            let members = self.wait_for_workers().await;
            attempt += 1;
            let ready_at = wall_ms();
            self.shared.update(|s| {
                s.state = JobState::Deploying;
                s.attempt = attempt;
            });
            let result = self.attempt(attempt, &graph, &config, &members, failed_at.map(|f| (f, ready_at))).await;
            let epoch = self.shared.attempt.lock().ok().and_then(|mut a| a.take()).map_or(0, |a| a.0);
            let e = match result {
                Ok(()) => {
                    // A stop's savepoint may still be copying: the process stays until it is done.
                    if !self.shared.store.wait_unpinned(config.checkpoints.timeout.get()).await {
                        warn!("a savepoint copy did not finish within the checkpoint timeout");
                    }
                    self.shared.update(|s| s.state = JobState::Finished);
                    info!("job {} finished", config.name);
                    for tx in self.worker_senders(&members) {
                        let _ = tx.send(ToWorker::Shutdown).await;
                    }
                    // Let the shutdown messages leave before the process ends.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(());
                }
                Err(e) => e,
            };
            let kind = failure::kind(&e);
            self.shared.update(|s| {
                s.last_failure = Some(e.to_string());
                s.last_failure_kind = Some(kind);
            });
            self.cancel_everywhere(epoch).await;
            match kind.recovery() {
                Next::ExitToOperator => {
                    // Retrying in place would fail the same way, forever. Fail
                    // the process, so the pod fails and the operator's restart
                    // strategy paces and bounds it.
                    warn!(attempt, ?kind, "attempt {attempt} failed: {e}; the coordinator exits");
                    return Err(CoordinatorError::Job(e));
                }
                Next::InPlace => {
                    warn!(
                        attempt,
                        ?kind,
                        "attempt {attempt} failed: {e}; restoring every worker from the newest completed checkpoint"
                    );
                    failed_at = Some(wall_ms());
                    self.shared.update(|s| {
                        s.state = JobState::Restarting;
                        s.restarts += 1;
                    });
                    tokio::time::sleep(self.opts.restart_delay).await;
                }
            }
        }
    }

    /// Tells every registered worker to drop the subtasks of the attempt of `epoch`.
    async fn cancel_everywhere(&self, epoch: u64) {
        let all: Vec<mpsc::Sender<ToWorker>> =
            self.shared.workers.lock().map(|w| w.values().map(|c| c.tx.clone()).collect()).unwrap_or_default();
        for tx in all {
            let _ = tx.send(ToWorker::Cancel { epoch }).await;
        }
    }

    fn worker_senders(&self, members: &[u64]) -> Vec<mpsc::Sender<ToWorker>> {
        let Ok(w) = self.shared.workers.lock() else { return Vec::new() };
        members.iter().filter_map(|id| w.get(id).map(|c| c.tx.clone())).collect()
    }

    /// Waits until enough workers are registered; returns the chosen ones.
    async fn wait_for_workers(&mut self) -> Vec<u64> {
        loop {
            let live: Vec<u64> = self.shared.workers.lock().map(|w| w.keys().copied().collect()).unwrap_or_default();
            if live.len() >= self.opts.workers {
                return live.into_iter().take(self.opts.workers).collect();
            }
            tokio::select! {
                _ = self.registered.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Runs one attempt: restore point and fence, deployment, the checkpoint
    /// loop. `recovering` is (failed at, workers ready at) after a failure.
    async fn attempt(
        &mut self,
        attempt: u64,
        graph: &JobGraph,
        config: &JobConfig,
        members: &[u64],
        recovering: Option<(u64, u64)>,
    ) -> Result<(), JobError> {
        let not_before = self.opts.ignore_checkpoints_before_ms;
        let last_issued = self.last_issued.load(Ordering::Relaxed);
        let RestorePoint { restored, next_id, fence } =
            restore_point(&self.shared.store, graph, config, not_before, last_issued).await?;
        let epoch = fence.epoch;
        let damaged = restored.as_ref().map(|r| r.skipped.iter().map(|(id, _)| *id).collect()).unwrap_or_default();
        let restore = restored.as_ref().map(|r| r.id);
        let restore_from = restored.as_ref().filter(|r| r.external).map(|r| r.path.clone());
        self.shared.update(|s| {
            s.restored_from = restore;
            s.epoch = fence.epoch_tag();
            if let Some((failed_at_ms, workers_ready_at_ms)) = recovering {
                s.last_recovery = Some(Recovery {
                    attempt,
                    epoch,
                    failed_at_ms,
                    workers_ready_at_ms,
                    first_record_at_ms: None,
                    recovery_ms: None,
                });
            }
        });
        let tasks = all_tasks(graph);
        let (addrs, senders): (Vec<SocketAddr>, Vec<mpsc::Sender<ToWorker>>) = {
            let w = self.shared.workers.lock().map_err(|_| lost("registry poisoned"))?;
            members.iter().filter_map(|id| w.get(id)).map(|c| (c.data_addr, c.tx.clone())).unzip()
        };
        if senders.len() != members.len() {
            return Err(lost("a worker left before deployment"));
        }
        // Subtask i of every stage goes to worker i mod n, so a keyed
        // subtask shares a worker with the source subtask of its index.
        let assignments: Vec<(TaskKey, usize)> = tasks
            .iter()
            .map(|(id, _)| (TaskKey { stage: id.stage, subtask: id.subtask }, id.subtask as usize % members.len()))
            .collect();
        let placement = Placement { assignments: assignments.clone(), data_addrs: addrs };
        let (events_tx, mut events) = mpsc::channel(4096);
        let (opened_tx, mut opened) = mpsc::channel(64);
        if let Ok(mut o) = self.shared.opened.lock() {
            *o = Some(opened_tx);
        }
        if let Ok(mut a) = self.shared.attempt.lock() {
            *a = Some((epoch, events_tx, members.to_vec()));
        }
        let heartbeat_timeout_ms = self.opts.heartbeat_timeout.as_millis() as u64;
        for (i, tx) in senders.iter().enumerate() {
            let deploy = ToWorker::Deploy {
                fence,
                manifest: self.opts.manifest.clone(),
                restore,
                restore_from: restore_from.clone(),
                placement: placement.clone(),
                worker_index: i,
                heartbeat_timeout_ms,
            };
            tx.send(deploy).await.map_err(|_| lost("a worker left during deployment"))?;
        }
        let mut ready = 0;
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        while ready < members.len() {
            tokio::select! {
                Some((worker, e, result)) = opened.recv() => {
                    if e != epoch { continue }
                    result.map_err(|failure| JobError::TaskFailed { task: format!("deployment on worker {worker}"), failure })?;
                    ready += 1;
                }
                Some(Event::Failed { task, failure }) = events.recv() => return Err(JobError::TaskFailed { task: task.to_string(), failure }),
                _ = &mut deadline => return Err(lost("workers did not open their subtasks within 60s")),
            }
        }
        // Every subtask is open (restore-time commits done) before any runs.
        for tx in &senders {
            tx.send(ToWorker::Start { epoch }).await.map_err(|_| lost("a worker left before start"))?;
        }
        self.shared.update(|s| s.state = JobState::Running);
        info!(attempt, epoch = %fence.epoch_tag(), incarnation = %fence.incarnation_tag(), workers = members.len(),
            restore = ?restore, next_checkpoint = next_id, "attempt {attempt} running");
        let plane = RemotePlane {
            epoch,
            keys: assignments.iter().map(|(k, _)| *k).collect(),
            routes: assignments.iter().map(|(_, w)| senders[*w].clone()).collect(),
            tasks,
        };
        let coordinator = Loop {
            plane: &plane,
            store: &self.shared.store,
            config,
            metrics: &self.shared.metrics,
            max_parallelism: graph.max_parallelism,
            next_id,
            fence,
            last_issued: &self.last_issued,
            damaged,
        };
        coordinator.run(&mut events, &mut self.requests).await.map(|_| ())
    }
}

fn lost(reason: &str) -> JobError {
    JobError::WorkersLost(reason.into())
}
