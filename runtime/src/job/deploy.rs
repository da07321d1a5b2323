//! A process's share of a job's subtasks: built, opened, started on
//! threads of their own, and shut down. Used by `weir run` (all subtasks)
//! and by workers (the subtasks assigned to them).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::fence::Fence;
use super::{JobConfig, JobError};
use crate::checkpoint::{CheckpointStore, RestoredCheckpoint};
use crate::dataflow::JobGraph;
use crate::keygroup::KeyGroupRange;
use crate::manifest::FallbackPolicy;
use crate::metrics::JobMetrics;
use crate::task::runnable::{RunnableTask, TaskIo};
use futures::FutureExt;

use crate::task::error::{FailureKind, TaskFailure};
use crate::task::{Control, Event, TaskContext, TaskId};

/// Every subtask of a graph, in stage order, with whether it is a source.
pub fn all_tasks(graph: &JobGraph) -> Vec<(TaskId, bool)> {
    let mut out = Vec::new();
    for (stage, def) in graph.stages.iter().enumerate() {
        let name: Arc<str> = Arc::from(def.name.as_str());
        for subtask in 0..def.parallelism {
            out.push((TaskId { stage, name: name.clone(), subtask, parallelism: def.parallelism }, def.is_source));
        }
    }
    out
}

pub struct Deployment {
    pub ids: Vec<TaskId>,
    pub controls: Vec<mpsc::Sender<Control>>,
    /// Built and not started yet; behind a lock only so a deployment is `Sync`.
    tasks: std::sync::Mutex<Vec<(Box<dyn RunnableTask>, TaskIo)>>,
    cancel: watch::Sender<bool>,
    exits: Vec<oneshot::Receiver<()>>,
}

impl Deployment {
    /// Builds the subtasks `wanted` picks. Edges must be connected first.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        graph: &JobGraph,
        wanted: impl Fn(&TaskId) -> bool,
        restored: Option<Arc<RestoredCheckpoint>>,
        fence: Fence,
        config: &JobConfig,
        metrics: Arc<JobMetrics>,
        store: &CheckpointStore,
        events: &mpsc::Sender<Event>,
    ) -> Result<Deployment, JobError> {
        let (cancel, _) = watch::channel(false);
        let mut d =
            Deployment { ids: Vec::new(), controls: Vec::new(), tasks: Default::default(), cancel, exits: Vec::new() };
        let mut tasks = Vec::new();
        for (id, _) in all_tasks(graph) {
            if !wanted(&id) {
                continue;
            }
            let ctx = TaskContext {
                id: id.clone(),
                max_parallelism: graph.max_parallelism,
                key_groups: KeyGroupRange::for_subtask(graph.max_parallelism, id.parallelism, id.subtask),
                mode: config.checkpoints.mode,
                restored: restored.clone(),
                stage: metrics.stage(&id.name),
                metrics: metrics.clone(),
                faults: config.faults.clone(),
                batch_size: config.batch_size,
                channel_capacity: config.channel_capacity,
                in_flight_target: Some(config.checkpoints.in_flight_target.0).filter(|t| !t.is_zero()),
                fence,
                retract_on_fallback: config.checkpoints.on_fallback_past_committed_output == FallbackPolicy::Retract,
            };
            let task = (graph.stages[id.stage].factory)(ctx)
                .map_err(|source| JobError::Task { task: id.to_string(), source: Box::new(source) })?;
            let (control_tx, control_rx) = mpsc::channel(64);
            d.controls.push(control_tx);
            tasks.push((task, TaskIo { control: control_rx, events: events.clone(), store: store.clone() }));
            d.ids.push(id);
        }
        d.tasks = std::sync::Mutex::new(tasks);
        Ok(d)
    }

    /// Opens every subtask: restore-time commits and clean-ups happen here,
    /// before any subtask of the job runs.
    pub async fn open(&mut self) -> Result<(), JobError> {
        let tasks = self
            .tasks
            .get_mut()
            .map_err(|_| JobError::Internal { task: "deployment".into(), reason: "poisoned".into() })?;
        for ((task, _), id) in tasks.iter_mut().zip(&self.ids) {
            task.open().await.map_err(|source| JobError::Task { task: id.to_string(), source: Box::new(source) })?;
        }
        Ok(())
    }

    /// Starts every subtask on a thread of its own. Each reports its end as
    /// [`Event::TaskFinished`].
    pub fn start(&mut self, events: &mpsc::Sender<Event>) -> Result<(), JobError> {
        let tasks = std::mem::take(
            self.tasks
                .get_mut()
                .map_err(|_| JobError::Internal { task: "deployment".into(), reason: "poisoned".into() })?,
        );
        for ((task, io), id) in tasks.into_iter().zip(&self.ids) {
            let exited = run_on_own_thread(id, task, io, self.cancel.subscribe(), events.clone())?;
            self.exits.push(exited);
        }
        Ok(())
    }

    pub async fn send(&self, task: usize, msg: Control) {
        // A subtask that already ended needs no message.
        let _ = self.controls[task].send(msg).await;
    }

    /// Cancels every subtask and waits until their threads are gone, so
    /// nothing of this run (a late commit, a late state file) can touch
    /// what the next run restores.
    pub async fn shutdown(self) {
        let _ = self.cancel.send(true);
        drop(self.tasks);
        for exited in self.exits {
            let _ = exited.await;
        }
    }
}

/// Runs a subtask on a thread of its own, as Flink does: a work-stealing
/// pool tends to run a producer and its consumer on one core, which halves
/// a pipeline's throughput.
fn run_on_own_thread(
    id: &TaskId,
    task: Box<dyn RunnableTask>,
    io: TaskIo,
    mut cancel: watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
) -> Result<oneshot::Receiver<()>, JobError> {
    let (exit_tx, exit_rx) = oneshot::channel::<()>();
    let spawn_error =
        |e: std::io::Error| JobError::Internal { task: id.to_string(), reason: format!("cannot start thread: {e}") };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(spawn_error)?;
    let task_id = id.clone();
    std::thread::Builder::new()
        .name(format!("{}-{}", id.name, id.subtask))
        .spawn(move || {
            runtime.block_on(async move {
                // A panic in user code fails the subtask like any error,
                // with its message, instead of leaving the job waiting.
                let run = std::panic::AssertUnwindSafe(task.run(io)).catch_unwind();
                let result = tokio::select! {
                    result = run => result,
                    _ = cancel.wait_for(|c| *c) => return,
                };
                let error = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(TaskFailure::from(&e)),
                    Err(panic) => {
                        Some(TaskFailure::new(FailureKind::UserCode, format!("panicked: {}", panic_message(&*panic))))
                    }
                };
                let _ = events.send(Event::TaskFinished { task: task_id, error }).await;
            });
            // Dropping the runtime ends the subtask's background writers.
            drop(runtime);
            drop(exit_tx);
        })
        .map_err(spawn_error)?;
    Ok(exit_rx)
}

/// The text a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}
