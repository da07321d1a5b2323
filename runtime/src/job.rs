//! Running a job in one process: restore, start every subtask, coordinate
//! checkpoints, and finish or fail as a whole.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::checkpoint::coordinator::FailureVerdict;
use crate::checkpoint::{CheckpointError, CheckpointStore, CoordinatorOptions, PendingCheckpoints};
use crate::dataflow::JobGraph;
use crate::faults::{FaultPoint, Faults};
use crate::keygroup::KeyGroupRange;
use crate::manifest::CheckpointOptions;
use crate::metrics::{CompletedCheckpoint, JobMetrics};
use crate::task::runnable::{RunnableTask, TaskIo};
use crate::task::{Control, Event, TaskContext, TaskError, TaskId};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("task {task} failed: {source}")]
    Task { task: String, source: Box<TaskError> },
    #[error("{task} failed: {reason}")]
    Background { task: String, reason: String },
    #[error("checkpoint {id} failed ({reason}); {consecutive} consecutive failures exceed tolerableFailures")]
    TooManyCheckpointFailures { id: u64, reason: String, consecutive: u32 },
    #[error("cannot {action} checkpoint {id}: {source}")]
    Complete { action: &'static str, id: u64, source: CheckpointError },
    #[error("task {task} panicked or was cancelled")]
    Panicked { task: String },
}

/// How a job runs, beyond its graph.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub name: String,
    pub namespace: String,
    pub checkpoints: CheckpointOptions,
    pub batch_size: usize,
    pub channel_capacity: usize,
    pub faults: Faults,
}

impl JobConfig {
    pub fn new(name: &str, namespace: &str, checkpoints: CheckpointOptions) -> JobConfig {
        JobConfig {
            name: name.into(),
            namespace: namespace.into(),
            checkpoints,
            batch_size: 1024,
            channel_capacity: 16,
            faults: Faults::none(),
        }
    }
}

/// How a finished run went.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub restored_from: Option<u64>,
    /// Damaged checkpoints passed over on restore, with why.
    pub skipped: Vec<(u64, String)>,
    pub last_checkpoint: Option<CompletedCheckpoint>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Running {
    controls: Vec<mpsc::Sender<Control>>,
    sources: Vec<usize>,
    ids: Vec<TaskId>,
}

impl Running {
    async fn broadcast(&self, msg: Control, only: Option<&[usize]>) {
        let all: Vec<usize> = (0..self.controls.len()).collect();
        for &i in only.unwrap_or(&all) {
            // A task that already exited needs no message.
            let _ = self.controls[i].send(msg.clone()).await;
        }
    }
}

/// Runs `graph` to completion (bounded sources) or failure. Every subtask
/// is cancelled when this returns or is dropped.
pub async fn run_job(graph: JobGraph, config: &JobConfig, metrics: Arc<JobMetrics>) -> Result<JobOutcome, JobError> {
    let store = CheckpointStore::open(&config.checkpoints.storage, &config.namespace, &config.name)?;
    let max_parallelism = graph.max_parallelism;
    let existing = store.checkpoint_ids().await?;
    let restored = store.latest_restorable(max_parallelism).await?.map(Arc::new);
    let next_id = existing.first().map_or(1, |newest| newest + 1);
    match &restored {
        Some(r) => info!(checkpoint = r.id, path = %r.path, "restoring job {} from checkpoint {}", config.name, r.id),
        None => info!("starting job {} with empty state", config.name),
    }
    let outcome = JobOutcome {
        restored_from: restored.as_ref().map(|r| r.id),
        skipped: restored.as_ref().map(|r| r.skipped.clone()).unwrap_or_default(),
        last_checkpoint: None,
    };

    for edge in &graph.edges {
        edge.connect(config.channel_capacity);
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let mut tasks: Vec<(Box<dyn RunnableTask>, TaskIo)> = Vec::new();
    let mut running = Running { controls: Vec::new(), sources: Vec::new(), ids: Vec::new() };
    for (stage_index, stage) in graph.stages.iter().enumerate() {
        let name: Arc<str> = Arc::from(stage.name.as_str());
        for subtask in 0..stage.parallelism {
            let id = TaskId { stage: stage_index, name: name.clone(), subtask, parallelism: stage.parallelism };
            let ctx = TaskContext {
                id: id.clone(),
                max_parallelism,
                key_groups: KeyGroupRange::for_subtask(max_parallelism, stage.parallelism, subtask),
                mode: config.checkpoints.mode,
                restored: restored.clone(),
                metrics: metrics.clone(),
                faults: config.faults.clone(),
                batch_size: config.batch_size,
                channel_capacity: config.channel_capacity,
            };
            let task = (stage.factory)(ctx)
                .map_err(|source| JobError::Task { task: id.to_string(), source: Box::new(source) })?;
            let (control_tx, control_rx) = mpsc::channel(64);
            if stage.is_source {
                running.sources.push(running.controls.len());
            }
            running.controls.push(control_tx);
            running.ids.push(id);
            tasks.push((task, TaskIo { control: control_rx, events: events_tx.clone(), store: store.clone() }));
        }
    }
    drop(events_tx);
    // Open every task before any runs: restore-time commits and clean-ups
    // must not race with new output.
    for ((task, _), id) in tasks.iter_mut().zip(&running.ids) {
        task.open().await.map_err(|source| JobError::Task { task: id.to_string(), source: Box::new(source) })?;
    }
    let mut join = JoinSet::new();
    let mut exits = Vec::new();
    for (i, (task, io)) in tasks.into_iter().enumerate() {
        let TaskThread { done, exited } = run_on_own_thread(&running.ids[i], task, io)?;
        exits.push(exited);
        join.spawn(async move { (i, done.await.unwrap_or(Err(TaskError::Disconnected("task thread")))) });
    }
    let result = coordinate(&mut join, &mut events, &running, &store, config, max_parallelism, next_id, &metrics).await;
    join.abort_all();
    // Wait until every subtask thread is gone, so that nothing of this run
    // (a late commit, a late state file) can touch what the next run restores.
    for exited in exits {
        let _ = exited.await;
    }
    result.map(|last_checkpoint| JobOutcome { last_checkpoint, ..outcome })
}

/// A subtask's thread: its result, and a signal that fires when it is gone.
struct TaskThread {
    done: oneshot::Receiver<Result<(), TaskError>>,
    exited: oneshot::Receiver<()>,
}

/// Runs a subtask on a thread of its own, as Flink does: a work-stealing
/// pool tends to run a producer and its consumer on one core, which halves
/// a pipeline's throughput. The subtask is cancelled when the returned
/// receiver is dropped.
fn run_on_own_thread(id: &TaskId, task: Box<dyn RunnableTask>, io: TaskIo) -> Result<TaskThread, JobError> {
    let (tx, rx) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel::<()>();
    let spawn_error =
        |e: std::io::Error| JobError::Background { task: id.to_string(), reason: format!("cannot start thread: {e}") };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(spawn_error)?;
    std::thread::Builder::new()
        .name(format!("{}-{}", id.name, id.subtask))
        .spawn(move || {
            runtime.block_on(async move {
                let mut tx = tx;
                tokio::select! {
                    result = task.run(io) => { let _ = tx.send(result); }
                    _ = tx.closed() => {}
                }
            });
            // Dropping the runtime ends the subtask's background writers.
            drop(runtime);
            drop(exit_tx);
        })
        .map_err(spawn_error)?;
    Ok(TaskThread { done: rx, exited: exit_rx })
}

#[allow(clippy::too_many_arguments)]
async fn coordinate(
    join: &mut JoinSet<(usize, Result<(), TaskError>)>,
    events: &mut mpsc::Receiver<Event>,
    running: &Running,
    store: &CheckpointStore,
    config: &JobConfig,
    max_parallelism: u32,
    next_id: u64,
    metrics: &JobMetrics,
) -> Result<Option<CompletedCheckpoint>, JobError> {
    let opts = CoordinatorOptions::from(&config.checkpoints);
    let tick_every = opts
        .interval
        .map_or(Duration::from_millis(100), |i| (i / 4).clamp(Duration::from_millis(5), Duration::from_millis(100)));
    let mut coordinator = PendingCheckpoints::new(
        opts,
        config.name.clone(),
        max_parallelism,
        running.controls.len(),
        next_id,
        Instant::now(),
    );
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut exhausted = 0;
    let mut finished = 0;
    let mut stopping = false;
    let mut last = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                for id in coordinator.expired(now) {
                    warn!(checkpoint = id, "checkpoint {id} expired before completing");
                    metrics.checkpoints_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    running.broadcast(Control::Abort(id), None).await;
                    if let FailureVerdict::FailJob { consecutive } = coordinator.fail(id) {
                        return Err(JobError::TooManyCheckpointFailures { id, reason: "expired".into(), consecutive });
                    }
                }
                if !stopping && coordinator.due(now) {
                    let barrier = coordinator.trigger(now, wall_ms());
                    debug!(checkpoint = barrier.id, "triggering checkpoint {}", barrier.id);
                    running.broadcast(Control::Trigger(barrier), Some(&running.sources)).await;
                }
            }
            Some(event) = events.recv() => match event {
                Event::Ack { checkpoint, task, files } => {
                    let Some(meta) = coordinator.ack(checkpoint, task, files, Instant::now(), wall_ms()) else { continue };
                    let id = meta.id;
                    store.write_metadata(&meta).await.map_err(|source| JobError::Complete { action: "complete", id, source })?;
                    config.faults.check(FaultPoint::AfterMetadata).map_err(|source| JobError::Task { task: "coordinator".into(), source: Box::new(source) })?;
                    let completed = CompletedCheckpoint {
                        id,
                        path: store.path_of(id),
                        completed_at_ms: meta.completed_at_ms,
                        duration_ms: meta.duration_ms,
                        size_bytes: meta.size_bytes(),
                    };
                    info!(checkpoint = id, duration_ms = meta.duration_ms, size_bytes = completed.size_bytes, "completed checkpoint {id}");
                    metrics.checkpoints_completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics.set_last_checkpoint(completed.clone());
                    last = Some(completed);
                    running.broadcast(Control::Complete(id), None).await;
                    let retained = config.checkpoints.retained.max(1) as usize;
                    store.apply_retention(id, retained).await.map_err(|source| JobError::Complete { action: "apply retention after", id, source })?;
                    if coordinator.is_final(id) {
                        stopping = true;
                        running.broadcast(Control::Stop, None).await;
                    }
                }
                Event::Decline { checkpoint, task, reason } => {
                    warn!(checkpoint, %task, "checkpoint {checkpoint} declined by {task}: {reason}");
                    metrics.checkpoints_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    running.broadcast(Control::Abort(checkpoint), None).await;
                    if let FailureVerdict::FailJob { consecutive } = coordinator.fail(checkpoint) {
                        return Err(JobError::TooManyCheckpointFailures { id: checkpoint, reason, consecutive });
                    }
                }
                Event::SourceExhausted(task) => {
                    debug!(%task, "source finished");
                    exhausted += 1;
                    if exhausted == running.sources.len() {
                        coordinator.request_final();
                    }
                }
                Event::Failed { task, reason } => return Err(JobError::Background { task: task.to_string(), reason }),
            },
            Some(done) = join.join_next() => match done {
                Ok((_, Ok(()))) => {
                    finished += 1;
                    if finished == running.controls.len() {
                        return Ok(last);
                    }
                }
                Ok((i, Err(source))) => {
                    let first = JobError::Task { task: running.ids[i].to_string(), source: Box::new(source) };
                    return Err(root_cause(join, running, first).await);
                }
                Err(e) => return Err(JobError::Panicked { task: e.to_string() }),
            },
        }
    }
}

/// When one task fails, its neighbours fail too, seeing a closed channel.
/// Report the failure that caused the others, not the first one seen.
async fn root_cause(
    join: &mut JoinSet<(usize, Result<(), TaskError>)>,
    running: &Running,
    first: JobError,
) -> JobError {
    if !matches!(&first, JobError::Task { source, .. } if matches!(**source, TaskError::Disconnected(_))) {
        return first;
    }
    join.abort_all();
    while let Some(done) = join.join_next().await {
        if let Ok((i, Err(source))) = done {
            if !matches!(source, TaskError::Disconnected(_)) {
                return JobError::Task { task: running.ids[i].to_string(), source: Box::new(source) };
            }
        }
    }
    first
}
