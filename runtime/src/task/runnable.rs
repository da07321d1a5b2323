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
