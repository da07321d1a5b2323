//! Running a job: restore, start subtasks, coordinate checkpoints, and
//! finish or fail as a whole.
//!
//! # Layout
//! - [`deploy`]: a process's share of subtasks, on threads of their own.
//! - [`coordinate`]: the checkpoint loop over any [`coordinate::ControlPlane`].
//! - [`run_job`]: both together in one process (`weir run`).

pub mod coordinate;
pub mod deploy;

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::info;

use crate::checkpoint::{CheckpointError, CheckpointStore, RestoredCheckpoint};
use crate::dataflow::JobGraph;
use crate::faults::Faults;
use crate::manifest::CheckpointOptions;
use crate::metrics::{CompletedCheckpoint, JobMetrics};
use crate::task::{Control, Event, TaskError, TaskId};
use coordinate::{ControlPlane, Loop};
use deploy::{all_tasks, Deployment};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("task {task} failed: {source}")]
    Task { task: String, source: Box<TaskError> },
    #[error("task {task} failed: {reason}")]
    TaskFailed { task: String, reason: String },
    #[error("{task} failed: {reason}")]
    Background { task: String, reason: String },
    #[error("checkpoint {id} failed ({reason}); {consecutive} consecutive failures exceed tolerableFailures")]
    TooManyCheckpointFailures { id: u64, reason: String, consecutive: u32 },
    #[error("cannot {action} checkpoint {id}: {source}")]
    Complete { action: &'static str, id: u64, source: CheckpointError },
    #[error("cannot start from spec.initialSavepointPath {uri}: {reason}")]
    InitialSavepoint { uri: String, reason: String },
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
    /// Where to start when the job has no completed checkpoint of its own.
    pub initial_savepoint: Option<String>,
}

impl JobConfig {
    /// The configuration a manifest asks for.
    pub fn for_job(job: &crate::manifest::StreamJob) -> JobConfig {
        let mut config =
            JobConfig::new(&job.metadata.name, job.metadata.namespace_or_default(), job.spec.checkpoints.clone());
        config.initial_savepoint = job.spec.initial_savepoint_path.clone();
        config
    }

    pub fn new(name: &str, namespace: &str, checkpoints: CheckpointOptions) -> JobConfig {
        JobConfig {
            name: name.into(),
            namespace: namespace.into(),
            checkpoints,
            batch_size: 1024,
            channel_capacity: 16,
            faults: Faults::none(),
            initial_savepoint: None,
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

struct Local {
    tasks: Vec<(TaskId, bool)>,
    deployment: Deployment,
}

impl ControlPlane for Local {
    fn tasks(&self) -> &[(TaskId, bool)] {
        &self.tasks
    }
    async fn send(&self, task: usize, msg: Control) {
        self.deployment.send(task, msg).await
    }
}

/// Runs `graph` in this process to completion (bounded sources) or
/// failure. Every subtask is gone when this returns.
pub async fn run_job(graph: JobGraph, config: &JobConfig, metrics: Arc<JobMetrics>) -> Result<JobOutcome, JobError> {
    let store = CheckpointStore::open(&config.checkpoints.storage, &config.namespace, &config.name)?;
    let (restored, next_id) =
        restore_point(&store, graph.max_parallelism, &config.name, 0, config.initial_savepoint.as_deref()).await?;
    let outcome = JobOutcome {
        restored_from: restored.as_ref().map(|r| r.id),
        skipped: restored.as_ref().map(|r| r.skipped.clone()).unwrap_or_default(),
        last_checkpoint: None,
    };
    for edge in &graph.edges {
        edge.connect(config.channel_capacity);
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let mut deployment = Deployment::build(&graph, |_| true, restored, config, metrics.clone(), &store, &events_tx)?;
    deployment.open().await?;
    deployment.start(&events_tx)?;
    drop(events_tx);
    let local = Local { tasks: all_tasks(&graph), deployment };
    let (_requests_tx, mut requests) = mpsc::channel(1);
    let coordinator = Loop {
        plane: &local,
        store: &store,
        config,
        metrics: &metrics,
        max_parallelism: graph.max_parallelism,
        next_id,
    };
    let result = coordinator.run(&mut events, &mut requests).await;
    local.deployment.shutdown().await;
    result.map(|last_checkpoint| JobOutcome { last_checkpoint, ..outcome })
}

/// The checkpoint to restore and the first id for new checkpoints, which
/// is above every id in storage, complete or not, and above the restored
/// one. Checkpoints completed before `not_before_ms` are ignored (a
/// stateless upgrade starts empty). Without a checkpoint of its own the job
/// starts from `initial` (a savepoint or checkpoint directory) if given;
/// one that cannot be read is an error, never a silent start from empty.
pub async fn restore_point(
    store: &CheckpointStore,
    max_parallelism: u32,
    job: &str,
    not_before_ms: u64,
    initial: Option<&str>,
) -> Result<(Option<Arc<RestoredCheckpoint>>, u64), JobError> {
    let existing = store.checkpoint_ids().await?;
    let mut restored = store.latest_restorable(max_parallelism).await?.map(Arc::new);
    if restored.as_ref().is_some_and(|r| r.metadata.completed_at_ms < not_before_ms) {
        info!("ignoring checkpoints completed before the stateless upgrade at {not_before_ms} ms");
        restored = None;
    }
    if let (None, Some(uri), 0) = (&restored, initial, not_before_ms) {
        let refused = |e: CheckpointError| JobError::InitialSavepoint { uri: uri.into(), reason: e.to_string() };
        let snapshot = CheckpointStore::open_dir(uri).map_err(refused)?.load_snapshot_here().await.map_err(refused)?;
        snapshot.require_max_parallelism(max_parallelism).map_err(refused)?;
        restored = Some(Arc::new(RestoredCheckpoint { external: true, ..snapshot }));
    }
    match &restored {
        Some(r) => info!(checkpoint = r.id, path = %r.path, "restoring job {job} from checkpoint {}", r.id),
        None => info!("starting job {job} with empty state"),
    }
    let next = existing.first().map_or(1, |newest| newest + 1).max(restored.as_ref().map_or(1, |r| r.id + 1));
    Ok((restored, next))
}
