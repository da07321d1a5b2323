//! Running a job: restore, start subtasks, coordinate checkpoints, and
//! finish or fail as a whole.
//!
//! # Layout
//! - [`deploy`]: a process's share of subtasks, on threads of their own.
//! - [`coordinate`]: the checkpoint loop over any [`coordinate::ControlPlane`].
//! - [`alignment`]: the least watermark of the source subtasks, for
//!   watermark alignment.
//! - [`fence`]: the incarnation and epoch that fence stale writers.
//! - [`failure`]: what a failure's cause means: recover in place or exit.
//! - [`run_job`]: both together in one process (`weir run`).

pub mod alignment;
pub mod coordinate;
pub mod deploy;
pub mod failure;
pub mod fence;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::checkpoint::{CheckpointError, CheckpointStore, Keep, Ledger, LedgerSlot, Load, RestoredCheckpoint};
use crate::dataflow::JobGraph;
use crate::faults::Faults;
use crate::manifest::CheckpointOptions;
use crate::metrics::{CompletedCheckpoint, JobMetrics};
use crate::task::error::TaskFailure;
use crate::task::router::ChannelBounds;
use crate::task::{Control, Event, TaskError, TaskId};
use coordinate::{ControlPlane, Loop};
use deploy::{all_tasks, Deployment};
use fence::Fence;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("task {task} failed: {source}")]
    Task { task: String, source: Box<TaskError> },
    #[error("task {task} failed: {failure}")]
    TaskFailed { task: String, failure: TaskFailure },
    /// Workers went away while an attempt was being deployed.
    #[error("{0}")]
    WorkersLost(String),
    /// Too few workers registered within the wait's deadline: a replacement
    /// that never comes (a pod that cannot be scheduled, a worker that
    /// cannot reach the coordinator) must not hold the job forever.
    #[error("{registered} of {wanted} workers registered within {waited:?} (--worker-wait-timeout); missing workers are not coming")]
    WorkersUnavailable { registered: usize, wanted: usize, waited: std::time::Duration },
    #[error("{task} failed: {reason}")]
    Internal { task: String, reason: String },
    #[error("checkpoint {id} failed ({reason}); {consecutive} consecutive failures exceed tolerableFailures")]
    TooManyCheckpointFailures { id: u64, reason: String, consecutive: u32 },
    #[error("checkpoint {id} is damaged (found so by a worker restoring it): {reason}")]
    DamagedCheckpoint { id: u64, reason: String },
    #[error("cannot start from spec.initialSavepointPath {uri}: {reason}")]
    InitialSavepoint { uri: String, reason: String },
    #[error(transparent)]
    Fence(#[from] fence::FenceError),
    #[error(
        "checkpoint {id} at {path} holds state of {} the job no longer has ({}); an operator's id \
         probably changed. Give the step its old `id`, or set spec.allowNonRestoredState: true to drop that state",
        if uids.len() == 1 { "an operator" } else { "operators" },
        uids.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
    )]
    NonRestoredState { id: u64, path: String, uids: Vec<String> },
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
    /// Start even if restored state matches no operator (it is dropped).
    pub allow_non_restored_state: bool,
    /// This process's newest ledger entry, shared by its attempts.
    pub ledger: LedgerSlot,
}

impl JobConfig {
    /// How much each shuffle channel holds at first.
    pub fn channel_bounds(&self) -> ChannelBounds {
        ChannelBounds { batches: self.channel_capacity, records: self.channel_capacity * self.batch_size }
    }

    /// The configuration a manifest asks for.
    pub fn for_job(job: &crate::manifest::StreamJob) -> JobConfig {
        let mut config =
            JobConfig::new(&job.metadata.name, job.metadata.namespace_or_default(), job.spec.checkpoints.clone());
        config.initial_savepoint = job.spec.initial_savepoint_path.clone();
        config.allow_non_restored_state = job.spec.allow_non_restored_state;
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
            allow_non_restored_state: false,
            ledger: LedgerSlot::default(),
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
    let everything =
        RestoreOptions { not_before_ms: 0, last_issued: 0, load: Load::Verified(Keep::Everything), known_damaged: &[] };
    let RestorePoint { restored, next_id, fence, ledger } = restore_point(&store, &graph, config, everything).await?;
    let outcome = JobOutcome {
        restored_from: restored.as_ref().map(|r| r.id),
        skipped: restored.as_ref().map(|r| r.skipped.clone()).unwrap_or_default(),
        last_checkpoint: None,
    };
    for edge in &graph.edges {
        edge.connect(config.channel_bounds());
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let mut deployment =
        Deployment::build(&graph, |_| true, restored.clone(), fence, config, metrics.clone(), &store, &events_tx)?;
    deployment.open().await?;
    if let Some(r) = restored {
        r.release_state();
    }
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
        fence,
        ledger,
        last_issued: &AtomicU64::new(0),
        damaged: outcome.skipped.iter().map(|(id, _)| *id).collect(),
    };
    let result = coordinator.run(&mut events, &mut requests).await;
    local.deployment.shutdown().await;
    result.map(|last_checkpoint| JobOutcome { last_checkpoint, ..outcome })
}

/// How an attempt's restore point is chosen.
pub struct RestoreOptions<'a> {
    /// Checkpoints completed before this time are ignored (a stateless upgrade).
    pub not_before_ms: u64,
    /// The highest checkpoint id this process issued.
    pub last_issued: u64,
    /// How candidates are read: all of it where one process runs every
    /// subtask, `_metadata` only on a coordinator whose workers read state.
    pub load: Load,
    /// Checkpoints a worker found damaged while restoring them.
    pub known_damaged: &'a [(u64, String)],
}

/// Where an attempt starts.
pub struct RestorePoint {
    pub restored: Option<Arc<RestoredCheckpoint>>,
    /// The first id for new checkpoints.
    pub next_id: u64,
    /// The restored checkpoint's incarnation (a new one without a
    /// checkpoint of the job's own) and a new epoch.
    pub fence: Fence,
    /// The attempt's place in the job's ledger, joined before the restore
    /// point was chosen: whatever another attempt commits after that fails.
    pub ledger: Ledger,
}

/// The incarnation an attempt writes under: its own checkpoint's, else
/// `fresh` (see [`Ledger::fresh_incarnation`]); `None`: a new one is drawn.
/// Another job's savepoint starts an incarnation apart from that job's:
/// its output is not ours.
fn incarnation_of(restored: Option<&RestoredCheckpoint>, fresh: u64) -> Option<u64> {
    match restored {
        Some(r) if !r.external => Some(r.metadata.incarnation),
        Some(r) if r.metadata.incarnation == fresh => None,
        _ => Some(fresh),
    }
}

/// The checkpoint to restore, the first id for new checkpoints and the
/// attempt's fence. The id is above every id in storage, complete or not,
/// above the restored one and above `last_issued` (ids issued by this
/// process whose directories may not exist), so no id is ever used twice.
/// Checkpoints completed before `not_before_ms` are ignored (a
/// stateless upgrade starts empty). Without a checkpoint of its own the job
/// starts from `initial` (a savepoint or checkpoint directory) if given;
/// one that cannot be read is an error, never a silent start from empty.
pub async fn restore_point(
    store: &CheckpointStore,
    graph: &JobGraph,
    config: &JobConfig,
    opts: RestoreOptions<'_>,
) -> Result<RestorePoint, JobError> {
    let RestoreOptions { not_before_ms, last_issued, load, known_damaged } = opts;
    let (max_parallelism, job, initial) = (graph.max_parallelism, &config.name, config.initial_savepoint.as_deref());
    // Joining first fences every older attempt: what it committed before is
    // in the ledger read here, and it can commit nothing after.
    let epoch = fence::random_token()?;
    let ledger = Ledger::join(store, epoch, fence::random_token()?, &config.ledger).await?;
    let committed = ledger.committed().await;
    let existing = store.checkpoint_ids().await?;
    let mut restored = store.latest_restorable(max_parallelism, &load, known_damaged, &committed).await?;
    if restored.as_ref().is_some_and(|r| r.metadata.completed_at_ms < not_before_ms) {
        info!("ignoring checkpoints completed before the stateless upgrade at {not_before_ms} ms");
        restored = None;
    }
    if let (None, Some(uri), 0) = (&restored, initial, not_before_ms) {
        let refused = |e: CheckpointError| JobError::InitialSavepoint { uri: uri.into(), reason: e.to_string() };
        let snapshot =
            CheckpointStore::open_dir(uri).map_err(refused)?.load_snapshot_here(&load).await.map_err(refused)?;
        snapshot.require_max_parallelism(max_parallelism).map_err(refused)?;
        restored = Some(snapshot.into_external());
    }
    if let Some(r) = &restored {
        let orphaned: Vec<String> = r
            .metadata
            .operators
            .iter()
            .filter(|op| !op.files.is_empty() && !graph.state_uids.contains(&op.uid))
            .map(|op| op.uid.clone())
            .collect();
        if !orphaned.is_empty() {
            if !config.allow_non_restored_state {
                return Err(JobError::NonRestoredState { id: r.id, path: r.path.clone(), uids: orphaned });
            }
            warn!(checkpoint = r.id, dropped = ?orphaned,
                "dropping state of operators the job no longer has (allowNonRestoredState)");
        }
    }
    let fence = Fence::for_attempt(incarnation_of(restored.as_ref(), ledger.fresh_incarnation()), epoch)?;
    match &restored {
        Some(r) => {
            info!(checkpoint = r.id, path = %r.path, incarnation = %fence.incarnation_tag(), epoch = %fence.epoch_tag(),
            "restoring job {job} from checkpoint {}", r.id)
        }
        None => {
            info!(incarnation = %fence.incarnation_tag(), epoch = %fence.epoch_tag(), "starting job {job} with empty state")
        }
    }
    let next_id = existing
        .first()
        .map_or(1, |newest| newest + 1)
        .max(restored.as_ref().map_or(1, |r| r.id + 1))
        .max(last_issued + 1);
    Ok(RestorePoint { restored: restored.map(Arc::new), next_id, fence, ledger })
}
