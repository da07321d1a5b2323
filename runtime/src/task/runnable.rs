//! What every subtask loop shares: its I/O with the coordinator and the
//! background writing of its snapshots.

use async_trait::async_trait;
use tokio::sync::mpsc::{Receiver, Sender};
use tokio::task::JoinSet;

use super::collector::{TaskContext, TaskSnapshot};
use super::error::TaskError;
use super::message::{Barrier, Control, Event, WrittenState};
use crate::checkpoint::metadata::{state_file_name, StateFileMetadata};
use crate::checkpoint::CheckpointStore;
use crate::faults::{stop_point, FaultPoint, StopPoint};
use crate::state::OperatorSubtaskState;

/// A subtask's connections to the coordinator.
pub struct TaskIo {
    pub control: Receiver<Control>,
    pub events: Sender<Event>,
    pub store: CheckpointStore,
}

/// A subtask ready to run, whatever its record types.
#[async_trait]
pub trait RunnableTask: Send {
    /// Restore-time side effects; every task is opened before any runs.
    async fn open(&mut self) -> Result<(), TaskError>;
    async fn run(self: Box<Self>, io: TaskIo) -> Result<(), TaskError>;
}

/// Writes a snapshot in the background and acknowledges it. The writers
/// live in the task's `JoinSet`, so they die with the task.
pub fn spawn_snapshot_write(
    writers: &mut JoinSet<()>,
    ctx: &TaskContext,
    io: &TaskIo,
    barrier: Barrier,
    snapshot: TaskSnapshot,
) {
    // Reap finished writers so the set does not grow.
    while writers.try_join_next().is_some() {}
    let (ctx, store, events) = (ctx.clone(), io.store.clone(), io.events.clone());
    writers.spawn(async move {
        if let Some(delay) = ctx.faults.snapshot_delay() {
            tokio::time::sleep(delay).await;
        }
        let task = ctx.id.clone();
        let event = match write_snapshot(&ctx, &store, barrier, snapshot).await {
            Ok(files) => {
                match ctx.faults.check(FaultPoint::BeforeAck).inspect(|()| stop_point(StopPoint::StateWritten)) {
                    Ok(()) => Event::Ack { checkpoint: barrier.id, task, files },
                    Err(e) => Event::Failed { task, failure: (&e).into() },
                }
            }
            Err(e) => Event::Decline { checkpoint: barrier.id, task, reason: e.to_string() },
        };
        // A closed channel means the job is shutting down; nothing to tell.
        let _ = events.send(event).await;
    });
}

async fn write_snapshot(
    ctx: &TaskContext,
    store: &CheckpointStore,
    barrier: Barrier,
    snapshot: TaskSnapshot,
) -> Result<Vec<WrittenState>, TaskError> {
    let mut files = Vec::new();
    for op in snapshot.operators {
        let keyed = match op.keyed {
            Some(encode) => {
                tokio::task::spawn_blocking(encode).await.map_err(|_| TaskError::Disconnected("snapshot encoder"))??
            }
            None => Vec::new(),
        };
        let state = OperatorSubtaskState { keyed, list: op.list, union: op.union };
        if state.is_empty() {
            continue;
        }
        let operator_state = Some(!state.list.is_empty() || !state.union.is_empty());
        let name = state_file_name(&op.uid, ctx.subtask(), ctx.key_groups, ctx.fence.epoch);
        let (size, crc32) = store.write_state(barrier.id, &name, state.encode()).await?;
        files.push(WrittenState {
            uid: op.uid,
            parallelism: ctx.parallelism(),
            file: StateFileMetadata {
                name,
                subtask: ctx.subtask(),
                key_groups: ctx.key_groups,
                size,
                crc32,
                operator_state,
            },
        });
    }
    Ok(files)
}

/// How long a task may work before it lets the runtime's other tasks run.
const WORK_SLICE: std::time::Duration = std::time::Duration::from_millis(2);

/// Gives the runtime's other tasks (snapshot writers, the coordinator, the
/// network) a turn after every [`WORK_SLICE`] of busy work. Tokio's own
/// budget yields only after 128 channel operations; a task spending a
/// millisecond or more per batch (the declarative steps) reaches that only
/// after a quarter of a second, and a checkpoint's writer, which needs a
/// turn at each step of its write, then waited seconds under load.
pub struct Slices {
    since: std::time::Instant,
}

impl Default for Slices {
    fn default() -> Self {
        Slices { since: std::time::Instant::now() }
    }
}

impl Slices {
    /// Call after each unit of work (a batch).
    pub async fn after_work(&mut self) {
        if self.since.elapsed() >= WORK_SLICE {
            tokio::task::yield_now().await;
            self.since = std::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::Slices;

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_task_lets_a_waiting_writer_run_while_it_still_has_batches() {
        let written = Arc::new(AtomicBool::new(false));
        let flag = written.clone();
        let writer = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut slices = Slices::default();
        let mut ran_after = None;
        for batch in 0..50 {
            // A batch of work that never waits on anything (1 ms or more).
            std::thread::sleep(std::time::Duration::from_millis(1));
            slices.after_work().await;
            if ran_after.is_none() && written.load(Ordering::SeqCst) {
                ran_after = Some(batch);
            }
        }
        writer.await.unwrap();
        let ran_after = ran_after.expect("the writer ran only once the busy task had no work left");
        assert!(ran_after < 5, "the writer waited {ran_after} batches");
    }
}
