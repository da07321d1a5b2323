//! The coordinator process: waits for workers, assigns subtasks, runs the
//! checkpoint loop over the network, and recovers from the loss of any
//! worker by resetting every worker to the newest completed checkpoint.
//! A coordinator that starts over (a new process) continues checkpoint ids
//! above everything in storage and takes back the workers that reconnect.
//!
//! # Layout
//! - this module: the attempt lifecycle (wait for workers, restore point,
//!   deploy, run the checkpoint loop, recover in place or exit, by the
//!   failure's kind as `job::failure` classifies it).
//! - [`registry`]: status, connected workers and the running attempt's
//!   event queue, shared with the HTTP API.
//! - [`wire`]: the worker endpoint and the control plane to remote subtasks.
//! - [`heartbeats`]: dropping workers that went silent.

mod heartbeats;
mod registry;
mod wire;

pub use registry::{JobState, JobStatus, Recovery, Shared, WorkerInfo};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use super::protocol::{JobToken, Placement, TaskKey, ToWorker};
use super::tls::JobTls;
use crate::checkpoint::{CheckpointStore, Load};
use crate::dataflow::JobGraph;
use crate::job::coordinate::{wall_ms, Loop, Request};
use crate::job::deploy::all_tasks;
use crate::job::failure::{self, Recovery as Next};
use crate::job::{restore_point, JobConfig, JobError, RestoreOptions, RestorePoint};
use crate::manifest::StreamJob;
use crate::metrics::JobMetrics;
use crate::task::Event;
use registry::OpenFailure;
use wire::RemotePlane;

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
    /// How long to wait for enough workers to register before an attempt
    /// (Flink's `slot.request.timeout`); then the coordinator exits, so the
    /// operator's restart strategy replaces the pods.
    pub worker_wait_timeout: Duration,
    /// Pause between a failure and the next attempt.
    pub restart_delay: Duration,
    /// Checkpoints completed before this time (ms since the epoch) are not
    /// restored: set by a stateless upgrade.
    pub ignore_checkpoints_before_ms: u64,
    /// What workers and mutating API calls must present.
    pub token: JobToken,
    /// Mutual TLS on the worker endpoint.
    pub tls: Option<Arc<JobTls>>,
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
        triggers: Default::default(),
        workers: Mutex::default(),
        attempt: Mutex::default(),
        opened: Mutex::default(),
        retired: Mutex::default(),
    });
    let registered = Arc::new(Notify::new());
    tokio::spawn(wire::accept_workers(listener, shared.clone(), registered.clone(), opts.tls.clone()));
    tokio::spawn(heartbeats::watch_heartbeats(shared.clone(), opts.heartbeat_timeout));
    let last_issued = AtomicU64::new(0);
    Ok((shared.clone(), Coordinator { opts, shared, requests, registered, last_issued, found_damaged: Vec::new() }))
}

pub struct Coordinator {
    opts: CoordinatorOptions,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    /// Woken by each registration. A notification, not a queue: nobody
    /// reads it while an attempt runs, and a queue would fill and hold the
    /// next worker's registration forever.
    registered: Arc<Notify>,
    /// The highest checkpoint id any attempt of this process issued.
    last_issued: AtomicU64,
    /// Checkpoints a worker found damaged while restoring them.
    found_damaged: Vec<(u64, String)>,
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
            let members = match self.wait_for_workers().await {
                Ok(m) => m,
                Err(e) => {
                    warn!("{e}; the coordinator exits");
                    self.shared.update(|s| {
                        s.last_failure = Some(e.to_string());
                        s.last_failure_kind = Some(failure::kind(&e));
                    });
                    return Err(CoordinatorError::Job(e));
                }
            };
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
                        self.tell(&tx, ToWorker::Shutdown).await;
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
            self.tell(&tx, ToWorker::Cancel { epoch }).await;
        }
    }

    /// Sends one message to a worker; false if it left or took nothing
    /// within the heartbeat timeout (the heartbeat watch loses it then).
    async fn tell(&self, worker: &mpsc::Sender<ToWorker>, msg: ToWorker) -> bool {
        matches!(tokio::time::timeout(self.opts.heartbeat_timeout, worker.send(msg)).await, Ok(Ok(())))
    }

    fn worker_senders(&self, members: &[u64]) -> Vec<mpsc::Sender<ToWorker>> {
        let Ok(w) = self.shared.workers.lock() else { return Vec::new() };
        members.iter().filter_map(|id| w.get(id).map(|c| c.tx.clone())).collect()
    }

    /// Waits until enough workers are registered; returns the chosen ones,
    /// or gives up after the worker wait timeout.
    async fn wait_for_workers(&mut self) -> Result<Vec<u64>, JobError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.opts.worker_wait_timeout;
        let mut next_report = started + Duration::from_secs(10);
        loop {
            let live: Vec<u64> = self.shared.workers.lock().map(|w| w.keys().copied().collect()).unwrap_or_default();
            if live.len() >= self.opts.workers {
                return Ok(live.into_iter().take(self.opts.workers).collect());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JobError::WorkersUnavailable {
                    registered: live.len(),
                    wanted: self.opts.workers,
                    waited: self.opts.worker_wait_timeout,
                });
            }
            if tokio::time::Instant::now() >= next_report {
                next_report += Duration::from_secs(10);
                info!(
                    "waiting for workers: {} of {} registered after {:?}",
                    live.len(),
                    self.opts.workers,
                    started.elapsed()
                );
            }
            tokio::select! {
                _ = self.registered.notified() => {}
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
        let RestorePoint { restored, next_id, fence, ledger } = restore_point(
            &self.shared.store,
            graph,
            config,
            RestoreOptions {
                not_before_ms: not_before,
                last_issued,
                // Workers read the state files, each only its key groups.
                load: Load::MetadataOnly,
                known_damaged: &self.found_damaged,
            },
        )
        .await?;
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
            *a = Some((epoch, events_tx.clone(), members.to_vec()));
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
            if !self.tell(tx, deploy).await {
                return Err(lost("a worker left or took no message during deployment"));
            }
        }
        let mut ready = 0;
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        while ready < members.len() {
            tokio::select! {
                Some((worker, e, result)) = opened.recv() => {
                    if e != epoch { continue }
                    if let Err(OpenFailure { failure, damaged }) = result {
                        if let Some(id) = damaged {
                            // The next attempt passes it over.
                            self.found_damaged.push((id, failure.message.clone()));
                            return Err(JobError::DamagedCheckpoint { id, reason: failure.message });
                        }
                        return Err(JobError::TaskFailed { task: format!("deployment on worker {worker}"), failure });
                    }
                    ready += 1;
                }
                Some(Event::Failed { task, failure }) = events.recv() => return Err(JobError::TaskFailed { task: task.to_string(), failure }),
                _ = &mut deadline => return Err(lost("workers did not open their subtasks within 60s")),
            }
        }
        // Every subtask is open (restore-time commits done) before any runs.
        for tx in &senders {
            if !self.tell(tx, ToWorker::Start { epoch }).await {
                return Err(lost("a worker left or took no message before start"));
            }
        }
        self.shared.update(|s| s.state = JobState::Running);
        info!(attempt, epoch = %fence.epoch_tag(), incarnation = %fence.incarnation_tag(), workers = members.len(),
            restore = ?restore, next_checkpoint = next_id, "attempt {attempt} running");
        let plane = RemotePlane {
            epoch,
            keys: assignments.iter().map(|(k, _)| *k).collect(),
            routes: assignments.iter().map(|(_, w)| senders[*w].clone()).collect(),
            tasks,
            events: events_tx,
            slow_peer_limit: self.opts.heartbeat_timeout,
        };
        let coordinator = Loop {
            plane: &plane,
            store: &self.shared.store,
            config,
            metrics: &self.shared.metrics,
            max_parallelism: graph.max_parallelism,
            next_id,
            fence,
            ledger,
            last_issued: &self.last_issued,
            damaged,
        };
        coordinator.run(&mut events, &mut self.requests).await.map(|_| ())
    }
}

fn lost(reason: &str) -> JobError {
    JobError::WorkersLost(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::protocol::{self, ToCoordinator, WorkerCounters};
    use crate::task::error::FailureKind;

    fn options(dir: &std::path::Path, listen: SocketAddr) -> CoordinatorOptions {
        let manifest = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: counts}}\nspec:\n  parallelism: 3\n  \
             checkpoints: {{interval: 1s, storage: 'file://{}'}}\n  pipeline:\n    source: {{generator: {{keys: 10, \
             count: 10}}}}\n    steps: [{{keyBy: {{field: key}}}}, {{aggregate: {{count: true}}}}]\n    sink: {{stdout: \
             {{}}}}\n",
            dir.display()
        );
        let job = StreamJob::from_yaml(&manifest).unwrap();
        CoordinatorOptions {
            manifest,
            job,
            listen,
            http: "127.0.0.1:0".parse().unwrap(),
            workers: 3,
            heartbeat_timeout: Duration::from_secs(30),
            worker_wait_timeout: Duration::from_secs(300),
            restart_delay: Duration::ZERO,
            ignore_checkpoints_before_ms: 0,
            token: JobToken::new(None),
            tls: None,
        }
    }

    #[tokio::test]
    async fn every_worker_that_registers_is_served_however_many_came_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Nothing runs the job: as while an attempt runs, nobody waits for workers.
        let (_shared, _coordinator) = start(options(dir.path(), listen)).await.unwrap();
        for n in 0..200 {
            let mut conn = protocol::framed(tokio::net::TcpStream::connect(listen).await.unwrap());
            let register = ToCoordinator::Register { name: format!("w{n}"), data_addr: listen, token: None };
            protocol::send(&mut conn, &register).await.unwrap();
            let beat = ToCoordinator::Heartbeat { sent_at_us: n, counters: WorkerCounters::default() };
            protocol::send(&mut conn, &beat).await.unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(5), protocol::recv::<ToWorker>(&mut conn)).await;
            assert!(
                matches!(echo, Ok(Ok(Some(ToWorker::HeartbeatAck { sent_at_us }))) if sent_at_us == n),
                "registration {n} got no answer: {echo:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_coordinator_short_of_workers_past_the_wait_timeout_exits_naming_how_many_came() {
        let dir = tempfile::tempdir().unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut opts = options(dir.path(), listen);
        opts.worker_wait_timeout = Duration::from_secs(120);
        let (shared, coordinator) = start(opts).await.unwrap();
        let mut conn = protocol::framed(tokio::net::TcpStream::connect(listen).await.unwrap());
        let register = ToCoordinator::Register { name: "w0".into(), data_addr: listen, token: None };
        protocol::send(&mut conn, &register).await.unwrap();
        // One worker of three keeps heartbeating; the other two never come.
        let beating = tokio::spawn(async move {
            for n in 0.. {
                let beat = ToCoordinator::Heartbeat { sent_at_us: n, counters: WorkerCounters::default() };
                if protocol::send(&mut conn, &beat).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let ended = coordinator.run().await;
        beating.abort();
        assert!(started.elapsed() >= Duration::from_secs(120), "gave up after {:?}", started.elapsed());
        match ended {
            Err(CoordinatorError::Job(e @ JobError::WorkersUnavailable { registered: 1, wanted: 3, .. })) => {
                assert!(e.to_string().contains("1 of 3 workers registered within 120s"), "{e}");
            }
            other => panic!("expected WorkersUnavailable, got {other:?}"),
        }
        let status = shared.status().unwrap();
        assert_eq!(status.last_failure_kind, Some(FailureKind::WorkersUnavailable), "the cause reaches the API");
    }
}
