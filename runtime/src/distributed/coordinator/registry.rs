//! The registry every coordinator task and the HTTP API share: job status,
//! the workers connected now with their counters, and the running attempt's
//! event queue, to which worker messages and losses are routed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::super::protocol::{JobToken, ToCoordinator, ToWorker, WorkerCounters};
use crate::checkpoint::CheckpointStore;
use crate::job::coordinate::Request;
use crate::metrics::JobMetrics;
use crate::task::error::{FailureKind, TaskFailure};
use crate::task::{Event, TaskId};

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
    pub(super) epoch: u64,
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

pub(super) struct WorkerConn {
    pub(super) name: String,
    pub(super) data_addr: SocketAddr,
    pub(super) tx: mpsc::Sender<ToWorker>,
    pub(super) last_seen: Instant,
    pub(super) registered_at_ms: u64,
    pub(super) counters: WorkerCounters,
}

/// Attempt epoch, where its events go, and the workers (registry ids) it runs on.
pub(super) type CurrentAttempt = (u64, mpsc::Sender<Event>, Vec<u64>);
/// A worker's reply to `Deploy`: worker id, epoch, outcome.
pub(super) type Opened = (u64, u64, Result<(), OpenFailure>);

/// A worker's failed deployment: why, and the checkpoint it found damaged.
pub(super) struct OpenFailure {
    pub(super) failure: TaskFailure,
    pub(super) damaged: Option<u64>,
}

/// Everything the coordinator's tasks and the HTTP API share.
pub struct Shared {
    pub status: Mutex<JobStatus>,
    pub metrics: Arc<JobMetrics>,
    pub requests: mpsc::Sender<Request>,
    pub store: CheckpointStore,
    pub token: JobToken,
    /// Savepoints taken in the background for `POST /v1/savepoint-triggers`.
    pub triggers: crate::distributed::triggers::Triggers,
    pub(super) workers: Mutex<BTreeMap<u64, WorkerConn>>,
    /// The running attempt's event channel and workers.
    pub(super) attempt: Mutex<Option<CurrentAttempt>>,
    /// Replies to `Deploy`.
    pub(super) opened: Mutex<Option<mpsc::Sender<Opened>>>,
    /// Records in and out counted by attempts that ended or workers that left.
    pub(super) retired: Mutex<(u64, u64)>,
}

impl Shared {
    pub fn status(&self) -> Option<JobStatus> {
        self.status.lock().ok().map(|s| s.clone())
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut JobStatus)) {
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

    /// A counter of the current attempt, summed over its workers.
    pub fn attempt_sum(&self, counter: impl Fn(&WorkerCounters) -> u64) -> u64 {
        let epoch = self.attempt.lock().ok().and_then(|a| a.as_ref().map(|a| a.0)).unwrap_or(0);
        self.workers
            .lock()
            .map(|w| w.values().filter(|c| c.counters.epoch == epoch).map(|c| counter(&c.counters)).sum())
            .unwrap_or(0)
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

    /// Drops a worker from the registry; the attempt it served learns of
    /// the loss (waiting for room in its event queue rather than dropping it).
    pub(super) async fn lose_worker(&self, id: u64, why: &str) {
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
                // A closed queue means the attempt ended already.
                let _ = events.send(Event::Failed { task, failure }).await;
                info!(epoch = %format!("{epoch:016x}"), "the attempt lost worker {}", conn.name);
            }
        }
    }

    /// Handles one message of worker `id`. Events of the running attempt
    /// wait for room in its queue: an ack or a task result is never
    /// dropped; a slow loop slows this worker's reader instead.
    pub(super) async fn on_message(&self, id: u64, msg: ToCoordinator) {
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
            ToCoordinator::Opened { epoch } => self.reply_opened(id, epoch, Ok(())).await,
            ToCoordinator::OpenFailed { epoch, failure, damaged } => {
                self.reply_opened(id, epoch, Err(OpenFailure { failure, damaged })).await
            }
            ToCoordinator::Event { epoch, event } => {
                let target = self.attempt.lock().ok().and_then(|a| a.clone());
                match target {
                    Some((current, events, _)) if current == epoch => {
                        // Closed: the attempt ended and nobody needs it.
                        let _ = events.send(event).await;
                    }
                    _ => debug!(epoch = %format!("{epoch:016x}"), "ignoring an event of a stale attempt"),
                }
            }
        }
    }

    async fn reply_opened(&self, worker: u64, epoch: u64, result: Result<(), OpenFailure>) {
        let tx = self.opened.lock().ok().and_then(|o| o.clone());
        if let Some(tx) = tx {
            // Closed: that deployment was given up already.
            let _ = tx.send((worker, epoch, result)).await;
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
